"""Setting one value in the lab's YAML config without losing what else is written there.

The lab's file holds comments and an order of its own; a dump of the parsed YAML would drop both.
So the one line is edited in place: the key under its top-level section (block style, as
config.example.yaml writes it) is replaced, or added under the section, or the section is added at
the end. The result is validated as a whole before it replaces the file (atomically, same mode).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from edge.errors import ConfigError


def set_line(text: str, section: str, key: str, value: str, comment: str) -> str:
    """``text`` with ``section.key: value  # comment`` set."""
    lines = text.splitlines()
    entry = f"{key}: {value}  # {comment}"
    header = next((i for i, line in enumerate(lines) if re.match(rf"^{section}:\s*(#.*)?$", line)), None)
    if header is None:
        if re.search(rf"^{section}:", text, re.MULTILINE):
            raise ConfigError(f"{section}: is written on one line (flow style): set {section}.{key}: {value} by hand")
        return text.rstrip("\n") + ("\n" if text.strip() else "") + f"{section}:\n  {entry}\n"
    indent = None
    i = header + 1
    while i < len(lines) and (not lines[i].strip() or lines[i][0] in " \t#"):
        stripped = lines[i].strip()
        if stripped and not lines[i].startswith("#"):
            depth = len(lines[i]) - len(lines[i].lstrip())
            indent = indent or depth
            if depth == indent and re.match(rf"{re.escape(key)}\s*:", stripped):
                lines[i] = " " * depth + entry
                return "\n".join(lines) + "\n"
        i += 1
    lines.insert(header + 1, " " * (indent or 2) + entry)
    return "\n".join(lines) + "\n"


def write_value(path: Path, section: str, key: str, value: str, comment: str) -> None:
    """Set ``section.key`` in the config file at ``path``; the file is replaced only if it still loads."""
    from edge.config import load_config

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    updated = set_line(text, section, key, value, comment)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(updated)
        load_config(Path(name), environ={})  # the whole file still valid, or nothing is replaced
        if path.exists():
            os.chmod(name, path.stat().st_mode & 0o7777)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
