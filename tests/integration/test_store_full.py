"""The slide store when its disk fails (issue 30, item 5). A full disk during a count: the run exits
3 naming the slide, the journal keeps its cells, and `review import` brings the slide into the store
later. A read-only file system: reports are still read, a change is refused in one line.

The full disk is real to SQLite: the run's file-size limit (RLIMIT_FSIZE) makes every write past it
fail with EFBIG, as a full disk fails with ENOSPC; the journal's small writes stay under it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from edge.config import load_config
from edge.review.store import SlideStore
from tests.cli_helpers import ROOT

# bytes per file: the store's crops (about 140 kB a field) pass it within five fields; the journal's and the
# outbox's write-ahead logs never (they grow by a page or two a message until SQLite checkpoints at 4 MB: an
# eight-field slide's outbox log passed 400 kB once its field messages carried their scale)
LIMIT = 700_000


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_full_disk_under_the_store_exits_3_and_the_slide_is_imported_later(broker, samples, state_dir):
    env = dict(os.environ)
    command = [sys.executable, "-m", "edge.cli", "run", "--source", str(samples), "--device-id", "full-box",
               "--specimen-id", "BM-9", "--broker", broker.url, "--quiet"]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, preexec_fn=_limited)
    assert run.returncode == 3, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert "is not in the slide store" in line and "review import --slide" in line, line
    slide_id = line.split("slide ")[1].split()[0]
    store_path = state_dir / "slides-review.sqlite"
    store = SlideStore(store_path)
    kept = store.fields(slide_id) if store.slides() else {}
    store.close()
    assert len(kept) < 8  # the store really missed fields
    imported = subprocess.run(
        [sys.executable, "-m", "edge.cli", "review", "import", "--slide", slide_id, "--source", str(samples)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    store = SlideStore(load_config(environ={}).review.store)
    record, cells = store.slide(slide_id), store.cells(slide_id)
    assert record.specimen_id == "BM-9" and record.state == "finished" and len(store.fields(slide_id)) == 8
    assert all(store.image(slide_id, c.cell_id, "crop") for c in cells)  # crops cut again from the source
    counted = sum(1 for c in cells if c.countable)
    assert record.machine_report["countable"] == counted > 0
    store.close()
    again = subprocess.run(
        [sys.executable, "-m", "edge.cli", "review", "import", "--slide", slide_id],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert again.returncode != 0 and "already in the slide store" in again.stderr  # never twice


def _read_only_mount(source, target) -> bool:
    """A read-only bind mount of ``source`` at ``target`` (root with CAP_SYS_ADMIN, as on this project's machines)."""
    target.mkdir()
    for command in (["mount", "--bind", str(source), str(target)], ["mount", "-o", "remount,ro,bind", str(target)]):
        if subprocess.run(command, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True)
            return False
    return True


def test_a_read_only_store_still_gives_its_reports_and_refuses_changes_in_one_line(samples, tmp_path):
    from tests.unit.review.slides import make_desk

    source = tmp_path / "rw"
    source.mkdir()
    desk = make_desk(source / "slides.sqlite")
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    desk.store.close()
    mounted = tmp_path / "ro"
    if not _read_only_mount(source, mounted):
        import pytest

        pytest.skip("a read-only file system needs mount privileges (root with CAP_SYS_ADMIN)")
    try:
        env = {**os.environ, "MARROW_EDGE__REVIEW__STORE": str(mounted / "slides.sqlite")}
        out = tmp_path / "r.csv"
        command = ["report", "--slide", desk.slide_id, "--format", "csv", "--out", str(out)]
        report = subprocess.run(
            [sys.executable, "-m", "edge.cli", *command],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert report.returncode == 0, report.stderr
        assert "final" in out.read_text()  # the signed report, read from the read-only store
        change = subprocess.run(
            [sys.executable, "-m", "edge.cli", "review", "operator", "add", "Bob", "--pin-stdin"], input="5678\n",
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        errors = [line for line in change.stderr.splitlines() if "error" in line]
        assert change.returncode == 3 and errors == [
            f"marrow-edge: error: the slide store {mounted / 'slides.sqlite'} is read-only here: it can be read, "
            "not changed"
        ], change.stderr
        assert "Traceback" not in change.stderr
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True)
