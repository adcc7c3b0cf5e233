"""Live sources, reconnects, the capture daemon's loop and its systemd notifications."""

import socket
import threading
import time
import uuid

import numpy as np
import pytest

from edge.capture.cameras import load_script, open_camera
from edge.capture.daemon import CaptureThread, GatedRingSource, capture_loop
from edge.capture.devices import OpenCVCamera, Paced, Reconnecting
from edge.capture.ring import FrameRing, RingReader
from edge.capture.simulator import SimulatedMicroscope, build_slide
from edge.capture.source import Frame
from edge.errors import CameraError
from edge.systemd import sd_notify


class Flaky:
    """A camera that yields ``good`` frames then fails, as an unplugged USB camera does."""

    def __init__(self, good, fail_with="read failed"):
        self.name = "flaky"
        self.good = good
        self.fail_with = fail_with
        self.closed = False

    def frames(self):
        for i in range(self.good):
            yield Frame(i, f"f{i}", np.full((8, 8, 3), i, np.uint8))
        raise CameraError(self.fail_with)

    def close(self):
        self.closed = True


def test_reconnect_with_backoff_and_states():
    opened, states = [], []

    def opener():
        opened.append(1)
        if len(opened) in (2,) or len(opened) > 3:
            raise CameraError("no such device")  # unplugged on the first retry, and for good later
        return Flaky(3)

    source = Reconnecting(opener, "cam", lambda s, d: states.append(s), first_delay=0.01, max_attempts=3)
    got = []
    with pytest.raises(CameraError, match="gave up after 3 attempts: no such device"):
        for frame in source.frames():
            got.append(frame.index)
    assert got == list(range(6))  # frames keep counting across the reconnect
    assert states == ["streaming", "reconnecting", "absent", "streaming", "reconnecting", "absent", "absent"]
    assert len(opened) == 5  # the read failure and two failed opens: three in a row without a frame


def test_camera_absent_at_start_is_a_clear_error():
    with pytest.raises(CameraError, match="camera /dev/video99: cannot open"):
        OpenCVCamera("/dev/video99")


def test_paced_replay(samples):
    import time

    from edge.capture.replay import open_replay

    start = time.monotonic()
    frames = list(Paced(open_replay(samples), fps=40).frames())
    assert len(frames) == 8 and time.monotonic() - start >= 7 / 40 * 0.9


def test_simulator_script_files(tmp_path):
    good = tmp_path / "scan.yaml"
    good.write_text("- [rest, 3]\n- [goto, 100, 50, 4]\n")
    assert load_script(good) == [["rest", 3], ["goto", 100, 50, 4]]
    bad = tmp_path / "bad.yaml"
    bad.write_text("rest: 3\n")
    with pytest.raises(CameraError, match="expected a list of steps"):
        load_script(bad)
    sim = open_camera(f"sim:{good}")
    assert sum(1 for _ in sim.frames()) == 7


def _systemd_socket(tmp_path, monkeypatch, watchdog_usec: str, timeout: float) -> socket.socket:
    """Stands in for systemd's notify socket, with a watchdog of ``watchdog_usec``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    listener.bind(address)
    listener.settimeout(timeout)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", watchdog_usec)
    return listener


def _notifications(listener: socket.socket) -> list[str]:
    """Everything sent to the socket, until it stays quiet for its timeout."""
    messages = []
    while True:
        try:
            messages.append(listener.recv(4096).decode())
        except TimeoutError:
            return messages


def test_capture_loop_fills_the_ring_counts_corrupt_frames_and_notifies(samples, tmp_path, monkeypatch):
    listener = _systemd_socket(tmp_path, monkeypatch, watchdog_usec="2", timeout=2)  # ping on every frame

    class WithCorrupt:
        name = "test camera"

        def frames(self):
            yield Frame(0, "a", np.zeros((16, 16, 3), np.uint8))
            yield Frame(1, "b", None, "truncated JPEG")
            yield Frame(2, "c", np.ones((16, 16, 3), np.uint8))

        def close(self):
            pass

    name = f"t-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr("edge.capture.ring.LOCK_DIR", tmp_path)
    stats = capture_loop(WithCorrupt(), name, slots=4)
    assert (stats.frames, stats.corrupt) == (2, 1)
    messages = _notifications(listener)
    assert messages[0].startswith("READY=1") and "WATCHDOG=1" in messages and messages[-1] == "STOPPING=1"


def test_a_second_capture_daemon_on_the_same_ring_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("edge.capture.ring.LOCK_DIR", tmp_path)
    name = f"t-{uuid.uuid4().hex[:8]}"
    with FrameRing(name, lock_dir=tmp_path), pytest.raises(CameraError, match="already has a writer"):
        capture_loop(Flaky(1), name)


def test_sd_notify_without_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_gated_ring_source_counts_each_stop_once(samples):
    slide = build_slide(samples, 8, 6)
    # 10 frames/s and rests of 8 frames: a loaded 2-core machine still sees 3 still frames per rest
    script = [["rest", 8], ["goto", 700, 0, 12], ["rest", 8], ["goto", 10, 10, 12], ["rest", 8]]
    name = f"t-{uuid.uuid4().hex[:8]}"
    source = GatedRingSource(name, idle_timeout=1.5)
    capture = CaptureThread(SimulatedMicroscope(slide, script, fps=10), name).start()
    try:
        fields = list(source.frames())
    finally:
        capture.close()
        source.close()
    assert len(fields) == 2  # the start and the new stop; the return is refused
    assert capture.error is None and capture.stats.frames == 48
    assert RingReader(name).latest() is None  # the ring is gone with the capture
    assert threading.active_count() >= 1


def test_between_slides_frames_reach_the_live_view_ungated_and_the_watchdog_is_fed(tmp_path, monkeypatch):
    # WatchdogSec=0.2: ping every 0.1 s
    listener = _systemd_socket(tmp_path, monkeypatch, watchdog_usec="200000", timeout=0.5)
    name = f"t-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[int, object]] = []
    with FrameRing(name, slots=4, lock_dir=tmp_path) as ring:
        ring.write(np.zeros((8, 8, 3), np.uint8))  # the frame size is known once the first frame is in
        source = GatedRingSource(name, idle_timeout=5)
        source.on_frame = lambda image, event: seen.append((int(image[0, 0, 0]), event))
        start = threading.Event()

        def write_frames() -> None:
            for i in range(1, 11):
                ring.write(np.full((8, 8, 3), i, np.uint8))
                time.sleep(0.05)

        writer = threading.Thread(target=write_frames)
        writer.start()
        source.watch(start, timeout=1.0)  # no start_slide yet: watches until the timeout
        writer.join()
        start.set()
        source.watch(start, timeout=10.0)  # start_slide arrived: returns at once
        source.close()
    assert [v for v, _ in seen] == sorted(v for v, _ in seen) and len(seen) >= 5
    assert all(event is None for _, event in seen)  # no gate: nothing could be counted
    pings = _notifications(listener)
    assert pings.count("WATCHDOG=1") >= 3
