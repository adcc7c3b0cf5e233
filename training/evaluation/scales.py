"""Slide fields of every size and optical scale: the same held-back cells counted through the appliance
when it fits each field to the detector's input (as before issue 46), when it is told the true scale,
and when it measured the scale itself with calibrate-scale on the first fields.

    marrow-edge validate-slides --bundle models/marrow-bm --grids 2,3,4,6 --optical 0.5,1,2

matek_bm's native pixel is estimated in ``training.bundle.scale`` (the bundle records it); a grid at
optical scale s is then at that pixel / s, the truth each mode is measured against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.compose import DATA
from training.data.grids import CLASSES, TILE, WHITE, GridOutcome, grid_field, load_cells, measure

log = logging.getLogger(__name__)
CALIBRATION_FIELDS = 8  # 4x4 grids: about 130 cells, what a technician's first fields give


@dataclass
class ScaleCheck:
    optical: float
    truth: float  # um per pixel
    estimate: float
    low: float
    high: float

    @property
    def error(self) -> float:
        return self.estimate / self.truth - 1


def validate_grids(
    bundle_dir: Path,
    grids: Sequence[int] = (2, 3, 4, 6),
    opticals: Sequence[float] = (0.5, 1.0, 2.0),
    data: Path = DATA,
    fields: int | None = None,
) -> tuple[list[GridOutcome], list[ScaleCheck]]:
    """Every grid size at every optical scale, in three modes: fitted, true scale, calibrated."""
    from edge.analysis.calibrate import calibrate
    from edge.analysis.colour import white_balance
    from edge.analysis.field import FieldAnalyzer
    from edge.analysis.field_models import build_field_model, reference_model
    from edge.config import AppConfig
    from edge.engines.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    scale = bundle.manifest.scale
    if scale is None or "matek_um_per_px" not in scale.choice:
        raise ValueError(f"bundle {bundle.manifest.name} records no scale measured on matek_bm (training.bundle.scale)")
    native = float(scale.choice["matek_um_per_px"])
    config = AppConfig(bundle=bundle_dir)
    model, _ = build_field_model(bundle, config)
    cells = load_cells(data)
    order = np.random.default_rng(1).permutation(len(cells))  # the calibration's fields: others than measure's
    detector = reference_model(bundle, config.analysis).detector  # calibrate-scale's own (ONNX Runtime, CPU)
    outcomes, checks = [], []
    for optical in opticals:
        truth = native / optical
        first = [grid_field([cells[i] for i in order[k * 16 : (k + 1) * 16]], 4, optical)[0]
                 for k in range(CALIBRATION_FIELDS)]  # fmt: skip
        if bundle.manifest.colour_normalisation == "background":
            first = [white_balance(f) for f in first]
        found = calibrate(detector, scale, first)
        checks.append(ScaleCheck(optical, truth, found.um_per_px, found.low, found.high))
        log.info("optical %gx: calibrated %s against %.4f", optical, found.sentence(), truth)
        for grid in grids:
            for um in (None, truth, found.um_per_px):
                analyzer = FieldAnalyzer(bundle, model, um_per_px=um, tile=config.analysis.tile_px)
                outcomes.append(measure(analyzer, cells, grid, optical, um, fields))
                log.info("%s", table([outcomes[-1]]).splitlines()[-1])
    return outcomes, checks


def table(outcomes: Sequence[GridOutcome], codes: Sequence[str] = CLASSES) -> str:
    """Markdown: per field, the detected / counted share of each class."""
    head = "| field | optical | scale given | tiles | " + " | ".join(codes) + " | blast share error | ms/field |"
    lines = [head, "|" + "---|" * (len(codes) + 6)]
    for o in outcomes:
        rates = " | ".join(f"{o.detected.get(c, 0):.2f} / {o.counted.get(c, 0):.2f}" for c in codes)
        given = "fitted" if o.um_per_px is None else f"{o.um_per_px:.4f} um/px"
        lines.append(
            f"| {o.grid}x{o.grid} ({round(o.grid * TILE * o.optical)} px) | {o.optical:g}x | {given} | {o.tiles} | "
            f"{rates} | {o.blast_share_error:+.1f} | {o.ms_per_field:.0f} |"
        )
    return "\n".join(lines)


def calibration_table(checks: Sequence[ScaleCheck]) -> str:
    lines = ["| optical | true um/px | calibrated (95% interval) | error |", "|---|---|---|---|"]
    lines += [
        f"| {c.optical:g}x | {c.truth:.4f} | {c.estimate:.4f} ({c.low:.4f}-{c.high:.4f}) | {100 * c.error:+.1f}% |"
        for c in checks
    ]
    return "\n".join(lines)


def _junk_counted(o: GridOutcome) -> float:
    """Share of the not-countable cells (NIF, ART) counted anyway."""
    junk = o.cells.get("NIF", 0) + o.cells.get("ART", 0)
    counted = sum(o.counted.get(c, 0.0) * o.cells.get(c, 0) for c in ("NIF", "ART"))
    return counted / junk if junk else 0.0


def summary(outcomes: Sequence[GridOutcome], checks: Sequence[ScaleCheck]) -> dict:
    """Against issue 46's targets: worst white-cell detection and the spread of counted rates, per mode."""

    def mode(o: GridOutcome) -> str:
        if o.um_per_px is None:
            return "fitted"
        check = next(c for c in checks if c.optical == o.optical)
        return "true" if o.um_per_px == check.truth else "calibrated"

    out: dict = {"calibration_worst_error": round(max(abs(c.error) for c in checks), 3)}
    for name in ("fitted", "true", "calibrated"):
        chosen = [o for o in outcomes if mode(o) == name]
        if not chosen:
            continue
        spreads = {c: max(o.counted[c] for o in chosen) - min(o.counted[c] for o in chosen) for c in WHITE}
        out[name] = {
            "worst_detected": round(min(o.detected[c] for o in chosen for c in WHITE), 3),
            "worst_counted": round(min(o.counted[c] for o in chosen for c in WHITE), 3),
            "widest_counted_spread": round(max(spreads.values()), 3),
            "nif_art_counted": round(max(_junk_counted(o) for o in chosen), 3),
            "worst_blast_share_error": round(max(abs(o.blast_share_error) for o in chosen), 1),
        }
    return out
