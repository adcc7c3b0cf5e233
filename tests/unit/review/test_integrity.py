"""A signed report a lab can trust: its counts are the store's cells at the instant it is signed, every
audit row's ``old`` is what the cell held, and the audit trail and sign-offs are append-only and
hash-chained (``marrow-edge review verify`` says where a chain breaks).

Two desks over one store file stand for two processes (the display and the CLI, or two sessions on
separate connections): each has its own SQLite connection, as the appliance's processes do."""

from __future__ import annotations

import datetime as dt
import logging
import random
import sqlite3
import threading

import pytest

from edge.errors import StorageError
from edge.mqtt.messages import SignedReportMessage
from edge.review import audit
from edge.review.cli import verify
from edge.review.desk import ReviewDesk, SignedError, StaleError
from edge.review.records import ReviewError
from edge.review.recount import recount
from edge.review.store import SlideStore
from tests.unit.review.slides import count_slide, make_desk

TRAYS = ["blast", "lymphocyte", "monocyte"]


def _race(tmp_path, trial: int) -> tuple[SignedReportMessage, dict[str, int], list[dict]]:
    """One operator signs while three other connections reclassify cells as fast as they can."""
    desk = make_desk(tmp_path / f"race{trial}.sqlite")
    others = [ReviewDesk(SlideStore(desk.store.path)) for _ in range(3)]
    slide_id = desk.slide_id
    go, stop = threading.Event(), threading.Event()

    def reclassify(other: ReviewDesk, seed: int) -> None:
        rng = random.Random(seed)
        go.wait()
        while not stop.is_set():
            try:
                other.reclassify(slide_id, [rng.randrange(10)], rng.choice(TRAYS), "Bo Chen")
            except SignedError:
                return  # signed: a change now needs an amendment's reason

    workers = [threading.Thread(target=reclassify, args=(o, trial * 10 + i)) for i, o in enumerate(others)]
    for worker in workers:
        worker.start()
    go.set()
    while desk.store.revision(slide_id) < 1 + trial % 5:  # some changes land first, more in some trials
        pass
    message = desk.sign(slide_id, "Ana Lima", "4321")
    stop.set()
    for worker in workers:
        worker.join()
    record, cells = desk.store.slide(slide_id), desk.store.cells(slide_id)
    now = dict(recount(record, cells, reviewed=True).counts)
    trail = desk.store.audit(slide_id)
    for other in others:
        other.store.close()
    desk.store.close()
    return message, now, trail


def test_a_signed_report_always_holds_the_counts_of_its_cells(tmp_path):
    wrong = []
    for trial in range(20):
        message, now, trail = _race(tmp_path, trial)
        if {k: v for k, v in message.counts.items() if v} != {k: v for k, v in now.items() if v}:
            wrong.append((trial, message.counts, now))
        assert [a.action for a in message.audit] == [a["action"] for a in trail]  # every change it counted
    assert wrong == []


def test_every_audit_old_is_what_the_cell_held_under_concurrent_edits(tmp_path):
    desk = make_desk(tmp_path / "s.sqlite")
    others = [ReviewDesk(SlideStore(desk.store.path)) for _ in range(3)]
    slide_id = desk.slide_id

    def edit(d: ReviewDesk, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            d.reclassify(slide_id, [rng.randrange(3)], rng.choice(TRAYS), f"op{seed}")  # three cells, contended

    threads = [threading.Thread(target=edit, args=(d, i)) for i, d in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    machine = {c.cell_id: c.machine_tray for c in desk.store.cells(slide_id)}
    held = dict(machine)
    stale = 0
    for row in desk.store.audit(slide_id):
        stale += row["old"] != held[row["cell_id"]]
        held[row["cell_id"]] = row["new"]
    assert len(desk.store.audit(slide_id)) > 10 and stale == 0
    assert held == {c.cell_id: c.tray for c in desk.store.cells(slide_id)}
    for d in others:
        d.store.close()
    desk.store.close()


def test_a_sign_off_of_a_view_that_changed_meanwhile_is_refused(tmp_path):
    desk = make_desk(tmp_path / "s.sqlite")
    slide_id = desk.slide_id
    seen = desk.view(slide_id)["revision"]
    desk.reclassify(slide_id, [0], "lymphocyte", "Bo Chen")  # another session, after the page was loaded
    with pytest.raises(StaleError, match="changed since you opened it"):
        desk.sign(slide_id, "Ana Lima", "4321", revision=seen)
    assert desk.store.signoffs(slide_id) == []
    assert desk.sign(slide_id, "Ana Lima", "4321", revision=desk.view(slide_id)["revision"]).version == 1
    desk.store.close()


@pytest.fixture
def signed(tmp_path):
    desk = make_desk(tmp_path / "s.sqlite")
    desk.reclassify(desk.slide_id, [0, 1], "lymphocyte", "Ana Lima")
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    desk.reclassify(desk.slide_id, [2], "monocyte", "Ana Lima", amend_reason="second look")
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    yield desk
    desk.store.close()


TAMPERING = [
    "DELETE FROM audit",
    "DELETE FROM audit WHERE action = 'amend'",
    "DELETE FROM signoff",
    "UPDATE audit SET operator = 'someone else'",
    "UPDATE signoff SET operator = 'someone else'",
    "INSERT OR REPLACE INTO signoff (slide_id, version, operator, time, report) "
    "SELECT slide_id, version, 'someone else', time, report FROM signoff WHERE version = 1",
    "REPLACE INTO audit (id, slide_id, time, operator, action) SELECT id, slide_id, time, 'x', action FROM audit",
]


@pytest.mark.parametrize("sql", TAMPERING)
def test_the_audit_trail_and_sign_offs_refuse_every_change_from_any_connection(signed, sql):
    raw = sqlite3.connect(signed.store.path)  # not the appliance's code: a person with the file
    with pytest.raises(sqlite3.DatabaseError, match=r"never|kept"):
        raw.execute(sql)
    raw.close()
    with pytest.raises(StorageError), signed.store.transaction() as db:
        db.execute(sql)
    assert verify(signed.store) == 0


def test_verify_says_where_a_chain_was_broken(signed, capsys):
    assert verify(signed.store) == 0
    assert "audit trail intact: 6 row(s)" in capsys.readouterr().out
    raw = sqlite3.connect(signed.store.path)
    raw.execute("DROP TRIGGER audit_kept")  # someone who also removes the guard rails
    raw.execute("UPDATE audit SET new = 'blast' WHERE action = 'reclassify' AND cell_id = 1")
    raw.commit()
    raw.close()
    assert verify(signed.store) == 3
    out = capsys.readouterr().out
    assert f"BROKEN slide {signed.slide_id}: audit row 2 (reclassify by Ana Lima" in out


def test_verify_finds_a_sign_off_whose_report_differs_from_the_chain(signed, capsys):
    raw = sqlite3.connect(signed.store.path)
    raw.execute("DROP TRIGGER signoff_kept")
    report = SignedReportMessage.model_validate_json(
        raw.execute("SELECT report FROM signoff WHERE version = 1").fetchone()[0]
    )
    report.audit[0].operator = "someone else"
    raw.execute("UPDATE signoff SET report = ? WHERE version = 1", (report.model_dump_json(by_alias=True),))
    raw.commit()
    raw.close()
    with signed.store.reading() as db:
        _, breaks = audit.verify(db)
    assert [str(b) for b in breaks] == [
        f"slide {signed.slide_id}: signed version 1: its report's audit differs from the audit trail"
    ]


def test_a_store_from_before_the_chain_is_sealed_as_it_was(tmp_path):
    path = tmp_path / "old.sqlite"
    desk = make_desk(path)
    desk.reclassify(desk.slide_id, [0], "lymphocyte", "Ana Lima")
    desk.store.close()
    raw = sqlite3.connect(path)  # make it look like a store written before the hash column
    raw.executescript(
        "DROP TRIGGER audit_kept; DROP TRIGGER audit_not_replaced; DROP TRIGGER audit_not_deleted;"
        "CREATE TABLE a2 AS SELECT id, slide_id, time, operator, action, cell_id, old, new, note FROM audit;"
        "DROP TABLE audit; ALTER TABLE a2 RENAME TO audit;"
    )
    raw.close()
    store = SlideStore(path)
    assert verify(store) == 0
    with pytest.raises(StorageError, match="never"), store.transaction() as db:
        db.execute("DELETE FROM audit")
    store.close()


def _age(desk: ReviewDesk, days: float, counting_today: bool = True) -> None:
    """The desk's slide started ``days`` ago; another slide counted today (a box in use) unless not."""
    started = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).isoformat()
    with desk.store.transaction() as db:
        db.execute("UPDATE slide SET started = ? WHERE slide_id = ?", (started, desk.slide_id))
    if counting_today:
        count_slide(desk.store, [])


def test_retention_removes_a_whole_slide_and_records_it(tmp_path, caplog):
    desk = make_desk(tmp_path / "s.sqlite")
    desk.reclassify(desk.slide_id, [0], "lymphocyte", "Ana Lima")
    _age(desk, 40)
    with caplog.at_level(logging.WARNING):
        assert desk.store.purge(30) == 1
    assert desk.slide_id in caplog.text and "BM-1" in caplog.text
    with desk.store.reading() as db:
        assert db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0
        purged = db.execute("SELECT slide_id, reason FROM purged").fetchall()  # the record of what went
        assert purged == [(desk.slide_id, "review.keep_days 30")]
    with pytest.raises(ReviewError):
        desk.store.slide(desk.slide_id)
    with pytest.raises(StorageError, match="kept"), desk.store.transaction() as db:
        db.execute("DELETE FROM purged")
    desk.store.close()


def test_retention_keeps_a_signed_slide_until_its_report_has_gone_out(tmp_path):
    desk = make_desk(tmp_path / "s.sqlite")
    desk.send = lambda topic, message, retain: False  # the broker never acknowledges
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    _age(desk, 40)
    assert desk.store.purge(30) == 0 and desk.store.slide(desk.slide_id).state == "signed"
    desk.store.mark_published(desk.slide_id, 1)
    assert desk.store.purge(30) == 1
    desk.store.close()


@pytest.mark.parametrize("days", [-2, 400])  # the clock went back behind the newest slide / jumped years ahead
def test_retention_deletes_nothing_on_a_clock_that_jumped(tmp_path, caplog, days):
    desk = make_desk(tmp_path / "s.sqlite")
    _age(desk, days, counting_today=False)
    with caplog.at_level(logging.WARNING):
        assert desk.store.purge(365) == 0
    assert "clock" in caplog.text and desk.store.slide(desk.slide_id)
    desk.store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_deleted_or_replaced_under_a_running_process_refuses_to_write(tmp_path, how):
    desk = make_desk(tmp_path / "s.sqlite")
    path = desk.store.path
    path.unlink()
    if how == "replaced":
        SlideStore(path).close()  # an empty store put in its place
    with pytest.raises(StorageError, match=f"was {how} while in use"):
        desk.reclassify(desk.slide_id, [0], "lymphocyte", "Ana Lima")
    with pytest.raises(StorageError, match=how):
        desk.sign(desk.slide_id, "Ana Lima", "4321")
    desk.store.close()


def test_a_field_without_its_image_keeps_its_cells_without_crops(tmp_path):
    """review import of a live camera's slide: the frames are gone, the journal's cells are not."""
    from edge.analysis.field import FieldResult
    from edge.config import AppConfig
    from edge.counting.rules import load_rule_pack
    from edge.counting.tally import Slide
    from edge.review.recount import slide_setup
    from edge.review.store import SlideStore
    from tests.unit.review.slides import CLASSES, make_cell

    store = SlideStore(tmp_path / "s.sqlite")
    slide = Slide(specimen_id="BM-2")
    store.begin(slide, slide_setup(CLASSES, load_rule_pack(), AppConfig().counting, None, 64, 0.5, 0.5, 0.15))
    store.add_field(slide, FieldResult(0, "live-0", 640, 480, [make_cell(0, "blast"), make_cell(1, "monocyte")]), None)
    cells = store.cells(slide.slide_id)
    assert [c.machine_class for c in cells] == ["blast", "monocyte"]
    assert store.image(slide.slide_id, cells[0].cell_id, "crop") is None
    assert store.fields(slide.slide_id)[0] == {"source": "live-0", "width": 640, "height": 480}
    assert store.field_image(slide.slide_id, 0) is None
    store.close()
