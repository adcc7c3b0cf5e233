"""TensorRT backend: one engine, named I/O tensors, device buffers at the profile maximum,
one CUDA stream, and a CUDA graph per input shape once that shape has run.

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
        self._dtypes: dict[str, np.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
            self._dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        self._allocate()
        self._graphs: dict[tuple[tuple[int, ...], ...], Any] = {}
        self.use_cuda_graphs = use_cuda_graphs

    @property
    def providers(self) -> list[str]:
        return [f"tensorrt {self._trt.__version__} {self.plan_name}"]

    def _max_shape(self, name: str) -> tuple[int, ...]:
        if name in self.inputs:
            return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
        shape = tuple(self.context.get_tensor_shape(name))
        return shape

    def _allocate(self) -> None:
        """Device buffers sized at the profile maximum, so no call ever reallocates."""
        for name in self.inputs:
            self.context.set_input_shape(name, self._max_shape(name))
        for name in self.inputs + self.outputs:
            shape = self._max_shape(name)
            if any(d < 0 for d in shape):
                raise EngineError(f"{name} has an unbounded dimension {shape}; the engine needs an output bound")
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            self._buffers[name] = _check(self._cudart.cudaMalloc(max(nbytes, 1)))
            self.context.set_tensor_address(name, self._buffers[name])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        shapes = []
        for name in self.inputs:
            array = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
            self.context.set_input_shape(name, array.shape)
            shapes.append(array.shape)
            _check(cudart.cudaMemcpyAsync(self._buffers[name], array.ctypes.data, array.nbytes, h2d, self.stream))
        self._execute(tuple(shapes))
        results = {}
        for name in self.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), self._dtypes[name])
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, d2h, self.stream))
            results[name] = out
        _check(cudart.cudaStreamSynchronize(self.stream))
        return results

    def _execute(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        cudart = self._cudart
        graph = self._graphs.get(shapes)
        if graph is not None:
            _check(cudart.cudaGraphLaunch(graph, self.stream))
            return
        if not self.context.execute_async_v3(self.stream):
            raise EngineError("TensorRT execution failed")
        if not self.use_cuda_graphs:
            return
        # TensorRT's documented pattern: one plain enqueue after a shape change flushes its
        # deferred updates, then the next enqueue of the same shape is captured.
        try:
            _check(cudart.cudaStreamSynchronize(self.stream))
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _check(cudart.cudaStreamBeginCapture(self.stream, mode))
            self.context.execute_async_v3(self.stream)
            captured = _check(cudart.cudaStreamEndCapture(self.stream))
            self._graphs[shapes] = _check(cudart.cudaGraphInstantiate(captured, 0))
        except EngineError as exc:
            log.warning("CUDA graph capture of the TensorRT engine failed (%s); running without", exc)
            self.use_cuda_graphs = False

    def close(self) -> None:
        for pointer in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        self._cudart.cudaStreamDestroy(self.stream)
