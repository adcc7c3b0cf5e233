"""The ``marrow-edge`` command: run a slide, export a bundle."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from edge import __version__
from edge.errors import EdgeError, PublishError

if TYPE_CHECKING:
    from collections.abc import Callable

    from edge.capture.daemon import CaptureThread, GatedRingSource
    from edge.config import AppConfig
    from edge.counting.control import SlideControl
    from edge.counting.journal import SlideJournal
    from edge.counting.tally import Slide
    from edge.mqtt.messages import MessageFactory
    from edge.mqtt.publisher import Publisher
    from edge.service.pipeline import Appliance, SlideRun
    from edge.service.preview import PreviewPublisher

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
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="folder of images, one image, or a video file: every field counts")
    where.add_argument(
        "--camera",
        metavar="SPEC",
        help="a live camera in this process, through the field gate: 0, /dev/video0, rtsp://..., "
        "genicam:SERIAL[@CTI], sim[:SCRIPT.yaml] (the simulated microscope), or a folder/video to replay",
    )
    where.add_argument("--ring", metavar="NAME", help="read the frame ring of a running `marrow-edge capture`")
    p.add_argument("--fps", type=float, help="camera frame rate (replays are paced to it)")
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
        "http://127.0.0.1:8080/), on whatever broker the run uses",
    )


def _capture_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture",
        help="the capture daemon: camera frames into the shared-memory frame ring",
        description="Grab frames from CAMERA into the frame ring NAME, never waiting for a reader; "
        "reconnects with backoff when the camera goes away. Under systemd: Type=notify with a watchdog.",
    )
    p.add_argument("--camera", required=True, metavar="SPEC", help="as for `run --camera`")
    p.add_argument("--ring", default="capture", help="frame ring name (default: capture)")
    p.add_argument("--slots", type=int, default=8, help="ring slots (default: 8)")
    p.add_argument("--fps", type=float, help="camera frame rate")
    p.add_argument("--width", type=int, help="camera frame width")
    p.add_argument("--height", type=int, help="camera frame height")
    p.add_argument("--exposure", type=float, help="camera exposure (device units)")


def _monitor_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="lab side: a live table of every box publishing to a broker",
        description="Subscribe to the status, tallies and reports of every box under the topic prefix and "
        "print a table (device, state, slide, cells counted, rule states) whenever it changes.",
    )
    p.add_argument("--broker", required=True, metavar="mqtt://HOST:PORT")
    p.add_argument("--prefix", default="marrow/v1", help="topic prefix (default: marrow/v1)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--config", type=Path, help="YAML config: mqtt credentials and TLS for the lab broker")


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


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model bundle (needs the train extra: torch)",
        description="Build the detector and the fused classifier of a profile, load weights if given "
        "(random otherwise: the bundle is then marked untrained), export both to ONNX, check them "
        "against PyTorch and write bundle.json with the hashes.",
    )
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write (replaced if present)")
    p.add_argument("--profile", choices=["lite", "paper"], default="lite")
    p.add_argument("--name", help="bundle name (default: <profile>-untrained or <profile>)")
    p.add_argument("--version", default="0.1.0", help="bundle version")
    p.add_argument("--weights", type=Path, help="folder with detector.pt, stage1.pt, stage2_<i>.pt state dicts")
    p.add_argument("--score-threshold", type=float, default=0.5, help="detector score threshold")
    p.add_argument("--nms-iou", type=float, default=0.5)
    p.add_argument("--max-detections", type=int, default=100, help="most cells kept per field")
    p.add_argument("--parity-images", type=Path, nargs="*", default=[], help="fields for the detector parity check")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a bundle on labelled data (prints a JSON summary as its last line)",
        description="Runs the appliance's own inference path (ONNX Runtime on the bundle), so it measures "
        "what ships. The last line of output is a JSON summary.",
    )
    what = p.add_subparsers(dest="what", required=True, metavar="cells|fields")
    cells = what.add_parser("cells", help="classifier metrics on folder-per-class crops")
    cells.add_argument("cells_dir", type=Path, help="one folder per class, named by class name or alias")
    fields = what.add_parser("fields", help="detector AP on annotated fields")
    fields.add_argument("data_dir", type=Path, help="YOLO root (data.yaml), VOC root, or COCO JSON / its folder")
    fields.add_argument("--format", choices=["yolo", "voc", "coco"], required=True)
    fields.add_argument("--labels", help="comma-separated ground-truth labels that count as cells")
    for q in (cells, fields):
        q.add_argument("--bundle", type=Path, required=True)
        q.add_argument("--split", choices=["train", "val", "test"], help="evaluate only this split")
        q.add_argument("--plots", type=Path, help="folder for PR/ROC/confusion plots (PNG)")
        q.add_argument("--threads", type=int, default=0)
    cells.add_argument("--split-seed", type=int, default=0, help="seed of the 70/10/20 split (with --split)")
    cells.add_argument(
        "--groups",
        action="store_true",
        help="folders name five white-cell types (NEUTROPHIL, LYMPHOCYTE, MONOCYTE, EOSINOPHIL, BASOPHIL), as "
        "another lab's set does: grouped accuracy",
    )


def _validate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate-slides",
        help="compose marrow slides from held-back cells at known blast shares and count them",
        description="Marrow slides made of matek_bm test cells at known blast shares, counted through the "
        "count path; prints the blast rule's call against the truth (a markdown table, then a JSON summary).",
    )
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, help="the shared data folder (holds matek_bm/)")
    p.add_argument("--shares", default="0,5,10,20,30,40,50", help="blast percentages, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="slides per share")
    p.add_argument("--cells", type=int, default=200, help="countable cells composed per slide")


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
    _monitor_parser(sub)
    _display_parser(sub)
    _export_parser(sub)
    _evaluate_parser(sub)
    _validate_parser(sub)
    return parser


def _fmt_rule(rule: Any) -> str:
    if rule.state == "indeterminate" and rule.cells_to_settle:
        return f"{rule.id}: indeterminate (~{rule.cells_to_settle} more cells)"
    return f"{rule.id}: {rule.state}"


class LiveConsole:
    """The technician's view on a terminal: one line per field, then the report."""

    def __init__(self, out: TextIO, total: int | None, quiet: bool = False) -> None:
        self.out, self.total, self.quiet = out, total, quiet
        self.seen = 0

    def field(self, result: Any, tally: Any) -> None:
        self.seen += 1
        if self.quiet:
            return
        of = f"/{self.total}" if self.total else ""
        key = [r for r in tally.rule_states() if r.state != "not_applicable"][:1]
        rule = f"  {_fmt_rule(key[0])}" if key else ""
        self.out.write(
            f"[{self.seen:>3}{of}] {result.source[:28]:<28} cells {len(result.cells):>2} "
            f"(countable {len(result.countable_cells):>2})  total {tally.denominator}/{tally.target_count}"
            f"  {result.timings_ms['detect'] + result.timings_ms['classify']:.0f} ms{rule}\n"
        )
        self.out.flush()

    def skip(self, name: str, reason: str, tally: Any) -> None:
        self.seen += 1
        if not self.quiet:
            self.out.write(f"[{self.seen:>3}] SKIPPED {reason}\n")
            self.out.flush()

    def report(self, run: Any, untrained: bool) -> None:
        tally, w = run.tally, self.out.write
        w(
            f"\nslide {run.slide.slide_id}: {tally.fields} fields counted, {len(tally.skipped)} skipped, "
            f"{tally.cells_detected} cells detected, {tally.denominator} counted, "
            f"{tally.not_countable} not countable\n"
        )
        w(f"{'class':<28}{'n':>5}{'%':>8}   {int(tally.confidence * 100)}% interval\n")
        for s in tally.shares():
            if s.count:
                low, high = s.ci_percent
                w(f"{s.name:<28}{s.count:>5}{s.percent:>8.1f}   {low:5.1f} - {high:5.1f}\n")
        for r in tally.rule_states():
            w(f"rule {r.id:<14} {r.state:<15} {r.note}\n")
        domain = tally.domain()
        if domain.shifted:
            w(f"WARNING: {domain.sentence()}; every rule held at indeterminate\n")
        elif domain.state == "ok":
            w(
                f"domain check: {domain.sentence()} (colour distance {domain.colour_distance:.2f}, "
                f"mean confidence {domain.mean_confidence:.2f})\n"
            )
        for s in tally.skipped:
            w(f"skipped {s.reason}\n")
        w(f"{tally.rules.disclaimer}\n")
        if untrained:
            w("NOTE: the model bundle is UNTRAINED (random weights): the counts only exercise the system.\n")
        self.out.flush()


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
    from edge.analysis.field import FieldResult
    from edge.capture.replay import ImageFilesSource, open_replay
    from edge.config import parse_mqtt_url
    from edge.counting.control import SlideControl
    from edge.counting.journal import SlideJournal, resolve_open_slide
    from edge.counting.tally import Slide, Tally
    from edge.mqtt.broker import EmbeddedBroker, answers
    from edge.mqtt.commands import CommandHandler
    from edge.mqtt.messages import MessageFactory
    from edge.mqtt.publisher import MqttPublisher
    from edge.mqtt.topics import Topics
    from edge.service.health import HealthReporter, RunStats
    from edge.service.pipeline import build_appliance, run_slide

    _check_run_args(args)
    config = _load_config(args, {"bundle": args.bundle} if args.bundle else {})
    capture = None
    camera = None
    publisher: MqttPublisher | None = None
    stats = RunStats()
    if args.source:
        source = open_replay(args.source, config.analysis.max_field_pixels)
        if args.fps:
            from edge.capture.cameras import Paced

            source = Paced(source, args.fps)
        appliance = build_appliance(config)
    else:
        from edge.capture.cameras import CameraSettings, open_camera
        from edge.capture.daemon import CaptureThread, GatedRingSource

        def camera_state(state: str, detail: str) -> None:
            if publisher is not None:
                publisher.camera_state(state, detail)  # retained status: the display shows it

        camera = open_camera(args.camera, CameraSettings(fps=args.fps), camera_state) if args.camera else None
        appliance = build_appliance(config)
        ring = args.ring or f"run-{os.getpid()}"
        from edge.capture.gate import FieldGate, GateEvent

        gate = FieldGate(config.gate)
        last_decision: list[str] = []

        def gate_event(event: GateEvent) -> None:
            stats.frames += 1
            stats.ring_skipped = source.reader.skipped  # type: ignore[attr-defined]
            # Changes and every accepted field: the display flashes them; a still stage sends nothing.
            if publisher is None or (last_decision[-1:] == [event.decision.value] and not event.accepted):
                return
            last_decision[:] = [event.decision.value]
            try:
                publisher.publish(topics.gate, factory.gate(event))
            except PublishError as exc:
                log.warning("gate event not published: %s", exc)

        idle = args.idle_timeout or (5.0 if args.camera else 30.0)
        source = GatedRingSource(ring, gate, idle_timeout=idle, on_event=gate_event)
    manifest = appliance.bundle.manifest
    out = sys.stdout
    # Which slide this run counts, settled before anything is published: never another patient's.
    source_id = _source_id(args)
    journal = (
        SlideJournal(config.counting.journal, config.counting.journal_keep_days) if config.counting.journal else None
    )
    resume: Slide | None = None
    if journal is not None and (not args.wait_for_start or args.resume or args.close_interrupted):
        resume = resolve_open_slide(journal, args.specimen_id, source_id, args.resume, args.close_interrupted)
    pending = journal.open_slide() if journal is not None and args.wait_for_start and resume is None else None
    out.write(
        f"marrow-edge {__version__} | bundle {manifest.name} {manifest.version} "
        f"({appliance.bundle.short_hash}){' UNTRAINED' if manifest.untrained else ''} | "
        f"{appliance.provenance.backend} "
        f"{','.join(appliance.provenance.providers)}\n"
    )
    broker: EmbeddedBroker | None = None
    if config.mqtt.url:
        host, port = parse_mqtt_url(config.mqtt.url)
    elif answers("127.0.0.1", 1883):
        host, port = "127.0.0.1", 1883
        out.write("mqtt: no broker configured; using the one answering on localhost:1883\n")
    else:
        broker = EmbeddedBroker().start()
        host, port = broker.host, broker.port
        out.write(
            f"mqtt: no broker configured and none on localhost:1883: started an embedded mosquitto on "
            f"{broker.url} for this run (subscribe there to see the messages)\n"
        )
    display = None
    try:
        topics = Topics(config.mqtt.topic_prefix, config.device_id)
        if args.display:
            from edge.display.server import Display

            display = Display(config, host, port).start()  # before the box connects: the page sees it all
            out.write(f"display: {display.url}\n")
        factory = MessageFactory(config.device_id, appliance.provenance)
        publisher = MqttPublisher(host, port, topics, factory, config.mqtt)
        control = SlideControl(config.counting.target_count)
        _stop_on_signals(control, out)
        publisher.on_twin = lambda other: control.request_shutdown()  # two boxes, one device id: stop
        if args.camera or args.ring:
            source.stop_event = control.stop_requested  # a shutdown wakes a wait for frames
        publisher.serve_commands(CommandHandler(control, factory))
        publisher.connect()
        if camera is not None:  # after the models load: the ring keeps only the newest frames
            capture = CaptureThread(camera, ring).start()
        if args.ring:
            from edge.systemd import sd_notify

            sd_notify(f"READY=1\nSTATUS=counting fields from ring {args.ring}")
        slide = resume
        if slide is not None:
            out.write(f"resuming slide {slide.slide_id} (specimen {slide.specimen_id}) after a restart\n")
        else:
            slide = Slide(specimen_id=args.specimen_id, source=source_id)
        if pending is not None:
            out.write(
                f"slide {pending.slide_id} (specimen {pending.specimen_id}) is open after a restart: a start_slide "
                "for that specimen resumes it; any other closes it as interrupted\n"
            )
        if args.wait_for_start:
            out.write(f"mqtt: publishing to mqtt://{host}:{port} under {topics.root}/\n")
        else:
            out.write(f"mqtt: publishing to mqtt://{host}:{port} under {topics.root}/slide/{slide.slide_id}/\n")
        total = len(source.paths) if isinstance(source, ImageFilesSource) else None
        if total and args.max_fields:
            total = min(total, args.max_fields)
        console = LiveConsole(out, total, args.quiet)

        def on_field(result: FieldResult, tally: Tally) -> None:
            stats.field(result.timings_ms)
            stats.frames += 0 if args.camera or args.ring else 1
            console.field(result, tally)

        def on_skip(source_name: str, reason: str, tally: Tally) -> None:
            stats.skipped += 1
            stats.frames += 0 if args.camera or args.ring else 1
            console.skip(source_name, reason, tally)

        preview = _start_preview(config, appliance, publisher, factory, source, live=not args.source)

        def count(this_slide: Slide) -> SlideRun:
            return run_slide(
                appliance, source, publisher, topics, factory, this_slide, args.max_fields,
                on_field, on_skip, control, journal, preview,
            )  # fmt: skip

        state = config.counting.journal or config.mqtt.outbox
        health = HealthReporter(
            publisher, factory, stats, appliance.provenance.backend, config.mqtt.health_interval_s,
            Path(state).parent if state else None,
        ).start()  # fmt: skip
        try:
            if args.wait_for_start:  # a live source: _check_run_args refused --source
                run = _serve_slides(
                    args, source, capture, control, journal, out, console, resume, count, pending, source_id
                )
            else:
                run = count(slide)
        finally:
            health.stop()
            if preview is not None:
                preview.stop()
            publisher.close()
            source.close()
            if capture is not None:
                capture.close()
        if run is None:
            sys.stderr.write("marrow-edge: error: the camera stopped before any start_slide command\n")
            return 5
        if not args.wait_for_start:
            console.report(run, manifest.untrained)
    finally:
        if display is not None:
            display.stop()
        if broker:
            broker.stop()
    if run.tally.fields == 0:
        sys.stderr.write("marrow-edge: error: no field of the source could be counted\n")
        return 5
    if publisher.twin:
        sys.stderr.write(
            f"marrow-edge: error: another marrow-edge (instance {publisher.twin}) is online as device "
            f"{config.device_id}: give every box its own device_id; this run stopped\n"
        )
        return 4
    if publisher.undelivered:
        kept = (
            f"kept in the outbox {config.mqtt.outbox} and re-sent by the next run"
            if config.mqtt.outbox
            else "lost: set mqtt.outbox to keep them on disk"
        )
        sys.stderr.write(
            f"marrow-edge: error: {publisher.undelivered} message(s) (the report may be among them) were "
            f"never acknowledged by the broker; {kept}\n"
        )
        return 1
    return 1 if run.publish_failures else 0


def _check_run_args(args: argparse.Namespace) -> None:
    """Command-line mistakes are exit 2, found before anything loads or connects."""
    import re

    from edge.errors import ConfigError
    from edge.mqtt.commands import SPECIMEN_ID_MAX, SPECIMEN_ID_PATTERN

    if args.max_fields is not None and args.max_fields < 1:
        raise ConfigError("--max-fields must be at least 1")
    if args.wait_for_start and args.source:
        raise ConfigError("--wait-for-start needs --camera or --ring (a --source folder is one slide)")
    specimen = args.specimen_id
    if specimen is not None and (len(specimen) > SPECIMEN_ID_MAX or not re.fullmatch(SPECIMEN_ID_PATTERN, specimen)):
        raise ConfigError(
            "--specimen-id must be 1-64 characters: letters, digits and _ . : / - (starting with a letter or digit)"
        )


def _stop_on_signals(control: SlideControl, out: TextIO) -> None:
    """SIGTERM (systemctl stop) and Ctrl-C end the run as a stop_slide would: the field in hand is
    finished, the report published, status ``stopped``. A second signal interrupts at once."""
    import signal

    def handle(signum: int, _frame: object) -> None:
        if control.shutdown.is_set():
            raise KeyboardInterrupt
        out.write(f"\n{signal.Signals(signum).name}: finishing this field, then the report (again to abort)\n")
        out.flush()
        control.request_shutdown()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _source_id(args: argparse.Namespace) -> str:
    """What a slide is counted from, as recorded in the journal (a resume must match it)."""
    if args.source:
        return f"files:{Path(args.source).resolve()}"
    if args.camera:
        return f"camera:{args.camera}"
    return f"ring:{args.ring}"


def _start_preview(
    config: AppConfig, appliance: Appliance, publisher: Publisher, factory: MessageFactory, source: Any, live: bool
) -> PreviewPublisher | None:
    """The preview path for the display: counted fields always; a live camera's frames too."""
    from edge.service.preview import PreviewPublisher

    if not config.preview.enabled:
        return None
    preview = PreviewPublisher(
        publisher,
        factory,
        config.preview,
        appliance.bundle.manifest.classes,
        analyze=appliance.analyzer if live else None,
        models_lock=appliance.models_lock,
    ).start()
    if live:
        source.on_frame = lambda image, event: preview.offer(image, event=event)
    return preview


def _serve_slides(
    args: argparse.Namespace,
    source: GatedRingSource,
    capture: CaptureThread | None,
    control: SlideControl,
    journal: SlideJournal | None,
    out: TextIO,
    console: LiveConsole,
    resume: Slide | None,
    count: Callable[[Slide], SlideRun],
    pending: Slide | None = None,
    source_id: str | None = None,
) -> SlideRun | None:
    """Service mode: each slide begins with start_slide and ends with stop_slide (or the camera ending).

    ``pending``: a slide left open by a crash. A start_slide for its specimen resumes it; any other
    closes it as interrupted first, so another patient's cells never join it."""
    from edge.counting.tally import Slide

    last = None
    while True:
        if resume is not None:
            slide, resume = resume, None
        else:
            out.write(f"waiting for start_slide (on {args.device_id or 'this box'}'s cmd/start_slide)\n")
            out.flush()
            while not control.start_requested.is_set():
                source.watch(control.start_requested, 0.5)  # the live view runs between slides
                if control.shutdown.is_set() or source.finished or (capture is not None and not capture.alive):
                    return last
            specimen = control.take_start()
            if pending is not None and journal is not None and specimen == pending.specimen_id:
                slide, pending = pending, None
                out.write(f"resuming slide {slide.slide_id} (specimen {slide.specimen_id}) after a restart\n")
            else:
                if pending is not None and journal is not None:
                    journal.close_slide(pending, interrupted=True)
                    out.write(
                        f"slide {pending.slide_id} (specimen {pending.specimen_id}) closed as interrupted: "
                        f"start_slide named specimen {specimen}\n"
                    )
                    pending = None
                slide = Slide(specimen_id=specimen, source=source_id)
        out.write(f"slide {slide.slide_id} (specimen {slide.specimen_id}) started\n")
        source.gate.new_slide()
        source.stop_event = control.stop_requested
        last = count(slide)
        console.report(last, False)
        if control.shutdown.is_set() or source.finished or (capture is not None and not capture.alive):
            return last


def _cmd_capture(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge.capture.cameras import CameraSettings, open_camera
    from edge.capture.daemon import capture_loop
    from edge.systemd import sd_notify

    def camera_state(state: str, detail: str) -> None:
        # Retrying an absent camera is alive, not hung: keep the watchdog fed and say why.
        sd_notify(f"WATCHDOG=1\nSTATUS=camera {state}: {detail}")

    settings = CameraSettings(args.width, args.height, args.fps, args.exposure)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # systemctl stop: close the ring cleanly
    stats = capture_loop(open_camera(args.camera, settings, camera_state), args.ring, args.slots, stop)
    sys.stdout.write(f"capture: {stats.frames} frames, {stats.corrupt} corrupt\n")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from edge.config import parse_mqtt_url
    from edge.mqtt.monitor import monitor

    try:
        host, port = parse_mqtt_url(args.broker)
    except ValueError as exc:
        raise EdgeError(str(exc)) from None
    from edge.config import load_config

    monitor(host, port, args.prefix, sys.stdout, args.duration, config=load_config(args.config).mqtt)
    return 0


def _cmd_display(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge.config import parse_mqtt_url
    from edge.display.server import Display

    where = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    config = _load_config(args, {"display": where} if where else {})
    host, port = parse_mqtt_url(config.mqtt.url) if config.mqtt.url else ("127.0.0.1", 1883)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    display = Display(config, host, port).start()
    sys.stdout.write(f"display: {display.url} showing {config.device_id} from mqtt://{host}:{port}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        display.stop()
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from training.evaluate import evaluate_cells, evaluate_fields
    from training.readers import AnnotationError

    try:
        if args.what == "cells":
            report = evaluate_cells(
                args.bundle, args.cells_dir, args.split, args.split_seed, args.plots, args.threads, args.groups
            )
        else:
            labels = args.labels.split(",") if args.labels else None
            report = evaluate_fields(
                args.bundle, args.format, args.data_dir, labels, args.split, args.plots, args.threads
            )
    except AnnotationError as exc:
        raise EdgeError(str(exc)) from None
    sys.stdout.write(json.dumps(report, separators=(",", ":")) + "\n")
    return 0


def _cmd_validate_slides(args: argparse.Namespace) -> int:
    import json

    from training.compose import DATA
    from training.slides import summary, table, validate

    data = args.data or DATA
    if not (data / "matek_bm").is_dir():
        raise EdgeError(f"{data}/matek_bm is missing: the slides are composed from its held-back cells")
    try:
        shares = [float(v) for v in args.shares.split(",")]
    except ValueError:
        raise EdgeError(f"--shares must be numbers, got {args.shares!r}") from None
    outcomes = validate(args.bundle, shares, args.repeats, args.cells, data)
    sys.stdout.write(table(outcomes) + "\n" + json.dumps(summary(outcomes)) + "\n")
    return 0


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
            "monitor": _cmd_monitor,
            "display": _cmd_display,
            "export": _cmd_export,
            "evaluate": _cmd_evaluate,
            "validate-slides": _cmd_validate_slides,
        }
        return commands[args.command](args)
    except EdgeError as exc:
        sys.stderr.write(f"marrow-edge: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("marrow-edge: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
