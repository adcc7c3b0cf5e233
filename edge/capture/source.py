"""The capture interface: anything that yields fields (a camera, a replay of files)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One field, or the reason it could not be read (the slide goes on without it)."""

    index: int
    name: str
    image: np.ndarray | None  # (H, W, 3) uint8 RGB
    error: str | None = None
    timestamp: float = 0.0  # monotonic seconds at capture


class CameraSource(Protocol):
    name: str

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...
