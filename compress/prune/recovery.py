"""Fine-tuning after pruning: plain (``compress.train.fit``) or distilled from the unpruned model.

``fit`` has no hook for a teacher, so distillation runs a compact loop here (SGD with Nesterov
momentum, cosine learning rate, Hinton's KD loss, ``after_step`` after every optimizer step,
best validation epoch kept), the same contract as ``fit``.
"""
from __future__ import annotations

import copy
import inspect
import math
import sys
import time
from typing import Callable

import torch
import torch.nn as nn


def finetune(model: nn.Module, bundle, cfg, *, after_step: Callable[[nn.Module], None] | None = None,
             teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.7,
             progress: bool = True) -> dict:
    """Fine-tune ``model`` in place for ``cfg.epochs``; returns the best validation metrics.
    With ``teacher`` the loss is :func:`compress.distill_loss.kd_loss`."""
    from ..train import fit

    if teacher is None:
        return dict(fit(model, bundle, cfg, after_step=after_step, progress=progress).best_metrics)
    params = inspect.signature(fit).parameters
    if "teacher" in params:  # the distillation stage may extend fit; prefer it when present
        return dict(fit(model, bundle, cfg, after_step=after_step, progress=progress, teacher=teacher).best_metrics)
    return _distill_loop(model, bundle, cfg, teacher, after_step, temperature, alpha, progress)


def _distill_loop(model, bundle, cfg, teacher, after_step, temperature, alpha, progress) -> dict:
    from ..data import make_loader
    from ..distill_loss import kd_loss
    from ..evaluate import evaluate, primary_metric, scalar_metrics

    torch.manual_seed(cfg.seed)
    teacher.eval()
    loader = make_loader(bundle.train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         drop_last=len(bundle.train) > cfg.batch_size)
    steps_per_epoch = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
    total = max(1, cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                                weight_decay=cfg.weight_decay)
    monitor = primary_metric(bundle.task)
    best_value, best_state, best_metrics, step = -math.inf, None, {}, 0
    for epoch in range(1, cfg.epochs + 1):
        start = time.time()
        model.train()
        for i, (x, y) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            for group in optimizer.param_groups:  # cosine decay per step
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                t_logits = teacher(x)
            loss = kd_loss(model(x), t_logits, y, temperature=temperature, alpha=alpha, task=bundle.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if after_step is not None:
                after_step(model)
        val = scalar_metrics(evaluate(model, bundle.val, bundle.task, cfg.eval_batch_size, labels=bundle.labels))
        if val[monitor] > best_value + 1e-9:
            best_value, best_metrics = val[monitor], val
            best_state = copy.deepcopy(model.state_dict())
        if progress:
            print(f"distill epoch {epoch}/{cfg.epochs}  val_{monitor} {val[monitor]:.4f}  {time.time() - start:.1f}s",
                  file=sys.stderr, flush=True)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best_metrics


def steps_per_epoch(n_train: int, cfg) -> int:
    """Optimizer steps ``fit`` takes per epoch for ``n_train`` samples (drop_last when n > batch)."""
    steps = n_train // cfg.batch_size if n_train > cfg.batch_size else 1
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    return max(1, steps)


def gradual_sparse_finetune(model: nn.Module, bundle, cfg, sparsity: float, *, global_scope: bool = False,
                            ignored_layers=(), teacher: nn.Module | None = None, progress: bool = True,
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
        phase1 = _replace(cfg, epochs=1, schedule="constant", warmup_epochs=0.0, seed=cfg.seed + epoch)
        metrics = finetune(model, bundle, phase1, after_step=pruner, teacher=teacher, progress=progress)
    masks = pruner.finish()
    if recovery_epochs > 0:
        phase2 = _replace(cfg, epochs=recovery_epochs, warmup_epochs=0.0)
        metrics = finetune(model, bundle, phase2, after_step=masks, teacher=teacher, progress=progress)
    masks.apply()
    return metrics


def _replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)
