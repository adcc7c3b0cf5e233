"""Typed errors. Each message should tell a technician or an engineer what to do."""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the appliance raises on purpose (user-facing, no traceback)."""

    exit_code = 1


class ConfigError(EdgeError):
    exit_code = 2


class BundleError(EdgeError):
    exit_code = 3


class EngineError(EdgeError):
    exit_code = 3


class StorageError(EdgeError):
    """The journal or the outbox cannot be used (a full disk, a read-only or wrong path, a second run)."""

    exit_code = 3


class PublishError(EdgeError):
    exit_code = 4


class CameraError(EdgeError):
    """The source as a whole cannot be used (missing folder, unopenable video)."""

    exit_code = 5


class FrameError(EdgeError):
    """One frame cannot be used; the slide goes on and the frame is counted as skipped."""

    exit_code = 5
