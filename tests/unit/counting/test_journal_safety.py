"""Issue 13.1: an open slide is resumed only by the same slide; another patient's run is refused."""

import datetime as dt

import pytest

from edge.counting.journal import SlideJournal, resolve_open_slide
from edge.counting.tally import Slide
from edge.errors import ConfigError
from tests.cli_helpers import error_lines, marrow_edge


def _journal_with_open_slide(path, specimen="PATIENT-A", source="files:/data/a") -> tuple[SlideJournal, Slide]:
    journal = SlideJournal(path)
    slide = Slide(specimen_id=specimen, source=source, started=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    journal.begin(slide)
    return journal, slide


def test_same_specimen_and_source_resume(tmp_path):
    journal, slide = _journal_with_open_slide(tmp_path / "j.sqlite")
    resumed = resolve_open_slide(journal, "PATIENT-A", "files:/data/a")
    assert resumed is not None and resumed.slide_id == slide.slide_id and resumed.source == "files:/data/a"


@pytest.mark.parametrize(
    ("specimen", "source"),
    [("PATIENT-B", "files:/data/b"), ("PATIENT-B", "files:/data/a"), ("PATIENT-A", "files:/data/b"), (None, None)],
)
def test_anything_else_is_refused_naming_the_slide_and_the_ways_out(tmp_path, specimen, source):
    journal, slide = _journal_with_open_slide(tmp_path / "j.sqlite")
    with pytest.raises(ConfigError) as raised:
        resolve_open_slide(journal, specimen, source)
    message = str(raised.value)
    assert slide.slide_id in message and "PATIENT-A" in message
    assert "--resume" in message and "--close-interrupted" in message
    assert journal.open_slide() is not None  # nothing was closed or changed


def test_explicit_resume_continues_but_never_under_another_specimen(tmp_path):
    journal, slide = _journal_with_open_slide(tmp_path / "j.sqlite")
    assert resolve_open_slide(journal, None, "files:/elsewhere", resume=True).slide_id == slide.slide_id
    with pytest.raises(ConfigError):
        resolve_open_slide(journal, "PATIENT-B", "files:/data/a", resume=True)


def test_close_interrupted_closes_it_for_good(tmp_path):
    journal, _ = _journal_with_open_slide(tmp_path / "j.sqlite")
    assert resolve_open_slide(journal, "PATIENT-B", "files:/data/b", close_interrupted=True) is None
    assert journal.open_slide() is None
    assert resolve_open_slide(journal, "PATIENT-B", "files:/data/b") is None


def test_an_old_journal_without_sources_gains_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE slide (slide_id TEXT PRIMARY KEY, specimen_id TEXT, started TEXT NOT NULL, "
        "closed INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO slide VALUES ('S1', 'PATIENT-A', '2026-12-01T00:00:00+00:00', 0);"
    )
    db.close()
    journal = SlideJournal(path)
    with pytest.raises(ConfigError, match="S1"):  # unknown source: only --resume continues it
        resolve_open_slide(journal, "PATIENT-A", "files:/data/a")


def test_run_for_another_patient_exits_2_before_publishing(tmp_path, samples):
    journal, slide = _journal_with_open_slide(tmp_path / "journal.sqlite")
    journal.close()
    config = tmp_path / "c.yaml"
    config.write_text(f"counting:\n  journal: {tmp_path / 'journal.sqlite'}\n")
    # no broker is given or running: the refusal must come first
    proc = marrow_edge(
        "run", "--source", str(samples), "--specimen-id", "PATIENT-B", "--config", str(config),
        "--broker", "mqtt://127.0.0.1:9",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and slide.slide_id in lines[0] and "PATIENT-A" in lines[0]
    assert "resuming" not in proc.stdout


def test_closed_slides_leave_the_journal_after_keep_days(tmp_path):
    journal = SlideJournal(tmp_path / "j.sqlite")
    old = Slide(specimen_id="OLD", started=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    open_old = Slide(specimen_id="OPEN", started=dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc))
    recent = Slide(specimen_id="NEW")
    for s in (old, open_old, recent):
        journal.begin(s)
    journal.record_skip(old, "f.jpg", "x")
    journal.close_slide(old)
    journal.close_slide(recent)
    assert journal.purge(90) == 1
    assert journal.open_slide().specimen_id == "OPEN"  # an open slide is never deleted, however old
    assert journal.seen(old) == set()


def test_run_arguments_are_checked_first(samples):
    for args, text in (
        (("--max-fields", "0"), "--max-fields must be at least 1"),
        (("--specimen-id", "A" * 5000), "--specimen-id must be 1-64 characters"),
        (("--specimen-id", "BM-1\nPATIENT-B"), "--specimen-id must be"),
    ):
        proc = marrow_edge("run", "--source", str(samples), *args)
        assert proc.returncode == 2, proc.stderr
        assert text in error_lines(proc)[0]
    proc = marrow_edge("run", "--source", str(samples), "--wait-for-start")
    assert proc.returncode == 2 and "--wait-for-start needs a live source" in proc.stderr
    proc = marrow_edge("run")  # no source on the command line and none in the (default) config
    assert proc.returncode == 2 and "nothing to count: give --source, --camera or --ring" in proc.stderr
