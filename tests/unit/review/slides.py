"""A counted slide in a slide store, for the review and report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.analysis.field import Cell, FieldResult
from edge.config import AppConfig
from edge.counting.rules import load_rule_pack
from edge.counting.tally import Slide, Tally
from edge.engines.bundle import ClassSpec
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import BundleRef, Provenance
from edge.mqtt.topics import Topics
from edge.review.desk import ReviewDesk
from edge.review.recount import slide_setup
from edge.review.store import SlideStore

CLASSES = [
    ClassSpec(name="blast", role="key"),
    ClassSpec(name="lymphocyte", role="wbc"),
    ClassSpec(name="monocyte", role="wbc"),
    ClassSpec(name="not_countable", role="not_countable"),
]
PROVENANCE = Provenance(
    software_version="test",
    bundle=BundleRef(name="t", version="1", hash="0" * 12, untrained=False),
    backend="fake",
    providers=["cpu"],
)


def make_cell(i: int, name: str, p: float = 0.9, countable: bool = True) -> Cell:
    probs = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1), np.float32)
    probs[[c.name for c in CLASSES].index(name)] = p
    x = 20 + 60 * (i % 8)
    return Cell((x, 20.0, x + 50.0, 70.0), 0.9, name, p, probs, 0.95 if countable else 0.1, countable)


def count_slide(store: SlideStore, calls: list[str]) -> Slide:
    """A slide of two fields: 6 blasts, 3 lymphocytes, 1 monocyte counted; one stage-1 reject."""
    config = AppConfig()
    rules = load_rule_pack()
    setup = slide_setup(CLASSES, rules, config.counting, None, 64, 0.5, 0.5, 0.15)
    slide = Slide(specimen_id="BM-1")
    store.begin(slide, setup, "box-1")
    tally = Tally(CLASSES, rules, 300)
    image = np.random.default_rng(0).integers(0, 255, (120, 520, 3), np.uint8)
    first = [make_cell(i, "blast", 0.9 if i else 0.4) for i in range(6)]
    second = [
        make_cell(0, "lymphocyte"),
        make_cell(1, "lymphocyte"),
        make_cell(2, "lymphocyte"),
        make_cell(3, "monocyte", 0.5),
    ]
    second.append(make_cell(4, "blast", 0.8, countable=False))
    for index, cells in enumerate((first, second)):
        result = FieldResult(index, f"f{index}.png", 520, 120, cells)
        tally.add(result)
        store.add_field(slide, result, image)
        calls.append(f"field {index}")
    factory = MessageFactory("box-1", PROVENANCE)
    store.finish(slide, factory.report(slide, tally).model_dump(mode="json", by_alias=True))
    return slide


def make_desk(path: Path) -> ReviewDesk:
    """A desk over a new store holding one counted slide (``desk.slide_id``), operator Ana Lima / 4321;
    what it would publish is in ``desk.sent``."""
    store = SlideStore(path)
    sent: list[tuple[str, object]] = []
    desk = ReviewDesk(store, Topics("marrow/v1", "box-1"), lambda topic, m, retain: sent.append((topic, m)) or True)
    desk.sent = sent  # type: ignore[attr-defined]
    desk.operators.add("Ana Lima", "4321")
    desk.slide_id = count_slide(store, []).slide_id  # type: ignore[attr-defined]
    return desk
