"""Binomial confidence intervals for a differential count (Wilson score interval).

The Wilson interval behaves at 0 and 100% and for small counts, where the normal
approximation fails; it tracks Rümke's table, which the haematology literature uses.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def z_for(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the proportion k/n, as fractions in [0, 1]; (0, 1) when nothing is counted."""
    if n <= 0:
        return 0.0, 1.0
    z = z_for(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 and n the bound is exactly 0 or 1; rounding must not turn "none seen" into 3e-17.
    low = 0.0 if k <= 0 else max(0.0, centre - half)
    high = 1.0 if k >= n else min(1.0, centre + half)
    return low, high


def cells_to_settle(k: int, n: int, threshold: float, confidence: float, limit: int = 1_000_000) -> int | None:
    """Further cells after which the interval would exclude ``threshold`` (a fraction).

    Assumes the proportion seen so far holds. None when it cannot settle: nothing counted
    yet, the proportion sits exactly on the threshold, or it would take more than ``limit``.
    """
    if n <= 0:
        return None
    p = k / n

    def settled(total: int) -> bool:
        low, high = wilson(p * total, total, confidence)
        return low > threshold or high <= threshold

    if settled(n):
        return 0
    if p == threshold or not settled(limit):
        return None
    lo, hi = n, limit  # settled(lo) is False, settled(hi) is True; the interval narrows as n grows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if settled(mid):
            hi = mid
        else:
            lo = mid
    return hi - n
