"""Cross-domain check of one stage-2 checkpoint under each preprocessing step, on zheng2018_wbc.

Which step helps on a camera and stain never seen: the crop geometry (the whole image resized,
or the central cell cut as the count path cuts it) and the background white balance. And one
diagnostic that is not a step the appliance could take per cell: batch-norm statistics
re-estimated on the foreign images themselves (AdaBN), which shows how much of the collapse the
training set's batch-norm statistics cause (Tsutsui et al. 2023), i.e. what a network without
batch norm might recover. Measures only; zheng2018 is never trained on.

    python -m training.robustness --arch shufflenet_v2_x1_0 --weights RUN/best.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from edge.adaptation.labels import FIVE_GROUPS
from edge.analysis.colour import white_balance
from edge.capture.decode import decode_image
from edge.engines.graphs import NormalisedInput, build_classifier
from training.bundle.recalibrate import recalibrate_batch_norm
from training.data.cells import cell_crop
from training.data.compose import DATA
from training.data.readers import read_cell_folders
from training.fitting.augment import eval_cell
from training.fitting.marrow import CLASS_NAMES, CROP_MARGIN
from training.members.norms import group_norm

VARIANTS = {
    "whole image": lambda image, size: eval_cell(image, size),
    "whole image + white balance": lambda image, size: eval_cell(white_balance(image), size),
    "central cell": lambda image, size: cell_crop(image, size, CROP_MARGIN, balance=False),
    "central cell + white balance": lambda image, size: cell_crop(image, size, CROP_MARGIN, balance=True),
}


@torch.no_grad()
def grouped_accuracy(model: torch.nn.Module, crops: np.ndarray, truth: list[str], names: list[str]) -> float:
    prep = NormalisedInput()
    x = torch.from_numpy(crops)
    winners = torch.cat([model(prep(x[i : i + 64])).argmax(1) for i in range(0, len(x), 64)]).numpy()
    group_of = {n: g for g, members in FIVE_GROUPS.items() for n in members}
    return float(np.mean([group_of.get(names[w], "other") == t for w, t in zip(winners, truth, strict=True)]))


_PREP = NormalisedInput()


def _normalised_forward(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    return model(_PREP(crops))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--weights", type=Path, required=True, help="a stage-2 state dict with the marrow classes")
    parser.add_argument("--data", type=Path, default=DATA / "zheng2018_wbc")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--norm", choices=["batch", "group"], default="batch", help="as the member was trained")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = build_classifier(args.arch, len(CLASS_NAMES))
    if args.norm == "group":
        group_norm(model)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    out: dict[str, dict[str, float]] = {}
    state = copy.deepcopy(model.state_dict())
    for part in ("dataset1", "dataset2"):
        folder = args.data / part
        samples = read_cell_folders(folder, sorted(d.name for d in folder.iterdir() if d.is_dir()))
        images = [decode_image(s.image.read_bytes(), s.image.name) for s in samples]
        truth = [s.label.lower().rstrip("s") for s in samples]
        for variant, cut in VARIANTS.items():
            crops = np.stack([cut(i, args.size) for i in images])
            out.setdefault(variant, {})[part] = round(grouped_accuracy(model, crops, truth, CLASS_NAMES), 4)
        crops = torch.from_numpy(np.stack([VARIANTS["central cell"](i, args.size) for i in images]))
        batches = [crops[i : i + 64] for i in range(0, len(crops), 64)]
        recalibrate_batch_norm(model, batches, _normalised_forward)
        adabn = grouped_accuracy(model, crops.numpy(), truth, CLASS_NAMES)
        out.setdefault("central cell, AdaBN diagnostic", {})[part] = round(adabn, 4)
        model.load_state_dict(state)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
