"""Evaluate a classifier on a data set: run it once over the samples and compute the metrics of
:mod:`compress.metrics` for its task, plus the mean loss (cross-entropy or BCE)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import metrics as M
from .errors import UserError


@torch.no_grad()
def predict(model: nn.Module, dataset_or_loader: Dataset | DataLoader, batch_size: int = 256,
            device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K) float32, targets (N,) or (N, K)) for every sample, with the model in eval mode
    (its previous train/eval mode is restored afterwards)."""
    loader = dataset_or_loader if isinstance(dataset_or_loader, DataLoader) else \
        DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs, targets = [], []
    try:
        for x, y in loader:
            outs.append(model(x.to(device)).float().cpu())
            targets.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    if not outs:
        raise UserError("nothing to evaluate: the data split is empty")
    return torch.cat(outs).numpy(), torch.cat(targets).numpy()


def evaluate(model: nn.Module, dataset_or_loader: Dataset | DataLoader, task: str, batch_size: int = 256, *,
             labels: Sequence[str] | None = None, threshold: float = 0.5,
             device: str | torch.device | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on a dataset (or loader).

    multiclass: ``loss`` (mean cross-entropy), ``top1``, ``top5``, ``precision_macro``,
    ``recall_macro``, ``f1_macro``, ``far``/``frr`` at ``threshold``, ``eer``, ``per_class``,
    ``confusion_matrix``. multilabel: ``loss`` (mean BCE), ``f1_micro``, ``f1_macro``, ``map``,
    ``exact_match``, ``far``/``frr``, ``eer``, ``per_label``. Fractions are in [0, 1]."""
    logits, targets = predict(model, dataset_or_loader, batch_size, device)
    lt, tt = torch.from_numpy(logits), torch.from_numpy(targets)
    if task == "multiclass":
        if tt.ndim != 1:
            raise UserError("a multiclass model was given multilabel targets (use a multiclass data set)")
        out = {"loss": float(F.cross_entropy(lt, tt.long()))}
        out.update(M.multiclass_metrics(targets, logits, labels, threshold))
    elif task == "multilabel":
        if tt.ndim != 2 or tt.shape[1] != lt.shape[1]:
            raise UserError("a multilabel model needs label-set targets with one column per output")
        out = {"loss": float(F.binary_cross_entropy_with_logits(lt, tt.float()))}
        out.update(M.multilabel_metrics(targets, logits, labels, threshold))
    else:
        raise UserError(f"unknown task {task!r}; expected multiclass or multilabel")
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The plain-number entries of an ``evaluate`` result (drops per-class tables and matrices)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def primary_metric(task: str) -> str:
    """The metric model selection and early stopping use: top-1 accuracy or mAP."""
    return "top1" if task == "multiclass" else "map"
