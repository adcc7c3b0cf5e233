"""Two stages in flight: the next field's detector (and crops) while this field is classified.

A bounded pipeline of two: one worker thread runs stage 1 (``HostFieldModel.detect``) at most
``depth`` fields ahead, the caller's thread runs stage 2 (``classify``) and gets the results in
field order. It pays where fields queue (a replayed slide, a ring with fields waiting) and the
cores are not all busy in one stage: ONNX Runtime's sessions are given their own intra-op
threads (``threads_per_stage``) so the stages do not fight over the same cores. A live field
arrives only after the stage settles, so there it changes little; benchmarks/pipeline.py
measures both (``--overlap``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np

from edge.analysis.field import FieldOutputs, HostFieldModel

_DONE = object()


class Overlapped:
    def __init__(self, model: HostFieldModel, depth: int = 1) -> None:
        self.model = model
        self.depth = depth
        self.name = f"{model.name}+overlap"

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    def map(self, fields: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> Iterator[FieldOutputs]:
        """(image, boxes or None) in, FieldOutputs out, in order; stage 1 runs ahead by ``depth``."""
        ahead: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def stage1() -> None:
            try:
                for image, boxes in fields:
                    detected = self.model.detect(image, boxes)
                    while not stop.is_set():
                        try:
                            ahead.put(detected, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ahead.put(_DONE)
            except BaseException as exc:  # handed to the consumer, raised there
                ahead.put(exc)

        worker = threading.Thread(target=stage1, name="overlap-stage1", daemon=True)
        worker.start()
        try:
            while True:
                item = ahead.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self.model.classify(item)  # type: ignore[arg-type]
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ahead.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.1)
