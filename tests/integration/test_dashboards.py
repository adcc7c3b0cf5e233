"""For dashboards (issue 17), against a real mosquitto: the retained current slide, old slides'
retained tally and report cleared (mqtt.retain_slides), Home Assistant discovery, and the
Prometheus endpoint scraped while a slide is being counted."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.cli_helpers import ROOT, marrow_edge
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_current_slide_old_slides_cleared_and_home_assistant(broker, samples, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"device_id: dash-1\ncounting:\n  journal: {tmp_path / 'j.sqlite'}\n"
        "mqtt:\n  retain_slides: 1\n  home_assistant: true\n"
    )
    for specimen in ("BM-1", "BM-2"):
        run = marrow_edge("run", "--config", str(config), "--source", str(samples), "--broker", broker.url,
                          "--max-fields", "2", "--specimen-id", specimen, "--quiet")  # fmt: skip
        assert run.returncode == 0, run.stderr
    late = Recorder(broker.host, broker.port, "#")  # what a dashboard connecting now is given
    try:
        time.sleep(1.0)
        retained = {m.topic: m.payload for m in late.messages if m.retain}
    finally:
        late.close()
    reports = {t: p for t, p in retained.items() if t.startswith("marrow/v1/dash-1/slide/") and t.endswith("/report")}
    tallies = [t for t in retained if t.startswith("marrow/v1/dash-1/slide/") and t.endswith("/tally")]
    ((report_topic, report),) = reports.items()  # the first slide's were cleared
    assert report["specimen_id"] == "BM-2" and len(tallies) == 1
    ids = report_topic.split("/")[4]
    current = retained["marrow/v1/dash-1/current"]
    assert current["state"] == "finished" and current["slide_id"] == ids and current["specimen_id"] == "BM-2"
    assert current["cells_counted"] == report["countable"] and current["topic"] == report_topic
    sensors = {t: p for t, p in retained.items() if t.startswith("homeassistant/sensor/dash-1/")}
    assert {t.split("/")[3] for t in sensors} == {"state", "slide", "cells_counted", "rule_state", "domain",
                                                   "blast_percent"}  # fmt: skip
    assert all(p["state_topic"] == "marrow/v1/dash-1/current" for p in sensors.values())


def test_prometheus_scrapes_a_slide_being_counted(broker, samples, tmp_path):
    port = _free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"device_id: dash-2\nmetrics:\n  port: {port}\n")
    box = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config), "--source", str(samples),
         "--broker", broker.url, "--fps", "1", "--max-fields", "4", "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen, deadline = "", time.monotonic() + 120
        # idle first (slide_id ""), then the slide being counted
        while 'state="counting"} 1.0' not in seen and time.monotonic() < deadline:
            if box.poll() is not None:
                break
            try:
                with DIRECT.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    seen = answer.read().decode()
            except OSError:
                pass  # not serving yet
            time.sleep(0.2)
        assert 'marrow_edge_slide_state{slide_id="' in seen, box.stderr.read() if box.poll() is not None else seen
        assert 'state="counting"} 1.0' in seen and "marrow_edge_fields_counted_total" in seen
        assert 'marrow_edge_slide_cells_counted{slide_id="' in seen
        assert "marrow_edge_build_info{" in seen and 'device_id="dash-2"' in seen
    finally:
        _, err = box.communicate(timeout=120)
    assert box.returncode == 0, err
    with pytest.raises(OSError):  # the endpoint ends with the run
        DIRECT.open(f"http://127.0.0.1:{port}/metrics", timeout=2)
