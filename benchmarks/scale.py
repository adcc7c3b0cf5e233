"""What bringing a large camera field to the bundle's scale costs, side by side with fitting it (issue 46).

A 2448x2048 field (a machine-vision sensor) with 30 real cells, counted one field at a time on ONNX
Runtime: fitted to the detector's input as before (its cells shrink to a fifth), and at the bundle's
scale in tiles of 640, 1024 and 2048 px (larger tiles overlap less; 2048 holds the whole field).
Every variant classifies the same 30 boxes, so what differs is the detector's share.

    python benchmarks/scale.py [--bundle models/marrow-bm] [--um-per-px 0.069] [--fields 8] [--out DIR]
                               [--engine onnxruntime|torch-cuda|torch-cpu]

``torch-cuda`` is the GPU profile's fused path (FP16, CUDA graphs per tile size; benchmarks/gpu_check.sh).

0.069 um/px: a 3.45 um-pixel sensor (2448x2048, e.g. IMX264) behind a x100 objective and a 0.5x
C-mount adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fields import compose_field  # noqa: E402
from benchmarks.pipeline import cpu_name  # noqa: E402
from edge import __version__  # noqa: E402
from edge.analysis.colour import white_balance  # noqa: E402
from edge.analysis.field_models import onnxruntime_model  # noqa: E402
from edge.analysis.scale import plan_field, scale_factor, tile_overlap  # noqa: E402
from edge.config import DEFAULT_BUNDLE, AnalysisConfig, OnnxRuntimeEngine  # noqa: E402
from edge.engines.bundle import load_bundle  # noqa: E402

SENSOR = (2048, 2448)  # height, width
TILES = (640, 1024, 2048)


def _model(bundle: Any, engine: str, threads: int) -> Any:
    if engine == "onnxruntime":
        return onnxruntime_model(bundle, AnalysisConfig(), OnnxRuntimeEngine(threads=threads))
    from edge.analysis.field_models import torch_model
    from edge.config import TorchEngine

    device = engine.removeprefix("torch-")
    settings = TorchEngine(
        device=device, precision="fp16" if device == "cuda" else "fp32", cuda_graphs=device == "cuda"
    )
    return torch_model(bundle, AnalysisConfig(), settings)


def measure(
    bundle_dir: Path, um_per_px: float, fields: int, cells: int, threads: int, engine: str = "onnxruntime"
) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    scale = bundle.manifest.scale
    if scale is None:
        raise SystemExit(f"bundle {bundle.manifest.name} records no scale: nothing to compare")
    model = _model(bundle, engine, threads)
    composed = [compose_field(cells, *SENSOR, seed=s) for s in range(fields)]
    factor = scale_factor(um_per_px, scale)
    overlap = tile_overlap(scale)
    variants: list[tuple[str, float | None, int | None]] = [("fitted (before)", None, None)]
    variants += [(f"scaled, tiles of {t} px", factor, t) for t in TILES]
    rows = []
    for name, f, tile in variants:
        model.set_scale(f, overlap, tile)
        plan = plan_field(*SENSOR, bundle.manifest.detector, f, overlap, tile)
        model(white_balance(composed[0][0]), composed[0][1])  # warm up this input size
        times, stages = [], {"detect": [], "classify": []}
        for image, boxes in composed:
            t0 = time.perf_counter()
            out = model(white_balance(image), boxes)
            times.append((time.perf_counter() - t0) * 1e3)
            stages["detect"].append(out.timings_ms["detect"])
            stages["classify"].append(out.timings_ms["classify"])
        p50, p95 = (float(v) for v in np.percentile(times, [50, 95]))
        rows.append({
            "variant": name, "factor": round(plan.factor, 4), "detector_input": [plan.height, plan.width],
            "tiles": len(plan.tiles), "detector_pixels_m": round(sum((t.x1 - t.x0) * (t.y1 - t.y0)
                                                                     for t in plan.tiles) / 1e6, 2),
            "field_ms_p50": round(p50, 1), "field_ms_p95": round(p95, 1),
            "detect_ms_p50": round(float(np.median(stages["detect"])), 1),
            "classify_ms_p50": round(float(np.median(stages["classify"])), 1),
            "fields_per_s": round(1e3 * len(times) / sum(times), 2),
        })  # fmt: skip
    import onnxruntime

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "python": platform.python_version()},
        "versions": {"marrow-edge": __version__, "onnxruntime": onnxruntime.__version__},
        "engine": engine, "providers": model.providers,
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version} ({bundle.short_hash})",
        "field": f"{SENSOR[1]}x{SENSOR[0]}, {cells} cells (classified from fixed boxes), {fields} fields",
        "um_per_px": um_per_px, "bundle_um_per_px": scale.um_per_px, "overlap_px": overlap, "threads": threads,
        "rows": rows,
    }  # fmt: skip


def table(report: dict[str, Any]) -> str:
    lines = [
        f"# Large fields at the bundle's scale ({report['date']})",
        "",
        f"{report['machine']['cpu']}, {report['machine']['logical_cores']} logical cores, engine {report['engine']} "
        f"({', '.join(report['providers'])}), ONNX Runtime {report['versions']['onnxruntime']} "
        f"({report['threads'] or 'all'} threads), marrow-edge "
        f"{report['versions']['marrow-edge']}; {report['bundle']}; {report['field']}; camera {report['um_per_px']} "
        f"um/px, bundle {report['bundle_um_per_px']} um/px, tiles overlap {report['overlap_px']} px.",
        "",
        "| variant | factor | detector input | tiles | detector Mpx | field ms p50 / p95 | detect ms | classify ms "
        "| fields/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['variant']} | {r['factor']} | {r['detector_input'][1]}x{r['detector_input'][0]} | {r['tiles']} | "
            f"{r['detector_pixels_m']} | {r['field_ms_p50']} / {r['field_ms_p95']} | {r['detect_ms_p50']} | "
            f"{r['classify_ms_p50']} | {r['fields_per_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--um-per-px", type=float, default=0.069)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--cells", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--engine", choices=["onnxruntime", "torch-cuda", "torch-cpu"], default="onnxruntime")
    parser.add_argument("--tag", default="vm")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    report = measure(args.bundle, args.um_per_px, args.fields, args.cells, args.threads, args.engine)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"scale-{args.tag}-{args.engine}-{report['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table(report))
    sys.stdout.write(table(report))
    return report


if __name__ == "__main__":
    main()
