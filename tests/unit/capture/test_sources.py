"""Sources chosen by type: the --camera shorthand, the config's source, and the registry between them."""

import typing
from pathlib import Path

import pytest

from edge.capture.cameras import SOURCES, CameraSettings, open_source, source_from_spec
from edge.config import AppConfig, RingSource, SourceConfig, load_config
from edge.errors import ConfigError
from edge.service.endpoints import live_source


@pytest.mark.parametrize(
    ("spec", "kind", "key"),
    [
        ("0", "v4l2", "0"),
        ("/dev/video2", "v4l2", "/dev/video2"),
        ("rtsp://scope.lab:8554/live", "rtsp", "rtsp://scope.lab:8554/live"),
        ("genicam:ABC123@/opt/vendor/p.cti", "genicam", "genicam:ABC123@/opt/vendor/p.cti"),
        ("csi:1", "gstreamer", "csi:1"),
        ("gst:v4l2src device=/dev/video1", "gstreamer", "gst:v4l2src device=/dev/video1"),
        ("sim", "sim", "sim"),
        ("ring:capture", "ring", "ring:capture"),
        ("samples/marrow", "replay", "samples/marrow"),
    ],
)
def test_the_camera_shorthand_names_a_typed_source(spec, kind, key):
    source = source_from_spec(spec, CameraSettings(fps=5))
    assert source.type == kind and source.spec == key
    if kind in ("v4l2", "rtsp", "genicam", "gstreamer", "sim", "replay"):
        assert source.fps == 5


def test_every_source_type_has_an_opener():
    members = typing.get_args(typing.get_args(SourceConfig)[0])
    types = {typing.get_args(m.model_fields["type"].annotation)[0] for m in members}
    assert types == set(SOURCES)


def test_a_bad_shorthand_is_a_config_error():
    with pytest.raises(ConfigError, match="camera 'genicam:'"):
        source_from_spec("genicam:")


def test_the_config_source_is_used_when_the_command_line_names_none(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source:\n  type: sim\n  fps: 4\n")
    config = load_config(path)
    camera, ring = live_source(None, None, None, config)
    assert camera is not None and camera.type == "sim" and camera.fps == 4 and ring is None
    assert live_source(None, None, None, AppConfig(source={"type": "ring", "name": "cap2"})) == (None, "cap2")
    assert live_source("0", None, None, config)[0].type == "v4l2"  # the command line wins
    with pytest.raises(ConfigError, match="nothing to count"):
        live_source(None, None, None, AppConfig())
    path.write_text("source:\n  type: v4l2\n  url: rtsp://x\n")  # an rtsp key under v4l2
    with pytest.raises(ConfigError, match=r"source\.url: unknown key"):
        load_config(path)


def test_a_replay_source_opens_the_sample_fields(samples):
    source = open_source(source_from_spec(str(samples)))
    frames = list(source.frames())
    assert len(frames) == len(list(Path(samples).glob("*.jpg"))) and all(f.image is not None for f in frames)
    with pytest.raises(ConfigError, match="read by `marrow-edge run --ring`"):
        open_source(RingSource(name="capture"))
