"""Image loading: every mode to RGB, EXIF orientation, the pixel limit, one clear error per bad file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kface.errors import InputError
from kface.faces.images import decode_image, load_image


def _save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "bmp"])
def test_formats_load_as_rgb(tmp_path, fmt):
    image = Image.new("RGB", (40, 30), (200, 100, 50))
    rgb = load_image(_save(tmp_path, image, f"x.{fmt}"))
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert abs(int(rgb[15, 20, 0]) - 200) <= 3


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_modes_convert_to_rgb(tmp_path, mode):
    image = Image.new("RGB", (20, 10), (90, 90, 90)).convert(mode)
    suffix = "jpg" if mode == "CMYK" else "png"
    rgb = load_image(_save(tmp_path, image, f"x.{suffix}"))
    assert rgb.shape == (10, 20, 3) and rgb.dtype == np.uint8


def test_sixteen_bit_range_is_rescaled(tmp_path):
    values = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    rgb = load_image(_save(tmp_path, Image.fromarray(values), "g16.png"))
    assert 120 <= rgb[0, 0, 0] <= 135  # half of 16-bit full scale is half of 8-bit, not clipped to 255


def test_transparent_pixels_become_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgb = load_image(_save(tmp_path, image, "t.png"))
    assert tuple(rgb[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rgb = load_image(_save(tmp_path, image, "r.jpg", exif=exif))
    assert rgb.shape[:2] == (60, 20)


def test_pixel_limit_refuses_before_decoding(tmp_path):
    path = _save(tmp_path, Image.new("L", (3000, 3000)), "big.png")
    with pytest.raises(InputError, match="over the limit"):
        load_image(path, max_pixels=1_000_000)
    assert load_image(path, max_pixels=10_000_000).shape == (3000, 3000, 3)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello, not an image\n", "not an image"),
])
def test_bad_bytes(content, message):
    with pytest.raises(InputError, match=message):
        decode_image(content, "x.jpg")


def test_truncated_jpeg(tmp_path):
    path = _save(tmp_path, Image.effect_noise((200, 200), 60).convert("RGB"), "full.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="truncated.jpg: corrupt or truncated"):
        load_image(truncated)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)
