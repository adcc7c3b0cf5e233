"""Counters of the count loop and the thread that publishes them on ``<device>/health``."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import PublishError, StorageError
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import CpuOut, GpuOut, HealthMessage, LisBacklogOut
from edge.mqtt.publisher import MqttPublisher
from edge.service.gpu import GpuProbe

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    frames: int = 0  # frames the gate saw (live) or fields read (replay)
    fields: int = 0
    skipped: int = 0
    ring_skipped: int = 0
    publish_failures: int = 0
    stages: dict[str, deque[float]] = field(default_factory=dict)
    scale: str | None = None  # the camera scale in use and whether the slide's cells fit it, in words

    def field(self, timings_ms: dict[str, float]) -> None:
        self.fields += 1
        for stage, ms in timings_ms.items():
            self.stages.setdefault(stage, deque(maxlen=50)).append(ms)


def process_memory_mb(field: str = "VmRSS") -> float | None:
    """A memory line of /proc/self/status (VmRSS: resident now, VmHWM: peak) in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def resident_mb() -> float:
    return process_memory_mb("VmRSS") or 0.0


def cpu_sample(root: Path = Path("/")) -> CpuOut | None:
    """The one-minute load over the cores and the hottest thermal zone (None where neither is readable)."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1) * 100.0
    except OSError:
        return None
    temperatures = []
    for zone in (root / "sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            temperatures.append(int(zone.read_text().strip()) / 1000.0)  # millidegrees
        except (OSError, ValueError):
            continue
    return CpuOut(load_percent=round(load, 1), temperature_c=max(temperatures) if temperatures else None)


class HealthReporter:
    def __init__(
        self,
        publisher: MqttPublisher,
        factory: MessageFactory,
        stats: RunStats,
        backend: str,
        interval: float,
        state_dir: Path | None = None,
        min_free_mb: float = 200.0,
        gpu: GpuProbe | None = None,
        lis: Callable[[], dict] | None = None,
    ) -> None:
        self.gpu = gpu
        self.lis = lis  # the LIS backlog of the slide store; None: no LIS configured
        self.state_dir = state_dir  # where the journal and the outbox write: a full disk stops a slide
        self.min_free_mb = min_free_mb
        self.publisher = publisher
        self.factory = factory
        self.stats = stats
        self.backend = backend
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._last = (time.monotonic(), 0)
        self._rejected_logged = 0

    def message(self, new_window: bool = True) -> HealthMessage:
        """The figures now; the frame rate is over the time since the last new window (the last message)."""
        s, now = self.stats, time.monotonic()
        then, frames_then = self._last
        if new_window:
            self._last = (now, s.frames)
        outbox = self.publisher.outbox
        free = self._free_mb()
        gpu = self.gpu.sample() if self.gpu is not None else None
        return HealthMessage(
            **self.factory._envelope(),
            uptime_s=round(now - s.started, 1),
            frames_per_s=round((s.frames - frames_then) / max(now - then, 1e-6), 2),
            fields_counted=s.fields,
            fields_skipped=s.skipped,
            stage_ms_p50={k: round(statistics.median(v), 2) for k, v in s.stages.items() if v},
            drops={"ring_skipped": s.ring_skipped, "publish_failures": s.publish_failures},
            queues={"mqtt_unacknowledged": self.publisher.unconfirmed, "outbox_rows": len(outbox) if outbox else 0},
            outbox_alarm=bool(outbox and outbox.alarm),
            backend=self.backend,
            memory_mb=round(resident_mb(), 1),
            disk_free_mb=free,
            disk_alarm=free is not None and free < self.min_free_mb,
            gpu=GpuOut(**vars(gpu)) if gpu is not None else None,
            lis=self._lis(),
            cpu=cpu_sample(),
            interval_s=self.interval,
            scale=s.scale,
        )

    def _lis(self) -> LisBacklogOut | None:
        if self.lis is None:
            return None
        try:
            return LisBacklogOut(**self.lis())
        except (sqlite3.Error, StorageError, OSError) as exc:  # a broken store must not silence health
            log.warning("LIS backlog not read: %s", exc)
            return None

    def _free_mb(self) -> float | None:
        if self.state_dir is None:
            return None
        try:
            usage = shutil.disk_usage(self.state_dir)
        except OSError:
            return None
        return round(usage.free / 2**20, 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            message = self.message()
            if message.outbox_alarm:
                log.error("MQTT outbox over its bound: %d rows waiting", message.queues["outbox_rows"])
            if message.disk_alarm:
                log.error(
                    "only %.0f MB free in %s: the journal and outbox will fail", message.disk_free_mb, self.state_dir
                )
            rejected = message.lis.rejected if message.lis is not None else 0
            if rejected and rejected != self._rejected_logged:  # once per change, not every period
                log.error("LIS: %d signed report(s) refused or given up: see the review page", rejected)
            self._rejected_logged = rejected
            try:
                self.publisher.publish(self.publisher.topics.health, message)
            except PublishError as exc:
                log.warning("health not published: %s", exc)

    def start(self) -> HealthReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
