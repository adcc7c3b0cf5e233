from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.analysis.field import HostFieldModel
from edge.analysis.field_models import reference_model
from edge.config import DEFAULT_BUNDLE, AppConfig
from edge.engines.bundle import Bundle, load_bundle
from edge.mqtt.broker import EmbeddedBroker, find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "marrow"  # the demo's marrow slide
BUNDLE = DEFAULT_BUNDLE  # the bundle the appliance ships with
# fixtures made before a test's own state_dir (session scope) and their subprocesses: never the user's
os.environ["MARROW_EDGE_STATE"] = tempfile.mkdtemp(prefix="marrow-state-")
SHARED_DATA = Path(os.environ.get("MARROW_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own state directory (journal, outbox, slide store by default): never the user's."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("MARROW_EDGE_STATE", str(path))
    return path


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    return BUNDLE


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Bundle:
    """The shipped bundle, loaded and hash-verified once per session."""
    return load_bundle(bundle_dir)


@pytest.fixture(scope="session")
def ort_reference(bundle: Bundle) -> HostFieldModel:
    """ONNX Runtime FP32 on the CPU: what every other engine is compared with."""
    return reference_model(bundle, AppConfig().analysis)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "txl_pbc_detection").is_dir():
        pytest.skip(f"public data not found at {SHARED_DATA} (set MARROW_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mosquitto() -> str:
    binary = find_mosquitto()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; .ci/run must install it (scripts/setup.sh)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    return binary


@pytest.fixture
def broker(mosquitto: str) -> Iterator[EmbeddedBroker]:
    """A real mosquitto on a free loopback port, one per test (tests may stop it)."""
    with EmbeddedBroker(binary=mosquitto) as running:
        yield running
