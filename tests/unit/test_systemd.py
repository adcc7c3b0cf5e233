"""The systemd units, the mosquitto configuration and the install script."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import AppConfig
from edge.mqtt.broker import answers, free_port

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("marrow-edge-*.service"))
LAB_UNITS = [ROOT / "docs" / "fleet" / "marrow-edge-fleet.service"]  # a lab machine's, not a box's


def test_every_service_is_there():
    names = {u.name for u in UNITS}
    assert names == {f"marrow-edge-{n}.service" for n in ("capture", "engines", "pipeline", "display")}


def test_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify checks that ExecStart binaries exist: point them at this checkout's interpreter.
    bin_dir = Path(sys.executable).parent
    for unit in UNITS + LAB_UNITS:
        text = unit.read_text().replace("/opt/marrow-edge/.venv/bin/python", sys.executable)
        text = text.replace("/opt/marrow-edge/.venv/bin/marrow-edge", str(bin_dir / "marrow-edge"))
        (tmp_path / unit.name).write_text(text)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    problems = [
        line
        for line in proc.stderr.splitlines()
        # Units this one orders itself after but that this test machine lacks are not its problem.
        if line.strip() and "mosquitto.service" not in line and "Failed to prepare filename" not in line
    ]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_capture_unit_keeps_the_ring_reachable():
    text = (ROOT / "systemd" / "marrow-edge-capture.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "\nPrivateDevices=yes" not in text  # a private /dev/shm would hide the frame ring
    assert "DeviceAllow=char-video4linux rw" in text
    pipeline = (ROOT / "systemd" / "marrow-edge-pipeline.service").read_text()
    assert "DeviceAllow=char-nvidia-uvm rw" in pipeline and "LoadCredential=mqtt-password" in pipeline


def test_install_script_stages_a_tree_and_keeps_local_config(tmp_path):
    env = {**os.environ, "DESTDIR": str(tmp_path), "SKIP_PIP": "1"}
    env.pop("DEVICE_ID", None)
    script = str(ROOT / "systemd" / "install.sh")
    subprocess.run(["bash", script], check=True, env=env, capture_output=True)
    assert (tmp_path / "etc/systemd/system/marrow-edge-capture.service").is_file()
    assert (tmp_path / "etc/systemd/system/marrow-edge-display.service").is_file()
    # bundles and samples in the data directory, not beside the code
    assert (tmp_path / "var/lib/marrow-edge/bundles/marrow-bm/bundle.json").is_file()
    assert (tmp_path / "var/lib/marrow-edge/samples/marrow").is_dir()
    assert not (tmp_path / "opt/marrow-edge/models").exists()
    assert (tmp_path / "etc/mosquitto/conf.d/marrow-edge.conf").is_file()
    config = tmp_path / "etc/marrow-edge/config.yaml"
    first = config.read_text()
    device = next(line.split()[1] for line in first.splitlines() if line.startswith("device_id:"))
    assert device != "marrow-edge-dev" and AppConfig.model_validate({"device_id": device})  # its own, and valid
    assert "\nbundle: marrow-bm" in first and "\n  url: mqtt://127.0.0.1:1883" in first
    config.write_text("device_id: lab-box-7\n")
    subprocess.run(["bash", script], check=True, env=env, capture_output=True)
    assert config.read_text() == "device_id: lab-box-7\n"  # an upgrade keeps the lab's settings
    assert oct((tmp_path / "etc/marrow-edge/mqtt-password").stat().st_mode & 0o777) == "0o600"
    # uninstall keeps the config and the data; purge removes them
    subprocess.run(["bash", script, "--uninstall"], check=True, env=env, capture_output=True)
    assert not (tmp_path / "etc/systemd/system/marrow-edge-pipeline.service").exists()
    assert not (tmp_path / "opt/marrow-edge").exists()
    assert config.is_file() and (tmp_path / "var/lib/marrow-edge/bundles/marrow-bm").is_dir()
    subprocess.run(["bash", script, "--purge"], check=True, env=env, capture_output=True)
    assert not config.exists() and not (tmp_path / "var/lib/marrow-edge").exists()


def test_the_pipeline_takes_its_broker_from_the_config():
    text = (ROOT / "systemd" / "marrow-edge-pipeline.service").read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "--broker" not in exec_start and "--config /etc/marrow-edge/config.yaml" in exec_start


def test_mosquitto_config_listens_on_loopback_only(mosquitto, tmp_path):
    text = (ROOT / "systemd" / "mosquitto" / "marrow-edge.conf").read_text()
    assert "listener 1883 127.0.0.1" in text
    port = free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(
        text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1").replace(
            "persistence true", f"persistence true\npersistence_location {tmp_path}/"
        )
    )
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import time

        deadline = time.monotonic() + 5
        while not answers("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answers("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(5)


def _directives(unit: str, key: str) -> list[str]:
    text = (ROOT / "systemd" / unit).read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


@pytest.mark.parametrize("unit", ["marrow-edge-engines.service", "marrow-edge-pipeline.service"])
def test_gpu_units_let_cuda_open_the_gpu(unit):
    # issue 20, defect 4: current drivers register "nvidia" (not "nvidia-frontend") for major 195
    allowed = _directives(unit, "DeviceAllow")
    for spec in allowed:  # systemd's syntax: a /dev path, or char-/block- and a /proc/devices group
        device, access = spec.split()
        assert device.startswith(("/dev/", "char-", "block-")) and set(access) <= set("rwm"), spec
    groups = {spec.split()[0] for spec in allowed}
    assert {"char-nvidia", "char-nvidia-uvm", "/dev/nvmap", "char-nvhost-*"} <= groups
    assert "char-nvidiactl" not in groups  # nvidiactl is a minor of the nvidia group, not a group
    assert _directives(unit, "DevicePolicy") == ["closed"] and _directives(unit, "NoNewPrivileges") == ["yes"]
    # NoNewPrivileges stops the setuid nvidia-modprobe: the uvm node is made before the sandbox
    assert "-+/usr/bin/nvidia-modprobe -u -c=0" in _directives(unit, "ExecStartPre")


def test_engines_are_built_by_their_unit_from_the_config_and_never_by_the_pipeline():
    # issue 20, defect 6
    config = "--config /etc/marrow-edge/config.yaml"
    (condition,) = _directives("marrow-edge-engines.service", "ExecCondition")
    (start,) = _directives("marrow-edge-engines.service", "ExecStart")
    assert condition.endswith(f"-m build_engines.tensorrt {config} --check") and start.endswith(config)
    assert not _directives("marrow-edge-engines.service", "ConditionPathExists")  # no nvidiactl on an Orin
    assert _directives("marrow-edge-engines.service", "NotifyAccess") == ["main"]  # progress in its status
    from edge.config import TensorRTEngine

    assert TensorRTEngine().on_engine_mismatch == "refuse"  # the pipeline does not build unless told


def test_the_engines_check_skips_what_has_nothing_to_build(tmp_path, monkeypatch):
    from build_engines.tensorrt import BUILD, SKIP, check

    config = tmp_path / "c.yaml"
    config.write_text("engine:\n  type: onnxruntime\n")
    assert check(config) == (SKIP, "nothing to build: engine.type is onnxruntime")
    config.write_text("engine:\n  type: tensorrt\n")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    status, why = check(config)
    assert status == SKIP and "TensorRT does not import" in why
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    assert check(config)[0] == BUILD


def test_cuda_python_is_pinned_to_one_cuda_major_per_extra():
    # issue 20, defect 5: "cuda-python>=12" resolved to 13.x, which needs driver >= 580
    import re

    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {name: [r for r in reqs if r.startswith("cuda-python")] for name, reqs in extras.items()}
    pins = {name: reqs for name, reqs in pins.items() if reqs}
    assert set(pins) == {"gpu-cu12", "gpu-cu13"}
    for name, (requirement,) in pins.items():
        major = int(name[-2:])
        assert re.fullmatch(rf"cuda-python>={major}(\.\d+)?,<{major + 1}", requirement), requirement
