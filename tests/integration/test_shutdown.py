"""Issue 13.3-13.5 against a real mosquitto: systemctl stop is a clean stop, undelivered messages
are an error, a retained command never acts."""

import os
import signal
import subprocess
import sys
import time

import paho.mqtt.publish as publish
import pytest

from tests.cli_helpers import ROOT
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration


def _run(samples, device: str, broker, env: dict | None = None, fps: str = "2") -> subprocess.Popen:
    command = [sys.executable, "-m", "edge.cli", "run", "--source", str(samples), "--fps", fps,
               "--device-id", device, "--broker", broker.url]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_fields(recorder: Recorder, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(recorder.on("/field")) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_sigterm_finishes_the_field_publishes_the_report_and_stops(broker, samples):
    recorder = Recorder(broker.host, broker.port, "marrow/v1/term-box/#")
    run = _run(samples, "term-box", broker)
    try:
        _wait_fields(recorder, 2)
        os.kill(run.pid, signal.SIGTERM)
        started = time.monotonic()
        out, err = run.communicate(timeout=30)
        took = time.monotonic() - started
        report = recorder.wait_for("/report")
        time.sleep(0.5)
    finally:
        run.kill()
        recorder.close()
    sys.stdout.write(f"\nSIGTERM -> exit {run.returncode} after {took:.1f} s\n")
    assert run.returncode == 0, err
    assert "SIGTERM" in out and "Traceback" not in err
    assert report and 2 <= report[0]["fields"] < 8
    statuses = [m["state"] for m in recorder.on("/status")]
    assert statuses[-1] == "stopped"
    assert not list(__import__("pathlib").Path("/dev/shm").glob(f"marrow-edge-run-{run.pid}*"))


def test_messages_never_acknowledged_exit_1_and_say_where_they_are(mosquitto, samples, tmp_path):
    from edge.mqtt.broker import EmbeddedBroker

    broker = EmbeddedBroker(binary=mosquitto).start()
    recorder = Recorder(broker.host, broker.port, "marrow/v1/lost-box/#")
    no_outbox = {"MARROW_EDGE__MQTT__PUBLISH_TIMEOUT_S": "2", "MARROW_EDGE__MQTT__OUTBOX": ""}  # empty: null
    run = _run(samples, "lost-box", broker, no_outbox)
    try:
        _wait_fields(recorder, 2)
        recorder.close()
        broker.stop()  # for good: the rest of the slide, its report included, never reaches it
        _out, err = run.communicate(timeout=90)
    finally:
        run.kill()
        broker.stop()
    assert run.returncode == 1, err
    assert "never acknowledged by the broker" in err and "lost: set mqtt.outbox" in err
    assert "Traceback" not in err


def test_a_retained_stop_slide_never_ends_a_slide(broker, samples):
    publish.single("marrow/v1/ret-box/cmd/stop_slide", '{"request_id": "old"}', qos=1, retain=True,
                   hostname=broker.host, port=broker.port)  # fmt: skip
    recorder = Recorder(broker.host, broker.port, "marrow/v1/ret-box/#")
    run = _run(samples, "ret-box", broker, fps="8")
    try:
        _out, err = run.communicate(timeout=90)
        report = recorder.wait_for("/report")
        replies = recorder.on("cmd/stop_slide/reply")
    finally:
        run.kill()
        recorder.close()
    assert run.returncode == 0, err
    assert report[0]["fields"] == 8  # all counted: the old command did nothing
    assert replies and replies[0]["ok"] is False and "retained command ignored" in replies[0]["error"]


def test_two_boxes_with_one_device_id_stop_with_a_clear_error(broker, samples, tmp_path):
    # issue 13.11: a second box under the same device id mixed its slides into the first one's topics
    recorder = Recorder(broker.host, broker.port, "marrow/v1/twin-box/#")
    first = _run(samples, "twin-box", broker, {"MARROW_EDGE_STATE": str(tmp_path / "box-a")}, fps="0.5")
    _wait_fields(recorder, 1)  # the first is counting (16 s for its slide)
    recorder.close()
    # two boxes: each its own disk (one state directory would refuse the second run before MQTT)
    second = _run(samples, "twin-box", broker, {"MARROW_EDGE_STATE": str(tmp_path / "box-b")}, fps="0.5")
    try:
        _out2, err2 = second.communicate(timeout=90)
        _out1, err1 = first.communicate(timeout=90)
    finally:
        first.kill()
        second.kill()
    codes = (first.returncode, second.returncode)
    assert 4 in codes, (err1[-800:], err2[-800:])
    errors = err1 + err2
    assert "is online as device twin-box: give every box its own device_id" in errors
    assert "Traceback" not in errors
