"""What every config section shares: strict models, and where the bundle and sample fields are.

In a checkout they are the repo's ``models/marrow-bm`` and ``samples/marrow``. An installed box
(a wheel in a virtual environment, no checkout) keeps them in its data directory
(``/var/lib/marrow-edge``, or ``$MARROW_EDGE_DATA``): ``bundles/<name>`` put there by
``marrow-edge bundle install`` and ``samples/marrow`` by the install script. Nothing is looked up
relative to site-packages.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = PACKAGE_ROOT.parent
DATA_DIR = Path(os.environ.get("MARROW_EDGE_DATA", "/var/lib/marrow-edge"))
BUNDLES_DIR = DATA_DIR / "bundles"
DEFAULT_BUNDLE_NAME = "marrow-bm"


def _checkout_or_data(in_checkout: Path, in_data: Path) -> Path:
    # a checkout has pyproject.toml beside the package; site-packages never does
    return in_checkout if (CHECKOUT / "pyproject.toml").is_file() and in_checkout.exists() else in_data


DEFAULT_BUNDLE = _checkout_or_data(CHECKOUT / "models" / DEFAULT_BUNDLE_NAME, BUNDLES_DIR / DEFAULT_BUNDLE_NAME)
DEFAULT_SAMPLES = _checkout_or_data(CHECKOUT / "samples" / "marrow", DATA_DIR / "samples" / "marrow")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
