"""The review page in a real headless browser: a signed report the LIS rejected is shown where the
technician looks, and the login's ``next`` never leaves the box (every open-redirect form).

Screenshots go to the test's tmp folder, and to $MARROW_SCREENSHOTS when it is set
(docs/review-lis-rejected.png was made so)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from edge.config import AppConfig
from edge.display.server import Display
from edge.mqtt.broker import free_port
from edge.reports.lis import LisLink, Target
from tests.integration.browser import _screenshot
from tests.integration.lis_listener import LisListener
from tests.unit.review.slides import make_desk

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Display, Any]]:
    """A display (in this process) over a store with one slide signed and refused by a real MLLP listener."""
    desk = make_desk(tmp_path / "slides.sqlite")
    listener = LisListener(free_port(), ack_code="AR").start()
    link = LisLink(desk.store, Target("127.0.0.1", listener.port, timeout_s=5.0))
    desk.sign(desk.slide_id, "Ana Lima", "4321")
    link.sweep()
    assert link.deliver() == 0 and link.log_rows()[0]["state"] == "rejected"
    display = Display(AppConfig.model_validate({"display": {"port": 0}}), "127.0.0.1", 1, desk.store)
    thread = threading.Thread(target=display.server.serve_forever, daemon=True)
    thread.start()
    yield display, desk
    display.server.stop()
    listener.close()
    desk.store.close()


def test_a_rejected_lis_delivery_is_shown_on_the_review_page(served, page, tmp_path):
    display, desk = served
    page.goto(display.url + f"review?slide={desk.slide_id}")
    page.wait_for_selector("#lis:not([hidden])")
    text = page.text_content("#lis")
    assert "signed v1 REJECTED by the LIS: AR" in text and "send it again" in text
    assert "LIS REJECTED" in page.text_content("#slide-select")
    _screenshot(page, tmp_path, "review-lis-rejected.png")


def _log_in(page: Any, url: str) -> None:
    """Open the login page at ``url`` and sign in as the test's operator."""
    page.goto(url)
    page.fill("#login-name", "Ana Lima")
    page.fill("#login-pin", "4321")
    page.click("#login button[type=submit]")


@pytest.mark.parametrize(
    "target",
    ["/%5Cattacker.invalid/x", "//attacker.invalid/x", "https://attacker.invalid/", "/%09/attacker.invalid",
     "javascript:alert(1)", "/\\\\attacker.invalid"],
)  # fmt: skip
def test_the_login_never_sends_the_browser_off_the_box(served, page, target):
    display, _ = served
    base = display.url.rstrip("/")
    _log_in(page, f"{base}/login?next={target}")
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    assert page.url.startswith(base + "/"), page.url  # the page fixture also fails on any request elsewhere


def test_the_login_goes_back_where_the_user_was_going(served, page):
    display, desk = served
    base = display.url.rstrip("/")
    _log_in(page, f"{base}/login?next=/review%3Fslide%3D{desk.slide_id}")
    page.wait_for_url(f"{base}/review?slide={desk.slide_id}")
