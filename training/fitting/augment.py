"""Augmentations that fit stained smears, on uint8 RGB arrays (OpenCV, no torch).

Cells have no up or down: flips and 90-degree turns are free. Stains vary between labs and
batches: hue, saturation and brightness jitter plus per-channel gain. Focus varies: blur.
Magnification and the detector's box vary: scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    hue: float = 6.0  # OpenCV hue units (0..180)
    saturation: float = 0.15
    value: float = 0.15
    channel_gain: float = 0.05
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.4)
    crop_scale: tuple[float, float] = (0.7, 1.0)  # side of the crop over the side of the image
    crop_jitter: float = 0.08  # centre shift as a fraction of the side
    gamma: tuple[float, float] = (1.0, 1.0)  # camera response
    jpeg_p: float = 0.0  # a camera or a LIS that compresses
    jpeg_quality: tuple[int, int] = (30, 90)
    grey_p: float = 0.0  # partly desaturated: a pale or faded stain


# For a bundle that must hold up on another camera and stain: wider colour, stain and
# gamma jitter, JPEG artefacts, faded stains, more scale (Tsutsui et al. 2023: the shift
# between labs is mostly colour and texture). A third of the crops lose most of their colour,
# so shape and texture must carry the class (a rapid stain turns neutrophil cytoplasm orange).
STAIN_ROBUST = AugmentConfig(
    hue=15.0,
    saturation=0.4,
    value=0.25,
    channel_gain=0.2,
    blur_p=0.4,
    blur_sigma=(0.4, 2.5),
    crop_scale=(0.7, 1.0),
    crop_jitter=0.06,
    gamma=(0.6, 1.5),
    jpeg_p=0.3,
    grey_p=0.3,
)

# The same kinds of jitter, narrower, and no greyscale: a monocyte's grey-blue cytoplasm against a
# blast's deep blue is a colour cue that STAIN_ROBUST's hue turns and greyscale crops take away.
STAIN_MODERATE = AugmentConfig(
    hue=6.0,
    saturation=0.25,
    value=0.2,
    channel_gain=0.1,
    blur_p=0.3,
    blur_sigma=(0.4, 1.6),
    crop_scale=(0.7, 1.0),
    crop_jitter=0.06,
    gamma=(0.8, 1.25),
    jpeg_p=0.3,
    grey_p=0.0,
)

AUGMENTS = {"stain-robust": STAIN_ROBUST, "stain-moderate": STAIN_MODERATE}


def random_crop(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width) * rng.uniform(*cfg.crop_scale)
    cx = width / 2 + rng.uniform(-cfg.crop_jitter, cfg.crop_jitter) * width
    cy = height / 2 + rng.uniform(-cfg.crop_jitter, cfg.crop_jitter) * height
    x1 = int(np.clip(cx - side / 2, 0, width - side))
    y1 = int(np.clip(cy - side / 2, 0, height - side))
    s = int(side)
    return image[y1 : y1 + s, x1 : x1 + s]


def colour_and_blur(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue, cfg.hue)) % 180
    hsv[..., 1] *= rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    hsv[..., 2] *= rng.uniform(1 - cfg.value, 1 + cfg.value)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    out *= rng.uniform(1 - cfg.channel_gain, 1 + cfg.channel_gain, size=3)
    if cfg.gamma != (1.0, 1.0):
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** rng.uniform(*cfg.gamma)
    if cfg.grey_p and rng.random() < cfg.grey_p:
        grey = out.mean(axis=2, keepdims=True)
        out = grey + (out - grey) * rng.uniform(0.3, 0.8)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < cfg.blur_p:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*cfg.blur_sigma))
    if cfg.jpeg_p and rng.random() < cfg.jpeg_p:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return out


def flip_rotate(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    if cfg.flips and rng.random() < 0.5:
        image = image[:, ::-1]
    if cfg.rot90:
        image = np.rot90(image, int(rng.integers(4)))
    return np.ascontiguousarray(image)


def augment_cell(image: np.ndarray, size: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    crop = random_crop(image, rng, cfg)
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return flip_rotate(colour_and_blur(crop, rng, cfg), rng, cfg)


def eval_cell(image: np.ndarray, size: int) -> np.ndarray:
    """The whole (cell-centred) image at the model's size: what evaluation and inference see."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
