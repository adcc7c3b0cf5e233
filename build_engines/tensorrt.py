"""Build, verify and cache a bundle's TensorRT engines ahead of time: the ``marrow-edge-engines``
unit runs it on first boot (and after a bundle, GPU or TensorRT change), before the pipeline.

    python -m build_engines.tensorrt --config /etc/marrow-edge/config.yaml          # the unit
    python -m build_engines.tensorrt --config /etc/marrow-edge/config.yaml --check  # ExecCondition
    python -m build_engines.tensorrt --bundle models/marrow-bm --cache DIR          # by hand

With ``--config`` the bundle, the cache, the precision and the verification fields are the
config's (``engine.type: tensorrt``), so the unit builds exactly what the pipeline will load; the
pipeline itself refuses to build (``engine.on_engine_mismatch: refuse``), as a build of minutes
inside its start timeout would be killed and restarted for ever. Progress goes to the journal
and, under systemd, to the unit's status line (``systemctl status marrow-edge-engines``).

``--check`` exits 0 when there is something to build here (the config asks for TensorRT and
TensorRT imports), 1 otherwise: systemd's ExecCondition then skips the unit without failing it.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from edge.analysis.tensorrt_plans import ensure_engines
from edge.capture.replay import verification_fields
from edge.config import DEFAULT_SAMPLES, load_config
from edge.engines.bundle import load_bundle
from edge.errors import EdgeError, EngineError
from edge.systemd import sd_notify

log = logging.getLogger(__name__)

SKIP, BUILD = 1, 0  # ExecCondition: 1..254 skips the unit, 0 runs it


class StatusLine(logging.Handler):
    """The build's log lines as the unit's status (at most one every 2 s: TensorRT is chatty)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._last = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if now - self._last >= 2.0 or record.levelno >= logging.WARNING:
            self._last = now
            sd_notify(f"STATUS={record.getMessage()[:200]}")


def check(config_path: Path | None) -> tuple[int, str]:
    """(exit status, why) for ExecCondition."""
    config = load_config(config_path)
    if config.engine.type != "tensorrt":
        return SKIP, f"nothing to build: engine.type is {config.engine.type}"
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return SKIP, f"engine.type is tensorrt but TensorRT does not import ({exc}); the pipeline will say so too"
    return BUILD, "TensorRT engines to build or verify"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build, verify and cache the TensorRT engines of a bundle.")
    parser.add_argument("--config", type=Path, help="the appliance's config: its bundle and engine settings")
    parser.add_argument("--check", action="store_true", help="exit 0 if there is something to build, else 1")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/marrow-edge/engines"))
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--refuse-mismatch", action="store_true", help="fail instead of rebuilding a stale engine")
    parser.add_argument("--fields", type=Path, default=DEFAULT_SAMPLES, help="real fields to verify the engines on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(StatusLine())
    try:
        if args.check:
            status, why = check(args.config)
            log.info("%s", why)
            return status
        if args.config is not None:
            config = load_config(args.config)
            engine = config.engine
            if engine.type != "tensorrt":
                log.info("nothing to build: engine.type is %s", engine.type)
                return 0
            bundle, cache, precision = config.bundle, engine.engine_cache, engine.precision
            fields = engine.verify_fields
        elif args.bundle is not None:
            bundle, cache, precision, fields = args.bundle, args.cache, args.precision, args.fields
        else:
            parser.error("--config or --bundle")
        sd_notify(f"STATUS=checking the TensorRT engines of {bundle.name}")
        plans = ensure_engines(
            load_bundle(bundle),
            cache,
            precision,
            "refuse" if args.refuse_mismatch else "rebuild",
            verification_fields(fields),
        )
    except (EngineError, EdgeError) as exc:
        log.error("%s", exc)
        sd_notify(f"STATUS=failed: {str(exc)[:200]}")
        return 3
    for model, plan in plans.items():
        log.info("%s: %s", model, plan)
    sd_notify(f"STATUS=engines ready: {', '.join(p.name for p in plans.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
