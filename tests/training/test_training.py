"""A few training steps lower the loss; checkpoints resume; augmentations keep boxes on their cells."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from edge.engines.graphs import PROFILES, build_classifier, build_detector  # noqa: E402
from training.fitting.augment import AugmentConfig  # noqa: E402
from training.fitting.detection import flip_rotate_with_boxes  # noqa: E402
from training.fitting.loop import CellDataset, Recipe, train_classifier  # noqa: E402
from training.fitting.stage1 import cut_by_border, defocus  # noqa: E402


def _two_colour_set(n: int = 24, size: int = 40):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        image[8:32, 8:32, label * 2] = 220  # a red or a blue "cell"
        images.append(image)
        labels.append(label)
    return images, labels


def test_classifier_training_lowers_the_loss_and_resumes(tmp_path):
    torch.set_num_threads(1)
    images, labels = _two_colour_set()
    train = CellDataset(images, labels, 32, AugmentConfig(), seed=0)
    val = CellDataset(images, labels, 32, None)
    recipe = Recipe(epochs=3, lr=3e-3, batch_size=8, t_max=None, resolution=32)
    result = train_classifier(build_classifier("mobilenet_v3_small", 2), train, val, ["red", "blue"], recipe, tmp_path)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "history.json").is_file()
    more = Recipe(epochs=4, lr=3e-3, batch_size=8, t_max=None, resolution=32)
    resumed = train_classifier(build_classifier("mobilenet_v3_small", 2), train, val, ["red", "blue"], more, tmp_path)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]  # epochs 1-3 came from the checkpoint


def test_a_weight_average_is_what_is_validated_kept_and_resumed(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    images, labels = _two_colour_set()
    train = CellDataset(images, labels, 32, AugmentConfig(), seed=0)
    val = CellDataset(images, labels, 32, None)
    network = build_classifier("mobilenet_v3_small", 2)
    start = {k: v.clone() for k, v in network.state_dict().items()}
    # decay 1: the average never moves, so what is kept must be the starting weights, not the trained ones
    frozen = Recipe(epochs=2, lr=3e-3, batch_size=8, t_max=None, resolution=32, ema=1.0)
    train_classifier(network, train, val, ["red", "blue"], frozen, tmp_path / "frozen")
    kept = torch.load(tmp_path / "frozen" / "best.pt", weights_only=True)
    moved = [k for k in start if not torch.equal(kept[k], start[k])]
    assert moved and all(k.endswith("num_batches_tracked") for k in moved)  # counters are copied, not averaged
    assert not all(torch.equal(network.state_dict()[k], start[k]) for k in start)  # the network itself trained
    averaged = Recipe(epochs=2, lr=3e-3, batch_size=8, t_max=None, resolution=32, ema=0.9)
    train_classifier(build_classifier("mobilenet_v3_small", 2), train, val, ["red", "blue"], averaged, tmp_path / "a")
    saved = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["extra"]["ema"]
    more = Recipe(epochs=3, lr=3e-3, batch_size=8, t_max=None, resolution=32, ema=0.9)
    resumed = train_classifier(
        build_classifier("mobilenet_v3_small", 2), train, val, ["red", "blue"], more, tmp_path / "a"
    )
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    after = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["extra"]["ema"]
    assert saved.keys() == after.keys() and not all(torch.equal(saved[k], after[k]) for k in saved)


def test_class_balanced_weights_make_a_rare_class_cost_as_much_as_a_common_one():
    from training.fitting.loop import balanced_weights

    weights = balanced_weights(np.array([0] * 20 + [1] * 4 + [3] * 4), 4)
    assert weights[2] == 0 and abs(float(weights[[0, 1, 3]].mean()) - 1.0) < 1e-6
    assert abs(float(weights[1] / weights[0]) - 5.0) < 1e-5  # 20 vs 4 cells: each rare cell weighs 5 times more


def test_detector_steps_lower_the_loss():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_detector(PROFILES["lite"], num_classes=2).train()
    image = torch.full((3, 192, 192), 0.9)
    image[:, 60:120, 50:110] = torch.tensor([0.4, 0.1, 0.5])[:, None, None]  # one purple "cell"
    target = {"boxes": torch.tensor([[50.0, 60.0, 110.0, 120.0]]), "labels": torch.tensor([1])}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = sum(model([image], [target]).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_flip_rotate_keeps_the_box_on_its_cell():
    rng = np.random.default_rng(5)
    image = np.zeros((60, 90, 3), np.uint8)
    image[10:20, 30:50] = 255
    box = np.array([[30, 10, 50, 20]], np.float32)
    for _ in range(12):
        out, moved = flip_rotate_with_boxes(image, box, rng)
        x1, y1, x2, y2 = moved[0].astype(int)
        assert out[y1:y2, x1:x2].min() == 255  # the box still covers the bright patch
        assert out.sum() == image.sum()
        assert (x2 - x1) * (y2 - y1) == 200


def test_not_countable_transforms():
    rng = np.random.default_rng(1)
    cell = np.zeros((64, 64, 3), np.uint8)
    cell[16:48, 16:48] = 200
    cell[::2, ::2] = 30  # texture: high frequencies
    cut = cut_by_border(cell, rng)
    assert cut.shape == cell.shape and not np.array_equal(cut, cell)
    blurred = defocus(cell, rng)
    assert (
        np.abs(np.diff(blurred.astype(float), axis=1)).mean() < np.abs(np.diff(cell.astype(float), axis=1)).mean() / 2
    )


def test_detector_training_run_resumes(tmp_path):
    from training.data.readers import Box, FieldAnnotation
    from training.fitting.detection import train_detector

    torch.set_num_threads(1)
    records = []
    for i in range(2):
        path = tmp_path / f"f{i}.png"
        image = np.full((160, 160, 3), 230, np.uint8)
        image[40:100, 50:110] = (120, 40, 140)
        import cv2

        cv2.imwrite(str(path), image)
        records.append(FieldAnnotation(path, 160, 160, [Box(50, 40, 110, 100, "WBC"), Box(0, 0, 9, 9, "RBC")]))
    splits = {"train": records, "val": records[:1]}
    out = tmp_path / "run"
    first = train_detector(splits, ["WBC"], "lite", Recipe(epochs=1, lr=1e-3, batch_size=2, t_max=None), out)
    assert len(first["history"]) == 1 and (out / "best.pt").is_file()
    again = train_detector(splits, ["WBC"], "lite", Recipe(epochs=2, lr=1e-3, batch_size=2, t_max=None), out)
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    assert again["history"][0] == first["history"][0]  # epoch 1 came from the checkpoint


def test_batch_norm_statistics_can_follow_a_short_training_run():
    for arch in PROFILES["lite"].stage2:
        norms = [m for m in build_classifier(arch, 3).modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and min(m.momentum for m in norms) >= 0.01, arch
