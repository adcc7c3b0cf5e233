"""Re-export a bundle's graphs so TensorRT's parser takes them (issue 20): each uint8 input is
cast to float32 before its Gather/Transpose. The rewritten graphs are run beside the old ones in
ONNX Runtime on the sample fields and random crops and must agree bit for bit; then the files
and the manifest's hashes are replaced (engines cached for the old graphs no longer match).

    python -m build_engines.recast --bundle models/marrow-bm
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge.analysis.detect import fit_field
from edge.capture.replay import verification_fields
from edge.config import DEFAULT_SAMPLES
from edge.engines.bundle import BundleManifest, file_entry, load_bundle, write_manifest
from edge.engines.graph_check import recast_uint8_inputs, uint8_intermediates
from edge.engines.onnxruntime import OnnxRuntimeBackend

log = logging.getLogger(__name__)


def _inputs(manifest: BundleManifest, model: str, fields: Path) -> list[np.ndarray]:
    if model == "detector":
        det = manifest.detector
        return [fit_field(image, det.input_min_size, det.input_max_size)[0][None]
                for image in verification_fields(fields)[:4]]  # fmt: skip
    size = manifest.classifier.crop_size
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8) for n in (1, 7, 32)]


def recast_bundle(bundle_dir: Path, fields: Path = DEFAULT_SAMPLES) -> list[str]:
    """Rewrite the bundle's graphs that need it; returns the files rewritten."""
    import onnx

    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    changed = []
    for model, spec in (("detector", manifest.detector), ("classifier", manifest.classifier)):
        path = bundle.path(spec.file)
        original = onnx.load(str(path))
        if not uint8_intermediates(original):
            continue
        fixed = recast_uint8_inputs(original)
        with tempfile.TemporaryDirectory() as tmp:
            candidate = Path(tmp) / path.name
            onnx.save(fixed, str(candidate))
            old, new = OnnxRuntimeBackend(path), OnnxRuntimeBackend(candidate)
            for x in _inputs(manifest, model, fields):
                a, b = old.run({"images": x}), new.run({"images": x})
                for name in a:
                    if not np.array_equal(a[name], b[name]):
                        raise SystemExit(f"{path.name}: {name} differs after the recast; nothing replaced")
            candidate.replace(path)
        changed.append(spec.file)
        log.info("%s: uint8 input now cast first; outputs identical in ONNX Runtime", spec.file)
    if changed:
        files = dict(manifest.files) | {name: file_entry(bundle.path(name)) for name in changed}
        write_manifest(bundle_dir, manifest.model_copy(update={"files": files}))
        load_bundle(bundle_dir)  # verifies the new hashes
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--fields", type=Path, default=DEFAULT_SAMPLES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    changed = recast_bundle(args.bundle, args.fields)
    sys.stdout.write(f"{args.bundle}: {', '.join(changed) or 'nothing to change'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
