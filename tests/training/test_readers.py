import json

import cv2
import numpy as np
import pytest

from training.data.readers import AnnotationError, read_cell_folders, read_coco, read_voc, read_yolo, split_samples


def _image(path, w=100, h=80):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 200, np.uint8))


@pytest.fixture
def yolo(tmp_path):
    root = tmp_path / "yolo"
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("names: ['WBC', 'RBC']\n")
    _image(root / "images" / "train" / "a.jpg")
    _image(root / "images" / "train" / "b.jpg")
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.25\n\n1 0.1 0.1 0.2 0.2\n")
    return root


def test_yolo(yolo):
    records = {r.image.name: r for r in read_yolo(yolo)}
    a = records["a.jpg"]
    assert (a.width, a.height, a.split) == (100, 80, "train")
    assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in a.boxes] == [
        ("WBC", 40.0, 30.0, 60.0, 50.0),
        ("RBC", 0.0, 0.0, 20.0, 16.0),  # clipped at the border
    ]
    assert records["b.jpg"].boxes == []  # no label file: no boxes


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2\n", "expected 'class cx cy w h'"),
        ("0 0.5 x 0.2 0.2\n", "not numbers"),
        ("7 0.5 0.5 0.2 0.2\n", "class 7 is not in 0..1"),
        ("0 1.5 0.5 0.2 0.2\n", "normalised"),
    ],
)
def test_yolo_malformed_names_file_and_line(yolo, line, message):
    (yolo / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n" + line)
    with pytest.raises(AnnotationError, match=rf"a\.txt:2: .*{message}"):
        read_yolo(yolo)


def test_voc(tmp_path):
    _image(tmp_path / "JPEGImages" / "f.jpg")
    (tmp_path / "Annotations").mkdir()
    xml = (
        "<annotation><filename>f.jpg</filename><size><width>100</width><height>80</height></size>"
        "<object><name>WBC</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>"
        "</object></annotation>"
    )
    (tmp_path / "Annotations" / "f.xml").write_text(xml)
    (record,) = read_voc(tmp_path)
    assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in record.boxes] == [("WBC", 10, 20, 30, 40)]
    (tmp_path / "Annotations" / "f.xml").write_text(xml.replace("<xmax>30</xmax>", "<xmax>5</xmax>"))
    with pytest.raises(AnnotationError, match=r"f\.xml: object 0: empty or inverted box"):
        read_voc(tmp_path)
    (tmp_path / "Annotations" / "f.xml").write_text("<annotation><filename>f.jpg")
    with pytest.raises(AnnotationError, match=r"f\.xml: not valid XML"):
        read_voc(tmp_path)


def test_coco(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "f.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [10, 20, 5, 6]}],
        "categories": [{"id": 3, "name": "WBC"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    (record,) = read_coco(path)
    assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in record.boxes] == [("WBC", 10, 20, 15, 26)]
    data["annotations"][0]["category_id"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"annotations\[0\]: unknown or missing 4"):
        read_coco(path)
    data["annotations"][0] = {"image_id": 1, "category_id": 3, "bbox": [1, 2, "x", 4]}
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"annotations\[0\]: bbox must be four numbers"):
        read_coco(path)


def test_cell_folders_and_split(tmp_path):
    for label, n in (("LY", 20), ("MO", 10)):
        for i in range(n):
            _image(tmp_path / label / f"{label}_{i}.jpg", 40, 40)
    samples = read_cell_folders(tmp_path)
    assert len(samples) == 30
    splits = split_samples(samples, seed=3)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [21, 3, 6]
    images = [s.image for k in splits for s in splits[k]]
    assert len(set(images)) == 30  # every image in exactly one split
    assert split_samples(samples, seed=3) == splits
    assert split_samples(samples, seed=4) != splits
    assert sum(s.label == "MO" for s in splits["train"]) == 7  # stratified
    with pytest.raises(AnnotationError, match="class folders missing"):
        read_cell_folders(tmp_path, ["LY", "EO"])
