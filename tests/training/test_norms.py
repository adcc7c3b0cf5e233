import pytest

torch = pytest.importorskip("torch", reason="training needs torch")

from edge.engines.graphs import build_classifier  # noqa: E402
from training.fitting.marrow import init_from  # noqa: E402
from training.members.norms import group_norm  # noqa: E402


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "shufflenet_v2_x1_0"])
def test_every_batch_norm_becomes_group_norm_and_a_batch_norm_checkpoint_still_loads(arch, tmp_path):
    trained = build_classifier(arch, 5)
    torch.save(trained.state_dict(), tmp_path / "bn.pt")
    swapped = group_norm(build_classifier(arch, 5))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in swapped.modules())
    norms = [m for m in swapped.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
    assert init_from(swapped, tmp_path / "bn.pt") == []  # convolutions and affine terms all load
    norm_weights = [k for k in swapped.state_dict() if k.endswith(".weight")]
    assert all(torch.equal(swapped.state_dict()[k], trained.state_dict()[k]) for k in norm_weights)


def test_group_norm_output_does_not_depend_on_the_rest_of_the_batch():
    # the point of the swap: an image is normalised by its own statistics, in training and after
    net = group_norm(build_classifier("mobilenet_v3_small", 5)).train()
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64)
    alone = net.features(image)
    crowd = net.features(torch.cat([image, torch.randn(3, 3, 64, 64) * 5 + 2]))[:1]
    torch.testing.assert_close(alone, crowd, rtol=1e-4, atol=1e-5)
