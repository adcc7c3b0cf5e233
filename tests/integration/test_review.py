"""Technician review and sign-off in a real headless browser, against a real mosquitto, a real
appliance run and a real `marrow-edge display` sharing one slide store (issue 15).

Screenshots go to the test's tmp folder, and to $MARROW_SCREENSHOTS when it is set
(docs/review-*.png were made so)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import ROOT
from tests.integration.browser import _screenshot, _spawn
from tests.integration.subscriber import Recorder

pytestmark = pytest.mark.integration

DEVICE = "scope-r"
PIN = "2468"


@pytest.fixture
def counted(broker, samples, tmp_path) -> tuple[Path, str]:
    """A slide counted by the appliance into the store: (config file, slide id)."""
    config = tmp_path / "box.yaml"
    config.write_text(
        f"device_id: {DEVICE}\nmqtt:\n  url: {broker.url}\nreview:\n  store: {tmp_path / 'slides.sqlite'}\n"
        "display:\n  port: 0\n"
    )
    add = subprocess.run(
        [sys.executable, "-m", "edge.cli", "review", "--config", str(config), "operator", "add", "Ana Lima",
         "--pin-stdin"],
        input=PIN + "\n", cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    run = _spawn("run", "--source", str(samples), "--max-fields", "3", "--config", str(config), "--specimen-id", "BM-7")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    slide_id = next(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("slide "))
    return config, slide_id


def _tray_cells(page: Any, tray: str) -> list[int]:
    return page.eval_on_selector_all(f'.tray[data-tray="{tray}"] .cell', "els => els.map(e => Number(e.dataset.id))")


def test_review_reclassify_sign_and_the_final_report_on_mqtt(broker, counted, page, tmp_path):
    config, slide_id = counted
    recorder = Recorder(broker.host, broker.port, f"marrow/v1/{DEVICE}/slide/+/+")
    display = _spawn("display", "--config", str(config))
    try:
        line = display.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("display: http://"), line
        url = line.split()[1]
        page.goto(url + "review")
        page.wait_for_selector(".cell")
        assert page.inner_text("#review-state") == "PRELIMINARY"
        assert " UTC " in page.inner_text("#slide-select option")  # times say their zone
        trays = page.eval_on_selector_all(".tray", "els => els.map(e => e.dataset.tray)")
        full = [t for t in trays if t != "not_countable" and len(_tray_cells(page, t)) >= 2]
        assert full, "a slide with a class of at least two cells"
        source = full[0]
        target = next(t for t in trays if t not in (source, "not_countable"))
        moved = _tray_cells(page, source)[:2]
        # before signing in, nothing can change
        page.click(f'.cell[data-id="{moved[0]}"]')
        page.keyboard.press(str(trays.index(target) + 1))
        page.wait_for_function("() => document.getElementById('message').textContent.includes('sign in')")
        page.fill("#login-name", "Ana Lima")
        page.fill("#login-pin", PIN)
        page.click("#login-button")
        page.wait_for_selector("#who:not([hidden])")
        # two cells to another class with a number key (the CellaVision habit)
        page.click(f'.cell[data-id="{moved[1]}"]')
        page.keyboard.press(str(trays.index(target) + 1))
        moved_in = f".tray[data-tray='{target}'] .cell.moved"
        page.wait_for_function(f'() => document.querySelectorAll("{moved_in}").length == 2')
        # one cell to not countable with the Move control
        rest = _tray_cells(page, source) or _tray_cells(page, target)
        junk = next(c for c in rest if c not in moved)
        page.click(f'.cell[data-id="{junk}"]')
        page.select_option("#move-to", "not_countable")
        page.click("#move-button")
        page.wait_for_selector(f'.tray[data-tray="not_countable"] .cell[data-id="{junk}"]')
        changed = page.eval_on_selector_all("#counts td.changed", "els => els.length")
        assert changed >= 1  # the reviewed column differs from the machine's
        page.dblclick(f'.cell[data-id="{moved[0]}"]')  # the cell in its field
        page.wait_for_selector("#zoom[open]")
        _screenshot(page, tmp_path, "review-zoom.png")
        page.click("#zoom-close")
        _screenshot(page, tmp_path, "review-page.png")
        page.fill("#sign-pin", PIN)
        page.click("#sign-button")
        page.wait_for_function("() => document.getElementById('review-state').textContent === 'SIGNED v1'")
        page.click("#audit-box summary")
        _screenshot(page, tmp_path, "review-signed.png")
        # the report links now give the signed report (the page's Print opens the PDF inline)
        assert page.inner_text("#report-status") == "signed v1"
        pdf = page.request.get(url + page.get_attribute("#report-print", "href").lstrip("/"))
        assert pdf.ok and pdf.headers["content-type"] == "application/pdf" and pdf.body().startswith(b"%PDF")
        assert pdf.headers["content-disposition"].startswith("inline")

        signed = recorder.wait_for(f"/slide/{slide_id}/signed", timeout=15)
        assert len(signed) == 1, recorder.messages
        report = signed[0]
        assert report["kind"] == "signed" and report["status"] == "final" and report["version"] == 1
        assert report["operator"] == "Ana Lima" and report["specimen_id"] == "BM-7"
        machine, reviewed = report["machine_counts"], report["counts"]
        assert reviewed.get(target, 0) == machine.get(target, 0) + 2
        assert reviewed.get(source, 0) == machine.get(source, 0) - 2 - (junk in _machine_tray(report, source, junk))
        assert report["countable"] == sum(machine.values()) - 1
        audit = [(a["action"], a["cell_id"], a["new"]) for a in report["audit"]]
        assert audit == [
            ("reclassify", moved[0], target), ("reclassify", moved[1], target), ("reclassify", junk, "not_countable"),
            ("sign", None, None),
        ]  # fmt: skip
        assert all(a["operator"] == "Ana Lima" for a in report["audit"])
        events = recorder.on(f"/slide/{slide_id}/review")  # one per move (the two cells moved together)
        assert [len(e["changes"]) for e in events] == [2, 1] and events[0]["operator"] == "Ana Lima"
        # the machine's own report is still there, unchanged
        assert recorder.wait_for(f"/slide/{slide_id}/report")[0]["counts"] == machine
    finally:
        recorder.close()
        display.send_signal(signal.SIGTERM)
        try:
            display.wait(timeout=10)
        except subprocess.TimeoutExpired:
            display.kill()


def _machine_tray(report: dict[str, Any], source: str, junk: int) -> list[int]:
    """[junk] when the junk cell came from ``source`` (then ``source`` lost three cells, not two)."""
    move = next(a for a in report["audit"] if a["cell_id"] == junk)
    return [junk] if move["old"] == source else []
