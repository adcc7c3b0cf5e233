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
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from edge.mqtt.channels import CHANNELS
from edge.mqtt.commands import VERBS
from edge.mqtt.messages import SCHEMA_VERSION

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


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
        }
        channels[c.name] = {
            "address": "marrow/v1/{device_id}/" + c.address,
            "description": c.description,
            "parameters": parameters,
            "messages": {c.name: {"$ref": f"#/components/messages/{c.name}"}},
        }
        operation: dict[str, Any] = {
            "action": c.action,
            "channel": {"$ref": f"#/channels/{c.name}"},
            "messages": [{"$ref": f"#/channels/{c.name}/messages/{c.name}"}],
            # QoS and retain are per publish in MQTT: operation bindings in AsyncAPI 3
            "bindings": {"mqtt": {"qos": c.qos, "retain": c.retained, "bindingVersion": "0.2.0"}},
        }
        if c.name.startswith("cmd_") and c.name != "cmd_reply":
            # request/reply: the box answers each command on cmd/<verb>/reply with the request_id
            operation["reply"] = {
                "channel": {"$ref": "#/channels/cmd_reply"},
                "messages": [{"$ref": "#/channels/cmd_reply/messages/cmd_reply"}],
            }
        operations[f"{c.action}_{c.name}"] = operation
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
        "servers": {
            "box": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "description": "The box's loopback broker (anonymous, loopback only).",
            },
            "lab": {
                "host": "{lab_broker}:8883",
                "protocol": "secure-mqtt",
                "description": "The lab broker, reached over the box broker's TLS bridge (or directly by a dashboard). "
                "Each box logs in with username = its device_id (password, or a client certificate whose CN is "
                "the device_id); the ACL template lets it write only marrow/v1/<device_id>/# and read only its "
                "own commands. The preview channel is never bridged.",
                "variables": {"lab_broker": {"default": "lab-broker.example.org"}},
                "security": [
                    {"$ref": "#/components/securitySchemes/devicePassword"},
                    {"$ref": "#/components/securitySchemes/deviceCertificate"},
                ],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": defs["$defs"],
            "securitySchemes": {
                "devicePassword": {
                    "type": "userPassword",
                    "description": "username = the box's device_id; the password from /etc/marrow-edge/mqtt-password.",
                },
                "deviceCertificate": {
                    "type": "X509",
                    "description": "TLS client certificate whose CN is the box's device_id (mosquitto "
                    "use_identity_as_username).",
                },
            },
        },
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
