"""An installed box (issue 17): the install script's tree with the code as a wheel in its own
virtual environment, run from outside the checkout: the bundle and the sample fields are found
through the installed config and the data directory, never relative to site-packages.

Two ways in: the checkout's install.sh (the wheel, dependencies from this test environment), and
the offline release (scripts/release.py: a tarball with every wheel, installed by its own
install.sh with pip --no-index, no pip config and a dead proxy, so nothing can come from a network)."""

from __future__ import annotations

import os
import platform
import site
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.cli_helpers import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(staged root, venv with the marrow-edge wheel; its dependencies from this test environment)."""
    tmp = tmp_path_factory.mktemp("box")
    stage = tmp / "root"
    env = {**os.environ, "DESTDIR": str(stage), "SKIP_PIP": "1", "DEVICE_ID": "scope-i"}
    subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], check=True, env=env, capture_output=True)
    wheels = tmp / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (wheel,) = wheels.glob("marrow_edge-*.whl")
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    # numpy, onnxruntime, ... from this environment; a plain path line, so the checkout's editable
    # install hook in there is not loaded: `edge` comes from the wheel
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(own) / "test_deps.pth").write_text(site.getsitepackages()[0] + "\n")
    return stage, venv


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, Path]:
    """(staged root, its venv): the offline release for this machine, installed with no network."""
    if not _pypi_reachable():
        pytest.skip("building a release downloads its wheels from PyPI, which this machine cannot reach")
    tmp = tmp_path_factory.mktemp("release")
    target = f"{platform.machine()}-{sys.version_info[0]}.{sys.version_info[1]}"
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "release.py"), "build", "--target", target, "--out", str(tmp)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (tarball,) = tmp.glob("marrow-edge-*.tar.gz")
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (release,) = (tmp / "unpacked").iterdir()
    stage = tmp / "root"
    offline = {
        **os.environ, "DESTDIR": str(stage), "SKIP_APT": "1", "DEVICE_ID": "scope-o",
        "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
        "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    }  # fmt: skip
    done = subprocess.run(["bash", str(release / "systemd" / "install.sh")], env=offline, cwd=tmp,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return stage, stage / "opt/marrow-edge/.venv"


@pytest.fixture(params=["installed", "released"])
def box(request) -> tuple[Path, Path]:
    return request.getfixturevalue(request.param)


def _box(installed: tuple[Path, Path], *args: str, data: bool = True) -> subprocess.CompletedProcess:
    stage, venv = installed
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARROW_EDGE")}
    if data:  # the staged /var/lib/marrow-edge stands for the real one
        env["MARROW_EDGE_DATA"] = str(stage / "var/lib/marrow-edge")
        env["MARROW_EDGE__BUNDLES_DIR"] = str(stage / "var/lib/marrow-edge/bundles")
    return subprocess.run(
        [str(venv / "bin" / "marrow-edge"), *args, "--config", str(stage / "etc/marrow-edge/config.yaml")]
        if args[0] == "bundle" else [str(venv / "bin" / "marrow-edge"), *args],
        cwd=stage.parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_installed_box_counts_from_outside_the_checkout(box, broker):
    stage, venv = box
    where = subprocess.run([venv / "bin" / "python", "-c", "import edge; print(edge.__file__)"], cwd=stage,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(venv) in where and str(ROOT) not in where
    config = stage / "etc/marrow-edge/config.yaml"
    assert "\ndevice_id: scope-" in config.read_text() and "\nbundle: marrow-bm" in config.read_text()
    listed = _box(box, "bundle", "list")
    assert listed.returncode == 0 and "marrow-bm" in listed.stdout and "(config)" in listed.stdout, listed
    samples = stage / "var/lib/marrow-edge/samples/marrow"
    run = _box(box, "run", "--config", str(config), "--source", str(samples), "--broker", broker.url,
               "--max-fields", "2", "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "bundle marrow-bm" in run.stdout and "2 fields counted" in run.stdout


def test_an_installed_box_without_its_bundle_says_where_it_looked(installed, broker):
    stage, _ = installed
    config = stage / "etc/marrow-edge/config.yaml"
    samples = stage / "var/lib/marrow-edge/samples/marrow"
    run = _box(installed, "run", "--config", str(config), "--source", str(samples), "--broker", broker.url, data=False)
    assert run.returncode in (2, 3), run.stderr
    assert "/var/lib/marrow-edge" in run.stderr and "site-packages" not in run.stderr
