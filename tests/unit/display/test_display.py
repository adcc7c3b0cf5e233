"""The display's MQTT feed and HTTP server, without a broker (the browser test has the real one)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.config import AppConfig, MqttConfig
from edge.counting.control import SlideControl
from edge.counting.rules import load_rule_pack
from edge.counting.tally import Slide, Tally
from edge.display.app import WebState, create_app
from edge.display.feed import DisplayFeed
from edge.display.server import DisplayServer
from edge.mqtt.commands import CommandHandler
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import encode
from edge.mqtt.topics import Topics
from tests.unit.mqtt.test_messages import CLASSES, PROVENANCE, _result

TOPICS = Topics("marrow/v1", "box-1")


def _message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    return message


def _deliver(feed: DisplayFeed, topic: str, payload: bytes) -> None:
    feed._on_message(feed._client, None, _message(topic, payload))


def _tally_payload(factory: MessageFactory, slide: Slide, fields: int = 1) -> bytes:
    tally = Tally(CLASSES, load_rule_pack(), target_count=10)
    for _ in range(fields):
        tally.add(_result())
    return encode(factory.tally(slide, tally))


@pytest.fixture
def feed() -> DisplayFeed:
    return DisplayFeed("127.0.0.1", 1, TOPICS, MqttConfig())  # never connected: messages are fed by hand


def test_the_feed_keeps_the_newest_valid_message_of_each_kind(feed):
    factory = MessageFactory("box-1", PROVENANCE)
    _deliver(feed, TOPICS.status, encode(factory.status("online")))
    _deliver(feed, TOPICS.status, b'{"kind": "status", "state": "on fire"}')  # invalid: dropped
    _deliver(feed, TOPICS.health, b"\xff\xfe not json")
    _deliver(feed, TOPICS.root + "/unknown", b"{}")  # not a topic of the API: ignored
    _deliver(feed, TOPICS.root + "/tally", _tally_payload(factory, Slide()))  # a tally outside slide/<id>/
    state = feed.snapshot()
    assert state["status"]["state"] == "online"
    assert "health" not in state and "tally" not in state
    assert feed.rejected == 2
    assert state["link"] == {"connected": False, "broker": "mqtt://127.0.0.1:1", "device_id": "box-1"}


def test_the_feed_follows_the_newest_slide_only(feed):
    factory = MessageFactory("box-1", PROVENANCE)
    old, new = Slide(slide_id="20261127T100000Z-aaaaaa"), Slide(slide_id="20261127T110000Z-bbbbbb")
    _deliver(feed, TOPICS.tally(new.slide_id), _tally_payload(factory, new, 2))
    # A retained tally of an earlier slide arrives after it (subscription order is not time order).
    _deliver(feed, TOPICS.tally(old.slide_id), _tally_payload(factory, old, 5))
    assert feed.snapshot()["tally"]["slide_id"] == new.slide_id
    assert feed.snapshot()["tally"]["fields"] == 2
    report = Tally(CLASSES, load_rule_pack(), target_count=10)
    _deliver(feed, TOPICS.report(new.slide_id), encode(factory.report(new, report)))
    newer = Slide(slide_id="20261127T120000Z-cccccc")
    _deliver(feed, TOPICS.field(newer.slide_id), encode(factory.field(newer, _result(), ["lymphoblast", "lymphocyte"])))
    state = feed.snapshot()
    assert state["field"]["slide_id"] == newer.slide_id
    assert "tally" not in state and "report" not in state  # nothing of the finished slide stays


def test_changes_hand_out_each_kind_once_and_newest_wins(feed):
    factory = MessageFactory("box-1", PROVENANCE)
    version, first = feed.changes(0, 0.01)
    assert [c.kind for c in first] == ["link"]
    for state in ("online", "stopped"):  # two statuses before the page asks: it gets the last one
        _deliver(feed, TOPICS.status, encode(factory.status(state)))  # type: ignore[arg-type]
    version, news = feed.changes(version, 0.01)
    assert [c.kind for c in news] == ["status", "gate"]
    assert json.loads(news[0].payload)["state"] == "stopped"
    assert json.loads(news[1].payload) is None  # a stopped box's last gate decision is cleared
    assert feed.changes(version, 0.01) == (version, [])


class LoopbackClient:
    """Stands in for paho: a command goes straight to a real CommandHandler, its reply back to the feed."""

    def __init__(self, feed: DisplayFeed, answer: bool = True) -> None:
        self.feed, self.answer = feed, answer
        self.handler = CommandHandler(SlideControl(300), MessageFactory("box-1", PROVENANCE))
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def is_connected(self) -> bool:
        return True

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.sent.append((topic, json.loads(payload)))
        if self.answer:
            verb = topic.rsplit("/", 1)[-1]
            reply = encode(self.handler.handle(verb, payload))
            threading.Timer(0.05, _deliver, (self.feed, TOPICS.command_reply(verb), reply)).start()


def test_a_command_is_published_and_its_own_reply_returned(feed):
    feed._client = LoopbackClient(feed)  # type: ignore[assignment]
    reply = feed.command("start_slide", {"specimen_id": "BM-7"}, timeout=5)
    ((topic, body),) = feed._client.sent  # type: ignore[attr-defined]
    assert topic == "marrow/v1/box-1/cmd/start_slide"
    assert body["specimen_id"] == "BM-7" and reply["request_id"] == body["request_id"]
    assert reply["ok"] is True and reply["specimen_id"] == "BM-7"
    refused = feed.command("start_slide", {"specimen_id": "not valid!"}, timeout=5)
    assert refused["ok"] is False and "specimen_id" in refused["error"]


def test_a_command_nobody_answers_says_so(feed):
    from edge.errors import PublishError

    with pytest.raises(PublishError, match="no connection to the broker"):
        feed.command("ping", {}, timeout=0.1)
    feed._client = LoopbackClient(feed, answer=False)  # type: ignore[assignment]
    with pytest.raises(PublishError, match=r"did not answer ping within 0\.2 s"):
        feed.command("ping", {}, timeout=0.2)


@pytest.fixture
def server(feed: DisplayFeed) -> Iterator[DisplayServer]:
    config = AppConfig.model_validate({"display": {"command_timeout_s": 0.3, "read_timeout_s": 1.0}})
    running = DisplayServer(create_app(WebState(feed, config)), "127.0.0.1", 0, read_timeout_s=1.0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.stop()


def _request(server: DisplayServer, method: str, path: str, body: bytes | None = None, **headers: str):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type"), response.read(), response


def test_the_page_and_its_assets_come_from_the_box(server):
    status, kind, body, response = _request(server, "GET", "/")
    assert status == 200 and kind.startswith("text/html")
    assert b'src="/static/app.js"' in body and b"http" not in body  # nothing from outside the box
    assert "default-src 'self'" in response.getheader("Content-Security-Policy")
    for name in ("app.js", "style.css"):
        status, _, asset, _ = _request(server, "GET", f"/static/{name}")
        assert status == 200 and b"http://" not in asset and b"https://" not in asset
    assert _request(server, "GET", "/static/../config.py")[0] == 404


def test_command_requests_are_checked_before_anything_is_published(server, feed):
    feed._client = LoopbackClient(feed)  # type: ignore[assignment]
    json_type = {"Content-Type": "application/json"}
    assert _request(server, "POST", "/api/command/ping", b"{}", **{"Content-Type": "text/plain"})[0] == 415
    status, _, body, _ = _request(server, "POST", "/api/command/explode", b"{}", **json_type)
    assert status == 404 and b"verbs: ping, set_target, start_slide, stop_slide" in body
    status, _, body, _ = _request(server, "POST", "/api/command/ping", b"{not json", **json_type)
    assert status == 400 and b"malformed JSON" in body
    assert _request(server, "POST", "/api/command/ping", b"[1, 2]", **json_type)[0] == 400
    assert _request(server, "POST", "/api/command/ping", b"x" * 5000, **json_type)[0] == 413
    assert feed._client.sent == []  # type: ignore[attr-defined]
    status, _, body, _ = _request(server, "POST", "/api/command/stop_slide", b"{}", **json_type)
    assert status == 200 and json.loads(body)["error"] == "no slide is being counted"


def test_no_answer_from_the_box_is_a_504_with_the_reason(server):
    status, _, body, _ = _request(server, "POST", "/api/command/ping", b"{}", **{"Content-Type": "application/json"})
    assert status == 504 and "no connection to the broker" in json.loads(body)["error"]


def test_events_stream_the_current_state_then_changes(server, feed):
    factory = MessageFactory("box-1", PROVENANCE)
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    conn.request("GET", "/events")
    response = conn.getresponse()
    assert response.getheader("Content-Type").startswith("text/event-stream")
    assert response.readline() == b"event: link\n"
    assert json.loads(response.readline()[len(b"data: ") :])["connected"] is False
    response.readline()
    _deliver(feed, TOPICS.status, encode(factory.status("online")))
    assert response.readline() == b"event: status\n"
    assert json.loads(response.readline()[len(b"data: ") :])["state"] == "online"
    conn.close()


def test_unusable_tls_files_are_a_clear_error(tmp_path):
    from edge.errors import PublishError

    with pytest.raises(PublishError, match="MQTT TLS files unusable"):
        DisplayFeed("127.0.0.1", 8883, TOPICS, MqttConfig(tls_ca=tmp_path / "missing-ca.pem"))
