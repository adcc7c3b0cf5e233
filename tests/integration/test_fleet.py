"""The fleet page in a real headless browser against a real mosquitto and a real `marrow-edge fleet`,
with three simulated boxes (``benchmarks.fleet``: the box's own publisher, last will and command
handling; scripted counting): one counting, one stopped, one killed.

The screenshot goes to $MARROW_SCREENSHOTS when set (docs/fleet.png was made so)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli_helpers import ROOT
from tests.integration.browser import _screenshot, _spawn
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration

HEALTH_S = 1.0  # the boxes' health period
FIELD_S = 1.0  # a field every second
PIN = "4711"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

CARD = """(id) => {
  const card = document.querySelector(`.card[data-device="${id}"]`);
  if (!card) return null;
  return {
    state: card.dataset.state,
    cells: card.querySelector('.cells').textContent,
    blast: card.querySelector('.blast').textContent,
    call: card.querySelector('.rules .call') ? card.querySelector('.rules .call').textContent : null,
    rules: Object.fromEntries([...card.querySelectorAll('.rules li[data-rule]')]
      .map(li => [li.dataset.rule, li.className])),
    lis: card.querySelector('.lis').textContent,
    health: card.querySelector('.health').textContent,
    reply: card.querySelector('.reply').textContent,
  };
}"""


def _box(broker_url: str, device_id: str, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleet", "box", "--broker", broker_url, "--device-id", device_id,
         "--health-s", str(HEALTH_S), "--field-s", str(FIELD_S), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith(f"box: {device_id} online"), (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    return proc


@pytest.fixture
def fleet(broker, tmp_path) -> Iterator[str]:
    """`marrow-edge fleet` on a free port, operators from their own store: yields the page url."""
    store = tmp_path / "fleet-operators.sqlite"
    add = subprocess.run(
        [sys.executable, "-m", "edge.cli", "review", "--store", str(store), "operator", "add", "Ana Lima",
         "--pin-stdin"],
        input=PIN + "\n", cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    config = tmp_path / "fleet.yaml"
    config.write_text(f"fleet:\n  operators: {store}\n  review_url: https://{{device_id}}.lab.example:8080/review\n")
    proc = _spawn("fleet", "--broker", broker.url, "--config", str(config), "--port", "0")
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("fleet: http://"), (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    yield line.split()[1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with DIRECT.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_card(page: Any, device_id: str, check, timeout: float) -> tuple[float, dict[str, Any]]:
    """Poll the card until ``check(card)``; (seconds it took, the card)."""
    start = time.monotonic()
    card = None
    while time.monotonic() - start < timeout:
        card = page.evaluate(CARD, device_id)
        if card is not None and check(card):
            return time.monotonic() - start, card
        time.sleep(0.05)
    raise AssertionError(f"{device_id}: card never matched within {timeout:g} s; last seen {card}")


def test_three_boxes_counting_stopped_killed(broker, fleet, page, tmp_path):
    recorder = Recorder(broker.host, broker.port, "marrow/v1/box-a/current")
    names = ("box-a", "box-b", "box-c", "box-d")
    boxes = {name: _box(broker.url, name, *(["--idle"] if name == "box-a" else [])) for name in names}
    try:
        page.goto(fleet)
        for name in boxes:
            _wait_card(page, name, lambda c: c["state"] == "online", 5)
        # read-only: no controls, and the API refuses a command without a signed-in operator
        assert page.locator('.card[data-device="box-a"] .control').is_hidden()
        status, body = _post(fleet + "api/boxes/box-a/command/stop_slide", {})
        assert status == 401 and "sign in" in body["error"]
        assert page.get_attribute('.card[data-device="box-a"] .review-link', "href") == (
            "https://box-a.lab.example:8080/review"
        )

        for name in ("box-b", "box-c", "box-d"):  # a slide under way on each
            _wait_card(page, name, lambda c: c["cells"][:1] not in ("", "0"), 5)
        boxes["box-b"].send_signal(signal.SIGTERM)  # a clean exit
        assert boxes["box-b"].wait(timeout=10) == 0
        took, _ = _wait_card(page, "box-b", lambda c: c["state"] == "stopped", HEALTH_S)
        killed_at = time.monotonic()
        boxes["box-c"].kill()  # killed: its socket closes, the broker sends the last will at once
        boxes["box-c"].wait(timeout=10)
        _, card_c = _wait_card(page, "box-c", lambda c: c["state"] == "offline", HEALTH_S)
        assert "last will" in page.inner_text('.card[data-device="box-c"] .why')
        # hung (or cut off behind a bridge): the socket stays open and the broker waits out its keep-alive
        # (7.5 s); the fleet calls it offline once it misses its health message (1.25 periods) instead
        frozen_at = time.monotonic()
        boxes["box-d"].send_signal(signal.SIGSTOP)
        _wait_card(page, "box-d", lambda c: c["state"] == "offline", 3 * HEALTH_S)
        silent_for = time.monotonic() - frozen_at
        assert silent_for <= 2 * HEALTH_S, silent_for
        assert "silent" in page.inner_text('.card[data-device="box-d"] .why')
        assert (time.monotonic() - killed_at) < 7.5  # sooner than the broker's last will would have said it

        # an operator signs in; start on the idle box, the box's own reply shown on its card
        page.goto(fleet + "login?next=/")
        page.fill("#login-name", "Ana Lima")
        page.fill("#login-pin", PIN)
        page.click("#login-button")
        page.wait_for_selector('.card[data-device="box-a"] .control:not([hidden])')
        # the page notes when each slide call first shows (its own clock; the recorder's is the same machine's)
        page.evaluate("""() => { window.__calls = {}; setInterval(() => {
            const li = document.querySelector('.card[data-device="box-a"] .rules .call');
            if (li && !(li.textContent in window.__calls)) window.__calls[li.textContent] = Date.now() / 1000;
        }, 20); }""")
        page.fill('.card[data-device="box-a"] .specimen', "BM-FLEET-1")
        page.click('.card[data-device="box-a"] .start')
        _wait_card(page, "box-a", lambda c: "accepted start_slide" in c["reply"], 5)

        # a rule crossing shows within one field: before the box's next current message
        deadline = time.monotonic() + 20
        crossing = None
        while crossing is None and time.monotonic() < deadline:
            with recorder._lock:
                crossing = next(
                    (m for m in recorder.messages if m.payload.get("rule_state") == "positive" and not m.retain), None
                )
            time.sleep(0.05)
        assert crossing is not None, "the simulated slide never crossed its rule"
        arrived = time.time()  # within 50 ms of its arrival at the recorder
        _wait_card(page, "box-a", lambda c: c["call"] == "Slide call: POSITIVE", FIELD_S)
        shown = page.evaluate("() => window.__calls['Slide call: POSITIVE']")
        assert shown - arrived < FIELD_S, (shown, arrived)

        # the counting card's numbers are the box's current-slide topic
        recorder.wait_for("current", 6)
        newest = recorder.on("current")[-1]
        _, card = _wait_card(
            page, "box-a", lambda c: c["cells"].startswith(f"{recorder.on('current')[-1]['cells_counted']} /"), FIELD_S
        )
        newest = next(m for m in reversed(recorder.on("current")) if card["cells"].startswith(f"{m['cells_counted']} "))
        assert card["cells"] == f"{newest['cells_counted']} / {newest['target_count']} cells"
        low, high = newest["intervals"]["blast"]
        assert card["blast"] == f"Blasts {newest['percent']['blast']:.1f}% (95% CI {low:.1f}-{high:.1f}%)"
        assert card["rules"] == {rule: state for rule, state in newest["rules"].items()}
        assert card["lis"] == "LIS: 0 pending · 0 rejected" and "Disk free" in card["health"]
        _screenshot(page, tmp_path, "fleet.png")

        # stop from the page: the box finishes the slide and says so
        page.click('.card[data-device="box-a"] .stop')
        _wait_card(page, "box-a", lambda c: "accepted stop_slide" in c["reply"], 5)
        page.wait_for_function(
            """() => document.querySelector('.card[data-device="box-a"] .slide-line')
                .textContent.startsWith('Finished')"""
        )
        # a verb the fleet does not send, even signed in
        csrf = page.evaluate("async () => (await (await fetch('/api/session')).json()).csrf")
        answer = page.evaluate(
            """async (csrf) => { const r = await fetch('/api/boxes/box-a/command/set_target', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: '{"target_count": 5}'});
            return [r.status, (await r.json()).error]; }""",
            csrf,
        )
        assert answer[0] == 400 and "start_slide and stop_slide only" in answer[1]
        assert took <= HEALTH_S and card_c["state"] == "offline"

        # the lab broker goes away: the page says so and keeps every card's last known state
        broker.stop()
        page.wait_for_function("() => document.getElementById('link').dataset.connected === 'false'", timeout=10_000)
        assert "NO BROKER" in page.inner_text("#link")
        assert page.locator(".card").count() == 4
    finally:
        recorder.close()
        for proc in boxes.values():
            if proc.poll() is None:
                proc.kill()  # the frozen one's clean exit is not under test
                proc.wait(timeout=10)


def test_fleet_off_loopback_needs_tls(tmp_path):
    from edge.config import AppConfig
    from edge.errors import ConfigError
    from edge.fleet.app import Fleet

    with pytest.raises(ConfigError, match=r"fleet\.host 0\.0\.0\.0 is off loopback: set fleet\.tls_cert"):
        Fleet(AppConfig.model_validate({"fleet": {"host": "0.0.0.0", "port": 0}}))
    with pytest.raises(ConfigError, match="does not exist"):
        Fleet(AppConfig.model_validate({"fleet": {"port": 0, "operators": str(tmp_path / "none.sqlite")}}))
