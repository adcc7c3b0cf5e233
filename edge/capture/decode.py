"""Turn encoded image bytes into an RGB uint8 field, or say clearly why not."""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np

from edge.errors import FrameError

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = 50_000_000


def printable_name(name: str) -> str:
    """A file name as text that can be logged, journalled and sent as JSON: bytes that are not
    UTF-8 (kept by Python as surrogates) become \\xNN, so two such names stay different."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or BMP header, without decoding; None if not found."""
    if data[:8] == _PNG_START and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:2] == _JPEG_START:
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to (H, W, 3) uint8 RGB. Grey, 16-bit, truncated, oversized or unreadable images
    raise FrameError.

    Grey and 16-bit frames are refused rather than converted: the models learned stained
    8-bit colour, and a silent conversion would change what the classifier sees. A field larger
    than ``max_pixels`` is refused from its header, before any memory is spent decoding it.
    """
    if not data:
        raise FrameError(f"{name}: empty file")
    size = declared_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise FrameError(
            f"{name}: {size[0]}x{size[1]} px is larger than the {max_pixels:,} pixels a field may have "
            "(analysis.max_field_pixels); not decoded"
        )
    # libjpeg decodes a truncated JPEG with a warning and grey fill; catch it before it counts.
    # The end marker must follow the last scan (data after it, e.g. a camera's trailer, is fine).
    end = data.rfind(_JPEG_END)
    if data[:2] == _JPEG_START and (end < 0 or end < data.rfind(b"\xff\xda")):
        raise FrameError(f"{name}: truncated JPEG (no end-of-image marker); the file is incomplete")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's own limits (e.g. a TIFF bomb): one line, not a traceback
        raise FrameError(f"{name}: not decoded ({str(exc).strip().splitlines()[-1]})") from None
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
    if image.ndim == 2 or image.shape[2] <= 2:  # grey, or grey + alpha
        raise FrameError(f"{name}: greyscale image; the models need a colour (RGB) field of a stained smear")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    height, width = image.shape[:2]
    if height < 32 or width < 32:
        raise FrameError(f"{name}: {width}x{height} px is too small to be a field")
    if max(height, width) > 8 * min(height, width):
        raise FrameError(f"{name}: {width}x{height} px is not the shape of a microscope field")
    sample = image[:: max(1, height // 64), :: max(1, width // 64)].astype(np.int16)
    if np.abs(sample - sample[..., :1]).max() <= 2:
        raise FrameError(f"{name}: grey image saved as colour; the models need a stained (colour) field")
    if sample.reshape(-1, 3).std(axis=0).max() < 2.0:
        raise FrameError(f"{name}: blank field (no contrast): a cap on the lens, or no slide")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
