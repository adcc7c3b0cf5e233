"""Issue 20, defect 1: graphs TensorRT's ONNX parser refuses (a uint8 intermediate tensor),
found before TensorRT is asked, and the shipped bundles re-exported with the Cast first."""

from __future__ import annotations

import numpy as np
import pytest

from edge.engines.onnxruntime import OnnxRuntimeBackend
from tests.cli_helpers import ROOT

onnx = pytest.importorskip("onnx", reason="the graph check needs onnx (the gpu and train extras)")

from onnx import TensorProto, helper  # noqa: E402

from edge.engines.graph_check import check_for_tensorrt, recast_uint8_inputs, uint8_intermediates  # noqa: E402


@pytest.mark.parametrize("bundle", ["lite-pbc", "marrow-bm"])
@pytest.mark.parametrize("graph", ["detector.onnx", "classifier.onnx"])
def test_the_shipped_graphs_have_no_uint8_intermediate(bundle, graph):
    assert check_for_tensorrt(ROOT / "models" / bundle / graph) == []


def _uint8_first(path):
    """images (uint8 NHWC) -> Transpose -> Cast float -> Div 255: the shape of the old graphs."""
    nodes = [
        helper.make_node("Transpose", ["images"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "k"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["n", 4, 5, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, 4, 5])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [255.0])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return model


def test_a_uint8_intermediate_is_found_and_the_recast_keeps_every_output(tmp_path):
    model = _uint8_first(tmp_path / "old.onnx")
    assert uint8_intermediates(model) == ["t"]
    (problem,) = check_for_tensorrt(tmp_path / "old.onnx")
    assert "old.onnx" in problem and "t" in problem and "TensorRT" in problem
    onnx.save(recast_uint8_inputs(model), str(tmp_path / "new.onnx"))
    assert check_for_tensorrt(tmp_path / "new.onnx") == []
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    old, new = (OnnxRuntimeBackend(tmp_path / n).run({"images": x})["out"] for n in ("old.onnx", "new.onnx"))
    assert np.array_equal(old, new)


def test_the_engine_build_refuses_such_a_graph_before_tensorrt_is_asked(tmp_path):
    from edge.analysis.tensorrt_plans import _check_graph
    from edge.errors import EngineError

    _uint8_first(tmp_path / "old.onnx")
    with pytest.raises(EngineError, match=r"uint8 intermediate.*build_engines\.recast"):
        _check_graph(tmp_path / "old.onnx")
    _check_graph(ROOT / "models" / "marrow-bm" / "detector.onnx")  # the shipped graphs pass
