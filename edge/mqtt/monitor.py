"""``marrow-edge monitor``: the lab-side reference consumer of the MQTT API.

Subscribes to many boxes (``<prefix>/+/status``, ``.../slide/+/tally|report``) and keeps a live
table: device, state, slide, cells counted against the target, and the rule states in words.
Payloads are parsed with the same pydantic models the boxes publish with; one that does not
parse is counted and shown, never fatal.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge.config import MqttConfig
from edge.errors import PublishError
from edge.mqtt.channels import BY_NAME
from edge.mqtt.messages import ReportMessage, StatusMessage, TallyMessage
from edge.mqtt.publisher import make_client


@dataclass
class DeviceRow:
    device_id: str
    state: str = "?"
    camera: str = ""
    slide_id: str = ""
    specimen_id: str = ""
    counted: int = 0
    target: int = 0
    finished: bool = False
    rules: str = ""
    bundle: str = ""


@dataclass
class MonitorState:
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    invalid: int = 0

    def row(self, device_id: str) -> DeviceRow:
        return self.devices.setdefault(device_id, DeviceRow(device_id))

    def apply(self, topic: str, payload: bytes) -> None:
        if not payload:  # an old slide's retained message being cleared (mqtt.retain_slides): not an error
            return
        parts = topic.split("/")
        try:
            if parts[-1] == "status":
                status = StatusMessage.model_validate_json(payload)
                row = self.row(status.device_id)
                row.state = status.state
                row.camera = status.camera.state if status.camera else row.camera
                if status.provenance:
                    b = status.provenance.bundle
                    row.bundle = f"{b.name} {b.hash}" + (" UNTRAINED" if b.untrained else "")
            elif parts[-1] in ("tally", "report"):
                model = ReportMessage if parts[-1] == "report" else TallyMessage
                tally = model.model_validate_json(payload)
                row = self.row(tally.device_id)
                if row.finished and row.slide_id == tally.slide_id and parts[-1] == "tally":
                    return  # a retained tally arriving after its report
                row.slide_id, row.specimen_id = tally.slide_id, tally.specimen_id or ""
                row.counted, row.target = tally.countable, tally.target_count
                row.finished = parts[-1] == "report"
                row.rules = rule_summary(tally)
        except ValidationError:
            self.invalid += 1

    def table(self) -> str:
        header = f"{'device':<20} {'state':<8} {'camera':<12} {'slide':<31} {'specimen':<12} {'cells':>11}  rules"
        lines = [header, "-" * len(header)]
        for row in sorted(self.devices.values(), key=lambda r: r.device_id):
            cells = f"{row.counted}/{row.target}" if row.target else "-"
            slide = row.slide_id + (" (done)" if row.finished else "")
            lines.append(
                f"{row.device_id:<20} {row.state:<8} {row.camera or '-':<12} {slide or '-':<31} "
                f"{row.specimen_id or '-':<12} {cells:>11}  {row.rules or '-'}"
            )
        if self.invalid:
            lines.append(f"({self.invalid} message(s) did not match the schema and were ignored)")
        return "\n".join(lines)


def rule_summary(tally: TallyMessage) -> str:
    """The rules that say something, in words: 'ALL positive 27% (21-34%)', 'M3 ~120 more cells'."""
    parts = []
    for rule in tally.rules:
        if rule.state == "positive":
            parts.append(f"{rule.id} POSITIVE {rule.percent:.0f}% ({rule.ci_low:.0f}-{rule.ci_high:.0f}%)")
        elif rule.state == "indeterminate":
            more = f" ~{rule.cells_to_settle} more cells" if rule.cells_to_settle else ""
            parts.append(f"{rule.id} indeterminate{more}")
        elif rule.state == "negative":
            parts.append(f"{rule.id} negative")
    return "; ".join(parts)


def monitor(
    host: str,
    port: int,
    prefix: str,
    out: TextIO,
    duration: float | None = None,
    refresh: float = 2.0,
    config: MqttConfig | None = None,
) -> MonitorState:
    """Print the table whenever it changes (at most every ``refresh`` s); stop after ``duration`` s.
    ``config`` gives the credentials and TLS settings (a lab broker needs them), as for the box."""
    state = MonitorState()
    lock = threading.Lock()
    changed = threading.Event()
    connected = threading.Event()
    refusal: list[str] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:  # bad credentials or not authorised: retrying will not help
            refusal.append(str(reason))
            connected.set()
            return
        for name in ("status", "tally", "report"):  # every box's: the device id level is a wildcard
            client.subscribe(f"{prefix}/+/{BY_NAME[name].address.format(slide_id='+')}", qos=1)
        connected.set()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with lock:
            state.apply(message.topic, bytes(message.payload))
        changed.set()

    client = make_client(config or MqttConfig(), "marrow-monitor")
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(host, port)
    except OSError as exc:
        raise PublishError(f"cannot reach the MQTT broker mqtt://{host}:{port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(10):
            raise PublishError(f"the MQTT broker mqtt://{host}:{port} did not answer")
        if refusal:
            raise PublishError(f"the MQTT broker mqtt://{host}:{port} refused the connection: {refusal[0]}")
        deadline = None if duration is None else time.monotonic() + duration
        while deadline is None or time.monotonic() < deadline:
            if changed.wait(refresh):
                changed.clear()
                with lock:
                    out.write("\n" + state.table() + "\n")
                out.flush()
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        out.write("\n" + state.table() + "\n")
    return state
