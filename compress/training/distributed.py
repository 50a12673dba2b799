"""Training beyond one process (``torchrun`` → DistributedDataParallel), kept out of the loop.

Under ``torchrun`` (env ``WORLD_SIZE`` > 1) :func:`init_distributed` joins the process group
(gloo on CPU, nccl on CUDA). Each process trains on its own shard of the training set
(:func:`compress.data.make_loader` with ``distributed=True``); every process validates the full
validation set on identical weights (:func:`broadcast_buffers` makes BatchNorm statistics rank
0's) and follows rank 0's decisions (:func:`rank0_decision`); only rank 0 logs and writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistributedContext:
    """Rank facts from an initialised process group, else from torchrun's environment variables."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistributedContext(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes (if any and not joined yet)."""
    ctx = distributed_context()
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        ctx.created_group = True
    return ctx


def close_distributed(ctx: DistributedContext) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if ctx.created_group:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    """The module to train: ``model`` wrapped in DistributedDataParallel when distributed."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_buffers(model: nn.Module) -> None:
    """Make BatchNorm running statistics identical on every process (rank 0's)."""
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def rank0_decision(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every process."""
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
