"""serve/'s numpy + Pillow preprocessing is the training-side transform, array for array: the same
images go through ``compress.data.preprocess.Preprocess`` and ``serve.images.ImageTransform``."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serve.images import ImageError, ImageTransform, decode_image, to_rgb
from tests.test_serve import digit_test_images, encode, odd_images

MEAN, STD = (0.0831, 0.0831, 0.0831), (0.2293, 0.2293, 0.2293)


def pair(size: int, interpolation: str = "bilinear"):
    from compress.data.preprocess import Preprocess

    return Preprocess(size, MEAN, STD, interpolation), ImageTransform(size, size, MEAN, STD, interpolation)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"])
def test_digit_images_give_identical_arrays(interpolation):
    train, serve = pair(32, interpolation)
    images, _ = digit_test_images()
    for image in images[:40]:
        decoded = decode_image(encode(image), max_pixels=10_000)  # what the server sees: PNG bytes
        a, b = train(image), serve(decoded)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (3, 32, 32)
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", sorted(odd_images()))
@pytest.mark.parametrize("size", [16, 30])
def test_every_format_and_mode_gives_identical_arrays(name, size):
    train, serve = pair(size)
    data = odd_images()[name]
    with Image.open(io.BytesIO(data)) as opened:  # how a data set would open the file
        opened.load()
        a = train(opened)
    b = serve(decode_image(data, max_pixels=10_000))
    assert np.array_equal(a, b)


def test_odd_modes_are_normalised_properly():
    # alpha is composited over white, not dropped (fully transparent red → white)
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    # 16-bit grey is scaled, not clipped (Pillow's convert would turn 30000 into 255)
    grey16 = Image.fromarray(np.full((2, 2), 30000, dtype=np.uint16))
    assert to_rgb(grey16).getpixel((0, 0)) == (117, 117, 117)
    # EXIF orientation 6 (rotate 90° clockwise to display): a 4x2 JPEG shows as 2x4
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = decode_image(encode(Image.new("RGB", (4, 2)), "JPEG", exif=exif.tobytes()), max_pixels=100)
    assert to_rgb(rotated).size == (2, 4)
    # animated GIF: the first frame
    frames = [Image.new("P", (3, 3), 1), Image.new("P", (3, 3), 2)]
    for f, colour in zip(frames, ((255, 0, 0), (0, 0, 255))):
        f.putpalette(list((0, 0, 0) + colour + colour) + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert to_rgb(decode_image(buf.getvalue(), max_pixels=100)).getpixel((1, 1)) == (255, 0, 0)


def test_decode_limits():
    with pytest.raises(ImageError) as e:
        decode_image(encode(Image.new("L", (200, 200))), max_pixels=10_000)
    assert e.value.status == 413
    with pytest.raises(ImageError) as e:
        decode_image(b"GIF89a" + b"\x00" * 5, max_pixels=10_000)
    assert e.value.status == 400
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    with pytest.raises(ImageError) as e:  # Pillow reads ICO, the service does not accept it
        decode_image(ico.getvalue(), max_pixels=10_000)
    assert e.value.status == 415 and "ICO" in str(e.value)
