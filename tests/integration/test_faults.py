"""Fault tests against a real mosquitto: the broker goes away mid-slide and comes back."""

import time

import pytest

from edge.mqtt.broker import EmbeddedBroker
from tests.cli_helpers import ROOT
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration


def test_broker_restart_mid_slide_loses_nothing(mosquitto, samples, tmp_path, capsys):
    import os
    import subprocess
    import sys

    broker = EmbeddedBroker(binary=mosquitto, persistence=True).start()
    recorder = Recorder(broker.host, broker.port, "marrow/v1/fault-box/#", persistent=True)
    env = {**os.environ, "MARROW_EDGE__MQTT__OUTBOX": str(tmp_path / "outbox.sqlite")}
    run = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--source", str(samples), "--fps", "2",
         "--device-id", "fault-box", "--broker", broker.url],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(recorder.on("/field")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        broker.stop(keep_state=True)  # mid-slide: fields 3.. are produced while it is away
        time.sleep(3)
        broker.start()
        _, err = run.communicate(timeout=120)
        recorder.wait_for("/report", timeout=20)
        time.sleep(1)  # the last retransmissions
    finally:
        run.kill()
        recorder.close()
        broker.stop()
    assert run.returncode == 0, err
    counts = {}
    for kind in ("field", "tally", "report"):
        received = [m for m in recorder.messages if m.topic.endswith("/" + kind)]
        distinct = {m.payload["message_id"] for m in received}
        counts[kind] = (len(received), len(distinct))
    with capsys.disabled():
        print(f"\nbroker restart mid-slide: received (all, distinct by message_id): {counts}")
    assert counts["field"][1] == 8 and counts["tally"][1] == 8 and counts["report"][1] == 1
    fields = [m.payload for m in recorder.messages if m.topic.endswith("/field")]
    assert sorted({f["field_index"] for f in fields}) == list(range(8))  # none missing
    assert not (tmp_path / "outbox.sqlite").exists() or _outbox_rows(tmp_path / "outbox.sqlite") == 0


def _outbox_rows(path):
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def test_outbox_left_by_a_killed_run_is_sent_first_at_the_next_start(broker, tmp_path):
    """A run killed while the broker was away leaves rows on disk; the next start sends them, in order."""
    import json

    from edge.config import MqttConfig
    from edge.mqtt.factory import MessageFactory
    from edge.mqtt.messages import BundleRef, Provenance
    from edge.mqtt.outbox import Outbox
    from edge.mqtt.publisher import MqttPublisher
    from edge.mqtt.topics import Topics

    path = tmp_path / "outbox.sqlite"
    left = Outbox(path)
    for i in range(5):
        left.put("marrow/v1/box/slide/s1/field", json.dumps({"message_id": f"old-{i}"}).encode(), False)
    left.close()  # as a SIGKILL would leave it: rows on disk, nothing acknowledged

    recorder = Recorder(broker.host, broker.port, "marrow/v1/box/#")
    provenance = Provenance(
        software_version="t", bundle=BundleRef(name="b", version="1", hash="0" * 12, untrained=True),
        backend="t", providers=[],
    )  # fmt: skip
    factory = MessageFactory("box", provenance)
    topics = Topics("marrow/v1", "box")
    publisher = MqttPublisher(broker.host, broker.port, topics, factory, MqttConfig(outbox=path))
    publisher.connect()
    publisher.publish("marrow/v1/box/slide/s2/field", factory.status("online"))
    publisher.close()
    recorder.wait_for("/s2/field")
    ids = [m.payload["message_id"] for m in recorder.messages if "/slide/" in m.topic]
    recorder.close()
    assert ids[:5] == [f"old-{i}" for i in range(5)] and len(ids) == 6  # the backlog first, in order
    assert len(Outbox(path)) == 0  # every row acknowledged and deleted


def test_commands_over_mqtt_stop_a_slide_and_bad_ones_are_answered(broker, samples):
    import os
    import subprocess
    import sys

    import paho.mqtt.publish as publish

    recorder = Recorder(broker.host, broker.port, "marrow/v1/cmd-box/#")
    run = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--source", str(samples), "--fps", "2",
         "--device-id", "cmd-box", "--broker", broker.url],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(recorder.on("/field")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

        def send(verb, payload):
            topic = f"marrow/v1/cmd-box/cmd/{verb}"
            publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)

        send("set_target", "{oops")
        send("reboot", "{}")
        send("set_target", '{"target_count": 40, "request_id": "t1"}')
        send("stop_slide", '{"request_id": "s1"}')
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, err
    replies = {m.topic.split("/")[-2]: m.payload for m in recorder.messages if m.topic.endswith("/reply")}
    assert replies["set_target"]["ok"] is True and replies["set_target"]["target_count"] == 40
    assert replies["reboot"]["ok"] is False and "unknown verb" in replies["reboot"]["error"]
    malformed = [m.payload for m in recorder.messages if m.topic.endswith("set_target/reply") and not m.payload["ok"]]
    assert malformed and "malformed JSON" in malformed[0]["error"]
    assert replies["stop_slide"]["ok"] is True and replies["stop_slide"]["request_id"] == "s1"
    report = recorder.wait_for("/report")[0]
    assert report["fields"] < 8 and report["target_count"] == 40  # stopped early, with the new target
    recorder.close()


def test_sigkill_mid_slide_then_restart_resumes_without_counting_twice(broker, samples, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys

    recorder = Recorder(broker.host, broker.port, "marrow/v1/kill-box/#")
    env = {
        **os.environ,
        "MARROW_EDGE__COUNTING__JOURNAL": str(tmp_path / "slides.sqlite"),
        "MARROW_EDGE__MQTT__OUTBOX": str(tmp_path / "outbox.sqlite"),
    }
    command = [sys.executable, "-m", "edge.cli", "run", "--source", str(samples), "--fps", "2",
               "--device-id", "kill-box", "--specimen-id", "BM-7", "--broker", broker.url]  # fmt: skip
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(recorder.on("/field")) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resuming slide" in second.stdout
    report = recorder.wait_for("/report")[0]
    fields = recorder.on("/field")
    distinct = {f["message_id"]: f for f in fields}.values()
    sources = [f["source"] for f in distinct]
    with capsys.disabled():
        print(
            f"\nSIGKILL once 3 fields were out, then a restart: field messages {len(fields)}, "
            f"distinct {len(distinct)}, distinct sources {len(set(sources))}; report fields {report['fields']}"
        )
    recorder.close()
    assert len(set(sources)) == len(sources) == 8  # every field once, none twice
    assert report["fields"] == 8 and report["specimen_id"] == "BM-7"
    assert len({f["slide_id"] for f in distinct}) == 1 == len({report["slide_id"]} | {f["slide_id"] for f in distinct})
    summed: dict[str, int] = {}
    for f in distinct:
        for cell in f["cells"]:
            if cell["countable"]:
                summed[cell["class"]] = summed.get(cell["class"], 0) + 1
    assert report["counts"] == summed  # the final tally is the sum of the distinct fields


def test_health_is_published_periodically(broker, samples, tmp_path):
    import os
    import subprocess
    import sys

    recorder = Recorder(broker.host, broker.port, "marrow/v1/health-box/health")
    env = {
        **os.environ,
        "MARROW_EDGE__MQTT__HEALTH_INTERVAL_S": "0.5",
        "MARROW_EDGE__MQTT__OUTBOX": str(tmp_path / "outbox.sqlite"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--source", str(samples), "--fps", "4",
         "--device-id", "health-box", "--broker", broker.url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    health = recorder.on("/health")
    recorder.close()
    assert len(health) >= 2
    last = health[-1]
    assert last["fields_counted"] >= 4 and last["backend"] == "onnxruntime" and last["memory_mb"] > 50
    assert set(last["stage_ms_p50"]) == {"detect", "crop", "classify", "frame_to_published"}
    assert last["queues"]["outbox_rows"] >= 0 and last["outbox_alarm"] is False
    assert any(h["frames_per_s"] > 0 for h in health)


def test_service_mode_slides_begin_and_end_by_command(broker, tmp_path):
    """--wait-for-start: nothing is counted until start_slide; stop_slide ends the slide with its report."""
    import subprocess
    import sys

    import paho.mqtt.publish as publish

    script = tmp_path / "scan.yaml"
    steps = ["[rest, 10]"] + [f"[goto, {x}, {y}, 10]\n- [rest, 12]" for x, y in ((700, 0), (700, 600), (1400, 900))]
    script.write_text("".join(f"- {s}\n" for s in steps))
    recorder = Recorder(broker.host, broker.port, "marrow/v1/svc-box/#")
    run = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--camera", f"sim:{script}", "--fps", "8", "--wait-for-start",
         "--device-id", "svc-box", "--broker", broker.url],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in run.stdout:
            if line.startswith("waiting for start_slide"):
                break
        time.sleep(1.5)  # frames flow, but no slide: nothing may be counted
        assert recorder.on("/field") == []

        def send(verb, payload):
            publish.single(f"marrow/v1/svc-box/cmd/{verb}", payload, qos=1, hostname=broker.host, port=broker.port)

        send("start_slide", '{"specimen_id": "BM-9", "target_count": 100}')
        deadline = time.monotonic() + 30
        while not recorder.on("/field") and time.monotonic() < deadline:
            time.sleep(0.05)
        send("stop_slide", "{}")
        report = recorder.wait_for("/report", timeout=20)[0]
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    recorder.close()
    assert report["specimen_id"] == "BM-9" and report["target_count"] == 100 and report["fields"] >= 1
    assert all(f["slide_id"] == report["slide_id"] for f in recorder.on("/field"))
    assert run.returncode == 0, err
