"""Count-path crops of a folder-per-type cell set, as a lab's box would have them in its review store.

For ``marrow-edge adapt --cells`` from a public set standing in for a lab's microscope (zheng2018):

    python -m training.data.site_crops --cells ../shared/data/zheng2018_wbc/dataset1 --per-type 20 --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from training.data.cells import cell_crop


def write_site_crops(cells: Path, out: Path, per_type: int, size: int = 128, margin: float = 0.5) -> int:
    """The first ``per_type`` images (name order) of each sub-folder, cut as the count path cuts them."""
    written = 0
    for folder in sorted(p for p in cells.iterdir() if p.is_dir()):
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir())[:per_type]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                continue
            crop = cell_crop(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size, margin)
            cv2.imwrite(str(out / folder.name / f"{path.stem}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            written += 1
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=Path, required=True, help="one sub-folder of cell images per type")
    parser.add_argument("--per-type", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(f"{write_site_crops(args.cells, args.out, args.per_type)} crops written to {args.out}")


if __name__ == "__main__":
    main()
