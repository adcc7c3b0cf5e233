"""Live sources behind ``CameraSource``: OpenCV (V4L2/UVC devices, RTSP and video URLs),
GenICam industrial cameras (harvesters, optional), the simulated microscope, and the
wrappers every live source needs: reconnect with backoff, and pacing for replays.

Sources are chosen by type (``source:`` in the config, ``edge.config.SourceConfig``); each type's
opener is registered in ``SOURCES``. The command line's ``--camera SPEC`` is a shorthand that
``source_from_spec`` reads:
    0, /dev/video0          v4l2: a V4L2/UVC camera (index or device path)
    rtsp://..., http://...  rtsp: a network stream
    genicam:SERIAL[@CTI]    genicam: a GenICam camera through harvesters (pip install 'marrow-edge[genicam]')
    csi:N                   gstreamer: the Jetson CSI camera sensor N (nvarguscamerasrc)
    gst:PIPELINE            gstreamer: any GStreamer source, e.g. gst:v4l2src device=/dev/video0
    sim[:SCRIPT.yaml]       sim: the simulated microscope over the bundled sample fields
    ring:NAME               ring: the frame ring of a running ``marrow-edge capture`` (read by ``run``)
    a folder, image or video: replay (paced to ``fps`` if given)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from pydantic import ValidationError

from edge.capture.source import CameraSource, Frame
from edge.config import (
    GenICamSource,
    GStreamerSource,
    ReplaySource,
    RingSource,
    RtspSource,
    SimSource,
    SourceConfig,
    V4L2Source,
)
from edge.errors import CameraError, ConfigError

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


def load_script(path: Path) -> list[list[object]]:
    try:
        script = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CameraError(f"simulator script {path}: {exc}") from None
    if not isinstance(script, list) or not all(isinstance(s, list) and s for s in script):
        raise CameraError(f"simulator script {path}: expected a list of steps like [goto, x, y, frames]")
    return script


def source_from_spec(spec: str, settings: CameraSettings | None = None) -> SourceConfig:
    """The source a ``--camera`` string names (see the module docstring), with the command line's settings."""
    settings = settings or CameraSettings()
    camera = {k: v for k, v in vars(settings).items() if v is not None}
    fps = {"fps": settings.fps} if settings.fps else {}
    try:
        if spec == "sim" or spec.startswith("sim:"):
            return SimSource(script=Path(spec[4:]) if spec.startswith("sim:") else None, **fps)
        if spec.startswith("ring:"):
            return RingSource(name=spec[5:])
        if spec.startswith("csi:") and spec[4:].isdigit():
            return GStreamerSource(csi_sensor=int(spec[4:]), **camera)
        if spec.startswith("gst:"):
            return GStreamerSource(pipeline=spec[4:], **camera)
        if spec.startswith("genicam:"):
            serial, _, cti = spec[8:].partition("@")
            return GenICamSource(serial=serial, **({"cti": Path(cti)} if cti else {}), **camera)
        if spec.isdigit() or spec.startswith("/dev/video"):
            return V4L2Source(device=spec, **camera)
        if "://" in spec:
            return RtspSource(url=spec, **camera)
    except ValidationError as exc:
        raise ConfigError(f"camera {spec!r}: {exc.errors()[0]['msg']}") from None
    return ReplaySource(path=Path(spec), **fps)


def _settings(source: Any) -> CameraSettings:
    return CameraSettings(source.width, source.height, source.fps, source.exposure)


def _v4l2(source: V4L2Source, on_state: StateCallback | None) -> CameraSource:
    device: int | str = int(source.device) if source.device.isdigit() else source.device
    return Reconnecting(lambda: OpenCVCamera(device, _settings(source)), f"camera {source.device}", on_state)


def _rtsp(source: RtspSource, on_state: StateCallback | None) -> CameraSource:
    return Reconnecting(lambda: OpenCVCamera(source.url, _settings(source)), f"camera {source.url}", on_state)


def _genicam(source: GenICamSource, on_state: StateCallback | None) -> CameraSource:
    opener = lambda: GenICamCamera(source.serial, str(source.cti), _settings(source))  # noqa: E731
    return Reconnecting(opener, f"genicam {source.serial}", on_state)


def _gstreamer(source: GStreamerSource, on_state: StateCallback | None) -> CameraSource:
    from edge.capture.gstreamer import open_gstreamer

    return Reconnecting(lambda: open_gstreamer(source), f"gstreamer {source.spec}", on_state)


def _sim(source: SimSource, on_state: StateCallback | None) -> CameraSource:
    from edge.capture.simulator import SimulatedMicroscope, build_slide, random_scan
    from edge.config import DEFAULT_SAMPLES

    slide = build_slide(DEFAULT_SAMPLES, 8, 6)
    script = load_script(source.script) if source.script else random_scan(slide.shape[:2], 640, 480, 12)
    return SimulatedMicroscope(slide, script, fps=source.fps or 15.0)


def _replay(source: ReplaySource, on_state: StateCallback | None) -> CameraSource:
    from edge.capture.replay import open_replay

    replay = open_replay(source.path)
    return Paced(replay, source.fps) if source.fps else replay


def _ring(source: RingSource, on_state: StateCallback | None) -> CameraSource:
    raise ConfigError(f"ring {source.name} is read by `marrow-edge run --ring`, not opened as a camera")


# source type -> opener(settings, on_state): what ``source.type`` in the config chooses
SOURCES: dict[str, Callable[[Any, StateCallback | None], CameraSource]] = {
    "v4l2": _v4l2,
    "rtsp": _rtsp,
    "genicam": _genicam,
    "gstreamer": _gstreamer,
    "sim": _sim,
    "replay": _replay,
    "ring": _ring,
}


def open_source(source: SourceConfig, on_state: StateCallback | None = None) -> CameraSource:
    return SOURCES[source.type](source, on_state)


def open_camera(
    spec: str, settings: CameraSettings | None = None, on_state: StateCallback | None = None
) -> CameraSource:
    """The source a ``--camera`` string names."""
    return open_source(source_from_spec(spec, settings), on_state)
