"""The LIS link against a real MLLP listener on loopback (python-hl7's server): delivered once on
AA, retried on AE, a wrong ACK or no listener, kept and not retried on AR, and the drop folder."""

from __future__ import annotations

import socket
import threading
import time

import hl7
import pytest

from edge.mqtt.broker import free_port
from edge.reports.hl7v2 import frame
from edge.reports.lis import MAX_ATTEMPTS, LisError, LisLink, SenderBusy, Target, send_mllp
from tests.integration.lis_listener import LisListener
from tests.unit.review.slides import make_desk


@pytest.fixture
def desk(tmp_path):
    desk = make_desk(tmp_path / "slides.sqlite")
    yield desk
    desk.store.close()


@pytest.fixture
def listener():
    lis = LisListener(free_port())
    yield lis
    lis.close()


def _link(desk, port: int, **kw) -> LisLink:
    return LisLink(desk.store, Target("127.0.0.1", port, timeout_s=2.0), retry_s=0.2, **kw)


def test_signed_report_is_delivered_once_and_logged(desk, listener):
    listener.start()
    link = _link(desk, listener.port)
    assert link.sweep() == 0  # nothing signed yet: nothing goes to the LIS
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    assert link.sweep() == 1 and link.sweep() == 0
    assert link.deliver() == 1 and link.deliver() == 0
    assert len(listener.received) == 1
    message = listener.received[0]
    assert str(message.segment("OBR")[25]) == "F" and str(message.segment("OBR")[2]) == "BM-1"
    (row,) = link.log_rows()
    assert row["state"] == "delivered" and row["attempts"] == 1 and row["control_id"] == str(message.segment("MSH")[10])


def test_lis_down_then_up_the_background_link_delivers_once(desk, listener):
    link = _link(desk, listener.port).start()  # the LIS is not listening yet
    desk.on_signed.append(link.wake)
    try:
        desk.sign(desk.slide_id, "Ana Lima", "4321")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r["last_error"] for r in link.log_rows()):
            time.sleep(0.05)
        time.sleep(0.5)  # more rounds against a LIS that is down
        (row,) = link.log_rows()
        # unreachable is nobody's message's fault: it uses up none of the row's attempts
        assert row["state"] == "pending" and row["attempts"] == 0 and "cannot reach" in row["last_error"]
        listener.start()
        assert listener.wait_for(1, timeout_s=10)
        time.sleep(1.0)  # five retry periods: nothing is sent again
        assert len(listener.received) == 1
        assert link.log_rows()[0]["state"] == "delivered"
        # an amendment is a new version: it goes too, with status C (correction)
        desk.reclassify(desk.slide_id, [0], "monocyte", "Ana Lima", amend_reason="cell 0 is a monocyte")
        desk.sign(desk.slide_id, "Ana Lima", "4321")
        assert listener.wait_for(2, timeout_s=10)
        assert str(listener.received[1].segment("OBR")[25]) == "C"
        assert listener.received[0].segment("MSH")[10] != listener.received[1].segment("MSH")[10]
    finally:
        link.stop()


def test_application_error_is_retried_and_a_reject_is_kept_not_retried(desk, listener):
    listener.ack_code = "AE"
    listener.start()
    link = _link(desk, listener.port)
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    link.sweep()
    assert link.deliver() == 0 and link.deliver() == 0  # the second round is before its backoff ends
    assert len(listener.received) == 1 and link.log_rows()[0]["next_attempt"]
    time.sleep(0.25)  # retry_s 0.2 after the first failure
    assert link.deliver() == 0
    assert len(listener.received) == 2 and link.log_rows()[0]["state"] == "pending"
    listener.ack_code = "AA"
    time.sleep(0.45)  # 0.4 after the second
    assert link.deliver() == 1
    # a second slide version the LIS refuses outright
    desk.reclassify(desk.slide_id, [0], "monocyte", "Ana Lima", amend_reason="typo")
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    listener.ack_code = "AR"
    link.sweep()
    assert link.deliver() == 0 and link.deliver() == 0
    rows = link.log_rows()
    assert [r["state"] for r in rows] == ["delivered", "rejected"] and rows[1]["last_error"].startswith("AR")
    assert len(listener.received) == 4  # AE, AE, AA for v1; AR once for v2
    # sending it again (report --send) really queues it again
    listener.ack_code = "AA"
    link.queue(desk.slide_id, 2, again=True)
    assert link.deliver() == 1 and [r["state"] for r in link.log_rows()] == ["delivered", "delivered"]


def test_one_refused_message_does_not_hold_up_the_next_patients(tmp_path, listener):
    from tests.unit.review.slides import count_slide

    desk = make_desk(tmp_path / "s.sqlite")
    second = count_slide(desk.store, [])
    listener.start()
    link = _link(desk, listener.port)
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    desk.sign(second.slide_id, "Ana Lima", "4321")
    first_id = link.queue(desk.slide_id, 1)
    link.sweep()
    listener.answer = lambda cid: "AE" if cid == first_id else "AA"  # the LIS chokes on the first patient only
    assert link.deliver() == 1
    states = {r["slide_id"]: r["state"] for r in link.log_rows()}
    assert states == {desk.slide_id: "pending", second.slide_id: "delivered"}
    for _ in range(MAX_ATTEMPTS + 2):  # the cap: it stops being retried, and says so
        with desk.store.transaction() as db:
            db.execute("UPDATE lis_outbox SET next_attempt = NULL")
        link.deliver()
    row = next(r for r in link.log_rows() if r["slide_id"] == desk.slide_id)
    assert row["state"] == "failed" and row["attempts"] == MAX_ATTEMPTS
    assert link.backlog() == {"pending": 0, "rejected": 1, "oldest_s": link.backlog()["oldest_s"]}
    desk.store.close()


def test_two_senders_on_one_store_deliver_each_message_once(desk, listener):
    listener.start()
    display, cli = _link(desk, listener.port), _link(desk, listener.port)
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    display.sweep()
    assert display.acquire() and not cli.acquire()
    with pytest.raises(SenderBusy):
        cli.deliver()
    assert display.deliver() == 1 and cli.log_rows()[0]["state"] == "delivered"
    display.release()
    assert cli.deliver() == 0 and len(listener.received) == 1
    cli.release()


def test_an_ack_for_another_message_is_not_a_delivery(desk):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(frame("MSH|^~\\&|LIS|LAB|ME|x|20260101||ACK|1|P|2.5.1\rMSA|AA|SOMETHING-ELSE\r"))

    threading.Thread(target=answer, daemon=True).start()
    link = _link(desk, port)
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    link.sweep()
    assert link.deliver() == 0
    row = link.log_rows()[0]
    assert row["state"] == "pending" and "not 'ME" in row["last_error"]
    server.close()


def test_no_listener_is_a_clear_error():
    with pytest.raises(LisError, match=r"cannot reach the LIS at 127\.0\.0\.1"):
        send_mllp("127.0.0.1", free_port(), "MSH|^~\\&|x\r", 1.0)


def test_drop_folder_gets_one_file_per_version(desk, tmp_path):
    folder = tmp_path / "lis-in"
    link = LisLink(desk.store, Target(drop_folder=folder))
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    link.sweep()
    assert link.deliver() == 1 and link.deliver() == 0
    (file,) = folder.iterdir()
    message = hl7.parse(file.read_bytes().decode())
    assert file.name == f"{message.segment('MSH')[10]}.hl7"
    assert not list(folder.glob(".*.part"))
