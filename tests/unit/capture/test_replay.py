import shutil

import cv2
import numpy as np
import pytest

from edge.capture.replay import VideoSource, open_replay
from edge.errors import CameraError


def test_folder_in_name_order_with_bad_files_reported(tmp_path, samples):
    good = sorted(samples.glob("*.jpg"))[:2]
    shutil.copy(good[0], tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(good[1].read_bytes()[:500])  # truncated
    shutil.copy(good[1], tmp_path / "c.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    frames = list(open_replay(tmp_path).frames())
    assert [f.name for f in frames] == ["a.jpg", "b.jpg", "c.jpg"]
    assert frames[0].image is not None and frames[2].image is not None
    assert frames[1].image is None and "truncated" in frames[1].error


def test_single_image(samples):
    path = sorted(samples.glob("*.jpg"))[0]
    frames = list(open_replay(path).frames())
    assert len(frames) == 1 and frames[0].image is not None


def test_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for i in range(4):
        frame = np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8)  # colour, with contrast
        writer.write(frame)
    writer.release()
    source = open_replay(path)
    assert isinstance(source, VideoSource)
    frames = list(source.frames())
    source.close()
    assert len(frames) == 4
    assert frames[0].image.shape == (64, 96, 3)
    assert frames[3].name == "clip.avi#3"


def test_unusable_sources(tmp_path):
    with pytest.raises(CameraError, match="no such file"):
        open_replay(tmp_path / "absent")
    with pytest.raises(CameraError, match="no images"):
        open_replay(tmp_path)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(CameraError, match="not a folder, an image or a video"):
        open_replay(tmp_path / "x.csv")
    (tmp_path / "broken.mp4").write_bytes(b"nope")
    with pytest.raises(CameraError, match="cannot open"):
        open_replay(tmp_path / "broken.mp4")


def test_paced_replay_does_not_wait_for_fields_counted_before_a_restart(samples, monkeypatch):
    from edge.capture import devices

    slept: list[float] = []
    monkeypatch.setattr(devices.time, "sleep", slept.append)  # count the waits instead of waiting
    paced = devices.Paced(open_replay(samples), fps=2)
    names = sorted(p.name for p in samples.glob("*.jpg"))
    paced.skip = set(names[:6])
    frames = list(paced.frames())
    assert len(frames) == 8
    assert len(slept) <= 1 and sum(slept) <= 0.5  # at most the wait before the second new field
