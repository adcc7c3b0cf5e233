"""marrow-edge run on real fields against a real mosquitto, checked by a separate subscriber."""

import shutil

import cv2
import numpy as np
import pytest

from edge.mqtt.broker import answers
from tests.cli_helpers import error_lines, marrow_edge
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration


@pytest.fixture
def recorder(broker):
    rec = Recorder(broker.host, broker.port, "marrow/v1/#")
    yield rec
    rec.close()


def test_whole_slide_over_mqtt(broker, recorder, samples):
    fields = sorted(samples.glob("*.jpg"))
    proc = marrow_edge(
        "run",
        "--source",
        str(samples),
        "--broker",
        broker.url,
        "--device-id",
        "it-box",
        "--specimen-id",
        "S-42",
    )
    assert proc.returncode == 0, proc.stderr
    assert "not a diagnosis" in proc.stdout

    reports = recorder.wait_for("/report")
    field_msgs = recorder.on("/field")
    tallies = recorder.on("/tally")
    assert len(reports) == 1
    assert [m["source"] for m in field_msgs] == [p.name for p in fields]
    assert len(tallies) == len(fields)
    report = reports[0]
    countable_per_field = [sum(c["countable"] for c in m["cells"]) for m in field_msgs]
    assert [m["countable_in_field"] for m in field_msgs] == countable_per_field
    assert report["countable"] == sum(countable_per_field) == sum(report["counts"].values())
    assert report["cells_detected"] == sum(len(m["cells"]) for m in field_msgs)
    per_class: dict[str, int] = {}
    for m in field_msgs:
        for cell in m["cells"]:
            if cell["countable"]:
                per_class[cell["class"]] = per_class.get(cell["class"], 0) + 1
    assert report["counts"] == per_class
    assert tallies[-1]["counts"] == report["counts"]
    assert report["specimen_id"] == "S-42" and report["device_id"] == "it-box"
    assert report["provenance"]["bundle"]["hash"] in proc.stdout  # the bundle named in output and messages

    # the box's own messages (its start-up delivery probe on cmd/ping is a command, not one of them)
    everything = [m.payload for m in recorder.messages if "/cmd/" not in m.topic]
    assert len({m["message_id"] for m in everything}) == len(everything)
    assert all(m["schema_version"] == "1.0" for m in everything)
    states = [m["state"] for m in recorder.on("it-box/status")]
    assert states[0] == "online" and states[-1] == "stopped"
    topic = recorder.messages[0].topic
    assert topic.startswith("marrow/v1/it-box/")


def test_retained_results_reach_a_late_subscriber(broker, samples):
    proc = marrow_edge("run", "--source", str(samples), "--broker", broker.url, "--max-fields", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    late = Recorder(broker.host, broker.port, "marrow/v1/marrow-edge-dev/#")
    try:
        assert late.wait_for("/report")[0]["fields"] == 2
        assert late.wait_for("/tally")[0]["fields"] == 2
        assert late.wait_for("/status")[0]["state"] == "stopped"
    finally:
        late.close()


def test_bad_fields_are_skipped_counted_and_reported(broker, recorder, samples, tmp_path):
    good = sorted(samples.glob("*.jpg"))[:2]
    shutil.copy(good[0], tmp_path / "1-good.jpg")
    (tmp_path / "2-truncated.jpg").write_bytes(good[1].read_bytes()[:700])
    cv2.imwrite(str(tmp_path / "3-grey.png"), np.full((120, 160), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "4-deep.png"), np.full((120, 160, 3), 30000, np.uint16))
    (tmp_path / "5-garbage.png").write_bytes(b"\x89PNG not really")
    shutil.copy(good[1], tmp_path / "6-good.jpg")
    proc = marrow_edge("run", "--source", str(tmp_path), "--broker", broker.url)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.count("SKIPPED") == 4
    report = recorder.wait_for("/report")[0]
    assert report["fields"] == 2 and report["fields_skipped"] == 4
    reasons = " | ".join(s["reason"] for s in report["skipped"])
    for word in ("truncated JPEG", "greyscale", "16-bit", "not a readable image"):
        assert word in reasons
    assert [m["source"] for m in recorder.on("/field")] == ["1-good.jpg", "6-good.jpg"]
    assert report["countable"] == sum(m["countable_in_field"] for m in recorder.on("/field"))


def test_nothing_countable_is_an_error(broker, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 broken")
    proc = marrow_edge("run", "--source", str(tmp_path), "--broker", broker.url)
    assert proc.returncode == 5
    assert error_lines(proc) == ["marrow-edge: error: no field of the source could be counted"]


def test_embedded_broker_when_none_is_configured(mosquitto, samples):
    if answers("127.0.0.1", 1883):
        pytest.skip("a broker answers on localhost:1883, so the embedded one is not started")
    proc = marrow_edge("run", "--source", str(samples), "--max-fields", "1")
    assert proc.returncode == 0, proc.stderr
    assert "started an embedded mosquitto on mqtt://127.0.0.1:" in proc.stdout


def test_last_will_says_offline_when_the_process_dies(broker, recorder, samples, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.cli_helpers import ROOT

    many = tmp_path / "many"
    many.mkdir()
    first = sorted(samples.glob("*.jpg"))[0]
    for i in range(200):
        shutil.copy(first, many / f"{i:03d}.jpg")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--source", str(many), "--broker", broker.url, "--quiet"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert recorder.wait_for("/field", count=1, timeout=120), "no field arrived"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [m["state"] for m in recorder.on("/status")]
        if states and states[-1] == "offline":
            break
        time.sleep(0.05)
    assert states[0] == "online" and states[-1] == "offline"
    assert not recorder.on("/report")


def test_live_camera_through_the_gate_counts_each_stop_once(broker, recorder, tmp_path):
    """The simulated microscope in one process: capture thread -> ring -> gate -> count -> MQTT."""
    script = tmp_path / "scan.yaml"
    script.write_text(
        "- [rest, 5]\n- [goto, 700, 0, 20]\n- [rest, 8]\n- [goto, 700, 600, 15]\n- [defocus, 6, 4.0]\n"
        "- [rest, 6]\n- [goto, 20, 15, 25]\n- [rest, 8]\n- [goto, 1400, 900, 30]\n- [rest, 8]\n"
    )
    # 8 frames/s: slow enough that a busy 2-core CI machine still sees every rest's frames
    proc = marrow_edge("run", "--camera", f"sim:{script}", "--fps", "8", "--broker", broker.url)
    assert proc.returncode == 0, proc.stderr
    reports = recorder.wait_for("/report")
    fields = recorder.on("/field")
    # four stops on new area (the start, two pans, the far corner); the return and the defocus are refused
    assert len(fields) == 4 and reports[0]["fields"] == 4
    assert "gate: blurred" in proc.stderr and "gate: already_counted" in proc.stderr
    assert "capture: 131 frames, 0 corrupt" in proc.stderr
    gate = recorder.on("/gate")
    decisions = [m["decision"] for m in gate]
    assert decisions.count("accepted") == 4 and "blurred" in decisions and "moving" in decisions
    assert any(m["decision"] == "already_counted" and "already counted" in m["reason"] for m in gate)


def test_absent_camera_is_retried_and_shown_in_the_status(broker, recorder):
    proc = marrow_edge("run", "--camera", "/dev/video99", "--broker", broker.url, timeout=120)
    assert proc.returncode == 5  # nothing could be counted, said in one line
    assert error_lines(proc) == ["marrow-edge: error: no field of the source could be counted"]
    assert "camera /dev/video99: cannot open" in proc.stderr and "retrying in" in proc.stderr
    statuses = [m for m in recorder.on("/status") if m.get("camera")]
    assert statuses and statuses[0]["camera"]["state"] == "absent"
    assert "cannot open" in statuses[0]["camera"]["detail"]


def test_capture_daemon_and_pipeline_as_two_processes(broker, recorder, tmp_path):
    """The systemd layout: `marrow-edge capture` feeds the ring, `marrow-edge run --ring` counts."""
    import subprocess
    import sys
    import uuid

    from tests.cli_helpers import ROOT

    script = tmp_path / "scan.yaml"
    script.write_text("- [rest, 6]\n- [goto, 700, 0, 12]\n- [rest, 8]\n- [goto, 20, 10, 12]\n- [rest, 8]\n")
    ring = f"it-{uuid.uuid4().hex[:8]}"
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--ring", ring, "--idle-timeout", "4", "--broker", broker.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in pipeline.stdout:  # start the camera once the pipeline is ready (models loaded, connected)
            if line.startswith("mqtt: publishing to"):
                break
        capture = marrow_edge("capture", "--camera", f"sim:{script}", "--fps", "8", "--ring", ring, timeout=120)
        assert capture.returncode == 0, capture.stderr
        assert "capture: 46 frames, 0 corrupt" in capture.stdout
        _, err = pipeline.communicate(timeout=180)
    finally:
        pipeline.kill()
    assert pipeline.returncode == 0, err
    assert len(recorder.on("/field")) == 2  # the start and the new stop; the return is refused
    assert "gate: already_counted" in err


def test_monitor_shows_every_box(broker, samples):
    """The lab-side reference consumer on two boxes' replayed slides."""
    for device in ("box-a", "box-b"):
        proc = marrow_edge("run", "--source", str(samples), "--broker", broker.url, "--device-id", device,
                           "--max-fields", "4" if device == "box-a" else "8")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    monitor = marrow_edge("monitor", "--broker", broker.url, "--duration", "2", timeout=60)
    assert monitor.returncode == 0, monitor.stderr
    table = monitor.stdout.strip().split("\n\n")[-1]
    print(table)
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"box-a", "box-b"}
    assert "stopped" in rows["box-a"] and "(done)" in rows["box-a"] and "(done)" in rows["box-b"]
    assert "M3" in rows["box-b"]  # rule states in words
