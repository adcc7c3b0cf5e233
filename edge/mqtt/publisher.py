"""Publishing results over MQTT (paho-mqtt 2.x), and the interface the pipeline sees."""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ValidationError

from edge.config import MqttConfig
from edge.errors import PublishError
from edge.mqtt.channels import channel_of
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import CameraState, StatusMessage, encode
from edge.mqtt.outbox import Outbox

if TYPE_CHECKING:
    from edge.mqtt.commands import CommandHandler
from edge.mqtt.topics import Topics

log = logging.getLogger(__name__)


def read_password(config: MqttConfig) -> str | None:
    """The broker password: a file (or systemd credential) first, then the environment; never the YAML."""
    path = config.password_file
    if path is None and os.environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mqtt-password"
        path = candidate if candidate.is_file() else None
    if path is not None:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PublishError(f"cannot read the MQTT password file {path}: {exc.strerror}") from None
    return config.password.get_secret_value() if config.password else None


def make_client(config: MqttConfig, name: str) -> mqtt.Client:
    """A paho client with the box's credentials and TLS settings (``name`` + a random suffix as client id)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    if config.username:
        client.username_pw_set(config.username, read_password(config))
    # mqtts:// alone turns TLS on (the system's CAs); tls_ca names the lab's own CA
    if config.tls_ca or (config.url or "").startswith("mqtts://"):
        try:
            client.tls_set(
                ca_certs=str(config.tls_ca) if config.tls_ca else None,
                certfile=str(config.tls_cert) if config.tls_cert else None,
                keyfile=str(config.tls_key) if config.tls_key else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise PublishError(f"MQTT TLS files unusable: {exc}") from None
    return client


def start_loop(client: mqtt.Client, host: str, port: int, keepalive: int, wait_s: float, who: str) -> None:
    """A subscriber's connection: connect (or keep trying in the background when the broker is not up
    yet), start paho's network thread, wait up to ``wait_s`` for the link."""
    try:
        client.connect(host, port, keepalive=keepalive)
    except OSError as exc:
        log.warning("%s: broker mqtt://%s:%d not reachable yet (%s); retrying", who, host, port, exc)
        client.connect_async(host, port, keepalive=keepalive)
    client.loop_start()
    deadline = time.monotonic() + wait_s
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)


class Publisher(Protocol):
    def camera_state(self, state: str, detail: str) -> None:
        """The live camera changed state (streaming, reconnecting, absent)."""
        ...

    def publish(self, topic: str, message: BaseModel, retain: bool = False) -> None: ...

    def clear_retained(self, topic: str) -> None:
        """An empty retained message: the broker forgets what it kept on ``topic``."""
        ...

    def publish_preview(self, message: BaseModel) -> None:
        """QoS 0, never in the outbox, never waits: a preview frame the broker misses is simply gone."""
        ...

    def close(self) -> None:
        """Announce a clean stop and let go of the connection."""
        ...


class MqttPublisher:
    """QoS-1 publisher with a retained status: birth ``online`` (again after every reconnect),
    last will ``offline``, ``stopped`` on a clean close.

    ``publish`` waits for the PUBACK. While the broker is away paho keeps QoS-1 messages and
    sends them after it reconnects; such messages are counted as unconfirmed and waited for
    at close. With an outbox (``mqtt.outbox``) each message is on disk before it is sent and
    deleted on its PUBACK; what a previous run left unacknowledged is re-sent, in order, as
    soon as the broker answers. Consumers de-duplicate on ``message_id``.
    """

    def __init__(self, host: str, port: int, topics: Topics, factory: MessageFactory, config: MqttConfig):
        self.host, self.port = host, port
        self.topics = topics
        self.factory = factory
        self.config = config
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._inflight: set[int] = set()  # mids of QoS-1 messages not yet acknowledged
        self.undelivered = 0  # set by close(): QoS-1 messages the broker never acknowledged
        self.outbox = Outbox(config.outbox, config.outbox_max_mb * 2**20) if config.outbox else None
        self._rows: dict[int, int] = {}  # paho mid -> outbox row, until its PUBACK
        self._early_acks: set[int] = set()  # PUBACKs that beat the bookkeeping
        self._rows_lock = threading.Lock()
        self._backlog_sent = False
        client = make_client(config, f"marrow-edge-{topics.device_id}")
        client.will_set(topics.status, encode(factory.status("offline")), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._camera: CameraState | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._commands: CommandHandler | None = None
        self._client = client
        self._probe_id = f"probe-{uuid.uuid4().hex[:12]}"
        self._probe_seen = threading.Event()
        self._started = time.time()
        self.twin: str | None = None  # set when another instance is online under this device id
        self.on_twin: Callable[[str], None] | None = None
        self.announce: list[tuple[str, bytes]] = []  # retained, sent after the birth on every connect

    # paho callbacks run on its network thread
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason)
            client.disconnect()  # a refusal (bad credentials, not authorised) will not heal by retrying
            self._connected.set()
            return
        if self._commands is not None:
            client.subscribe(self.topics.commands, qos=1)  # before the birth message: online means listening
            client.subscribe(self.topics.status, qos=1)  # another box with this device id shows up here
        self._send(self.topics.status, encode(self.factory.status("online", self._camera)), retain=True)
        for topic, payload in self.announce:  # Home Assistant discovery: again after a broker restart
            self._send(topic, payload, retain=True)
        if self.outbox is not None and not self._backlog_sent:
            self._backlog_sent = True
            self._resend_backlog(client)
        if self._connected.is_set():
            log.info("MQTT reconnected to %s:%d", self.host, self.port)
        self._connected.set()

    def _resend_backlog(self, client: mqtt.Client) -> None:
        """What an earlier run left unacknowledged, in order, before anything new.

        Within a run paho itself re-sends its in-flight messages after a reconnect; rows
        from before this process started have no paho message and are sent here.
        """
        rows = self.outbox.pending() if self.outbox else []
        if rows:
            log.warning("MQTT outbox: re-sending %d message(s) left unacknowledged by an earlier run", len(rows))
        for row in rows:
            self._send(row.topic, row.payload, row.retain, row.row_id)

    def _send(
        self, topic: str, payload: bytes, retain: bool = False, row_id: int | None = None, qos: int = 1
    ) -> mqtt.MQTTMessageInfo:
        """Every publish goes through here, so every PUBACK (or QoS-0 send) has a tracked mid: an
        untracked one would sit in the early-ack set until paho reused its mid for a result message."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # Not tracked: a full queue (nothing was queued) or a QoS-0 message paho dropped while offline.
        if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE and (qos > 0 or info.rc == mqtt.MQTT_ERR_SUCCESS):
            self._track(info.mid, row_id)
        return info

    def _track(self, mid: int, row_id: int | None) -> None:
        """Remember a sent message until its PUBACK (which may already have come)."""
        with self._rows_lock:
            acked = mid in self._early_acks
            self._early_acks.discard(mid)
            if not acked:
                self._inflight.add(mid)
                if row_id is not None:
                    self._rows[mid] = row_id
        if acked and row_id is not None and self.outbox is not None:
            self.outbox.delete(row_id)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._rows_lock:
            if mid in self._inflight:
                self._inflight.discard(mid)
                row_id = self._rows.pop(mid, None)
            else:
                self._early_acks.add(mid)
                row_id = None
        if row_id is not None and self.outbox is not None:
            self.outbox.delete(row_id)

    def serve_commands(self, handler: CommandHandler) -> None:
        """Answer ``cmd/<verb>`` with ``cmd/<verb>/reply`` (call before ``connect``)."""
        self._commands = handler

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._commands is None:
            return
        if message.topic == self.topics.status:
            self._check_twin(message)
            return
        verb = message.topic.rsplit("/", 1)[-1]
        if not message.retain and self._probe_id.encode() in bytes(message.payload[:200]):
            self._probe_seen.set()  # our own delivery probe came back: the broker carries our messages
            return
        if message.retain:
            # A retained command is an old one replayed by the broker at every (re)subscription:
            # a stop_slide would end each new slide, a start_slide would start one at every restart.
            if not message.payload:
                return  # someone clearing the retained command: nothing to answer
            reply = self._commands.refuse(verb, "retained command ignored: publish commands with retain=false")
        else:
            reply = self._commands.handle(verb, bytes(message.payload))
        if not reply.ok:
            log.warning("command %s refused: %s", verb[:64], reply.error)
        self._send(self.topics.command_reply(verb[:64]), encode(reply))

    def _check_twin(self, message: mqtt.MQTTMessage) -> None:
        """An ``online`` status from another instance, sent after this one started, means a second box
        runs under this device id: their slides would mix on one topic tree and the broker would keep
        throwing one off (same client id). A retained status from before our start is an earlier run."""
        try:
            status = StatusMessage.model_validate_json(bytes(message.payload))
        except ValidationError:
            return
        other = status.instance
        if status.state != "online" or not other or other == self.factory.instance:
            return
        sent = status.time.timestamp()
        if sent >= self._started - 1.0 and self.twin is None:
            self.twin = other
            log.error(
                "another marrow-edge (instance %s) is online as device %s: two boxes share one device_id",
                other,
                self.topics.device_id,
            )
            if self.on_twin is not None:
                self.on_twin(other)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connection to %s:%d lost (%s); paho reconnects", self.host, self.port, reason)

    def connect(self) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=self.config.keepalive_s)
        except ssl.SSLError as exc:
            raise PublishError(
                f"MQTT broker mqtts://{self.host}:{self.port}: TLS failed ({exc.reason or exc}); "
                "check mqtt.tls_ca (the CA that signed the broker's certificate) and the client certificate"
            ) from None
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
        if self._commands is not None:
            self._probe_delivery()
        log.info("MQTT connected to mqtt://%s:%d as %s", self.host, self.port, self.topics.device_id)

    def _probe_delivery(self) -> None:
        """MQTT 3.1.1 acknowledges a publish the broker's ACL then drops: a box whose username does
        not match the ACL would publish into the void and exit 0. So send one message to our own
        command topic (which we subscribe to) and wait for it to come back; if it does not, stop."""
        topic = f"{self.topics.root}/cmd/ping"
        self._send(topic, json.dumps({"request_id": self._probe_id}).encode())  # tracked: its PUBACK is expected
        if not self._probe_seen.wait(self.config.connect_timeout_s):
            self._client.disconnect()
            self._client.loop_stop()
            raise PublishError(
                f"MQTT broker mqtt://{self.host}:{self.port} accepts the connection but does not deliver this "
                f"box's messages (a probe to {topic} never came back): its ACL denies them. With the shipped ACL "
                f"the username (mqtt.username, now {self.config.username or 'none'!r}) must equal the device id "
                f"{self.topics.device_id!r}"
            )

    def camera_state(self, state: str, detail: str) -> None:
        """Republish the retained ``online`` status with the camera's new state (any thread)."""
        self._camera = CameraState(state=state, detail=detail)  # type: ignore[arg-type]
        if self._connected.is_set() and self._refusal is None:
            message = encode(self.factory.status("online", self._camera))
            self._send(self.topics.status, message, retain=True)

    def publish(self, topic: str, message: BaseModel, retain: bool = False) -> None:
        payload = encode(message)
        channel = channel_of(self.topics.root, topic)  # the channel table decides what the outbox keeps
        durable = self.outbox is not None and (channel is None or channel.outbox)
        row_id = self.outbox.put(topic, payload, retain) if durable else None  # type: ignore[union-attr]
        info = self._send(topic, payload, retain, row_id, self.config.qos)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            raise PublishError(f"MQTT queue full, {topic} not queued")  # the outbox still holds it
        if self.config.qos == 0:
            return
        # Wait for the PUBACK while connected; while the broker is away paho keeps the message
        # (and the outbox has it on disk) and sends it after reconnecting.
        deadline = time.monotonic() + self.config.publish_timeout_s
        while self._client.is_connected() and time.monotonic() < deadline:
            with self._rows_lock:
                if info.mid not in self._inflight:
                    return
            time.sleep(0.001)
        with self._rows_lock:
            waiting = info.mid in self._inflight
        if waiting:
            log.warning("MQTT %s not acknowledged yet; kept for resending", topic)

    def clear_retained(self, topic: str) -> None:
        """An empty retained message: the broker forgets what it kept on ``topic``."""
        if self._send(topic, b"", retain=True).rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            raise PublishError(f"MQTT queue full, {topic} not cleared")

    def publish_preview(self, message: BaseModel) -> None:
        if self._client.is_connected():  # offline: dropped, the next frame replaces it anyway
            self._send(self.topics.preview, encode(message), qos=0)

    @property
    def unconfirmed(self) -> int:
        with self._rows_lock:
            return len(self._inflight)

    def close(self) -> None:
        deadline = time.monotonic() + self.config.publish_timeout_s
        while self.unconfirmed and time.monotonic() < deadline:
            time.sleep(0.05)
        self.undelivered = self.unconfirmed  # the run's exit status says so (README: exit 1)
        if self.unconfirmed:
            log.error("MQTT: %d message(s) were never acknowledged by the broker", self.unconfirmed)
        if self._client.is_connected():
            info = self._client.publish(self.topics.status, encode(self.factory.status("stopped")), qos=1, retain=True)
            info.wait_for_publish(self.config.publish_timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        if self.outbox is not None:
            left = len(self.outbox)
            if left:
                log.error("MQTT outbox: %d message(s) kept in %s for the next run", left, self.outbox.path)
            self.outbox.close()
