"""The display's view of one box, kept from its MQTT messages (the same API as any dashboard).

One paho subscriber keeps the newest valid message of each kind (status, health, gate,
preview, the current slide's tally/report/field, command replies). Page clients wait
for changes and always get the newest state: a slow tablet skips intermediate frames
and tallies instead of queueing them (newest wins, memory stays bounded).
A payload that does not validate is logged and dropped; it never reaches the page.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ValidationError

from edge.config import MqttConfig
from edge.errors import PublishError
from edge.mqtt.channels import BY_NAME, DEVICE_KINDS, SLIDE_KINDS
from edge.mqtt.commands import MAX_PAYLOAD_BYTES, VERBS, CommandReply, ReplyWaiter
from edge.mqtt.messages import (
    StatusMessage,
)
from edge.mqtt.publisher import make_client, start_loop
from edge.mqtt.topics import Topics

log = logging.getLogger(__name__)

# The kinds the page shows, from the one channel table: device-level ones, a slide's, command replies.
MODELS: dict[str, type[BaseModel]] = {name: BY_NAME[name].model for name in (*DEVICE_KINDS, *SLIDE_KINDS)} | {
    "reply": CommandReply
}


@dataclass
class Change:
    kind: str
    version: int
    payload: str  # JSON text, as the page receives it


class DisplayFeed:
    """Subscribes to one box's topics; ``changes`` hands page clients what is new."""

    def __init__(self, host: str, port: int, topics: Topics, config: MqttConfig) -> None:
        self.host, self.port = host, port
        self.topics = topics
        self.config = config
        self._cond = threading.Condition()
        self._latest: dict[str, Change] = {}
        self._version = 0
        self._slide: str | None = None  # id of the newest slide seen
        self._replies = ReplyWaiter()
        self.rejected = 0
        self.on_connected: list[Any] = []  # called (no arguments) after every (re)connect: re-send what waits
        client = make_client(config, f"marrow-display-{topics.device_id}")
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._link(connected=False)

    # -- state -------------------------------------------------------------------------------
    def _set(self, kind: str, payload: str) -> None:
        """``payload``: one line of JSON (an SSE data line may not break)."""
        with self._cond:
            self._version += 1
            self._latest[kind] = Change(kind, self._version, payload)
            self._cond.notify_all()

    def _link(self, connected: bool) -> None:
        """The display's own link to the broker: without it the page must not look live."""
        broker = f"mqtt://{self.host}:{self.port}"
        link = {"connected": connected, "broker": broker, "device_id": self.topics.device_id}
        self._set("link", json.dumps(link, separators=(",", ":")))

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {kind: json.loads(c.payload) for kind, c in self._latest.items()}

    def changes(self, since: int, timeout: float) -> tuple[int, list[Change]]:
        """Kinds whose newest message is newer than ``since`` (waits up to ``timeout`` for one)."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > since, timeout)
            news = sorted((c for c in self._latest.values() if c.version > since), key=lambda c: c.version)
            return self._version, news

    # -- MQTT ---------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("display: broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        root = self.topics.root
        client.subscribe(
            [(f"{root}/{kind}", 0) for kind in DEVICE_KINDS]
            + [(f"{root}/slide/+/{kind}", 1) for kind in SLIDE_KINDS]
            + [(f"{root}/cmd/+/reply", 1)]
        )
        self._link(connected=True)
        for hook in self.on_connected:
            threading.Thread(target=hook, name="display-resend", daemon=True).start()  # not on paho's thread
        log.info("display: subscribed to %s/# on mqtt://%s:%d", root, self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._link(connected=False)
        if reason.is_failure:
            log.warning("display: lost the broker (%s); reconnecting", reason)

    def _kind_of(self, topic: str) -> str | None:
        rest = topic[len(self.topics.root) + 1 :].split("/")
        if len(rest) == 1 and rest[0] in DEVICE_KINDS:
            return rest[0]
        if len(rest) == 3 and rest[0] == "slide" and rest[2] in SLIDE_KINDS:
            return rest[2]
        if len(rest) == 3 and rest[0] == "cmd" and rest[2] == "reply":
            return "reply"
        return None

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = self._kind_of(message.topic)
        if kind is None or not message.payload:  # an empty retained message clears a topic
            return
        try:
            model = MODELS[kind].model_validate_json(message.payload)
        except ValidationError as exc:
            self.rejected += 1
            log.warning("display: dropped an invalid %s message on %s: %s", kind, message.topic, exc.errors()[0]["msg"])
            return
        if kind in SLIDE_KINDS and not self._is_current_slide(model.slide_id):  # type: ignore[attr-defined]
            return
        if isinstance(model, CommandReply):
            self._replies.answer(model)
        self._set(kind, model.model_dump_json(by_alias=True))  # re-encoded: compact, only the model's fields
        if isinstance(model, StatusMessage) and model.state != "online":
            self._set("gate", "null")  # the run ended: its last gate decision no longer describes the stage

    def _is_current_slide(self, slide_id: str) -> bool:
        """Retained tallies of earlier slides arrive too: follow the newest slide only.

        Slide ids begin with their UTC start time (``20261127T131331Z-532641``), so they sort by it.
        """
        with self._cond:
            if self._slide is not None and slide_id < self._slide:
                return False
            if self._slide is not None and slide_id != self._slide:
                for kind in SLIDE_KINDS:  # a new slide: nothing of the old one stays on the page
                    self._latest.pop(kind, None)
            self._slide = slide_id
            return True

    # -- commands -----------------------------------------------------------------------------
    def command(self, verb: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Publish ``cmd/<verb>`` and wait for the box's reply (raises PublishError without one)."""
        if verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}; verbs: {', '.join(sorted(VERBS))}")
        with self._replies.expect() as (request_id, pending):
            payload = json.dumps({**body, "request_id": request_id}).encode()
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"command over {MAX_PAYLOAD_BYTES} bytes")
            if not self._client.is_connected():
                raise PublishError(f"the display has no connection to the broker mqtt://{self.host}:{self.port}")
            self._client.publish(f"{self.topics.root}/cmd/{verb}", payload, qos=1)
            if not pending.done.wait(timeout):
                raise PublishError(f"the box did not answer {verb} within {timeout:g} s: is it online?")
            return pending.reply  # type: ignore[return-value]

    def publish(self, topic: str, message: BaseModel, retain: bool = False, timeout: float = 5.0) -> bool:
        """Send one of the display's own messages (review events, signed reports) at QoS 1; True once the
        broker acknowledged it. False (logged) without a link: the caller keeps it and sends it later."""
        if not self._client.is_connected():
            log.warning("display: no broker link; %s waits for the next connection", topic)
            return False
        info = self._client.publish(topic, message.model_dump_json(by_alias=True), qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            log.warning("display: %s not sent: %s", topic, exc)
            return False
        return info.is_published()

    def start(self, wait_s: float = 5.0) -> DisplayFeed:
        """Connect (retrying in the background if the broker is not up yet)."""
        start_loop(self._client, self.host, self.port, self.config.keepalive_s, wait_s, "display")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
