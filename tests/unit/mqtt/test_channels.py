"""The one MQTT channel table: the publisher's outbox policy, the display feed's kinds and the lab
bridge template all follow it."""

from paho.mqtt.client import topic_matches_sub

from edge.mqtt.channels import CHANNELS, DEVICE_KINDS, SLIDE_KINDS, channel_of
from edge.mqtt.topics import Topics
from tests.cli_helpers import ROOT


def test_every_topic_the_box_uses_has_its_channel():
    topics = Topics("marrow/v1", "box")
    for topic, name in (
        (topics.status, "status"),
        (topics.gate, "gate"),
        (topics.preview, "preview"),
        (topics.health, "health"),
        (topics.field("S1"), "field"),
        (topics.tally("S1"), "tally"),
        (topics.report("S1"), "report"),
        (topics.slide_topic("S1", "review"), "review"),
        (topics.slide_topic("S1", "signed"), "signed"),
        (topics.command_reply("ping"), "cmd_reply"),
    ):
        channel = channel_of(topics.root, topic)
        assert channel is not None and channel.name == name, topic
    assert channel_of(topics.root, "marrow/v1/other-box/status") is None


def test_what_the_outbox_keeps_and_what_is_of_the_moment():
    keeps = {c.name for c in CHANNELS if c.outbox and c.action == "send"}
    assert {"field", "tally", "report", "status"} <= keeps
    assert not keeps & {"gate", "health", "preview", "current"}
    assert set(DEVICE_KINDS) == {"status", "gate", "preview", "health", "current"}
    assert SLIDE_KINDS == ("field", "tally", "report", "review", "signed")


def test_the_bridge_template_forwards_what_the_table_says():
    lines = (ROOT / "systemd" / "mosquitto" / "bridge-lab.conf.example").read_text().splitlines()
    out = [
        line.split()[1].removeprefix("marrow/v1/DEVICE_ID/")
        for line in lines
        if line.startswith("topic ") and " out " in line
    ]

    def forwarded(address: str) -> bool:
        concrete = address.format(slide_id="S1", verb="ping")
        return any(topic_matches_sub(p, concrete) for p in out)

    for channel in CHANNELS:
        if channel.action == "send":
            assert forwarded(channel.address) == channel.bridged, channel.name


def test_the_bridge_brings_in_commands_but_not_their_replies():
    lines = (ROOT / "systemd" / "mosquitto" / "bridge-lab.conf.example").read_text().splitlines()
    inbound = [
        line.split()[1].removeprefix("marrow/v1/DEVICE_ID/")
        for line in lines
        if " in " in line and line.startswith("topic ")
    ]
    assert inbound == ["cmd/+"]  # one level: a reply going out never comes back in


def test_mqtts_alone_turns_tls_on_and_mqtt_leaves_it_off(tmp_path):
    from edge.config import MqttConfig
    from edge.mqtt.publisher import make_client

    assert make_client(MqttConfig(url="mqtts://lab.example:8883"), "t")._ssl_context is not None  # system CAs
    assert make_client(MqttConfig(url="mqtt://127.0.0.1:1883"), "t")._ssl_context is None
    assert make_client(MqttConfig(), "t")._ssl_context is None
