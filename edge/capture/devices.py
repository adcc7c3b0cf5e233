"""The live devices behind ``CameraSource``: OpenCV (V4L2/UVC, stream URLs, GStreamer pipelines),
GenICam through harvesters, and what every live source needs around it: reconnect with backoff, and
pacing for replays. The registry that opens them by config type is ``edge.capture.cameras``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge.capture.source import CameraSource, Frame
from edge.errors import CameraError

log = logging.getLogger(__name__)

StateCallback = Callable[[str, str], None]  # (state, detail): "streaming", "reconnecting", "absent"


@dataclass(frozen=True)
class CameraSettings:
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    exposure: float | None = None  # device units (V4L2: 100 us steps; GenICam: microseconds)


class OpenCVCamera:
    """A V4L2/UVC device, a stream URL or a GStreamer pipeline through OpenCV; frames arrive as RGB."""

    def __init__(
        self,
        device: int | str,
        settings: CameraSettings | None = None,
        backend: int | None = None,
        name: str | None = None,
    ) -> None:
        """``backend``: OpenCV's capture API (None: V4L2 for a device, else any); ``name`` for messages."""
        self.device = device
        self.settings = settings or CameraSettings()
        self.name = name or f"camera {device}"
        if backend is None:
            backend = cv2.CAP_V4L2 if isinstance(device, int) or str(device).startswith("/dev/") else cv2.CAP_ANY
        self._capture = cv2.VideoCapture(device, backend)
        if not self._capture.isOpened():
            raise CameraError(f"{self.name}: cannot open (unplugged, busy, or no permission on the device?)")
        s = self.settings
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, s.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, s.height),
            (cv2.CAP_PROP_FPS, s.fps),
        ):
            if value:
                self._capture.set(prop, value)
        if s.exposure is not None:
            self._capture.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2: 1 = manual
            self._capture.set(cv2.CAP_PROP_EXPOSURE, s.exposure)

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                raise CameraError(f"{self.name}: read failed (unplugged or stream ended)")
            if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
                yield Frame(index, f"{self.name}#{index}", None, f"unexpected frame {bgr.dtype} {bgr.shape}")
            else:
                yield Frame(index, f"{self.name}#{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, time.monotonic())
            index += 1

    def close(self) -> None:
        self._capture.release()


class GenICamCamera:
    """A GenICam (USB3 Vision / GigE Vision) camera through harvesters and a vendor GenTL producer.

    Written to harvesters' documented API (``Harvester.add_file``, ``create``, ``fetch``); not
    run here: no such camera is attached to the machines this project is built on.
    """

    def __init__(self, serial: str, cti: str, settings: CameraSettings | None = None) -> None:
        try:
            from harvesters.core import Harvester
        except ImportError:
            raise CameraError("GenICam needs harvesters: pip install 'marrow-edge[genicam]'") from None
        self.name = f"genicam {serial}"
        self.settings = settings or CameraSettings()
        self._harvester = Harvester()
        self._harvester.add_file(cti)
        self._harvester.update()
        try:
            self._acquirer = self._harvester.create({"serial_number": serial})
        except (ValueError, IndexError):
            self._harvester.reset()
            raise CameraError(f"{self.name}: not found through {cti}") from None
        nodes = self._acquirer.remote_device.node_map
        if self.settings.exposure is not None:
            nodes.ExposureTime.value = float(self.settings.exposure)
        if self.settings.fps:
            nodes.AcquisitionFrameRate.value = float(self.settings.fps)
        self._acquirer.start()

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            try:
                with self._acquirer.fetch(timeout=5.0) as buffer:
                    component = buffer.payload.components[0]
                    raw = component.data.reshape(component.height, component.width, -1)
                    image = raw[..., :3].copy() if raw.shape[2] >= 3 else cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
            except Exception as exc:  # harvesters raises its own timeout and GenTL error types
                raise CameraError(f"{self.name}: fetch failed ({exc})") from None
            yield Frame(index, f"{self.name}#{index}", image, None, time.monotonic())
            index += 1

    def close(self) -> None:
        self._acquirer.stop()
        self._acquirer.destroy()
        self._harvester.reset()


class Reconnecting:
    """Reopens a live source on unplug or read errors, with exponential backoff.

    A camera absent at start is retried the same way; ``on_state`` hears every change
    (streaming, reconnecting with the reason, absent), for the pipeline and MQTT status.
    """

    def __init__(
        self,
        opener: Callable[[], CameraSource],
        name: str,
        on_state: StateCallback | None = None,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        max_attempts: int | None = None,  # consecutive failures without a frame; None: forever
    ) -> None:
        self.opener = opener
        self.name = name
        self.on_state = on_state or (lambda state, detail: None)
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.reconnects = 0
        self._closed = threading.Event()
        self._source: CameraSource | None = None

    def frames(self) -> Iterator[Frame]:
        delay, attempts, index = self.first_delay, 0, 0
        while not self._closed.is_set():
            try:
                self._source = self.opener()
                self.on_state("streaming", self.name)
                for frame in self._source.frames():
                    # Backoff resets only once frames flow: a camera that opens and fails at
                    # once must not spin.
                    delay, attempts = self.first_delay, 0
                    yield Frame(index, frame.name, frame.image, frame.error, frame.timestamp)
                    index += 1
                return  # a finite source (a file) ended normally
            except CameraError as exc:
                attempts += 1
                self.reconnects += 1
                state = "absent" if self._source is None else "reconnecting"
                log.warning("%s: %s; retrying in %.1f s", self.name, exc, delay)
                self.on_state(state, str(exc))
                if self.max_attempts is not None and attempts >= self.max_attempts:
                    raise CameraError(f"{self.name}: gave up after {attempts} attempts: {exc}") from None
                if self._source is not None:
                    self._source.close()
                    self._source = None
                self._closed.wait(delay)  # close() ends the wait at once
                delay = min(delay * 2, self.max_delay)

    def close(self) -> None:
        self._closed.set()
        if self._source is not None:
            self._source.close()


class Paced:
    """Replays a source at ``fps`` (a folder or video standing in for a live camera)."""

    def __init__(self, source: CameraSource, fps: float) -> None:
        self.source = source
        self.fps = fps
        self.name = f"{source.name} at {fps:g} fps"
        self.skip: set[str] = set()  # fields counted before a restart: passed on at once, not waited for

    def frames(self) -> Iterator[Frame]:
        period, due = 1.0 / self.fps, time.monotonic()
        for frame in self.source.frames():
            if frame.name in self.skip:
                yield frame
                continue
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            due = max(due + period, time.monotonic() - period)
            yield frame

    def close(self) -> None:
        self.source.close()
