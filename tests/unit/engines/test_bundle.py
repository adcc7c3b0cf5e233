import json
import shutil

import pytest

from edge.engines.bundle import MANIFEST_NAME, load_bundle
from edge.errors import BundleError


@pytest.fixture
def small_bundle(tmp_path, bundle_dir):
    """A copy of the real manifest over two tiny stand-in files with their real hashes."""
    from edge.engines.bundle import file_entry

    root = tmp_path / "b"
    root.mkdir()
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    for name in manifest["files"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"model bytes of " + name.encode())
        manifest["files"][name] = file_entry(root / name).model_dump()
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def test_bundled_model_loads_and_verifies(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert len(bundle.short_hash) == 12
    assert len(bundle.class_names) >= 2
    assert {c.role for c in bundle.manifest.classes} <= {"wbc", "key", "other", "not_countable"}
    assert all(p.max_abs_diff <= p.tolerance for p in bundle.manifest.parity)


def test_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        load_bundle(tmp_path)


def test_missing_file(small_bundle):
    (small_bundle / "detector.onnx").unlink()
    with pytest.raises(BundleError, match=r"file detector\.onnx is missing"):
        load_bundle(small_bundle)


def test_tampered_torch_weights_are_refused(small_bundle):
    with (small_bundle / "torch" / "stage2_0.pt").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"torch/stage2_0\.pt does not match its manifest"):
        load_bundle(small_bundle)


def test_tampered_file(small_bundle):
    with (small_bundle / "classifier.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"classifier\.onnx does not match its manifest"):
        load_bundle(small_bundle)


def test_tampered_manifest_is_refused(small_bundle):
    manifest = json.loads((small_bundle / MANIFEST_NAME).read_text())
    manifest["classes"][0]["role"] = "boss"
    (small_bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"classes\.0\.role"):
        load_bundle(small_bundle)
    (small_bundle / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(small_bundle)


def test_manifest_digest_changes_with_content(small_bundle, tmp_path):
    first = load_bundle(small_bundle).digest
    other = tmp_path / "other"
    shutil.copytree(small_bundle, other)
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    manifest["version"] = "9.9.9"
    (other / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert load_bundle(other).digest != first
