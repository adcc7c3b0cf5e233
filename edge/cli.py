"""The ``marrow-edge`` command line: argparse and printing. The run itself is ``edge.service.run``;
export, evaluate and validate-slides come from their own packages (entry points)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.adaptation.cli import add_parser as adapt_parser
from edge.analysis.cli import add_parser as calibrate_parser
from edge.engines.library import add_parser as bundle_parser
from edge.errors import EdgeError
from edge.fleet.cli import add_parsers as fleet_parsers
from edge.reports.cli import add_parser as report_parser
from edge.review.cli import add_parser as review_parser
from edge.systemd import serve_until_terminated

if TYPE_CHECKING:
    from edge.config import AppConfig

log = logging.getLogger("edge")

EXIT_USAGE = 2


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="count the fields of a source as one slide and publish over MQTT",
        description="Process every field of SOURCE (a folder of images, one image or a video file) as one "
        "slide: detect, drop what is not countable, classify, count, apply the rule pack, and publish "
        "field, tally and report messages over MQTT. Prints a live count.",
        epilog="Without --broker or mqtt.url, the broker on localhost:1883 is used if one answers; "
        "otherwise an embedded mosquitto is started on a free loopback port for this run.",
    )
    where = p.add_mutually_exclusive_group()  # none: the config's source
    where.add_argument("--source", type=Path, help="folder of images, one image, or a video file: every field counts")
    where.add_argument(
        "--camera",
        metavar="SPEC",
        help="a live camera in this process, through the field gate: 0, /dev/video0, rtsp://..., "
        "genicam:SERIAL[@CTI], csi:N (Jetson CSI), gst:PIPELINE, sim[:SCRIPT.yaml] (the simulated microscope), "
        "or a folder/video to replay "
        "(without --source/--camera/--ring: the config's source)",
    )
    where.add_argument("--ring", metavar="NAME", help="read the frame ring of a running `marrow-edge capture`")
    p.add_argument("--fps", type=float, help="camera frame rate (replays are paced to it)")
    p.add_argument(
        "--um-per-px",
        type=float,
        metavar="UM",
        help="the camera's scale in micrometres per pixel (overrides the source's and analysis.um_per_px; "
        "`marrow-edge calibrate-scale` measures it): fields are brought to the bundle's scale",
    )
    p.add_argument(
        "--wait-for-start",
        action="store_true",
        help="with --camera/--ring: serve slides one after another, each begun by a start_slide command "
        "and ended by stop_slide (the appliance's service mode)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="with --camera/--ring: end the slide after S seconds without a frame (default 5 / 30)",
    )
    p.add_argument("--config", type=Path, help="YAML config file (see config.example.yaml)")
    p.add_argument("--broker", metavar="mqtt://HOST:PORT", help="MQTT broker (overrides mqtt.url)")
    p.add_argument("--device-id", help="device id in topics and messages (overrides device_id)")
    p.add_argument("--bundle", type=Path, help="model bundle folder (overrides bundle)")
    p.add_argument("--specimen-id", help="specimen id recorded with the slide")
    interrupted = p.add_mutually_exclusive_group()
    interrupted.add_argument(
        "--resume",
        action="store_true",
        help="with counting.journal: continue the slide an interrupted run left open (an open slide is "
        "otherwise resumed only by a run with the same specimen and source)",
    )
    interrupted.add_argument(
        "--close-interrupted",
        action="store_true",
        help="with counting.journal: close the slide an interrupted run left open (no report) and start this one",
    )
    p.add_argument("--max-fields", type=int, metavar="N", help="stop after N fields of the source")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    p.add_argument(
        "--display",
        action="store_true",
        help="also serve the display page in this process (display.host/display.port, default "
        "http://127.0.0.1:8080/), on whatever broker the run uses; after a --source slide the page stays up "
        "until Ctrl-C",
    )
    p.add_argument(
        "--display-hold",
        type=float,
        metavar="S",
        help="with --display and --source: close the page S s after the slide ends",
    )


def _capture_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture",
        help="the capture daemon: camera frames into the shared-memory frame ring",
        description="Grab frames from CAMERA into the frame ring NAME, never waiting for a reader; "
        "reconnects with backoff when the camera goes away. Under systemd: Type=notify with a watchdog.",
    )
    p.add_argument("--camera", metavar="SPEC", help="as for `run --camera` (default: the config's source)")
    p.add_argument("--config", type=Path, help="YAML config file (its source: when --camera is not given)")
    p.add_argument("--ring", default="capture", help="frame ring name (default: capture)")
    p.add_argument("--slots", type=int, default=8, help="ring slots (default: 8)")
    p.add_argument("--fps", type=float, help="camera frame rate")
    p.add_argument("--width", type=int, help="camera frame width")
    p.add_argument("--height", type=int, help="camera frame height")
    p.add_argument("--exposure", type=float, help="camera exposure (device units)")


def _display_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "display",
        help="serve the page at the microscope (live view, count, start/stop)",
        description="Serve the display page for one box: its live view with boxes, the running count with "
        "intervals, the rule states, device status and start/stop buttons. Everything comes from the box's "
        "MQTT messages; the buttons publish its commands.",
    )
    p.add_argument("--config", type=Path, help="YAML config file (the box's: device_id, mqtt, display)")
    p.add_argument("--broker", metavar="mqtt://HOST:PORT", help="MQTT broker (overrides mqtt.url; default localhost)")
    p.add_argument("--device-id", help="the box to show (overrides device_id)")
    p.add_argument("--host", help="address to serve on (overrides display.host; 0.0.0.0 for tablets)")
    p.add_argument("--port", type=int, help="port to serve on (overrides display.port; 0 picks a free one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marrow-edge",
        description="Bone-marrow differential count at the microscope: camera -> detect -> classify -> "
        "count -> MQTT. Results are suggestions for a haematologist, never a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub)
    _capture_parser(sub)
    fleet_parsers(sub)
    _display_parser(sub)
    review_parser(sub)
    report_parser(sub)
    bundle_parser(sub)
    calibrate_parser(sub)
    adapt_parser(sub)
    _plugin_commands(sub)
    return parser


def _plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Commands of the packages around the runtime (export, evaluate, validate-slides), found through
    the ``marrow_edge.commands`` entry points: ``edge`` never imports ``training`` or ``build_engines``,
    and an installed box without them simply lacks those commands."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group="marrow_edge.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:  # the package is not installed on this box
            log.debug("command %s unavailable: %s", entry.name, exc)
            continue
        register(sub)


def _load_config(args: argparse.Namespace, extra: dict[str, Any]) -> AppConfig:
    """Defaults <- --config file <- environment <- the command line (--device-id, --broker, ``extra``)."""
    from edge.config import load_config

    overrides = dict(extra)
    if args.device_id:
        overrides["device_id"] = args.device_id
    if args.broker:
        overrides["mqtt"] = {"url": args.broker}
    config = load_config(args.config, overrides=overrides)
    if not args.verbose:
        logging.getLogger().setLevel(config.logging.level)
    return config


def _cmd_run(args: argparse.Namespace) -> int:
    from edge.service.endpoints import field_scale, live_source
    from edge.service.run import CountingService, RunRequest

    _check_run_args(args)
    config = _load_config(args, {"bundle": args.bundle} if args.bundle else {})
    camera, ring = (None, None) if args.source else live_source(args.camera, args.ring, args.fps, config)
    named = bool(args.source or args.camera or args.ring)
    request = RunRequest(
        um_per_px=field_scale(args.um_per_px, camera, named, config),
        source=args.source,
        camera=camera,
        ring=ring,
        fps=args.fps,
        idle_timeout=args.idle_timeout,
        wait_for_start=args.wait_for_start,
        specimen_id=args.specimen_id,
        resume=args.resume,
        close_interrupted=args.close_interrupted,
        max_fields=args.max_fields,
        display=args.display,
        display_hold=args.display_hold,
        quiet=args.quiet,
    )
    service = CountingService(config, request, sys.stdout)
    service.stop_on_signals()
    outcome = service.run()
    fail = sys.stderr.write
    if outcome.run is None:
        fail("marrow-edge: error: the camera stopped before any start_slide command\n")
        return 5
    if outcome.run.tally.fields == 0:
        fail("marrow-edge: error: no field of the source could be counted\n")
        return 5
    if outcome.twin:
        fail(
            f"marrow-edge: error: another marrow-edge (instance {outcome.twin}) is online as device "
            f"{config.device_id}: give every box its own device_id; this run stopped\n"
        )
        return 4
    if outcome.run.store_error:
        slide_id = outcome.run.slide.slide_id
        if config.counting.journal is not None:
            how = (f"its cells are in the journal {config.counting.journal}: free space, then "
                   f"`marrow-edge review import --slide {slide_id} --source <what it counted>`")  # fmt: skip
        else:
            how = "no journal is configured (counting.journal): only its published report remains"
        fail(
            f"marrow-edge: error: slide {slide_id} was counted and its report published, but it is not in the "
            f"slide store ({outcome.run.store_error}); {how}\n"
        )
        return 3
    if outcome.undelivered:
        kept = (
            f"kept in the outbox {config.mqtt.outbox} and re-sent by the next run"
            if config.mqtt.outbox
            else "lost: set mqtt.outbox to keep them on disk"
        )
        fail(
            f"marrow-edge: error: {outcome.undelivered} message(s) (the report may be among them) were "
            f"never acknowledged by the broker; {kept}\n"
        )
        return 1
    return 1 if outcome.run.publish_failures else 0


def _check_run_args(args: argparse.Namespace) -> None:
    """Command-line mistakes are exit 2, found before anything loads or connects."""
    import re

    from edge.errors import ConfigError
    from edge.mqtt.commands import SPECIMEN_ID_MAX, SPECIMEN_ID_PATTERN

    if args.max_fields is not None and args.max_fields < 1:
        raise ConfigError("--max-fields must be at least 1")
    if args.um_per_px is not None and not 0 < args.um_per_px <= 10:
        raise ConfigError(f"--um-per-px {args.um_per_px}: a scale is micrometres per pixel, above 0 and at most 10")
    if args.wait_for_start and args.source:
        raise ConfigError(
            "--wait-for-start needs a live source: --camera, --ring or the config's (a --source folder is one slide)"
        )
    specimen = args.specimen_id
    if specimen is not None and (len(specimen) > SPECIMEN_ID_MAX or not re.fullmatch(SPECIMEN_ID_PATTERN, specimen)):
        raise ConfigError(
            "--specimen-id must be 1-64 characters: letters, digits and _ . : / - (starting with a letter or digit)"
        )


def _cmd_capture(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge.capture.cameras import CameraSettings, open_source, source_from_spec
    from edge.capture.daemon import capture_loop
    from edge.config import load_config
    from edge.errors import ConfigError
    from edge.systemd import sd_notify

    def camera_state(state: str, detail: str) -> None:
        # Retrying an absent camera is alive, not hung: keep the watchdog fed and say why.
        sd_notify(f"WATCHDOG=1\nSTATUS=camera {state}: {detail}")

    if args.camera:
        camera = source_from_spec(args.camera, CameraSettings(args.width, args.height, args.fps, args.exposure))
    elif (camera := load_config(args.config).source) is None:
        raise ConfigError("no camera: give --camera SPEC or set source: in the config")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # systemctl stop: close the ring cleanly
    stats = capture_loop(open_source(camera, camera_state), args.ring, args.slots, stop)
    sys.stdout.write(f"capture: {stats.frames} frames, {stats.corrupt} corrupt\n")
    return 0


def _cmd_display(args: argparse.Namespace) -> int:
    from edge.config import parse_mqtt_url
    from edge.display.server import Display

    where = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    config = _load_config(args, {"display": where} if where else {})
    host, port = parse_mqtt_url(config.mqtt.url) if config.mqtt.url else ("127.0.0.1", 1883)
    display = Display(config, host, port).start()
    line = f"display: {display.url} showing {config.device_id} from mqtt://{host}:{port}"
    return serve_until_terminated(line, display.stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        commands = {
            "run": _cmd_run,
            "capture": _cmd_capture,
            "display": _cmd_display,
        }
        handler = commands.get(args.command) or args.handler
        return handler(args)
    except EdgeError as exc:
        sys.stderr.write(f"marrow-edge: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("marrow-edge: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
