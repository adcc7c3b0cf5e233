"""JSON Schemas and the AsyncAPI 3.0 document of the MQTT API, generated from the pydantic
models in ``edge.mqtt.messages`` (the single source). Committed under ``schemas/``; a test
fails when they are out of date.

    python -m edge.mqtt.schema            # rewrite schemas/
    python -m edge.mqtt.schema --check    # exit 1 when schemas/ differs from the models
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edge.mqtt.commands import MAX_PAYLOAD_BYTES, VERBS, CommandReply
from edge.mqtt.messages import (
    SCHEMA_VERSION,
    FieldMessage,
    GateMessage,
    HealthMessage,
    PreviewMessage,
    ReportMessage,
    StatusMessage,
    TallyMessage,
)

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class Channel:
    name: str
    address: str  # under marrow/v1/{device_id}/
    model: type[BaseModel]
    retained: bool
    qos: int
    description: str
    action: str = "send"  # send: the box publishes; receive: the box listens (commands)


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
    ),
    Channel(
        "preview",
        "preview",
        PreviewMessage,
        False,
        0,
        "Local only (the lab bridge never forwards it): the newest frame as a small JPEG with the cells "
        "found on it, at most preview.fps per second; newest wins, QoS 0. Counted fields are always sent.",
    ),
    Channel(
        "health",
        "health",
        HealthMessage,
        False,
        1,
        "Every mqtt.health_interval_s: rates, stage latency, drops, queue depths, outbox alarm, memory.",
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
    ),
]


def json_schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema per message."""
    return {c.model.__name__: c.model.model_json_schema(by_alias=True) for c in CHANNELS}


def asyncapi() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(c.model, "serialization") for c in CHANNELS], ref_template="#/components/schemas/{model}", by_alias=True
    )
    channels, operations, messages = {}, {}, {}
    for c in CHANNELS:
        parameters = {"device_id": {"description": "The box (config device_id)."}}
        if "{slide_id}" in c.address:
            parameters["slide_id"] = {"description": "The slide (UTC start time and a random suffix)."}
        if "{verb}" in c.address:
            parameters["verb"] = {"description": "The command's verb.", "enum": sorted(VERBS)}
        messages[c.name] = {
            "name": c.name,
            "title": c.model.__name__,
            "summary": (c.model.__doc__ or c.description).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{c.model.__name__}"},
            "bindings": {"mqtt": {"qos": c.qos, "retain": c.retained}},
        }
        channels[c.name] = {
            "address": "marrow/v1/{device_id}/" + c.address,
            "description": c.description,
            "parameters": parameters,
            "messages": {c.name: {"$ref": f"#/components/messages/{c.name}"}},
        }
        operations[f"{c.action}_{c.name}"] = {
            "action": c.action,
            "channel": {"$ref": f"#/channels/{c.name}"},
            "messages": [{"$ref": f"#/channels/{c.name}/messages/{c.name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "marrow-edge MQTT API",
            "version": SCHEMA_VERSION,
            "description": "What a marrow-edge box publishes and the commands it takes. Every payload it "
            "sends carries schema_version, device_id, "
            "seq, a unique message_id (de-duplicate on it), UTC time; results carry provenance. "
            "Generated from edge/mqtt/messages.py by `python -m edge.mqtt.schema`.",
        },
        "defaultContentType": "application/json",
        "servers": {"box": {"host": "localhost:1883", "protocol": "mqtt", "description": "The box's loopback broker."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs["$defs"]},
    }


def rendered() -> dict[str, str]:
    """File name under schemas/ -> content."""
    files = {
        f"json/{name}.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in json_schemas().items()
    }
    files["asyncapi.yaml"] = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100)
    return files


def stale(root: Path = SCHEMAS_DIR) -> list[str]:
    return [
        name for name, text in rendered().items() if not (root / name).is_file() or (root / name).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether schemas/ is up to date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for name in out_of_date:
            sys.stderr.write(f"schemas/{name} is out of date: run python -m edge.mqtt.schema\n")
        return 1 if out_of_date else 0
    for name, text in rendered().items():
        path = SCHEMAS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
