"""Optimizer, mixed precision, device and seeding for the training loop."""
from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from .config import TrainConfig

_OPTIMIZERS = {"sgd": None, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax,
               "nadam": torch.optim.NAdam}


def build_optimizer(model: nn.Module, cfg: TrainConfig, extra=()) -> torch.optim.Optimizer:
    """The optimizer for ``cfg.optimizer`` over the model's parameters and ``extra`` ones (e.g. a
    distillation adapter); biases and normalisation weights get no weight decay. SGD uses
    Nesterov momentum; the Adam family uses ``cfg.momentum`` as beta1."""
    decay, no_decay = [], []
    for p in [*model.parameters(), *extra]:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer not in _OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(_OPTIMIZERS)}")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return _OPTIMIZERS[cfg.optimizer](groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def autocast_for(cfg: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None) for the AMP mode and device."""
    mode = cfg.amp
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return nullcontext, None
    if mode == "fp16":
        if device.type != "cuda":
            raise UserError("amp fp16 needs a CUDA device; use --amp bf16 or off on CPU")
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → the local CUDA device if there is one, else CPU; a bad name is a :class:`UserError`."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA device is available")
    return dev
