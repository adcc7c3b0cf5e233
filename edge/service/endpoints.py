"""What a run reads from and publishes to: the live source (the command line's camera or ring, else
the installed box's ``source``) and the MQTT broker (the configured one, one answering on
localhost, else an embedded mosquitto for a demo)."""

from __future__ import annotations

from collections.abc import Callable

from edge.config import AppConfig, SourceConfig, parse_mqtt_url
from edge.errors import ConfigError
from edge.mqtt.broker import EmbeddedBroker, answers


def live_source(
    camera_spec: str | None, ring: str | None, fps: float | None, config: AppConfig
) -> tuple[SourceConfig | None, str | None]:
    """(camera, ring) from the command line's --camera/--ring, else from the config's ``source``
    (the installed appliance)."""
    from edge.capture.cameras import CameraSettings, source_from_spec
    from edge.config import RingSource

    camera = source_from_spec(camera_spec, CameraSettings(fps=fps)) if camera_spec else None
    if camera is None and not ring:
        if config.source is None:
            raise ConfigError("nothing to count: give --source, --camera or --ring, or set source: in the config")
        camera = config.source
    if isinstance(camera, RingSource):
        return None, camera.name
    return camera, ring


def field_scale(
    um_per_px: float | None, camera: SourceConfig | None, named: bool, config: AppConfig
) -> float | None:
    """The run's camera scale (um per pixel): the command line's, else the live source's own, else the
    config's source when the command line named no source (``named`` False), else ``analysis.um_per_px``."""
    if um_per_px is not None:
        return um_per_px
    for source in (camera, None if named else config.source):
        if source is not None and source.um_per_px is not None:
            return source.um_per_px
    return config.analysis.um_per_px


def find_broker(config: AppConfig, say: Callable[[str], None]) -> tuple[str, int, EmbeddedBroker | None]:
    """The configured broker; else one answering on localhost:1883; else an embedded mosquitto (returned: the
    run stops it)."""
    if config.mqtt.url:
        host, port = parse_mqtt_url(config.mqtt.url)
        return host, port, None
    if answers("127.0.0.1", 1883):
        say("mqtt: no broker configured; using the one answering on localhost:1883")
        return "127.0.0.1", 1883, None
    broker = EmbeddedBroker().start()
    say(
        f"mqtt: no broker configured and none on localhost:1883: started an embedded mosquitto on "
        f"{broker.url} for this run (subscribe there to see the messages)"
    )
    return broker.host, broker.port, broker
