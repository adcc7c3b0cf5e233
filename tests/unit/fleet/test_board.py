"""The fleet board's rules without a broker: messages are fed to its MQTT callback as paho hands them
over (topic, payload, retain), the clock is the argument of ``_settle``."""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import pytest

from benchmarks.fleet import SimulatedBox
from edge.config import MqttConfig
from edge.errors import PublishError
from edge.fleet import board as board_module
from edge.fleet.board import FleetBoard
from edge.mqtt.factory import MessageFactory

P = "marrow/v1"


@pytest.fixture
def board() -> FleetBoard:
    return FleetBoard("127.0.0.1", 1, MqttConfig(), P, health_interval_s=10.0, offline_after=1.25)


def _sim(device_id: str = "box-1") -> SimulatedBox:
    """Only its message builders are used (it never connects)."""
    return SimulatedBox("127.0.0.1", 1, device_id, health_s=2.0)


def _feed(board: FleetBoard, topic: str, payload: bytes | str, retain: bool = False) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    board._on_message(None, None, SimpleNamespace(topic=topic, payload=data, retain=retain))  # type: ignore[arg-type]


def _status(sim: SimulatedBox, state: str = "online") -> str:
    return sim.factory.status(state).model_dump_json(by_alias=True)  # type: ignore[arg-type]


def test_a_box_is_online_with_its_status_health_and_current_slide(board):
    sim = _sim()
    sim.begin("BM-1")
    sim.counted, sim.blasts = 60, 21
    _feed(board, f"{P}/box-1/status", _status(sim), retain=True)
    _feed(board, f"{P}/box-1/health", sim.health().model_dump_json())
    _feed(board, f"{P}/box-1/current", sim.current().model_dump_json(), retain=True)
    (card,) = board.snapshot()["boxes"]
    assert card["state"] == "online" and card["device_id"] == "box-1"
    assert card["current"]["cells_counted"] == 60 and card["current"]["percent"]["blast"] == 35.0
    assert card["current"]["intervals"]["blast"][0] < 35.0 < card["current"]["intervals"]["blast"][1]
    assert card["health"]["interval_s"] == 2.0 and board.boxes["box-1"].interval_s == 2.0
    assert board.handled == 3 and board.invalid == 0


def test_silence_beyond_the_box_own_health_period_is_offline_and_a_message_brings_it_back(board):
    sim = _sim()
    _feed(board, f"{P}/box-1/status", _status(sim), retain=True)
    _feed(board, f"{P}/box-1/health", sim.health().model_dump_json())  # says: every 2 s
    box = board.boxes["box-1"]
    with board._cond:
        board._settle(box, box.heard + 2.4)
    assert box.state == "online"
    with board._cond:
        board._settle(box, box.heard + 2.6)  # over 1.25 of its 2 s (not the 10 s default)
    assert box.state == "offline" and "silent" in box.why
    _feed(board, f"{P}/box-1/health", sim.health().model_dump_json())
    assert box.state == "online"


def test_a_retained_slide_does_not_prove_the_box_is_there(board):
    sim = _sim()
    _feed(board, f"{P}/box-1/current", sim.current("finished").model_dump_json(), retain=True)
    assert board.boxes["box-1"].state == "unknown" and board.boxes["box-1"].heard == 0.0
    _feed(board, f"{P}/box-1/status", _status(sim, "stopped"), retain=True)
    assert board.boxes["box-1"].state == "stopped"
    _feed(board, f"{P}/box-1/status", _status(sim, "offline"), retain=True)
    assert board.boxes["box-1"].state == "offline" and "last will" in board.boxes["box-1"].why


def test_invalid_messages_are_counted_logged_once_and_never_shown(board, caplog):
    sim = _sim()
    caplog.set_level(logging.WARNING)
    for payload in (_status(_sim("other-box")), "{not json", json.dumps({"kind": "health"})):
        _feed(board, f"{P}/box-1/health" if "health" in payload else f"{P}/box-1/status", payload)
    _feed(board, f"{P}/box-1/health", "{not json either")
    assert board.invalid == 4 and "box-1" not in board.boxes
    assert sum("dropped an invalid" in r.message for r in caplog.records) == 2  # once per box and kind
    assert any("'other-box' sent on 'box-1'" in r.message for r in caplog.records)
    _feed(board, f"{P}/box-1/status", b"")  # a retained topic cleared: not an error
    _feed(board, f"{P}/box-1/slide/S/tally", _status(sim))  # not followed
    assert board.invalid == 4 and not board.boxes


def test_a_hostile_value_stays_data(board):
    sim = _sim()
    sim.begin("BM-1")
    current = json.loads(sim.current().model_dump_json())
    current["specimen_id"] = "<img src=x onerror=alert(1)>"  # the schema admits any text here: the page never parses it
    _feed(board, f"{P}/box-1/current", json.dumps(current))
    assert board.snapshot()["boxes"][0]["current"]["specimen_id"] == "<img src=x onerror=alert(1)>"


def test_the_board_is_bounded(board, monkeypatch):
    monkeypatch.setattr(board_module, "MAX_BOXES", 3)
    for i in range(5):
        _feed(board, f"{P}/box-{i}/status", _status(_sim(f"box-{i}")))
    assert len(board.boxes) == 3 and board.invalid == 2


def test_changes_hand_over_only_the_boxes_changed_since(board):
    for name in ("a", "b"):
        _feed(board, f"{P}/{name}/status", _status(_sim(name)))
    version, news = board.changes(0, 0.0)
    assert {n["device_id"] for n in news} == {"a", "b"}
    _feed(board, f"{P}/b/health", _sim("b").health().model_dump_json())
    version2, news = board.changes(version, 0.0)
    assert [n["device_id"] for n in news] == ["b"] and version2 > version
    started = time.monotonic()
    assert board.changes(version2, 0.2) == (version2, []) and time.monotonic() - started >= 0.2


def test_commands_the_fleet_may_send_and_how_it_refuses(board):
    _feed(board, f"{P}/box-1/status", _status(_sim()))
    with pytest.raises(ValueError, match="start_slide and stop_slide only"):
        board.command("box-1", "set_target", {"target_count": 5}, 0.1)
    with pytest.raises(KeyError):
        board.command("nobody", "stop_slide", {}, 0.1)
    with pytest.raises(ValueError, match="specimen_id"):
        board.command("box-1", "start_slide", {"specimen_id": "../etc/passwd; rm"}, 0.1)
    with pytest.raises(ValueError, match="Extra inputs"):
        board.command("box-1", "stop_slide", {"force": True}, 0.1)
    with pytest.raises(PublishError, match="no connection to the broker"):
        board.command("box-1", "stop_slide", {}, 0.1)


def test_a_box_reply_reaches_the_waiting_command(board, monkeypatch):
    _feed(board, f"{P}/box-1/status", _status(_sim()))
    factory = MessageFactory("box-1", _sim().factory.provenance)
    from edge.mqtt.commands import CommandReply

    def publish(topic: str, payload: str, qos: int) -> None:
        request_id = json.loads(payload)["request_id"]
        reply = CommandReply(**factory._envelope(), verb="stop_slide", request_id=request_id, ok=False,
                             error="no slide is being counted", state="idle")  # fmt: skip
        _feed(board, f"{P}/box-1/cmd/stop_slide/reply", reply.model_dump_json())

    monkeypatch.setattr(board._client, "is_connected", lambda: True)
    monkeypatch.setattr(board._client, "publish", publish)
    answer = board.command("box-1", "stop_slide", {}, 1.0)
    assert answer["ok"] is False and answer["error"] == "no slide is being counted"
