"""Prometheus ``/metrics`` of the count process (``metrics.port``), for Grafana.

One source of figures with the health message: each scrape reads the health reporter's figures
(without starting a new rate window) and the current slide's summary, so MQTT dashboards and
Prometheus never disagree. Labels carry the slide id, never the specimen id: a specimen id is
the lab's link to a patient and has no place in a monitoring system (nor its label cardinality).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from edge.mqtt.messages import CurrentSlideMessage, HealthMessage, Provenance

log = logging.getLogger(__name__)

PREFIX = "marrow_edge"
RULE_STATES = ("positive", "negative", "indeterminate", "not_applicable")
SLIDE_STATES = ("idle", "counting", "finished")
DOMAIN_STATES = ("ok", "shifted", "too_few_cells", "not_checked")


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    yield family


def _one_of(name: str, doc: str, label: str, states: tuple[str, ...], now: str, **fixed: str) -> GaugeMetricFamily:
    """An enum the Prometheus way: one series per state, 1 for the current one."""
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=[*fixed, label])
    for state in states:
        family.add_metric([*fixed.values(), state], 1.0 if state == now else 0.0)
    return family


class ApplianceCollector:
    def __init__(
        self,
        health: Callable[[], HealthMessage],
        current: Callable[[], CurrentSlideMessage | None],
        device_id: str,
        provenance: Provenance,
    ) -> None:
        self.health, self.current = health, current
        self.device_id, self.provenance = device_id, provenance

    def collect(self) -> Iterator[Metric]:
        p = self.provenance
        info = InfoMetricFamily(f"{PREFIX}_build", "The box, its software and bundle.")
        info.add_metric([], {
            "device_id": self.device_id, "software_version": p.software_version, "bundle": p.bundle.name,
            "bundle_version": p.bundle.version, "bundle_hash": p.bundle.hash, "backend": p.backend,
        })  # fmt: skip
        yield info
        yield from self._health(self.health())
        current = self.current()
        if current is not None:
            yield from self._slide(current)

    def _health(self, h: HealthMessage) -> Iterator[Metric]:
        yield from _gauge("uptime_seconds", "Seconds since the count process started.", h.uptime_s)
        yield CounterMetricFamily(f"{PREFIX}_fields_counted", "Fields counted since start.", h.fields_counted)
        yield CounterMetricFamily(f"{PREFIX}_fields_skipped", "Fields skipped (unreadable, failed).", h.fields_skipped)
        yield from _gauge("frames_per_second", "Frames the gate looked at (live) or fields read.", h.frames_per_s)
        stages = GaugeMetricFamily(
            f"{PREFIX}_stage_latency_milliseconds", "Median per stage over the last 50 fields.", labels=["stage"]
        )
        for stage, ms in sorted(h.stage_ms_p50.items()):
            stages.add_metric([stage], ms)
        yield stages
        drops = CounterMetricFamily(f"{PREFIX}_dropped", "Frames never seen, publishes that failed.", labels=["kind"])
        for kind, n in sorted(h.drops.items()):
            drops.add_metric([kind], n)
        yield drops
        queues = GaugeMetricFamily(f"{PREFIX}_queue_depth", "MQTT messages waiting.", labels=["queue"])
        for queue, n in sorted(h.queues.items()):
            queues.add_metric([queue], n)
        yield queues
        yield from _gauge("outbox_alarm", "1: the outbox is over its bound (the lab link).", float(h.outbox_alarm))
        yield from _gauge("memory_resident_bytes", "Resident memory of the count process.", h.memory_mb * 2**20)
        if h.disk_free_mb is not None:
            free = h.disk_free_mb * 2**20
            yield from _gauge("disk_free_bytes", "Free space where the journal and outbox live.", free)
            yield from _gauge("disk_alarm", "1: the journal will soon fail for space.", float(h.disk_alarm))
        if h.gpu is not None:
            g, labels = h.gpu, {"gpu": h.gpu.name}
            yield from _gauge("gpu_utilisation_percent", "GPU load.", g.utilisation_percent, labels)
            memory = g.memory_used_mb * 2**20 if g.memory_used_mb is not None else None
            yield from _gauge("gpu_memory_used_bytes", "GPU memory in use (Jetson: shared).", memory, labels)
            total = g.memory_total_mb * 2**20 if g.memory_total_mb is not None else None
            yield from _gauge("gpu_memory_total_bytes", "GPU memory.", total, labels)
            yield from _gauge("gpu_temperature_celsius", "GPU temperature.", g.temperature_c, labels)

        if h.lis is not None:
            backlog = GaugeMetricFamily(
                f"{PREFIX}_lis_reports", "Signed reports not yet accepted by the LIS.", labels=["state"]
            )
            backlog.add_metric(["pending"], h.lis.pending)
            backlog.add_metric(["rejected"], h.lis.rejected)
            yield backlog
            yield from _gauge("lis_oldest_seconds", "Age of the oldest undelivered report (0: none).",
                              float(h.lis.oldest_s or 0))  # fmt: skip

    def _slide(self, c: CurrentSlideMessage) -> Iterator[Metric]:
        slide = {"slide_id": c.slide_id or ""}
        yield _one_of("slide_state", "The current slide: idle, counting or finished.", "state", SLIDE_STATES,
                      c.state, **slide)  # fmt: skip
        yield from _gauge("slide_fields", "Fields counted on the current slide.", c.fields, slide)
        yield from _gauge("slide_cells_counted", "Cells in the current slide's denominator.", c.cells_counted, slide)
        yield from _gauge("slide_progress_ratio", "Counted cells over the target count.", c.progress, slide)
        percent = GaugeMetricFamily(
            f"{PREFIX}_slide_class_percent", "Share of the counted cells per class.", labels=["slide_id", "class"]
        )
        for name, value in sorted(c.percent.items()):
            percent.add_metric([slide["slide_id"], name], value)
        yield percent
        for rule, state in sorted(c.rules.items()):
            yield _one_of("slide_rule_state", "Each rule's state on the current slide.", "state", RULE_STATES,
                          state, **slide, rule=rule)  # fmt: skip
        yield _one_of("slide_call", "The slide's call (its most severe rule state).", "state", RULE_STATES,
                      c.rule_state, **slide)  # fmt: skip
        yield _one_of("slide_domain", "The domain-shift guard on the current slide.", "state", DOMAIN_STATES,
                      c.domain, **slide)  # fmt: skip


class MetricsServer:
    """``/metrics`` over HTTP on its own thread (prometheus_client's WSGI server)."""

    def __init__(self, collector: ApplianceCollector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)  # type: ignore[arg-type]
        self.host, self.port = host, port
        self._server: Any = None

    def start(self) -> MetricsServer:
        self._server, _thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_port  # port 0: the one the system chose
        log.info("metrics: http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
