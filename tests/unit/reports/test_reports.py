"""Lab reports from the slide store (issue 16): preliminary until signed, the reviewed counts, and
every format read back by an independent parser (fhir.resources, hl7, pypdf, csv)."""

from __future__ import annotations

import csv
import io
import json

import hl7
import pytest
from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader

from edge.reports.content import load_report
from edge.reports.fhir import to_fhir
from edge.reports.hl7v2 import control_id, escape, parse_ack, to_oru
from edge.reports.pdf import to_pdf
from edge.reports.tables import cells_csv, differential_csv
from edge.review.records import ReviewError
from tests.unit.review.slides import make_desk


@pytest.fixture
def desk(tmp_path):
    desk = make_desk(tmp_path / "slides.sqlite")
    yield desk
    desk.store.close()


def _sign(desk, pin: str = "4321"):
    return desk.sign(desk.slide_id, "Ana Lima", pin)


def test_unsigned_slide_is_preliminary_with_the_reviewed_counts(desk):
    desk.reclassify(desk.slide_id, [1], "lymphocyte", "Ana Lima")  # one blast was a lymphocyte
    report = load_report(desk.store, desk.slide_id)
    assert report.status == "preliminary" and report.version == 0 and report.operator is None
    assert report.share("blast")[0] == 5 and report.share("lymphocyte")[0] == 4
    assert report.report.countable == 10
    assert report.classes == ["blast", "lymphocyte", "monocyte"]


def test_signed_then_amended_versions_are_reported_as_signed(desk):
    _sign(desk)
    final = load_report(desk.store, desk.slide_id)
    assert (final.status, final.version, final.operator) == ("final", 1, "Ana Lima")
    assert final.share("blast")[0] == 6
    desk.reclassify(desk.slide_id, [2], "monocyte", "Ana Lima", amend_reason="cell 2 is a monocyte")
    during = load_report(desk.store, desk.slide_id)
    assert during.status == "final" and during.amending  # the signed version stands until the amendment is signed
    _sign(desk)
    amended = load_report(desk.store, desk.slide_id)
    assert (amended.status, amended.version, amended.reason) == ("amended", 2, "cell 2 is a monocyte")
    assert amended.share("blast")[0] == 5 and amended.share("monocyte")[0] == 2
    assert load_report(desk.store, desk.slide_id, version=1).share("blast")[0] == 6
    conclusion = to_fhir(amended)["entry"][0]["resource"]["conclusion"]
    assert conclusion.startswith("Amended (version 2): cell 2 is a monocyte")  # the amendment says why
    with pytest.raises(ReviewError, match="no signed version 3"):
        load_report(desk.store, desk.slide_id, version=3)


def test_a_slide_still_counting_has_no_report(desk):
    with desk.store.transaction() as db:
        db.execute("UPDATE slide SET machine_report = NULL, state = 'counting'")
    with pytest.raises(ReviewError, match="no report until its count has finished"):
        load_report(desk.store, desk.slide_id)


def test_fhir_bundle_is_valid_and_carries_every_class_with_its_interval(desk):
    _sign(desk)
    report = load_report(desk.store, desk.slide_id)
    data = to_fhir(report)
    bundle = Bundle.model_validate(data)  # raises on anything the spec does not allow
    resources = [e.resource for e in bundle.entry]
    kinds = [r.__resource_type__ for r in resources]
    assert kinds[0] == "DiagnosticReport" and "Specimen" in kinds and "Device" in kinds
    diagnostic = resources[0]
    assert diagnostic.status == "final" and diagnostic.code.coding[0].code == "47286-0"
    assert len(diagnostic.result) == kinds.count("Observation")
    by_class = {
        c.code: r for r in resources if r.__resource_type__ == "Observation" for c in r.code.coding
        if c.system == "urn:marrow-edge:class"
    }  # fmt: skip
    assert set(by_class) == {"blast", "lymphocyte", "monocyte"}
    blast = by_class["blast"]
    assert float(blast.valueQuantity.value) == pytest.approx(60.0) and blast.valueQuantity.code == "%"
    low, high, cells = blast.component
    assert float(low.valueQuantity.value) < 60.0 < float(high.valueQuantity.value) and cells.valueInteger == 6
    lymph_codes = {c.system: c.code for c in by_class["lymphocyte"].code.coding}
    assert lymph_codes["http://loinc.org"] == "11108-8"
    rules = [r for r in resources if r.__resource_type__ == "Observation" and r.valueCodeableConcept is not None]
    assert any(r.interpretation and r.interpretation[0].coding[0].code == "POS" for r in rules)  # 60% blasts
    assert "not a diagnosis" in diagnostic.conclusion
    # the same report exported twice: the same resource ids
    assert [e["fullUrl"] for e in to_fhir(report)["entry"]] == [e["fullUrl"] for e in data["entry"]]


def test_fhir_preliminary_report_and_no_specimen_id(desk):
    with desk.store.transaction() as db:
        db.execute("UPDATE slide SET specimen_id = NULL")
    data = to_fhir(load_report(desk.store, desk.slide_id))
    Bundle.model_validate(data)
    assert data["entry"][0]["resource"]["status"] == "preliminary"
    specimen = next(e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == "Specimen")
    assert "identifier" not in specimen


def test_hl7_oru_parses_with_one_obx_per_class_and_the_interval_in_a_note_not_the_range(desk):
    _sign(desk)
    report = load_report(desk.store, desk.slide_id)
    text = to_oru(report)
    message = hl7.parse(text)
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(message.segment("MSH")[12]) == "2.5.1"
    assert str(message.segment("MSH")[10]) == control_id(report) and len(control_id(report)) <= 20
    assert str(message.segment("MSH")[18]) == "UNICODE UTF-8"
    obr = message.segment("OBR")
    assert str(obr[2]) == "BM-1" and str(obr[25]) == "F" and str(obr[4][0][0]) == "47286-0"
    obx = message.segments("OBX")
    assert len(obx) == 3 + 1  # three classes and the cells counted
    blast = obx[0]
    assert str(blast[2]) == "NM" and str(blast[3][0][0]) == "blast" and str(blast[5]) == "60.0"
    assert str(blast[6][0][0]) == "%" and str(blast[11]) == "F" and str(blast[16]) == "Ana Lima"
    assert str(blast[7]) == ""  # OBX-7 is the normal range: a LIS would show the interval as one
    notes = [message.unescape(str(n[3])) for n in message.segments("NTE")]
    low, high = map(float, notes[0].split("95% CI ")[1].rstrip("%").split("-"))  # the NTE after the OBX
    assert notes[0].startswith("6 of 10 counted cells") and low < 60.0 < high
    assert str(obx[-1][3][0][0]) == "38257-2" and str(obx[-1][5]) == "10"
    assert str(obx[-1][8]) == "L" and any(n.startswith("INCOMPLETE COUNT: 10 of the 300-cell") for n in notes)
    assert any("positive" in n and "20%" in n for n in notes) and "not a diagnosis" in notes[-1]


def test_hl7_escapes_what_a_technician_can_type(desk):
    with desk.store.transaction() as db:
        db.execute("UPDATE slide SET specimen_id = 'BM|7^A&B~C\\D'")
    report = load_report(desk.store, desk.slide_id)
    assert escape("BM|7^A&B~C\\D") == "BM\\F\\7\\S\\A\\T\\B\\R\\C\\E\\D"
    message = hl7.parse(to_oru(report))
    obr = message.segment("OBR")
    assert message.unescape(str(obr[2])) == "BM|7^A&B~C\\D"
    assert str(message.segment("OBR")[25]) == "P"  # not signed
    assert len(message.segments("OBX")) == 4  # the escaped id did not break the segment structure


def test_hl7_control_characters_never_reach_the_message_or_its_frame(desk):
    from edge.reports.hl7v2 import frame

    hostile = "BM\x00-7\x0bX\x1cY\x1dZ\x7f"
    with desk.store.transaction() as db:
        db.execute("UPDATE slide SET specimen_id = ?", (hostile,))
    text = to_oru(load_report(desk.store, desk.slide_id))
    assert not any((ord(ch) < 0x20 and ch != "\r") or ord(ch) == 0x7F for ch in text)
    framed = frame(text)
    assert framed.count(b"\x0b") == 1 and framed.count(b"\x1c") == 1  # only the MLLP block's own
    message = hl7.parse(text)
    assert str(message.segment("OBR")[2]) == "BM\\X00\\-7\\X0B\\X\\X1C\\Y\\X1D\\Z\\X7F\\"
    assert len(message.segments("OBX")) == 4


def test_an_empty_count_is_flagged_in_every_format(tmp_path):
    from edge.reports.fhir import to_fhir
    from edge.reports.pdf import to_pdf
    from tests.unit.review.slides import make_desk

    desk = make_desk(tmp_path / "s.sqlite")
    desk.reclassify(desk.slide_id, list(range(11)), "not_countable", "Ana Lima")
    report = load_report(desk.store, desk.slide_id)
    assert report.incomplete.startswith("NO CELLS COUNTED")
    message = hl7.parse(to_oru(report))
    assert str(message.segments("OBX")[-1][8]) == "L"
    fhir = to_fhir(report)
    assert fhir["entry"][0]["resource"]["conclusion"].startswith("NO CELLS COUNTED")
    pdf = to_pdf(report, desk.store)
    assert pdf.startswith(b"%PDF")
    desk.store.close()


def test_ack_parsing():
    assert parse_ack("MSH|^~\\&|LIS|LAB|ME|x|20260101||ACK|A1|P|2.5.1\rMSA|AA|ME123\r").accepted
    ack = parse_ack("MSH|^~\\&|LIS\nMSA|AR|ME123|unknown specimen\n")
    assert ack.rejected and ack.text == "unknown specimen" and ack.control_id == "ME123"
    with pytest.raises(ValueError, match="no MSA"):
        parse_ack("MSH|^~\\&|LIS\r")


def test_csv_of_differential_and_cells_with_the_reviewed_class(desk):
    desk.reclassify(desk.slide_id, [0], "not_countable", "Ana Lima")
    report = load_report(desk.store, desk.slide_id)
    rows = list(csv.DictReader(io.StringIO(differential_csv(report).decode())))
    by_class = {r["class"]: r for r in rows}
    assert by_class["blast"]["cells"] == "5" and by_class["total_counted"]["cells"] == "9"
    blast = by_class["blast"]
    assert float(blast["ci95_low"]) < float(blast["percent"]) < float(blast["ci95_high"])
    cells = list(csv.DictReader(io.StringIO(cells_csv(report).decode())))
    assert len(cells) == 11
    first = cells[0]
    assert first["class"] == "blast" and first["reviewed_class"] == "not_countable"
    assert first["counted_as"] == "not_countable" and float(first["x2"]) > float(first["x1"])


@pytest.mark.parametrize(("paper", "size"), [("a4", (595, 842)), ("letter", (612, 792))])
def test_pdf_says_what_a_lab_files_on_its_paper(desk, paper, size):
    report = load_report(desk.store, desk.slide_id)
    reader = PdfReader(io.BytesIO(to_pdf(report, desk.store, paper, institution="Lab X")))  # type: ignore[arg-type]
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == size
    text = " ".join(p.extract_text() for p in reader.pages)
    for expected in (
        "PRELIMINARY",
        "BM-1",
        desk.slide_id,
        "Lab X",
        "blast",
        "95% CI",
        "Disclaimer",
        "t 1 (bundle.json",
    ):
        assert expected in text, expected
    # the gallery (ReportLab stores identical crops once: this test's fields repeat one image, 6 distinct crops)
    assert sum(len(p.images) for p in reader.pages) == 6
    bare = PdfReader(io.BytesIO(to_pdf(report, desk.store, paper, gallery_per_class=0)))  # type: ignore[arg-type]
    assert sum(len(p.images) for p in bare.pages) == 0


def test_pdf_of_a_signed_slide_names_the_operator_and_warns_on_a_shifted_slide(desk):
    _sign(desk)
    with desk.store.transaction() as db:
        row = db.execute("SELECT report FROM signoff").fetchone()
        data = json.loads(row[0])
        data["domain"] = {"state": "shifted", "colour_distance": 9.0, "mean_confidence": 0.3, "cells": 10,
                          "message": "this slide looks unlike the bundle's training data"}  # fmt: skip
        db.execute("DROP TRIGGER signoff_kept")  # only the test rewrites a signed report
        db.execute("UPDATE signoff SET report = ?", (json.dumps(data),))
    report = load_report(desk.store, desk.slide_id)
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(to_pdf(report, desk.store))).pages)
    assert "FINAL (version 1), signed by Ana Lima" in text and "PRELIMINARY" not in text
    assert "WARNING: this slide looks unlike" in text
    hl7_notes = [str(n[3]) for n in hl7.parse(to_oru(report)).segments("NTE")]
    assert any(n.startswith("WARNING") for n in hl7_notes)


def test_the_pdf_prints_a_signer_name_in_any_script(tmp_path):
    from pypdf import PdfReader

    from edge.reports.pdf import fonts, to_pdf
    from tests.unit.review.slides import make_desk

    if fonts()[0] != "DejaVuSans":
        pytest.skip("DejaVu Sans is not installed (apt-get install fonts-dejavu-core; scripts/test.sh does)")
    desk = make_desk(tmp_path / "s.sqlite")
    name = "Ωμέγα Иванова 王芳"
    desk.operators.add(name, "4321")
    desk.reclassify(desk.slide_id, [0], "lymphocyte", name)
    desk.sign(desk.slide_id, name, "4321")
    pdf = to_pdf(load_report(desk.store, desk.slide_id), desk.store)
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert b"DejaVuSans" in pdf and "Ωμέγα Иванова" in text
    desk.store.close()
