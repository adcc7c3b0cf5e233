"""Fields per second on the CPU with fields queued (a replayed slide), one run, side by side:
the PyTorch FP32 eager pipeline (the baseline), ONNX Runtime FP32 one field at a time, the same
with the two stages overlapped (``edge.analysis.overlap``), the bundle's INT8 graphs both ways, and
(``--torch``) the fused PyTorch path on the CPU, eager and ``torch.compile``'d.

    python benchmarks/throughput.py [--bundle models/marrow-bm [OTHER ...]] [--cells 30] [--fields 12] [--out DIR]

Several bundles (e.g. a new version and the one it replaces) are measured in the same run, one after
the other on the same composed fields.

Every variant counts the same composed fields (real cells on real backgrounds, fixed boxes so
every variant classifies the same N cells); per-field latency percentiles are of the sequential
variants, fields/s of all. ``threads`` is ONNX Runtime's intra-op threads per session: 0 lets it
take every core for each stage in turn; overlapped, each stage gets its own share.
``dynamic_block_base 4``: ONNX Runtime's thread pool splits work into finer, shrinking blocks
(``engine.session_config``).
"""

from __future__ import annotations

import argparse
import json
import logging
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
from edge.analysis.field_models import onnxruntime_model  # noqa: E402
from edge.analysis.overlap import Overlapped  # noqa: E402
from edge.config import DEFAULT_BUNDLE, AnalysisConfig, OnnxRuntimeEngine  # noqa: E402
from edge.engines.bundle import Bundle, load_bundle  # noqa: E402

log = logging.getLogger("throughput")


def _eager(bundle: Bundle) -> Any:
    from edge.analysis.classify import Classifier
    from edge.analysis.detect import Detector
    from edge.analysis.field import HostFieldModel
    from edge.analysis.torch_fused import load_torch_models
    from edge.engines.torch_reference import TorchBackend

    detector, classifier = load_torch_models(bundle)
    m = bundle.manifest
    det = Detector(TorchBackend(detector, ["boxes", "scores"], "cpu"), m.detector)
    cls = Classifier(TorchBackend(classifier, ["countable", "probs"], "cpu"), len(m.classes), 64)
    return HostFieldModel(det, cls, m.classifier.crop_size, m.classifier.crop_margin)


def _fused(bundle: Bundle, compiled: bool) -> Any:
    from edge.analysis.torch_fused import TorchFusedFieldModel, load_torch_models

    detector, classifier = load_torch_models(bundle)
    m = bundle.manifest
    return TorchFusedFieldModel(detector, classifier, m.detector, m.classifier, device="cpu", precision="fp32",
                                compile=compiled)  # fmt: skip


def _run(model: Any, fields: list[tuple[np.ndarray, np.ndarray]], overlapped: bool) -> dict[str, float]:
    started = time.perf_counter()
    for image, boxes in fields[:2]:
        model(image, boxes)  # warm-up (and, compiled, the compilation)
    warm_s = time.perf_counter() - started
    latencies = []
    started = time.perf_counter()
    if overlapped:
        for _ in Overlapped(model, depth=1).map(fields):
            pass
    else:
        for image, boxes in fields:
            t0 = time.perf_counter()
            model(image, boxes)
            latencies.append((time.perf_counter() - t0) * 1e3)
    seconds = time.perf_counter() - started
    result = {"fields_per_s": round(len(fields) / seconds, 3), "ms_per_field": round(seconds / len(fields) * 1e3, 1),
              "warm_up_s": round(warm_s, 1)}  # fmt: skip
    if latencies:
        for q in (50, 95, 99):
            result[f"p{q}_ms"] = round(float(np.percentile(latencies, q)), 1)
    return result


def _variants(bundle: Bundle, args: argparse.Namespace, cores: int) -> list[tuple[str, Any, bool]]:
    """Every variant of one bundle: (name, builder, overlapped)."""
    variants: list[tuple[str, Any, bool]] = []
    if not args.no_baseline:
        variants.append((BASELINE, lambda: _eager(bundle), False))
    for int8 in (False, True) if bundle.manifest.int8 is not None else (False,):
        name = "onnxruntime-int8" if int8 else "onnxruntime-fp32"
        whole = OnnxRuntimeEngine(int8=int8)  # every core for each stage in turn
        split = OnnxRuntimeEngine(int8=int8, threads=max(1, cores // 2))  # each stage its share
        blocks = OnnxRuntimeEngine(int8=int8, session_config={"session.dynamic_block_base": "4"})
        variants += [
            (f"{name} sequential, threads 0", lambda e=whole: onnxruntime_model(bundle, AnalysisConfig(), e), False),
            (f"{name} sequential, threads 0, dynamic_block_base 4",
             lambda e=blocks: onnxruntime_model(bundle, AnalysisConfig(), e), False),
            (f"{name} overlapped, threads 0", lambda e=whole: onnxruntime_model(bundle, AnalysisConfig(), e), True),
            (f"{name} overlapped, threads {split.threads}",
             lambda e=split: onnxruntime_model(bundle, AnalysisConfig(), e), True),
        ]  # fmt: skip
    if args.torch:
        variants += [
            ("torch-fused-fp32 (CPU)", lambda: _fused(bundle, False), False),
            ("torch-fused-fp32 compiled (CPU)", lambda: _fused(bundle, True), False),
        ]
    return variants


BASELINE = "torch-eager-fp32 (baseline)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle", type=Path, nargs="+", default=[DEFAULT_BUNDLE], help="one or more bundles, measured side by side"
    )
    parser.add_argument("--cells", type=int, default=30)
    parser.add_argument("--fields", type=int, default=12, help="composed fields per variant")
    parser.add_argument("--frame", default="1920x1440")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the PyTorch eager baseline")
    parser.add_argument(
        "--torch", action="store_true", help="add the fused PyTorch FP32 path on the CPU, eager and compiled (minutes)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bundles = [load_bundle(path) for path in args.bundle]
    width, height = (int(v) for v in args.frame.split("x"))
    fields = [compose_field(args.cells, height, width, seed=i) for i in range(args.fields)]
    cores = os.cpu_count() or 1
    results: dict[str, dict[str, dict[str, float]]] = {}
    for bundle in bundles:
        label = f"{bundle.manifest.name} {bundle.manifest.version} ({bundle.short_hash})"
        results[label] = {}
        for name, build, overlapped in _variants(bundle, args, cores):
            log.info("%s: %s", label, name)
            results[label][name] = _run(build(), fields, overlapped)
            log.info("%s: %s: %s", label, name, results[label][name])
    import onnxruntime

    def relative(runs: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        base = runs.get(BASELINE, {}).get("fields_per_s")
        return {k: v | ({"vs_baseline": round(v["fields_per_s"] / base, 2)} if base else {}) for k, v in runs.items()}

    record = {
        "machine": {"cpu": cpu_name(), "cores": cores, "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "software": __version__},
        "bundles": list(results), "cells_per_field": args.cells, "fields": args.fields, "frame": args.frame,
        "time": time.strftime("%Y-%m-%d %H:%M %Z"),
        "results": {label: relative(runs) for label, runs in results.items()},
    }  # fmt: skip
    lines = [
        f"# Throughput, {args.cells} cells per field, {args.frame} fields, {args.fields} fields per variant",
        "",
        f"{record['machine']['cpu']}, {cores} cores; onnxruntime {onnxruntime.__version__}; marrow-edge {__version__}"
        f"; {record['time']}",
        "",
        "| bundle | variant | fields/s | ms/field | p50 ms | p95 ms | p99 ms | vs eager | warm-up s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in record["results"].items():
        for name, r in runs.items():
            lines.append(
                f"| {label} | {name} | {r['fields_per_s']} | {r['ms_per_field']} | {r.get('p50_ms', '')} "
                f"| {r.get('p95_ms', '')} | {r.get('p99_ms', '')} | {r.get('vs_baseline', '')} | {r['warm_up_s']} |"
            )
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d-%H%M")  # two runs a day on different machines keep both
        stem = args.out / f"throughput-{platform.node() or 'host'}-{stamp}"
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
