"""The display's OpenAPI document, as the box serves it at ``/api/openapi.json``; a copy lives in
``schemas/display-openapi.json`` for people and tools without a box (``python -m edge.display.openapi``
rewrites it; a test keeps it current)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge.config import AppConfig
from edge.display.app import WebState, create_app
from edge.display.feed import DisplayFeed
from edge.mqtt.topics import Topics
from edge.review.desk import ReviewDesk
from edge.review.store import SlideStore

OPENAPI_FILE = Path(__file__).resolve().parents[2] / "schemas" / "display-openapi.json"


def document() -> dict[str, Any]:
    """The document of a display with a slide store (every route), built without a broker or a box."""
    config = AppConfig()
    with tempfile.TemporaryDirectory() as folder:
        store = SlideStore(Path(folder) / "schema.sqlite")
        try:
            feed = DisplayFeed("127.0.0.1", 1, Topics(config.mqtt.topic_prefix, config.device_id), config.mqtt)
            return create_app(WebState(feed, config, desk=ReviewDesk(store))).openapi()
        finally:
            store.close()


def main() -> int:
    OPENAPI_FILE.write_text(json.dumps(document(), indent=2, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {OPENAPI_FILE}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
