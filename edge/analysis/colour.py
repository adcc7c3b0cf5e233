"""Colour normalisation by the slide's background (white balance), on the host path.

A new camera or stain shifts every pixel's colour; the cheapest shift to undo is the one
that shows in the background, which should be near white on any bright-field smear. The
gains map the brightest tenth of the image (background, or pale cytoplasm in a crop filled
by its cell) to a fixed grey level, per channel. Applied to a whole field before detection
and cropping, so every backend sees the same normalised pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

TARGET_LEVEL = 235.0  # the background level of the training sets after balancing
MAX_GAIN = 2.0  # a near-black or saturated image is not rescued by a huge gain


def background_colour(image: np.ndarray, fraction: float = 0.1, max_side: int | None = None) -> np.ndarray:
    """Mean colour (3,) of the brightest ``fraction`` of pixels: the smear's background, or pale
    cytoplasm where a cell fills the image. ``max_side``: subsample to about that many pixels a side."""
    height, width = image.shape[:2]
    step = max(1, max(height, width) // max_side) if max_side else 1  # a subsample is enough for a percentile
    pixels = image[::step, ::step].reshape(-1, 3).astype(np.float32)
    brightness = pixels.sum(axis=1)
    cut = np.quantile(brightness, 1.0 - fraction)
    return pixels[brightness >= cut].mean(axis=0)


def background_gains(image: np.ndarray, fraction: float = 0.1, max_side: int = 256) -> np.ndarray:
    """Per-channel gains (3,) that bring the brightest ``fraction`` of pixels to ``TARGET_LEVEL``."""
    background = background_colour(image, fraction, max_side)
    return np.clip(TARGET_LEVEL / np.maximum(background, 1.0), 1.0 / MAX_GAIN, MAX_GAIN).astype(np.float32)


def apply_gains(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """uint8 image with each channel scaled by its gain (one lookup table per channel)."""
    levels = np.arange(256, dtype=np.float32)
    channels = cv2.split(image)
    out = [cv2.LUT(c, np.clip(levels * g, 0, 255).astype(np.uint8)) for c, g in zip(channels, gains, strict=True)]
    return cv2.merge(out)


def white_balance(image: np.ndarray) -> np.ndarray:
    return apply_gains(image, background_gains(image))


COLOUR_FEATURES = 6  # mean optical density of the cell's box (R, G, B), then of its densest quarter


def cell_colour_features(image: np.ndarray, boxes: np.ndarray, side: int = 40) -> np.ndarray:
    """(K, 6) float32 stain features of each box: what the domain-shift guard compares with the
    bundle's training cells. Optical density (-log10 of transmitted light) separates stain from
    illumination; the densest quarter is mostly chromatin, the whole box adds cytoplasm."""
    out = np.zeros((len(boxes), COLOUR_FEATURES), np.float32)
    height, width = image.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        left, top = int(max(x1, 0)), int(max(y1, 0))
        right, bottom = int(min(x2, width)), int(min(y2, height))
        if right - left < 2 or bottom - top < 2:
            continue
        step = max(1, max(right - left, bottom - top) // side)
        pixels = image[top:bottom:step, left:right:step].reshape(-1, 3).astype(np.float32)
        density = -np.log10((pixels + 1.0) / 256.0)
        total = density.sum(axis=1)
        dense = density[total >= np.quantile(total, 0.75)]
        out[i, :3] = density.mean(axis=0)
        out[i, 3:] = dense.mean(axis=0)
    return out
