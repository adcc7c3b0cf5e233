"""Commands on ``marrow/v1/<device_id>/cmd/<verb>``, answered on ``cmd/<verb>/reply``.

Verbs: ``start_slide`` (specimen_id, target_count), ``stop_slide``, ``set_target``
(target_count), ``ping``. Payloads are JSON objects validated by pydantic; an optional
``request_id`` is echoed. Anything else (an unknown verb, malformed JSON, a payload over
4 KiB, a bad value) changes nothing and is answered with a precise error. ``handle`` never
raises: a command can not stop the count.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.counting.control import SlideControl
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import Envelope

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096


# A specimen id names a patient's slide in every message and report: start_slide and the
# command line's --specimen-id take the same form.
SPECIMEN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
SPECIMEN_ID_MAX = 64


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str | None = Field(None, max_length=64, description="Echoed in the reply.")


class StartSlide(_Command):
    specimen_id: str = Field(min_length=1, max_length=SPECIMEN_ID_MAX, pattern=SPECIMEN_ID_PATTERN)
    target_count: int | None = Field(None, ge=1, le=100_000)


class StopSlide(_Command):
    pass


class SetTarget(_Command):
    target_count: int = Field(ge=1, le=100_000)


class Ping(_Command):
    pass


VERBS: dict[str, type[_Command]] = {
    "start_slide": StartSlide,
    "stop_slide": StopSlide,
    "set_target": SetTarget,
    "ping": Ping,
}


class CommandReply(Envelope):
    kind: Literal["reply"] = "reply"
    verb: str = Field(max_length=64)
    request_id: str | None = None
    ok: bool
    error: str | None = Field(None, description="Why nothing was done, when ok is false.")
    state: Literal["idle", "counting"]
    slide_id: str | None = None
    specimen_id: str | None = None
    target_count: int | None = None


@dataclass
class PendingReply:
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict | None = None


class ReplyWaiter:
    """Commands sent and not yet answered, by request_id: a sender waits, the MQTT thread answers.
    The display and the fleet page both send commands this way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, PendingReply] = {}

    @contextmanager
    def expect(self) -> Iterator[tuple[str, PendingReply]]:
        """A fresh request_id and what its reply will fill; forgotten on leaving the block."""
        request_id, pending = uuid.uuid4().hex, PendingReply()
        with self._lock:
            self._waiting[request_id] = pending
        try:
            yield request_id, pending
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)

    def answer(self, reply: CommandReply) -> None:
        """A box's reply: wakes the sender waiting for its request_id (others are ignored)."""
        with self._lock:
            pending = self._waiting.get(reply.request_id or "")
        if pending is not None:
            pending.reply = reply.model_dump(mode="json", by_alias=True)
            pending.done.set()


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"


class CommandHandler:
    """Validates a command, asks the slide control, answers with a CommandReply (any thread)."""

    def __init__(self, control: SlideControl, factory: MessageFactory) -> None:
        self.control = control
        self.factory = factory

    def _reply(self, verb: str, request_id: str | None, error: str | None) -> CommandReply:
        slide = self.control.slide
        return CommandReply(
            **self.factory._envelope(),
            verb=verb[:64],
            request_id=request_id,
            ok=error is None,
            error=error,
            state=self.control.state,
            slide_id=slide.slide_id if slide else None,
            specimen_id=slide.specimen_id if slide else self.control.pending_specimen,
            target_count=self.control.target_count,
        )

    def refuse(self, verb: str, error: str) -> CommandReply:
        """Answer without acting (e.g. a retained command)."""
        return self._reply(verb[:64], None, error)

    def handle(self, verb: str, payload: bytes) -> CommandReply:
        request_id = None
        try:
            if len(payload) > MAX_PAYLOAD_BYTES:
                too_big = f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit"
                return self._reply(verb, None, too_big)
            if verb not in VERBS:
                return self._reply(verb, None, f"unknown verb {verb[:64]!r}; verbs: {', '.join(sorted(VERBS))}")
            try:
                data = json.loads(payload.decode("utf-8")) if payload.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return self._reply(verb, None, f"malformed JSON: {exc}")
            if not isinstance(data, dict):
                return self._reply(verb, None, f"expected a JSON object, got {type(data).__name__}")
            maybe_id = data.get("request_id")
            request_id = maybe_id if isinstance(maybe_id, str) and len(maybe_id) <= 64 else None
            try:
                command = VERBS[verb].model_validate(data)
            except ValidationError as exc:
                return self._reply(verb, request_id, _first_error(exc))
            if isinstance(command, StartSlide):
                error = self.control.start(command.specimen_id, command.target_count)
            elif isinstance(command, StopSlide):
                error = self.control.stop()
            elif isinstance(command, SetTarget):
                error = self.control.set_target(command.target_count)
            else:
                error = None
            return self._reply(verb, request_id, error)
        except Exception as exc:  # a command must never take the appliance down
            log.exception("command %r failed", verb[:64])
            return self._reply(verb, request_id, f"internal error: {type(exc).__name__}")
