"""Installed model bundles: one folder per bundle under the box's ``bundles_dir``.

    marrow-edge bundle install DIR [--name NAME]   # verify, copy, verify the copy, swap in atomically
    marrow-edge bundle list                        # name, version, profile, classes, hash
    marrow-edge bundle verify [NAME|DIR]           # every file against its sha256 (default: the config's)
    marrow-edge bundle rollback NAME               # back to the version the last install replaced (and again)

An install never leaves a half-copied bundle where the pipeline looks: it copies into a hidden
folder beside it, verifies the copy, and renames it into place; the bundle it replaces is kept
in ``.previous/<name>`` (one generation) to go back to.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.engines.bundle import MANIFEST_NAME, Bundle, load_bundle
from edge.errors import BundleError


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    bundle: Bundle | None
    problem: str | None


class BundleLibrary:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise BundleError(f"{name!r} is not a bundle name (letters, digits, '_', '.', '-')")
        return self.root / name

    def list(self) -> list[Installed]:
        if not self.root.is_dir():
            return []
        out = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                out.append(Installed(folder.name, folder, load_bundle(folder, verify=False), None))
            except BundleError as exc:
                out.append(Installed(folder.name, folder, None, str(exc)))
        return out

    def install(self, source: Path, name: str | None = None) -> Bundle:
        """Verify ``source``, copy it in as ``name`` (default: the manifest's name) and verify the copy."""
        bundle = load_bundle(Path(source), verify=True)
        target = self.path(name or bundle.manifest.name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        except OSError as exc:
            raise BundleError(f"cannot copy the bundle into {self.root}: {exc.strerror or exc}") from None
        try:
            load_bundle(staging, verify=True)  # the copy, not the source, is what will run
            if target.exists():
                previous = self.root / ".previous" / target.name
                if previous.exists():
                    shutil.rmtree(previous)
                previous.parent.mkdir(exist_ok=True)
                target.rename(previous)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return load_bundle(target, verify=False)


    def rollback(self, name: str) -> Bundle:
        """Swap ``name`` with the version its last install replaced (an adapted bundle back to its base);
        a second rollback swaps them again. The kept version is verified before anything moves."""
        target = self.path(name)
        previous = self.root / ".previous" / target.name
        if not previous.is_dir():
            raise BundleError(f"{name}: no earlier version is kept in {previous.parent} to go back to")
        load_bundle(previous, verify=True)
        swap = self.root / f".{target.name}.{uuid.uuid4().hex[:8]}.swap"
        if target.exists():
            target.rename(swap)
        previous.rename(target)
        if swap.exists():
            swap.rename(previous)
        return load_bundle(target, verify=False)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle",
        help="install, list, verify and roll back model bundles",
        description="Model bundles live in bundles_dir (default /var/lib/marrow-edge/bundles); `bundle: NAME` in the "
        "config picks one.",
    )
    common = argparse.ArgumentParser(add_help=False)  # before or after the action: both read the same
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="YAML config (bundles_dir, bundle)")
    common.add_argument("--bundles-dir", type=Path, default=argparse.SUPPRESS, help="override bundles_dir")
    p.add_argument("--config", type=Path, help="YAML config (bundles_dir, bundle)")
    p.add_argument("--bundles-dir", type=Path, help="override bundles_dir")
    actions = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="verify a bundle folder and install it", parents=[common])
    install.add_argument("source", type=Path)
    install.add_argument("--name", help="install under this name (default: the bundle's own)")
    actions.add_parser("list", help="the installed bundles", parents=[common])
    rollback = actions.add_parser(
        "rollback", help="go back to the version the last install of NAME replaced", parents=[common]
    )
    rollback.add_argument("name")
    verify = actions.add_parser("verify", help="check every file of a bundle against its sha256", parents=[common])
    verify.add_argument("bundle", nargs="?", help="a name in bundles_dir or a folder (default: the config's bundle)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edge.config import load_config

    config = load_config(args.config)
    library = BundleLibrary(args.bundles_dir or config.bundles_dir)
    out = sys.stdout.write
    if args.bundle_command == "install":
        bundle = library.install(args.source, args.name)
        m = bundle.manifest
        out(f"installed {m.name} {m.version} ({bundle.digest[:12]}) at {bundle.root}; every file verified\n")
        return 0
    if args.bundle_command == "rollback":
        bundle = library.rollback(args.name)
        m = bundle.manifest
        out(f"{args.name} is {m.name} {m.version} ({bundle.digest[:12]}) again; every file verified\n")
        return 0
    if args.bundle_command == "list":
        rows = library.list()
        if not rows:
            out(f"no bundles in {library.root} (marrow-edge bundle install DIR)\n")
        for row in rows:
            if row.bundle is None:
                out(f"{row.name:<16} BROKEN: {row.problem}\n")
                continue
            m = row.bundle.manifest
            mark = " (config)" if row.path.resolve() == config.bundle.resolve() else ""
            out(f"{row.name:<16} {m.version:<10} {m.profile:<6} {len(m.classes)} classes  "
                f"{row.bundle.digest[:12]}  {m.trained_on or '-'}{mark}\n")  # fmt: skip
        return 0
    chosen = args.bundle
    where = config.bundle if chosen is None else Path(chosen)
    if chosen is not None and not (where / MANIFEST_NAME).exists() and len(where.parts) == 1:
        where = library.path(chosen)
    bundle = load_bundle(where, verify=True)
    out(f"{bundle.manifest.name} {bundle.manifest.version} at {where}: {len(bundle.manifest.files)} files verified\n")
    return 0
