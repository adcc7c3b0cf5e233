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

from edge.config.base import CHECKOUT, DATA_DIR

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
