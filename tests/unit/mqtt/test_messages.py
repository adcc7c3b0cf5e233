import json

import numpy as np

from edge.analysis.field import Cell, FieldResult
from edge.counting.rules import load_rule_pack
from edge.counting.tally import Slide, Tally
from edge.engines.bundle import ClassSpec
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import (
    SCHEMA_VERSION,
    BundleRef,
    FieldMessage,
    Provenance,
    ReportMessage,
    TallyMessage,
    encode,
)
from edge.mqtt.topics import Topics

PROVENANCE = Provenance(
    software_version="0.1.0",
    bundle=BundleRef(name="b", version="1", hash="abcdef012345", untrained=True),
    backend="onnxruntime",
    providers=["CPUExecutionProvider"],
)
CLASSES = [ClassSpec(name="lymphoblast", role="key"), ClassSpec(name="lymphocyte", role="wbc")]


def _result() -> FieldResult:
    cell = Cell((1.0, 2.0, 3.0, 4.0), 0.9, "lymphoblast", 0.75, np.array([0.75, 0.25], np.float32), 0.8, True)
    return FieldResult(3, "f.jpg", 640, 480, [cell], {"detect": 10.0, "crop": 1.0, "classify": 5.0})


def test_envelopes_are_unique_and_sequenced():
    factory = MessageFactory("box-1", PROVENANCE)
    first, second = factory.status("online"), factory.status("stopped")
    assert (first.seq, second.seq) == (0, 1)
    assert first.message_id != second.message_id
    assert first.schema_version == SCHEMA_VERSION and first.device_id == "box-1"
    assert first.time.tzinfo is not None and first.time.utcoffset().total_seconds() == 0


def test_field_tally_report_round_trip():
    factory = MessageFactory("box-1", PROVENANCE)
    slide = Slide(specimen_id="S-1")
    tally = Tally(CLASSES, load_rule_pack(), target_count=1)
    result = _result()
    tally.add(result)
    tally.skip("bad.jpg", "bad.jpg: truncated JPEG")

    field = factory.field(slide, result, ["lymphoblast", "lymphocyte"])
    payload = json.loads(encode(field))
    assert payload["cells"][0]["class"] == "lymphoblast"
    assert payload["cells"][0]["probabilities"] == {"lymphoblast": 0.75, "lymphocyte": 0.25}
    assert payload["provenance"]["bundle"]["untrained"] is True
    assert FieldMessage.model_validate_json(encode(field)) == field

    tally_msg = factory.tally(slide, tally)
    assert TallyMessage.model_validate_json(encode(tally_msg)) == tally_msg
    assert tally_msg.counts == {"lymphoblast": 1} and tally_msg.progress == 1.0

    report = factory.report(slide, tally)
    parsed = json.loads(encode(report))
    assert parsed["kind"] == "report" and parsed["target_reached"] is True
    assert parsed["skipped"] == [{"source": "bad.jpg", "reason": "bad.jpg: truncated JPEG"}]
    assert {r["id"] for r in parsed["rules"]} >= {"ALL"}
    assert ReportMessage.model_validate_json(encode(report)) == report


def test_topics():
    topics = Topics("marrow/v1", "box-1")
    assert topics.status == "marrow/v1/box-1/status"
    assert topics.field("s1") == "marrow/v1/box-1/slide/s1/field"
    assert topics.tally("s1").endswith("/slide/s1/tally")
    assert topics.report("s1").endswith("/slide/s1/report")


def test_slide_messages_keep_their_id_across_a_restart():
    # issue 13.6: a re-send after a crash must carry the same message_id, so consumers drop it
    slide = Slide(specimen_id="S-1")
    tally = Tally(CLASSES, load_rule_pack(), target_count=1)
    tally.add(_result())
    before, after = MessageFactory("box-1", PROVENANCE), MessageFactory("box-1", PROVENANCE)  # two runs
    names = ["lymphoblast", "lymphocyte"]
    assert before.field(slide, _result(), names).message_id == after.field(slide, _result(), names).message_id
    assert before.report(slide, tally).message_id == after.report(slide, tally).message_id
    assert before.tally(slide, tally).message_id == after.tally(slide, tally).message_id
    other_field = FieldResult(4, "g.jpg", 640, 480, [], {})
    assert before.field(slide, other_field, names).message_id != before.field(slide, _result(), names).message_id
    assert MessageFactory("box-2", PROVENANCE).report(slide, tally).message_id != before.report(slide, tally).message_id
    assert before.report(Slide(), tally).message_id != before.report(slide, tally).message_id
