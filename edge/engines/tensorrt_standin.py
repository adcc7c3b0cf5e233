"""Stand-ins for the ``tensorrt`` module and cuda-python's runtime, for unit tests only.

TensorRT cannot be installed where this project is built (see the README), so the TensorRT
backend's own logic (buffer sizing, shape checks, CUDA graph capture and clean-up, FP32 pinning)
is tested against these. They keep what matters of the real thing and nothing more:

- the "plan" is an ONNX file, run by ONNX Runtime, so output shapes really depend on the input
  shape as the bundle's graphs make them (the detector's anchors grow with the resized field);
- device memory is host memory with bounds: a copy or an engine write past an allocation is an
  error here, where on a GPU it would silently corrupt memory;
- ``set_input_shape`` returns False outside the optimisation profile, as TensorRT's does;
- stream capture records the enqueued work and a graph launch replays it; capture state,
  instantiated graphs and their destruction are tracked.
"""

from __future__ import annotations

import ctypes
import itertools
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.engines.onnxruntime import OnnxRuntimeBackend

HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2
OUT_OF_BOUNDS = 700  # cudaErrorIllegalAddress's number
CAPTURE_INVALIDATED = 901  # cudaErrorStreamCaptureInvalidated


class CudaRuntime:
    """cuda-python's ``runtime`` module: functions return (error, value...) tuples."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=HOST_TO_DEVICE, cudaMemcpyDeviceToHost=DEVICE_TO_HOST)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1, cudaStreamCaptureModeGlobal=0)

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self._next = itertools.count(0x10000, 0x100000)
        self.capturing = False
        self.captured: list[Callable[[], None]] = []
        self.sticky_error = 0  # what cudaGetLastError reports (and clears)
        self.graphs: set[int] = set()  # captured graphs not destroyed
        self.execs: set[int] = set()  # instantiated graphs not destroyed
        self.launches = 0
        self._ids = itertools.count(1)
        self._recorded: dict[int, list[Callable[[], None]]] = {}

    # memory ---------------------------------------------------------------------------------
    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        pointer = next(self._next)
        self.memory[pointer] = bytearray(nbytes)
        return 0, pointer

    def cudaFree(self, pointer: int) -> tuple[int]:
        self.memory.pop(pointer, None)
        return (0,)

    def device(self, pointer: int, nbytes: int) -> memoryview:
        """``nbytes`` of device memory at ``pointer``; past the allocation is an error."""
        buffer = self.memory[pointer]
        if nbytes > len(buffer):
            raise MemoryError(f"{nbytes} bytes at {pointer:#x} overrun its {len(buffer)}-byte allocation")
        return memoryview(buffer)[:nbytes]

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> tuple[int]:
        def copy() -> None:
            if kind == HOST_TO_DEVICE:
                target = self.device(dst, nbytes)
                ctypes.memmove((ctypes.c_char * nbytes).from_buffer(target), src, nbytes)
            else:
                source = self.device(src, nbytes)
                ctypes.memmove(dst, (ctypes.c_char * nbytes).from_buffer(source), nbytes)

        try:
            self._enqueue(copy)
        except MemoryError:
            return (OUT_OF_BOUNDS,)
        return (0,)

    # streams and graphs ---------------------------------------------------------------------
    def _enqueue(self, work: Callable[[], None]) -> None:
        if self.capturing:
            self.captured.append(work)
        else:
            work()

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, 1

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (CAPTURE_INVALIDATED,) if self.capturing else (0,)

    def cudaStreamBeginCapture(self, stream: int, mode: int) -> tuple[int]:
        self.capturing, self.captured = True, []
        return (0,)

    def cudaStreamEndCapture(self, stream: int) -> tuple[int, int]:
        self.capturing = False
        if self.sticky_error:
            return CAPTURE_INVALIDATED, 0
        graph = next(self._ids)
        self._recorded[graph] = list(self.captured)
        self.graphs.add(graph)
        return 0, graph

    def cudaGetLastError(self) -> tuple[int]:
        error, self.sticky_error = self.sticky_error, 0
        return (error,)

    def cudaGraphInstantiate(self, graph: int, flags: int) -> tuple[int, int]:
        executable = next(self._ids)
        self._recorded[executable] = self._recorded[graph]
        self.execs.add(executable)
        return 0, executable

    def cudaGraphLaunch(self, executable: int, stream: int) -> tuple[int]:
        self.launches += 1
        try:
            for work in self._recorded[executable]:
                work()
        except MemoryError:
            return (OUT_OF_BOUNDS,)
        return (0,)

    def cudaGraphDestroy(self, graph: int) -> tuple[int]:
        self.graphs.discard(graph)
        return (0,)

    def cudaGraphExecDestroy(self, executable: int) -> tuple[int]:
        self.execs.discard(executable)
        return (0,)


# --- the tensorrt module ----------------------------------------------------------------------


class Logger:
    WARNING = 2

    def __init__(self, severity: int = WARNING) -> None:
        self.severity = severity


class TensorIOMode:
    INPUT, OUTPUT = "input", "output"


_NP = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(int64)": np.int64}


@dataclass
class Engine:
    """An engine over an ONNX file; ``profile``: input name -> (min, opt, max) shapes."""

    session: OnnxRuntimeBackend
    profile: dict[str, tuple[tuple[int, ...], ...]]
    cudart: CudaRuntime
    io: list[tuple[str, str, np.dtype]] = field(default_factory=list)  # (name, mode, dtype)

    def __post_init__(self) -> None:
        s = self.session._session
        self.io = [(i.name, TensorIOMode.INPUT, np.dtype(_NP[i.type])) for i in s.get_inputs()]
        self.io += [(o.name, TensorIOMode.OUTPUT, np.dtype(_NP[o.type])) for o in s.get_outputs()]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_mode(self, name: str) -> str:
        return next(mode for n, mode, _ in self.io if n == name)

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return next(dtype for n, _, dtype in self.io if n == name)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return self.profile[name]

    def create_execution_context(self) -> Context:
        return Context(self)


class Context:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}
        self.fail_next_enqueue = False  # tests: the next execute_async_v3 returns False

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.profile[name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(low) or any(not lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def _outputs_for_shapes(self) -> dict[str, tuple[int, ...]]:
        key = tuple(sorted(self.shapes.items()))
        if key not in self._output_shapes:  # what the graph makes of these input shapes
            zeros = {n: np.zeros(s, dict((x[0], x[2]) for x in self.engine.io)[n]) for n, s in self.shapes.items()}
            self._output_shapes[key] = {n: v.shape for n, v in self.engine.session.run(zeros).items()}
        return self._output_shapes[key]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        return self._outputs_for_shapes()[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        if self.fail_next_enqueue:
            self.fail_next_enqueue = False
            self.engine.cudart.sticky_error = 1 if self.engine.cudart.capturing else 0
            return False
        cudart, shapes = self.engine.cudart, dict(self.shapes)
        dtypes = {n: d for n, _, d in self.engine.io}

        def work() -> None:
            inputs = {}
            for name, shape in shapes.items():
                nbytes = int(np.prod(shape)) * dtypes[name].itemsize
                inputs[name] = np.frombuffer(cudart.device(self.addresses[name], nbytes), dtypes[name]).reshape(shape)
            for name, value in self.engine.session.run(inputs).items():
                value = np.ascontiguousarray(value, dtypes[name])
                cudart.device(self.addresses[name], value.nbytes)[:] = value.tobytes()  # bounds-checked

        cudart._enqueue(work)
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
        return STATE.engines.get(bytes(data))


@dataclass
class _State:
    engines: dict[bytes, Engine] = field(default_factory=dict)


STATE = _State()


def install(monkeypatch: Any, plans: dict[bytes, tuple[Any, dict]]) -> CudaRuntime:
    """Put the stand-ins where the backend looks (``import tensorrt``, ``_cudart()``).

    ``plans``: plan bytes -> (ONNX path, profile); returns the CUDA runtime stand-in.
    """
    import sys

    cudart = CudaRuntime()
    STATE.engines = {
        data: Engine(OnnxRuntimeBackend(path), {k: tuple(map(tuple, v)) for k, v in profile.items()}, cudart)
        for data, (path, profile) in plans.items()
    }
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.13.0-standin"
    module.Logger, module.Runtime, module.TensorIOMode = Logger, Runtime, TensorIOMode
    module.nptype = lambda dtype: dtype.type
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr("edge.engines.tensorrt._cudart", lambda: cudart)
    return cudart
