"""Fine-tuning after pruning, through the one training loop (:func:`compress.training.loop.fit`:
its schedule, BatchNorm recalibration before validation, best-epoch selection, logging and DDP
support); the loss is a criterion (plain, or distillation from the unpruned model) and
``after_step`` re-applies masks after every step.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch.nn as nn


def finetune(model: nn.Module, bundle, cfg, *, criterion=None, after_step: Callable[[nn.Module], None] | None = None,
             progress: bool = True, label: str = "finetune epoch") -> dict:
    """Fine-tune ``model`` in place for ``cfg.epochs`` (a :class:`~compress.training.config.TrainConfig`)
    with ``criterion`` (default: the configured training loss); returns the best validation metrics."""
    from ..training.callbacks import TrainLogger
    from ..training.loop import fit

    logger = TrainLogger(progress=progress, label=label)
    try:
        return dict(fit(model, bundle, cfg, criterion=criterion, after_step=after_step, callback=logger).best_metrics)
    finally:
        logger.close()


def steps_per_epoch(n_train: int, cfg) -> int:
    """Optimizer steps ``fit`` takes per epoch for ``n_train`` samples (drop_last when n > batch)."""
    steps = n_train // cfg.batch_size if n_train > cfg.batch_size else 1
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    return max(1, steps)


def gradual_sparse_finetune(model: nn.Module, bundle, cfg, sparsity: float, *, global_scope: bool = False,
                            ignored_layers=(), criterion=None, progress: bool = True,
                            prune_fraction: float = 0.5) -> dict:
    """AGP fine-tuning: the first ``prune_fraction`` of ``cfg.epochs`` raise the sparsity from 0 to
    ``sparsity`` (one-epoch ``fit`` calls at constant learning rate, so no earlier, denser epoch
    can be restored as "best"), the rest recover with the final masks held (cosine schedule).
    Returns the best validation metrics of the last phase; the model ends at exactly ``sparsity``."""
    from .unstructured import GradualMagnitudePruner

    pruning_epochs = max(1, int(round(cfg.epochs * prune_fraction)))
    recovery_epochs = cfg.epochs - pruning_epochs
    per_epoch = steps_per_epoch(len(bundle.train), cfg)
    pruner = GradualMagnitudePruner(model, sparsity, pruning_epochs * per_epoch, global_scope=global_scope,
                                    ignored_layers=ignored_layers)
    metrics: dict = {}
    for epoch in range(pruning_epochs):  # a new shuffle each epoch via the seed
        phase1 = dataclasses.replace(cfg, epochs=1, schedule="constant", warmup_epochs=0.0, seed=cfg.seed + epoch)
        metrics = finetune(model, bundle, phase1, criterion=criterion, after_step=pruner, progress=progress,
                           label="sparsify epoch")
    masks = pruner.finish()
    if recovery_epochs > 0:
        phase2 = dataclasses.replace(cfg, epochs=recovery_epochs, warmup_epochs=0.0)
        metrics = finetune(model, bundle, phase2, criterion=criterion, after_step=masks, progress=progress)
    masks.apply()
    return metrics
