"""The preview path (DESIGN 1): the newest frame, scaled down, with the cells found on it.

Policy: newest wins. ``offer`` only replaces one slot and returns, so neither the gate
loop nor the count path ever waits for the preview; frames that arrive faster than
``preview.fps`` are dropped. A live view gets its boxes from an analysis run in the
preview thread, and only when the count path is not using the models (a try-lock) and
the gate is not about to accept the view (settling): counting always comes first. The
boxes of a still view are reused until the stage moves or ``box_refresh_s`` passes, so
the live view keeps its frame rate on a slow CPU.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge.analysis.field import Cell, FieldResult
from edge.capture.gate import Decision, GateEvent
from edge.config import PreviewConfig
from edge.engines.bundle import ClassSpec
from edge.errors import PublishError
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import PreviewCell
from edge.mqtt.publisher import Publisher

log = logging.getLogger(__name__)

Analyze = Callable[[np.ndarray], FieldResult]


@dataclass(frozen=True)
class _Offer:
    image: np.ndarray
    event: GateEvent | None
    result: FieldResult | None
    slide_id: str | None
    motion_epoch: int


@dataclass(frozen=True)
class _Boxes:
    cells: list[Cell]
    shape: tuple[int, ...]
    motion_epoch: int
    made: float


class PreviewPublisher:
    """Publishes ``preview`` messages from a thread of its own (``start``/``stop``)."""

    def __init__(
        self,
        publisher: Publisher,
        factory: MessageFactory,
        settings: PreviewConfig,
        classes: Sequence[ClassSpec],
        analyze: Analyze | None = None,
        models_lock: threading.Lock | None = None,
    ) -> None:
        self.publisher = publisher
        self.factory = factory
        self.settings = settings
        self.classes = [c.name for c in classes]
        self._labels = {c.name: c.aliases[0] if c.aliases else c.name for c in classes}  # short box labels
        self.analyze = analyze if settings.boxes else None
        self.models_lock = models_lock or threading.Lock()
        self.published = 0
        self._offer: _Offer | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._motion_epoch = 0  # bumped whenever the gate sees the stage move: boxes go stale
        self._boxes: _Boxes | None = None
        self._thread = threading.Thread(target=self._run, name="preview", daemon=True)

    def start(self) -> PreviewPublisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def offer(
        self,
        image: np.ndarray,
        event: GateEvent | None = None,
        result: FieldResult | None = None,
        slide_id: str | None = None,
    ) -> None:
        """The newest frame (any thread, O(1)). ``result``: it was just counted, with these cells."""
        with self._cond:
            if event is not None and event.decision is Decision.MOVING:
                self._motion_epoch += 1
            if result is None and self._offer is not None and self._offer.result is not None:
                return  # a counted field is shown before any later live frame replaces it
            self._offer = _Offer(image, event, result, slide_id, self._motion_epoch)
            self._cond.notify()

    def _take(self) -> _Offer | None:
        with self._cond:
            while self._offer is None and not self._stop:
                self._cond.wait()
            offer, self._offer = self._offer, None
            return None if self._stop else offer

    def _run(self) -> None:
        period = 1.0 / self.settings.fps
        next_at = time.monotonic()
        while (offer := self._take()) is not None:
            try:
                self._publish(offer)
            except PublishError as exc:
                log.debug("preview not published: %s", exc)
            except Exception:  # the preview must never take the count down
                log.exception("preview frame failed")
            next_at = max(next_at + period, time.monotonic())
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _cells_for(self, offer: _Offer) -> list[Cell] | None:
        if offer.result is not None:
            return offer.result.cells
        now = time.monotonic()
        boxes = self._boxes
        # Valid: made on this view (no move since, same frame size); fresh: and recent enough.
        valid = boxes is not None and boxes.motion_epoch == offer.motion_epoch and boxes.shape == offer.image.shape
        if valid and now - boxes.made < self.settings.box_refresh_s:  # type: ignore[union-attr]
            return boxes.cells  # type: ignore[union-attr]
        # Settling: the gate may accept this view within a frame or two, and the count path must
        # not then wait for a preview analysis; the counted field brings its own cells.
        settling = offer.event is not None and offer.event.decision is Decision.SETTLING
        if self.analyze is None or settling or not self.models_lock.acquire(blocking=False):
            # busy counting: keep still-valid boxes, else show the frame without any
            return boxes.cells if valid else None  # type: ignore[union-attr]
        try:
            cells = self.analyze(offer.image).cells
        finally:
            self.models_lock.release()
        self._boxes = _Boxes(cells, offer.image.shape, offer.motion_epoch, now)
        return cells

    def _publish(self, offer: _Offer) -> None:
        cells = self._cells_for(offer)
        height, width = offer.image.shape[:2]
        scale = min(1.0, self.settings.max_width / width)
        small = offer.image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(offer.image, size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        event = offer.event
        message = self.factory.preview(
            jpeg=base64.b64encode(jpeg.tobytes()).decode("ascii"),
            width=small.shape[1],
            height=small.shape[0],
            scale=round(scale, 6),
            classes=self.classes,
            cells=None if cells is None else [self._cell(c, scale) for c in cells],
            counted=offer.result is not None,
            slide_id=offer.slide_id,
            field_index=offer.result.index if offer.result is not None else None,
            gate=event.decision.value if event is not None else None,
            gate_reason=event.reason if event is not None else None,
        )
        self.publisher.publish_preview(message)
        self.published += 1

    def _cell(self, cell: Cell, scale: float) -> PreviewCell:
        return PreviewCell(
            box=tuple(round(v * scale, 1) for v in cell.box),  # type: ignore[arg-type]
            class_name=cell.class_name,
            label=self._labels.get(cell.class_name, cell.class_name),
            probability=round(cell.class_probability, 3),
            countable=cell.countable,
            why_not=cell.why_not,
        )
