"""The contact sheet picks each class's most confident mistakes, and the table counts every call."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from training.evaluation.evaluate import CellPredictions
from training.evaluation.mistakes import confusion_table, contact_sheet, most_confident_wrong, named_confusions


def _cells() -> CellPredictions:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array(
        [
            [0.9, 0.1, 0.0],  # right
            [0.3, 0.7, 0.0],  # wrong, 0.7
            [0.1, 0.0, 0.9],  # wrong, 0.9: first
            [0.2, 0.8, 0.0],  # right
            [0.6, 0.4, 0.0],  # wrong, 0.6
            [0.0, 1.0, 0.0],  # right
        ]
    )
    samples = [SimpleNamespace(image=Path(f"c_{i}.jpg")) for i in range(len(labels))]
    crops = np.zeros((len(labels), 64, 64, 3), np.uint8)
    return CellPredictions(samples, labels, probs, np.ones(len(labels)), crops, [])


def test_most_confident_mistakes_first_and_right_calls_never():
    assert most_confident_wrong(_cells(), per_class=10) == {0: [2, 1], 1: [4]}
    assert most_confident_wrong(_cells(), per_class=1) == {0: [2], 1: [4]}


def test_sheet_has_a_row_per_true_class_and_the_table_every_call():
    sheet = contact_sheet(_cells(), ["blast", "lymphocyte", "not_countable"], per_class=3)
    assert sheet.shape[0] == 2 * (128 + 30) and sheet.ndim == 3
    matrix, rows, table = confusion_table(_cells(), ["blast", "lymphocyte", "not_countable"])
    assert rows == [0, 1] and matrix.sum() == 6 and matrix[0, 2] == 1 and matrix[1, 0] == 1
    assert table.splitlines()[2] == "| blast | 1 | 1 | 1 |"


def test_blast_and_its_look_alikes_are_named_in_words():
    names = ["blast", "promyelocyte", "monocyte", "lymphocyte"]
    matrix = np.array([[8, 1, 1, 0], [2, 5, 0, 0], [3, 0, 7, 0], [0, 0, 0, 4]])
    words = named_confusions(matrix, names)
    assert "blast called promyelocyte 1 of 10, promyelocyte called blast 2 of 7" in words
    assert "blast called monocyte 1 of 10, monocyte called blast 3 of 10" in words
    assert "blast called lymphocyte 0 of 10, lymphocyte called blast 0 of 4" in words
    assert named_confusions(matrix, ["a", "b", "c", "d"]) == ""


def test_the_bundle_readme_shows_where_it_errs():
    from training.bundle.bundle_readme import where_it_errs

    section = where_it_errs("| true \\ called | blast |\n|---|---|\n| blast | 3 |\n")
    assert section.startswith("## Where it errs") and "| blast | 3 |" in section
    assert "matek-test-confusion.png" in section and "matek-test-wrong.jpg" in section
