"""The count path on the real bundle (ONNX Runtime, CPU) and real fields, publishing to memory."""

import shutil

import pytest

from edge.capture.replay import open_replay
from edge.config import load_config
from edge.mqtt.factory import MessageFactory
from edge.mqtt.memory import MemoryPublisher
from edge.mqtt.topics import Topics
from edge.service.pipeline import SlideContext, build_appliance, run_slide


@pytest.fixture(scope="module")
def appliance():
    return build_appliance(load_config(environ={}))


def test_slide_on_real_fields_with_a_bad_one(appliance, samples, tmp_path):
    fields = sorted(samples.glob("*.jpg"))[:3]
    for i, path in enumerate(fields):
        shutil.copy(path, tmp_path / f"{i}.jpg")
    (tmp_path / "1b.jpg").write_bytes(fields[0].read_bytes()[:300])  # sorts between 1 and 2
    publisher = MemoryPublisher()
    topics = Topics("marrow/v1", "unit")
    factory = MessageFactory("unit", appliance.provenance)
    run = run_slide(SlideContext(appliance, open_replay(tmp_path), publisher, topics, factory))

    field_msgs = publisher.on("/field")
    assert [m.source for m in field_msgs] == ["0.jpg", "1.jpg", "2.jpg"]
    (report,) = publisher.on("/report")
    countable = sum(m.countable_in_field for m in field_msgs)
    assert report.countable == countable == run.tally.denominator
    assert sum(report.counts.values()) == countable
    assert report.cells_detected == sum(len(m.cells) for m in field_msgs)
    assert report.fields == 3 and report.fields_skipped == 1
    assert "truncated" in report.skipped[0].reason
    assert report.provenance.bundle.untrained is appliance.bundle.manifest.untrained
    assert report.provenance.providers == ["CPUExecutionProvider"]
    retained = {p.topic.rsplit("/", 1)[1] for p in publisher.sent if p.retain}
    assert retained == {"tally", "report"}
    seqs = [p.message.seq for p in publisher.sent]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_max_fields(appliance, samples):
    publisher = MemoryPublisher()
    topics = Topics("marrow/v1", "unit")
    factory = MessageFactory("unit", appliance.provenance)
    run = run_slide(SlideContext(appliance, open_replay(samples), publisher, topics, factory, max_fields=2))
    assert run.tally.fields == 2 and len(publisher.on("/field")) == 2


def test_end_to_end_latency_is_measured_for_health(appliance, samples):
    # issue 14: frame taken -> its messages handed to MQTT, per field, for health's stage medians
    publisher = MemoryPublisher()
    seen = []
    factory = MessageFactory("unit", appliance.provenance)
    run_slide(
        SlideContext(
            appliance, open_replay(samples), publisher, Topics("marrow/v1", "unit"), factory, max_fields=2,
            on_field=lambda result, tally: seen.append(dict(result.timings_ms)),
        )
    )  # fmt: skip
    assert len(seen) == 2
    for timings in seen:
        assert timings["frame_to_published"] >= timings["detect"] + timings["classify"] > 0


def test_the_onnxruntime_appliance_never_imports_torch():
    # torch is installed in the test venv (the train extra); the runtime must not load it (0.5 GB, 1 s)
    import subprocess
    import sys

    code = (
        "import sys; from edge.config import AppConfig; from edge.service.pipeline import build_appliance; "
        "build_appliance(AppConfig()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
