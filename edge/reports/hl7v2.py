r"""The report as an HL7 v2.5.1 ORU^R01 message, and MLLP framing.

MSH (MSH-18 ``UNICODE UTF-8``: names and notes are sent as UTF-8), PID, OBR (the differential
panel, result status P/F/C), one OBX per counted class (NM, %, and an NTE with the cell count and
the 95% interval: OBX-7 is the reference range, and a LIS would show the interval as the normal
range), an OBX with the cells counted (OBX-8 ``L`` when the count is short of its target or empty),
then NTEs for an incomplete count, the rule outcomes, the domain-shift warning and the disclaimer.
Control characters in any text are sent as HL7 hex escapes (``\X0B\``): a raw VT or FS would
break the MLLP frame, a NUL the LIS's parser.
The appliance knows no patient: PID-3 and OBR-2 carry the specimen id the LIS gave (the slide id
when none was given), OBR-3 the slide id; the LIS links them to its order and patient.
MSH-10 (the control id) depends only on the slide and the signed version, so a message sent again
after a lost ACK carries the same id and the LIS can drop the duplicate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from edge.reports.codes import CELLS_COUNTED, PANEL, loinc_for
from edge.reports.content import LabReport, applicable_rules, not_applicable_note, rule_sentence

START, END = b"\x0b", b"\x1c\x0d"  # MLLP block: <VT> message <FS><CR>
RESULT_STATUS = {"preliminary": "P", "final": "F", "amended": "C"}  # HL7 table 0123


@dataclass(frozen=True)
class Parties:
    """MSH-3..6: who sends, who receives."""

    sending_application: str = "MARROW-EDGE"
    sending_facility: str = ""  # default: the device id
    receiving_application: str = "LIS"
    receiving_facility: str = "LAB"
    processing_id: str = "P"  # P production, T training, D debugging (HL7 table 0103)


CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")


def escape(text: str) -> str:
    """HL7 escape sequences for the encoding characters; line breaks become spaces, other control
    characters hex escapes."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
    out = out.replace("~", "\\R\\").replace("\r", " ").replace("\n", " ").replace("\t", " ")
    return CONTROL.sub(lambda m: f"\\X{ord(m.group()):02X}\\", out)


def _ts(t: dt.datetime) -> str:
    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def control_id(report: LabReport) -> str:
    """MSH-10 (at most 20 characters): the same slide and version always give the same id."""
    key = f"{report.device_id}:{report.slide_id}:{report.version}:{report.status}"
    return "ME" + hashlib.sha256(key.encode()).hexdigest()[:18].upper()


def _segment(*fields: str) -> str:
    return "|".join(fields).rstrip("|")


def to_oru(report: LabReport, parties: Parties | None = None, loinc: dict[str, str] | None = None) -> str:
    """The ORU^R01 message, segments separated by CR (no MLLP framing)."""
    p = parties or Parties()
    r = report.report
    status = RESULT_STATUS[report.status]
    specimen = escape(report.specimen_id or report.slide_id)
    observed = _ts(report.effective)
    facility = escape(p.sending_facility or report.device_id)
    segments = [
        "MSH|^~\\&|"
        + _segment(
            escape(p.sending_application),
            facility,
            escape(p.receiving_application),
            escape(p.receiving_facility),
            _ts(report.created),
            "",
            "ORU^R01^ORU_R01",
            control_id(report),
            p.processing_id,
            "2.5.1",
            "",
            "",
            "",
            "",
            "",
            "UNICODE UTF-8",  # MSH-18
        ),
        _segment("PID", "1", "", f"{specimen}^^^{facility}^SID"),
    ]
    obr = ["OBR", "1", specimen, escape(report.slide_id), f"{PANEL[0]}^{escape(PANEL[1])}^LN", "", "", observed]
    obr += [""] * 14 + [_ts(report.issued), "", "HM", status]  # OBR-22 report time, OBR-24 section, OBR-25 status
    segments.append(_segment(*obr))
    operator = escape(report.operator or "")
    equipment = escape(report.device_id)
    set_id = 0
    for name in report.classes:
        count, percent, low, high = report.share(name)
        code = loinc_for(name, loinc)
        local = f"{escape(name)}^{escape(name.replace('_', ' '))}^L"
        identifier = f"{code[0]}^{escape(code[1])}^LN^{local}" if code else local
        set_id += 1
        segments.append(
            _segment(
                "OBX",
                str(set_id),
                "NM",
                identifier,
                "",
                f"{percent:.1f}",
                "%^percent^UCUM",
                "",  # OBX-7 is the reference range: the interval goes in the NTE
                "",
                "",
                "",
                status,
                "",
                "",
                observed,
                "",
                operator,
                "",
                equipment,
            )
        )
        segments.append(
            _segment("NTE", "1", "L", f"{count} of {r.countable} counted cells; 95% CI {low:.1f}-{high:.1f}%")
        )
    set_id += 1
    segments.append(
        _segment(
            "OBX",
            str(set_id),
            "NM",
            f"{CELLS_COUNTED[0]}^{escape(CELLS_COUNTED[1])}^LN",
            "",
            str(r.countable),
            "{cells}^cells^UCUM",
            "",
            "L" if report.incomplete else "",  # OBX-8: below the target count
            "",
            "",
            status,
            "",
            "",
            observed,
            "",
            operator,
            "",
            equipment,
        )
    )
    notes = [report.incomplete] if report.incomplete else []
    if r.domain is not None and r.domain.state == "shifted":
        notes.append(f"WARNING: {r.domain.message}")
    notes += [rule_sentence(rule) for rule in applicable_rules(report)]
    if skipped := not_applicable_note(report):
        notes.append(skipped)
    if r.domain is not None and r.domain.scale:
        notes.append(f"Counted at {r.domain.scale}")
    if report.status == "preliminary":
        notes.append("Preliminary: not reviewed and signed.")
    elif report.reason:
        notes.append(f"Amended (version {report.version}): {report.reason}")
    notes.append(r.disclaimer)
    segments += [_segment("NTE", str(i), "L", escape(n)) for i, n in enumerate(notes, start=1)]
    return "\r".join(segments) + "\r"


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1: AA/CA accepted; AE/CE error (retry); AR/CR rejected
    control_id: str  # MSA-2: the message it answers
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")

    @property
    def rejected(self) -> bool:
        return self.code in ("AR", "CR")


def parse_ack(message: str) -> Ack:
    """MSA of an ACK (segments split on CR, LF tolerated); ValueError when there is none."""
    for segment in message.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3]) if len(segment) > 3 else []
            if len(fields) >= 3:
                return Ack(fields[1], fields[2], fields[3] if len(fields) > 3 else "")
    raise ValueError(f"no MSA segment in the reply: {message[:80]!r}")


def ack_for(message: str, code: str = "AA", text: str = "") -> str:
    """An ACK to ``message`` (what a LIS answers; used by tests and the example listener)."""
    msh = message.split("\r", 1)[0].split("|")
    fields = [
        "MSH",
        "^~\\&",
        msh[4],
        msh[5],
        msh[2],
        msh[3],
        msh[6],
        "",
        "ACK^R01^ACK",
        "A" + msh[9][:19],
        msh[10],
        "2.5.1",
    ]
    return "|".join(fields) + "\r" + f"MSA|{code}|{msh[9]}" + (f"|{text}" if text else "") + "\r"
