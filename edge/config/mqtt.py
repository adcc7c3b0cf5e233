"""The box's MQTT link: broker, credentials and TLS, the topic tree's root, the outbox and the
health period."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from edge.config.base import Strict


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` or ``mqtts://host:port`` -> (host, port); the port defaults to 1883 / 8883.

    TLS itself is switched on by ``mqtt.tls_ca`` (a CA to verify the broker against).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {url!r}")
    rest = rest.rstrip("/")
    default_port = "8883" if scheme == "mqtts" else "1883"
    if rest.startswith("["):  # IPv6: mqtt://[::1]:1883
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"expected mqtt://[IPv6]:PORT, got {url!r}")
        port_text = after[1:] or default_port
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            host, port_text = rest, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port of {url!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {url!r}")
    return host, port


class MqttConfig(Strict):
    url: str | None = Field(
        None,
        description="mqtt://host:port of the broker. None: use localhost:1883 if it answers, "
        "else start an embedded mosquitto on loopback.",
    )
    topic_prefix: str = Field(
        "marrow/v1",
        pattern=r"^[^/+#\s][^+#\s]*[^/+#\s]$|^[^/+#\s]$",
        description="Root of the topic tree (no wildcards + or #, no leading or trailing /).",
    )
    qos: Literal[0, 1, 2] = 1
    keepalive_s: int = Field(30, ge=5)
    connect_timeout_s: float = Field(5.0, gt=0)
    publish_timeout_s: float = Field(10.0, gt=0, description="Longest wait for a PUBACK.")
    username: str | None = Field(None, description="The box's broker account (the ACL template expects its device_id).")
    password: SecretStr | None = Field(
        None, description="From the environment (MARROW_EDGE__MQTT__PASSWORD) only; never in the config file."
    )
    password_file: Path | None = Field(
        None,
        description="File holding the password (systemd LoadCredential: $CREDENTIALS_DIRECTORY/mqtt-password is "
        "used when present and this is unset).",
    )
    tls_ca: Path | None = Field(None, description="CA certificate: connect with TLS and verify the broker against it.")
    tls_cert: Path | None = Field(None, description="Client certificate for brokers that require one.")
    tls_key: Path | None = Field(None, description="Key of the client certificate.")
    outbox: Path | None = Field(
        None,
        description="SQLite outbox: every field, tally and report message is on disk before it is published and "
        "re-sent after a reconnect or a restart until acknowledged. Unset: outbox.sqlite in the state "
        "directory (edge/config/state.py); null: memory only.",
    )
    outbox_max_mb: int = Field(512, ge=1, description="Outbox size above which the health alarm is raised.")
    health_interval_s: float = Field(10.0, gt=0, description="Seconds between health messages.")
    retain_slides: int = Field(
        20, ge=1, description="Slides whose retained tally and report the broker keeps; older ones are cleared."
    )
    home_assistant: bool = Field(False, description="Announce the main sensors by Home Assistant MQTT discovery.")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[^/+#\s]+$", description="Home Assistant's prefix.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_mqtt_url(value)
        return value
