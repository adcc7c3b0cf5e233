"""User errors give one clear line and the documented exit code, never a traceback."""

import shutil

from edge.mqtt.broker import free_port
from tests.cli_helpers import error_lines, marrow_edge


def test_help_reads_well():
    proc = marrow_edge("--help")
    assert proc.returncode == 0
    assert "run" in proc.stdout and "export" in proc.stdout
    run_help = marrow_edge("run", "--help")
    for flag in ("--source", "--config", "--broker", "--device-id", "--max-fields"):
        assert flag in run_help.stdout


def _assert_user_error(proc, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and text in lines[0], proc.stderr


def test_bad_config(tmp_path, samples):
    config = tmp_path / "c.yaml"
    config.write_text("mqtt:\n  qos: 7\n")
    proc = marrow_edge("run", "--source", str(samples), "--config", str(config))
    _assert_user_error(proc, 2, "invalid configuration")
    assert "mqtt.qos" in proc.stderr


def test_missing_source(tmp_path):
    _assert_user_error(marrow_edge("run", "--source", str(tmp_path / "nowhere")), 5, "no such file or folder")


def test_missing_bundle(tmp_path, samples):
    proc = marrow_edge("run", "--source", str(samples), "--bundle", str(tmp_path))
    _assert_user_error(proc, 3, "bundle.json is missing")


def test_tampered_bundle(tmp_path, samples, bundle_dir):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / "detector.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "detector.onnx").write_bytes(bytes(data))
    proc = marrow_edge("run", "--source", str(samples), "--bundle", str(copy))
    _assert_user_error(proc, 3, "detector.onnx does not match its manifest")


def test_unreachable_broker(samples):
    port = free_port()  # nothing listens there
    proc = marrow_edge("run", "--source", str(samples), "--broker", f"mqtt://127.0.0.1:{port}")
    _assert_user_error(proc, 4, f"mqtt://127.0.0.1:{port} is unreachable")


def test_export_without_torch_names_the_extra():
    # torch is installed in the test environment; hide it to see the message a runtime install gives
    proc = marrow_edge("export", "--out", "/tmp/never", env={"PYTHONPATH": "tests/no_torch", "PATH": "/usr/bin:/bin"})
    _assert_user_error(proc, 1, "pip install 'marrow-edge[train]'")


def _edited_bundle(tmp_path, bundle_dir, edit):
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    edit(manifest)
    (copy / "bundle.json").write_text(json.dumps(manifest))
    return copy


def test_class_list_that_does_not_fit_the_model_is_refused_at_load(tmp_path, samples, bundle_dir):
    # issue 13.9: one class more in the manifest than the model gives
    def add_class(m):
        m["classes"].append({"name": "extra_class", "role": "wbc", "aliases": [], "description": ""})

    edited = _edited_bundle(tmp_path, bundle_dir, add_class)
    proc = marrow_edge("run", "--source", str(samples), "--bundle", str(edited))
    _assert_user_error(proc, 3, "the class list does not match the model")


def test_swapped_model_files_are_refused_at_load(tmp_path, samples, bundle_dir):
    def swap(m):
        m["detector"]["file"], m["classifier"]["file"] = m["classifier"]["file"], m["detector"]["file"]

    proc = marrow_edge("run", "--source", str(samples), "--bundle", str(_edited_bundle(tmp_path, bundle_dir, swap)))
    _assert_user_error(proc, 3, "swapped or not its own")
