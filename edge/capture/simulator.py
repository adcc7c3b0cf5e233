"""A simulated microscope: a large virtual slide tiled from real fields, seen through a
moving window, driven by a script of pans, rests, defocus and returns.

For tests, the demo and gate tuning without a camera. Each frame comes with the truth (the
window's position, whether the stage moves, whether the image is defocused), so the field
gate's decisions can be scored.

Script steps (YAML/JSON lists or tuples):
    ["goto", x, y, frames]       pan in a straight line to (x, y) over `frames` frames
    ["rest", frames]             stand still, in focus
    ["defocus", frames, sigma]   stand still, out of focus (Gaussian blur of `sigma` px)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.capture.decode import decode_image
from edge.capture.gate import window_cells
from edge.capture.source import Frame
from edge.errors import CameraError

Step = Sequence[object]


@dataclass(frozen=True)
class Truth:
    x: int  # window's top-left in slide pixels
    y: int
    moving: bool
    defocused: bool
    step: int  # index of the script step that made this frame


def build_slide(fields: Path, tiles_x: int = 6, tiles_y: int = 5, seed: int = 0) -> np.ndarray:
    """A virtual slide from real fields, each tile flipped/rotated at random so none repeats."""
    rng = np.random.default_rng(seed)
    sources = [decode_image(p.read_bytes(), p.name) for p in sorted(Path(fields).glob("*.jpg"))]
    if not sources:
        raise CameraError(f"no fields in {fields} to build a virtual slide from")
    size = min(min(s.shape[:2]) for s in sources)
    rows = []
    for _ in range(tiles_y):
        row = []
        for _ in range(tiles_x):
            tile = sources[int(rng.integers(len(sources)))][:size, :size]
            tile = np.rot90(tile, int(rng.integers(4)))
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            row.append(tile)
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def _motion_blur(image: np.ndarray, dx: float, dy: float, exposure: float) -> np.ndarray:
    """Smear along the motion: the stage moves ``exposure`` of a frame's travel while the shutter is open."""
    length = math.hypot(dx, dy) * exposure
    if length < 1.5:
        return image
    size = math.ceil(length) | 1
    kernel = np.zeros((size, size), np.float32)
    centre = size // 2
    ux, uy = dx / math.hypot(dx, dy), dy / math.hypot(dx, dy)
    for t in np.linspace(-length / 2, length / 2, size * 2):
        kernel[round(centre + t * uy), round(centre + t * ux)] = 1.0
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


class SimulatedMicroscope:
    """A CameraSource over a virtual slide; ``truths`` holds what really happened per frame."""

    def __init__(
        self,
        slide: np.ndarray,
        script: Sequence[Step],
        width: int = 640,
        height: int = 480,
        start: tuple[int, int] = (0, 0),
        exposure: float = 0.5,
        fps: float | None = None,
        name: str = "simulated microscope",
    ) -> None:
        if slide.shape[0] < height or slide.shape[1] < width:
            raise CameraError(f"the virtual slide {slide.shape[1]}x{slide.shape[0]} is smaller than the window")
        self.slide = slide
        self.script = list(script)
        self.width = width
        self.height = height
        self.start = start
        self.exposure = exposure
        self.fps = fps
        self.name = name
        self.truths: list[Truth] = []

    def _clamp(self, x: float, y: float) -> tuple[int, int]:
        return (
            round(min(max(x, 0), self.slide.shape[1] - self.width)),
            round(min(max(y, 0), self.slide.shape[0] - self.height)),
        )

    def _view(self, x: int, y: int) -> np.ndarray:
        return self.slide[y : y + self.height, x : x + self.width]

    def frames(self) -> Iterator[Frame]:
        x, y = self._clamp(*self.start)
        index = 0
        period = 1.0 / self.fps if self.fps else 0.0
        next_time = time.monotonic()
        for step_no, step in enumerate(self.script):
            kind = step[0]
            if kind == "goto":
                tx, ty, n = float(step[1]), float(step[2]), int(step[3])  # type: ignore[arg-type]
                x0, y0 = x, y
                for k in range(1, n + 1):
                    nx, ny = self._clamp(x0 + (tx - x0) * k / n, y0 + (ty - y0) * k / n)
                    image = _motion_blur(self._view(nx, ny), nx - x, ny - y, self.exposure)
                    moved = (nx, ny) != (x, y)
                    x, y = nx, ny
                    yield self._emit(index, image, Truth(x, y, moved, False, step_no))
                    index += 1
                    next_time = self._pace(next_time, period)
            elif kind in ("rest", "defocus"):
                n = int(step[1])  # type: ignore[arg-type]
                image = self._view(x, y)
                if kind == "defocus":
                    image = cv2.GaussianBlur(image, (0, 0), float(step[2]))  # type: ignore[arg-type]
                for _ in range(n):
                    yield self._emit(index, image, Truth(x, y, False, kind == "defocus", step_no))
                    index += 1
                    next_time = self._pace(next_time, period)
            else:
                raise CameraError(f"script step {step_no}: unknown kind {kind!r} (goto, rest, defocus)")

    def _emit(self, index: int, image: np.ndarray, truth: Truth) -> Frame:
        self.truths.append(truth)
        return Frame(index, f"sim-{index:05d}", np.ascontiguousarray(image), None, time.monotonic())

    @staticmethod
    def _pace(next_time: float, period: float) -> float:
        if not period:
            return next_time
        next_time += period
        delay = next_time - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return next_time

    def close(self) -> None:
        pass


def random_scan(
    slide_shape: tuple[int, int], width: int, height: int, stops: int, seed: int = 0, revisit: float = 0.25
) -> list[Step]:
    """A technician's scan: pans of varied speed, rests, some defocused rests, some returns."""
    rng = np.random.default_rng(seed)
    script: list[Step] = [["rest", 5]]
    visited: list[tuple[int, int]] = [(0, 0)]
    max_x, max_y = slide_shape[1] - width, slide_shape[0] - height
    for _ in range(stops):
        if len(visited) > 2 and rng.random() < revisit:
            tx, ty = visited[int(rng.integers(len(visited) - 1))]  # back over a counted field
            tx, ty = tx + int(rng.integers(-20, 21)), ty + int(rng.integers(-20, 21))
        else:
            tx, ty = int(rng.integers(0, max_x + 1)), int(rng.integers(0, max_y + 1))
        distance = math.hypot(tx - visited[-1][0], ty - visited[-1][1])
        speed = float(rng.uniform(15, 45))  # px per frame at 640 px wide: a hand on the stage knobs
        script.append(["goto", tx, ty, max(2, int(distance / speed))])
        if rng.random() < 0.15:
            script.append(["defocus", int(rng.integers(3, 8)), float(rng.uniform(2.5, 5.0))])
        script.append(["rest", int(rng.integers(5, 12))])
        visited.append((min(max(tx, 0), max_x), min(max(ty, 0), max_y)))
    return script


@dataclass(frozen=True)
class GateScore:
    stops_new: int  # in-focus rests on new area: each should be counted exactly once
    stops_revisit: int  # rests on area counted before: none should be counted
    stops_borderline: int  # overlap within ``margin`` of the threshold: either answer is right
    counted_once: int
    counted_twice: int  # extra acceptances on one stop
    missed: int
    false_accepts: int  # acceptances on revisits, defocus or motion
    precision: float
    recall: float


def score_gate(
    truths: Sequence[Truth],
    accepted: Sequence[bool],
    script: Sequence[Step],
    width: int,
    height: int,
    max_overlap: float,
    cell: int = 16,
    margin: float = 0.1,
) -> GateScore:
    """Score a gate's per-frame acceptances against the simulator's truth.

    A rest step is a new stop when the window's overlap with the areas of earlier new stops
    is at most ``max_overlap`` (the gate's own rule, applied to the true positions).
    """
    counted: set[tuple[int, int]] = set()
    per_step: dict[int, int] = {}
    for truth, ok in zip(truths, accepted, strict=True):
        if ok:
            per_step[truth.step] = per_step.get(truth.step, 0) + 1
    first_frame = {}
    for truth in truths:
        first_frame.setdefault(truth.step, truth)
    new = revisit = borderline = once = twice = missed = false = 0
    for step_no, step in enumerate(script):
        hits = per_step.get(step_no, 0)
        truth = first_frame.get(step_no)
        if step[0] != "rest" or truth is None:
            false += hits
            continue
        cells = window_cells(truth.x, truth.y, width, height, cell)
        overlap = len(cells & counted) / len(cells)
        if abs(overlap - max_overlap) <= margin:
            borderline += 1
            counted |= cells if hits else set()
            continue
        if overlap <= max_overlap:
            new += 1
            counted |= cells
            once += hits >= 1
            twice += max(0, hits - 1)
            missed += hits == 0
        else:
            revisit += 1
            false += hits
    accepted_total = once + twice + false
    return GateScore(
        new, revisit, borderline, once, twice, missed, false,
        precision=once / accepted_total if accepted_total else 1.0,
        recall=once / new if new else 1.0,
    )  # fmt: skip
