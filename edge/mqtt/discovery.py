"""Home Assistant MQTT discovery (``mqtt.home_assistant``): the box's main sensors, announced
retained under ``<discovery_prefix>/sensor/<node>/<object>/config``; their state is the retained
``current`` topic and their availability the box's status (online / offline / stopped)."""

from __future__ import annotations

import json
import re

from edge.mqtt.topics import Topics

# object id -> (name, value template, unit, state class, icon); unit and state class only for numbers
SENSORS: dict[str, tuple[str, str, str | None, str | None, str]] = {
    "state": ("Slide state", "{{ value_json.state }}", None, None, "mdi:microscope"),
    "slide": ("Slide", "{{ value_json.slide_id or 'none' }}", None, None, "mdi:card-text-outline"),
    "cells_counted": ("Cells counted", "{{ value_json.cells_counted }}", "cells", "measurement", "mdi:counter"),
    "rule_state": ("Diagnostic rule", "{{ value_json.rule_state }}", None, None, "mdi:alert-decagram-outline"),
    "domain": ("Domain guard", "{{ value_json.domain }}", None, None, "mdi:shield-alert-outline"),
}
BLAST = ("blast_percent", "Blasts", "{{ value_json.percent.get('blast', 0) }}", "%", "measurement", "mdi:percent")


def _node(device_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", device_id)  # discovery ids allow [A-Za-z0-9_-] only


def discovery_messages(
    topics: Topics, prefix: str, classes: list[str], software_version: str
) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for each sensor; the blast share only for a bundle with a blast class."""
    node = _node(topics.device_id)
    device = {
        "identifiers": [f"marrow-edge-{node}"],
        "name": f"marrow-edge {topics.device_id}",
        "manufacturer": "marrow-edge",
        "model": "bone-marrow differential counter",
        "sw_version": software_version,
    }
    sensors = dict(SENSORS)
    if "blast" in classes:
        sensors[BLAST[0]] = BLAST[1:]
    out = []
    for object_id, (name, template, unit, state_class, icon) in sensors.items():
        config: dict[str, object] = {
            "name": name,
            "unique_id": f"{node}_{object_id}",
            "object_id": f"marrow_edge_{node}_{object_id}",
            "state_topic": topics.current,
            "value_template": template,
            "availability_topic": topics.status,
            "availability_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
            "icon": icon,
            "device": device,
        }
        if unit:
            config["unit_of_measurement"] = unit
        if state_class:
            config["state_class"] = state_class
        out.append((f"{prefix}/sensor/{node}/{object_id}/config", json.dumps(config, sort_keys=True).encode()))
    return out
