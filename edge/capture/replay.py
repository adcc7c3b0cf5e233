"""Replay sources: a folder of images or a video file, each image or video frame one field."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge.capture.decode import DEFAULT_MAX_PIXELS, decode_image, printable_name, to_rgb
from edge.capture.source import CameraSource, Frame
from edge.errors import CameraError, EngineError, FrameError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm"}


class ImageFilesSource:
    """Image files in the order given; a folder's images in name order (other files ignored)."""

    def __init__(self, paths: list[Path], name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.paths = paths
        self.name = name
        self.max_pixels = max_pixels

    @classmethod
    def folder(cls, folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFilesSource:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise CameraError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return cls(paths, str(folder), max_pixels)

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            name = printable_name(path.name)
            try:
                # A FIFO or device named .jpg would block read_bytes forever: regular files only.
                if not path.is_file():
                    raise FrameError(f"{name}: not a regular file")
                # A compressed file is far smaller than its pixels; one larger than 3 bytes a pixel is not a field.
                size = path.stat().st_size
                if size > 3 * self.max_pixels + (1 << 20):
                    raise FrameError(f"{name}: {size:,} bytes is too large for a field")
                image = decode_image(path.read_bytes(), name, self.max_pixels)
            except FrameError as exc:
                yield Frame(index, name, None, str(exc), time.monotonic())
            except OSError as exc:
                yield Frame(index, name, None, f"{name}: cannot read ({exc.strerror})", time.monotonic())
            else:
                yield Frame(index, name, image, None, time.monotonic())

    def close(self) -> None:
        pass


class VideoSource:
    """Every frame of a video file, decoded by OpenCV."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise CameraError(f"{path}: OpenCV cannot open this video")

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, image = self._capture.read()
            if not ok:
                return
            name = f"{self.path.name}#{index}"
            try:
                yield Frame(index, name, to_rgb(image, name), None, time.monotonic())
            except FrameError as exc:
                yield Frame(index, name, None, str(exc), time.monotonic())
            index += 1

    def close(self) -> None:
        self._capture.release()


def open_replay(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> CameraSource:
    """A folder -> its images; a video file -> its frames; a single image -> one field."""
    path = Path(path)
    if path.is_dir():
        return ImageFilesSource.folder(path, max_pixels)
    if not path.exists():
        raise CameraError(f"{path}: no such file or folder")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFilesSource([path], str(path), max_pixels)
    raise CameraError(f"{path}: not a folder, an image or a video ({', '.join(sorted(VIDEO_SUFFIXES))})")


def verification_fields(folder: Path) -> list[np.ndarray]:
    """The real fields an engine is checked on against ONNX Runtime FP32 before it is used."""
    fields = [f.image for f in open_replay(folder).frames() if f.image is not None]
    if not fields:
        raise EngineError(f"{folder} holds no readable field to verify an engine on")
    return fields
