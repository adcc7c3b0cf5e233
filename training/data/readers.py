"""Annotation readers: YOLO txt, Pascal VOC XML, COCO JSON (boxes) and folder-per-class (cells).

Every reader returns plain records with absolute pixel boxes (x1, y1, x2, y2). A malformed
file raises :class:`AnnotationError` naming the file and the line or field.
"""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class AnnotationError(ValueError):
    """A label file that cannot be read; the message names the file and the line or field."""


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str


@dataclass
class FieldAnnotation:
    image: Path
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    split: str | None = None  # the data set's own split, where it has one


@dataclass(frozen=True)
class CellSample:
    image: Path
    label: str


def _image_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise AnnotationError(f"{path}: image cannot be read")
    return image.shape[1], image.shape[0]


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_yolo_file(path: Path, names: Sequence[str], width: int, height: int) -> list[Box]:
    """``class cx cy w h`` per line, normalised to [0, 1]."""
    boxes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise AnnotationError(f"{path}:{number}: expected 'class cx cy w h', got {len(parts)} fields")
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(p) for p in parts[1:])
        except ValueError:
            raise AnnotationError(f"{path}:{number}: not numbers: {line.strip()!r}") from None
        if not 0 <= cls < len(names):
            raise AnnotationError(f"{path}:{number}: class {cls} is not in 0..{len(names) - 1}")
        if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1):
            raise AnnotationError(f"{path}:{number}: coordinates must be normalised to [0, 1]")
        boxes.append(
            Box(
                max(0.0, (cx - w / 2) * width),
                max(0.0, (cy - h / 2) * height),
                min(float(width), (cx + w / 2) * width),
                min(float(height), (cy + h / 2) * height),
                names[cls],
            )
        )
    return boxes


def _yolo_names(root: Path) -> list[str]:
    import yaml

    data_yaml = root / "data.yaml"
    if not data_yaml.is_file():
        raise AnnotationError(f"{root}: data.yaml with the class names is missing")
    try:
        names = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))["names"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise AnnotationError(f"{data_yaml}: needs a 'names' list") from None
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return [str(n) for n in names]


def read_yolo(root: Path) -> list[FieldAnnotation]:
    """A YOLO data set: ``data.yaml`` (names) and ``images/<split>/``, ``labels/<split>/``
    (or flat ``images/`` and ``labels/``). An image without a label file has no boxes."""
    root = Path(root)
    names = _yolo_names(root)
    images_root = root / "images"
    splits = [d for d in sorted(images_root.iterdir()) if d.is_dir()] if images_root.is_dir() else []
    folders = [(d, d.name) for d in splits] or [(images_root, None)]
    out = []
    for folder, split in folders:
        label_folder = root / "labels" / split if split else root / "labels"
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            width, height = _image_size(image)
            label = label_folder / f"{image.stem}.txt"
            boxes = read_yolo_file(label, names, width, height) if label.is_file() else []
            out.append(FieldAnnotation(image, width, height, boxes, split))
    if not out:
        raise AnnotationError(f"{root}: no images under images/")
    return out


def read_voc(root: Path) -> list[FieldAnnotation]:
    """Pascal VOC: ``Annotations/*.xml`` naming images in ``JPEGImages/`` (or beside the XML)."""
    root = Path(root)
    xml_folder = root / "Annotations" if (root / "Annotations").is_dir() else root
    image_folder = root / "JPEGImages" if (root / "JPEGImages").is_dir() else xml_folder
    out = []
    for xml_path in sorted(xml_folder.glob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise AnnotationError(f"{xml_path}: not valid XML ({exc})") from None
        filename = tree.findtext("filename")
        if not filename:
            raise AnnotationError(f"{xml_path}: <filename> is missing")
        image = image_folder / filename
        if not image.is_file():
            raise AnnotationError(f"{xml_path}: image {filename} not found in {image_folder}")
        try:
            width = int(tree.findtext("size/width") or 0)
            height = int(tree.findtext("size/height") or 0)
        except ValueError:
            raise AnnotationError(f"{xml_path}: <size> must hold integers") from None
        if width <= 0 or height <= 0:
            width, height = _image_size(image)
        boxes = []
        for index, obj in enumerate(tree.findall("object")):
            name = obj.findtext("name")
            box = obj.find("bndbox")
            if not name or box is None:
                raise AnnotationError(f"{xml_path}: object {index}: <name> and <bndbox> are required")
            try:
                x1, y1, x2, y2 = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise AnnotationError(f"{xml_path}: object {index}: <bndbox> coordinates are not numbers") from None
            if not (x2 > x1 and y2 > y1):
                raise AnnotationError(f"{xml_path}: object {index}: empty or inverted box")
            boxes.append(Box(x1, y1, x2, y2, name))
        out.append(FieldAnnotation(image, width, height, boxes))
    if not out:
        raise AnnotationError(f"{root}: no VOC XML files")
    return out


def read_coco(annotation_file: Path, image_folder: Path | None = None) -> list[FieldAnnotation]:
    """COCO detection JSON: ``images``, ``annotations`` (bbox = x, y, w, h) and ``categories``."""
    annotation_file = Path(annotation_file)
    image_folder = image_folder or annotation_file.parent
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{annotation_file}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{annotation_file}: '{key}' must be a list")
    try:
        categories = {c["id"]: str(c["name"]) for c in data["categories"]}
        images = {
            i["id"]: FieldAnnotation(image_folder / i["file_name"], int(i["width"]), int(i["height"]))
            for i in data["images"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{annotation_file}: images/categories entry lacks {exc}") from None
    for index, ann in enumerate(data["annotations"]):
        where = f"{annotation_file}: annotations[{index}]"
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            record = images[ann["image_id"]]
            label = categories[ann["category_id"]]
        except KeyError as exc:
            raise AnnotationError(f"{where}: unknown or missing {exc}") from None
        except (TypeError, ValueError):
            raise AnnotationError(f"{where}: bbox must be four numbers") from None
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{where}: bbox has no area")
        record.boxes.append(Box(x, y, x + w, y + h, label))
    return list(images.values())


def read_fields(fmt: str, root: Path) -> list[FieldAnnotation]:
    if fmt == "yolo":
        return read_yolo(root)
    if fmt == "voc":
        return read_voc(root)
    if fmt == "coco":
        root = Path(root)
        file = root if root.is_file() else next(iter(sorted(root.glob("*.json"))), None)
        if file is None:
            raise AnnotationError(f"{root}: no COCO JSON file")
        return read_coco(file)
    raise ValueError(f"unknown annotation format {fmt!r} (yolo, voc, coco)")


def read_cell_folders(root: Path, names: Sequence[str] | None = None) -> list[CellSample]:
    """Folder-per-class crops; ``names`` restricts (and orders) the folders taken."""
    root = Path(root)
    folders = [d for d in sorted(root.iterdir()) if d.is_dir()]
    if names is not None:
        missing = [n for n in names if not (root / n).is_dir()]
        if missing:
            raise AnnotationError(f"{root}: class folders missing: {missing}")
        folders = [root / n for n in names]
    out = [
        CellSample(p, folder.name)
        for folder in folders
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not out:
        raise AnnotationError(f"{root}: no images in class folders")
    return out


def split_samples(
    items: Sequence, key=lambda item: item.label, fractions=(0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list]:
    """Image-wise train/val/test split, stratified by ``key``, reproducible for a seed.

    Each item is one image, so no image can land in two splits.
    """
    groups: dict[str, list] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    rng = random.Random(seed)
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for name in sorted(groups):
        group = sorted(groups[name], key=lambda item: str(getattr(item, "image", item)))
        rng.shuffle(group)
        n_train = round(len(group) * fractions[0])
        n_val = round(len(group) * fractions[1])
        out["train"] += group[:n_train]
        out["val"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    return out
