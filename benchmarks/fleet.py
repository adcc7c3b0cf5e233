"""The fleet page under a lab's load: N simulated boxes on a real mosquitto, the fleet server, and a
page client on its event stream.

A simulated box is the box's own MQTT side without the camera and models: the real publisher
(``MqttPublisher``: birth ``online``, last will ``offline``, ``stopped`` at a clean close), the real
command handler and slide control, and schema-valid messages at a box's normal rate: ``health``
every ``--health-s`` and ``current`` after every field (``--field-s``; what the fleet follows), a
new slide when one reaches its target. The fleet page's browser test uses the same boxes.

Measured per fleet size, side by side in one run (the smallest is the baseline):
messages per second the fleet server applied, and the page update latency: from a box stamping a
``current`` message to the page's event stream delivering that box's card (p50/p95/max).

    python -m benchmarks.fleet --boxes 5 50 --seconds 30 --out benchmarks/results
    python -m benchmarks.fleet box --broker mqtt://127.0.0.1:1883 --device-id box-c   # one box, for tests
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from edge import __version__
from edge.config import MqttConfig, parse_mqtt_url
from edge.counting.control import SlideControl
from edge.counting.tally import Slide
from edge.mqtt.commands import CommandHandler
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import (
    BundleRef,
    CpuOut,
    CurrentSlideMessage,
    HealthMessage,
    LisBacklogOut,
    Provenance,
)
from edge.mqtt.publisher import MqttPublisher
from edge.mqtt.topics import Topics

log = logging.getLogger("benchmark")

PREFIX = "marrow/v1"
BUNDLE = BundleRef(name="marrow-bm", version="2.0.0", hash="0123456789ab", untrained=False, trained_on="bone_marrow")


class SimulatedBox:
    """One box's MQTT side: real publisher and command handling, scripted counting."""

    def __init__(
        self,
        host: str,
        port: int,
        device_id: str,
        health_s: float = 10.0,
        field_s: float = 1.0,
        target: int = 500,
        cells_per_field: int = 30,
        blast_share: float = 0.35,
        lis: tuple[int, int] | None = (0, 0),
        seed: int = 0,
    ) -> None:
        self.device_id = device_id
        self.topics = Topics(PREFIX, device_id)
        self.factory = MessageFactory(device_id, Provenance(
            software_version=__version__, bundle=BUNDLE, backend="onnxruntime", providers=["CPUExecutionProvider"]
        ))  # fmt: skip
        config = MqttConfig(keepalive_s=5, outbox=None)
        self.publisher = MqttPublisher(host, port, self.topics, self.factory, config)
        self.control = SlideControl(target)
        self.publisher.serve_commands(CommandHandler(self.control, self.factory))
        self.health_s, self.field_s = health_s, field_s
        self.cells_per_field, self.blast_share = cells_per_field, blast_share
        self.lis = lis
        self.rng = random.Random(seed)
        self.fields = 0
        self.counted = 0
        self.blasts = 0
        self.sent = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- what a box publishes -------------------------------------------------------------------
    def health(self) -> HealthMessage:
        pending, rejected = self.lis if self.lis is not None else (0, 0)
        return HealthMessage(
            **self.factory._envelope(), uptime_s=1.0, frames_per_s=1.0 / self.field_s, fields_counted=self.fields,
            fields_skipped=0, stage_ms_p50={"detect": 40.0}, drops={"ring_skipped": 0, "publish_failures": 0},
            queues={"mqtt_unacknowledged": 0, "outbox_rows": 0}, outbox_alarm=False, backend="onnxruntime",
            memory_mb=420.0, disk_free_mb=51_200.0, disk_alarm=False,
            lis=LisBacklogOut(pending=pending, rejected=rejected, oldest_s=600 if pending + rejected else None)
            if self.lis is not None else None,
            cpu=CpuOut(load_percent=55.0, temperature_c=61.0), interval_s=self.health_s,
        )  # fmt: skip

    def current(self, state: str = "counting") -> CurrentSlideMessage:
        slide = self.control.slide
        n = max(self.counted, 1)
        p = self.blasts / n
        half = 196.0 * (p * (1 - p) / n) ** 0.5  # the Wald 95% interval, in percent: enough for a simulation
        low, high = max(0.0, 100 * p - half), min(100.0, 100 * p + half)
        rule = "positive" if low >= 20.0 else "negative" if high < 20.0 else "indeterminate"
        return CurrentSlideMessage(
            **self.factory._envelope(), state=state, slide_id=slide.slide_id if slide else None,  # type: ignore[arg-type]
            specimen_id=slide.specimen_id if slide else None, started=slide.started if slide else None,
            ended=dt.datetime.now(dt.timezone.utc) if state == "finished" else None, fields=self.fields,
            cells_counted=self.counted, target_count=self.control.target_count,
            progress=min(1.0, self.counted / self.control.target_count), percent={"blast": round(100 * p, 2)},
            intervals={"blast": (round(low, 2), round(high, 2))}, rules={"ALL": rule}, rule_state=rule,  # type: ignore[dict-item]
            domain="ok" if self.counted >= 100 else "too_few_cells", topic=None,
        )  # fmt: skip

    def count_field(self) -> CurrentSlideMessage:
        """One field more on the slide being counted; the current message it gives."""
        self.fields += 1
        self.counted += self.cells_per_field
        self.blasts += sum(self.rng.random() < self.blast_share for _ in range(self.cells_per_field))
        message = self.current()
        self.publisher.publish(self.topics.current, message, retain=True)
        self.sent += 1
        return message

    def begin(self, specimen_id: str) -> None:
        self.control.begin(Slide(specimen_id=specimen_id))
        self.fields = self.counted = self.blasts = 0

    def finish(self) -> None:
        self.publisher.publish(self.topics.current, self.current("finished"), retain=True)
        self.control.end()

    # -- life --------------------------------------------------------------------------------------
    def start(self, counting: bool = True) -> SimulatedBox:
        self.publisher.connect()
        self.publisher.publish(self.topics.health, self.health())
        if counting:
            self.begin(f"SIM-{self.device_id}")
        for target, name in ((self._health_loop, "health"), (self._count_loop, "count")):
            thread = threading.Thread(target=target, name=f"{self.device_id}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _health_loop(self) -> None:
        while not self._stop.wait(self.health_s):
            self.publisher.publish(self.topics.health, self.health())
            self.sent += 1

    def _count_loop(self) -> None:
        while not self._stop.wait(self.field_s * self.rng.uniform(0.8, 1.2)):
            specimen = self.control.take_start() if self.control.start_requested.is_set() else None
            if specimen is not None:
                self.begin(specimen)
            if self.control.slide is None:
                continue
            if self.control.stop_requested.is_set() or self.counted >= self.control.target_count:
                self.finish()
                continue
            self.count_field()

    def stop(self) -> None:
        """A clean exit: status ``stopped``."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.publisher.close()


# -- the benchmark ---------------------------------------------------------------------------------
def _events(url: str, seen: list[tuple[float, dict[str, Any]]], stop: threading.Event) -> None:
    """A page client: reads the event stream and keeps (arrival time, box card) of every box event."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "events", timeout=30) as stream:
        kind = None
        for raw in stream:
            if stop.is_set():
                return
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "box":
                seen.append((time.time(), json.loads(line[6:])))


def measure(broker: str, boxes: int, seconds: float, health_s: float, field_s: float) -> dict[str, Any]:
    from edge.config import AppConfig
    from edge.fleet.app import Fleet

    config = AppConfig.model_validate({"mqtt": {"url": broker, "outbox": None}, "fleet": {"port": 0}})
    fleet = Fleet(config).start()
    # the boxes in a process of their own: the fleet server is measured, not the simulation's threads
    sims = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleet", "box", "--broker", broker, "--device-id", f"bench-{boxes}",
         "--count", str(boxes), "--health-s", str(health_s), "--field-s", str(field_s), "--target", "100000"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for _ in range(boxes):
        sims.stdout.readline()  # type: ignore[union-attr]
    seen: list[tuple[float, dict[str, Any]]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_events, args=(fleet.url, seen, stop), daemon=True)
    reader.start()
    time.sleep(2.0)  # every box online, the page client connected
    handled0, seen0, t0 = fleet.board.handled, len(seen), time.monotonic()
    time.sleep(seconds)
    handled, elapsed = fleet.board.handled - handled0, time.monotonic() - t0
    window = seen[seen0:]
    stop.set()
    sims.send_signal(signal.SIGTERM)
    sims.wait(timeout=60)
    fleet.stop()
    latencies = []
    first_seen: set[str] = set()
    for arrived, card in window:
        current = card.get("current")
        # a card is also sent for a box's health or state: time only the first delivery of each current message
        if current and current.get("time") and current["message_id"] not in first_seen:
            first_seen.add(current["message_id"])
            stamped = dt.datetime.fromisoformat(current["time"].replace("Z", "+00:00")).timestamp()
            latencies.append((arrived - stamped) * 1000.0)
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else float("nan")

    return {
        "boxes": boxes,
        "seconds": round(elapsed, 1),
        "messages_per_s_handled": round(handled / elapsed, 1),
        "box_events_per_s_to_page": round(len(window) / elapsed, 1),
        "update_latency_ms": {"p50": q(0.5), "p95": q(0.95), "max": q(1.0), "n": len(latencies)},
        "invalid": fleet.board.invalid,
        "mean_latency_ms": round(statistics.fmean(latencies), 1) if latencies else None,
    }


def _bench(args: argparse.Namespace) -> None:
    from edge.mqtt.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        rows = [measure(broker.url, n, args.seconds, args.health_s, args.field_s) for n in args.boxes]
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    result = {"date": dt.date.today().isoformat(), "machine": machine, "software": __version__,
              "health_s": args.health_s, "field_s": args.field_s, "rows": rows}  # fmt: skip
    lines = [
        f"# Fleet page: {', '.join(str(n) for n in args.boxes)} simulated boxes, {args.seconds:g} s each",
        "",
        f"{result['date']}, {machine}, marrow-edge {__version__}; each box: health every {args.health_s:g} s, "
        f"a field (current) every {args.field_s:g} s ±20%; the boxes in a process of their own.",
        "",
        "| boxes | messages/s handled | box events/s to the page | update latency p50 | p95 | max | invalid |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["update_latency_ms"]
        lines.append(f"| {r['boxes']} | {r['messages_per_s_handled']} | {r['box_events_per_s_to_page']} | "
                     f"{lat['p50']} ms | {lat['p95']} ms | {lat['max']} ms | {r['invalid']} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    log.info("\n%s", text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"fleet-{args.name}-{result['date']}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)


def _box(args: argparse.Namespace) -> None:
    """Simulated boxes until SIGTERM (clean stop) or SIGKILL (the last will)."""
    host, port = parse_mqtt_url(args.broker)
    names = [args.device_id] if args.count == 1 else [f"{args.device_id}-{i:03d}" for i in range(args.count)]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    sims = []
    for i, name in enumerate(names):
        sims.append(SimulatedBox(host, port, name, args.health_s, args.field_s, target=args.target, seed=i))
        sims[-1].start(counting=not args.idle)
        print(f"box: {name} online", flush=True)  # tests and the benchmark wait for these lines
    done.wait()
    for sim in sims:
        sim.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--health-s", type=float, default=10.0)
    parser.add_argument("--field-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default="vm", help="the machine's short name in the result file's name")
    sub = parser.add_subparsers(dest="command")
    box = sub.add_parser("box", help="one simulated box")
    box.add_argument("--broker", required=True)
    box.add_argument("--device-id", required=True)
    box.add_argument("--health-s", type=float, default=1.0)
    box.add_argument("--field-s", type=float, default=1.0)
    box.add_argument("--target", type=int, default=500)
    box.add_argument("--idle", action="store_true", help="connected, no slide")
    box.add_argument("--count", type=int, default=1, help="this many boxes, named DEVICE_ID-000...")
    args = parser.parse_args(argv)
    _box(args) if args.command == "box" else _bench(args)


if __name__ == "__main__":
    main()
