"""The source registry: every source type of the config (``source:``, ``edge.config.SourceConfig``)
opened as a ``CameraSource``; the devices themselves (OpenCV, GenICam, reconnect, pacing) live in
``edge.capture.devices``, GStreamer in ``edge.capture.gstreamer``, both below this module.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edge.capture.devices import CameraSettings, GenICamCamera, OpenCVCamera, Paced, Reconnecting, StateCallback
from edge.capture.source import CameraSource
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
