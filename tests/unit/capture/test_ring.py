"""The shared-memory frame ring, across real processes."""

import multiprocessing as mp
import os
import signal
import time
import uuid

import numpy as np
import pytest

from edge.capture.ring import FrameRing, RingReader
from edge.errors import CameraError


@pytest.fixture
def name():
    return f"test-{uuid.uuid4().hex[:8]}"


def frame(value, shape=(48, 64, 3)):
    return np.full(shape, value % 256, np.uint8)


def test_reader_gets_the_newest_frame_and_counts_what_it_skipped(name, tmp_path):
    with FrameRing(name, slots=4, lock_dir=tmp_path) as ring:
        reader = RingReader(name)
        assert reader.latest() is None  # nothing written yet
        ring.write(frame(1))
        first = reader.latest()
        assert first.seq == 1 and first.image[0, 0, 0] == 1 and first.skipped == 0
        assert reader.latest() is None  # nothing new
        for v in range(2, 8):
            ring.write(frame(v))
        newest = reader.latest()
        assert newest.seq == 7 and newest.image[0, 0, 0] == 7 and newest.skipped == 5
        assert ring.overwritten >= 2  # slots of frames 2..3 were reused before anyone read them
        reader.close()


def _write_forever(name, lock_dir, ready):
    ring = FrameRing(name, slots=3, lock_dir=lock_dir)
    ready.set()
    value = 0
    while True:
        value += 1
        ring.write(np.full((240, 320, 3), value % 256, np.uint8))


def test_no_torn_frame_while_a_fast_writer_laps_the_reader(name, tmp_path):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    writer = ctx.Process(target=_write_forever, args=(name, tmp_path, ready), daemon=True)
    writer.start()
    try:
        assert ready.wait(30)
        reader = RingReader(name)
        frames = [f for f in (reader.wait(2.0) for _ in range(300)) if f is not None]
        assert len(frames) > 100
        for f in frames:  # a torn frame would mix two values
            assert f.image.min() == f.image.max()
        assert [f.seq for f in frames] == sorted(f.seq for f in frames)
        assert reader.skipped > 0  # the writer is faster than this reader, and never waited
    finally:
        writer.kill()
        writer.join()


def test_a_second_writer_is_refused(name, tmp_path):
    refusal = f"frame ring '{name}' already has a writer \\(pid {os.getpid()}\\)"
    with FrameRing(name, lock_dir=tmp_path), pytest.raises(CameraError, match=refusal):
        FrameRing(name, lock_dir=tmp_path)


def _write_then_hang(name, lock_dir, ready):
    ring = FrameRing(name, lock_dir=lock_dir)
    ring.write(np.zeros((8, 8, 3), np.uint8))
    ready.set()
    time.sleep(60)


def test_a_crashed_writers_segment_is_cleaned_at_start(name, tmp_path, caplog):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    crashed = ctx.Process(target=_write_then_hang, args=(name, tmp_path, ready))
    crashed.start()
    assert ready.wait(30)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.join()
    assert os.path.exists(f"/dev/shm/marrow-edge-{name}")  # left behind by the crash
    with FrameRing(name, lock_dir=tmp_path) as ring:
        assert "removed the stale frame ring" in caplog.text
        ring.write(frame(9))
        got = RingReader(name).latest()
        assert got.seq == 1 and got.image[0, 0, 0] == 9
    assert not os.path.exists(f"/dev/shm/marrow-edge-{name}")  # a clean close leaves nothing


def test_resolution_change_recreates_the_ring_and_readers_follow(name, tmp_path, caplog):
    with FrameRing(name, lock_dir=tmp_path) as ring:
        reader = RingReader(name)
        ring.write(frame(1, (48, 64, 3)))
        assert reader.latest().image.shape == (48, 64, 3)
        ring.write(frame(2, (120, 160, 3)))
        got = reader.latest()
        assert got is not None and got.image.shape == (120, 160, 3) and got.image[0, 0, 0] == 2
        assert ring.recreated == 1 and "frame ring re-created" in caplog.text


def test_bad_frames_are_refused(name, tmp_path):
    with FrameRing(name, lock_dir=tmp_path) as ring, pytest.raises(ValueError, match="uint8"):
        ring.write(np.zeros((8, 8, 3), np.float32))


def test_a_segment_caught_before_its_header_is_written_is_not_an_error(name):
    from multiprocessing import shared_memory

    raw = shared_memory.SharedMemory(name=f"marrow-edge-{name}", create=True, size=4096)  # zeros, as just created
    try:
        assert RingReader(name).latest() is None
        raw.buf[:8] = b"NOTARING"
        with pytest.raises(CameraError, match="is not a marrow-edge frame ring"):
            RingReader(name).latest()
    finally:
        raw.close()
        raw.unlink()
