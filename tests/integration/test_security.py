"""Authentication, the ACL template and TLS against a real mosquitto."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.mqtt.broker import answers, free_port
from tests.cli_helpers import ROOT, error_lines, marrow_edge
from tests.integration.tls_files import make_ca, make_server_cert

pytestmark = pytest.mark.integration


class SecureBroker:
    def __init__(self, mosquitto: str, folder: Path, extra: str) -> None:
        self.port = free_port()
        conf = folder / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""  # read our files as the user that wrote them
        conf.write_text(f"{user}per_listener_settings false\nlistener {self.port} 127.0.0.1\n{extra}")
        # the log goes to a file: an unread pipe would stall the broker once 64 KiB of log filled it
        self.log = folder / "mosquitto.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", self.port, 0.2):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def authenticated(mosquitto, tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "box-1", "s3cret-1"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "lab-dashboard", "lab-pw"], check=True)
    acl = tmp_path / "acl"
    acl.write_text((ROOT / "systemd" / "mosquitto" / "acl.example").read_text())
    broker = SecureBroker(mosquitto, tmp_path, f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n")
    yield broker
    broker.stop()


def test_anonymous_is_refused_and_the_password_file_is_used(authenticated, samples, tmp_path):
    url = f"mqtt://127.0.0.1:{authenticated.port}"
    anonymous = marrow_edge("run", "--source", str(samples), "--broker", url, "--device-id", "box-1")
    assert anonymous.returncode == 4
    assert error_lines(anonymous)[0].startswith(f"marrow-edge: error: MQTT broker {url} refused the connection")
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-1\n")
    env = {**os.environ, "MARROW_EDGE__MQTT__USERNAME": "box-1", "MARROW_EDGE__MQTT__PASSWORD_FILE": str(secret)}
    ok = marrow_edge(
        "run", "--source", str(samples), "--broker", url, "--device-id", "box-1", "--max-fields", "1", env=env
    )
    assert ok.returncode == 0, ok.stderr


def test_password_in_the_config_file_is_refused(tmp_path, samples):
    config = tmp_path / "config.yaml"
    config.write_text("mqtt:\n  username: box-1\n  password: hunter2\n")
    proc = marrow_edge("run", "--source", str(samples), "--config", str(config))
    assert proc.returncode == 2 and "mqtt.password must not be in a file" in proc.stderr


def _client(port, user, password):
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:4]}")
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_acl_confines_a_box_to_its_own_prefix(authenticated):
    lab = _client(authenticated.port, "lab-dashboard", "lab-pw")
    seen = []
    lab.on_message = lambda c, u, m: seen.append(m.topic)
    lab.subscribe("marrow/v1/#", qos=1)
    time.sleep(0.5)
    box = _client(authenticated.port, "box-1", "s3cret-1")
    box.publish("marrow/v1/box-1/status", b"{}", qos=1).wait_for_publish(5)
    box.publish("marrow/v1/box-2/status", b"{}", qos=1).wait_for_publish(5)  # pretending to be another box
    box.publish("marrow/v1/box-2/cmd/stop_slide", b"{}", qos=1).wait_for_publish(5)
    time.sleep(1.0)
    for client in (box, lab):
        client.disconnect()
        client.loop_stop()
    assert seen == ["marrow/v1/box-1/status"]  # the broker dropped what was outside box-1's prefix


def test_tls_needs_the_right_ca(mosquitto, tmp_path, samples):
    ca_key, ca_cert = make_ca(tmp_path, "lab-ca")
    _, other_ca = make_ca(tmp_path, "other-ca")
    server_key, server_cert = make_server_cert(tmp_path, ca_key, ca_cert)
    broker = SecureBroker(
        mosquitto, tmp_path, f"allow_anonymous true\ncafile {ca_cert}\ncertfile {server_cert}\nkeyfile {server_key}\n"
    )
    url = f"mqtts://127.0.0.1:{broker.port}"
    try:
        wrong = {**os.environ, "MARROW_EDGE__MQTT__TLS_CA": str(other_ca)}
        refused = marrow_edge("run", "--source", str(samples), "--broker", url, env=wrong)
        assert refused.returncode == 4
        assert "TLS failed" in error_lines(refused)[0] and "mqtt.tls_ca" in error_lines(refused)[0]
        right = {**os.environ, "MARROW_EDGE__MQTT__TLS_CA": str(ca_cert)}
        ok = marrow_edge("run", "--source", str(samples), "--broker", url, "--max-fields", "1", env=right)
        assert ok.returncode == 0, ok.stderr
    finally:
        broker.stop()


def test_a_username_the_acl_does_not_match_fails_loudly(authenticated, samples, tmp_path):
    # issue 13.11: MQTT 3.1.1 acknowledged every publish the ACL dropped; the run exited 0 with nothing delivered
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "scope-7", "pw-7"], check=True)
    authenticated.stop()
    broker = SecureBroker(authenticated.proc.args[0], tmp_path, f"allow_anonymous false\npassword_file {passwd}\n"
                          f"acl_file {tmp_path / 'acl'}\n")  # fmt: skip
    try:
        url = f"mqtt://127.0.0.1:{broker.port}"
        env = {**os.environ, "MARROW_EDGE__MQTT__USERNAME": "scope-7", "MARROW_EDGE__MQTT__PASSWORD": "pw-7"}
        proc = marrow_edge("run", "--source", str(samples), "--broker", url, "--device-id", "box-1", env=env)
        assert proc.returncode == 4, proc.stderr
        lines = error_lines(proc)
        assert len(lines) == 1 and "does not deliver this box's messages" in lines[0] and "'scope-7'" in lines[0]
        right = marrow_edge(
            "run", "--source", str(samples), "--broker", url, "--device-id", "scope-7", "--max-fields", "1", env=env
        )
        assert right.returncode == 0, right.stderr
    finally:
        broker.stop()


def test_monitor_uses_the_credentials_and_says_when_it_is_refused(authenticated, tmp_path):
    # issue 14: the monitor built its own client (no credentials, no TLS) and ignored a refused CONNACK
    url = f"mqtt://127.0.0.1:{authenticated.port}"
    refused = marrow_edge("monitor", "--broker", url, "--duration", "1")
    assert refused.returncode == 4, refused.stderr
    assert "refused the connection" in error_lines(refused)[0]
    config = tmp_path / "lab.yaml"
    config.write_text("mqtt:\n  username: lab-dashboard\n")
    env = {**os.environ, "MARROW_EDGE__MQTT__PASSWORD": "lab-pw"}
    ok = marrow_edge("monitor", "--broker", url, "--duration", "1", "--config", str(config), env=env)
    assert ok.returncode == 0, ok.stderr
