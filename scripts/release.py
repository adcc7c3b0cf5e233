"""Build an offline release: one tarball that installs a box with no network (issue 17).

    python scripts/release.py build [--target x86_64-3.10 ...] [--out dist]
    python scripts/release.py lock      # re-resolve constraints.txt (needs PyPI)

The tarball mirrors the checkout's layout so that `systemd/install.sh` inside it works as it does
in the checkout: the marrow-edge wheel and every runtime dependency as binary wheels per target
(`wheels/<machine>-cp<XY>/`), the bundles (`models/`), the sample fields, the units, the mosquitto
templates and `config.example.yaml`. install.sh picks the folder for the box's machine and Python and
installs with `pip --no-index`. Debian packages (mosquitto, python3-venv) are not in it: they come
from the distribution's media or mirror.

Default targets: x86_64 for Ubuntu 22.04 and 24.04 workstations (Python 3.10, 3.12) and aarch64
for JetPack 6 (Ubuntu 22.04, Python 3.10). Wheels are chosen for glibc 2.35 (Ubuntu 22.04) or older.
Versions come from `constraints.txt` (the lock), the same file scripts/setup.sh installs with.

Standard library only (Python >= 3.11 for tomllib): a build machine needs nothing but Python and pip.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

log = logging.getLogger("release")

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
DEFAULT_TARGETS = ("x86_64-3.10", "x86_64-3.12", "aarch64-3.10")
GLIBC = (2, 35)  # Ubuntu 22.04 / JetPack 6: the oldest glibc a release must run on
# What a release carries besides wheels, as in the checkout (install.sh finds them there).
PAYLOAD = ("systemd", "models", "samples/marrow", "config.example.yaml", "constraints.txt", "LICENSE", "README.md")


@dataclass(frozen=True)
class Target:
    machine: str  # x86_64 | aarch64 (uname -m)
    python: str  # "3.10"

    @classmethod
    def parse(cls, text: str) -> Target:
        machine, _, python = text.partition("-")
        if machine not in ("x86_64", "aarch64") or python.count(".") != 1:
            raise ValueError(f"target {text!r}: expected MACHINE-X.Y with MACHINE x86_64 or aarch64, e.g. aarch64-3.10")
        return cls(machine, python)

    @property
    def folder(self) -> str:
        """The folder install.sh looks for: `uname -m` and `cpXY` of the box's python3."""
        return f"{self.machine}-cp{self.python.replace('.', '')}"

    def pip_platform_args(self) -> list[str]:
        """Every manylinux tag this target's glibc accepts (pip takes only the tags it is given)."""
        tags = [f"manylinux_{GLIBC[0]}_{minor}_{self.machine}" for minor in range(GLIBC[1], 16, -1)]
        tags += [f"manylinux2014_{self.machine}"]
        args = []
        for tag in tags:
            args += ["--platform", tag]
        return [*args, "--python-version", self.python, "--implementation", "cp", "--only-binary=:all:"]


def runtime_requirements() -> list[str]:
    """The runtime dependencies, as pyproject.toml declares them (torch never among them)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _pip(*args: str) -> subprocess.CompletedProcess:
    # --isolated: a build machine's own pip config (find-links, constraints) must not leak in
    command = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args]
    log.debug("%s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"release: pip {args[0]} failed:\n{done.stderr.strip()[-3000:]}")
    return done


def resolve(target: Target) -> dict[str, str]:
    """Name -> version pip picks for the runtime on this target (binary wheels only)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), "--target", tmp,
             *target.pip_platform_args(), *runtime_requirements())  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def lock(targets: list[Target]) -> str:
    """One set of pins that every target can install: resolved on each, the lowest version wins."""
    pins: dict[str, str] = {}
    for target in targets:
        for name, found in resolve(target).items():
            pins[name] = min(pins.get(name, found), found, key=_version_key)
            log.info("%s: %s %s", target.folder, name, found)
    lines = [
        "# The runtime's versions, locked for every release target (python scripts/release.py lock).",
        "# scripts/setup.sh installs with them; the offline release downloads exactly these.",
        *(f"{name}=={pins[name]}" for name in sorted(pins)),
    ]
    return "\n".join(lines) + "\n"


def _version_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in text.replace("-", ".").split("."))


def build(targets: list[Target], out: Path) -> Path:
    name = f"marrow-edge-{version()}"
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        own = Path(tmp) / "own"
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(own), str(ROOT))
        (wheel,) = own.glob("marrow_edge-*.whl")
        for target in targets:
            folder = stage / "wheels" / target.folder
            folder.mkdir(parents=True)
            log.info("wheels for %s", target.folder)
            _pip("download", "--quiet", "--dest", str(folder), "--constraint", str(CONSTRAINTS),
                 *target.pip_platform_args(), *runtime_requirements())  # fmt: skip
            shutil.copy2(wheel, folder)
        for item in PAYLOAD:
            source, dest = ROOT / item, stage / item
            dest.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, dest)
        (stage / "RELEASE.json").write_text(json.dumps({
            "version": version(), "targets": [t.folder for t in targets], "built_on": platform.platform(),
            "glibc_at_most": ".".join(map(str, GLIBC)), "wheels": {
                t.folder: sorted(p.name for p in (stage / "wheels" / t.folder).iterdir()) for t in targets},
        }, indent=2) + "\n")  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        tarball = out / f"{name}.tar.gz"
        with tarfile.open(tarball, "w:gz") as tar:
            tar.add(stage, arcname=name)
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "lock"):
        p = sub.add_parser(command)
        p.add_argument("--target", action="append", type=Target.parse,
                       help=f"MACHINE-X.Y, repeatable (default: {' '.join(DEFAULT_TARGETS)})")  # fmt: skip
    sub.choices["build"].add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="release: %(message)s")
    targets = args.target or [Target.parse(t) for t in DEFAULT_TARGETS]
    if args.command == "lock":
        CONSTRAINTS.write_text(lock(targets))
        log.info("wrote %s", CONSTRAINTS)
    else:
        tarball = build(targets, args.out)
        log.info("wrote %s (%.0f MiB)", tarball, tarball.stat().st_size / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
