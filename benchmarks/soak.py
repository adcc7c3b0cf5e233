"""A bounded soak: the appliance in service mode on the simulated microscope for a while, slides
started and stopped by command, its memory and open descriptors sampled every second.

Memory or descriptors that grow slide after slide are a leak a box running for weeks would die
of; this prints them over time and a JSON summary (first/last/peak RSS, descriptors, growth per
slide). It measures, it asserts nothing.

    python -m benchmarks.soak --seconds 120 --slide-s 15 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.publish as publish
import yaml

from edge.capture.simulator import build_slide, random_scan
from edge.config import DEFAULT_SAMPLES
from edge.mqtt.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parent.parent


def sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open descriptors) of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--slide-s", type=float, default=15, help="length of each slide")
    parser.add_argument("--fps", type=float, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    broker = EmbeddedBroker().start()
    # a scan long enough for the whole soak (the default sim scan ends after 12 stops)
    slide = build_slide(DEFAULT_SAMPLES, 8, 6)
    stops = int(args.seconds * args.fps / 20) + 10
    script = Path(tempfile.mkdtemp()) / "scan.yaml"
    script.write_text(yaml.safe_dump(random_scan(slide.shape[:2], 640, 480, stops)))
    command = [sys.executable, "-m", "edge.cli", "run", "--camera", f"sim:{script}", "--fps", str(args.fps),
               "--wait-for-start", "--device-id", "soak", "--broker", broker.url, "--quiet"]  # fmt: skip
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[dict] = []
    slides = 0
    started = time.monotonic()
    next_switch = started + 5  # the models load first
    counting = False
    try:
        while time.monotonic() - started < args.seconds and run.poll() is None:
            now = time.monotonic()
            if now >= next_switch:
                verb = "stop_slide" if counting else "start_slide"
                payload = "{}" if counting else json.dumps({"specimen_id": f"SOAK-{slides + 1}"})
                publish.single(f"marrow/v1/soak/cmd/{verb}", payload, qos=1, hostname=broker.host, port=broker.port)
                slides += 0 if counting else 1
                counting = not counting
                next_switch = now + (args.slide_s if counting else 2)
            rss, fds = sample(run.pid)
            samples.append({"t": round(now - started, 1), "rss_mb": round(rss, 1), "fds": fds, "slides": slides})
            sys.stdout.write(f"t {now - started:6.1f} s  slides {slides:3d}  RSS {rss:7.1f} MB  descriptors {fds}\n")
            time.sleep(1.0)
    finally:
        run.terminate()
        run.wait(30)
        broker.stop()
    # from the second slide on: the first one still loads and warms the models
    settled = [s for s in samples if s["slides"] >= 2] or samples
    summary = {
        "benchmark": "soak",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "seconds": round(samples[-1]["t"], 1) if samples else 0,
        "slides": slides,
        "rss_mb": {
            "first": settled[0]["rss_mb"],
            "last": settled[-1]["rss_mb"],
            "peak": max(s["rss_mb"] for s in samples),
        },
        "fds": {"first": settled[0]["fds"], "last": settled[-1]["fds"], "peak": max(s["fds"] for s in samples)},
        "rss_growth_mb_per_slide": round((settled[-1]["rss_mb"] - settled[0]["rss_mb"]) / max(slides - 1, 1), 2),
        "exit_code_after_sigterm": run.returncode,
        "ended_by": "the soak's own deadline (SIGTERM)" if run.returncode == 0 else "the appliance",
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"soak-{dt.date.today().isoformat()}.json").write_text(
            json.dumps(summary | {"samples": samples}, indent=1)
        )
    return summary


if __name__ == "__main__":
    main()
