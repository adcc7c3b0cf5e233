"""The MQTT API as one table: every channel's topic (below ``<prefix>/<device_id>/``), payload
model, QoS, retained flag, outbox and bridge policy. The publisher, the display feed, the
monitor and the AsyncAPI document (``edge.mqtt.schema``) all read it."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from edge.mqtt.commands import MAX_PAYLOAD_BYTES, VERBS, CommandReply
from edge.mqtt.messages import (
    CurrentSlideMessage,
    FieldMessage,
    GateMessage,
    HealthMessage,
    PreviewMessage,
    ReportMessage,
    ReviewMessage,
    SignedReportMessage,
    StatusMessage,
    TallyMessage,
)


@dataclass(frozen=True)
class Channel:
    name: str
    address: str  # under marrow/v1/{device_id}/
    model: type[BaseModel]
    retained: bool
    qos: int
    description: str
    action: str = "send"  # send: the box publishes; receive: the box listens (commands)
    outbox: bool = True  # kept on disk until the broker acknowledges it (with mqtt.outbox)
    bridged: bool = True  # forwarded to the lab broker by the bridge template

    def matches(self, rest: str) -> bool:
        """Whether a topic below the device's root (``slide/S1/field``) is this channel's."""
        want, have = self.address.split("/"), rest.split("/")
        return len(want) == len(have) and all(w.startswith("{") or w == h for w, h in zip(want, have, strict=True))


CHANNELS = [
    Channel(
        "status",
        "status",
        StatusMessage,
        True,
        1,
        "Birth `online` after connecting (and after every reconnect), last will `offline`, `stopped` on a "
        "clean exit; carries the bundle, backend and the live camera's state.",
    ),
    Channel(
        "gate",
        "gate",
        GateMessage,
        False,
        1,
        "Field-gate decisions of a live camera: on every change and for every accepted field.",
        outbox=False,  # of the moment: replayed after a restart they would mislead
        bridged=False,
    ),
    Channel(
        "preview",
        "preview",
        PreviewMessage,
        False,
        0,
        "Local only (the lab bridge never forwards it): the newest frame as a small JPEG with the cells "
        "found on it, at most preview.fps per second; newest wins, QoS 0. Counted fields are always sent.",
        outbox=False,
        bridged=False,
    ),
    Channel(
        "health",
        "health",
        HealthMessage,
        False,
        1,
        "Every mqtt.health_interval_s: rates, stage latency, drops, queue depths, outbox alarm, memory.",
        outbox=False,  # bridged: a lab dashboard watches the boxes' health (never kept on disk: of the moment)
    ),
    Channel(
        "current",
        "current",
        CurrentSlideMessage,
        True,
        1,
        "The slide being counted, or the last one finished: state, cells counted, percentages, rule states "
        "and the slide's call, after every field (retained; Home Assistant's sensors read it).",
        outbox=False,  # of the moment: the retained copy on the broker is the newest, and the tally is kept
    ),
    Channel("field", "slide/{slide_id}/field", FieldMessage, False, 1, "One counted field: every cell."),
    Channel(
        "tally",
        "slide/{slide_id}/tally",
        TallyMessage,
        True,
        1,
        "The slide's running differential with intervals and rule states, after every field.",
    ),
    Channel("report", "slide/{slide_id}/report", ReportMessage, True, 1, "The slide's final report."),
    Channel(
        "review",
        "slide/{slide_id}/review",
        ReviewMessage,
        False,
        1,
        "A technician's change on the review page (who, which cells, old -> new) with the machine's and the "
        "reviewed counts: preliminary until signed.",
        outbox=False,  # sent by the display; the store keeps every change and the signed report carries them
    ),
    Channel(
        "signed",
        "slide/{slide_id}/signed",
        SignedReportMessage,
        True,
        1,
        "The reviewed report as signed (final), or its newest amendment: reviewed counts, intervals and rules, "
        "the machine's counts, the operator and the whole audit trail. Re-sent until the broker acknowledges it.",
        outbox=False,  # the slide store holds it until acknowledged
    ),
    *(
        Channel(
            f"cmd_{verb}",
            f"cmd/{verb}",
            model,
            False,
            1,
            f"Command {verb}: a JSON object (at most {MAX_PAYLOAD_BYTES} bytes); answered on cmd/{verb}/reply.",
            "receive",
        )
        for verb, model in VERBS.items()
    ),
    Channel(
        "cmd_reply",
        "cmd/{verb}/reply",
        CommandReply,
        False,
        1,
        "The answer to every command, valid or not: ok, or a precise error; the slide state after it.",
        # bridged: a command from the lab gets its reply at the lab
    ),
]


BY_NAME = {c.name: c for c in CHANNELS}
DEVICE_KINDS = tuple(c.name for c in CHANNELS if c.action == "send" and "/" not in c.address)
SLIDE_KINDS = tuple(c.name for c in CHANNELS if c.address.startswith("slide/"))


def channel_of(root: str, topic: str) -> Channel | None:
    """The channel of a full topic under ``root`` (``marrow/v1/<device_id>``), or None."""
    if not topic.startswith(root + "/"):
        return None
    rest = topic[len(root) + 1 :]
    return next((c for c in CHANNELS if c.matches(rest)), None)
