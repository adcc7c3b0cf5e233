"""What every config section shares: strict models, the default bundle and sample fields."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# The bundle that ships in the repo; an installed wheel points at it through the config.
DEFAULT_BUNDLE = PACKAGE_ROOT.parent / "models" / "marrow-bm"
DEFAULT_SAMPLES = PACKAGE_ROOT.parent / "samples" / "marrow"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
