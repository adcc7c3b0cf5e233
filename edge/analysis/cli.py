"""``marrow-edge calibrate-scale``: the camera's micrometres per pixel, measured from its first fields
(``edge.analysis.calibrate``) or given from a stage micrometer, printed and written into the config."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.config import AppConfig

DEFAULT_FIELDS = 12
CAMERA_TIMEOUT_S = 300.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate-scale",
        help="measure the camera's scale (um per pixel) from its fields and write it into the config",
        description="Run the bundle's detector over a ladder of scales on the first fields of SOURCE and find the "
        "scale at which the cells it finds have the size it learned; print it with a 95% interval and, with "
        "--config, write it as analysis.um_per_px. Refused, with the reason, when the fields hold too few cells. "
        "A stage micrometer's value can be given instead (--um-per-px).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--source", type=Path, help="a folder of fields (or one image, or a video) from the camera")
    where.add_argument("--camera", metavar="SPEC", help="the live camera, as for `run --camera`; fields pass the gate")
    p.add_argument("--config", type=Path, help="YAML config to write analysis.um_per_px into (and to read)")
    p.add_argument("--bundle", type=Path, help="model bundle (overrides bundle)")
    p.add_argument("--fields", type=int, default=DEFAULT_FIELDS, help=f"fields to measure (default {DEFAULT_FIELDS})")
    p.add_argument("--um-per-px", type=float, metavar="UM", help="a stage micrometer's value: written, not measured")
    p.add_argument("--dry-run", action="store_true", help="print only; leave the config as it is")
    p.set_defaults(handler=run_calibrate)


def _replay_fields(path: Path, count: int, max_pixels: int) -> list[np.ndarray]:
    from edge.capture.replay import open_replay

    source = open_replay(path, max_pixels)
    fields, skipped = [], []
    try:
        for frame in source.frames():
            if frame.image is None:
                skipped.append(frame.error or frame.name)
            else:
                fields.append(frame.image)
            if len(fields) == count:
                break
    finally:
        source.close()
    if not fields:
        raise ConfigError(f"no usable field in {path}: " + "; ".join(skipped[:3]))
    return fields


def _camera_fields(spec: str, count: int, config: AppConfig) -> list[np.ndarray]:
    """Fields the gate accepts (still, sharp, new): the technician moves the stage between them."""
    from edge.capture.cameras import open_camera
    from edge.capture.gate import FieldGate

    gate, fields = FieldGate(config.gate), []
    source = open_camera(spec)
    deadline = time.monotonic() + CAMERA_TIMEOUT_S
    frames: Iterator = iter(source.frames())
    try:
        while len(fields) < count and time.monotonic() < deadline:
            frame = next(frames, None)
            if frame is None:
                break
            if frame.image is not None and gate(frame.image).accepted:
                fields.append(frame.image)
                sys.stdout.write(
                    f"calibrate-scale: field {len(fields)} of {count}; move to another part of the slide\n"
                )
    finally:
        source.close()
    return fields


def run_calibrate(args: argparse.Namespace) -> int:
    from edge.analysis.calibrate import calibrate
    from edge.analysis.colour import white_balance
    from edge.analysis.field_models import reference_model
    from edge.config import load_config
    from edge.config.edit import write_value
    from edge.engines.bundle import load_bundle
    from edge.errors import BundleError

    if args.fields < 1:
        raise ConfigError("--fields must be at least 1")
    if args.um_per_px is not None and not 0 < args.um_per_px <= 10:
        raise ConfigError(f"--um-per-px {args.um_per_px}: a scale is micrometres per pixel, above 0 and at most 10")
    config = load_config(args.config, overrides={"bundle": args.bundle} if args.bundle else None)
    bundle = load_bundle(config.bundle)
    scale = bundle.manifest.scale
    if scale is None:
        raise BundleError(
            f"bundle {bundle.manifest.name} {bundle.manifest.version} records no scale (made before scales were): "
            "re-export it with python -m training.bundle.scale, or use a bundle that has one"
        )
    say = sys.stdout.write
    if args.um_per_px is not None:
        value, how = args.um_per_px, "stage micrometer"
        say(f"calibrate-scale: {value} um/px (stage micrometer)\n")
    else:
        if not (args.source or args.camera):
            raise ConfigError("give --source DIR or --camera SPEC (the fields to measure), or --um-per-px UM")
        max_pixels = config.analysis.max_field_pixels
        fields = (
            _replay_fields(args.source, args.fields, max_pixels)
            if args.source
            else _camera_fields(args.camera, args.fields, config)
        )
        if bundle.manifest.colour_normalisation == "background":  # as the count path hands them to the detector
            fields = [white_balance(f) for f in fields]
        detector = reference_model(bundle, config.analysis).detector
        result = calibrate(detector, scale, fields)
        value, how = result.um_per_px, f"{result.cells} cells, 95% {result.low}-{result.high}"
        say(f"calibrate-scale: {result.sentence()}\n")
        for rung in result.rungs:
            say(f"  detector at {rung.factor:.3f}x: {rung.cells} cells, mean score {rung.mean_score:.2f}, "
                f"median side {rung.median_side_px:.0f} px -> {rung.implied_factor:.3f}x\n")  # fmt: skip
    say(
        f"  {bundle.manifest.name} {bundle.manifest.version} works at {scale.um_per_px} um/px: each field will be "
        f"resized x{value / scale.um_per_px:.3f} before the detector\n"
    )
    if args.config is None or args.dry_run:
        say(f"  not written: run with --config FILE, or set analysis.um_per_px: {value} (or --um-per-px {value})\n")
        return 0
    if config.source is not None and config.source.um_per_px is not None:
        raise ConfigError(
            f"{args.config}: source.um_per_px ({config.source.um_per_px}) is set and would override "
            f"analysis.um_per_px: set source.um_per_px: {value} there instead"
        )
    stamp = dt.date.today().isoformat()
    write_value(args.config, "analysis", "um_per_px", f"{value}", f"calibrate-scale {stamp}: {how}")
    say(f"  written to {args.config}: analysis.um_per_px: {value}\n")
    return 0
