"""Where a run keeps what must outlive it when the config names no path: one state directory.

The slide journal (``counting.journal``), the MQTT outbox (``mqtt.outbox``) and the slide store
(``review.store``) default to files in it, so ``run``, then ``review`` and ``report`` from the same
checkout find the same slides. The directory: ``$MARROW_EDGE_STATE`` if set; on an installed box
the data directory (``/var/lib/marrow-edge``, or ``$MARROW_EDGE_DATA``); in a checkout the user's
data home (``$XDG_DATA_HOME/marrow-edge``, else ``~/.local/share/marrow-edge``). A path set in the
config, even to null (no journal, no outbox, a store for the run's length only), is kept as set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config.base import CHECKOUT, DATA_DIR

if TYPE_CHECKING:
    from edge.config import AppConfig

# the same names the installed systemd units give them
FILES = {"journal": "slides.sqlite", "outbox": "outbox.sqlite", "store": "slides-review.sqlite"}


def state_dir() -> Path:
    """Read at call time, not import time: the environment of the run decides."""
    if explicit := os.environ.get("MARROW_EDGE_STATE"):
        return Path(explicit)
    if not (CHECKOUT / "pyproject.toml").is_file():
        return DATA_DIR
    home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(home) / "marrow-edge"


def with_state_paths(config: AppConfig) -> AppConfig:
    """Fill every state path the config left unset (not: set to null) with its file in ``state_dir()``."""
    base = state_dir()
    slots = ((config.counting, "journal"), (config.mqtt, "outbox"), (config.review, "store"))
    for section, name in slots:
        if name not in section.model_fields_set:
            setattr(section, name, base / FILES[name])
            section.model_fields_set.discard(name)  # still "not set by the user" for a later merge
    return config
