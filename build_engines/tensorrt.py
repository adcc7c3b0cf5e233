"""Build, verify and cache a bundle's TensorRT engines ahead of time (the runtime does the same
on first use): the ``marrow-edge-engines`` unit runs it on first boot.

    python -m build_engines.tensorrt --bundle models/marrow-bm --cache /var/cache/marrow-edge/engines
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edge.analysis.tensorrt_plans import ensure_engines
from edge.capture.replay import verification_fields
from edge.config import DEFAULT_SAMPLES
from edge.engines.bundle import load_bundle
from edge.errors import EngineError

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build, verify and cache the TensorRT engines of a bundle.")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/marrow-edge/engines"))
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--refuse-mismatch", action="store_true", help="fail instead of rebuilding a stale engine")
    parser.add_argument("--fields", type=Path, default=DEFAULT_SAMPLES, help="real fields to verify the engines on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        plans = ensure_engines(
            load_bundle(args.bundle),
            args.cache,
            args.precision,
            "refuse" if args.refuse_mismatch else "rebuild",
            verification_fields(args.fields),
        )
    except EngineError as exc:
        log.error("%s", exc)
        return 3
    for model, plan in plans.items():
        log.info("%s: %s", model, plan)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
