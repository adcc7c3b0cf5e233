"""Installed bundles: an install keeps the version it replaces, a rollback swaps back (and again)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.engines.bundle import load_bundle, write_manifest
from edge.engines.library import BundleLibrary
from edge.errors import BundleError

ROOT = Path(__file__).resolve().parents[3]
STARTER = ROOT / "models" / "lite-pbc"


def _version(tmp_path: Path, version: str) -> Path:
    folder = tmp_path / f"src-{version}"
    shutil.copytree(STARTER, folder)
    bundle = load_bundle(folder)
    write_manifest(folder, bundle.manifest.model_copy(update={"version": version}))
    return folder


def test_rollback_swaps_with_the_replaced_version(tmp_path):
    if not (STARTER / "bundle.json").is_file():
        pytest.skip("models/lite-pbc is not in this checkout")
    library = BundleLibrary(tmp_path / "bundles")
    with pytest.raises(BundleError, match="no earlier version"):
        library.rollback("lite")
    library.install(_version(tmp_path, "1.0.0"), "lite")
    library.install(_version(tmp_path, "1.0.0+site.1"), "lite")
    assert library.rollback("lite").manifest.version == "1.0.0"
    assert library.rollback("lite").manifest.version == "1.0.0+site.1"  # and forward again
    assert [row.name for row in library.list()] == ["lite"]  # nothing half-swapped is left to list


def test_a_damaged_kept_version_is_not_rolled_back_to(tmp_path):
    if not (STARTER / "bundle.json").is_file():
        pytest.skip("models/lite-pbc is not in this checkout")
    library = BundleLibrary(tmp_path / "bundles")
    library.install(_version(tmp_path, "1.0.0"), "lite")
    library.install(_version(tmp_path, "2.0.0"), "lite")
    kept = tmp_path / "bundles" / ".previous" / "lite" / "classifier.onnx"
    kept.write_bytes(kept.read_bytes()[:-10])
    with pytest.raises(BundleError):
        library.rollback("lite")
    assert load_bundle(tmp_path / "bundles" / "lite").manifest.version == "2.0.0"
