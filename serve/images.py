"""Image bytes → normalised float32 CHW arrays, in numpy + Pillow only.

Decoding (:func:`decode_image`) enforces the limits: accepted formats, the pixel count checked
from the header *before* any pixel is decoded (decompression bombs), and a full ``load()`` so a
truncated file fails here rather than later. Every failure is an :class:`ImageError` with an
HTTP status and one line.

Preprocessing (:class:`ImageTransform`) is step for step the training-side transform
(``compress/data/preprocess.py``; a test feeds the same images through both and compares the
arrays): :func:`to_rgb`, resize to the model's input size with its interpolation (skipped when
already that size), scale to [0, 1] (÷255), ``(x - mean) / std`` per channel, HWC → CHW.

:func:`to_rgb` is the one normalisation of odd images: EXIF orientation applied; alpha (RGBA, LA,
palette or grey/RGB with a transparent colour) composited over white; 16-bit and 32-bit grey
scaled to 8 bits (÷257, so 65535 → 255); float grey clipped to 0..255; CMYK, YCbCr, 1-bit and
palette images converted by Pillow. Animated GIF/WebP/TIFF: the first frame.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow resampling filters by the names stored in the model metadata.
INTERPOLATIONS: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# Pillow format names accepted, and the content types that name them.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff")
ALPHA_BACKGROUND = (255, 255, 255)
_HIGH_DEPTH = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageError(ValueError):
    """An image the service will not classify; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` (a whole image file) into a loaded Pillow image (first frame).

    Raises :class:`ImageError`: 400 for empty, corrupt or truncated data, 415 for a format outside
    :data:`FORMATS`, 413 for more than ``max_pixels`` pixels (checked before decoding)."""
    return load_image(open_image(data, max_pixels=max_pixels))


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Read the header only: format and size checked, no pixel decoded yet (cheap)."""
    if not data:
        raise ImageError("empty image: the request carried no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        ours = _accepted_magic(data)
        if ours:
            raise ImageError(f"corrupt {ours} image: the header cannot be read") from None
        kind = _sniff(data)
        if kind:
            raise ImageError(f"unsupported image format {kind}; accepted: {', '.join(FORMATS)}", 415) from None
        raise ImageError(f"not an image in an accepted format ({', '.join(FORMATS)})", 415) from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large: {_first_line(e)}", 413) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        raise ImageError(f"cannot read image header: {_first_line(e)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} = {width * height:,} pixels, the limit is "
                         f"{max_pixels:,}", 413)
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decode the pixels of the first frame; truncated or corrupt data fails here (400)."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError, IndexError, TypeError) as e:
        raise ImageError(f"corrupt or truncated {image.format} image: {_first_line(e)}") from None
    return image


def _accepted_magic(data: bytes) -> str | None:
    """The accepted format ``data`` claims to be by its magic bytes (then a failure is corruption)."""
    head = data[:12]
    for magic, name in ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
                        (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")):
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _sniff(data: bytes) -> str | None:
    """Name a few common non-accepted formats by their magic bytes (for a useful 415 message)."""
    head = data[:16]
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    if head.lstrip().startswith((b"<svg", b"<?xml")):
        return "SVG/XML"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image: EXIF orientation applied, alpha composited over white, high bit depth
    scaled to 8 bits. Kept identical to ``to_rgb`` in ``compress/data/preprocess.py``."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _HIGH_DEPTH:
        a = np.asarray(image).astype(np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    elif mode == "F":
        a = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """PIL image → float32 array (3, height, width), normalised with ``mean``/``std``."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; one of {', '.join(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")
        object.__setattr__(self, "_mean", np.asarray(self.mean, dtype=np.float32))
        object.__setattr__(self, "_std", np.asarray(self.std, dtype=np.float32))

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = to_rgb(image)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), INTERPOLATIONS[self.interpolation])
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        x = (x - self._mean) / self._std
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self(im) for im in images])
