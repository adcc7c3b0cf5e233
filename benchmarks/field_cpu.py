"""Per-field latency and CPU time of the count path, ONNX Runtime side by side with the
PyTorch FP32 eager baseline, on real fields.

    python benchmarks/field_cpu.py [--fields samples/fields] [--repeats 5] [--out benchmarks/results]

Writes a JSON file and a markdown table named after the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge import __version__  # noqa: E402
from edge.analysis.classify import Classifier  # noqa: E402
from edge.analysis.detect import Detector  # noqa: E402
from edge.analysis.field import FieldAnalyzer  # noqa: E402
from edge.capture.replay import open_replay  # noqa: E402
from edge.config import load_config  # noqa: E402
from edge.engines.bundle import Bundle  # noqa: E402
from edge.service.pipeline import build_appliance  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def measure(analyzer: FieldAnalyzer, images: list[np.ndarray], repeats: int) -> dict:
    analyzer(images[0])  # warm-up
    wall, cpu, cells = [], [], 0
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        for image in images:
            w0, c0 = time.perf_counter(), time.process_time()
            result = analyzer(image)
            wall.append((time.perf_counter() - w0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
            cells += len(result.cells)
            for stage, ms in result.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
    total_s = sum(wall) / 1e3
    return {
        "fields": len(wall),
        "cells": cells,
        "wall_ms": {"p50": percentile(wall, 50), "p95": percentile(wall, 95), "p99": percentile(wall, 99)},
        "cpu_ms_per_field_median": statistics.median(cpu),
        "stages_ms_p50": {k: percentile(v, 50) for k, v in stages.items()},
        "fields_per_s": len(wall) / total_s,
        "cells_per_s": cells / total_s,
    }


def torch_baseline(bundle: Bundle, config, boxes_per_field: int) -> FieldAnalyzer | None:
    """The same architectures in PyTorch FP32 eager, random weights (a bundle ships no .pt).

    Random weights find no cells at the bundle's threshold, so the baseline's detector keeps
    its best ``boxes_per_field`` boxes: both pipelines then classify the same number of crops.
    """
    try:
        from build_engines.export import ExportRequest, build_models
        from edge.engines.torch_reference import TorchBackend
    except ImportError:
        return None
    manifest = bundle.manifest
    request = ExportRequest(
        out_dir=bundle.root,
        profile=manifest.profile,
        classes=list(manifest.classes),
        detector_labels=tuple(manifest.detector.labels),
    )
    detector_graph, classifier_graph, _ = build_models(request)
    spec = manifest.detector.model_copy(update={"max_detections": max(1, boxes_per_field)})
    detector = Detector(TorchBackend(detector_graph, ["boxes", "scores"]), spec, score_threshold=0.0)
    classifier = Classifier(
        TorchBackend(classifier_graph, ["countable", "probs"]), len(manifest.classes), config.analysis.max_batch
    )
    return FieldAnalyzer(bundle, detector, classifier, config.analysis.crop_margin, config.analysis.countable_threshold)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=Path, default=ROOT / "samples" / "fields")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--no-baseline", action="store_true", help="skip the PyTorch eager baseline")
    parser.add_argument("--out", type=Path, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    images = [f.image for f in open_replay(args.fields).frames() if f.image is not None]
    appliance = build_appliance(config)
    bundle = appliance.bundle  # already verified: no second hashing of the model files
    runs = {"onnxruntime-cpu": measure(appliance.analyzer, images, args.repeats)}
    ort = runs["onnxruntime-cpu"]
    per_field = round(ort["cells"] / max(ort["fields"], 1))
    baseline = None if args.no_baseline else torch_baseline(bundle, config, per_field)
    if baseline is not None:
        import torch

        runs["torch-eager-fp32 (baseline)"] = measure(baseline, images, args.repeats)
    versions = {"marrow-edge": __version__, "python": platform.python_version(), "numpy": np.__version__}
    import onnxruntime

    versions["onnxruntime"] = onnxruntime.__version__
    if baseline is not None:
        versions["torch"] = torch.__version__
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "logical_cores": os.cpu_count(),
            "arch": platform.machine(),
        },
        "versions": versions,
        "bundle": {
            "name": bundle.manifest.name,
            "hash": bundle.short_hash,
            "untrained": bundle.manifest.untrained,
            "providers": appliance.provenance.providers,
        },
        "fields_source": str(args.fields),
        "field_sizes": sorted({f"{i.shape[1]}x{i.shape[0]}" for i in images}),
        "repeats": args.repeats,
        "runs": runs,
    }
    table = [
        "| backend | fields | cells | p50 ms | p95 ms | p99 ms | CPU ms/field (median) | detect p50 | classify p50 "
        "| fields/s | cells/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        table.append(
            f"| {name} | {r['fields']} | {r['cells']} | {r['wall_ms']['p50']:.1f} | {r['wall_ms']['p95']:.1f} | "
            f"{r['wall_ms']['p99']:.1f} | {r['cpu_ms_per_field_median']:.1f} | "
            f"{r['stages_ms_p50']['detect']:.1f} | {r['stages_ms_p50']['classify']:.1f} | "
            f"{r['fields_per_s']:.2f} | {r['cells_per_s']:.1f} |"
        )
    markdown = (
        f"# Count path per field, {report['machine']['cpu']} ({report['machine']['logical_cores']} cores)\n\n"
        f"{report['date']}; bundle {bundle.manifest.name} ({bundle.short_hash}); fields {report['field_sizes']}; "
        f"{args.repeats} passes; versions {json.dumps(versions)}\n\n" + "\n".join(table) + "\n"
    )
    sys.stdout.write(markdown)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"field_cpu-{bundle.manifest.name}-{platform.node() or 'host'}-{report['date'][:10]}"
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(markdown)
    return report


if __name__ == "__main__":
    main()
