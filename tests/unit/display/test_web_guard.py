"""The display's web server against hostile and careless clients: foreign Host names (DNS rebinding),
half-open and slow connections, broken Content-Length, sessions of removed operators or changed PINs,
PIN guessing, and a sign-off of a view that changed meanwhile."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from edge.config import AppConfig
from edge.display.server import Display
from edge.review.operators import MAX_FAILURES, Operators
from edge.review.store import SlideStore
from tests.unit.display.test_review_api import _call, _login, _serve
from tests.unit.review.slides import count_slide

READ_TIMEOUT_S = 1.0


@pytest.fixture
def box(tmp_path) -> Iterator[tuple[Display, str]]:
    store = SlideStore(tmp_path / "slides.sqlite")
    slide = count_slide(store, [])
    Operators(store).add("Ana Lima", "4321")
    config = AppConfig.model_validate({"display": {"port": 0, "read_timeout_s": READ_TIMEOUT_S}})
    for display in _serve(config, store):
        yield display, slide.slide_id
    store.close()


def _raw(display: Display, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send bytes as they are; everything the server answers until it closes (or ``wait_s``)."""
    with socket.create_connection(display.server.server_address, timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example"])
def test_a_request_for_a_foreign_host_name_is_refused(box, host):
    display, _ = box
    status, body, _ = _call(display, "GET", "/api/slides", headers={"Host": host})
    assert status == 400 and "own name or address" in body["error"]
    assert _call(display, "POST", "/api/command/start_slide", {}, headers={"Host": host})[0] == 400


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8080", "[::1]:8080", "192.168.1.20", socket.gethostname()])
def test_the_box_answers_under_its_own_names_and_addresses(box, host):
    display, _ = box
    assert _call(display, "GET", "/api/slides", headers={"Host": host})[0] == 200


def test_half_open_connections_are_closed_by_the_server_within_its_read_timeout(box):
    display, _ = box
    sockets = []
    for i in range(50):
        s = socket.create_connection(display.server.server_address, timeout=10)
        if i % 2:
            s.sendall(b"GET /api/slides HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a request, then nothing
        sockets.append(s)
    start = time.monotonic()
    closed = [s.recv(1024) == b"" for s in sockets]  # b"": the server closed it (a hang would time out)
    waited = time.monotonic() - start
    for s in sockets:
        s.close()
    assert all(closed) and waited < 10
    assert _call(display, "GET", "/api/slides")[0] == 200  # and it still serves


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b"10, 20"])
def test_a_broken_content_length_is_a_400_not_a_hang(box, length):
    display, _ = box
    request = (
        b"POST /api/command/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + length + b"\r\n\r\n{}"
    )
    answer = _raw(display, request)
    assert answer.startswith(b"HTTP/1.1 400")


def test_a_body_that_never_arrives_is_a_408(box):
    display, _ = box
    request = (
        b"POST /api/command/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    answer = _raw(display, request)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer


def test_removing_an_operator_or_changing_their_pin_ends_their_sessions(box):
    display, slide_id = box
    operators = Operators(display.store)
    cookie, csrf = _login(display)
    ok = {"Cookie": cookie, "X-CSRF-Token": csrf}
    move = {"cells": [0], "to": "lymphocyte"}
    assert _call(display, "POST", f"/api/slides/{slide_id}/reclassify", move, ok)[0] == 200
    operators.add("Ana Lima", "8765")  # a new PIN (the CLI, another process, would do the same)
    assert _call(display, "POST", f"/api/slides/{slide_id}/reclassify", move, ok)[0] == 401
    assert _call(display, "GET", "/api/session", headers={"Cookie": cookie})[1]["operator"] is None
    _, body, response = _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "8765"})
    ok = {"Cookie": response.getheader("Set-Cookie").split(";", 1)[0], "X-CSRF-Token": body["csrf"]}
    assert _call(display, "GET", "/api/session", headers=ok)[1]["operator"] == "Ana Lima"
    operators.remove("Ana Lima")
    assert _call(display, "POST", f"/api/slides/{slide_id}/sign", {"pin": "8765"}, ok)[0] == 401


def test_pin_guessing_stops_the_guesser_not_the_technician_signing(box):
    display, slide_id = box
    cookie, csrf = _login(display)  # the technician, signed in before
    for _ in range(5):
        assert _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "0000"})[0] == 401
    status, body, response = _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "4321"})
    assert status == 429 and "try again" in body["error"] and response.getheader("Retry-After")
    for _ in range(MAX_FAILURES):  # guessing from everywhere at once locks the name for logins
        Operators(display.store).verify("Ana Lima", "0000")
    ok = {"Cookie": cookie, "X-CSRF-Token": csrf}
    status, body, _ = _call(display, "POST", f"/api/slides/{slide_id}/sign", {"pin": "4321"}, ok)
    assert status == 200 and body == {"version": 1, "status": "final"}


def test_wrong_pins_at_sign_off_end_the_session(box):
    display, slide_id = box
    cookie, csrf = _login(display)
    ok = {"Cookie": cookie, "X-CSRF-Token": csrf}
    answers = [_call(display, "POST", f"/api/slides/{slide_id}/sign", {"pin": "0000"}, ok)[0] for _ in range(5)]
    assert answers == [403, 403, 403, 403, 401]
    assert _call(display, "POST", f"/api/slides/{slide_id}/sign", {"pin": "4321"}, ok)[0] == 401


def test_a_sign_off_of_a_stale_view_is_a_409(box):
    display, slide_id = box
    cookie, csrf = _login(display)
    ok = {"Cookie": cookie, "X-CSRF-Token": csrf}
    seen = _call(display, "GET", f"/api/slides/{slide_id}")[1]["revision"]
    status, body, _ = _call(display, "POST", f"/api/slides/{slide_id}/reclassify", {"cells": [0], "to": "monocyte"}, ok)
    assert status == 200 and body["revision"] == seen + 1
    status, body, _ = _call(display, "POST", f"/api/slides/{slide_id}/sign", {"pin": "4321", "revision": seen}, ok)
    assert status == 409 and "reload" in body["error"]
    sign = {"pin": "4321", "revision": seen + 1}
    assert _call(display, "POST", f"/api/slides/{slide_id}/sign", sign, ok)[0] == 200


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"cells": "all", "to": "monocyte"}, "cells"),
        ({"cells": [0], "to": "monocyte", "extra": 1}, "extra"),
        ({"cells": [], "to": "monocyte"}, "cells"),
    ],
)
def test_a_malformed_review_request_says_what_is_wrong(box, body, why):
    display, slide_id = box
    cookie, csrf = _login(display)
    status, answer, _ = _call(
        display, "POST", f"/api/slides/{slide_id}/reclassify", body, {"Cookie": cookie, "X-CSRF-Token": csrf}
    )
    assert status == 400 and why in answer["error"]


def test_the_api_is_described_by_openapi_and_the_copy_in_schemas_is_current(box):
    from edge.display.openapi import OPENAPI_FILE, document

    display, _ = box
    status, served, _ = _call(display, "GET", "/api/openapi.json")
    assert status == 200 and "/api/slides/{slide_id}/sign" in served["paths"]
    assert served["components"]["schemas"]["SignIn"]["properties"]["revision"]
    assert json.loads(OPENAPI_FILE.read_text()) == document(), "run python -m edge.display.openapi"


def test_a_store_broken_under_the_running_display_answers_503_with_one_clear_line(box, tmp_path):
    display, slide_id = box
    path = tmp_path / "slides.sqlite"
    path.unlink()
    path.write_bytes(b"\0garbage" * 4096)  # a foreign file where the store was
    status, body, _ = _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "4321"})
    assert status == 503 and "slides.sqlite" in body["error"] and "replaced" in body["error"], body
    assert "Traceback" not in body["error"]
    status, body, _ = _call(display, "GET", f"/api/slides/{slide_id}")
    assert status == 503 and "restart the service" in body["error"]
