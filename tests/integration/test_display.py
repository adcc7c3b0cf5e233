"""The display page in a real headless browser (Playwright + Debian's chromium) against a real
mosquitto, a real `marrow-edge display` and a real appliance.

Screenshots go to the test's tmp folder, and also to $MARROW_SCREENSHOTS when it is set
(docs/display-*.png were made so)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli_helpers import ROOT
from tests.integration.browser import _screenshot, _spawn
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration

PAGE_STATE = """() => {
  const line = document.getElementById('slide-line');
  const rows = [...document.querySelectorAll('#classes tbody tr')];
  return {
    slide: line.dataset.slideId || null,
    fields: line.dataset.fields === undefined ? null : Number(line.dataset.fields),
    done: line.dataset.done === 'true',
    countable: Number(document.getElementById('progress-text').dataset.countable || -1),
    target_reached: document.getElementById('progress').dataset.reached === 'true',
    counts: Object.fromEntries(rows.map(r => [r.dataset.class, Number(r.querySelector('td.n').textContent)])),
  };
}"""


@pytest.fixture
def display(broker) -> Iterator[tuple[str, str]]:
    """`marrow-edge display` for device ``scope-1`` on a free port: yields (page url, device id)."""
    proc = _spawn("display", "--broker", broker.url, "--device-id", "scope-1", "--port", "0")
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("display: http://"), (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    yield line.split()[1], "scope-1"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


# Samples the page every 40 ms: the counted flash and the gate line must agree; boxes never on a moving view.
ONE_STATE_WATCH = """() => {
  const w = window.__watch = {samples: 0, counted_flashes: 0, contradictions: [], boxes_while_moving: 0, moving: 0};
  setInterval(() => {
    w.samples += 1;
    const banner = document.getElementById('banner');
    const line = document.getElementById('gate-line');
    const flashing = !banner.hidden && banner.classList.contains('counted');
    if (flashing) {
      w.counted_flashes += 1;
      if (line.dataset.decision !== 'accepted' || line.textContent.startsWith('Not counted')) {
        w.contradictions.push(banner.textContent + ' | ' + line.textContent);
      }
    }
    const view = document.getElementById('view');
    if (view.dataset.gate === 'moving') {
      w.moving += 1;
      if (view.dataset.boxes !== 'hidden') w.boxes_while_moving += 1;
    }
  }, 40);
}"""


def _tally_counts(tally: dict[str, Any]) -> dict[str, int]:
    return {share["class"]: share["count"] for share in tally["shares"]}


def test_the_page_shows_a_replayed_slide_as_published(broker, display, page, tmp_path, samples):
    from playwright.sync_api import expect

    url, device = display
    recorder = Recorder(broker.host, broker.port, "marrow/v1/#")
    page.goto(url)
    expect(page.locator("#state")).to_have_text("OFFLINE (never seen)")
    total = len(list(samples.glob("*.jpg")))
    app = _spawn(
        "run", "--source", str(samples), "--fps", "2", "--device-id", device,
        "--specimen-id", "BM-2026-0142", "--broker", broker.url,
        env={"MARROW_EDGE__COUNTING__TARGET_COUNT": "5"},  # reached late in the slide: the stop signal shows
    )  # fmt: skip
    expect(page.locator("#state")).to_have_text("● ONLINE", timeout=60_000)
    compared_mid_slide = 0
    reached_mid_slide = False
    shot = None
    while app.poll() is None:
        seen = page.evaluate(PAGE_STATE)
        tallies = {(t["slide_id"], t["fields"]): t for t in recorder.on("/tally")}
        tally = tallies.get((seen["slide"], seen["fields"]))
        if tally is not None and not seen["done"]:
            # What the page shows is exactly a tally the box published, while the slide is counted.
            assert seen["counts"] == _tally_counts(tally)
            assert seen["countable"] == tally["countable"]
            assert seen["target_reached"] is (tally["countable"] >= tally["target_count"] == 5)
            reached_mid_slide |= seen["target_reached"]
            compared_mid_slide += 1
            if shot is None and seen["fields"] == total - 1:  # late in the slide, still counting
                page.wait_for_timeout(300)  # let the counted-field flash show
                shot = _screenshot(page, tmp_path, "display-replay.png")
        time.sleep(0.1)
    assert app.returncode == 0, app.stderr.read()  # type: ignore[union-attr]
    (report,) = recorder.wait_for("/report")
    # Issue 19: a clean stop reads as finished, never as a fault over the result.
    expect(page.locator("#state")).to_have_text("FINISHED — appliance stopped")
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#slide-line")).to_have_attribute("data-done", "true")
    # Uncertain cells are said where the count is, as many as the report flags.
    if report["flagged"]:
        expect(page.locator("#flagged")).to_have_attribute("data-flagged", str(report["flagged"]))
        assert f"of {report['countable']} counted cells uncertain" in page.inner_text("#flagged")
    else:
        expect(page.locator("#flagged")).to_be_hidden()
    assert report["review_below"] == 0.70  # the default (edge/config: counting.review_below)
    # The disclaimer is on screen at 1280x800 without scrolling.
    box = page.locator("#disclaimer").bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800, box
    assert report["disclaimer"] in page.inner_text("#disclaimer")
    _screenshot(page, tmp_path, "display-finished.png")
    final = page.evaluate(PAGE_STATE)
    assert final["counts"] == _tally_counts(report) and final["fields"] == report["fields"] == total
    assert final["countable"] == report["countable"]
    assert compared_mid_slide >= 3 and shot is not None and reached_mid_slide
    assert not final["target_reached"]  # the slide is finished: no stop signal any more
    # The live view drew the counted fields' previews: each one's boxes are its field's cells.
    fields = {f["field_index"]: f for f in recorder.on("/field")}
    previews = [p for p in recorder.on("/preview") if p["counted"]]
    assert previews
    for preview in previews:
        cells = fields[preview["field_index"]]["cells"]
        assert [c["class"] for c in preview["cells"]] == [c["class"] for c in cells]
        # A cell left out says why (issue 19): stage 1 or a class that is never counted.
        for shown in preview["cells"]:
            assert (shown["why_not"] is None) is shown["countable"], shown
            assert shown["why_not"] is None or shown["why_not"].startswith(("stage 1", "not countable")), shown
        for shown, cell in zip(preview["cells"], cells, strict=True):
            assert shown["box"] == pytest.approx([v * preview["scale"] for v in cell["box"]], abs=0.1)
    assert page.locator("#view").get_attribute("data-seq") is not None
    rules = page.locator("#rules li").all_inner_texts()
    # Each rule the report decided is shown in words for its state (which states occur is the model's).
    decided = [r for r in report["rules"] if r["state"] != "not_applicable"]
    assert decided and len(rules) == len(decided), rules
    for rule in decided:
        words = {"indeterminate": "indeterminate: count about", "negative": "not suggested"}.get(rule["state"])
        assert words is None or any(words in shown for shown in rules), (rule, rules)
    # A tablet held upright: one column, nothing cut off sideways, the count and buttons reachable.
    page.set_viewport_size({"width": 800, "height": 1280})
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    for selector in ("#view", "#classes", "#start", "#stop"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 800, selector
    assert page.locator("#classes").bounding_box()["y"] > page.locator("#view").bounding_box()["y"]
    _screenshot(page, tmp_path, "display-tablet.png")
    recorder.close()


SCAN = "- [rest, 6]\n" + "".join(
    f"- [goto, {x}, {y}, 10]\n- [rest, 10]\n" for x, y in [(700, 0), (700, 600), (20, 600), (1400, 900)] * 3
)


def test_buttons_publish_commands_and_offline_shows(broker, display, page, tmp_path):
    from playwright.sync_api import expect

    url, device = display
    recorder = Recorder(broker.host, broker.port, "marrow/v1/#")
    script = tmp_path / "scan.yaml"
    script.write_text(SCAN)
    app = _spawn(
        "run", "--camera", f"sim:{script}", "--fps", "8", "--wait-for-start",
        "--device-id", device, "--broker", broker.url,
    )  # fmt: skip
    try:
        page.goto(url)
        page.evaluate(ONE_STATE_WATCH)
        expect(page.locator("#state")).to_have_text("● ONLINE", timeout=60_000)
        # the live view runs between slides: the technician places the slide before pressing Start
        expect(page.locator("#view")).to_have_attribute("data-seq", re.compile(r"\d+"), timeout=30_000)
        page.fill("#specimen", "BM-2026-0143")
        page.fill("#target", "2.5")
        page.click("#start")
        expect(page.locator("#reply")).to_have_text("The target must be a whole number of cells")
        assert not recorder.on("/cmd/start_slide")  # refused on the page: nothing was sent
        page.fill("#target", "40")
        page.click("#start")
        expect(page.locator("#reply")).to_have_attribute("data-ok", "true", timeout=10_000)
        (start,) = recorder.on("/cmd/start_slide")
        assert start["specimen_id"] == "BM-2026-0143" and start["target_count"] == 40 and start["request_id"]
        (started,) = recorder.wait_for("/cmd/start_slide/reply")
        assert started["ok"] and started["request_id"] == start["request_id"]

        tally = recorder.wait_for("/tally", timeout=60)[-1]  # the next still, new field is counted
        assert tally["specimen_id"] == "BM-2026-0143" and tally["target_count"] == 40
        expect(page.locator("#progress-text")).to_contain_text(" / 40 cells")
        expect(page.locator("#slide-line")).to_have_attribute("data-slide-id", tally["slide_id"])
        page.wait_for_function("n => document.getElementById('progress-text').dataset.countable >= n",
                               arg=tally["countable"])  # fmt: skip
        print(f"live view: {page.locator('#rates').get_attribute('data-view-fps')} frames/s on the page")
        _screenshot(page, tmp_path, "display-live.png")

        page.click("#stop")
        expect(page.locator("#reply")).to_have_text("Slide stopped: final report follows", timeout=10_000)
        (stop,) = recorder.on("/cmd/stop_slide")
        assert set(stop) == {"request_id"}
        (report,) = recorder.wait_for("/report", timeout=30)
        expect(page.locator("#slide-line")).to_have_attribute("data-done", "true")
        assert report["countable"] > 0  # the simulated microscope's slide is one the marrow bundle counts
        watched = page.evaluate("() => window.__watch")
        # One state at a time: never "COUNTED" over a gate line that says "Not counted"; no boxes on a moving view.
        assert watched["samples"] >= 10 and watched["counted_flashes"] >= 1, watched  # a sample at least every 40 ms
        assert watched["contradictions"] == [] and watched["boxes_while_moving"] == 0, watched
        assert page.evaluate(PAGE_STATE)["counts"] == _tally_counts(report)

        app.send_signal(signal.SIGKILL)  # the appliance dies: the broker sends its last will
        app.wait(timeout=10)
        expect(page.locator("#state")).to_have_text("OFFLINE", timeout=15_000)
        expect(page.locator("#banner")).to_have_text("Appliance offline — nothing is being counted")
        expect(page.locator("#start")).to_be_disabled()
        expect(page.locator("#stop")).to_be_disabled()
        _screenshot(page, tmp_path, "display-offline.png")
        broker.stop()  # the display loses its broker: the page must not look live
        expect(page.locator("#state")).to_have_text("NO BROKER", timeout=15_000)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        recorder.close()


def test_run_serves_the_display_in_process(broker, samples):
    """`run --display`: the demo's one process tree includes the page, on the run's own broker."""
    import json
    import urllib.request

    env = {**os.environ, "MARROW_EDGE__DISPLAY__PORT": "0"}
    app = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--source", str(samples), "--fps", "2", "--display",
         "--device-id", "demo-1", "--broker", broker.url, "--display-hold", "120"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = next(line.split()[1] for line in app.stdout if line.startswith("display: "))  # type: ignore[union-attr]
        state: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "tally" not in state:
            with urllib.request.urlopen(url + "api/state", timeout=5) as response:
                state = json.loads(response.read())
            time.sleep(0.2)
        assert state["status"]["state"] == "online" and state["status"]["device_id"] == "demo-1"
        assert state["tally"]["fields"] >= 1 and state["link"]["connected"] is True
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"/static/app.js" in response.read()
        # Issue 19: the slide ends, the page (and its result) stays until the user closes it.
        held = next(line for line in app.stdout if line.startswith("display: the finished slide stays"))  # type: ignore[union-attr]
        assert url in held and "for 120 s (Ctrl-C closes it sooner)" in held
        deadline = time.monotonic() + 20  # the stopped status reaches the page through the broker: not at once
        while time.monotonic() < deadline and (state["status"]["state"] != "stopped" or "report" not in state):
            with urllib.request.urlopen(url + "api/state", timeout=5) as response:
                state = json.loads(response.read())
            time.sleep(0.2)
        assert state["status"]["state"] == "stopped" and state["report"]["fields"] == len(list(samples.glob("*.jpg")))
        assert app.poll() is None  # still serving the finished slide
        app.send_signal(signal.SIGINT)
    finally:
        app.stdout.read()  # type: ignore[union-attr]
        assert app.wait(timeout=30) == 0, app.stderr.read()  # type: ignore[union-attr]


def _publish_tally(broker, device: str, tally, version: str, specimen: str) -> None:
    """The box online and one slide's tally, retained, as a marrow-bm box of ``version`` publishes them."""
    import paho.mqtt.publish as publish

    from edge.counting.tally import Slide
    from edge.mqtt.factory import MessageFactory
    from edge.mqtt.messages import BundleRef, Provenance, encode
    from edge.mqtt.topics import Topics

    provenance = Provenance(
        software_version="t",
        bundle=BundleRef(name="marrow-bm", version=version, hash="0" * 12, untrained=False,
                         trained_on="bone_marrow", clinical_use=False),
        backend="onnxruntime", providers=["CPUExecutionProvider"],
    )  # fmt: skip
    factory, topics = MessageFactory(device, provenance), Topics("marrow/v1", device)
    slide = Slide(specimen_id=specimen)
    for topic, message in (
        (topics.status, factory.status("online")),
        (topics.tally(slide.slide_id), factory.tally(slide, tally)),
    ):
        publish.single(topic, encode(message), qos=1, retain=True, hostname=broker.host, port=broker.port)


def test_a_shifted_slide_and_the_bundle_scope_are_shown_where_the_count_is(broker, display, page, tmp_path):
    """Issue 12: the domain-shift guard's verdict reaches the technician; issue 19: the bundle's scope badge."""
    import numpy as np

    from edge.analysis.field import Cell, FieldResult
    from edge.counting.rules import load_rule_pack
    from edge.counting.tally import Tally
    from edge.engines.bundle import ClassSpec, DomainGuardSpec

    url, device = display
    classes = [ClassSpec(name="blast", role="key"), ClassSpec(name="lymphocyte", role="wbc")]
    guard = DomainGuardSpec(mean=[0.3] * 6, inv_cov=np.eye(6).tolist(), max_colour_distance=0.5,
                            min_mean_confidence=0.5, min_cells=5)  # fmt: skip
    tally = Tally(classes, load_rule_pack(), target_count=300, domain_guard=guard)
    probs = np.array([0.9, 0.1], np.float32)
    cells = [Cell((0, 0, 9, 9), 0.9, "blast", 0.9, probs, 0.9, True, (1.5,) * 6) for _ in range(30)]
    tally.add(FieldResult(0, "f0.jpg", 100, 100, cells))
    assert tally.domain().shifted
    _publish_tally(broker, device, tally, "1.0.0", "BM-9")
    page.goto(url)
    page.wait_for_selector("#domain:not([hidden])", timeout=15000)
    warning = page.inner_text("#domain")
    assert "unlike the bundle's training data" in warning and "not reliable" in warning
    assert page.inner_text("#scope") == "NOT FOR CLINICAL USE"
    rules = page.inner_text("#rules")
    assert "acute_leukaemia indeterminate" in rules
    _screenshot(page, tmp_path, "display-domain-shift.png")


def test_a_barcode_scan_fills_the_specimen_id_and_typing_does_not(display, page):
    from playwright.sync_api import expect

    url, _ = display
    page.goto(url)
    page.keyboard.type("QX", delay=150)  # someone touching the keyboard: slow keys, no Enter
    page.keyboard.press("Enter")
    expect(page.locator("#specimen")).to_have_value("")
    page.keyboard.type("BM-2026-0999", delay=5)  # a keyboard-wedge scanner: fast keys, then Enter
    page.keyboard.press("Enter")
    expect(page.locator("#specimen")).to_have_value("BM-2026-0999")
    expect(page.locator("#reply")).to_have_text("Scanned specimen BM-2026-0999 — press Start slide")
    page.wait_for_timeout(300)  # a scan never starts a slide by itself: nothing was asked of the appliance
    expect(page.locator("#reply")).to_have_text("Scanned specimen BM-2026-0999 — press Start slide")


def test_the_scale_and_a_changed_cell_size_are_shown_where_the_count_is(broker, display, page, tmp_path):
    """Issue 46: the scale in use is on the display, and cells half the size the detector works at (an
    objective changed) hold the rules, in words."""
    import numpy as np

    from edge.analysis.field import Cell, FieldResult, FieldScale
    from edge.counting.rules import load_rule_pack
    from edge.counting.tally import Tally
    from edge.engines.bundle import ClassSpec, ScaleSpec

    url, device = display
    classes = [ClassSpec(name="blast", role="key"), ClassSpec(name="lymphocyte", role="wbc")]
    scale = ScaleSpec(um_per_px=0.0875, range_um_per_px=(0.087, 0.199), cell_side_px_p10=95, cell_side_px_median=150,
                      cell_side_px_p90=200, cell_side_px_max=220, cells=600, how="test")  # fmt: skip
    tally = Tally(classes, load_rule_pack(), target_count=300, scale=scale, um_per_px=0.0875)
    probs = np.array([0.9, 0.1], np.float32)
    cells = [Cell((k * 100.0, 0, k * 100.0 + 75, 75), 0.9, "blast", 0.9, probs, 0.9, True) for k in range(30)]
    tally.add(FieldResult(0, "f0.jpg", 3000, 100, cells, scale=FieldScale(0.0875, 1.0, 1)))
    _publish_tally(broker, device, tally, "2.0.2", "BM-46")
    page.goto(url)
    page.wait_for_selector("#scale[data-state='changed']", timeout=15000)
    line = page.inner_text("#scale")
    assert line.startswith("scale: 0.0875 um/px") and "0.50x the size the detector works at" in line
    assert "objective or camera changed" in page.inner_text("#domain")
    assert "acute_leukaemia indeterminate" in page.inner_text("#rules")
    _screenshot(page, tmp_path, "display-scale-changed.png")
