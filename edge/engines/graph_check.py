"""What TensorRT's ONNX parser accepts, checked before it is asked (issue 20).

onnx-tensorrt 10.x takes UINT8 only as a network input or output ("TensorRT does not support
UINT8 types for intermediate tensors"): a graph whose uint8 input feeds a Gather or Transpose
before its Cast is refused. ``recast_uint8_inputs`` rewrites such a graph so the Cast comes first;
Gather and Transpose move the same values as floats, so every output stays bit for bit the same.

Needs the ``onnx`` package (the ``gpu`` and ``train`` extras); the CPU runtime never imports this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

UINT8 = 2  # onnx.TensorProto.UINT8
FLOAT = 1  # onnx.TensorProto.FLOAT


def _onnx() -> Any:
    import onnx

    return onnx


def uint8_intermediates(model: Any) -> list[str]:
    """Names of the uint8 tensors that are neither a graph input nor a graph output."""
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    ends = {v.name for v in graph.input} | {v.name for v in graph.output}
    found = [v.name for v in graph.value_info if v.type.tensor_type.elem_type == UINT8 and v.name not in ends]
    # shape inference can miss a tensor: every Cast to uint8 is one too
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == UINT8:
                found.extend(o for o in node.output if o not in ends and o not in found)
    return found


def check_for_tensorrt(path: Path) -> list[str]:
    """Why TensorRT's parser would refuse ``path``, in words (empty: nothing found)."""
    onnx = _onnx()
    bad = uint8_intermediates(onnx.load(str(path), load_external_data=False))
    if not bad:
        return []
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    return [f"{path.name}: uint8 intermediate tensor(s) {shown} (TensorRT takes uint8 only as input or output)"]


def recast_uint8_inputs(model: Any) -> Any:
    """The same graph with each uint8 input cast to float32 before anything else reads it."""
    onnx = _onnx()
    from onnx import helper

    graph = model.graph
    inputs = [v.name for v in graph.input if v.type.tensor_type.elem_type == UINT8]
    for name in inputs:
        cast_out = f"{name}_as_float"
        for node in graph.node:
            node.input[:] = [cast_out if i == name else i for i in node.input]
        graph.node.insert(0, helper.make_node("Cast", [name], [cast_out], name=f"/cast_{name}", to=FLOAT))
    # the tensors between the input and its old Cast are float now: their recorded types are stale
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model
