"""Marrow fields composed from single marrow cells, with a box for every pasted cell.

No public set of whole marrow aspirate fields with boxes is reachable, so the detector learns
dense marrow from fields made of matek_bm cells: each cell's box comes from its nucleus
(``training.data.cells.central_cell_box``), the cell is cut with some surround, faded out at the
edge by a soft elliptical mask, scaled, turned and pasted on a smear-coloured ground next to
others (touching allowed, heavy overlap not), among pale red-cell discs. Not-countable cells
(NIF, ART) get boxes too: the detector finds them and the classifiers drop them, as at the
microscope.

    python -m training.compose fields --out /work/exp/marrow_fields      # YOLO set, matek's own splits
    python -m training.compose samples --out samples/marrow              # the demo's slide (test cells)
    python -m training.compose sheet --out docs/marrow-boxes.jpg         # contact sheet of derived boxes
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.analysis.colour import white_balance
from training.data.cells import central_cell_box
from training.data.readers import CellSample, read_cell_folders
from training.data.splits import SETS, cell_splits

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
MATEK_CODES = SETS["matek_bm"]
FIELD_SIZE = (640, 480)  # width, height
GROUND = np.array([232, 230, 236], np.float32)  # a balanced marrow smear's background


@dataclass
class CellPatch:
    """A cell cut with its surround: RGB, a soft alpha mask, its box in patch pixels, its code."""

    image: np.ndarray
    alpha: np.ndarray
    box: np.ndarray
    code: str


def cut_patch(image: np.ndarray, code: str, surround: float = 1.8) -> CellPatch:
    image = white_balance(image)
    box, _ = central_cell_box(image)
    height, width = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * surround / 2
    x1, y1 = int(max(cx - half, 0)), int(max(cy - half, 0))
    x2, y2 = int(min(cx + half, width)), int(min(cy + half, height))
    patch = image[y1:y2, x1:x2]
    alpha = np.zeros(patch.shape[:2], np.float32)
    local = box - [x1, y1, x1, y1]
    centre = (int((local[0] + local[2]) / 2), int((local[1] + local[3]) / 2))
    axes = (int((local[2] - local[0]) * 0.72), int((local[3] - local[1]) * 0.72))
    cv2.ellipse(alpha, centre, axes, 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(2.0, 0.06 * max(axes)))
    # fade out towards the patch's own edges too (the source crop ends there): no hard seams
    fade = max(4, int(0.08 * min(patch.shape[:2])))
    ramp_y = np.clip(np.minimum(np.arange(patch.shape[0]), np.arange(patch.shape[0])[::-1]) / fade, 0, 1)
    ramp_x = np.clip(np.minimum(np.arange(patch.shape[1]), np.arange(patch.shape[1])[::-1]) / fade, 0, 1)
    alpha *= np.outer(ramp_y, ramp_x).astype(np.float32)
    return CellPatch(patch, alpha, np.clip(local, 0, [patch.shape[1], patch.shape[0]] * 2), code)


def _transform(patch: CellPatch, scale: float, rng: np.random.Generator) -> CellPatch:
    image = cv2.resize(patch.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(patch.alpha, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    box = patch.box * scale
    if rng.random() < 0.5:
        image, alpha = image[:, ::-1], alpha[:, ::-1]
        box = np.array([image.shape[1] - box[2], box[1], image.shape[1] - box[0], box[3]])
    for _ in range(int(rng.integers(4))):  # 90 degrees counter-clockwise each
        width = image.shape[1]
        image, alpha = np.rot90(image), np.rot90(alpha)
        box = np.array([box[1], width - box[2], box[3], width - box[0]])
    return CellPatch(np.ascontiguousarray(image), np.ascontiguousarray(alpha), box, patch.code)


def _ground(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    field = np.empty((height, width, 3), np.float32)
    field[:] = GROUND + rng.normal(0, 3, 3)
    for _ in range(int(rng.integers(10, 30))):  # red cells: pale discs with a paler centre
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        radius = int(rng.integers(14, 24))
        colour = GROUND * np.array([0.93, 0.86, 0.9]) + rng.normal(0, 4, 3)
        cv2.circle(field, centre, radius, colour.tolist(), -1, lineType=cv2.LINE_AA)
        cv2.circle(field, centre, radius // 2, (GROUND * 0.97).tolist(), -1, lineType=cv2.LINE_AA)
    field = cv2.GaussianBlur(field, (0, 0), 1.2)
    return field + rng.normal(0, 2.0, field.shape).astype(np.float32)


def compose_field(
    patches: Sequence[CellPatch],
    rng: np.random.Generator,
    size: tuple[int, int] = FIELD_SIZE,
    scale: tuple[float, float] = (0.55, 0.85),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A uint8 RGB field, the boxes (K, 4) of the cells placed and their codes.

    A cell that finds no place (after 40 tries) is left out; boxes may touch but overlap by at
    most 10% of the smaller box, as in a well-spread marrow smear.
    """
    field = _ground(rng, size)
    width, height = size
    placed: list[np.ndarray] = []
    codes: list[str] = []
    for patch in patches:
        cell = _transform(patch, rng.uniform(*scale), rng)
        ph, pw = cell.image.shape[:2]
        if pw >= width or ph >= height:
            continue
        for _ in range(40):
            x, y = int(rng.integers(0, width - pw)), int(rng.integers(0, height - ph))
            box = cell.box + np.array([x, y, x, y])
            if all(_overlap(box, other) <= 0.1 for other in placed):
                break
        else:
            continue
        alpha = cell.alpha[..., None]
        region = field[y : y + ph, x : x + pw]
        field[y : y + ph, x : x + pw] = region * (1 - alpha) + cell.image.astype(np.float32) * alpha
        placed.append(box)
        codes.append(cell.code)
    boxes = np.array(placed, np.float32).reshape(-1, 4)
    return np.clip(field, 0, 255).astype(np.uint8), boxes, codes


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(w * h / max(smaller, 1e-6))


def load_patches(samples: Sequence[CellSample]) -> list[CellPatch]:
    patches = []
    for sample in samples:
        image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{sample.image}: cannot be read")
        patches.append(cut_patch(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), sample.label))
    return patches


def matek_splits(data: Path = DATA) -> dict[str, list[CellSample]]:
    """matek_bm's 70/10/20 split, the same one the classifiers' crops use (seed 0)."""
    return cell_splits(data, "matek_bm")


def write_fields(
    data: Path,
    out: Path,
    counts: dict[str, int],
    seed: int = 0,
    per_field: tuple[int, int] = (4, 9),
    size: tuple[int, int] = FIELD_SIZE,
    scale: tuple[float, float] = (0.55, 0.85),
    prefix: str = "marrow",
) -> dict[str, int]:
    """A YOLO set (label WBC) of composed fields; each split draws only on its own cells. ``size`` (width,
    height) and ``scale`` (of matek's native cell size): 512x384 at 0.8-1.25 gives fields at the detector's
    working scale that its transform leaves as they are (training/README, marrow-bm 2.0.2)."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "data.yaml").write_text("names: [WBC]\n")
    boxes_written = {}
    for split, samples in matek_splits(data).items():
        patches = load_patches(samples)
        images, labels = out / "images" / split, out / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        total = 0
        for n in range(counts.get(split, 0)):
            chosen = [patches[i] for i in rng.choice(len(patches), int(rng.integers(*per_field)), replace=False)]
            field, boxes, _ = compose_field(chosen, rng, size, scale)
            name = f"{prefix}_{split}_{n:04d}"
            cv2.imwrite(
                str(images / f"{name}.jpg"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
            _write_yolo(labels / f"{name}.txt", boxes, field.shape)
            total += len(boxes)
        boxes_written[split] = total
        log.info("%s: %d fields, %d boxes", split, counts.get(split, 0), total)
    return boxes_written


def write_samples(data: Path, out: Path, count: int = 8, blast_share: float = 0.35, seed: int = 7) -> None:
    """The demo's marrow slide: ``count`` fields from matek_bm *test* cells only, about
    ``blast_share`` of the countable ones blasts, with their boxes (YOLO, label WBC)."""
    rng = np.random.default_rng(seed)
    test = matek_splits(data)["test"]
    blasts = [s for s in test if s.label == "BLA"]
    others = [s for s in test if s.label in ("LYT", "MON", "EOS", "NGS", "PMO")]
    junk = [s for s in test if s.label in ("NIF", "ART")]
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for n in range(count):
        k = 7
        n_blast = int(rng.binomial(k, blast_share))
        chosen = (
            [blasts[i] for i in rng.choice(len(blasts), n_blast, replace=False)]
            + [others[i] for i in rng.choice(len(others), k - n_blast, replace=False)]
            + [junk[int(rng.integers(len(junk)))]] * int(rng.random() < 0.5)
        )
        field, boxes, _ = compose_field(load_patches(chosen), rng)
        name = f"marrow_{n + 1:02d}"
        cv2.imwrite(str(out / f"{name}.jpg"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        _write_yolo(out / "labels" / f"{name}.txt", boxes, field.shape)


def _write_yolo(path: Path, boxes: np.ndarray, shape: tuple[int, ...]) -> None:
    h, w = shape[:2]
    lines = [
        "0 "
        + " ".join(
            f"{v:.6f}" for v in ((b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h, (b[2] - b[0]) / w, (b[3] - b[1]) / h)
        )
        for b in np.clip(boxes, 0, [w, h, w, h])
    ]
    path.write_text("\n".join(lines) + "\n")


def contact_sheet(data: Path, out: Path, per_code: int = 6, tile: int = 150) -> None:
    """Every matek code, ``per_code`` cells each, with the derived box drawn (green: from a
    nucleus, red: none found, the central half taken)."""
    rows = []
    for code in MATEK_CODES:
        every = read_cell_folders(data / "matek_bm", [code])
        samples = [every[int(i)] for i in np.linspace(0, len(every) - 1, per_code)]
        tiles = []
        for sample in samples:
            image = white_balance(cv2.cvtColor(cv2.imread(str(sample.image)), cv2.COLOR_BGR2RGB))
            box, found = central_cell_box(image)
            scale = tile / max(image.shape[:2])
            small = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
            x1, y1, x2, y2 = (box * scale).astype(int)
            cv2.rectangle(small, (x1, y1), (x2, y2), (0, 200, 0) if found else (220, 0, 0), 2)
            cv2.putText(small, code, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(small)
        rows.append(np.hstack(tiles))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fields = sub.add_parser("fields")
    fields.add_argument("--data", type=Path, default=DATA)
    fields.add_argument("--out", type=Path, required=True)
    fields.add_argument("--train", type=int, default=500)
    fields.add_argument("--val", type=int, default=60)
    fields.add_argument("--test", type=int, default=120)
    fields.add_argument("--size", default="640x480", help="field WIDTHxHEIGHT (512x384: the detector's input)")
    fields.add_argument("--cell-scale", default="0.55,0.85", help="cells pasted at this share of their native size")
    fields.add_argument("--per-field", default="4,9", help="cells tried per field, low,high (high exclusive)")
    fields.add_argument("--prefix", default="marrow", help="file names' prefix (sets made to be merged differ)")
    samples = sub.add_parser("samples", help="the demo's marrow slide (test cells only)")
    samples.add_argument("--data", type=Path, default=DATA)
    samples.add_argument("--out", type=Path, default=ROOT / "samples" / "marrow")
    sheet = sub.add_parser("sheet")
    sheet.add_argument("--data", type=Path, default=DATA)
    sheet.add_argument("--out", type=Path, default=ROOT / "docs" / "marrow-boxes.jpg")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "fields":
        width, height = (int(v) for v in args.size.split("x"))
        low, high = (float(v) for v in args.cell_scale.split(","))
        fewest, most = (int(v) for v in args.per_field.split(","))
        counts = {"train": args.train, "val": args.val, "test": args.test}
        write_fields(args.data, args.out, counts, per_field=(fewest, most), size=(width, height), scale=(low, high),
                     prefix=args.prefix)  # fmt: skip
    elif args.command == "samples":
        write_samples(args.data, args.out)
    else:
        contact_sheet(args.data, args.out)


if __name__ == "__main__":
    main()
