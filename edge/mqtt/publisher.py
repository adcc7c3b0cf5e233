"""Publishing results over MQTT (paho-mqtt 2.x), and the interface the pipeline sees."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from edge.config import MqttConfig
from edge.errors import PublishError
from edge.mqtt.messages import CameraState, MessageFactory, encode
from edge.mqtt.topics import Topics

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def camera_state(self, state: str, detail: str) -> None:
        """The live camera changed state (streaming, reconnecting, absent)."""
        ...

    def publish(self, topic: str, message: BaseModel, retain: bool = False) -> None: ...

    def close(self) -> None:
        """Announce a clean stop and let go of the connection."""
        ...


class MqttPublisher:
    """QoS-1 publisher with a retained status: birth ``online`` (again after every reconnect),
    last will ``offline``, ``stopped`` on a clean close.

    ``publish`` waits for the PUBACK. While the broker is away paho keeps QoS-1 messages and
    sends them after it reconnects; such messages are counted as unconfirmed and waited for
    at close. (A disk outbox that survives a restart is a later stage.)
    """

    def __init__(self, host: str, port: int, topics: Topics, factory: MessageFactory, config: MqttConfig):
        self.host, self.port = host, port
        self.topics = topics
        self.factory = factory
        self.config = config
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._pending: list[mqtt.MQTTMessageInfo] = []
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"marrow-edge-{topics.device_id}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if config.username:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        client.will_set(topics.status, encode(factory.status("offline")), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._camera: CameraState | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client

    # paho callbacks run on its network thread
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason)
            client.disconnect()  # a refusal (bad credentials, not authorised) will not heal by retrying
            self._connected.set()
            return
        client.publish(self.topics.status, encode(self.factory.status("online", self._camera)), qos=1, retain=True)
        if self._connected.is_set():
            log.info("MQTT reconnected to %s:%d", self.host, self.port)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connection to %s:%d lost (%s); paho reconnects", self.host, self.port, reason)

    def connect(self) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=self.config.keepalive_s)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise PublishError(
                f"MQTT broker mqtt://{self.host}:{self.port} is unreachable ({reason}); "
                "start it, or pass --broker mqtt://HOST:PORT"
            ) from None
        self._client.loop_start()
        if not self._connected.wait(self.config.connect_timeout_s):
            self._client.loop_stop()
            raise PublishError(
                f"MQTT broker mqtt://{self.host}:{self.port} did not answer within {self.config.connect_timeout_s:g} s"
            )
        if self._refusal:
            self._client.loop_stop()
            raise PublishError(f"MQTT broker mqtt://{self.host}:{self.port} refused the connection: {self._refusal}")
        log.info("MQTT connected to mqtt://%s:%d as %s", self.host, self.port, self.topics.device_id)

    def camera_state(self, state: str, detail: str) -> None:
        """Republish the retained ``online`` status with the camera's new state (any thread)."""
        self._camera = CameraState(state=state, detail=detail)  # type: ignore[arg-type]
        if self._connected.is_set() and self._refusal is None:
            message = encode(self.factory.status("online", self._camera))
            self._client.publish(self.topics.status, message, qos=1, retain=True)

    def publish(self, topic: str, message: BaseModel, retain: bool = False) -> None:
        info = self._client.publish(topic, encode(message), qos=self.config.qos, retain=retain)
        try:
            info.wait_for_publish(self.config.publish_timeout_s)
        except ValueError:
            raise PublishError(f"MQTT queue full, {topic} not queued") from None
        except RuntimeError as exc:  # not connected: paho keeps it and sends it after reconnecting
            log.warning("MQTT %s not acknowledged yet (%s); kept for resending", topic, exc)
        if not info.is_published():
            self._pending.append(info)

    @property
    def unconfirmed(self) -> int:
        self._pending = [i for i in self._pending if not i.is_published()]
        return len(self._pending)

    def close(self) -> None:
        deadline = time.monotonic() + self.config.publish_timeout_s
        while self.unconfirmed and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.unconfirmed:
            log.error("MQTT: %d message(s) were never acknowledged by the broker", self.unconfirmed)
        if self._client.is_connected():
            info = self._client.publish(self.topics.status, encode(self.factory.status("stopped")), qos=1, retain=True)
            info.wait_for_publish(self.config.publish_timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
