"""For dashboards (issue 17): the retained current slide, old slides' retained messages cleared,
the GPU's figures (NVML and a Jetson's sysfs, both faked here: no GPU on this machine), the
Prometheus collector and its HTTP endpoint, and Home Assistant discovery."""

from __future__ import annotations

import json
import sys
import types
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.capture.replay import open_replay
from edge.config import load_config
from edge.counting.journal import SlideJournal
from edge.counting.tally import Slide
from edge.mqtt.discovery import discovery_messages
from edge.mqtt.factory import MessageFactory
from edge.mqtt.memory import MemoryPublisher
from edge.mqtt.topics import Topics
from edge.service.current import CurrentSlide, slide_call
from edge.service.gpu import JetsonProbe, NvmlProbe, Quiet, find_gpu
from edge.service.health import HealthReporter, RunStats
from edge.service.metrics import ApplianceCollector, MetricsServer
from edge.service.pipeline import SlideContext, build_appliance, run_slide

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


@pytest.fixture(scope="module")
def appliance():
    return build_appliance(load_config(environ={}))


def _count(appliance, samples, publisher, current, fields=2):
    topics, factory = current.topics, current.factory
    context = SlideContext(appliance, open_replay(samples), publisher, topics, factory, max_fields=fields,
                           current=current)  # fmt: skip
    return run_slide(context, Slide(specimen_id="BM-1"))


def test_the_current_slide_follows_the_count_and_old_slides_are_cleared(appliance, samples):
    publisher, topics = MemoryPublisher(), Topics("marrow/v1", "box-1")
    current = CurrentSlide(publisher, topics, MessageFactory("box-1", appliance.provenance), keep_slides=1)
    assert current.latest.state == "idle"
    first = _count(appliance, samples, publisher, current)
    states = [(m.state, m.fields) for m in publisher.on("/current")]
    assert states == [("counting", 1), ("counting", 2), ("finished", 2)]
    assert all(p.retain for p in publisher.sent if p.topic == topics.current)
    (report,) = publisher.on("/report")
    done = current.latest
    assert done.slide_id == first.slide.slide_id and done.cells_counted == report.countable
    assert done.percent == {s.class_name: s.percent for s in report.shares}
    assert done.rules == {r.id: r.state for r in report.rules} and done.topic == topics.report(done.slide_id)
    assert done.rule_state == slide_call(list(done.rules.values())) and done.domain == report.domain.state
    assert publisher.cleared == []  # one slide: within keep_slides
    second = _count(appliance, samples, publisher, current, fields=1)
    old = first.slide.slide_id
    assert publisher.cleared == [topics.tally(old), topics.report(old)]
    assert current.latest.slide_id == second.slide.slide_id


def test_the_journal_remembers_which_slides_were_cleared(tmp_path):
    journal = SlideJournal(tmp_path / "j.sqlite")
    slides = [Slide(specimen_id=f"S{i}") for i in range(4)]
    for slide in slides:
        journal.begin(slide)
        journal.close_slide(slide)
    newest_first = [s.slide_id for s in sorted(slides, key=lambda s: s.started, reverse=True)]
    assert journal.retained_to_clear(2) == newest_first[2:]
    journal.mark_cleared(newest_first[2:])
    assert journal.retained_to_clear(2) == [] and journal.retained_to_clear(1) == newest_first[1:2]
    journal.close()
    assert SlideJournal(tmp_path / "j.sqlite").retained_to_clear(1) == newest_first[1:2]  # kept on disk


def test_a_slides_call_is_its_most_severe_rule():
    assert slide_call(["negative", "indeterminate"]) == "indeterminate"
    assert slide_call(["negative", "positive", "indeterminate"]) == "positive"
    assert slide_call(["negative", "not_applicable"]) == "negative" and slide_call([]) == "not_applicable"


def _jetson(root, load="374", temp="41500"):
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    gpu = root / "sys/class/devfreq/17000000.gpu/device"
    gpu.mkdir(parents=True)
    (gpu / "load").write_text(f"{load}\n")
    for i, (kind, value) in enumerate([("cpu-thermal", "50000"), ("gpu-thermal", temp)]):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(f"{kind}\n")
        (zone / "temp").write_text(f"{value}\n")
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text("NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    (root / "proc/meminfo").write_text("MemTotal:       15655424 kB\nMemFree: 1 kB\nMemAvailable:   11461120 kB\n")


def test_a_jetsons_gpu_is_read_from_sysfs(tmp_path):
    _jetson(tmp_path)
    probe = find_gpu(tmp_path)
    sample = probe.sample()
    assert sample.source == "jetson" and sample.name.startswith("NVIDIA Jetson Orin NX")
    assert sample.utilisation_percent == 37.4 and sample.temperature_c == 41.5
    assert sample.memory_total_mb == round(15655424 / 1024, 1)
    assert sample.memory_used_mb == round((15655424 - 11461120) / 1024, 1)


def test_a_gpu_that_stops_answering_is_logged_once(tmp_path, caplog):
    _jetson(tmp_path)
    probe = Quiet(JetsonProbe(tmp_path))
    (tmp_path / "sys/class/devfreq/17000000.gpu/device/load").write_text("garbage\n")
    assert probe.sample() is None and probe.sample() is None
    assert len([r for r in caplog.records if "GPU figures unavailable" in r.message]) == 1


def test_nvml_figures(monkeypatch):
    fake = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA RTX 4000 Ada Generation",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3 * 2**30, total=20 * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=62),
        nvmlDeviceGetTemperature=lambda h, kind: 58,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sample = NvmlProbe().sample()
    assert (sample.name, sample.source, sample.utilisation_percent) == ("NVIDIA RTX 4000 Ada Generation", "nvml", 62)
    assert (sample.memory_used_mb, sample.memory_total_mb, sample.temperature_c) == (3072.0, 20480.0, 58.0)


def test_without_a_gpu_there_is_no_probe(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no nvidia-ml-py
    assert find_gpu(tmp_path) is None


def _metrics(appliance, samples, tmp_path, stats=None, lis=None):
    """A box with a (faked Jetson) GPU that counted a slide; ``stats``/``lis``: its run counters and LIS backlog."""
    publisher, topics = MemoryPublisher(), Topics("marrow/v1", "box-1")
    factory = MessageFactory("box-1", appliance.provenance)
    current = CurrentSlide(publisher, topics, factory, keep_slides=5)
    _jetson(tmp_path)
    health = HealthReporter(publisher, factory, stats or RunStats(), "onnxruntime", 10.0, tmp_path,
                            gpu=find_gpu(tmp_path), lis=lis)  # fmt: skip
    publisher.outbox, publisher.unconfirmed = None, 0  # what health reads of an MQTT publisher
    run = _count(appliance, samples, publisher, current)
    collector = ApplianceCollector(lambda: health.message(new_window=False), lambda: current.latest, "box-1",
                                   appliance.provenance)  # fmt: skip
    return collector, current, run


def test_the_metrics_say_what_health_and_the_current_slide_say(appliance, samples, tmp_path):
    collector, current, run = _metrics(appliance, samples, tmp_path)
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    slide = ("slide_id", run.slide.slide_id)
    assert values[("marrow_edge_slide_cells_counted", (slide,))] == current.latest.cells_counted > 0
    assert values[("marrow_edge_slide_state", (slide, ("state", "finished")))] == 1
    assert values[("marrow_edge_slide_state", (slide, ("state", "counting")))] == 0
    call = current.latest.rule_state
    assert values[("marrow_edge_slide_call", (slide, ("state", call)))] == 1
    for cls, pct in current.latest.percent.items():
        assert values[("marrow_edge_slide_class_percent", (("class", cls), slide))] == pytest.approx(pct)
    gpu = ("gpu", "NVIDIA Jetson Orin NX Engineering Reference Developer Kit")
    assert values[("marrow_edge_gpu_utilisation_percent", (gpu,))] == 37.4
    assert values[("marrow_edge_gpu_temperature_celsius", (gpu,))] == 41.5
    assert ("marrow_edge_disk_free_bytes", ()) in values
    assert any(name == "marrow_edge_fields_counted_total" for name, _ in values)
    assert "BM-1" not in text  # a specimen id never leaves for the monitoring system


def test_the_metrics_endpoint_serves_over_http(appliance, samples, tmp_path):
    collector, _, run = _metrics(appliance, samples, tmp_path)
    server = MetricsServer(collector, "127.0.0.1", 0).start()
    try:
        with DIRECT.open(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        server.stop()
    assert answer.status == 200 and f'slide_id="{run.slide.slide_id}"' in text
    assert "marrow_edge_build_info{" in text and 'device_id="box-1"' in text


def test_home_assistant_discovery():
    topics = Topics("marrow/v1", "scope.lab-2")
    messages = discovery_messages(topics, "homeassistant", ["blast", "lymphocyte"], "0.1.0")
    configs = {topic: json.loads(payload) for topic, payload in messages}
    assert set(configs) == {
        f"homeassistant/sensor/scope_lab-2/{o}/config"
        for o in ("state", "slide", "cells_counted", "rule_state", "domain", "blast_percent")
    }
    for config in configs.values():
        assert config["state_topic"] == "marrow/v1/scope.lab-2/current"
        assert config["availability_topic"] == "marrow/v1/scope.lab-2/status"
        assert config["device"]["identifiers"] == ["marrow-edge-scope_lab-2"]
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    blast = configs["homeassistant/sensor/scope_lab-2/blast_percent/config"]
    assert blast["unit_of_measurement"] == "%" and "percent.get('blast'" in blast["value_template"]
    # a blood bundle has no blast class: no blast sensor
    assert len(discovery_messages(topics, "homeassistant", ["lymphocyte"], "0.1.0")) == len(configs) - 1


def test_the_monitor_takes_a_cleared_retained_slide_as_no_message():
    # retain_slides clears old slides with empty retained payloads: not a schema error for the lab
    from edge.mqtt.monitor import MonitorState

    state = MonitorState()
    state.apply("marrow/v1/box-1/slide/S1/report", b"")
    state.apply("marrow/v1/box-1/slide/S1/tally", b"")
    assert state.invalid == 0 and not state.devices
    state.apply("marrow/v1/box-1/slide/S1/report", b"{not json")
    assert state.invalid == 1


def test_health_and_metrics_carry_the_lis_backlog_and_survive_a_broken_store(appliance, tmp_path, caplog):
    from edge.reports.lis import LisLink, Target, lis_backlog
    from tests.unit.review.slides import make_desk

    desk = make_desk(tmp_path / "slides.sqlite")
    publisher, factory = MemoryPublisher(), MessageFactory("box-1", appliance.provenance)
    publisher.outbox, publisher.unconfirmed = None, 0
    health = HealthReporter(publisher, factory, RunStats(), "onnxruntime", 10.0, lis=lambda: lis_backlog(desk.store))
    assert health.message().lis.model_dump() == {"pending": 0, "rejected": 0, "oldest_s": None}  # table not made yet
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    LisLink(desk.store, Target("127.0.0.1", 9, timeout_s=0.5)).sweep()  # queued, never sent
    lis = health.message().lis
    assert (lis.pending, lis.rejected) == (1, 0) and 0 <= lis.oldest_s < 60
    collector = ApplianceCollector(lambda: health.message(new_window=False), lambda: None, "box-1",
                                   appliance.provenance)  # fmt: skip
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(collector)
    families = text_string_to_metric_families(generate_latest(registry).decode())
    samples = {(s.name, tuple(s.labels.items())): s.value for f in families for s in f.samples}
    assert samples[("marrow_edge_lis_reports", (("state", "pending"),))] == 1
    assert samples[("marrow_edge_lis_reports", (("state", "rejected"),))] == 0
    desk.store.close()
    (tmp_path / "slides.sqlite").write_bytes(b"not a database" * 100)
    broken = HealthReporter(publisher, factory, RunStats(), "onnxruntime", 10.0,
                            lis=lambda: lis_backlog(type(desk.store)(tmp_path / "slides.sqlite")))  # fmt: skip
    message = broken.message()
    assert message.lis is None and "LIS backlog not read" in caplog.text
    assert HealthReporter(publisher, factory, RunStats(), "onnxruntime", 10.0).message().lis is None  # no LIS
