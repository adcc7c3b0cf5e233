"""The review routes of the display: who may change what, from where, and over what.

On loopback (the kiosk) the pages are open and review changes need an operator's session;
off loopback everything needs a login and TLS; every POST needs JSON, the session's CSRF token
and no foreign Origin."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import AppConfig
from edge.display.server import Display
from edge.errors import ConfigError
from edge.review.store import SlideStore
from tests.unit.review.slides import count_slide


def _serve(config: AppConfig, store: SlideStore) -> Iterator[Display]:
    display = Display(config, "127.0.0.1", 1, store)  # the broker is never reached: pages and review only
    thread = threading.Thread(target=display.server.serve_forever, daemon=True)
    thread.start()
    yield display
    display.server.stop()


@pytest.fixture
def kiosk(tmp_path) -> Iterator[tuple[Display, str]]:
    store = SlideStore(tmp_path / "slides.sqlite")
    slide = count_slide(store, [])
    from edge.review.operators import Operators

    Operators(store).add("Ana Lima", "4321")
    config = AppConfig.model_validate({"display": {"port": 0}})
    for display in _serve(config, store):
        yield display, slide.slide_id
    store.close()


def _call(display: Display, method: str, path: str, body: dict | None = None, headers: dict | None = None,
          context: ssl.SSLContext | None = None) -> tuple[int, dict, http.client.HTTPResponse]:  # fmt: skip
    port = display.server.server_address[1]
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        if context
        else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    )
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, data, {**sent, **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    kind = response.getheader("Content-Type") or ""
    return response.status, (json.loads(raw) if kind.startswith("application/json") else {}), response


def _login(display: Display, context: ssl.SSLContext | None = None) -> tuple[str, str]:
    status, body, response = _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "4321"}, context=context)
    assert status == 200, body
    cookie = response.getheader("Set-Cookie")
    return cookie.split(";", 1)[0], body["csrf"]


def test_the_kiosk_shows_the_review_and_changes_need_an_operator(kiosk):
    display, slide_id = kiosk
    assert _call(display, "GET", "/review")[0] == 200
    status, body, _ = _call(display, "GET", f"/api/slides/{slide_id}")
    assert status == 200 and body["slide"]["state"] == "finished"
    move = {"cells": [0], "to": "lymphocyte"}
    assert _call(display, "POST", f"/api/slides/{slide_id}/reclassify", move)[0] == 401
    assert _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "1111"})[0] == 401
    cookie, csrf = _login(display)
    _, _, response = _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "4321"})
    assert "HttpOnly" in response.getheader("Set-Cookie") and "SameSite=Strict" in response.getheader("Set-Cookie")
    # a session without its CSRF token, or from another site, changes nothing
    assert _call(display, "POST", f"/api/slides/{slide_id}/reclassify", move, {"Cookie": cookie})[0] == 403
    evil = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert _call(display, "POST", f"/api/slides/{slide_id}/reclassify", move, evil)[0] == 403
    assert display.store.audit(slide_id) == []
    ok = {"Cookie": cookie, "X-CSRF-Token": csrf}
    status, body, _ = _call(display, "POST", f"/api/slides/{slide_id}/reclassify", move, ok)
    assert status == 200 and body["changed"][0]["new"] == "lymphocyte"
    assert display.store.audit(slide_id)[0]["operator"] == "Ana Lima"
    status, body, _ = _call(display, "POST", f"/api/slides/{slide_id}/sign", {"pin": "4321"}, ok)
    assert status == 200 and body == {"version": 1, "status": "final"}
    # signed: a change without a reason is a conflict, not a silent edit
    status, body, _ = _call(display, "POST", f"/api/slides/{slide_id}/reclassify", {"cells": [1], "to": "monocyte"}, ok)
    assert status == 409 and "amendment" in body["error"]
    status, _, response = _call(display, "GET", f"/api/slides/{slide_id}/cells/0/crop.jpg")
    assert status == 200 and response.getheader("Content-Type") == "image/jpeg"
    assert _call(display, "GET", f"/api/slides/{slide_id}/cells/999/crop.jpg")[0] == 404
    assert _call(display, "GET", "/api/slides/no-such-slide")[0] == 404


def test_off_loopback_the_display_refuses_to_serve_without_tls_or_login(tmp_path):
    store = SlideStore(tmp_path / "s.sqlite")
    open_net = AppConfig.model_validate({"display": {"host": "0.0.0.0", "port": 0}})
    with pytest.raises(ConfigError, match="tls_cert"):
        Display(open_net, "127.0.0.1", 1, store)
    no_login = AppConfig.model_validate({"display": {"host": "0.0.0.0", "port": 0, "login": "never"}})
    with pytest.raises(ConfigError, match="off loopback"):
        Display(no_login, "127.0.0.1", 1, store)
    store.close()


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make the test certificate")
    cert, key = tmp_path / "display.pem", tmp_path / "display.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_off_loopback_every_page_needs_a_login_over_tls(tmp_path, certificate):
    cert, key = certificate
    store = SlideStore(tmp_path / "s.sqlite")
    from edge.review.operators import Operators

    Operators(store).add("Ana Lima", "4321")
    config = AppConfig.model_validate(
        {"display": {"host": "0.0.0.0", "port": 0, "tls_cert": str(cert), "tls_key": str(key)}}
    )
    client = ssl.create_default_context(cafile=str(cert))
    for display in _serve(config, store):
        assert display.url.startswith("https://")
        status, _, response = _call(display, "GET", "/", context=client)
        assert status == 303 and response.getheader("Location") == "/login?next=/"
        assert _call(display, "GET", "/api/state", context=client)[0] == 401
        assert _call(display, "GET", "/api/slides", context=client)[0] == 401
        assert _call(display, "GET", "/login", context=client)[0] == 200
        _, _, response = _call(display, "POST", "/api/login", {"name": "Ana Lima", "pin": "4321"}, context=client)
        assert "Secure" in response.getheader("Set-Cookie")
        cookie, _ = _login(display, client)
        assert _call(display, "GET", "/", headers={"Cookie": cookie}, context=client)[0] == 200
        assert _call(display, "GET", "/api/slides", headers={"Cookie": cookie}, context=client)[0] == 200
        with pytest.raises(ssl.SSLError):  # the page is never served in clear text
            _call(display, "GET", "/", context=ssl.create_default_context())  # not trusting the lab's certificate
    store.close()


def test_the_page_downloads_the_report_in_every_format(kiosk):
    display, slide_id = kiosk
    port = display.server.server_address[1]

    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    status, headers, body = get(f"/api/slides/{slide_id}/report.pdf?paper=letter")
    assert status == 200 and headers["content-type"] == "application/pdf" and body.startswith(b"%PDF")
    assert headers["content-disposition"] == 'attachment; filename="BM-1-preliminary-report.pdf"'
    assert b"/MediaBox [ 0 0 612 792 ]" in body  # Letter, in PDF points
    assert get(f"/api/slides/{slide_id}/report.pdf?inline=1")[1]["content-disposition"].startswith("inline")
    status, headers, body = get(f"/api/slides/{slide_id}/report.hl7")
    assert status == 200 and body.startswith(b"MSH|^~\\&|MARROW-EDGE|")
    status, headers, body = get(f"/api/slides/{slide_id}/report.fhir.json")
    assert headers["content-type"] == "application/fhir+json" and json.loads(body)["resourceType"] == "Bundle"
    assert get(f"/api/slides/{slide_id}/report.csv")[2].startswith(b"slide_id,specimen_id,status")
    assert get(f"/api/slides/{slide_id}/cells.csv")[2].count(b"\n") == 12  # header + 11 cells
    assert get("/api/slides/no-such-slide/report.pdf")[0] == 404
    assert get(f"/api/slides/{slide_id}/report.docx")[0] == 404
