import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from torch import nn  # noqa: E402

from training.bundle.recalibrate import choose_checkpoint, recalibrate_batch_norm  # noqa: E402


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.0003), nn.Flatten(), nn.Linear(4 * 2 * 2, 2))


def test_recalibration_gives_the_exact_statistics_and_keeps_momentum():
    torch.manual_seed(0)
    model = _net()
    inputs = [torch.randn(8, 3, 2, 2) * 3 + 5 for _ in range(4)]
    recalibrate_batch_norm(model, inputs, lambda m, x: m(x))
    with torch.no_grad():
        features = torch.cat([model[0](x) for x in inputs])
    norm = model[1]
    torch.testing.assert_close(norm.running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert norm.momentum == 0.0003 and not norm.training and not model.training


def test_choose_checkpoint_prefers_the_better_validation_score(tmp_path):
    torch.manual_seed(0)
    good, bad = _net(), _net()
    with torch.no_grad():
        bad[3].weight.zero_()
        good[3].weight.fill_(1.0)
    torch.save(bad.state_dict(), tmp_path / "best.pt")
    torch.save({"model": good.state_dict(), "optimiser": {}}, tmp_path / "last.pt")
    x = torch.randn(4, 3, 2, 2)

    def score(model):
        with torch.no_grad():
            return float(model(x)[:, 0].abs().sum())

    state, record = choose_checkpoint(_net, tmp_path, score, lambda: [x], lambda m, b: m(b))
    assert record["chosen"].startswith("last.pt")
    assert set(record["candidates"]) == {"best.pt", "best.pt recalibrated", "last.pt", "last.pt recalibrated"}
    assert torch.equal(state["3.weight"], good[3].weight)


def test_chosen_state_loads_into_a_fresh_mnasnet(tmp_path):
    from edge.engines.graphs import build_classifier

    torch.save(build_classifier("mnasnet0_5", 3).state_dict(), tmp_path / "best.pt")
    x = torch.rand(2, 3, 32, 32)
    state, _ = choose_checkpoint(
        lambda: build_classifier("mnasnet0_5", 3), tmp_path, lambda m: 0.0, lambda: [x], lambda m, b: m(b)
    )
    build_classifier("mnasnet0_5", 3).load_state_dict(state)  # needs the state's version metadata
