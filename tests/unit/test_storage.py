"""Issue 13.8: storage trouble is one line naming the path (StorageError, exit 3), never a traceback."""

import datetime as dt

import numpy as np
import pytest

from edge.analysis.field import Cell, FieldResult
from edge.counting.journal import SlideJournal
from edge.counting.tally import Slide
from edge.durable import StorageError
from tests.cli_helpers import error_lines, marrow_edge


def test_a_directory_where_the_journal_should_be(tmp_path):
    (tmp_path / "journal.sqlite").mkdir()
    with pytest.raises(StorageError, match="is a directory"):
        SlideJournal(tmp_path / "journal.sqlite")


def test_a_foreign_file_where_the_journal_should_be(tmp_path):
    (tmp_path / "journal.sqlite").write_bytes(b"this is a spreadsheet, not a database" * 100)
    with pytest.raises(StorageError, match="not an SQLite database"):
        SlideJournal(tmp_path / "journal.sqlite")


def test_two_runs_on_one_journal_are_refused(tmp_path):
    first = SlideJournal(tmp_path / "journal.sqlite")
    with pytest.raises(StorageError, match="in use by another marrow-edge run"):
        SlideJournal(tmp_path / "journal.sqlite")
    first.close()
    SlideJournal(tmp_path / "journal.sqlite").close()  # free again once the first has closed


def test_a_full_disk_while_recording_names_the_journal(tmp_path):
    journal = SlideJournal(tmp_path / "journal.sqlite")
    slide = Slide(specimen_id="S", started=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    journal.begin(slide)
    journal._db.execute("PRAGMA max_page_count = 8")  # the database cannot grow: SQLite says the disk is full
    cell = Cell((0, 0, 1, 1), 0.9, "blast", 0.9, np.full(50, 0.02, np.float32), 0.9, True)
    with pytest.raises(StorageError, match="disk is full") as raised:
        for i in range(200):
            journal.record(slide, FieldResult(i, f"f{i}.jpg", 10, 10, [cell] * 20))
    assert str(tmp_path / "journal.sqlite") in str(raised.value)


def test_run_with_a_broken_journal_path_exits_3_in_one_line(tmp_path, samples):
    (tmp_path / "journal.sqlite").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"counting:\n  journal: {tmp_path / 'journal.sqlite'}\n")
    proc = marrow_edge("run", "--source", str(samples), "--config", str(config), "--broker", "mqtt://127.0.0.1:9")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "is a directory" in lines[0]
