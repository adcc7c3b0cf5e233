"""The lab link (issue 17) with two real mosquitto brokers on loopback: the box's broker, made
from the shipped marrow-edge.conf and bridge-lab.conf.example, bridged over TLS with a password
to a lab broker using the shipped acl.example. A slide's messages arrive at the lab; a command
from the lab gets its reply at the lab; the preview stays on the box; another box's topics are
refused."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.mqtt.broker import answers, free_port
from tests.cli_helpers import ROOT, marrow_edge
from tests.integration.browser import _spawn
from tests.integration.test_security import SecureBroker
from tests.integration.tls_files import make_ca, make_server_cert

pytestmark = pytest.mark.integration

BOX = "scope-a"


class LabClient:
    """A TLS client of the lab broker that records what it receives."""

    def __init__(self, port: int, ca: Path, user: str, password: str, subscribe: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}")
        self.client.username_pw_set(user, password)
        self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(subscribe, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on(self, suffix: str) -> list[dict]:
        return [json.loads(p) for t, p, _ in list(self.messages) if t.endswith(suffix) and p.startswith(b"{")]

    def wait_for(self, suffix: str, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.on(suffix):
                return found
            time.sleep(0.05)
        raise AssertionError(f"nothing on *{suffix} within {timeout}s; got {[t for t, _, _ in self.messages][:20]}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _story(app: subprocess.Popen, dashboard: LabClient, logs: tuple[Path, Path]) -> str:
    """What a failure needs to be read after the fact (a CI run keeps nothing else): the service's
    exit and output, every status the lab saw, both brokers' logs."""
    if app.poll() is None:
        app.send_signal(signal.SIGTERM)
    try:
        out, err = app.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        app.kill()
        out, err = app.communicate()
    statuses = [(s["state"], s.get("instance"), s.get("camera"), s["time"]) for s in dashboard.on("/status")]
    box, lab = (log.read_text(errors="replace")[-4000:] for log in logs)
    return (
        f"service exit {app.returncode}\nstdout: {out[-2000:]}\nstderr: {err[-4000:]}\n"
        f"statuses at the lab: {statuses}\nbox broker log:\n{box}\nlab broker log:\n{lab}"
    )


@pytest.fixture
def brokers(mosquitto, tmp_path):
    """(box broker url, lab broker port, CA file): the lab with TLS, passwords and the ACL template."""
    lab_dir, box_dir = tmp_path / "lab", tmp_path / "box"
    lab_dir.mkdir()
    box_dir.mkdir()
    ca_key, ca = make_ca(lab_dir, "lab-ca")
    key, cert = make_server_cert(lab_dir, ca_key, ca)
    passwd = lab_dir / "passwd"
    for i, (user, pw) in enumerate([(BOX, "pw-a"), ("scope-b", "pw-b"), ("lab-dashboard", "lab-pw")]):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, pw], check=True)
    acl = lab_dir / "acl"
    acl.write_text((ROOT / "systemd/mosquitto/acl.example").read_text())
    lab = SecureBroker(
        mosquitto, lab_dir,
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
    )  # fmt: skip

    # the box's broker: the shipped files, with test ports and paths
    port = free_port()
    shipped = (ROOT / "systemd/mosquitto/marrow-edge.conf").read_text().replace("listener 1883 ", f"listener {port} ")
    bridge = (ROOT / "systemd/mosquitto/bridge-lab.conf.example").read_text()
    bridge = bridge.replace("DEVICE_ID", BOX).replace("LAB_HOST:8883", f"127.0.0.1:{lab.port}")
    bridge = bridge.replace("BRIDGE_PASSWORD", "pw-a").replace("/etc/marrow-edge/lab-ca.crt", str(ca))
    user = "user root\n" if os.geteuid() == 0 else ""
    conf = box_dir / "mosquitto.conf"
    conf.write_text(f"{user}persistence_location {box_dir}/\n{shipped}\n{bridge}")
    log = box_dir / "mosquitto.log"
    with log.open("wb") as sink:
        box = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not answers("127.0.0.1", port, 0.2):
        assert box.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"mqtt://127.0.0.1:{port}", lab.port, ca, (log, lab.log)
    box.terminate()
    box.wait(5)
    lab.stop()


def test_a_slide_and_a_command_cross_the_bridge_and_other_boxes_are_refused(brokers, samples, tmp_path):
    box_url, lab_port, ca, logs = brokers
    dashboard = LabClient(lab_port, ca, "lab-dashboard", "lab-pw", "marrow/v1/#")
    intruder = LabClient(lab_port, ca, "scope-b", "pw-b", f"marrow/v1/{BOX}/#")  # another box, reading scope-a
    try:
        # the link's state for dashboards, retained by the lab broker
        deadline = time.monotonic() + 15
        while not any(t == f"marrow/v1/{BOX}/link" and p == b"1" for t, p, _ in dashboard.messages):
            assert time.monotonic() < deadline, dashboard.messages
            time.sleep(0.05)

        # a slide counted on the box: its results reach the lab
        run = marrow_edge("run", "--source", str(samples), "--max-fields", "2", "--broker", box_url,
                          "--device-id", BOX)  # fmt: skip
        assert run.returncode == 0, run.stderr
        (report,) = dashboard.wait_for("/report")
        assert report["device_id"] == BOX and report["fields"] == 2
        assert len(dashboard.wait_for("/field")) == 2 and dashboard.on("/status")

        # a command from the lab: the box (service mode, simulated camera) answers, the reply reaches the lab
        earlier = {s.get("instance") for s in dashboard.on("/status")}
        app = _spawn("run", "--camera", "sim", "--fps", "4", "--wait-for-start", "--device-id", BOX,
                     "--broker", box_url)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            # this process's own birth (not the first run's late 'stopped'): online means listening
            while not [s for s in dashboard.on("/status") if s["state"] == "online" and s["instance"] not in earlier]:
                assert time.monotonic() < deadline and app.poll() is None, _story(app, dashboard, logs)
                time.sleep(0.1)
            request = uuid.uuid4().hex[:12]
            dashboard.client.publish(f"marrow/v1/{BOX}/cmd/ping", json.dumps({"request_id": request}), qos=1)
            try:
                replies = [r for r in dashboard.wait_for("/cmd/ping/reply", timeout=30) if r["request_id"] == request]
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{_story(app, dashboard, logs)}") from None
            assert replies and replies[0]["ok"]
            time.sleep(2)  # previews flow on the box at 4 frames/s meanwhile
            assert not [t for t, _, _ in dashboard.messages if t.endswith("/preview")]  # never bridged
        finally:
            app.send_signal(signal.SIGTERM)
            app.wait(timeout=20)

        # the lab's monitor: mqtts:// with the lab's CA and the dashboard's credentials
        secret = tmp_path / "lab-pw"
        secret.write_text("lab-pw\n")
        env = {**os.environ, "MARROW_EDGE__MQTT__USERNAME": "lab-dashboard",
               "MARROW_EDGE__MQTT__PASSWORD_FILE": str(secret), "MARROW_EDGE__MQTT__TLS_CA": str(ca)}  # fmt: skip
        table = marrow_edge("monitor", "--broker", f"mqtts://127.0.0.1:{lab_port}", "--duration", "2", env=env)
        assert table.returncode == 0, table.stderr
        assert any(line.startswith(BOX) for line in table.stdout.splitlines()), table.stdout

        # another box's credentials: it can neither read scope-a's results nor write under its prefix
        assert intruder.messages == []
        before = len(dashboard.on("/status"))
        intruder.client.publish(f"marrow/v1/{BOX}/status", json.dumps({"state": "offline", "forged": True}), qos=1)
        intruder.client.publish(f"marrow/v1/{BOX}/cmd/stop_slide", "{}", qos=1)
        time.sleep(1.5)
        assert not [s for s in dashboard.on("/status")[before:] if s.get("forged")]
        assert not [t for t, _, _ in dashboard.messages if t.endswith("/cmd/stop_slide")]
    finally:
        dashboard.close()
        intruder.close()
