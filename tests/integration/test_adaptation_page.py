"""The review page's "Adapt to this microscope" over HTTP: a store whose signed slide holds zheng2018 cells
(count-path crops in a field), the real bundle installed in a bundles folder, the real gate; activation
under the PIN installs the candidate in place of the base, and a rollback brings the base back."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.analysis.field import Cell, FieldResult
from edge.config import AppConfig
from edge.counting.rules import load_rule_pack
from edge.counting.tally import Slide, Tally
from edge.engines.bundle import load_bundle
from edge.engines.library import BundleLibrary
from edge.mqtt.factory import MessageFactory
from edge.review.desk import ReviewDesk
from edge.review.operators import Operators
from edge.review.recount import slide_setup
from edge.review.store import SlideStore
from tests.integration.browser import _screenshot
from tests.unit.display.test_review_api import _call, _login, _serve
from tests.unit.review.slides import PROVENANCE

pytestmark = pytest.mark.integration
TYPES = {"NEUTROPHIL": "neutrophilic_segmented", "LYMPHOCYTE": "lymphocyte", "MONOCYTE": "monocyte",
         "EOSINOPHIL": "eosinophil"}  # fmt: skip


def _signed_slide(store: SlideStore, bundle, crops_dir: Path) -> str:
    """One field: a row of count-path crops per cell, each cell's box where the count path cuts that crop."""
    crops, names = [], []
    for folder, name in TYPES.items():
        for path in sorted((crops_dir / folder).glob("*.png")):
            crops.append(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
            names.append(name)
    side, per_row = 128, 10
    rows = -(-len(crops) // per_row)
    image = np.full((rows * side, per_row * side, 3), 230, np.uint8)
    cells = []
    probs = np.full(len(bundle.class_names), 0.01, np.float32)
    for i, (crop, name) in enumerate(zip(crops, names, strict=True)):
        y, x = divmod(i, per_row)
        image[y * side : (y + 1) * side, x * side : (x + 1) * side] = crop
        half = side / 1.5 / 2  # box x (1 + 0.5) = the crop
        cx, cy = x * side + side / 2, y * side + side / 2
        cells.append(Cell((cx - half, cy - half, cx + half, cy + half), 0.9, name, 0.9, probs, 0.95, True))
    config = AppConfig()
    rules = load_rule_pack()
    setup = slide_setup(bundle.manifest.classes, rules, config.counting, None, side, 0.5, 0.5, 0.15)
    slide = Slide(specimen_id="SITE-1")
    store.begin(slide, setup, "box-1")
    result = FieldResult(0, "f0.png", image.shape[1], image.shape[0], cells)
    tally = Tally(bundle.manifest.classes, rules, 300)
    tally.add(result)
    store.add_field(slide, result, image)
    store.finish(slide, MessageFactory("box-1", PROVENANCE).report(slide, tally).model_dump(mode="json", by_alias=True))
    desk = ReviewDesk(store)
    desk.sign(slide.slide_id, "Ana Lima", "4321")
    return slide.slide_id


@pytest.fixture
def site_box(bundle_dir, shared_data, tmp_path):
    """(config, store, base bundle): the base installed as marrow-bm, a signed slide of dataset2's cells."""
    base = load_bundle(bundle_dir)
    if base.manifest.adaptation is None:
        pytest.skip("the shipped bundle carries no adaptation cells")
    source = shared_data / "zheng2018_wbc" / "dataset2"
    if not source.is_dir():
        pytest.skip("zheng2018_wbc missing from the shared data")
    from training.data.site_crops import write_site_crops

    write_site_crops(source, tmp_path / "crops", 20)
    bundles = tmp_path / "bundles"
    BundleLibrary(bundles).install(bundle_dir, "marrow-bm")
    store = SlideStore(tmp_path / "slides.sqlite")
    Operators(store).add("Ana Lima", "4321")
    _signed_slide(store, base, tmp_path / "crops")
    config = AppConfig.model_validate({"display": {"port": 0}, "bundles_dir": str(bundles), "bundle": "marrow-bm"})
    yield config, store, base
    store.close()


def test_adapt_from_the_review_page_then_activate_and_roll_back(site_box):
    config, store, base = site_box
    bundles = config.bundles_dir
    for display in _serve(config, store):
        assert _call(display, "GET", "/api/adaptation")[1]["state"] == "idle"
        assert _call(display, "POST", "/api/adaptation", {})[0] == 401  # signed in only
        cookie, csrf = _login(display)
        ok = {"Cookie": cookie, "X-CSRF-Token": csrf}
        assert _call(display, "POST", "/api/adaptation", {"corrected_only": "yes please"}, ok)[0] == 400
        status, body, _ = _call(display, "POST", "/api/adaptation", {}, ok)
        assert status == 202 and body["state"] == "running" and body["operator"] == "Ana Lima"
        assert _call(display, "POST", "/api/adaptation", {}, ok)[0] == 409  # one at a time
        deadline = time.monotonic() + 300
        while body["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            body = _call(display, "GET", "/api/adaptation")[1]
        assert body["state"] == "accepted", body  # measured: d2, 20 a type (docs/site-adaptation.md)
        assert body["cells_per_type"] == {"eosinophil": 12, "lymphocyte": 20, "monocyte": 15, "neutrophil": 20}
        assert {row["figure"] for row in body["table"]} >= {"blast_sensitivity", "site_accuracy"}
        assert load_bundle(bundles / "marrow-bm").manifest.version == base.manifest.version  # not yet
        assert _call(display, "POST", "/api/adaptation/activate", {"pin": "0000"}, ok)[0] == 403
        status, body, _ = _call(display, "POST", "/api/adaptation/activate", {"pin": "4321"}, ok)
        assert status == 200 and body["state"] == "activated" and "rollback" in body["note"]
        assert load_bundle(bundles / "marrow-bm").manifest.version == f"{base.manifest.version}+site.1"
        assert _call(display, "POST", "/api/adaptation/activate", {"pin": "4321"}, ok)[0] == 409
        assert not list((bundles / ".candidates").iterdir())
    assert BundleLibrary(bundles).rollback("marrow-bm").manifest.version == base.manifest.version


def test_the_review_page_adapts_and_activates_in_a_browser(site_box, page, tmp_path):
    config, store, base = site_box
    for display in _serve(config, store):
        page.goto(f"http://127.0.0.1:{display.server.server_address[1]}/review")
        page.fill("#login-name", "Ana Lima")
        page.fill("#login-pin", "4321")
        page.click("#login-button")
        page.wait_for_selector("#who:not([hidden])")
        page.click("#adapt-box summary")
        page.click("#adapt-start")
        page.wait_for_function("() => document.getElementById('adapt-state').textContent.startsWith('Accepted')",
                               timeout=300_000)  # fmt: skip
        assert "neutrophil 20" in page.text_content("#adapt-cells")
        rows = page.locator("#adapt-table tbody tr")
        assert rows.count() == 5 and "home blasts found" in rows.nth(1).text_content()
        page.locator("#adapt-activate").scroll_into_view_if_needed()
        _screenshot(page, tmp_path, "review-adapt-accepted.png")
        page.fill("#adapt-pin", "4321")
        page.click("#adapt-activate-button")
        page.wait_for_function("() => document.getElementById('adapt-state').textContent.includes('rollback')")
        assert page.is_hidden("#adapt-activate")
        page.locator("#adapt-table").scroll_into_view_if_needed()
        _screenshot(page, tmp_path, "review-adapt-activated.png")
    assert load_bundle(config.bundles_dir / "marrow-bm").manifest.version == f"{base.manifest.version}+site.1"
