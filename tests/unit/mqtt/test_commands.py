"""Commands: validated, answered, and nothing changes on a bad one (10,000 fuzzed payloads)."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.counting.control import SlideControl
from edge.counting.tally import Slide
from edge.mqtt.commands import MAX_PAYLOAD_BYTES, VERBS, CommandHandler
from edge.mqtt.factory import MessageFactory
from tests.unit.mqtt.test_messages import PROVENANCE


def handler(counting=False):
    control = SlideControl(300)
    if counting:
        control.begin(Slide(specimen_id="S-1"))
    return control, CommandHandler(control, MessageFactory("box", PROVENANCE))


def snapshot(control):
    return (control.state, control.target_count, control.pending_specimen, control.stop_requested.is_set())


def test_valid_commands_do_what_they_say():
    control, h = handler()
    reply = h.handle("start_slide", b'{"specimen_id": "BM-2026-117", "target_count": 500, "request_id": "r1"}')
    assert reply.ok and reply.request_id == "r1" and control.pending_specimen == "BM-2026-117"
    assert control.target_count == 500
    assert not h.handle("stop_slide", b"{}").ok  # nothing is being counted
    control.begin(Slide(specimen_id="BM-2026-117"))
    refused = h.handle("start_slide", b'{"specimen_id": "other"}')
    assert not refused.ok and "stop_slide first" in refused.error and refused.state == "counting"
    assert h.handle("set_target", b'{"target_count": 200}').ok and control.target_count == 200
    assert h.handle("ping", b"").ok
    assert h.handle("stop_slide", b"{}").ok and control.stop_requested.is_set()


def test_bad_commands_are_answered_precisely():
    control, h = handler(counting=True)
    before = snapshot(control)
    cases = {
        ("reboot", b"{}"): "unknown verb 'reboot'; verbs: ping, set_target, start_slide, stop_slide",
        ("set_target", b"{not json"): "malformed JSON",
        ("set_target", b"[1, 2]"): "expected a JSON object, got list",
        ("set_target", b'{"target_count": 0}'): "target_count: Input should be greater than or equal to 1",
        ("set_target", b'{"target_count": "500"}'): "target_count: Input should be a valid integer",
        ("set_target", b'{"target_count": 5, "sudo": true}'): "sudo: Extra inputs are not permitted",
        ("start_slide", b'{"specimen_id": "../../etc"}'): "specimen_id: String should match pattern",
        ("ping", b"x" * (MAX_PAYLOAD_BYTES + 1)): f"over the {MAX_PAYLOAD_BYTES}-byte limit",
        ("ping", b"\xff\xfe"): "malformed JSON",
    }
    for (verb, payload), expected in cases.items():
        reply = h.handle(verb, payload)
        assert not reply.ok and expected in reply.error, (verb, payload, reply.error)
    assert snapshot(control) == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=20,
)
field_names = st.sampled_from(["specimen_id", "target_count", "request_id", "extra"]) | st.text(max_size=12)
command_like = st.dictionaries(field_names, json_values, max_size=4).map(lambda d: json.dumps(d).encode())
payloads = st.one_of(
    st.binary(max_size=MAX_PAYLOAD_BYTES + 200), command_like, json_values.map(lambda v: json.dumps(v).encode())
)
verbs = st.sampled_from(sorted(VERBS)) | st.text(max_size=70)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verb=verbs, payload=payloads, counting=st.booleans())
def test_ten_thousand_fuzzed_commands_are_all_answered(verb, payload, counting):
    control, h = handler(counting)
    before = snapshot(control)
    reply = h.handle(verb, payload)  # never raises
    assert reply.verb == verb[:64] and reply.kind == "reply"
    assert reply.ok or reply.error
    if not reply.ok:
        assert snapshot(control) == before  # a refused command changes nothing
    assert reply.error is None or not reply.error.startswith("internal error")


def test_a_second_start_while_one_is_pending_is_refused():
    # issue 13.10: both answered ok before, but only one slide existed
    control, h = handler()
    assert h.handle("start_slide", b'{"specimen_id": "A"}').ok
    second = h.handle("start_slide", b'{"specimen_id": "B"}')
    assert not second.ok and "already starting" in second.error
    assert control.take_start() == "A"


def test_a_target_never_carries_into_the_next_slide():
    control, h = handler()
    assert h.handle("start_slide", b'{"specimen_id": "A", "target_count": 50}').ok
    control.take_start()
    control.begin(Slide(specimen_id="A"))
    assert control.target_count == 50
    assert h.handle("set_target", b'{"target_count": 80}').ok
    control.end()
    assert control.target_count == 300  # the configured default again
    assert h.handle("start_slide", b'{"specimen_id": "B"}').ok
    control.take_start()
    control.begin(Slide(specimen_id="B"))
    assert control.target_count == 300
