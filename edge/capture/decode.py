"""Turn encoded image bytes into an RGB uint8 field, or say clearly why not."""

from __future__ import annotations

import cv2
import numpy as np

from edge.errors import FrameError

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode to (H, W, 3) uint8 RGB. Grey, 16-bit, truncated or unreadable images raise FrameError.

    Grey and 16-bit frames are refused rather than converted: the models learned stained
    8-bit colour, and a silent conversion would change what the classifier sees.
    """
    if not data:
        raise FrameError(f"{name}: empty file")
    # libjpeg decodes a truncated JPEG with a warning and grey fill; catch it before it counts.
    if data[:2] == _JPEG_START and _JPEG_END not in data[-64:]:
        raise FrameError(f"{name}: truncated JPEG (no end-of-image marker); the file is incomplete")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError(f"{name}: not a readable image (corrupt or unsupported format)")
    return to_rgb(image, name)


def to_rgb(image: np.ndarray, name: str) -> np.ndarray:
    """OpenCV BGR(A) uint8 -> RGB uint8, refusing what the models cannot take."""
    if image.dtype != np.uint8:
        raise FrameError(
            f"{name}: {image.dtype} pixels ({image.dtype.itemsize * 8}-bit); "
            "the models take 8-bit colour: set the camera to 8 bits per channel"
        )
    if image.ndim == 2 or image.shape[2] == 1:
        raise FrameError(f"{name}: greyscale image; the models need a colour (RGB) field of a stained smear")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[0] < 32 or image.shape[1] < 32:
        raise FrameError(f"{name}: {image.shape[1]}x{image.shape[0]} px is too small to be a field")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
