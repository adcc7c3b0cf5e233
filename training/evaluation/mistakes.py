"""Where a bundle errs, for a haematologist to judge: the confusion matrix of a held-back split
and a contact sheet of the cells it is most confidently wrong about, per true class.

    python -m training.mistakes --bundle models/marrow-bm --cells ../shared/data/matek_bm --split test \\
        --out docs/marrow-bm-test

writes ``<out>-confusion.png``, ``<out>-confusion.md`` and ``<out>-wrong.jpg`` (one row per true
class: its ``--per-class`` most confident wrong calls, each with the file's name, the call and
its probability) and prints the confusion matrix as a markdown table. A confident mistake is
either a model error or a label worth a second look: the sheet is how to tell which.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.engines.bundle import load_bundle
from training.evaluation.evaluate import CellPredictions, predict_cells
from training.evaluation.metrics import confusion_matrix

log = logging.getLogger(__name__)
THUMB = 128
LABEL_H = 30


def most_confident_wrong(cells: CellPredictions, per_class: int) -> dict[int, list[int]]:
    """Per true class: indices of its wrong calls, most confident first."""
    called = cells.probs.argmax(axis=1)
    confidence = cells.probs.max(axis=1)
    rows: dict[int, list[int]] = {}
    for label in np.unique(cells.labels):
        wrong = np.flatnonzero((cells.labels == label) & (called != label))
        rows[int(label)] = wrong[np.argsort(-confidence[wrong], kind="stable")][:per_class].tolist()
    return rows


def contact_sheet(cells: CellPredictions, names: list[str], per_class: int) -> np.ndarray:
    """BGR image: one row per true class (its name at the left), its most confident mistakes."""
    rows = most_confident_wrong(cells, per_class)
    label_w = 170
    cell_h = THUMB + LABEL_H
    sheet = np.full((cell_h * len(rows), label_w + THUMB * per_class, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for r, (label, indices) in enumerate(rows.items()):
        y = r * cell_h
        n = int((cells.labels == label).sum())
        cv2.putText(sheet, names[label][:20], (4, y + cell_h // 2), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(sheet, f"{len(np.flatnonzero((cells.labels == label) & (cells.probs.argmax(1) != label)))}"
                    f" of {n} wrong", (4, y + cell_h // 2 + 18), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)  # fmt: skip
        for c, i in enumerate(indices):
            x = label_w + c * THUMB
            thumb = cv2.resize(cells.crops[i], (THUMB, THUMB), interpolation=cv2.INTER_AREA)
            sheet[y : y + THUMB, x : x + THUMB] = cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR)
            call = int(cells.probs[i].argmax())
            text = f"{names[call][:11]} {cells.probs[i, call]:.2f}"
            cv2.putText(sheet, text, (x + 2, y + THUMB + 12), font, 0.36, (0, 0, 160), 1, cv2.LINE_AA)
            cv2.putText(sheet, Path(cells.samples[i].image).stem[:16], (x + 2, y + THUMB + 25), font, 0.33,
                        (60, 60, 60), 1, cv2.LINE_AA)  # fmt: skip
    return sheet


def confusion_table(cells: CellPredictions, names: list[str]) -> tuple[np.ndarray, list[int], str]:
    """The confusion matrix over the true classes present (rows) and every class called (columns)."""
    matrix = confusion_matrix(cells.labels, cells.probs.argmax(axis=1), len(names))
    rows = [i for i in range(len(names)) if matrix[i].sum()]
    cols = [j for j in range(len(names)) if matrix[:, j].sum()]
    head = "| true \\ called | " + " | ".join(names[j] for j in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + names[i] + " | " + " | ".join(str(int(matrix[i, j])) for j in cols) + " |" for i in rows]
    return matrix, rows, "\n".join(lines)


def plot_confusion(matrix: np.ndarray, rows: list[int], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [j for j in range(len(names)) if matrix[:, j].sum()]
    sub = matrix[np.ix_(rows, cols)].astype(float)
    share = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.0 + 0.6 * len(rows)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(sub):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), [names[j] for j in cols], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [names[i] for i in rows], fontsize=8)
    ax.set_xlabel("called")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def named_confusions(matrix: np.ndarray, names: list[str], focus: str = "blast") -> str:
    """In words: how often ``focus`` and its usual look-alikes are taken for each other (rows: true class)."""
    if focus not in names:
        return ""
    f = names.index(focus)
    parts = []
    for other in ("promyelocyte", "monocyte", "lymphocyte"):
        if other in names:
            o = names.index(other)
            parts.append(
                f"{focus} called {other} {int(matrix[f, o])} of {int(matrix[f].sum())}, "
                f"{other} called {focus} {int(matrix[o, f])} of {int(matrix[o].sum())}"
            )
    return "Blast against its look-alikes: " + "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cells", type=Path, required=True, help="folder-per-class cells (names or aliases)")
    parser.add_argument("--split", default="test", help="the held-back split of the set (default test); 'all'")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="prefix of the two image files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bundle = load_bundle(args.bundle)
    cells = predict_cells(bundle, args.cells, None if args.split == "all" else args.split)
    names = bundle.class_names
    args.out.parent.mkdir(parents=True, exist_ok=True)
    matrix, rows, table = confusion_table(cells, names)
    m = bundle.manifest
    title = f"{m.name} {m.version}: {args.cells.name} {args.split} ({len(cells.labels)} cells)"
    plot_confusion(matrix, rows, names, args.out.with_name(args.out.name + "-confusion.png"), title)
    sheet = contact_sheet(cells, names, args.per_class)
    cv2.imwrite(str(args.out.with_name(args.out.name + "-wrong.jpg")), sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])
    sys.stdout.write(table + "\n")
    words = named_confusions(matrix, names)
    args.out.with_name(args.out.name + "-confusion.md").write_text(table + "\n\n" + words + "\n")
    wrong = {names[k]: [cells.samples[i].image.name for i in v] for k, v in most_confident_wrong(cells, 10).items()}
    sys.stdout.write(json.dumps({"most_confident_wrong": wrong}) + "\n")


if __name__ == "__main__":
    main()
