"""TensorRT backend: one engine, named I/O tensors, input buffers at the profile maximum, output
buffers sized from TensorRT's output shapes (grown when a shape needs more), one CUDA stream,
and a CUDA graph per input shape once that shape has run.

Written to TensorRT's documented Python API (``execute_async_v3`` with tensor addresses) and
cuda-python's runtime bindings. Not yet run on hardware: TensorRT cannot be installed where
this project is developed and tested (see the README's backend table); its tests skip there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EngineError

log = logging.getLogger(__name__)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, plan: Path | bytes, use_cuda_graphs: bool = True) -> None:
        import tensorrt as trt

        self._trt = trt
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        data = plan if isinstance(plan, bytes) else Path(plan).read_bytes()
        # The plan's file name carries its cache key digest: results name the exact engine.
        self.plan_name = "in memory" if isinstance(plan, bytes) else Path(plan).name
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError("TensorRT could not deserialise the engine (built for another GPU or TensorRT?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self._cudart.cudaStreamCreate())
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self._buffers: dict[str, int] = {}
        self._capacity: dict[str, int] = {}  # bytes allocated per tensor
        self._dtypes: dict[str, np.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
            self._dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        # (graph, executable graph) per input shapes; they hold the buffers' addresses
        self._graphs: dict[tuple[tuple[int, ...], ...], tuple[Any, Any]] = {}
        self.use_cuda_graphs = use_cuda_graphs
        for name in self.inputs:  # inputs at the profile maximum: an input never outgrows its buffer
            high = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
            self._grow(name, int(np.prod(high)) * self._dtypes[name].itemsize)

    @property
    def providers(self) -> list[str]:
        return [f"tensorrt {self._trt.__version__} {self.plan_name}"]

    def _grow(self, name: str, nbytes: int) -> None:
        """A buffer of at least ``nbytes`` for ``name``, bound to the context."""
        old = self._buffers.pop(name, None)
        if old is not None:
            _check(self._cudart.cudaFree(old))
        self._buffers[name] = _check(self._cudart.cudaMalloc(max(nbytes, 1)))
        self._capacity[name] = nbytes
        if not self.context.set_tensor_address(name, self._buffers[name]):
            raise EngineError(f"TensorRT refused the address of {name}")

    def _set_shapes(self, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            if not self.context.set_input_shape(name, array.shape):  # False: outside the profile
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                raise EngineError(
                    f"{name}: shape {tuple(array.shape)} is outside the engine's profile {tuple(low)}..{tuple(high)}"
                )
            if array.nbytes > self._capacity[name]:  # within the profile this cannot happen: say so if it does
                raise EngineError(f"{name}: {array.nbytes} bytes of input for a {self._capacity[name]}-byte buffer")

    def _size_outputs(self) -> dict[str, tuple[int, ...]]:
        """Output shapes for the shapes just set, buffers grown to fit them.

        The detector resizes inside its graph, so its anchors do not follow the input: the largest
        input is not the largest output. Sizes come from TensorRT after ``set_input_shape``; a
        buffer that grows moves, and the CUDA graphs captured with the old address are dropped.
        """
        shapes, grown = {}, False
        for name in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{name} has an unresolved dimension {shape} after the input shapes were set")
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            if nbytes > self._capacity.get(name, -1):
                self._grow(name, nbytes)
                grown = True
            shapes[name] = shape
        if grown:
            self._drop_graphs()
        return shapes

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        arrays = {name: np.ascontiguousarray(inputs[name], dtype=self._dtypes[name]) for name in self.inputs}
        self._set_shapes(arrays)
        out_shapes = self._size_outputs()
        for name, array in arrays.items():
            _check(cudart.cudaMemcpyAsync(self._buffers[name], array.ctypes.data, array.nbytes, h2d, self.stream))
        self._execute(tuple(a.shape for a in arrays.values()))
        results = {}
        for name, shape in out_shapes.items():
            out = np.empty(shape, self._dtypes[name])
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, d2h, self.stream))
            results[name] = out
        _check(cudart.cudaStreamSynchronize(self.stream))
        return results

    def _execute(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        graph = self._graphs.get(shapes)
        if graph is not None:
            _check(self._cudart.cudaGraphLaunch(graph[1], self.stream))
            return
        if not self.context.execute_async_v3(self.stream):
            raise EngineError("TensorRT execution failed")
        if self.use_cuda_graphs:
            self._capture(shapes)

    def _capture(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        """TensorRT's documented pattern: one plain enqueue after a shape change flushes its deferred
        updates, then an enqueue of the same shape is captured. As trtexec does, the capture is always
        ended, and a failed enqueue, a capture error or a sticky CUDA error means no graph is kept:
        a failed capture is never replayed."""
        cudart = self._cudart
        _check(cudart.cudaStreamSynchronize(self.stream))
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(cudart.cudaStreamBeginCapture(self.stream, mode))
        enqueued, why = False, ""
        try:
            enqueued = bool(self.context.execute_async_v3(self.stream))
        except Exception as exc:  # whatever TensorRT raises, the stream must leave capture mode
            why = str(exc)
        finally:
            ended = cudart.cudaStreamEndCapture(self.stream)
        err, captured = (ended[0], ended[1]) if isinstance(ended, tuple) and len(ended) > 1 else (ended, None)
        (last,) = _as_tuple(cudart.cudaGetLastError())
        if not enqueued or int(err) != 0 or int(last) != 0:
            if int(err) == 0 and captured:
                cudart.cudaGraphDestroy(captured)
            why = why or ("the enqueue failed" if not enqueued else f"CUDA error {err if int(err) else last}")
            log.warning("CUDA graph capture of the TensorRT engine failed (%s); running without graphs", why)
            self.use_cuda_graphs = False
            return
        try:
            executable = _check(cudart.cudaGraphInstantiate(captured, 0))
        except EngineError as exc:
            cudart.cudaGraphDestroy(captured)
            log.warning("CUDA graph instantiation failed (%s); running without graphs", exc)
            self.use_cuda_graphs = False
            return
        self._graphs[shapes] = (captured, executable)

    def _drop_graphs(self) -> None:
        for captured, executable in self._graphs.values():
            self._cudart.cudaGraphExecDestroy(executable)
            self._cudart.cudaGraphDestroy(captured)
        self._graphs.clear()

    def close(self) -> None:
        self._drop_graphs()
        for pointer in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        self._capacity.clear()
        self._cudart.cudaStreamDestroy(self.stream)


def _as_tuple(result: Any) -> tuple:
    return result if isinstance(result, tuple) else (result,)
