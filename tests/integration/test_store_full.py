"""A full disk under the slide store during a count: the run exits 3 naming the slide, the journal
keeps its cells, and `review import` brings the slide into the store later (issue 30, item 5).

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

LIMIT = 400_000  # bytes per file: the store's crops pass it within two fields, the journal never


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
