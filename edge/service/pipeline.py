"""Assemble the count path from the config and run one slide through it."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge import __version__
from edge.analysis.field import FieldAnalyzer, FieldResult
from edge.analysis.field_models import build_field_model, crop_margin_for, needs_verification
from edge.capture.replay import verification_fields
from edge.capture.source import CameraSource
from edge.config import AppConfig
from edge.counting.control import SlideControl
from edge.counting.journal import SlideJournal
from edge.counting.rules import RulePack, load_rule_pack
from edge.counting.tally import Slide, Tally
from edge.engines.bundle import Bundle, load_bundle
from edge.errors import EdgeError, PublishError
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import BundleRef, Provenance
from edge.mqtt.publisher import Publisher
from edge.mqtt.topics import Topics
from edge.review.recount import slide_setup
from edge.review.store import SlideStore
from edge.service.current import CurrentSlide
from edge.service.preview import PreviewPublisher

log = logging.getLogger(__name__)


@dataclass
class Appliance:
    """Everything that outlives one slide: the verified bundle, the loaded models, the rules."""

    config: AppConfig
    bundle: Bundle
    analyzer: FieldAnalyzer
    rules: RulePack
    provenance: Provenance
    # The count path holds it while analysing; the preview path only tries it (counting comes first,
    # and the fused CUDA-graph models must not run two fields at once).
    models_lock: threading.Lock = field(default_factory=threading.Lock)

    def new_tally(self) -> Tally:
        counting = self.config.counting
        return Tally(
            self.bundle.manifest.classes,
            self.rules,
            counting.target_count,
            counting.confidence,
            tuple(counting.denominator_roles),
            self.bundle.manifest.domain_guard,
            counting.review_below,
            self.bundle.manifest.scale,
            self.analyzer.um_per_px,
        )

    def slide_setup(self) -> dict:
        """What the slide store keeps so a slide is recounted after review exactly as it was counted."""
        manifest = self.bundle.manifest
        return slide_setup(
            manifest.classes,
            self.rules,
            self.config.counting,
            manifest.domain_guard,
            manifest.classifier.crop_size,
            crop_margin_for(self.bundle, self.config.analysis),
            self.analyzer.countable_threshold,
            self.config.review.flag_margin,
            manifest.scale,
            self.analyzer.um_per_px,
        )


def build_appliance(config: AppConfig, um_per_px: float | None = None) -> Appliance:
    """The verified bundle, its models and rules; ``um_per_px`` the camera's scale (None: fields are fitted)."""
    bundle = load_bundle(config.bundle)
    manifest = bundle.manifest
    fields = verification_fields(config.engine.verify_fields) if needs_verification(config) else None
    model, _ = build_field_model(bundle, config, fields)
    analyzer = FieldAnalyzer(
        bundle, model, config.analysis.countable_threshold, um_per_px=um_per_px, tile=config.analysis.tile_px
    )
    # Warm up: the first run of a session allocates and plans; keep that out of the first field.
    analyzer(np.full((256, 256, 3), 200, np.uint8))
    provenance = Provenance(
        software_version=__version__,
        bundle=BundleRef(
            name=manifest.name,
            version=manifest.version,
            hash=bundle.short_hash,
            untrained=manifest.untrained,
            trained_on=manifest.trained_on,
            clinical_use=manifest.clinical_use,
        ),
        backend=model.name,
        providers=model.providers,
    )
    if manifest.untrained:
        log.warning("bundle %s is UNTRAINED (random weights): counts exercise the system, nothing more", manifest.name)
    return Appliance(config, bundle, analyzer, load_rule_pack(config.counting.rules), provenance)


@dataclass
class SlideRun:
    slide: Slide
    tally: Tally
    publish_failures: int = 0
    store_error: str | None = None  # the slide store failed (disk full?): not in review until imported


FieldCallback = Callable[[FieldResult, Tally], None]
SkipCallback = Callable[[str, str, Tally], None]


@dataclass
class SlideContext:
    """What counting a slide needs besides the slide: the same for every slide of a run."""

    appliance: Appliance
    source: CameraSource
    publisher: Publisher
    topics: Topics
    factory: MessageFactory
    control: SlideControl | None = None
    journal: SlideJournal | None = None
    preview: PreviewPublisher | None = None
    max_fields: int | None = None
    on_field: FieldCallback | None = None
    on_skip: SkipCallback | None = None
    store: SlideStore | None = None  # every cell's crops for the technician's review
    current: CurrentSlide | None = None  # the retained summary dashboards read


def run_slide(ctx: SlideContext, slide: Slide | None = None) -> SlideRun:
    """Count every field of the context's source as one slide; publish field, tally and the final report.

    A field that cannot be read or analysed is skipped, logged and listed in the report;
    the slide goes on and nothing already counted is dropped.
    """
    appliance, source, publisher, topics, factory = ctx.appliance, ctx.source, ctx.publisher, ctx.topics, ctx.factory
    control, journal, preview, max_fields = ctx.control, ctx.journal, ctx.preview, ctx.max_fields
    on_field, on_skip, store = ctx.on_field, ctx.on_skip, ctx.store
    run = SlideRun(slide or Slide(), appliance.new_tally())
    slide, tally = run.slide, run.tally
    names = appliance.bundle.class_names

    def send(topic: str, message: object, retain: bool = False) -> None:
        try:
            publisher.publish(topic, message, retain=retain)  # type: ignore[arg-type]
        except PublishError as exc:
            run.publish_failures += 1
            log.error("publish to %s failed: %s", topic, exc)

    def keep(what: str, method: str, *args: object) -> None:
        """The store is the review's copy: trouble with it is logged, the count goes on (the journal holds it)."""
        nonlocal store
        if store is None:
            return
        try:
            getattr(store, method)(*args)
        except (EdgeError, ValueError, sqlite3.Error, OSError) as exc:
            log.error("slide store: %s not kept (%s); counting goes on, the journal keeps the cells", what, exc)
            run.store_error = f"{what}: {exc}"
            store = None

    seen: set[str] = set()
    gate = getattr(source, "gate", None)  # a live camera: its counted-area map is journalled with each field
    if journal is not None:
        journal.begin(slide)
        if resumed := journal.replay(slide, tally):
            log.warning(
                "slide %s resumed after a restart: %d field(s) already in its tally", slide.slide_id, len(resumed)
            )
            # A crash between the journal and the outbox would lose a field's message: send each journalled
            # field again. Their message ids are derived from slide and field, so consumers drop duplicates.
            for result in resumed:
                send(topics.field(slide.slide_id), factory.field(slide, result, names))
        if gate is not None and (state := journal.gate_state(slide)) is not None:
            gate.restore_state(state)  # the areas counted before the restart stay counted
            log.info("slide %s: the field gate's counted-area map restored", slide.slide_id)
        seen = journal.seen(slide)
        if hasattr(source, "skip"):
            source.skip = seen  # a paced replay does not wait out the fields counted before the restart
    keep("the slide", "begin", slide, appliance.slide_setup(), factory.device_id)
    if control is not None:
        control.begin(slide)
    for taken, frame in enumerate(source.frames()):
        if max_fields is not None and taken >= max_fields:
            break
        if control is not None:
            tally.target_count = control.target_count  # set_target applies from the next field
            if control.stop_requested.is_set():
                why = "shutting down" if control.shutdown.is_set() else "by command"
                log.info("slide %s stopped %s", slide.slide_id, why)
                break
        if frame.name in seen:
            log.info("field %s was counted before the restart: not again", frame.name)
            continue
        if frame.image is None:
            reason = frame.error or "unreadable"
        else:
            try:
                with appliance.models_lock:
                    result = appliance.analyzer(frame.image, frame.index, frame.name)
                reason = ""
            except Exception as exc:  # one bad field must not end the slide
                log.exception("analysis of %s failed", frame.name)
                reason = f"{frame.name}: analysis failed: {exc}"
        if reason:
            log.warning("skipped field %s: %s", frame.name, reason)
            if journal is not None:
                journal.record_skip(slide, frame.name, reason)
            tally.skip(frame.name, reason)
            if on_skip:
                on_skip(frame.name, reason, tally)
            continue
        if journal is not None:  # on disk before anyone hears of it
            journal.record(slide, result, gate.export_state() if gate is not None else None)
        tally.add(result)
        keep(f"field {frame.name}", "add_field", slide, result, frame.image)
        send(topics.field(slide.slide_id), factory.field(slide, result, names))
        tally_message = factory.tally(slide, tally)
        send(topics.tally(slide.slide_id), tally_message, retain=True)
        if ctx.current is not None:
            ctx.current.tally(tally_message)
        # frame taken -> its field and tally handed to MQTT: what health reports as end-to-end latency
        result.timings_ms["frame_to_published"] = (time.monotonic() - frame.timestamp) * 1e3
        if preview is not None:
            preview.offer(frame.image, result=result, slide_id=slide.slide_id)  # type: ignore[arg-type]
        if on_field:
            on_field(result, tally)
    slide.ended = dt.datetime.now(dt.timezone.utc)
    if control is not None:
        tally.target_count = control.target_count
    report = factory.report(slide, tally)
    send(topics.report(slide.slide_id), report, retain=True)
    if ctx.current is not None:
        ctx.current.report(report)
    keep("the report", "finish", slide, report.model_dump(mode="json", by_alias=True))
    if journal is not None:
        journal.close_slide(slide)
    if control is not None:
        control.end()
    return run
