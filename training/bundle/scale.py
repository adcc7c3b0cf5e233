"""The scale a bundle's detector works at, measured from its training data and chosen on validation.

No training set here states its micrometres per pixel, so the scale is measured from the data:

1. PBC's pixel, from its red cells: TXL-PBC annotates every red cell of its fields, and its fields
   of PBC origin (the 360x363 CellaVision images) give the red cell's median box side in PBC
   pixels; a normal erythrocyte is 7.5 um across (the haematologist's internal standard).
2. matek_bm's pixel, from the same white-cell types in both sets: the nucleus-derived box
   (``training.data.cells.central_cell_box``) of segmented neutrophils, lymphocytes, eosinophils
   and monocytes, median per type; the median of the four matek/PBC ratios scales PBC's pixel.
3. The detector learned two scales: the composed marrow fields paste matek cells at 0.55-0.85 of
   their size and are fitted x0.8 (0.13-0.20 um/px at its input), TXL-PBC's PBC fields reach it at
   about 0.09 um/px. Where between them it finds marrow cells best is measured, not assumed: grids
   of matek_bm *validation* cells (``training.data.grids``) run through the re-exported detector
   over a ladder of scales, and the scale whose worst white-cell class is detected most often is
   the bundle's working scale. The detected cells' box sides there are what ``calibrate-scale``
   matches on a lab's fields.

    python -m training.bundle.scale --bundle models/marrow-bm --fields /work/exp/marrow_fields --version 2.0.2

re-exports the bundle's detector so it runs at the size it is given (``DetectorGraph(resize=False)``;
the appliance brings each field to the recorded scale itself, in tiles) and records the scale.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from edge.analysis.colour import white_balance
from edge.analysis.field import FieldAnalyzer
from edge.analysis.verify import iou_matrix
from edge.engines.bundle import ScaleSpec, load_bundle
from training.data.cells import central_cell_box
from training.data.compose import DATA
from training.data.grids import WHITE, GridOutcome, load_cells, measure
from training.data.readers import read_cell_folders, read_yolo

log = logging.getLogger(__name__)
ERYTHROCYTE_UM = 7.5
PBC_SIZE = (360, 363)  # CellaVision DM96 crops: TXL-PBC's fields of PBC origin
SAME_TYPES = {"NGS": "SNE", "LYT": "LY", "EOS": "EO", "MON": "MO"}  # matek code -> PBC code
COMPOSE_SCALE = (0.55, 0.85)  # training.data.compose.compose_field's default
FIT = 384 / 480  # the composed 640x480 fields fitted to the detector's 384 px short side
FACTORS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)  # detector pixels per matek pixel, tried on validation
JUNK_SLACK = 0.03  # NIF + ART counted: at most this much above the training margin's
PROVISIONAL_MAX_SIDE = 200.0  # tile overlap while the ladder runs: above the largest training box (170 px)


def pbc_um_per_px(data: Path = DATA) -> tuple[float, int]:
    """PBC's micrometres per pixel from the red cells TXL-PBC annotates on its PBC fields."""
    sides = []
    for record in read_yolo(data / "txl_pbc_detection"):
        if (record.width, record.height) != PBC_SIZE:
            continue
        sides += [max(b.x2 - b.x1, b.y2 - b.y1) for b in record.boxes if b.label.upper() == "RBC"]
    if len(sides) < 50:
        raise ValueError(f"only {len(sides)} red cells on PBC fields in {data / 'txl_pbc_detection'}")
    return ERYTHROCYTE_UM / float(np.median(sides)), len(sides)


def _box_sides(paths: list[Path]) -> np.ndarray:
    sides = []
    for path in paths:
        image = white_balance(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        box, found = central_cell_box(image)
        if found:
            sides.append(max(box[2] - box[0], box[3] - box[1]))
    return np.asarray(sides)


def matek_over_pbc(data: Path = DATA, every: int = 4) -> dict[str, float]:
    """Median cell box side in matek pixels over the same type's in PBC pixels, per type."""
    ratios = {}
    for matek, pbc in SAME_TYPES.items():
        m = _box_sides([s.image for s in read_cell_folders(data / "matek_bm", [matek])][::every])
        p = _box_sides([s.image for s in read_cell_folders(data / "pbc_cells", [pbc])][::every])
        ratios[matek] = float(np.median(m) / np.median(p))
    return ratios


def training_box_sides(fields: Path, split: str = "train") -> np.ndarray:
    """White-cell box sides of the composed marrow fields, in the detector's input pixels."""
    sides = []
    for record in read_yolo(fields):
        if record.split not in (split, None):
            continue
        fit = min(384 / min(record.width, record.height), 640 / max(record.width, record.height))
        sides += [max(b.x2 - b.x1, b.y2 - b.y1) * fit for b in record.boxes]
    if not sides:
        raise ValueError(f"no {split} boxes in {fields}")
    return np.asarray(sides)


def ladder(
    bundle_dir: Path, matek: float, factors: Sequence[float], data: Path = DATA, grid: int = 4, fields: int = 30
) -> list[GridOutcome]:
    """Validation grids at each detector factor (detector pixels per matek pixel)."""
    from edge.analysis.field_models import build_field_model
    from edge.config import AppConfig

    bundle = load_bundle(bundle_dir)
    # a provisional scale at matek's own pixel: asking for matek x f then gives the factor f
    provisional = ScaleSpec(
        um_per_px=matek, range_um_per_px=(matek, matek), cell_side_px_p10=1, cell_side_px_median=1,
        cell_side_px_p90=1, cell_side_px_max=PROVISIONAL_MAX_SIDE, cells=1, how="provisional",
    )  # fmt: skip
    bundle = replace(bundle, manifest=bundle.manifest.model_copy(update={"scale": provisional}))
    model, _ = build_field_model(bundle, AppConfig(bundle=bundle_dir))
    cells = load_cells(data, split="val")
    out = []
    for factor in factors:
        analyzer = FieldAnalyzer(bundle, model, um_per_px=matek * factor)
        out.append(measure(analyzer, cells, grid, um_per_px=matek / factor, fields=fields))
        log.info("factor %.2f: %s", factor, {k: round(v, 2) for k, v in out[-1].detected.items()})
    return out


def measure_scale(bundle_dir: Path, fields: Path, data: Path = DATA, factors: Sequence[float] = FACTORS) -> ScaleSpec:
    pbc, red_cells = pbc_um_per_px(data)
    ratios = matek_over_pbc(data)
    matek = pbc / float(np.median(list(ratios.values())))
    composed = (matek / (COMPOSE_SCALE[1] * FIT), matek / (COMPOSE_SCALE[0] * FIT))
    txl = pbc * PBC_SIZE[0] / 384  # TXL-PBC's PBC fields fitted to 384 px
    rungs = ladder(bundle_dir, matek, factors, data)
    worst = [min(o.detected.get(c, 0.0) for c in WHITE) for o in rungs]
    best = max(range(len(rungs)), key=lambda i: (round(worst[i], 2), np.mean([rungs[i].detected[c] for c in WHITE])))
    factor = factors[best]
    # every box found, as calibrate-scale sees a lab's fields (partial neighbours at the crops' edges too)
    sides = np.asarray(rungs[best].all_sides) * factor
    p10, median, p90 = (float(v) for v in np.percentile(sides, [10, 50, 90]))
    labelled = training_box_sides(fields)
    how = (
        f"PBC pixel {pbc:.4f} um from the median of {red_cells} red-cell boxes on TXL-PBC's PBC fields "
        f"(erythrocyte {ERYTHROCYTE_UM} um); matek_bm pixel {matek:.4f} um from the same white-cell types' "
        "median box sides (matek/PBC: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()) + "). "
        f"The detector learned composed marrow fields at {composed[0]:.3f}-{composed[1]:.3f} um/px "
        f"({len(labelled)} boxes, median side {np.median(labelled):.0f} px) and TXL-PBC's PBC fields at "
        f"{txl:.3f}; on 4x4 grids of matek_bm validation cells its worst white-cell class is detected most "
        f"often at {factor:g}x matek's pixel: {matek / factor:.4f} um/px. Cell sides: the {len(sides)} "
        "boxes the detector found on those grids there."
    )
    return ScaleSpec(
        um_per_px=round(matek / factor, 5),
        range_um_per_px=(round(txl, 5), round(composed[1], 5)),
        cell_side_px_p10=round(p10, 1),
        cell_side_px_median=round(median, 1),
        cell_side_px_p90=round(p90, 1),
        cell_side_px_max=round(float(sides.max()), 1),
        cells=len(sides),
        how=how,
        choice={
            "matek_um_per_px": round(matek, 5),
            "factors": list(factors),
            "worst_white_detected": [round(w, 3) for w in worst],
            "detected": [{k: round(v, 3) for k, v in o.detected.items()} for o in rungs],
            "validation_cells": sum(rungs[best].cells.values()),
        },
    )


def composed_rates(analyzer: FieldAnalyzer, aliases: dict[str, str], data: Path = DATA) -> dict[str, dict[str, float]]:
    """Composed marrow fields of validation cells (the detector's own kind of field, fitted): per code the share
    counted and the share counted as its own class; a cell is its field's box matched at IoU >= 0.3."""
    from training.data.compose import compose_field, load_patches, matek_splits

    patches = load_patches(matek_splits(data)["val"])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(patches))
    seen: dict[str, int] = defaultdict(int)
    counted: dict[str, int] = defaultdict(int)
    right: dict[str, int] = defaultdict(int)
    for start in range(0, len(order), 7):
        image, boxes, codes = compose_field([patches[i] for i in order[start : start + 7]], rng)
        result = analyzer(image)
        found = np.array([c.box for c in result.cells], np.float32).reshape(-1, 4)
        overlap = iou_matrix(boxes, found)
        for t, code in enumerate(codes):
            seen[code] += 1
            if overlap.shape[1] and overlap[t].max() >= 0.3:
                cell = result.cells[int(overlap[t].argmax())]
                counted[code] += cell.countable
                right[code] += cell.countable and cell.class_name == aliases.get(code)
    return {"counted": {c: counted[c] / seen[c] for c in seen}, "right": {c: right[c] / seen[c] for c in seen}}


def choose_margin(bundle_dir: Path, margins: Sequence[float], data: Path = DATA) -> tuple[float, dict]:
    """The count path's crop margin, on validation cells in both kinds of field (4x4 grids at the bundle's
    scale, composed fields fitted): the margin whose worst white-cell class is most often counted as itself,
    among those counting at most ``JUNK_SLACK`` more not-countable cells (NIF, ART) than the training margin."""
    from edge.analysis.field_models import build_field_model
    from edge.config import AppConfig

    bundle = load_bundle(bundle_dir)
    scale = bundle.manifest.scale
    trained = bundle.manifest.classifier.crop_margin
    margins = sorted({*margins, trained})  # the training margin is the baseline
    aliases = {a: c.name for c in bundle.manifest.classes for a in (c.name, *c.aliases)}
    cells = load_cells(data, split="val")
    rows = {}
    for margin in margins:
        model, _ = build_field_model(bundle, AppConfig(bundle=bundle_dir, analysis={"crop_margin": margin}))
        grid = measure(FieldAnalyzer(bundle, model, um_per_px=scale.um_per_px if scale else None), cells, 4,
                       aliases=aliases)  # fmt: skip
        composed = composed_rates(FieldAnalyzer(bundle, model), aliases, data)
        junk = [grid.counted.get(c, 0) for c in ("NIF", "ART")]
        junk += [composed["counted"].get(c, 0) for c in ("NIF", "ART")]
        worst = min(min(grid.right[c] for c in WHITE), min(composed["right"][c] for c in WHITE))
        rows[margin] = {
            "worst_right": round(worst, 3),
            "junk_counted": round(float(np.mean(junk)), 3),
            "grid_right": {c: round(grid.right[c], 3) for c in WHITE},
            "composed_right": {c: round(composed["right"][c], 3) for c in WHITE},
        }
        log.info("margin %.2f: %s", margin, rows[margin])
    base = rows[trained]["junk_counted"]
    allowed = [m for m in margins if rows[m]["junk_counted"] <= base + JUNK_SLACK]
    return max(allowed, key=lambda m: rows[m]["worst_right"]), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="re-exported and recorded in place")
    parser.add_argument("--fields", type=Path, required=True, help="the composed marrow fields (training.compose)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--version", required=True, help="the bundle's new version")
    parser.add_argument("--margins", help="also choose the count path's crop margin among these, e.g. 0.2,0.3,0.5")
    parser.add_argument("--margin-only", action="store_true", help="keep the recorded scale; choose the margin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from build_engines.rescale import record_margin, record_scale, reexport_detector

    if not args.margin_only:
        if load_bundle(args.bundle).manifest.detector.graph_resizes:
            reexport_detector(args.bundle)
        scale = measure_scale(args.bundle, args.fields, args.data)
        log.info("%s", scale.model_dump_json(indent=1))
        record_scale(args.bundle, scale, args.version)
    if args.margins:
        margin, rows = choose_margin(args.bundle, [float(m) for m in args.margins.split(",")], args.data)
        record_margin(args.bundle, margin, {"rule": choose_margin.__doc__.split("\n\n")[0], "validation": rows},
                      args.version)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
