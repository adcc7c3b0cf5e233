"""The lab's Prometheus/Grafana files (docs/fleet): they parse, and every metric they name is one a
box exports (issue 32, item 4): a renamed metric fails here, not on a lab's empty dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import load_config
from edge.service.pipeline import build_appliance
from tests.unit.service.test_dashboards import _metrics

FLEET = Path(__file__).resolve().parents[3] / "docs" / "fleet"
METRIC = re.compile(r"\bmarrow_edge_[a-z_]+")


@pytest.fixture(scope="module")
def appliance():
    return build_appliance(load_config(environ={}))


def _exported(appliance, samples, tmp_path) -> set[str]:
    """Every series name of a box with a GPU, a current slide, stage latencies and a LIS backlog."""
    from edge.reports.lis import lis_backlog
    from edge.service.health import RunStats
    from tests.unit.review.slides import make_desk

    desk = make_desk(tmp_path / "slides.sqlite")
    stats = RunStats()
    stats.field({"detect": 12.0, "classify": 30.0})  # a box that has counted a field has stage latencies
    collector, _, _ = _metrics(appliance, samples, tmp_path / "box", stats, lambda: lis_backlog(desk.store))
    registry = CollectorRegistry()
    registry.register(collector)
    families = text_string_to_metric_families(generate_latest(registry).decode())
    names = {s.name for f in families for s in f.samples}
    desk.store.close()
    return names


def _exprs(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "expr" and isinstance(v, str)] + [
            e for v in node.values() for e in _exprs(v)
        ]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_the_grafana_dashboard_and_alert_rules_name_only_exported_metrics(appliance, samples, tmp_path):
    exported = _exported(appliance, samples, tmp_path)
    assert {"marrow_edge_lis_reports", "marrow_edge_gpu_temperature_celsius", "marrow_edge_build_info"} <= exported
    dashboard = json.loads((FLEET / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((FLEET / "marrow-edge-alerts.yml").read_text())
    exprs = _exprs(dashboard) + _exprs(rules)
    assert len(exprs) >= 15
    named = {m for e in exprs for m in METRIC.findall(e)}
    assert named and named <= exported, sorted(named - exported)
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]} == {"${datasource}"}


def test_the_prometheus_config_scrapes_the_boxes_metrics_path():
    config = yaml.safe_load((FLEET / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "marrow-edge" and job["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["marrow-edge-alerts.yml"] and (FLEET / "marrow-edge-alerts.yml").is_file()
    dashboard = (FLEET / "grafana-dashboard.json").read_text()
    assert 'job=\\"marrow-edge\\"' in dashboard  # the dashboard reads the job this config scrapes
