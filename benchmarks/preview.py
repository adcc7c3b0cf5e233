"""The live view's cost and rate: the preview path over the simulated microscope, real models.

A scan of the simulated microscope runs at ``--camera-fps`` through the real field gate; every
frame is offered to the preview path and every accepted field is analysed by the count path
(holding the models, as ``run_slide`` does). Side by side in one run:

- ``jpeg only`` (the baseline): ``preview.boxes: false``, frames scaled and encoded only;
- ``boxes``: the default, live frames analysed while the count path is idle.

Reported per variant: preview frames/s published, share of frames that carry boxes, the gaps
between preview frames (p50/p95/max), and the count path's field latency (p50/p95), which
shows what the live analysis costs the count.

    python benchmarks/preview.py --seconds 30 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from benchmarks.pipeline import cpu_name, git_commit
from edge import __version__
from edge.capture.gate import FieldGate
from edge.capture.simulator import SimulatedMicroscope, build_slide, random_scan
from edge.config import DEFAULT_SAMPLES, PreviewConfig, load_config
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import PreviewMessage
from edge.service.pipeline import build_appliance
from edge.service.preview import PreviewPublisher

log = logging.getLogger("benchmark")


class TimingPublisher:
    """Keeps when each preview frame went out and whether it had boxes."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bool, int]] = []

    def publish_preview(self, message: BaseModel) -> None:
        assert isinstance(message, PreviewMessage)
        self.sent.append((time.monotonic(), message.cells is not None, len(message.jpeg)))

    def publish(self, topic: str, message: BaseModel, retain: bool = False) -> None:
        pass

    def camera_state(self, state: str, detail: str) -> None:
        pass

    def close(self) -> None:
        pass


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "max": round(float(a.max()), 1)}  # fmt: skip


def run_variant(appliance: Any, boxes: bool, args: argparse.Namespace) -> dict[str, Any]:
    slide = build_slide(DEFAULT_SAMPLES, 8, 6)
    script = random_scan(slide.shape[:2], 640, 480, stops=200, seed=args.seed)
    camera = SimulatedMicroscope(slide, script, fps=args.camera_fps)
    gate = FieldGate()
    publisher = TimingPublisher()
    settings = PreviewConfig(fps=args.preview_fps, boxes=boxes)
    preview = PreviewPublisher(
        publisher, MessageFactory("bench", appliance.provenance), settings,  # type: ignore[arg-type]
        appliance.bundle.manifest.classes, analyze=appliance.analyzer, models_lock=appliance.models_lock,
    ).start()  # fmt: skip
    field_ms: list[float] = []
    frames = 0
    started = time.monotonic()
    for frame in camera.frames():
        if time.monotonic() - started >= args.seconds:
            break
        frames += 1
        event = gate(frame.image)
        preview.offer(frame.image, event=event)  # type: ignore[arg-type]
        if event.accepted:  # the count path, as run_slide runs it
            t0 = time.perf_counter()
            with appliance.models_lock:
                appliance.analyzer(frame.image)
            field_ms.append((time.perf_counter() - t0) * 1e3)
    elapsed = time.monotonic() - started
    preview.stop()
    times = [t for t, _, _ in publisher.sent]
    gaps = [(b - a) * 1e3 for a, b in itertools.pairwise(times)]
    return {
        "camera_frames_per_s": round(frames / elapsed, 2),
        "preview_frames_per_s": round(len(times) / elapsed, 2),
        "with_boxes": round(sum(b for _, b, _ in publisher.sent) / max(1, len(times)), 3),
        "preview_gap_ms": _percentiles(gaps),
        "jpeg_kb_p50": round(float(np.median([n for _, _, n in publisher.sent])) * 3 / 4 / 1024, 1)
        if publisher.sent
        else 0.0,
        "fields_counted": len(field_ms),
        "field_ms": _percentiles(field_ms),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each variant's scan")
    parser.add_argument("--camera-fps", type=float, default=15.0)
    parser.add_argument("--preview-fps", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=platform.node() or "host", help="machine name in the file names")
    parser.add_argument("--out", type=Path, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    appliance = build_appliance(load_config(environ={}))
    import onnxruntime

    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "arch": platform.machine()},
        "versions": {
            "marrow-edge": __version__,
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "backend": f"{appliance.provenance.backend} {','.join(appliance.provenance.providers)}",
        "bundle": appliance.bundle.manifest.name,
        "settings": {"seconds": args.seconds, "camera_fps": args.camera_fps, "preview_fps": args.preview_fps},
        "variants": {},
    }
    for name, boxes in (("jpeg only (baseline)", False), ("boxes", True)):
        log.info("variant %s", name)
        report["variants"][name] = run_variant(appliance, boxes, args)
        log.info("%s: %s", name, report["variants"][name])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"preview-{args.tag}-{report['date'][:10]}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(report))
        log.info("written %s.json/.md", stem)
    return report


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Preview path, {report['date'][:10]}, commit {report['commit']}",
        "",
        f"{m['cpu']} ({m['logical_cores']} logical cores), {report['backend']}, bundle {report['bundle']}; "
        f"versions {json.dumps(report['versions'])}. Simulated microscope at {report['settings']['camera_fps']:g} "
        f"frames/s, preview.fps {report['settings']['preview_fps']:g}, {report['settings']['seconds']:g} s each.",
        "",
        "| variant | camera frames/s | preview frames/s | with boxes | gap p50 / p95 / max ms | JPEG KiB "
        "| fields counted | count-path field ms p50 / p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        g, f = v["preview_gap_ms"], v["field_ms"]
        lines.append(
            f"| {name} | {v['camera_frames_per_s']} | {v['preview_frames_per_s']} | {v['with_boxes']:.0%} "
            f"| {g['p50']} / {g['p95']} / {g['max']} | {v['jpeg_kb_p50']} | {v['fields_counted']} "
            f"| {f['p50']} / {f['p95']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
