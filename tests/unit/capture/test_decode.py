import cv2
import numpy as np
import pytest

from edge.capture.decode import decode_image
from edge.errors import FrameError


def _encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def test_real_field_decodes_to_rgb(samples):
    path = sorted(samples.glob("*.jpg"))[0]
    image = decode_image(path.read_bytes(), path.name)
    bgr = cv2.imread(str(path))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    np.testing.assert_array_equal(image, bgr[:, :, ::-1])


def test_truncated_jpeg(samples):
    data = sorted(samples.glob("*.jpg"))[0].read_bytes()
    with pytest.raises(FrameError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2], "half.jpg")


def test_garbage_and_empty():
    with pytest.raises(FrameError, match="not a readable image"):
        decode_image(b"this is not an image at all", "x.png")
    with pytest.raises(FrameError, match="empty file"):
        decode_image(b"", "x.png")


def test_grey_image_is_refused():
    grey = np.full((64, 64), 128, np.uint8)
    with pytest.raises(FrameError, match="greyscale"):
        decode_image(_encode(grey, ".png"), "grey.png")


def test_16_bit_image_is_refused():
    deep = np.full((64, 64, 3), 40000, np.uint16)
    with pytest.raises(FrameError, match="16-bit"):
        decode_image(_encode(deep, ".png"), "deep.png")


def test_alpha_is_dropped_and_tiny_images_refused():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGR(A)
    rgba[20:, :, 0] = 200  # and a blue half: a field has contrast
    image = decode_image(_encode(rgba, ".png"), "a.png")
    assert image.shape == (40, 40, 3) and image[0, 0, 0] == 255
    with pytest.raises(FrameError, match="too small"):
        decode_image(_encode(np.zeros((8, 8, 3), np.uint8), ".png"), "t.png")


def test_declared_size_reads_headers_without_decoding(samples):
    import cv2

    from edge.capture.decode import declared_size

    path = sorted(samples.glob("*.jpg"))[0]
    image = cv2.imread(str(path))
    assert declared_size(path.read_bytes()) == (image.shape[1], image.shape[0])
    _, png = cv2.imencode(".png", image[:40, :50])
    assert declared_size(png.tobytes()) == (50, 40)
    _, bmp = cv2.imencode(".bmp", image[:40, :50])
    assert declared_size(bmp.tobytes()) == (50, 40)
    assert declared_size(b"not an image") is None


def test_a_decompression_bomb_is_refused_from_its_header():
    import struct
    import zlib

    import pytest

    from edge.capture.decode import decode_image
    from edge.errors import FrameError

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    with pytest.raises(FrameError, match="30000x30000 px is larger than"):
        decode_image(data, "bomb.png", max_pixels=50_000_000)


def test_names_that_are_not_utf8_become_printable_and_stay_distinct():
    import os

    from edge.capture.decode import printable_name

    a, b = os.fsdecode(b"f\xff.jpg"), os.fsdecode(b"f\xfe.jpg")
    assert printable_name(a) == "f\\xff.jpg" and printable_name(a) != printable_name(b)
    assert printable_name(a).encode("utf-8")  # journal and JSON can take it
    assert printable_name("champ_été.jpg") == "champ_été.jpg"


def _encoded(image, ext=".png"):
    import cv2

    return cv2.imencode(ext, image)[1].tobytes()


def test_decode_gaps_of_issue_13():
    import cv2
    import numpy as np
    import pytest

    from edge.capture.decode import decode_image
    from edge.errors import FrameError

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    jpeg = _encoded(colour, ".jpg")
    assert decode_image(jpeg + b"camera trailer" * 20, "trailer.jpg").shape == (120, 160, 3)  # data after EOI is fine
    grey_alpha = cv2.merge([colour[..., 0], colour[..., 0], colour[..., 0], colour[..., 1]])
    with pytest.raises(FrameError, match="grey"):
        decode_image(_encoded(grey_alpha), "grey_alpha.png")
    with pytest.raises(FrameError, match="grey"):
        decode_image(_encoded(np.stack([colour[..., 0]] * 3, axis=2)), "grey_as_rgb.png")
    with pytest.raises(FrameError, match="blank field"):
        decode_image(_encoded(np.full((120, 160, 3), (200, 180, 220), np.uint8)), "blank.png")
    with pytest.raises(FrameError, match="not the shape of a microscope field"):
        decode_image(_encoded(rng.integers(0, 255, (32, 10000, 3), dtype=np.uint8)), "strip.png")
