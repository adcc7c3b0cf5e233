"""The capture daemon (camera -> frame ring) and the pipeline's gated view of the ring.

``capture_loop`` runs under systemd as ``marrow-edge capture`` (Type=notify with a watchdog:
READY once the ring exists, WATCHDOG while frames flow, STATUS with the rates) or in a thread
of ``marrow-edge run --camera`` for development. ``GatedRingSource`` is what the count path
reads: the ring's newest frames through the field gate, yielding only accepted fields.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edge.capture.gate import Decision, FieldGate, GateEvent
from edge.capture.ring import FrameRing, RingReader
from edge.capture.source import CameraSource, Frame
from edge.errors import CameraError
from edge.systemd import sd_notify, watchdog_interval

log = logging.getLogger(__name__)


@dataclass
class CaptureStats:
    frames: int = 0
    corrupt: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.frames / max(time.monotonic() - self.started, 1e-9)


def capture_loop(
    source: CameraSource,
    ring_name: str,
    slots: int = 8,
    stop: threading.Event | None = None,
    notify: Callable[[str], bool] = sd_notify,
) -> CaptureStats:
    """Camera frames into the ring until the source ends or ``stop`` is set. Never waits on a reader."""
    stop = stop or threading.Event()
    stats = CaptureStats()
    with FrameRing(ring_name, slots) as ring:  # refuses a second daemon on the same ring
        notify(f"READY=1\nSTATUS=waiting for frames from {source.name}")
        log.info("capture: %s -> ring %s (%d slots)", source.name, ring_name, slots)
        watchdog = watchdog_interval()
        last_ping = last_status = time.monotonic()
        try:
            for frame in source.frames():
                if stop.is_set():
                    break
                if frame.image is None:
                    stats.corrupt += 1  # skipped and counted; the stream goes on
                    log.warning("capture: frame %s skipped: %s", frame.name, frame.error)
                    continue
                ring.write(frame.image, frame.timestamp or None)
                stats.frames += 1
                now = time.monotonic()
                if watchdog is not None and now - last_ping >= watchdog:
                    notify("WATCHDOG=1")
                    last_ping = now
                if now - last_status >= 5.0:
                    notify(
                        f"STATUS={stats.rate():.1f} frames/s, {ring.overwritten} overwritten unread, "
                        f"{stats.corrupt} corrupt"
                    )
                    last_status = now
        finally:
            source.close()
            notify("STOPPING=1")
            log.info(
                "capture: %d frames, %d corrupt, %d overwritten unread", stats.frames, stats.corrupt, ring.overwritten
            )
    return stats


class GatedRingSource:
    """The ring's newest frames through the field gate; yields the accepted fields only.

    Ends when the writer has been silent for ``idle_timeout`` seconds (the capture stopped).
    ``on_event`` hears every gate decision (for the display and status); decisions that
    change are logged with their reason. ``on_frame`` gets every frame with its decision
    (the preview path); it must return at once. ``stop_event`` set: the current slide's frames
    end now (a stop_slide, a shutdown).
    """

    def __init__(
        self,
        ring_name: str,
        gate: FieldGate | None = None,
        idle_timeout: float = 5.0,
        on_event: Callable[[GateEvent], None] | None = None,
        on_frame: Callable[[np.ndarray, GateEvent | None], None] | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.name = f"ring {ring_name}"
        self.reader = RingReader(ring_name)
        self.gate = gate or FieldGate()
        self._run_token = uuid.uuid4().hex[:6]
        self.idle_timeout = idle_timeout
        self.on_event = on_event
        self.on_frame = on_frame
        self._last_ping = time.monotonic()
        self.stop_event = stop_event
        self.finished = False  # the writer went silent: the capture has stopped
        self._closed = False

    def frames(self) -> Iterator[Frame]:
        last_decision: Decision | None = None
        accepted = 0
        idle_since = time.monotonic()
        watchdog = watchdog_interval()
        while not self._closed:
            if self.stop_event is not None and self.stop_event.is_set():
                return
            if watchdog is not None and time.monotonic() - self._last_ping >= watchdog:
                sd_notify("WATCHDOG=1")  # fed while frames are read or awaited, not while a field hangs
                self._last_ping = time.monotonic()
            got = self.reader.wait(0.1)
            if got is None:
                if time.monotonic() - idle_since > self.idle_timeout:
                    log.info("%s: no frame for %.0f s: the capture has stopped", self.name, self.idle_timeout)
                    self.finished = True
                    return
                continue
            idle_since = time.monotonic()
            event = self.gate(got.image)
            if self.on_event is not None:
                self.on_event(event)
            if self.on_frame is not None:
                self.on_frame(got.image, event)
            if event.decision is not last_decision:
                log.info("gate: %s (%s)", event.decision.value, event.reason)
                last_decision = event.decision
            if event.accepted:
                # the run token keeps names unique across restarts (the journal skips names it has seen)
                name = f"field-{accepted:04d}@{got.seq}-{self._run_token}"
                yield Frame(accepted, name, got.image, None, got.timestamp)
                accepted += 1

    @property
    def skipped(self) -> int:
        """Frames the capture wrote that this reader never saw (it was busy counting)."""
        return self.reader.skipped

    def watch(self, until: threading.Event, timeout: float) -> None:
        """Between slides: the newest frames go to ``on_frame`` (the live view, so the technician
        can place the slide) without the gate: nothing is counted. Feeds the watchdog: waiting
        for start_slide is not a hang."""
        deadline = time.monotonic() + timeout
        watchdog = watchdog_interval()
        while not until.is_set() and not self._closed and time.monotonic() < deadline:
            if watchdog is not None and time.monotonic() - self._last_ping >= watchdog:
                sd_notify("WATCHDOG=1")
                self._last_ping = time.monotonic()
            got = self.reader.wait(0.1)
            if got is not None and self.on_frame is not None:
                self.on_frame(got.image, None)

    def close(self) -> None:
        self._closed = True
        self.reader.close()


class CaptureThread:
    """``marrow-edge run --camera``: the capture daemon's loop in a thread of this process."""

    def __init__(self, source: CameraSource, ring_name: str, slots: int = 8) -> None:
        self.stop = threading.Event()
        self.source = source
        self.error: CameraError | None = None
        self.stats: CaptureStats | None = None
        self._thread = threading.Thread(target=self._run, args=(source, ring_name, slots), daemon=True)

    def _run(self, source: CameraSource, ring_name: str, slots: int) -> None:
        try:
            self.stats = capture_loop(source, ring_name, slots, self.stop, notify=lambda m: False)
        except CameraError as exc:
            self.error = exc
            log.error("capture: %s", exc)

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        self.source.close()  # ends a reconnect wait or a blocking read
        self._thread.join(timeout=10)
