"""The offline release's lock and targets (scripts/release.py); the release itself is built and
installed with no network in tests/integration/test_install.py."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from tests.cli_helpers import ROOT

_spec = importlib.util.spec_from_file_location("release", ROOT / "scripts" / "release.py")
release = importlib.util.module_from_spec(_spec)
sys.modules["release"] = release  # its dataclasses look their module up
_spec.loader.exec_module(release)


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_runtime_dependency_is_locked_within_its_declared_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for requirement in release.runtime_requirements():
        assert _name(requirement) in pins, f"{requirement} has no pin in constraints.txt (release.py lock)"
    assert "torch" not in pins  # training only: never in what a box installs
    major = int(pins["opencv-python-headless"].split(".")[0])
    assert major == 4  # pyproject holds OpenCV to 4.x


def test_targets_name_the_folder_install_sh_looks_for():
    target = release.Target.parse("aarch64-3.10")
    assert target.folder == "aarch64-cp310"  # `uname -m`-cp`python3 X.Y`
    args = target.pip_platform_args()
    assert "manylinux_2_35_aarch64" in args and "manylinux2014_aarch64" in args
    assert "manylinux_2_36_aarch64" not in args  # newer than JetPack 6's glibc
    assert args[args.index("--python-version") + 1] == "3.10" and "--only-binary=:all:" in args
    for bad in ("armv7l-3.10", "x86_64", "x86_64-3"):
        with pytest.raises(ValueError, match="target"):
            release.Target.parse(bad)
