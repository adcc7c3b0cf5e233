"""GStreamer cameras: the Jetson CSI pipeline as NVIDIA documents it (text only: no Jetson here),
and a real gst-launch-1.0 pipeline read frame by frame (videotestsrc stands in for the camera)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edge.capture.cameras import open_source, source_from_spec
from edge.capture.gstreamer import GstLaunchCamera, open_gstreamer, pipeline
from edge.config import GStreamerSource
from edge.errors import CameraError

needs_gst = pytest.mark.skipif(
    shutil.which("gst-launch-1.0") is None, reason="gst-launch-1.0 absent (apt-get install gstreamer1.0-tools)"
)


def test_the_csi_pipeline_is_nvidias():
    source = source_from_spec("csi:1")
    source = source.model_copy(update={"width": 1280, "height": 720, "fps": 30.0, "exposure": 5000.0})
    assert pipeline(source) == (
        'nvarguscamerasrc sensor-id=1 exposuretimerange="5000000 5000000" ! '
        "video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
    )
    # without a size: the common full-HD sensor mode, never the sensor's own default
    assert "width=1920,height=1080" in pipeline(GStreamerSource())


@needs_gst
@pytest.mark.parametrize("width", [320, 322])  # 322 x 3 bytes: rows padded to 4 bytes by GStreamer
def test_gst_launch_frames_arrive_as_rgb_of_the_asked_size(width):
    source = GStreamerSource(pipeline="videotestsrc num-buffers=4 pattern=red", width=width, height=240,
                             reader="gst-launch")  # fmt: skip
    camera = open_gstreamer(source)
    assert isinstance(camera, GstLaunchCamera)
    frames = camera.frames()
    try:
        got = [next(frames) for _ in range(4)]
        for frame in got:
            assert frame.image.shape == (240, width, 3) and frame.image.dtype == np.uint8
            assert np.abs(frame.image.reshape(-1, 3).mean(0) - (255, 0, 0)).max() < 3  # red stays red: RGB
        with pytest.raises(CameraError, match="pipeline ended"):
            next(frames)  # the test source ends; a camera that ends is an error (Reconnecting reopens it)
    finally:
        camera.close()


@needs_gst
def test_a_broken_pipeline_says_what_gstreamer_said():
    camera = open_gstreamer(GStreamerSource(pipeline="nosuchelement", width=64, height=64, reader="gst-launch"))
    try:
        with pytest.raises(CameraError, match="nosuchelement"):
            next(camera.frames())
    finally:
        camera.close()


@needs_gst
def test_the_configured_source_reconnects_like_any_camera():
    states = []
    source = open_source(source_from_spec("gst:videotestsrc num-buffers=2"), lambda s, d: states.append(s))
    frames = source.frames()
    first = [next(frames) for _ in range(3)]  # two, the pipeline ends, it is reopened: the third
    source.close()
    assert [f.index for f in first] == [0, 1, 2] and states[:2] == ["streaming", "reconnecting"]


def test_without_gstreamer_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr("edge.capture.gstreamer.shutil.which", lambda name: None)
    monkeypatch.setattr("edge.capture.gstreamer.opencv_has_gstreamer", lambda: False)
    with pytest.raises(CameraError, match=r"gstreamer1\.0-tools"):
        open_gstreamer(GStreamerSource(pipeline="videotestsrc"))
    with pytest.raises(CameraError, match="built without GStreamer"):
        open_gstreamer(GStreamerSource(pipeline="videotestsrc", reader="opencv"))
