"""One run of the appliance: a source's fields counted as slides and published over MQTT.

Built from the config and what the command line asked for (``RunRequest``); ``CountingService.run``
connects, counts one slide (a replay) or serves slide after slide (service mode, each begun by
start_slide), and hands back what happened (``RunOutcome``) for the CLI to turn into an exit status.
The path of a frame: source -> gate (live) -> ``run_slide`` (analysis, tally, journal) -> publisher.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from edge import __version__
from edge.config import AppConfig, SourceConfig
from edge.counting.control import SlideControl
from edge.counting.journal import SlideJournal, resolve_open_slide
from edge.counting.tally import Slide, Tally
from edge.errors import PublishError
from edge.mqtt.commands import CommandHandler
from edge.mqtt.factory import MessageFactory
from edge.mqtt.publisher import MqttPublisher
from edge.mqtt.topics import Topics
from edge.review.store import SlideStore
from edge.service.console import LiveConsole
from edge.service.current import CurrentSlide
from edge.service.endpoints import find_broker
from edge.service.gpu import find_gpu
from edge.service.health import HealthReporter, RunStats
from edge.service.pipeline import Appliance, SlideContext, SlideRun, build_appliance, run_slide

if TYPE_CHECKING:
    import numpy as np

    from edge.analysis.field import FieldResult
    from edge.capture.daemon import CaptureThread, GatedRingSource
    from edge.capture.gate import GateEvent
    from edge.capture.source import CameraSource
    from edge.display.server import Display
    from edge.service.metrics import MetricsServer
    from edge.service.preview import PreviewPublisher

log = logging.getLogger(__name__)


@dataclass
class RunRequest:
    """What a run was asked for: exactly one of ``source`` (a replay: one slide), ``camera`` or ``ring``."""

    source: Path | None = None
    camera: SourceConfig | None = None  # a live source in this process (not a ring)
    ring: str | None = None
    fps: float | None = None
    idle_timeout: float | None = None
    wait_for_start: bool = False  # service mode: slides begun by start_slide (live sources only)
    specimen_id: str | None = None
    resume: bool = False
    close_interrupted: bool = False
    max_fields: int | None = None
    display: bool = False
    display_hold: float | None = None  # after a replayed slide, keep the page up this long (None: until Ctrl-C)
    quiet: bool = False
    um_per_px: float | None = None  # the camera's scale (edge.service.endpoints.field_scale); None: fields fitted

    @property
    def live(self) -> bool:
        return self.source is None

    @property
    def source_id(self) -> str:
        """What a slide is counted from, as recorded in the journal (a resume must match it)."""
        if self.source is not None:
            return f"files:{Path(self.source).resolve()}"
        if self.camera is not None:
            return f"camera:{self.camera.spec}"
        return f"ring:{self.ring}"


@dataclass
class RunOutcome:
    """What the run left: the last slide (None: the camera stopped before any start_slide), another
    box with this device id, and messages the broker never acknowledged."""

    run: SlideRun | None
    twin: str | None
    undelivered: int


class CountingService:
    """The appliance's run: source, models, journal, MQTT, preview and health, started and stopped together."""

    def __init__(self, config: AppConfig, request: RunRequest, out: TextIO) -> None:
        self.config, self.request = config, request
        self.console = LiveConsole(out, None, request.quiet)
        self.stats = RunStats()
        self.control = SlideControl(config.counting.target_count)
        self.publisher: MqttPublisher | None = None
        self.preview: PreviewPublisher | None = None
        self.capture: CaptureThread | None = None
        self._last_gate_decision: str | None = None
        self._ring = request.ring or f"run-{os.getpid()}"
        # a bad folder fails before the models load
        replay = self._open_replay() if request.source is not None else None
        self._camera = self._open_camera(request.camera) if request.camera is not None else None
        self.appliance: Appliance = build_appliance(config, request.um_per_px)
        self.source: CameraSource = replay if replay is not None else self._gated_ring()
        self.topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.factory = MessageFactory(config.device_id, self.appliance.provenance)
        counting = config.counting
        self.journal = SlideJournal(counting.journal, counting.journal_keep_days) if counting.journal else None
        # Which slide this run counts, settled before anything is published: never another patient's.
        self.resume: Slide | None = None
        if self.journal is not None and (not request.wait_for_start or request.resume or request.close_interrupted):
            self.resume = resolve_open_slide(
                self.journal, request.specimen_id, request.source_id, request.resume, request.close_interrupted
            )
        waiting = self.journal is not None and request.wait_for_start and self.resume is None
        self.pending = self.journal.open_slide() if waiting and self.journal is not None else None
        self.store = self._open_store()

    def _open_store(self) -> SlideStore:
        """The slide store for review: the configured one, else a file for this run only (the demo)."""
        review = self.config.review
        path = review.store
        if path is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="marrow-review-")
            path = Path(self._scratch.name) / "slides.sqlite"
        return SlideStore(
            path, review.keep_days, review.max_cells_per_slide, review.jpeg_quality, review.context_scale,
            review.field_width,
        )  # fmt: skip

    def stop_on_signals(self) -> None:
        """SIGTERM (systemctl stop) and Ctrl-C end the run as a stop_slide would: the field in hand is
        finished, the report published, status ``stopped``. A second signal interrupts at once."""
        import signal

        control = self.control

        def handle(signum: int, _frame: object) -> None:
            if control.shutdown.is_set():
                raise KeyboardInterrupt
            self.console.say(f"\n{signal.Signals(signum).name}: finishing this field, then the report (again to abort)")
            control.request_shutdown()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- sources ---------------------------------------------------------------------------------

    def _open_replay(self) -> CameraSource:
        from edge.capture.replay import ImageFilesSource, open_replay

        source = open_replay(self.request.source, self.config.analysis.max_field_pixels)  # type: ignore[arg-type]
        if isinstance(source, ImageFilesSource):
            max_fields = self.request.max_fields
            self.console.total = min(len(source.paths), max_fields) if max_fields else len(source.paths)
        if self.request.fps:
            from edge.capture.devices import Paced

            source = Paced(source, self.request.fps)
        return source

    def _open_camera(self, camera: SourceConfig) -> CameraSource:
        from edge.capture.cameras import open_source

        return open_source(camera, self._camera_state)

    def _gated_ring(self) -> GatedRingSource:
        from edge.capture.daemon import GatedRingSource
        from edge.capture.gate import FieldGate

        request = self.request
        idle = request.idle_timeout or (5.0 if request.camera is not None else 30.0)
        return GatedRingSource(
            self._ring,
            FieldGate(self.config.gate),
            idle_timeout=idle,
            on_event=self._gate_event,
            on_frame=self._live_frame,
            stop_event=self.control.stop_requested,  # a stop or a shutdown wakes a wait for frames
        )

    def _camera_state(self, state: str, detail: str) -> None:
        if self.publisher is not None:
            self.publisher.camera_state(state, detail)  # retained status: the display shows it

    def _gate_event(self, event: GateEvent) -> None:
        self.stats.frames += 1
        self.stats.ring_skipped = self.source.skipped  # type: ignore[attr-defined]
        # Changes and every accepted field: the display flashes them; a still stage sends nothing.
        decision = event.decision.value
        if self.publisher is None or (decision == self._last_gate_decision and not event.accepted):
            return
        self._last_gate_decision = decision
        try:
            self.publisher.publish(self.topics.gate, self.factory.gate(event))
        except PublishError as exc:
            log.warning("gate event not published: %s", exc)

    def _live_frame(self, image: np.ndarray, event: GateEvent | None) -> None:
        if self.preview is not None:
            self.preview.offer(image, event=event)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        manifest, request = self.appliance.bundle.manifest, self.request
        self.console.say(
            f"marrow-edge {__version__} | bundle {manifest.name} {manifest.version} "
            f"({self.appliance.bundle.short_hash}){' UNTRAINED' if manifest.untrained else ''} | "
            f"{self.appliance.provenance.backend} {','.join(self.appliance.provenance.providers)}"
        )
        host, port, broker = find_broker(self.config, self.console.say)
        display: Display | None = None
        try:
            if request.display:
                from edge.display.server import Display

                # before the box connects: the page sees it all
                display = Display(self.config, host, port, self.store).start()
                self.console.say(f"display: {display.url}")
            outcome = self._connected(host, port)
            if display is not None and not request.wait_for_start:
                self._hold_display(display.url)
            return outcome
        finally:
            if display is not None:
                display.stop()
            if broker is not None:
                broker.stop()
            self.store.close()

    def _hold_display(self, url: str) -> None:
        """The demo's page keeps the finished slide on screen until the user is done with it."""
        hold = self.request.display_hold
        if hold is not None and hold <= 0:
            return
        how_long = "until Ctrl-C" if hold is None else f"for {hold:g} s (Ctrl-C closes it sooner)"
        self.console.say(f"display: the finished slide stays on {url} {how_long}")
        self.control.shutdown.wait(hold)

    def _connected(self, host: str, port: int) -> RunOutcome:
        config, request, control = self.config, self.request, self.control
        publisher = self.publisher = MqttPublisher(host, port, self.topics, self.factory, config.mqtt)
        publisher.on_twin = lambda other: control.request_shutdown()  # two boxes, one device id: stop
        publisher.serve_commands(CommandHandler(control, self.factory))
        if config.mqtt.home_assistant:
            from edge.mqtt.discovery import discovery_messages

            classes = self.appliance.bundle.class_names
            publisher.announce = discovery_messages(self.topics, config.mqtt.discovery_prefix, classes, __version__)
        publisher.connect()
        if self._camera is not None:  # after the models load: the ring keeps only the newest frames
            from edge.capture.daemon import CaptureThread

            self.capture = CaptureThread(self._camera, self._ring).start()
        if request.ring:
            from edge.systemd import sd_notify

            sd_notify(f"READY=1\nSTATUS=counting fields from ring {request.ring}")
        slide = self.resume or Slide(specimen_id=request.specimen_id, source=request.source_id)
        if self.resume is not None:
            self.console.say(f"resuming slide {slide.slide_id} (specimen {slide.specimen_id}) after a restart")
        if self.pending is not None:
            self.console.say(
                f"slide {self.pending.slide_id} (specimen {self.pending.specimen_id}) is open after a restart: a "
                "start_slide for that specimen resumes it; any other closes it as interrupted"
            )
        where = self.topics.root if request.wait_for_start else f"{self.topics.root}/slide/{slide.slide_id}"
        self.console.say(f"mqtt: publishing to mqtt://{host}:{port} under {where}/")
        self.preview = self._start_preview()
        state = config.counting.journal or config.mqtt.outbox
        health = HealthReporter(
            publisher, self.factory, self.stats, self.appliance.provenance.backend, config.mqtt.health_interval_s,
            Path(state).parent if state else None, gpu=find_gpu(), lis=self._lis_backlog(),
        ).start()  # fmt: skip
        current = CurrentSlide(publisher, self.topics, self.factory, config.mqtt.retain_slides, self.journal)
        metrics = self._start_metrics(health, current)
        context = SlideContext(
            self.appliance, self.source, publisher, self.topics, self.factory, control, self.journal,
            self.preview, request.max_fields, self._on_field, self._on_skip, self.store, current,
        )  # fmt: skip
        try:
            run = self._serve_slides(context) if request.wait_for_start else run_slide(context, slide)
        finally:
            if metrics is not None:
                metrics.stop()
            health.stop()
            if self.preview is not None:
                self.preview.stop()
            publisher.close()  # waits for the broker's acknowledgements: undelivered is known after it
            self.source.close()
            if self.capture is not None:
                self.capture.close()
        if not request.wait_for_start and run is not None:
            self.console.report(run, self.appliance.bundle.manifest.untrained)
        return RunOutcome(run, publisher.twin, publisher.undelivered)

    def _lis_backlog(self) -> Callable[[], dict] | None:
        if self.config.reports.lis is None:
            return None
        from edge.reports.lis import lis_backlog

        store = self.store
        return lambda: lis_backlog(store)

    def _start_metrics(self, health: HealthReporter, current: CurrentSlide) -> MetricsServer | None:
        """Prometheus /metrics (``metrics.port``): the health figures and the current slide."""
        settings = self.config.metrics
        if settings.port is None:
            return None
        from edge.service.metrics import ApplianceCollector, MetricsServer

        collector = ApplianceCollector(
            lambda: health.message(new_window=False), lambda: current.latest, self.config.device_id,
            self.appliance.provenance,
        )  # fmt: skip
        server = MetricsServer(collector, settings.host, settings.port).start()
        self.console.say(f"metrics: http://{settings.host}:{server.port}/metrics")
        return server

    def _start_preview(self) -> PreviewPublisher | None:
        """The preview path for the display: counted fields always; a live camera's frames too."""
        from edge.service.preview import PreviewPublisher

        if not self.config.preview.enabled or self.publisher is None:
            return None
        live = self.request.live
        return PreviewPublisher(
            self.publisher,
            self.factory,
            self.config.preview,
            self.appliance.bundle.manifest.classes,
            analyze=self.appliance.analyzer if live else None,
            models_lock=self.appliance.models_lock,
        ).start()

    def _on_field(self, result: FieldResult, tally: Tally) -> None:
        self.stats.field(result.timings_ms)
        size = tally.size.check()
        self.stats.scale = size.summary()
        self.stats.frames += 0 if self.request.live else 1
        self.console.field(result, tally)

    def _on_skip(self, source_name: str, reason: str, tally: Tally) -> None:
        self.stats.skipped += 1
        self.stats.frames += 0 if self.request.live else 1
        self.console.skip(source_name, reason, tally)

    def _camera_gone(self) -> bool:
        source = self.source
        return bool(getattr(source, "finished", False)) or (self.capture is not None and not self.capture.alive)

    def _serve_slides(self, context: SlideContext) -> SlideRun | None:
        """Service mode: each slide begins with start_slide and ends with stop_slide (or the camera ending).

        A slide left open by a crash (``pending``): a start_slide for its specimen resumes it; any
        other closes it as interrupted first, so another patient's cells never join it."""
        control, source = self.control, self.source
        resume, last = self.resume, None
        while True:
            if resume is not None:
                slide, resume = resume, None
            else:
                self.console.say(f"waiting for start_slide (on {self.config.device_id}'s cmd/start_slide)")
                while not control.start_requested.is_set():
                    source.watch(control.start_requested, 0.5)  # type: ignore[attr-defined]  # the live view
                    if control.shutdown.is_set() or self._camera_gone():
                        return last
                slide = self._slide_for(control.take_start())
            self.console.say(f"slide {slide.slide_id} (specimen {slide.specimen_id}) started")
            source.gate.new_slide()  # type: ignore[attr-defined]
            last = run_slide(context, slide)
            self.console.report(last, False)
            if control.shutdown.is_set() or self._camera_gone():
                return last

    def _slide_for(self, specimen: str | None) -> Slide:
        pending, self.pending, journal = self.pending, None, self.journal
        if pending is not None and journal is not None:
            if specimen == pending.specimen_id:
                self.console.say(f"resuming slide {pending.slide_id} (specimen {pending.specimen_id}) after a restart")
                return pending
            journal.close_slide(pending, interrupted=True)
            self.console.say(
                f"slide {pending.slide_id} (specimen {pending.specimen_id}) closed as interrupted: "
                f"start_slide named specimen {specimen}"
            )
        return Slide(specimen_id=specimen, source=self.request.source_id)
