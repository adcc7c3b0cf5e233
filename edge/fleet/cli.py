"""The lab side's commands: ``marrow-edge fleet`` (the page over every box) and ``marrow-edge monitor``
(the same feed as a table in a terminal)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.config import load_config, parse_mqtt_url
from edge.errors import EdgeError
from edge.systemd import serve_until_terminated


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fleet",
        help="lab side: a page with one card per box on the lab broker",
        description="Serve a page (on a lab machine) that follows every box under the topic prefix on the lab "
        "broker: online / stopped / offline, the bundle, the slide being counted with its blast share and rule "
        "states, health (load, temperature, free disk, alarms) and the LIS backlog. Read-only; an operator who "
        "signs in may start and stop a box's slide.",
    )
    p.add_argument("--broker", required=True, metavar="mqtts://HOST:PORT", help="the lab broker (overrides mqtt.url)")
    p.add_argument("--config", type=Path, help="YAML config: mqtt credentials and TLS, the fleet section")
    p.add_argument("--prefix", help="topic prefix (overrides mqtt.topic_prefix; default marrow/v1)")
    p.add_argument("--host", help="address to serve on (overrides fleet.host)")
    p.add_argument("--port", type=int, help="port to serve on (overrides fleet.port; 0 picks a free one)")
    p.set_defaults(handler=run_fleet)

    m = sub.add_parser(
        "monitor",
        help="lab side: a live table of every box publishing to a broker",
        description="Subscribe to the status, tallies and reports of every box under the topic prefix and "
        "print a table (device, state, slide, cells counted, rule states) whenever it changes.",
    )
    m.add_argument("--broker", required=True, metavar="mqtt://HOST:PORT")
    m.add_argument("--prefix", default="marrow/v1", help="topic prefix (default: marrow/v1)")
    m.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    m.add_argument("--config", type=Path, help="YAML config: mqtt credentials and TLS for the lab broker")
    m.set_defaults(handler=run_monitor)


def run_fleet(args: argparse.Namespace) -> int:
    from edge.fleet.app import Fleet

    try:
        parse_mqtt_url(args.broker)
    except ValueError as exc:
        raise EdgeError(str(exc)) from None
    mqtt = {"url": args.broker} | ({"topic_prefix": args.prefix} if args.prefix else {})
    where = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    config = load_config(args.config, overrides={"mqtt": mqtt, "fleet": where})
    fleet = Fleet(config).start()
    line = f"fleet: {fleet.url} following {config.mqtt.topic_prefix}/+ on {args.broker}"
    return serve_until_terminated(line, fleet.stop)


def run_monitor(args: argparse.Namespace) -> int:
    from edge.mqtt.monitor import monitor

    try:
        host, port = parse_mqtt_url(args.broker)
    except ValueError as exc:
        raise EdgeError(str(exc)) from None
    mqtt_config = load_config(args.config).mqtt.model_copy(update={"url": args.broker})  # mqtts:// -> TLS
    monitor(host, port, args.prefix, sys.stdout, args.duration, config=mqtt_config)
    return 0
