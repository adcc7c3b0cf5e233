"""Source settings, one model per ``source.type``; each type's opener is registered under the same
name in ``edge.capture.cameras.SOURCES``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from edge.config.base import DEFAULT_SAMPLES, Strict


class _Scaled(Strict):
    um_per_px: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="This source's optical scale, micrometres per pixel (`marrow-edge calibrate-scale` measures and "
        "writes it): each field is brought to the scale the bundle's detector learned, in tiles where large. "
        "None: analysis.um_per_px, else each field is fitted to the detector's input size as before.",
    )


class _Camera(_Scaled):
    width: int | None = Field(None, gt=0, description="Frame width asked of the camera.")
    height: int | None = Field(None, gt=0, description="Frame height asked of the camera.")
    fps: float | None = Field(None, gt=0, description="Frame rate asked of the camera.")
    exposure: float | None = Field(None, description="Exposure in device units (V4L2: 100 us; GenICam: us).")


class V4L2Source(_Camera):
    """A V4L2/UVC camera through OpenCV."""

    type: Literal["v4l2"] = "v4l2"
    device: str = Field("0", description="An index (0) or a device path (/dev/video0).")

    @property
    def spec(self) -> str:
        return self.device


class RtspSource(_Camera):
    """A network stream (RTSP, HTTP) through OpenCV."""

    type: Literal["rtsp"] = "rtsp"
    url: str = Field(pattern=r"^[a-z0-9+.-]+://", description="rtsp://..., http://...")

    @property
    def spec(self) -> str:
        return self.url


class GenICamSource(_Camera):
    """A GenICam camera (USB3/GigE Vision) through harvesters and the vendor's GenTL producer."""

    type: Literal["genicam"] = "genicam"
    serial: str = Field(min_length=1)
    cti: Path = Field(Path("/opt/genicam/producer.cti"), description="The vendor's GenTL producer.")

    @property
    def spec(self) -> str:
        return f"genicam:{self.serial}@{self.cti}"


class GStreamerSource(_Camera):
    """A GStreamer pipeline: a Jetson CSI camera (nvarguscamerasrc) or any source element.

    The pipeline ends in BGR frames of ``width`` x ``height`` (default 1920x1080), read through
    OpenCV when it was built with GStreamer (JetPack's python3-opencv), else from ``gst-launch-1.0``.
    """

    type: Literal["gstreamer"] = "gstreamer"
    pipeline: str | None = Field(
        None,
        description="The source part of a pipeline, e.g. 'v4l2src device=/dev/video0' or 'rtspsrc location=...'"
        " ! rtph264depay ! nvv4l2decoder'; None: the Jetson CSI camera csi_sensor (nvarguscamerasrc).",
    )
    csi_sensor: int = Field(0, ge=0, description="nvarguscamerasrc sensor-id when pipeline is None.")
    reader: Literal["auto", "opencv", "gst-launch"] = Field(
        "auto", description="auto: OpenCV if it has GStreamer, else gst-launch-1.0 (gstreamer1.0-tools)."
    )

    @property
    def spec(self) -> str:
        return f"gst:{self.pipeline}" if self.pipeline else f"csi:{self.csi_sensor}"


class SimSource(_Scaled):
    """The simulated microscope over the bundled sample fields."""

    type: Literal["sim"] = "sim"
    script: Path | None = Field(None, description="A scan script (YAML); None: a random scan.")
    fps: float | None = Field(None, gt=0)

    @property
    def spec(self) -> str:
        return f"sim:{self.script}" if self.script else "sim"


class ReplaySource(_Scaled):
    """A folder of fields, an image or a video, replayed as a camera (paced to ``fps`` if given)."""

    type: Literal["replay"] = "replay"
    path: Path = DEFAULT_SAMPLES
    fps: float | None = Field(None, gt=0)

    @property
    def spec(self) -> str:
        return str(self.path)


class RingSource(_Scaled):
    """The frame ring a running ``marrow-edge capture`` writes (the appliance's two-service layout)."""

    type: Literal["ring"] = "ring"
    name: str = Field("capture", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @property
    def spec(self) -> str:
        return f"ring:{self.name}"


# Where frames come from, chosen by ``type``; the openers are registered under the same names in
# ``edge.capture.cameras.SOURCES``. The command line's --camera SPEC is a shorthand for one of these.
SourceConfig = Annotated[
    V4L2Source | RtspSource | GenICamSource | GStreamerSource | SimSource | ReplaySource | RingSource,
    Field(discriminator="type"),
]
