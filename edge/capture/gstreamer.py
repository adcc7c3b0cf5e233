"""GStreamer cameras: a Jetson's CSI camera (nvarguscamerasrc) or any GStreamer source.

Two readers of the same pipeline, which always ends in packed BGR of a fixed size:
- OpenCV with GStreamer (JetPack's python3-opencv, seen through a venv with system site
  packages): ``cv2.VideoCapture(pipeline + " ! appsink", cv2.CAP_GSTREAMER)``;
- ``gst-launch-1.0`` writing raw frames to a pipe (``fdsink``), for OpenCV wheels built without
  GStreamer (PyPI's): needs only gstreamer1.0-tools and the source's plugins.

The CSI pipeline follows NVIDIA's Jetson camera documentation (nvarguscamerasrc -> NVMM ->
nvvidconv -> BGRx -> videoconvert -> BGR); it is built and checked here as text, but runs only on a
Jetson with a CSI camera, which this project's build machines lack.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator

import cv2
import numpy as np

from edge.capture.devices import OpenCVCamera
from edge.capture.source import Frame
from edge.config import GStreamerSource
from edge.errors import CameraError

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1920, 1080)  # the common IMX219/IMX477 full-HD mode


def frame_size(source: GStreamerSource) -> tuple[int, int]:
    return source.width or DEFAULT_SIZE[0], source.height or DEFAULT_SIZE[1]


def pipeline(source: GStreamerSource) -> str:
    """The pipeline up to (not including) its sink: BGR frames of ``frame_size(source)``."""
    width, height = frame_size(source)
    rate = f",framerate={round(source.fps)}/1" if source.fps else ""
    if source.pipeline is None:
        exposure = ""
        if source.exposure is not None:  # microseconds here; nvarguscamerasrc takes a range in ns
            ns = round(source.exposure * 1000)
            exposure = f' exposuretimerange="{ns} {ns}"'
        return (
            f"nvarguscamerasrc sensor-id={source.csi_sensor}{exposure} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height}{rate} ! "
            "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
        )
    return (
        f"{source.pipeline} ! videoconvert ! videoscale ! videorate ! "
        f"video/x-raw,format=BGR,width={width},height={height}{rate}"
    )


def opencv_has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def opencv_camera(source: GStreamerSource) -> OpenCVCamera:
    """The pipeline through OpenCV's GStreamer backend (appsink, newest frame kept)."""
    text = pipeline(source) + " ! appsink drop=true max-buffers=2 sync=false"
    return OpenCVCamera(text, backend=cv2.CAP_GSTREAMER, name=f"gstreamer {source.spec}")


class GstLaunchCamera:
    """The pipeline run by ``gst-launch-1.0``, raw BGR frames read from its standard output."""

    def __init__(self, source: GStreamerSource, executable: str | None = None) -> None:
        self.name = f"gstreamer {source.spec}"
        executable = executable or shutil.which("gst-launch-1.0")
        if executable is None:
            raise CameraError(
                f"{self.name}: needs OpenCV built with GStreamer (JetPack's python3-opencv, venv with system "
                "site packages) or gst-launch-1.0 (apt-get install gstreamer1.0-tools)"
            )
        self.width, self.height = frame_size(source)
        # GStreamer pads each row of packed 24-bit video to 4 bytes
        self._stride = (self.width * 3 + 3) // 4 * 4
        self._size = self._stride * self.height
        command = [executable, "-q", *shlex.split(pipeline(source)), "!", "fdsink", "fd=1", "sync=false"]
        log.info("%s: %s", self.name, shlex.join(command))
        try:
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            raise CameraError(f"{self.name}: cannot run gst-launch-1.0: {exc}") from None
        # stderr is drained in the background (a full pipe would stall the pipeline), the tail kept
        self._errors: deque[str] = deque(maxlen=20)
        threading.Thread(target=self._drain, daemon=True, name="gst-stderr").start()

    def _drain(self) -> None:
        assert self._process.stderr is not None
        for line in iter(self._process.stderr.readline, b""):
            self._errors.append(line.decode(errors="replace").rstrip())

    def _read_frame(self) -> np.ndarray | None:
        buffer = bytearray(self._size)
        view, got = memoryview(buffer), 0
        assert self._process.stdout is not None
        while got < self._size:
            n = self._process.stdout.readinto(view[got:])
            if not n:
                return None
            got += n
        rows = np.frombuffer(buffer, np.uint8).reshape(self.height, self._stride)
        return rows[:, : self.width * 3].reshape(self.height, self.width, 3)

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            bgr = self._read_frame()
            if bgr is None:
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                time.sleep(0.05)  # let the stderr reader catch the last lines
                why = "; ".join(self._errors) or f"exit status {self._process.returncode}"
                raise CameraError(f"{self.name}: pipeline ended ({why})")
            yield Frame(index, f"{self.name}#{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, time.monotonic())
            index += 1

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


def open_gstreamer(source: GStreamerSource) -> OpenCVCamera | GstLaunchCamera:
    reader = source.reader
    if reader == "auto":
        reader = "opencv" if opencv_has_gstreamer() else "gst-launch"
    if reader == "opencv":
        if not opencv_has_gstreamer():
            raise CameraError(f"gstreamer {source.spec}: this OpenCV was built without GStreamer (reader: gst-launch)")
        return opencv_camera(source)
    return GstLaunchCamera(source)
