"""The count path per field, every available backend side by side with the PyTorch FP32 eager
baseline, for both profiles, at 1, 10, 30 and 60 real cells per field.

    python benchmarks/pipeline.py [--profiles lite paper] [--cells 1 10 30 60] [--repeats 20]
                                  [--frame 1920x1440] [--out benchmarks/results]

Per backend and cell count: end-to-end and per-stage latency (p50/p95/p99), fields/s and
cells/s, peak host memory (VmHWM, reset per run) and peak device memory (PyTorch's
allocator). The floor is the FLOP count of a field over the device's peak, measured in
the same run with a large matrix product (FP16 on a GPU, FP32 on a CPU).

Fields are composed from real cells (``benchmarks/fields.py``); every backend classifies the
same N boxes per field while its detector runs on the whole field, so the cell count is the
same for trained and untrained weights. lite uses the bundled lite-pbc weights; paper has
random weights (its architecture is what costs; no paper-profile weights exist here).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fields import compose_field  # noqa: E402
from edge import __version__  # noqa: E402
from edge.analysis.classify import Classifier  # noqa: E402
from edge.analysis.detect import Detector, fitted_size  # noqa: E402
from edge.analysis.field import FieldModel, HostFieldModel  # noqa: E402
from edge.config import DEFAULT_BUNDLE, AppConfig  # noqa: E402
from edge.engines.bundle import Bundle, load_bundle  # noqa: E402
from edge.service.health import process_memory_mb  # noqa: E402

log = logging.getLogger("benchmark")
BASELINE = "torch-eager-fp32 (baseline)"


# -- machine ----------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU's model name and its widest vector units: a VM often says only "AMD EPYC", and
    AVX-512/VNNI against AVX2 changes the figures (INT8 above all) more than the model does."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    units = [label for flag, label in _VECTOR_UNITS if flag in flags]
    return f"{name or platform.machine()} ({', '.join(units)})" if units else name or platform.machine()


_VECTOR_UNITS = [("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx512_vnni", "VNNI"), ("avx_vnni", "AVX-VNNI"),
                 ("avx512_bf16", "BF16"), ("amx_tile", "AMX")]  # fmt: skip


def git_commit() -> str:
    if os.environ.get("MARROW_COMMIT"):  # a copied tree without its .git (the GPU machines) says which
        return os.environ["MARROW_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def host_peak_mb(reset: bool = False) -> float:
    """Peak resident memory of this process (VmHWM); ``reset`` starts a new peak where Linux allows."""
    if reset:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
    peak = process_memory_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {f"p{q}": round(float(np.percentile(array, q)), 3) for q in (50, 95, 99)} if len(array) else {}


def measure_peak(torch: Any, device: str) -> dict[str, Any]:
    """Peak matrix throughput of the device: the denominator of the FLOP floor."""
    if device == "cuda":
        n, dtype, label = 8192, torch.float16, "fp16 matmul 8192^3"
    else:
        n, dtype, label = 2048, torch.float32, "fp32 matmul 2048^3"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(torch, device)
    reps = 20 if device == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(torch, device)
    seconds = (time.perf_counter() - start) / reps
    del a, b
    if device == "cuda":
        torch.cuda.empty_cache()  # the next figures are the backends' memory, not this product's
    return {"what": label, "tflops": round(2 * n**3 / seconds / 1e12, 2)}


def sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def count_flops(torch: Any, module: Any, example: Any, call: Callable[[Any, Any], Any] | None = None) -> int:
    """FLOPs of one call, counted on the meta device (no weights touched, nothing run)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(module).to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        (call or (lambda m, x: m(x)))(meta, example.to("meta"))
    return int(counter.get_total_flops())


# -- backends -----------------------------------------------------------------------------
class Suite:
    """Builds each backend of one profile on demand (one at a time holds device memory)."""

    def __init__(self, profile: str, bundle: Bundle | None, work: Path, device: str) -> None:
        import torch

        from build_engines.classes import PAPER_CLASSES
        from build_engines.export import ExportRequest, build_models

        self.torch = torch
        self.profile = profile
        self.device = device
        self.bundle = bundle
        self.work = work
        if bundle is not None:
            from edge.analysis.torch_fused import load_torch_models

            self.classes = len(bundle.manifest.classes)
            self._graphs = lambda: load_torch_models(bundle)
            self.detector_spec = bundle.manifest.detector
            self.classifier_spec = bundle.manifest.classifier
        else:
            request = ExportRequest(out_dir=work / f"{profile}-untrained", profile=profile, classes=list(PAPER_CLASSES))
            self.classes = len(PAPER_CLASSES)
            self._graphs = lambda: build_models(request)[:2]
            self._request = request
            self.detector_spec = self.classifier_spec = None  # from the exported bundle, if one is made

    def graphs(self) -> tuple[Any, Any]:
        return self._graphs()

    def specs(self) -> tuple[Any, Any]:
        if self.detector_spec is None:
            from edge.engines.bundle import ClassifierSpec, DetectorSpec, TensorSpec
            from edge.engines.graphs import PROFILES

            p = PROFILES[self.profile]
            io = [TensorSpec(name="images", dtype="uint8", shape=[1, "h", "w", 3])]
            out = [
                TensorSpec(name="x", dtype="float32", shape=[1]),
                TensorSpec(name="probs", dtype="float32", shape=["batch", self.classes]),
            ]
            self.detector_spec = DetectorSpec(
                file="detector.onnx",
                opset=17,
                inputs=io,
                outputs=out,
                architecture=p.detector,
                labels=["wbc"],
                cell_labels=["wbc"],
                score_threshold=0.5,
                nms_iou=0.5,
                max_detections=100,
                input_min_size=p.detector_min_size,
                input_max_size=p.detector_max_size,
            )
            self.classifier_spec = ClassifierSpec(
                file="classifier.onnx",
                opset=17,
                inputs=io,
                outputs=out,
                architecture="fused",
                crop_size=p.crop_size,
                crop_margin=0.15,
                countable_threshold=0.5,
                stage1=p.stage1,
                stage2=list(p.stage2),
            )
        return self.detector_spec, self.classifier_spec

    def onnx_bundle(self) -> Bundle:
        if self.bundle is not None:
            return self.bundle
        from build_engines.export import export_bundle

        target = self._request.out_dir
        if not (target / "bundle.json").is_file():
            log.info("exporting the untrained %s bundle to %s (once)", self.profile, target)
            export_bundle(self._request)
        return load_bundle(target)

    def names(self) -> list[str]:
        torch = self.torch
        names = []
        import onnxruntime as ort

        providers = ort.get_available_providers()
        names.append("onnxruntime-cpu")
        if self.bundle is not None and self.bundle.manifest.int8 is not None:
            names.append("onnxruntime-int8")  # the bundle's INT8 graphs (build_engines.int8)
        if "CUDAExecutionProvider" in providers:
            names.append("onnxruntime-cuda")
        if "TensorrtExecutionProvider" in providers:
            names.append("onnxruntime-tensorrt")
        from edge.analysis.field_models import available_backends

        if any(b.name == "tensorrt" and b.available for b in available_backends()):
            names.append("tensorrt-fp16")
        if self.device == "cuda" and torch.cuda.is_available():
            names += [
                "torch-fused-fp16-graphs",
                "torch-fused-fp16-graphs-compiled",  # torch.compile (inductor, max-autotune) under our graphs
                "torch-fused-fp16-graphs-serial",
                "torch-fused-fp16",
                "torch-fused-fp32",
            ]
        else:
            names.append("torch-fused-fp32")
        names.append(BASELINE)
        return names

    def build(self, name: str) -> FieldModel:
        from edge.analysis.field_models import ENGINES
        from edge.analysis.torch_fused import TorchFusedFieldModel
        from edge.engines.torch_reference import TorchBackend

        if name.startswith("onnxruntime"):
            bundle = self.onnx_bundle()
            engine = {"type": "onnxruntime", "providers": [name.split("-", 1)[1]]}
            if name == "onnxruntime-int8":
                engine = {"type": "onnxruntime", "providers": ["cpu"], "int8": True}
            config = AppConfig(bundle=bundle.root, engine=engine)
            return ENGINES[config.engine.type](bundle, config.analysis, config.engine)
        if name == "tensorrt-fp16":
            from edge.capture.replay import verification_fields

            bundle = self.onnx_bundle()
            engine = {"type": "tensorrt", "engine_cache": self.work / "engines", "on_engine_mismatch": "rebuild"}
            config = AppConfig(bundle=bundle.root, engine=engine)
            fields = verification_fields(config.engine.verify_fields)
            return ENGINES[config.engine.type](bundle, config.analysis, config.engine, fields)
        detector_spec, classifier_spec = self.specs()
        detector, classifier = self.graphs()
        if name == BASELINE:
            det = Detector(TorchBackend(detector, ["boxes", "scores"], self.device), detector_spec)
            cls = Classifier(TorchBackend(classifier, ["countable", "probs"], self.device), self.classes, 64)
            return HostFieldModel(det, cls, classifier_spec.crop_size, classifier_spec.crop_margin)
        device = "cuda" if "fp16" in name or self.device == "cuda" else "cpu"
        return TorchFusedFieldModel(
            detector,
            classifier,
            detector_spec,
            classifier_spec,
            device=device,
            precision="fp16" if "fp16" in name else "fp32",
            cuda_graphs="graphs" in name,
            parallel_members=not name.endswith("serial"),
            max_batch=64,
            compile="compiled" in name,
        )


def run_backend(
    model: FieldModel, fields: dict[int, list[tuple[np.ndarray, np.ndarray]]], repeats: int, torch: Any
) -> dict[int, dict[str, Any]]:
    results = {}
    # PyTorch's allocator only sees PyTorch's memory: other backends' device memory is not reported.
    cuda = torch.cuda.is_available() and model.providers[0].startswith("torch:cuda")
    for n, items in fields.items():
        for image, boxes in items[:2]:  # warm-up: allocations, cuDNN autotuning, graph capture
            model(image, boxes)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        host_peak_mb(reset=True)
        wall: list[float] = []
        stages: dict[str, list[float]] = {}
        started = time.perf_counter()
        for _ in range(repeats):
            for image, boxes in items:
                t0 = time.perf_counter()
                out = model(image, boxes)
                wall.append((time.perf_counter() - t0) * 1e3)
                for stage, ms in out.timings_ms.items():
                    stages.setdefault(stage, []).append(ms)
        total = time.perf_counter() - started
        results[n] = {
            "fields": len(wall),
            "cells_per_field": n,
            "field_ms": percentiles(wall),
            "stage_ms": {k: percentiles(v) for k, v in stages.items()},
            "fields_per_s": round(len(wall) / total, 2),
            "cells_per_s": round(len(wall) * n / total, 1),
            "host_peak_mb": round(host_peak_mb(), 1),
            "device_peak_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1) if cuda else None,
        }
        log.info("  %2d cells: field p50 %.2f ms, %s", n, results[n]["field_ms"]["p50"], results[n]["stage_ms"])
    return results


def field_flops(suite: Suite, fitted: tuple[int, int]) -> dict[str, int]:
    """FLOPs of the detector at the fitted size and of the classifier per crop."""
    torch = suite.torch
    detector, classifier = suite.graphs()
    _, classifier_spec = suite.specs()
    crop = classifier_spec.crop_size

    def detect(m: Any, x: Any) -> Any:
        det = m.detector
        return det.head(list(det.backbone(x).values()))

    det_flops = count_flops(torch, detector, torch.zeros(1, 3, *fitted), detect)
    cls_flops = count_flops(torch, classifier, torch.zeros(1, 3, crop, crop), lambda m, x: m.classify(x))
    return {"detector": det_flops, "classifier_per_cell": cls_flops}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Count path per field: {report['machine']['device']}",
        "",
        f"{report['date']}; commit {report['commit']}; frame {report['frame']}; {report['repeats']} passes over "
        f"{report['variants']} composed fields per cell count; peak {report['peak']['what']} "
        f"{report['peak']['tflops']} TFLOP/s; versions {json.dumps(report['versions'])}",
        "",
    ]
    for profile, data in report["profiles"].items():
        lines += [
            f"## {profile} ({data['bundle']})",
            "",
            f"FLOPs: detector {data['flops']['detector'] / 1e9:.1f} G at {data['fitted']}, classifier "
            f"{data['flops']['classifier_per_cell'] / 1e9:.2f} G per cell.",
            "",
            "| backend | cells | field p50 | p95 | p99 | detect p50 | crop p50 | classify p50 | classify floor | "
            "fields/s | cells/s | x baseline | host MB | device MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for backend, runs in data["backends"].items():
            if "error" in runs:
                lines.append(f"| {backend} | - | error: {runs['error']} |" + " |" * 11)
                continue
            for n, r in runs.items():
                base = data["backends"].get(BASELINE, {}).get(n)
                speedup = (
                    f"{base['field_ms']['p50'] / r['field_ms']['p50']:.1f}" if base and "field_ms" in base else "-"
                )
                floor = r.get("classify_floor_ms")
                classify = r["stage_ms"]["classify"]["p50"]
                floor_text = f"{floor:.3f} ms ({100 * floor / classify:.0f}%)" if floor else "-"
                device_mb = r["device_peak_mb"] if r["device_peak_mb"] is not None else "-"
                lines.append(
                    f"| {backend} | {n} | {r['field_ms']['p50']:.2f} | {r['field_ms']['p95']:.2f} | "
                    f"{r['field_ms']['p99']:.2f} | {r['stage_ms']['detect']['p50']:.2f} | "
                    f"{r['stage_ms']['crop']['p50']:.2f} | {classify:.2f} | {floor_text} | {r['fields_per_s']} | "
                    f"{r['cells_per_s']} | {speedup} | {r['host_peak_mb']} | {device_mb} |"
                )
        lines.append("")
        engines = {b: next(iter(r.values())).get("providers") for b, r in data["backends"].items() if "error" not in r}
        lines += ["What ran (backend: engine):", ""] + [f"- {b}: {', '.join(p or [])}" for b, p in engines.items()]
        lines.append("")
        if data.get("verification"):
            lines += ["Verification against ONNX Runtime FP32 (bundled sample fields):", ""]
            for name, v in data["verification"].items():
                lines.append(f"- {name}: {json.dumps(v)}")
            lines.append("")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def released(torch: Any) -> Iterator[None]:
    try:
        yield
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["lite", "paper"], choices=["lite", "paper"])
    parser.add_argument("--cells", nargs="+", type=int, default=[1, 10, 30, 60])
    parser.add_argument("--paper-cells", nargs="+", type=int, help="cell counts for paper (default: --cells)")
    parser.add_argument("--repeats", type=int, default=20, help="passes over the composed fields")
    parser.add_argument("--variants", type=int, default=3, help="composed fields per cell count")
    parser.add_argument("--frame", default="1920x1440", help="WIDTHxHEIGHT of the composed fields")
    parser.add_argument("--backends", nargs="*", help="only these (default: every available one)")
    parser.add_argument("--skip", nargs="*", default=[], help="leave these out, e.g. onnxruntime-cpu:paper")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--work", type=Path, default=Path("/tmp/marrow-bench"), help="exported bundles, engines")
    parser.add_argument("--tag", default=platform.node() or "host", help="machine name in the file names")
    parser.add_argument("--out", type=Path, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import onnxruntime
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    width, height = (int(v) for v in args.frame.lower().split("x"))
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    machine = {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "arch": platform.machine()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        machine |= {
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gb": round(props.total_memory / 2**30, 1),
        }
    machine["device"] = machine.get("gpu", f"{machine['cpu']} ({machine['logical_cores']} cores)")
    import torchvision

    versions = {
        "marrow-edge": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    if device == "cuda":
        versions["cuda"] = torch.version.cuda
        versions["cudnn"] = str(torch.backends.cudnn.version())
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine,
        "versions": versions,
        "frame": f"{width}x{height}",
        "repeats": args.repeats,
        "variants": args.variants,
        "peak": measure_peak(torch, device),
        "profiles": {},
    }
    log.info("peak %s", report["peak"])
    for profile in args.profiles:
        cells = args.paper_cells if profile == "paper" and args.paper_cells else args.cells
        bundle = load_bundle(DEFAULT_BUNDLE) if profile == "lite" else None
        suite = Suite(profile, bundle, args.work, device)
        detector_spec, _ = suite.specs()
        fitted = fitted_size(height, width, detector_spec.input_min_size, detector_spec.input_max_size)
        flops = field_flops(suite, fitted)
        fields = {n: [compose_field(n, height, width, seed=1000 * n + v) for v in range(args.variants)] for n in cells}
        data: dict[str, Any] = {
            "bundle": f"{bundle.manifest.name} {bundle.short_hash}" if bundle else f"{profile}, random weights",
            "fitted": f"{fitted[1]}x{fitted[0]}",
            "flops": flops,
            "backends": {},
            "verification": {},
        }
        report["profiles"][profile] = data
        peak = report["peak"]["tflops"] * 1e12
        for name in suite.names():
            if (args.backends and name not in args.backends) or f"{name}:{profile}" in args.skip:
                continue
            log.info("%s / %s", profile, name)
            with released(torch):
                try:
                    model = suite.build(name)
                    runs = run_backend(model, fields, args.repeats, torch)
                    if bundle is not None and name != "onnxruntime-cpu":
                        data["verification"][name] = verify_against_ort(model, bundle)
                    providers = model.providers
                    del model
                except Exception as exc:  # one backend failing must not lose the others' figures
                    log.exception("%s failed", name)
                    data["backends"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                    continue
            for n, r in runs.items():
                if not name.startswith("onnxruntime") or device == "cpu":
                    r["classify_floor_ms"] = round(flops["classifier_per_cell"] * n / peak * 1e3, 4)
                r["providers"] = providers
            data["backends"][name] = runs
        if args.out:
            write(report, args)  # after each profile: a later failure keeps what was measured
    text = markdown(report)
    sys.stdout.write(text)
    if args.out:
        write(report, args)
    return report


def verify_against_ort(model: FieldModel, bundle: Bundle) -> dict[str, Any]:
    from edge.analysis.field_models import reference_model
    from edge.analysis.verify import compare_models
    from edge.capture.replay import verification_fields
    from edge.config import DEFAULT_SAMPLES

    reference = reference_model(bundle, AppConfig(bundle=bundle.root).analysis)
    report = compare_models(model, reference, verification_fields(DEFAULT_SAMPLES), bundle.manifest.verification)
    keys = ("matched_boxes", "reference_boxes", "class_agreement", "max_probability_diff", "max_countable_diff")
    return {k: report.as_dict()[k] for k in (*keys, "passed")}


def write(report: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"pipeline-{args.tag}-{report['date'][:10]}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
