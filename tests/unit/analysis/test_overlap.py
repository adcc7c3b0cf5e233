"""The two-stage overlap (issue 18): the same outputs as one field at a time, in field order;
a failure in stage 1 reaches the caller; a consumer that stops early leaves no thread behind."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge.analysis.field_models import reference_model
from edge.analysis.overlap import Overlapped
from edge.capture.replay import open_replay
from edge.config import AnalysisConfig
from edge.engines.bundle import load_bundle
from tests.cli_helpers import ROOT


@pytest.fixture(scope="module")
def model():
    return reference_model(load_bundle(ROOT / "models" / "marrow-bm"), AnalysisConfig())


@pytest.fixture(scope="module")
def images(samples):
    return [f.image for f in open_replay(samples).frames() if f.image is not None][:6]


def test_overlapped_outputs_equal_one_field_at_a_time(model, images):
    sequential = [model(image) for image in images]
    overlapped = list(Overlapped(model, depth=2).map((image, None) for image in images))
    assert len(overlapped) == len(sequential)
    for a, b in zip(sequential, overlapped, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.p_countable, b.p_countable)
        assert {"detect", "crop", "classify"} <= set(b.timings_ms)


def test_a_stage_one_failure_reaches_the_caller(model, images):
    def fields():
        yield images[0], None
        yield np.zeros((0, 0, 3), np.uint8), None  # not a field

    results = Overlapped(model).map(fields())
    assert next(results).boxes.shape[1] == 4
    with pytest.raises(Exception):  # noqa: B017  whatever the detector raises on it
        next(results)


def test_stopping_early_leaves_no_worker(model, images):
    before = {t.name for t in threading.enumerate()}
    results = Overlapped(model, depth=1).map((image, None) for image in images)
    next(results)
    results.close()
    assert "overlap-stage1" not in {t.name for t in threading.enumerate()} - before
