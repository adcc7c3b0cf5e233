"""The slide store and the review desk: cells kept with the slide, recount from reviewed labels,
sign-off under a PIN, amendments that keep the old report, the audit trail, and nothing lost
when the broker is away."""

from __future__ import annotations

import sqlite3

import pytest

from edge.errors import StorageError
from edge.mqtt.messages import SignedReportMessage
from edge.mqtt.topics import Topics
from edge.review.desk import ReviewDesk, SignedError
from edge.review.records import NOT_COUNTABLE, ReviewError
from edge.review.store import SlideStore
from tests.unit.review.slides import count_slide, make_desk


@pytest.fixture
def desk(tmp_path):
    desk = make_desk(tmp_path / "slides.sqlite")
    yield desk, desk.slide_id
    desk.store.close()


def test_every_cell_is_kept_with_its_images_and_the_machine_count(desk):
    desk, slide_id = desk
    view = desk.view(slide_id)
    assert len(view["cells"]) == 11 and all(c["image"] for c in view["cells"])
    assert view["machine"]["counts"] == {"blast": 6, "lymphocyte": 3, "monocyte": 1}
    assert view["trays"] == ["blast", "lymphocyte", "monocyte", NOT_COUNTABLE]
    assert sum(c["tray"] == NOT_COUNTABLE for c in view["cells"]) == 1
    flagged = {c["id"]: c["flags"] for c in view["cells"] if c["flags"]}
    assert "low_probability" in flagged[0] and "low_probability" in flagged[9]  # the 0.4 blast, the 0.5 monocyte
    crop = desk.store.image(slide_id, 0, "crop")
    assert crop[:2] == b"\xff\xd8" and desk.store.image(slide_id, 0, "context")[:2] == b"\xff\xd8"
    assert desk.store.field_image(slide_id, 1)[1:] == (520, 120)


def test_a_review_recounts_the_differential_and_the_rules(desk):
    desk, slide_id = desk
    before = desk.view(slide_id)
    blast_rule = next(r for r in before["reviewed"]["rules"] if r["class"] == "blast")
    desk.reclassify(slide_id, [0, 1], "lymphocyte", "Ana Lima")
    desk.reclassify(slide_id, [2], NOT_COUNTABLE, "Ana Lima")
    desk.reclassify(slide_id, [10], "monocyte", "Ana Lima")  # the stage-1 reject was a monocyte after all
    after = desk.view(slide_id)
    assert after["machine"]["counts"] == before["machine"]["counts"]  # the machine's count is kept
    assert after["reviewed"]["counts"] == {"blast": 3, "lymphocyte": 5, "monocyte": 2}
    assert after["reviewed"]["countable"] == 10 and after["reviewed"]["not_countable"] == 1
    share = next(s for s in after["reviewed"]["shares"] if s["class"] == "blast")
    assert share["percent"] == pytest.approx(30.0)
    assert next(r for r in after["reviewed"]["rules"] if r["class"] == "blast")["percent"] != blast_rule["percent"]
    assert [(a["cell_id"], a["old"], a["new"]) for a in after["audit"]] == [
        (0, "blast", "lymphocyte"),
        (1, "blast", "lymphocyte"),
        (2, "blast", NOT_COUNTABLE),
        (10, NOT_COUNTABLE, "monocyte"),
    ]
    assert all(a["operator"] == "Ana Lima" for a in after["audit"])
    assert [m.kind for _, m in desk.sent] == ["review"] * 3
    # moving a cell back to the machine's call clears its label
    desk.reclassify(slide_id, [0], "blast", "Ana Lima")
    assert next(c for c in desk.view(slide_id)["cells"] if c["id"] == 0)["reviewed"] is False


def test_bad_requests_change_nothing(desk):
    desk, slide_id = desk
    with pytest.raises(ReviewError, match="not a class"):
        desk.reclassify(slide_id, [0], "megakaryocyte", "Ana Lima")
    with pytest.raises(ReviewError, match="no cell 99"):
        desk.reclassify(slide_id, [0, 99], "lymphocyte", "Ana Lima")
    with pytest.raises(ReviewError, match="no slide"):
        desk.view("nope")
    assert desk.store.audit(slide_id) == []


def test_signing_needs_the_pin_and_makes_the_report_final(desk):
    desk, slide_id = desk
    desk.reclassify(slide_id, [0], "monocyte", "Ana Lima")
    with pytest.raises(ReviewError, match="not accepted"):
        desk.sign(slide_id, "Ana Lima", "0000")
    signed = desk.sign(slide_id, "Ana Lima", "4321")
    assert signed.status == "final" and signed.version == 1 and signed.operator == "Ana Lima"
    assert signed.counts == {"blast": 5, "lymphocyte": 3, "monocyte": 2}
    assert signed.machine_counts == {"blast": 6, "lymphocyte": 3, "monocyte": 1}
    assert [a.action for a in signed.audit] == ["reclassify", "sign"] and signed.cells_reviewed == 1
    topic, message = desk.sent[-1]
    assert topic == f"marrow/v1/box-1/slide/{slide_id}/signed" and message == signed
    assert desk.store.slide(slide_id).state == "signed" and desk.store.unpublished() == []
    with pytest.raises(ReviewError, match="already signed"):
        desk.sign(slide_id, "Ana Lima", "4321")


def test_a_signed_report_changes_only_by_an_amendment_that_keeps_it(desk):
    desk, slide_id = desk
    first = desk.sign(slide_id, "Ana Lima", "4321")
    with pytest.raises(SignedError, match="amendment"):
        desk.reclassify(slide_id, [3], "lymphocyte", "Ana Lima")
    assert desk.store.slide(slide_id).state == "signed"  # refused: nothing moved
    desk.reclassify(slide_id, [3], "lymphocyte", "Ana Lima", amend_reason="cell 3 is a lymphocyte")
    assert desk.store.slide(slide_id).state == "amending"
    second = desk.sign(slide_id, "Ana Lima", "4321")
    assert second.status == "amended" and second.version == 2 and second.reason == "cell 3 is a lymphocyte"
    kept = desk.store.signoffs(slide_id)
    assert [s["version"] for s in kept] == [1, 2]
    assert SignedReportMessage.model_validate(kept[0]["report"]).counts == first.counts  # v1 as it was signed
    # not even the database changes a signed report or the audit trail behind the desk's back
    with pytest.raises(StorageError, match="never changed"), desk.store.transaction() as db:
        db.execute("UPDATE signoff SET report = '{}' WHERE version = 1")
    with pytest.raises(StorageError, match="never changed"), desk.store.transaction() as db:
        db.execute("UPDATE audit SET operator = 'someone else'")


def test_a_run_of_wrong_pins_locks_the_name_for_logins_only(desk):
    from edge.review.operators import MAX_FAILURES

    desk, _ = desk
    for _ in range(MAX_FAILURES):
        assert not desk.operators.verify("Ana Lima", "9999")
    assert not desk.operators.verify("Ana Lima", "4321")  # locked, even with the right PIN
    # a signed-in operator confirming a sign-off is not locked out by someone else's guesses
    assert desk.operators.verify("Ana Lima", "4321", count=False)
    assert not desk.operators.verify("Ana Lima", "9999", count=False)
    assert not desk.operators.verify("Nobody", "4321")
    with pytest.raises(ReviewError):
        desk.operators.add("Bob", "12")  # too short


def test_a_signed_report_waits_for_the_broker_and_is_sent_once_it_is_back(tmp_path):
    store = SlideStore(tmp_path / "s.sqlite")
    broker_up = False
    sent: list[str] = []

    def send(topic: str, message: object, retain: bool) -> bool:
        if broker_up:
            sent.append(topic)
        return broker_up

    desk = ReviewDesk(store, Topics("marrow/v1", "box-1"), send)
    desk.operators.add("Ana Lima", "4321")
    slide = count_slide(store, [])
    desk.sign(slide.slide_id, "Ana Lima", "4321")
    assert store.unpublished() == [(slide.slide_id, 1)] and sent == []
    store.close()
    store = SlideStore(tmp_path / "s.sqlite")  # a restart of the display in between
    desk = ReviewDesk(store, Topics("marrow/v1", "box-1"), send)
    broker_up = True
    assert desk.resend() == 1 and sent == [f"marrow/v1/box-1/slide/{slide.slide_id}/signed"]
    assert desk.resend() == 0 and store.unpublished() == []


def test_the_store_is_bounded_and_kept_for_the_retention_time(tmp_path):
    store = SlideStore(tmp_path / "s.sqlite", max_cells_per_slide=4)
    slide = count_slide(store, [])
    cells = store.cells(slide.slide_id)
    assert len(cells) == 11 and sum(c.has_crop for c in cells) == 4  # every cell counted, 4 images kept
    assert store.slide(slide.slide_id).cells_dropped == 7
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute("UPDATE slide SET started = '2025-10-01T00:00:00+00:00'")
    recent = count_slide(store, [])  # the box counts today: its clock is believable
    assert store.purge(365) == 1 and [s.slide_id for s in store.slides()] == [recent.slide_id]
    store.close()
