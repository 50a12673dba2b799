"""The inference transform, written as plain numpy + Pillow steps so that the serving side
(numpy + Pillow, no torch) can reproduce it exactly:

1. convert the PIL image to 8-bit RGB with :func:`to_rgb` (EXIF orientation applied, alpha
   composited over white, 16-bit grey scaled to 8 bits; a grey image becomes 3 equal channels),
2. resize to ``size`` x ``size`` with the named Pillow interpolation (skipped when already that size),
3. scale uint8 pixels to float32 in [0, 1] (divide by 255),
4. normalise each channel: ``(x - mean[c]) / std[c]``,
5. transpose HWC → CHW.

Every data set in :mod:`compress.data` produces its samples through :class:`Preprocess`, and the
facts it needs (size, mean, std, interpolation) travel in the :class:`DataBundle` and the model
artifact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

# Pillow resampling filters by name (the names stored in artifacts).
INTERPOLATIONS: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


ALPHA_BACKGROUND = (255, 255, 255)
_HIGH_DEPTH = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image: EXIF orientation applied; alpha (RGBA, LA, palette or grey/RGB with a
    transparent colour) composited over white; 16/32-bit grey scaled to 8 bits (÷257, 65535 →
    255); float grey clipped to 0..255; CMYK, YCbCr, 1-bit and palette converted by Pillow.
    The serving side (``serve/images.py``, no torch) has an identical copy; a test compares them."""
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
class Preprocess:
    """PIL image → normalised float32 CHW array of shape (3, size, size)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")

    def resize(self, image: Image.Image) -> Image.Image:
        """Steps 1-2: RGB at ``size`` x ``size``."""
        image = to_rgb(image)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), INTERPOLATIONS[self.interpolation])
        return image

    def to_unit(self, image: Image.Image) -> np.ndarray:
        """Steps 1-3: HWC float32 in [0, 1] (before normalisation; used for mean/std)."""
        return np.asarray(self.resize(image), dtype=np.float32) / np.float32(255.0)

    def __call__(self, image: Image.Image) -> np.ndarray:
        x = self.to_unit(image)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def normalise_unit(self, x: np.ndarray) -> np.ndarray:
        """Step 4-5 on a batch (N, H, W, 3) of [0, 1] arrays → (N, 3, H, W)."""
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def with_stats(self, mean: Sequence[float], std: Sequence[float]) -> "Preprocess":
        return Preprocess(self.size, _triple(mean), _triple(std), self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": [3, self.size, self.size], "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "scale": "1/255", "channels": "RGB", "layout": "CHW"}


def _triple(v: Sequence[float]) -> tuple[float, float, float]:
    vals = [float(x) for x in v]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"expected 1 or 3 values, got {len(vals)}")
    return (vals[0], vals[1], vals[2])


def channel_stats(unit_images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of (N, H, W, 3) arrays in [0, 1]; std floored at 1e-3."""
    flat = unit_images.reshape(-1, unit_images.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), 1e-3)
    return _triple(np.round(mean, 6)), _triple(np.round(std, 6))
