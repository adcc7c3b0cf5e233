"""What the slide store hands out: a stored cell, a slide's record, the review's errors, and the
flags that ask for a person's look. Plain dataclasses: the desk, the reports and the web API read them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from edge.errors import EdgeError

# Stage 1's P(countable) this close to its threshold: the countable decision was a near thing.
STAGE1_BAND = 0.15
# The reviewed label that takes a cell out of the count in any bundle (with or without such a class).
NOT_COUNTABLE = "not_countable"


class ReviewError(EdgeError):
    """A review request that cannot be done as asked (unknown slide or cell, a signed slide, a bad label)."""

    exit_code = 2


class UnknownSlideError(ReviewError):
    """No such slide in the store."""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredCell:
    cell_id: int
    field_index: int
    box: tuple[float, float, float, float]
    detector_score: float
    machine_class: str  # what stage 2 said
    class_probability: float
    margin: float  # top minus second probability
    probabilities: list[float]
    p_countable: float
    countable: bool  # the machine's decision
    why_not: str | None
    colour: list[float] | None
    label: str | None  # the reviewed class (or NOT_COUNTABLE); None: not changed by a person
    has_crop: bool
    flags: list[str]  # why the cell needs a person's look (flags_of), as the count path judged it
    factor: float | None = None  # detector pixels per field pixel when it was found (the size check)

    @property
    def machine_tray(self) -> str:
        return self.machine_class if self.countable else NOT_COUNTABLE

    @property
    def tray(self) -> str:
        """Where the cell sits now: its reviewed label, else the machine's call."""
        return self.label if self.label is not None else self.machine_tray


@dataclass(frozen=True)
class SlideRecord:
    slide_id: str
    specimen_id: str | None
    device_id: str | None
    source: str | None
    started: str
    ended: str | None
    state: str  # counting | finished | signed | amended | interrupted
    setup: dict[str, Any]
    machine_report: dict[str, Any] | None
    cells_dropped: int
    signed_version: int  # 0: never signed


def flags_of(countable: bool, top: float, margin: float, p_countable: float, setup: dict[str, Any]) -> list[str]:
    """Why a cell needs a person's look (empty: it does not)."""
    flags = []
    if countable and top < setup["review_below"]:
        flags.append("low_probability")
    if countable and margin < setup["flag_margin"]:
        flags.append("close_call")
    if abs(p_countable - setup["countable_threshold"]) < STAGE1_BAND:
        flags.append("stage1_borderline")
    return flags
