"""Evaluate a classifier on a data set: run it once over the samples and compute the metrics of
:mod:`compress.metrics` for its task, plus the mean loss (cross-entropy or BCE).

In memory: :func:`evaluate` (a module and a dataset). The eval stage: :class:`EvalConfig` →
:func:`evaluate_artifact` (a model file) → :class:`EvalResult`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import metrics as M
from .config import StageConfig, option
from .errors import UserError
from .torch_utils import model_mode


@torch.no_grad()
def predict(model: nn.Module, dataset_or_loader: Dataset | DataLoader, batch_size: int = 256,
            device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K) float32, targets (N,) or (N, K)) for every sample, with the model in eval mode
    (its previous train/eval mode is restored afterwards)."""
    loader = dataset_or_loader if isinstance(dataset_or_loader, DataLoader) else \
        DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False)
    if device is None:
        device = next(model.parameters()).device
    outs, targets = [], []
    with model_mode(model, training=False):
        for x, y in loader:
            outs.append(model(x.to(device)).float().cpu())
            targets.append(torch.as_tensor(y))
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
    ``exact_match``, ``far``/``frr``, ``eer``, ``per_label``. Both: ``recall_per_class`` {label:
    recall} (per label for multilabel), the figure class imbalance hurts. Fractions are in [0, 1]."""
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
    table = out.get("per_class") or out.get("per_label") or {}
    out["recall_per_class"] = {lab: row["recall"] for lab, row in table.items()}
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The plain-number entries of an ``evaluate`` result (drops per-class tables and matrices)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def primary_metric(task: str) -> str:
    """The metric model selection and early stopping use: top-1 accuracy or mAP."""
    return "top1" if task == "multiclass" else "map"


# ----------------------------------------------------------------------------- the stage

@dataclass(kw_only=True)
class EvalConfig(StageConfig):
    """Options of the eval stage (``compress eval``)."""

    data: str | None = option(None, help="data spec (default: the one the model was trained on)")
    split: str = option("test", choices=("train", "val", "test"), help="which split to evaluate")
    data_seed: int | None = option(None, help="split seed (default: the training run's, else 0)")
    data_root: str | None = option(None, help="folder for cifar10/cifar100 (default $COMPRESS_DATA_ROOT)")
    label_sep: str | None = option(None, help="separator of several labels in a csv cell (default: the "
                                              "training run's)")
    batch_size: int = option(256, check=(lambda v: v >= 1, "must be >= 1"), help="evaluation batch size")
    threshold: float = option(0.5, check=(lambda v: 0 < v < 1, "must be in (0, 1)"),
                              help="acceptance threshold for FAR/FRR and multilabel decisions")
    device: str = option("auto", help="auto, cpu, cuda")


@dataclass
class EvalResult:
    model: Path
    data: str
    split: str
    data_seed: int
    task: str
    n: int
    metrics: dict[str, Any]
    report_path: Path

    def to_dict(self) -> dict[str, Any]:
        return {"command": "eval", "model": str(self.model), "data": self.data, "split": self.split,
                "data_seed": self.data_seed, "task": self.task, "n": self.n, "metrics": self.metrics}


def evaluate_artifact(model_path: str | os.PathLike, config: EvalConfig | None = None, *,
                      report_path: str | os.PathLike | None = None) -> EvalResult:
    """The eval stage: metrics of a model artifact on a split of its data set (default: the one
    its history records, preprocessed as the artifact says), written as JSON to ``report_path``
    (default ``MODEL.eval-SPLIT.json``)."""
    from .artifact import load_model
    from .data import load_data_for_model
    from .io import check_outputs, sidecar, write_json
    from .training.optim import resolve_device

    cfg = (config or EvalConfig()).validate()
    model_path = Path(model_path)
    (json_path,) = check_outputs([report_path or sidecar(model_path, f".eval-{cfg.split}.json")], [model_path])
    device = resolve_device(cfg.device)
    if model_path.suffix.lower() == ".dcz":  # a Huffman-coded container: evaluate the decoded model
        from .huffman.api import load_dcz

        model, meta = load_dcz(model_path)
        model.to(device)
    else:
        model, meta = load_model(model_path, device=device)
    bundle = load_data_for_model(meta, cfg.data, seed=cfg.data_seed, data_root=cfg.data_root,
                                 label_sep=cfg.label_sep, source=str(model_path))
    dataset = bundle.split(cfg.split)
    metrics = evaluate(model, dataset, meta.task, cfg.batch_size, labels=meta.labels, threshold=cfg.threshold,
                       device=device)
    seed = cfg.data_seed if cfg.data_seed is not None else int(meta.training_data().get("data_seed", 0))
    result = EvalResult(model_path, cfg.data or meta.training_data()["spec"], cfg.split, seed, meta.task,
                        len(dataset), metrics, json_path)
    write_json(json_path, result.to_dict())
    return result


def measure_splits(model, bundle, task: str, splits=("val", "test")) -> dict[str, float]:
    """The primary metric (top-1 / mAP) of ``model`` on each of ``splits`` of ``bundle`` that has
    samples: {"val": 0.93, "test": 0.92}."""
    key, out = primary_metric(task), {}
    for split in splits:
        data = getattr(bundle, split)
        if len(data):
            out[split] = float(evaluate(model, data, task, 256)[key])
    return out
