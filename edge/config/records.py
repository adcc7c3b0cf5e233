"""The sections for what happens after the count: the slide store the technician reviews and signs in,
the lab reports made from it, and the LIS link they are sent over."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edge.config.base import Strict


class ReviewConfig(Strict):
    """The slide store: every cell's crops kept with its slide for the technician's review and sign-off."""

    store: Path | None = Field(
        None,
        description="SQLite slide store (cells, crops, reviews, sign-offs, audit). Unset: slides-review.sqlite in the "
        "state directory (edge/config/state.py); null: a temporary store for this run only.",
    )
    keep_days: float = Field(
        365.0, gt=0, description="Slides (with their crops, reviews and audit) older than this are deleted."
    )
    max_cells_per_slide: int = Field(
        3000, ge=1, description="Crops kept per slide; beyond it cells are counted but their images not kept."
    )
    jpeg_quality: int = Field(85, ge=30, le=95, description="Quality of the stored crops and field images.")
    context_scale: float = Field(3.0, ge=1.0, le=8.0, description="Context crop side over the cell box's side.")
    field_width: int = Field(960, ge=160, le=4096, description="Stored field images are scaled down to this width.")
    flag_margin: float = Field(
        0.15, ge=0.0, le=1.0, description="A counted cell whose top-two probability margin is under this is flagged."
    )


class LisConfig(Strict):
    """Where signed reports go as HL7 v2.5.1 ORU^R01: an MLLP listener of the LIS, or a drop folder."""

    host: str | None = Field(None, description="The LIS's MLLP host (with port); or set drop_folder.")
    port: int = Field(2575, ge=1, le=65535)
    drop_folder: Path | None = Field(None, description="Write each message as <control id>.hl7 here instead.")
    timeout_s: float = Field(10.0, gt=0, description="Connect and ACK timeout of one attempt.")
    retry_s: float = Field(30.0, gt=0, description="Wait between attempts while the LIS is down or answers AE.")
    sending_application: str = "MARROW-EDGE"
    sending_facility: str | None = Field(None, description="MSH-4; default: the device id.")
    receiving_application: str = "LIS"
    receiving_facility: str = "LAB"
    processing_id: Literal["P", "T", "D"] = Field("P", description="MSH-11: production, training, debugging.")

    @model_validator(mode="after")
    def _one_target(self) -> LisConfig:
        if (self.host is None) == (self.drop_folder is None):
            raise ValueError("reports.lis: give either host (MLLP) or drop_folder, not both or neither")
        return self


class ReportsConfig(Strict):
    """Lab reports (``marrow-edge report``, the review page's downloads) and the LIS link."""

    paper: Literal["a4", "letter"] = Field("a4", description="PDF page size.")
    institution: str | None = Field(None, description="Named in the PDF's title line.")
    gallery_per_class: int = Field(6, ge=0, le=20, description="Cell images per class in the PDF.")
    loinc: dict[str, str] = Field(
        default_factory=dict,
        description="class -> LOINC code, for the classes the built-in table (docs/reports.md) does not map.",
    )
    lis: LisConfig | None = Field(None, description="None: signed reports are not sent to a LIS.")
