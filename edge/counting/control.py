"""What commands may change while slides are counted: the shared state between the MQTT thread
(start, stop, target) and the count loop (begin, end, shutdown). Plain values in, reasons out:
the MQTT payloads are validated in ``edge.mqtt.commands`` before they get here."""

from __future__ import annotations

import threading
from typing import Literal

from edge.counting.tally import Slide


class SlideControl:
    """What commands may change, shared by the MQTT thread and the count loop."""

    def __init__(self, target_count: int) -> None:
        self._lock = threading.Lock()
        self.default_target = target_count  # each slide starts from it: a target never carries over
        self.target_count = target_count
        self.slide: Slide | None = None
        self.pending_specimen: str | None = None
        self.stop_requested = threading.Event()
        self.start_requested = threading.Event()
        # systemctl stop or Ctrl-C: end the slide after this field, report, and take no new slide
        self.shutdown = threading.Event()

    @property
    def state(self) -> Literal["idle", "counting"]:
        return "counting" if self.slide is not None else "idle"

    def begin(self, slide: Slide) -> None:
        with self._lock:
            self.slide = slide
            if not self.shutdown.is_set():
                self.stop_requested.clear()

    def request_shutdown(self) -> None:
        self.shutdown.set()
        self.stop_requested.set()  # wakes a loop waiting for frames too

    def end(self) -> None:
        with self._lock:
            self.slide = None
            self.target_count = self.default_target

    def start(self, specimen_id: str, target_count: int | None = None) -> str | None:
        """A start_slide: None when accepted, else why not (nothing changes then)."""
        with self._lock:
            if self.slide is not None:
                return f"slide {self.slide.slide_id} is being counted: send stop_slide first"
            if self.start_requested.is_set():
                return f"a slide for specimen {self.pending_specimen or '-'} is already starting"
            self.pending_specimen = specimen_id
            if target_count is not None:
                self.target_count = target_count
            self.start_requested.set()
        return None

    def take_start(self) -> str | None:
        """The specimen of the slide a start_slide asked for (consumed)."""
        with self._lock:
            specimen, self.pending_specimen = self.pending_specimen, None
            self.start_requested.clear()
            return specimen

    def stop(self) -> str | None:
        with self._lock:
            if self.slide is None:
                return "no slide is being counted"
            self.stop_requested.set()
        return None

    def set_target(self, target_count: int) -> str | None:
        with self._lock:
            self.target_count = target_count
        return None
