"""Batch augmentations on normalised image tensors (N, C, H, W), applied inside the training loop.

Random crop with padding (a shift of up to ``padding`` pixels, zero = mean fill after
normalisation), horizontal flip (off for digits: a mirrored digit is another glyph or none),
cutout (DeVries & Taylor 2017: one zeroed square per image), mixup (Zhang et al. 2018) and cutmix
(Yun et al. 2019). Mixing returns soft targets (N, K); losses accept those. All randomness comes
from torch's global generator, seeded by ``fit``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Pad by ``padding`` on each side with zeros and crop back at a random offset per image."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,))
    dx = torch.randint(0, 2 * padding + 1, (n,))
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (N, H)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # (N, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0]) < p
    if flip.any():
        x = x.clone()
        x[flip] = x[flip].flip(-1)
    return x


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image at a random centre (may overlap the border)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1))
    cx = torch.randint(0, w, (n, 1, 1))
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)  # (N, H, W)
    return x * (~hole).unsqueeze(1).to(x.dtype).to(x.device)


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Convex combination of each image/target with a shuffled partner, weight ~ Beta(alpha, alpha)."""
    lam = _beta(alpha)
    perm = torch.randperm(x.shape[0], device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box from a shuffled partner; targets mix by the pasted area."""
    lam = _beta(alpha)
    n, _, h, w = x.shape
    perm = torch.randperm(n, device=x.device)
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    area = (y1 - y0) * (x1 - x0) / (h * w)
    return x, (1 - area) * y + area * y[perm]


@dataclass(frozen=True)
class BatchAugment:
    """The training-time augmentation pipeline: crop → flip → cutout → (mixup | cutmix).

    ``mix_prob`` is the chance a batch is mixed; when both mixup and cutmix are on, each mixed
    batch uses one of them with equal probability. ``__call__`` takes targets already as a
    (N, K) float matrix and returns (images, targets)."""

    crop_padding: int = 0
    hflip: bool = False
    cutout: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0:
            raise UserError("crop padding and cutout size must be >= 0")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0 or not 0 <= self.mix_prob <= 1:
            raise UserError("mixup/cutmix alpha must be >= 0 and mix probability in [0, 1]")

    @property
    def changes_inputs(self) -> bool:
        """Whether any augmentation alters the images (else a sample is the same every epoch)."""
        return self.crop_padding > 0 or self.hflip or self.cutout > 0 or self.mixes

    @property
    def mixes(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = random_crop(x, self.crop_padding)
        if self.hflip:
            x = random_hflip(x)
        x = cutout(x, self.cutout)
        if self.mixes and float(torch.rand(())) < self.mix_prob:
            use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or float(torch.rand(())) < 0.5)
            x, y = cutmix(x, y, self.cutmix_alpha) if use_cutmix else mixup(x, y, self.mixup_alpha)
        return x, y
