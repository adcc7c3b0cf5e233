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
from edge.reports.lis import LisError, LisLink, Target, send_mllp
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
        while time.monotonic() < deadline and not any(r["attempts"] >= 2 for r in link.log_rows()):
            time.sleep(0.05)
        (row,) = link.log_rows()
        assert row["state"] == "pending" and row["attempts"] >= 2 and "cannot deliver" in row["last_error"]
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
    assert link.deliver() == 0 and link.deliver() == 0
    assert len(listener.received) == 2 and link.log_rows()[0]["state"] == "pending"
    listener.ack_code = "AA"
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
    with pytest.raises(LisError, match=r"cannot deliver to the LIS at 127\.0\.0\.1"):
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
