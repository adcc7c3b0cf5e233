"""The preview path: newest wins, counting first, boxes only where they belong."""

from __future__ import annotations

import base64
import threading
import time

import cv2
import numpy as np
import pytest

from edge.analysis.field import Cell, FieldResult
from edge.capture.gate import Decision, GateEvent
from edge.config import PreviewConfig
from edge.engines.bundle import ClassSpec
from edge.mqtt.factory import MessageFactory
from edge.mqtt.memory import MemoryPublisher
from edge.mqtt.messages import PreviewMessage
from edge.service.preview import PreviewPublisher
from tests.unit.mqtt.test_messages import PROVENANCE

CLASSES = [ClassSpec(name="lymphocyte", role="wbc", aliases=["LY"]), ClassSpec(name="monocyte", role="wbc")]


def _cell(x: float, name: str = "lymphocyte", countable: bool = True) -> Cell:
    return Cell((x, 10.0, x + 100.0, 110.0), 0.9, name, 0.8, np.array([0.8, 0.2]), 0.9, countable)


def _event(decision: Decision) -> GateEvent:
    return GateEvent(0, decision, decision.value, (0.0, 0.0), 0.0, 1.0, 1.0, 128.0, 0.0)


class CountingAnalyzer:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> FieldResult:
        self.calls += 1
        return FieldResult(0, "", image.shape[1], image.shape[0], [_cell(200.0, "monocyte")])


def _preview(publisher: MemoryPublisher, analyze=None, lock=None, **settings) -> PreviewPublisher:
    config = PreviewConfig(**{"fps": 30.0, "max_width": 640, **settings})
    return PreviewPublisher(publisher, MessageFactory("unit", PROVENANCE), config, CLASSES, analyze, lock).start()


def _wait_for(publisher: MemoryPublisher, n: int, timeout: float = 5.0) -> list[PreviewMessage]:
    deadline = time.monotonic() + timeout
    while len(publisher.on("preview")) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return publisher.on("preview")  # type: ignore[return-value]


def test_a_counted_field_is_published_scaled_with_its_cells():
    publisher = MemoryPublisher()
    preview = _preview(publisher)
    image = np.full((960, 1280, 3), (200, 120, 90), np.uint8)
    result = FieldResult(4, "f.jpg", 1280, 960, [_cell(100.0), _cell(600.0, countable=False)])
    preview.offer(image, result=result, slide_id="S1")
    (message,) = _wait_for(publisher, 1)
    preview.stop()
    assert (message.width, message.height, message.scale) == (640, 480, 0.5)
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(message.jpeg), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (480, 640, 3)
    assert np.abs(decoded[240, 320].astype(int) - (90, 120, 200)).max() < 8  # RGB in, BGR in the JPEG
    assert message.counted and message.slide_id == "S1" and message.field_index == 4
    assert [c.box for c in message.cells] == [(50.0, 5.0, 100.0, 55.0), (300.0, 5.0, 350.0, 55.0)]
    assert [(c.label, c.countable) for c in message.cells] == [("LY", True), ("LY", False)]
    assert message.classes == ["lymphocyte", "monocyte"]


def test_newest_frame_wins_and_the_rate_is_bounded():
    publisher = MemoryPublisher()
    preview = _preview(publisher, fps=5.0)
    frames = [np.full((48, 64, 3), i, np.uint8) for i in range(200)]
    started = time.monotonic()
    for frame in frames:  # far faster than 5 frames/s: offer never blocks
        preview.offer(frame)
    offering = time.monotonic() - started
    time.sleep(0.5)
    preview.stop()
    sent = publisher.on("preview")
    assert offering < 0.5
    assert 1 <= len(sent) <= 4  # 5 frames/s over ~0.5 s, not 200
    last = cv2.imdecode(np.frombuffer(base64.b64decode(sent[-1].jpeg), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert abs(int(last.mean()) - 199) <= 2  # the newest frame, not the first


def test_live_frames_are_analysed_only_when_the_count_path_is_idle():
    publisher = MemoryPublisher()
    analyzer = CountingAnalyzer()
    lock = threading.Lock()
    preview = _preview(publisher, analyzer, lock)
    frame = np.zeros((480, 640, 3), np.uint8)
    with lock:  # the count path is analysing a field
        preview.offer(frame, event=_event(Decision.SETTLING))
        (busy,) = _wait_for(publisher, 1)
    assert busy.cells is None and analyzer.calls == 0 and busy.gate == "settling"
    preview.offer(frame, event=_event(Decision.ALREADY_COUNTED))
    idle = _wait_for(publisher, 2)[-1]
    preview.stop()
    assert analyzer.calls == 1
    assert [(c.class_name, c.label) for c in idle.cells] == [("monocyte", "monocyte")]  # no alias: its name
    assert idle.gate == "already_counted" and not idle.counted


def test_boxes_are_reused_while_still_and_dropped_once_the_stage_moves():
    publisher = MemoryPublisher()
    analyzer = CountingAnalyzer()
    lock = threading.Lock()
    preview = _preview(publisher, analyzer, lock, box_refresh_s=60.0)
    frame = np.zeros((480, 640, 3), np.uint8)
    for n in range(1, 4):  # still: one analysis, its boxes on every frame
        preview.offer(frame, event=_event(Decision.ALREADY_COUNTED))
        _wait_for(publisher, n)
    assert analyzer.calls == 1
    assert all(m.cells for m in publisher.on("preview"))
    with lock:  # the stage moves while the count path is busy: the old boxes are wrong now
        preview.offer(frame, event=_event(Decision.MOVING))
        moved = _wait_for(publisher, 4)[-1]
    preview.offer(frame, event=_event(Decision.MOVING))
    _wait_for(publisher, 5)
    preview.stop()
    assert moved.cells is None
    assert analyzer.calls == 2  # re-analysed after the move, once the models were free


def test_a_failing_analysis_does_not_stop_the_preview():
    publisher = MemoryPublisher()

    def broken(image: np.ndarray) -> FieldResult:
        raise RuntimeError("engine fell over")

    preview = _preview(publisher, broken)
    preview.offer(np.zeros((48, 64, 3), np.uint8))
    time.sleep(0.2)
    preview.offer(np.zeros((48, 64, 3), np.uint8), result=FieldResult(0, "", 64, 48, []))
    sent = _wait_for(publisher, 1)
    preview.stop()
    assert len(sent) == 1 and sent[0].counted


@pytest.mark.parametrize("enabled", [True, False])
def test_boxes_setting_turns_live_analysis_off(enabled):
    publisher = MemoryPublisher()
    analyzer = CountingAnalyzer()
    preview = _preview(publisher, analyzer, boxes=enabled)
    preview.offer(np.zeros((48, 64, 3), np.uint8))
    (message,) = _wait_for(publisher, 1)
    preview.stop()
    assert analyzer.calls == (1 if enabled else 0)
    assert (message.cells is not None) is enabled


def test_no_preview_analysis_starts_while_the_gate_is_about_to_accept():
    publisher = MemoryPublisher()
    analyzer = CountingAnalyzer()
    preview = _preview(publisher, analyzer)
    preview.offer(np.zeros((48, 64, 3), np.uint8), event=_event(Decision.SETTLING))
    (message,) = _wait_for(publisher, 1)
    preview.stop()
    assert analyzer.calls == 0 and message.cells is None  # the models stay free for the count path


def test_preview_benchmark_smoke(tmp_path):
    from benchmarks import preview as bench

    report = bench.main(["--seconds", "2", "--camera-fps", "10", "--tag", "test", "--out", str(tmp_path)])
    baseline, boxes = report["variants"]["jpeg only (baseline)"], report["variants"]["boxes"]
    assert baseline["with_boxes"] == 0 and baseline["preview_frames_per_s"] > 0
    assert boxes["preview_frames_per_s"] > 0 and 0 <= boxes["with_boxes"] <= 1
    assert "| boxes |" in (tmp_path / f"preview-test-{report['date'][:10]}.md").read_text()
