"""A separate paho subscriber that records what a device publishes."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    retain: bool


class Recorder:
    """``persistent``: a session the broker keeps (and queues for) while this client is away."""

    def __init__(self, host: str, port: int, pattern: str, persistent: bool = False) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{uuid.uuid4().hex[:6]}",
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = lambda c, *_: c.subscribe(pattern, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("recorder could not subscribe")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError):  # e.g. a malformed command a test sent on purpose
            payload = {"_raw": bytes(message.payload).decode(errors="replace")}
        with self._lock:
            self.messages.append(Received(message.topic, payload, bool(message.retain)))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m.payload for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, suffix: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.on(suffix)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.on(suffix)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
