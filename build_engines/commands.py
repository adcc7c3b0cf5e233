"""``marrow-edge export``: registered through the ``marrow_edge.commands`` entry point, so the
runtime (``edge``) never imports the exporter and a box without torch simply lacks the command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.errors import EdgeError


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model bundle (needs the train extra: torch)",
        description="Build the detector and the fused classifier of a profile, load weights if given "
        "(random otherwise: the bundle is then marked untrained), export both to ONNX, check them "
        "against PyTorch and write bundle.json with the hashes.",
    )
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write (replaced if present)")
    p.add_argument("--profile", choices=["lite", "efflite", "paper"], default="lite")
    p.add_argument("--name", help="bundle name (default: <profile>-untrained or <profile>)")
    p.add_argument("--version", default="0.1.0", help="bundle version")
    p.add_argument("--weights", type=Path, help="folder with detector.pt, stage1.pt, stage2_<i>.pt state dicts")
    p.add_argument("--score-threshold", type=float, default=0.5, help="detector score threshold")
    p.add_argument("--nms-iou", type=float, default=0.5)
    p.add_argument("--max-detections", type=int, default=100, help="most cells kept per field")
    p.add_argument("--parity-images", type=Path, nargs="*", default=[], help="fields for the detector parity check")
    p.set_defaults(handler=export)


def export(args: argparse.Namespace) -> int:
    try:
        from build_engines.export import ExportRequest, export_bundle
    except ImportError as exc:
        raise EdgeError(
            f"export needs the train extra ({exc.name} is missing): pip install 'marrow-edge[train]'"
        ) from None
    request = ExportRequest(
        out_dir=args.out,
        profile=args.profile,
        name=args.name or (args.profile if args.weights else f"{args.profile}-untrained"),
        version=args.version,
        weights_dir=args.weights,
        score_threshold=args.score_threshold,
        nms_iou=args.nms_iou,
        max_detections=args.max_detections,
        parity_images=args.parity_images,
    )
    path = export_bundle(request)
    sys.stdout.write(f"bundle written to {path}\n")
    return 0
