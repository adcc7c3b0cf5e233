"""The stage-2 members' last layers inside a bundle's fused classifier graph.

Adaptation changes only these layers (features in, class logits out), so it needs no torch and no
network training on the box: the graph is run once with each head's input as an extra output (the
features), the new heads are fitted in numpy (``edge.adaptation.fit``) and written back into a copy
of the same graph. Everything else of the graph, stage 1 included, stays byte for byte the model
that was validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import BundleError


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:  # a runtime dependency; a box installed without it cannot adapt
        raise BundleError("site adaptation needs the onnx package (pip install onnx)") from error
    return onnx, numpy_helper


@dataclass
class Head:
    """One member's last layer: logits = features @ weight.T + bias."""

    node: str
    features: str  # the graph tensor the head reads
    weight_name: str
    bias_name: str
    weight: np.ndarray  # (classes, dim) float32
    bias: np.ndarray  # (classes,)


def find_heads(model, classes: int) -> list[Head]:
    """Every member's final Gemm (transB=1, weight (classes, dim)) in member order."""
    _, numpy_helper = _onnx()
    inits = {i.name: i for i in model.graph.initializer}
    heads = []
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) != 3 or not node.input[1].startswith("members."):
            continue
        if not all(name in inits for name in node.input[1:]):
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if trans_b != 1 or weight.shape[0] != classes:
            continue
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        heads.append(Head(node.name, node.input[0], node.input[1], node.input[2], weight, bias))
    if not heads:
        raise BundleError(f"the classifier graph has no member head with {classes} classes: it cannot be adapted")
    return heads


def load_graph(path: Path):
    onnx, _ = _onnx()
    return onnx.load(str(path))


def features_graph(model, heads: list[Head]) -> bytes:
    """The same graph with each head's input (features) as extra outputs named ``features_<i>``."""
    onnx, _ = _onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for i, head in enumerate(heads):
        # an Identity gives the intermediate tensor a stable output name
        copy.graph.node.append(onnx.helper.make_node("Identity", [head.features], [f"features_{i}"]))
        copy.graph.output.append(
            onnx.helper.make_tensor_value_info(f"features_{i}", onnx.TensorProto.FLOAT, ["batch", head.weight.shape[1]])
        )
    return copy.SerializeToString()


class FeatureExtractor:
    """The graph run with each member head's input as an output (ONNX Runtime on the CPU): per member,
    the features of a batch of crops."""

    def __init__(self, model, heads: list[Head], threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(features_graph(model, heads), options, ["CPUExecutionProvider"])
        self.names = [f"features_{i}" for i in range(len(heads))]

    def __call__(self, crops: np.ndarray, batch: int = 32) -> list[np.ndarray]:
        parts = [self.session.run(self.names, {"images": crops[i : i + batch]}) for i in range(0, len(crops), batch)]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.names))]


def with_heads(model, heads: list[Head], weights: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """A copy of the graph whose member heads carry ``weights`` [(weight, bias)] in member order."""
    onnx, numpy_helper = _onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {i.name: i for i in copy.graph.initializer}
    for head, (weight, bias) in zip(heads, weights, strict=True):
        if weight.shape != head.weight.shape or bias.shape != head.bias.shape:
            raise ValueError(f"{head.node}: new head {weight.shape} does not fit {head.weight.shape}")
        for name, value in ((head.weight_name, weight), (head.bias_name, bias)):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return copy.SerializeToString()
