"""The field gate: count a field once, when the stage has stopped on new area, in focus.

Per frame, on a small grey copy:
- motion: phase correlation with the previous frame gives the stage's shift; summed, it
  tracks where on the slide the window is (image registration, no stage encoder needed);
- still: the shift stays under ``still_px`` for ``still_frames`` frames in a row;
- focus: variance of the Laplacian over the variance of the image (so a field's contrast
  and cell density matter little; defocus divides it ten times or more), relative to the
  sharpest still frame of this slide;
- exposure: mean grey level and the share of clipped pixels;
- new area: a coarse map of the slide's counted areas; a field whose window overlaps it by
  more than ``max_overlap`` is refused, so resting on a field or coming back over it never
  counts it twice. Summed shifts drift (tens of pixels over a long pan with motion blur), so
  when the stage settles near counted fields the position is re-anchored by registering the
  frame against them (loop closure).
Every frame gets a decision with its reason, for the display and the log.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.config import GateConfig


class Decision(str, enum.Enum):
    ACCEPTED = "accepted"
    MOVING = "moving"
    SETTLING = "settling"
    BLURRED = "blurred"
    DARK = "dark"
    BRIGHT = "bright"
    ALREADY_COUNTED = "already_counted"


@dataclass(frozen=True)
class GateEvent:
    frame: int
    decision: Decision
    reason: str
    position: tuple[float, float]  # window's top-left on the slide, full-resolution pixels
    shift: float
    sharpness: float
    sharpness_ratio: float
    brightness: float
    overlap: float

    @property
    def accepted(self) -> bool:
        return self.decision is Decision.ACCEPTED


@dataclass
class _State:
    previous: np.ndarray | None = None
    x: float = 0.0
    y: float = 0.0
    still: int = 0
    best_sharpness: float = 0.0
    counted: set[tuple[int, int]] = field(default_factory=set)
    landmarks: list[tuple[float, float, np.ndarray]] = field(default_factory=list)  # counted fields
    frames: int = 0


def window_cells(x: float, y: float, width: int, height: int, cell: int) -> set[tuple[int, int]]:
    """Map cells wholly inside a window at (x, y): a border cell half in does not make a field "counted"."""
    return {
        (i, j)
        for i in range(math.ceil(x / cell), math.floor((x + width) / cell))
        for j in range(math.ceil(y / cell), math.floor((y + height) / cell))
    }


class FieldGate:
    def __init__(self, settings: GateConfig | None = None) -> None:
        # the config section itself (edge.config.GateConfig): one model, one set of defaults
        self.settings = settings or GateConfig()
        self._state = _State()
        self._window: np.ndarray | None = None
        self.counts: dict[str, int] = {d.value: 0 for d in Decision}

    def new_slide(self) -> None:
        """Forget the map and the focus reference: a new slide starts."""
        self._state = _State()
        self.counts = {d.value: 0 for d in Decision}

    def export_state(self) -> dict:
        """What a restart needs so the slide's counted areas are not counted again: the stage
        position, the counted-area map, the counted fields' thumbnails (to re-anchor on) and the
        focus reference. JSON-able (thumbnails as uint8 lists, a few kB each)."""
        st = self._state
        return {
            "x": st.x,
            "y": st.y,
            "best_sharpness": st.best_sharpness,
            "counted": sorted(st.counted),
            "landmarks": [
                {"x": x, "y": y, "shape": list(t.shape), "pixels": np.clip(t, 0, 255).astype(np.uint8).ravel().tolist()}
                for x, y, t in st.landmarks
            ],
        }

    def restore_state(self, state: dict) -> None:
        """Continue a slide from :meth:`export_state` (after a crash or a restart)."""
        self._state = _State(
            x=float(state["x"]),
            y=float(state["y"]),
            best_sharpness=float(state["best_sharpness"]),
            counted={(int(i), int(j)) for i, j in state["counted"]},
            landmarks=[
                (float(m["x"]), float(m["y"]), np.asarray(m["pixels"], np.float32).reshape(m["shape"]))
                for m in state["landmarks"]
            ],
        )

    def _small(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        scale = self.settings.analysis_width / image.shape[1]
        size = (self.settings.analysis_width, max(8, round(image.shape[0] * scale)))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        return cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32), scale

    def _relocate(self, small: np.ndarray, scale: float, width: int) -> None:
        """Re-anchor the summed position on the best-matching counted field nearby."""
        st, s = self._state, self.settings
        best = (s.relocate_response, None)
        for x, y, thumb in st.landmarks:
            if math.hypot(x - st.x, y - st.y) > 0.75 * width or thumb.shape != small.shape:
                continue
            (dx, dy), response = cv2.phaseCorrelate(thumb.copy(), small.copy(), self._window)
            position = (x - dx / scale, y - dy / scale)
            if response > best[0] and math.hypot(position[0] - st.x, position[1] - st.y) <= s.relocate_max_px:
                best = (response, position)
        if best[1] is not None:
            st.x, st.y = best[1]

    def __call__(self, image: np.ndarray) -> GateEvent:
        s, st = self.settings, self._state
        small, scale = self._small(image)
        shift = 0.0
        if st.previous is not None and st.previous.shape == small.shape:
            if self._window is None or self._window.shape != small.shape:
                self._window = cv2.createHanningWindow(small.shape[::-1], cv2.CV_32F)
            # Copies: OpenCV applies the window to its inputs in place.
            (dx, dy), response = cv2.phaseCorrelate(st.previous.copy(), small.copy(), self._window)
            # The content moves opposite to the window: a window moving right shows content moving left.
            dx, dy = -dx / scale, -dy / scale
            shift = math.hypot(dx, dy)
            if response < s.min_response and shift > s.still_px:
                shift = max(shift, s.still_px * 10)  # untrusted: treat as motion, keep the estimate
            st.x += dx
            st.y += dy
        st.previous = small
        st.still = st.still + 1 if shift <= s.still_px else 0
        sharpness = float(cv2.Laplacian(small, cv2.CV_32F).var()) / max(float(small.var()), 1e-6)
        brightness = float(small.mean())
        clipped = float((small >= 250).mean())
        if st.still >= 1:
            st.best_sharpness = max(st.best_sharpness, sharpness)
        ratio = sharpness / st.best_sharpness if st.best_sharpness else 1.0
        height, width = image.shape[:2]
        if st.still == s.still_frames:
            self._relocate(small, scale, width)
        cells = window_cells(st.x, st.y, width, height, s.map_cell_px)
        overlap = len(cells & st.counted) / len(cells) if cells else 1.0

        if shift > s.still_px:
            decision, reason = Decision.MOVING, f"stage moving ({shift:.0f} px/frame)"
        elif st.still < s.still_frames:
            decision, reason = Decision.SETTLING, f"still for {st.still}/{s.still_frames} frames"
        elif ratio < s.focus_ratio or sharpness < s.min_sharpness:
            decision, reason = Decision.BLURRED, f"out of focus ({ratio:.0%} of the slide's sharpest)"
        elif brightness < s.dark_below:
            decision, reason = Decision.DARK, f"too dark (mean {brightness:.0f})"
        elif brightness > s.bright_above or clipped > s.max_clipped:
            decision, reason = Decision.BRIGHT, f"overexposed (mean {brightness:.0f}, {clipped:.0%} clipped)"
        elif overlap > s.max_overlap:
            decision, reason = Decision.ALREADY_COUNTED, f"{overlap:.0%} of this area already counted"
        else:
            decision, reason = Decision.ACCEPTED, f"new area ({overlap:.0%} overlap)"
            st.counted |= cells
            st.landmarks.append((st.x, st.y, small))
        event = GateEvent(st.frames, decision, reason, (st.x, st.y), shift, sharpness, ratio, brightness, overlap)
        st.frames += 1
        self.counts[decision.value] += 1
        return event
