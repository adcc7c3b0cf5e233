"""The fleet's view of every box on the lab broker, kept from their MQTT messages.

One paho subscriber on ``<prefix>/+/status``, ``+/health``, ``+/current`` and ``+/cmd/+/reply``
(the retained status and current slide restore every box's last known state at start). Each
payload is parsed with the model the boxes publish with; one that does not parse, or whose
``device_id`` is not the topic's, is counted and logged once per box and kind, never shown.

A box is ``online`` while its status says so and it is heard from; ``stopped`` after a clean
exit; ``offline`` when the broker delivers its last will, or when nothing has come from it for
``offline_after`` of its health period (a box killed while the broker waits out its keep-alive,
or cut off behind a bridge). Page clients wait for changed boxes (newest wins, memory bounded).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ValidationError

from edge.config import MqttConfig
from edge.errors import PublishError
from edge.mqtt.commands import VERBS, CommandReply, ReplyWaiter
from edge.mqtt.messages import CurrentSlideMessage, HealthMessage, StatusMessage
from edge.mqtt.publisher import make_client, start_loop

log = logging.getLogger(__name__)

MODELS: dict[str, type[BaseModel]] = {"status": StatusMessage, "health": HealthMessage, "current": CurrentSlideMessage}
FLEET_VERBS = ("start_slide", "stop_slide")  # all the fleet page may send, and only when signed in
MAX_BOXES = 1000  # a broker full of stray device ids cannot grow the page without bound


@dataclass
class Box:
    device_id: str
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # newest valid payload per kind
    heard: float = 0.0  # monotonic time of the newest valid message
    interval_s: float | None = None  # the box's own health period, from its health message
    state: str = "unknown"
    why: str = ""
    version: int = 0


class FleetBoard:
    """Every box under ``prefix`` on one broker; ``changes`` hands page clients the boxes that changed."""

    def __init__(
        self,
        host: str,
        port: int,
        config: MqttConfig,
        prefix: str = "marrow/v1",
        health_interval_s: float = 10.0,
        offline_after: float = 1.25,
        link_of: Callable[[str], str] | None = None,
    ) -> None:
        self.link_of = link_of  # a box's review page, when the lab configured where they are
        self.host, self.port, self.prefix = host, port, prefix
        self.config = config
        self.default_interval_s = health_interval_s
        self.offline_after = offline_after
        self.boxes: dict[str, Box] = {}
        self.connected = False
        self.invalid = 0
        self.handled = 0  # valid messages applied (the benchmark's rate)
        self._warned: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self._version = 0
        self._replies = ReplyWaiter()
        self._link_version = 0
        self._stop = threading.Event()
        self._clock = threading.Thread(target=self._watch, name="fleet-clock", daemon=True)
        client = make_client(config, "marrow-fleet")
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # -- what the page reads --------------------------------------------------------------------
    def view(self, box: Box) -> dict[str, Any]:
        seen = round(time.monotonic() - box.heard, 1) if box.heard else None
        link = self.link_of(box.device_id) if self.link_of else None
        return {
            "device_id": box.device_id, "state": box.state, "why": box.why, "seen_s_ago": seen, "review_url": link,
            **box.messages,
        }  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                "link": self._link(),
                "boxes": [self.view(b) for b in sorted(self.boxes.values(), key=lambda b: b.device_id)],
            }

    def changes(self, since: int, timeout: float) -> tuple[int, list[dict[str, Any]]]:
        """Boxes (and the link, as ``{"link": ...}``) changed after version ``since``; waits up to ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > since, timeout)
            news = sorted((b for b in self.boxes.values() if b.version > since), key=lambda b: b.version)
            out = [self.view(b) for b in news]
            if self._link_version > since:
                out.insert(0, {"link": self._link()})
            return self._version, out

    def _link(self) -> dict[str, Any]:
        return {"connected": self.connected, "broker": f"mqtt://{self.host}:{self.port}", "prefix": self.prefix}

    def _bump(self, box: Box | None = None) -> None:
        """Call with ``_cond`` held."""
        self._version += 1
        if box is None:
            self._link_version = self._version
        else:
            box.version = self._version
        self._cond.notify_all()

    # -- state of each box ------------------------------------------------------------------------
    def _derive(self, box: Box, now: float) -> tuple[str, str]:
        status = box.messages.get("status")
        if status is None:
            return "unknown", "no status message yet"
        if status["state"] != "online":
            return status["state"], "last will: the box's link ended" if status["state"] == "offline" else "clean exit"
        period = box.interval_s or self.default_interval_s
        if now - box.heard > period * self.offline_after:
            return "offline", f"silent: nothing for over {period * self.offline_after:g} s (health every {period:g} s)"
        return "online", ""

    def _settle(self, box: Box, now: float) -> None:
        """Re-derive a box's state; bump its version when it changed. Call with ``_cond`` held."""
        state, why = self._derive(box, now)
        if (state, why) != (box.state, box.why):
            if state != box.state:
                log.info("fleet: %s is %s%s", box.device_id, state, f" ({why})" if why else "")
            box.state, box.why = state, why
            self._bump(box)

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._cond:
                for box in self.boxes.values():
                    self._settle(box, now)

    # -- MQTT ---------------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("fleet: broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        p = self.prefix
        client.subscribe([(f"{p}/+/{kind}", 1) for kind in MODELS] + [(f"{p}/+/cmd/+/reply", 1)])
        with self._cond:
            self.connected = True
            self._bump()
        log.info("fleet: following %s/+/... on mqtt://%s:%d", p, self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            self.connected = False
            self._bump()
        if reason.is_failure:
            log.warning("fleet: lost the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        rest = message.topic[len(self.prefix) + 1 :].split("/") if message.topic.startswith(self.prefix + "/") else []
        if len(rest) == 4 and rest[1] == "cmd" and rest[3] == "reply":
            self._reply(message.payload)
            return
        if len(rest) != 2 or rest[1] not in MODELS or not message.payload:  # empty: a retained topic cleared
            return
        device_id, kind = rest
        try:
            model = MODELS[kind].model_validate_json(message.payload)
            if model.device_id != device_id:  # type: ignore[attr-defined]
                raise ValueError(f"device_id {model.device_id[:64]!r} sent on {device_id[:64]!r}'s topic")  # type: ignore[attr-defined]
        except (ValidationError, ValueError) as exc:
            self._invalid(device_id, kind, exc)
            return
        payload = json.loads(model.model_dump_json(by_alias=True))
        with self._cond:
            box = self.boxes.get(device_id)
            if box is None:
                if len(self.boxes) >= MAX_BOXES:
                    self._invalid(device_id, kind, ValueError(f"over {MAX_BOXES} boxes"))
                    return
                box = self.boxes[device_id] = Box(device_id)
            box.messages[kind] = payload
            # A retained status or slide may be days old: only a live message proves the box is there now.
            if not message.retain or kind == "status":
                box.heard = time.monotonic()
            if isinstance(model, HealthMessage) and model.interval_s:
                box.interval_s = model.interval_s
            self.handled += 1
            self._bump(box)
            self._settle(box, time.monotonic())

    def _invalid(self, device_id: str, kind: str, exc: Exception) -> None:
        self.invalid += 1
        key = (device_id[:64], kind)
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            log.warning(
                "fleet: dropped an invalid %s message of %r (further ones not logged): %s", kind, key[0], detail
            )

    def _reply(self, payload: bytes) -> None:
        try:
            reply = CommandReply.model_validate_json(payload)
        except ValidationError:
            self.invalid += 1
            return
        self._replies.answer(reply)

    # -- commands -------------------------------------------------------------------------------------
    def command(self, device_id: str, verb: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``start_slide`` or ``stop_slide`` to one box and wait for its own reply (PublishError without)."""
        if verb not in FLEET_VERBS:
            raise ValueError(f"the fleet page sends {' and '.join(FLEET_VERBS)} only, not {verb[:64]!r}")
        with self._cond:
            if device_id not in self.boxes:
                raise KeyError(device_id)
        try:
            checked = VERBS[verb].model_validate({**body, "request_id": None})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        with self._replies.expect() as (request_id, pending):
            payload = checked.model_copy(update={"request_id": request_id}).model_dump_json(exclude_none=True)
            if not self._client.is_connected():
                raise PublishError(f"the fleet page has no connection to the broker mqtt://{self.host}:{self.port}")
            self._client.publish(f"{self.prefix}/{device_id}/cmd/{verb}", payload, qos=1)
            if not pending.done.wait(timeout):
                raise PublishError(f"{device_id} did not answer {verb} within {timeout:g} s: is it online?")
            return pending.reply  # type: ignore[return-value]

    # -- life -----------------------------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> FleetBoard:
        self._clock.start()
        start_loop(self._client, self.host, self.port, self.config.keepalive_s, wait_s, "fleet")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()
