"""The fleet page's server against careless and hostile clients, without a broker: the same guard
as the box's review page (login where required, foreign Host names, CSRF, bodies), read-only
until an operator signs in."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from edge.config import AppConfig
from edge.fleet.app import Fleet
from edge.review.operators import Operators
from edge.review.store import SlideStore
from tests.unit.display.test_review_api import _call, _login


def _serve(config: AppConfig) -> Iterator[Fleet]:
    fleet = Fleet(config)  # the broker (port 1) is never reached: pages and refusals only
    thread = threading.Thread(target=fleet.server.serve_forever, daemon=True)
    thread.start()
    yield fleet
    fleet.server.stop()
    if fleet.store is not None:
        fleet.store.close()


@pytest.fixture
def operators(tmp_path):
    path = tmp_path / "fleet-operators.sqlite"
    store = SlideStore(path)
    Operators(store).add("Ana Lima", "4321")
    store.close()
    return path


@pytest.fixture
def locked(operators) -> Iterator[Fleet]:
    """A fleet page that asks for a login (as off loopback)."""
    config = AppConfig.model_validate(
        {"mqtt": {"url": "mqtt://127.0.0.1:1"}, "fleet": {"port": 0, "login": "always", "operators": str(operators)}}
    )
    yield from _serve(config)


@pytest.fixture
def open_page(operators) -> Iterator[Fleet]:
    config = AppConfig.model_validate(
        {"mqtt": {"url": "mqtt://127.0.0.1:1"}, "fleet": {"port": 0, "operators": str(operators)}}
    )
    yield from _serve(config)


def test_with_a_login_nothing_but_the_login_is_served_to_a_stranger(locked):
    status, _, response = _call(locked, "GET", "/")
    assert status == 303 and response.getheader("Location") == "/login?next=/"
    for path in ("/api/fleet", "/events"):
        assert _call(locked, "GET", path)[0] == 401
    assert _call(locked, "GET", "/login")[0] == 200 and _call(locked, "GET", "/static/login.js")[0] == 200
    cookie, _ = _login(locked)
    status, body, _ = _call(locked, "GET", "/api/fleet", headers={"Cookie": cookie})
    assert status == 200 and body["boxes"] == [] and body["link"]["connected"] is False


def test_read_only_until_signed_in_and_commands_need_the_csrf_token(open_page):
    assert _call(open_page, "GET", "/")[0] == 200  # loopback: the page is open to read
    assert _call(open_page, "GET", "/api/fleet")[0] == 200
    assert _call(open_page, "POST", "/api/boxes/box-1/command/stop_slide", {})[0] == 401
    cookie, csrf = _login(open_page)
    assert _call(open_page, "POST", "/api/boxes/box-1/command/stop_slide", {}, {"Cookie": cookie})[0] == 403
    evil = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert _call(open_page, "POST", "/api/boxes/box-1/command/stop_slide", {}, evil)[0] == 403
    signed = {"Cookie": cookie, "X-CSRF-Token": csrf}
    status, body, _ = _call(open_page, "POST", "/api/boxes/box-1/command/stop_slide", {}, signed)
    assert status == 404 and "no box 'box-1'" in body["error"]
    status, body, _ = _call(open_page, "POST", "/api/boxes/box-1/command/stop_slide", {"pad": "x" * 5000}, signed)
    assert status == 413
    status, body, _ = _call(open_page, "GET", "/api/fleet", headers={"Host": "evil.example"})
    assert status == 400 and "own name or address" in body["error"]
    assert _call(open_page, "GET", "/static/../../etc/passwd")[0] == 404
    assert _call(open_page, "GET", "/static/app.js")[0] == 404  # the display's live page is not the fleet's


def test_without_operators_nobody_can_sign_in(tmp_path):
    config = AppConfig.model_validate({"mqtt": {"url": "mqtt://127.0.0.1:1"}, "fleet": {"port": 0}})
    for fleet in _serve(config):
        status, _, _ = _call(fleet, "POST", "/api/login", {"name": "Ana Lima", "pin": "4321"})
        assert status == 401 and _call(fleet, "GET", "/")[0] == 200
