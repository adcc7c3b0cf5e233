"""FP16 variant of an ONNX graph, for TensorRT 11's strongly typed networks.

Weights and activations become FP16; the uint8 input and the outputs keep their types, and the
operators whose FP16 rounding would change decisions stay FP32: Softmax and Sigmoid
(probabilities and scores near a threshold or a tie), Exp (box decoding, where FP16 would
overflow for large regressions). Conversion by onnxconverter-common, the converter ONNX
Runtime's own tools use.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from edge.errors import BundleError

log = logging.getLogger(__name__)

KEEP_FP32 = ["Softmax", "Sigmoid", "Exp"]


def fp16_variant(source: Path, target: Path) -> Path:
    """Write the FP16 variant of ``source`` to ``target`` (kept if it is already there)."""
    if target.is_file():
        return target
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BundleError(
            f"an FP16 graph for TensorRT 11 needs onnx and onnxconverter-common ({exc.name} is missing): "
            "pip install 'marrow-edge[gpu-cu12]' (or gpu-cu13)"
        ) from None
    model = onnx.load(str(source))
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(KEEP_FP32))
    # Its last pass (dropping back-to-back Cast pairs) fails when a Cast feeds several nodes
    # (onnxconverter-common 1.16: "'list' object has no attribute 'input'"). The pass only
    # tidies; TensorRT removes redundant casts itself, so it is skipped.
    tidy = float16.remove_unnecessary_cast_node
    float16.remove_unnecessary_cast_node = lambda graph: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per weight below FP16's range, which it clamps
            converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    finally:
        float16.remove_unnecessary_cast_node = tidy
    _retarget_casts(converted)
    onnx.checker.check_model(converted)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    onnx.save(converted, str(partial))
    partial.replace(target)
    log.info("FP16 variant of %s written to %s", source.name, target)
    return target


def _retarget_casts(model) -> None:
    """Casts to float32 whose outputs the converter re-declared float16 now cast to float16.

    The converter rewrites tensor types but not a Cast's ``to`` attribute (the uint8 -> float
    Cast at the input), which leaves a graph ONNX Runtime and TensorRT reject as mistyped.
    """
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    for node in model.graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
