"""Issue 13.2: one bad file never ends the slide. A name that is not UTF-8, a decompression bomb
and a FIFO named .jpg are skipped and reported; the other fields are counted; the slide closes."""

import os
import shutil
import sqlite3
import struct
import sys
import zlib

import pytest

from tests.cli_helpers import marrow_edge
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a bomb needs no more to be refused)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_bad_files_are_skipped_and_the_slide_ends_with_a_report(broker, samples, tmp_path):
    folder = tmp_path / "slide"
    folder.mkdir()
    good = sorted(samples.glob("*.jpg"))[:2]
    shutil.copy(good[0], folder / "a_good.jpg")
    non_utf8 = os.fsdecode(b"b_field_\xff\xfe.jpg")  # Latin-1 bytes from a Windows share
    shutil.copy(good[1], folder / non_utf8)
    (folder / "c_bomb.png").write_bytes(png_header_only(36000, 32000))
    os.mkfifo(folder / "d_fifo.jpg")
    recorder = Recorder(broker.host, broker.port, "marrow/v1/bad-files/#")
    config = tmp_path / "c.yaml"
    config.write_text(f"counting:\n  journal: {tmp_path / 'journal.sqlite'}\n")
    try:
        proc = marrow_edge(
            "run", "--source", str(folder), "--device-id", "bad-files", "--broker", broker.url,
            "--config", str(config), timeout=120,
        )  # fmt: skip
        report = recorder.wait_for("/report")[0]
    finally:
        recorder.close()
    sys.stdout.write(proc.stdout[-1500:])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert report["fields"] == 2 and report["fields_skipped"] == 2
    reasons = " | ".join(s["reason"] for s in report["skipped"])
    assert "36000x32000" in reasons and "not decoded" in reasons
    assert "not a regular file" in reasons
    sources = {f["source"] for f in recorder.on("/field")}
    assert "b_field_\\xff\\xfe.jpg" in sources  # the name as text, distinct and printable
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM slide WHERE closed = 0").fetchone()[0] == 0
