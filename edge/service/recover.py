"""``marrow-edge review import``: a slide counted but not kept in the slide store (a full disk, a
store that failed mid-slide) brought in from the slide journal, which holds every counted field's
cells. The fields the store kept before it failed stay as they are; the others are added and the
slide is finished (a slide the store already finished is refused).

Crops are cut again from the fields when the source is still readable (``--source``: the same
folder or video the run counted); fields not found there, or a live camera's frames that are gone,
come in as their cells without images. The slide's setup and machine report are made by this box's
current config and bundle, as ``run`` made them: import with the config the slide was counted with.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from edge.capture.replay import open_replay
from edge.config import AppConfig
from edge.counting.journal import SlideJournal
from edge.errors import ConfigError
from edge.mqtt.factory import MessageFactory
from edge.review.store import SlideStore
from edge.service.pipeline import build_appliance

log = logging.getLogger(__name__)


@dataclass
class Imported:
    slide_id: str
    fields: int
    cells: int
    without_images: list[str]  # fields whose frame was not found: cells kept without crops


def import_slide(config: AppConfig, slide_id: str, source: Path | None = None) -> Imported:
    if config.counting.journal is None or not Path(config.counting.journal).is_file():
        raise ConfigError(f"no slide journal at {config.counting.journal}: nothing to import from")
    if config.review.store is None:
        raise ConfigError("review.store is null in the config: there is no slide store to import into")
    journal = SlideJournal(config.counting.journal)
    try:
        slide = journal.slide(slide_id)
        if slide is None:
            raise ConfigError(f"slide {slide_id} is not in the journal {config.counting.journal}")
        appliance = build_appliance(config)
        tally = appliance.new_tally()
        results = journal.replay(slide, tally)
    finally:
        journal.close()
    store = SlideStore(config.review.store)
    try:
        with store.reading() as db:
            row = db.execute("SELECT state FROM slide WHERE slide_id = ?", (slide_id,)).fetchone()
        if row is not None and row[0] != "counting":
            raise ConfigError(f"slide {slide_id} is already in the slide store {config.review.store} ({row[0]})")
        held = store.fields(slide_id) if row is not None else {}  # what the store kept before it failed
        results = [r for r in results if r.index not in held]
        frames = {}
        if source is not None:
            wanted = {r.source for r in results}
            frames = {f.name: f.image for f in open_replay(source).frames() if f.name in wanted}
        factory = MessageFactory(config.device_id, appliance.provenance)
        store.begin(slide, appliance.slide_setup(), config.device_id)
        missing = []
        for result in results:
            image = frames.get(result.source)
            if image is None:
                missing.append(result.source)
            store.add_field(slide, result, image)
        slide.ended = slide.ended or dt.datetime.now(dt.timezone.utc)
        report = factory.report(slide, tally)
        store.finish(slide, report.model_dump(mode="json", by_alias=True))
    finally:
        store.close()
    cells = sum(len(r.cells) for r in results)  # the fields added now
    log.info("slide %s imported from the journal: %d fields, %d cells", slide_id, len(results), cells)
    return Imported(slide_id, len(results), cells, missing)
