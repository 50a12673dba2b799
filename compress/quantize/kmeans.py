"""Deep Compression's trained quantization (Han et al. 2016, section 3): per-layer k-means weight
sharing, then fine-tuning of the shared values.

    from compress.quantize.kmeans import kmeans_artifact
    result = kmeans_artifact("p.safetensors", "p.k4.safetensors", QuantizeConfig(kmeans_bits=4))
    result.layers[0].values, result.accuracy["finetuned"]["test"]

Sharing. The weights of each Conv2d and Linear layer (biases and BatchNorm stay float) are
clustered by 1-D k-means (scikit-learn's ``KMeans``, one run from the chosen initial centroids:
``linear`` over [min, max] of the nonzero weights, the paper's best; ``density``, quantiles of
their distribution; ``random``, distinct weights drawn with the seed), and every weight takes its
centroid's value. Convolutions get ``conv_bits``, linear layers ``fc_bits``.

Zeros. Pruned weights (exact zeros) are not clustered and stay exactly zero. Zero is one of the
``2**bits`` codes, so a layer with zeros gets ``2**bits - 1`` nonzero centroids and every index
still fits in ``bits``: at most ``2**bits`` distinct values per layer, zero included.

Fine-tuning. A shared layer's weight is a parametrization ``where(mask, centroids[indices], 0)``;
the backward pass of that gather adds the gradients of all members of a cluster into its centroid
(the paper's equation 3), the dense weight is never a trainable parameter, and the optimizer
updates the centroids (plus the float biases and BatchNorm). It runs in the one training loop,
distilled from the unquantized model by default, like the prune stage's fine-tuning. Afterwards
the parametrizations are removed, leaving each weight exactly ``centroids[indices]``.

Storage. The output artifact stores each shared weight as a float32 codebook and uint8 indices
(:func:`compress.artifact.save_model` with ``shared=``), which the Huffman stage codes;
:func:`compress.artifact.load_model` decodes them, so eval / export / bench read it as any model.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..errors import UserError
from .config import KMEANS_INITS, QuantizeConfig

Log = Callable[[str], None]
FP32_BITS = 32


# ----------------------------------------------------------------------------- clustering

def initial_centroids(values: np.ndarray, k: int, method: str = "linear", seed: int = 0) -> np.ndarray:
    """``k`` starting centroids for the 1-D ``values`` (Han et al. 2016, section 3.2): ``linear``
    evenly spaced over [min, max]; ``density`` the quantiles at (i + 0.5) / k of the values'
    distribution (denser where the weights are); ``random`` k distinct values drawn with ``seed``
    (Forgy). Float64, ascending."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if k < 1 or values.size == 0:
        raise ValueError("need at least one centroid and one value")
    if method == "linear":
        return np.linspace(values.min(), values.max(), k)
    if method == "density":
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    if method == "random":
        distinct = np.unique(values)
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(distinct, size=min(k, distinct.size), replace=False))
    raise ValueError(f"unknown centroid initialisation {method!r}; choose one of {', '.join(KMEANS_INITS)}")


def cluster_values(values: np.ndarray, k: int, method: str = "linear", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means of ``values`` into at most ``k`` clusters: (centroids float32 ascending, label
    of each value int64). With ``k`` or fewer distinct values each is its own centroid (exact)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    distinct = np.unique(values)
    if distinct.size <= k:
        return distinct.astype(np.float32), np.searchsorted(distinct, values).astype(np.int64)
    from sklearn.cluster import KMeans

    init = initial_centroids(values, k, method, seed)
    km = KMeans(n_clusters=init.size, init=init.reshape(-1, 1), n_init=1, random_state=seed)
    labels = km.fit_predict(values.reshape(-1, 1))
    centers = km.cluster_centers_.ravel()
    order = np.argsort(centers, kind="stable")  # ascending codebooks read (and code) better
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return centers[order].astype(np.float32), rank[labels].astype(np.int64)


# ----------------------------------------------------------------------------- the parametrization

class SharedWeight(nn.Module):
    """A weight made of shared values: ``where(mask, centroids[indices], 0)``, times ``scale``
    per output channel when given (the centroids then live in the BatchNorm-folded domain and
    ``scale`` is 1/s, see :func:`share_weights`). ``centroids`` is the trainable parameter; the
    gather's backward sums the gradients of every weight of a cluster into its centroid, and
    masked (pruned) weights are zero with no gradient."""

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None,
                 scale: torch.Tensor | None = None):
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("indices", indices.clone())
        self.register_buffer("mask", None if mask is None else mask.clone())
        self.register_buffer("scale", None if scale is None else scale.clone())

    def forward(self, _dense: torch.Tensor) -> torch.Tensor:
        shared = self.centroids[self.indices]
        if self.mask is not None:
            shared = torch.where(self.mask, shared, torch.zeros((), dtype=shared.dtype, device=shared.device))
        if self.scale is not None:
            shared = shared * self.scale.view(-1, *[1] * (shared.ndim - 1))
        return shared


@dataclass
class SharedLayer:
    """One layer's sharing: its module name, ``conv`` | ``fc``, bits, weight count, the distinct
    values after sharing (zero included), the pruned zeros kept, and the storage in bits."""

    name: str
    kind: str
    bits: int
    weights: int
    values: int = 0
    zeros: int = 0
    centroids: int = 0  # nonzero centroids k-means found

    @property
    def index_bits(self) -> int:
        return self.weights * self.bits

    @property
    def codebook_bits(self) -> int:
        return self.values * FP32_BITS

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "index_bits": self.index_bits, "codebook_bits": self.codebook_bits,
                "fp32_bits": self.weights * FP32_BITS}


def layer_kind(module: nn.Module) -> str | None:
    """``conv`` for a Conv2d, ``fc`` for a Linear, ``None`` for anything else."""
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "fc"
    return None


def shareable_layers(model: nn.Module, min_weights: int = 0) -> tuple[list[tuple[str, nn.Module, str]], list[str]]:
    """(the [(name, module, kind)] of every Conv2d / Linear with at least ``min_weights`` weights,
    the names of the smaller ones left unshared)."""
    shared, small = [], []
    for name, m in model.named_modules():
        kind = layer_kind(m)
        if kind is None:
            continue
        (shared if m.weight.numel() >= min_weights else small).append((name, m, kind))
    return shared, [name for name, _, _ in small]


def share_layer(module: nn.Module, bits: int, init: str = "linear", seed: int = 0,
                fold: torch.Tensor | None = None) -> SharedWeight:
    """Cluster ``module.weight`` into at most ``2**bits`` values (zero, when the layer has pruned
    zeros, is one of them and stays fixed) and parametrize the weight by the shared values.
    With ``fold`` (the folded BatchNorm's factor s per output channel) the values clustered are
    weight × s and the weight becomes ``centroids[indices] / s``."""
    weight = module.weight.detach()
    if fold is not None:
        weight = weight * fold.to(weight).view(-1, *[1] * (weight.ndim - 1))
    mask = weight != 0
    nonzero = weight[mask].cpu().numpy()
    has_zeros = not bool(mask.all())
    k = 2 ** bits - (1 if has_zeros else 0)
    indices = torch.zeros(weight.shape, dtype=torch.long, device=weight.device)
    if nonzero.size:
        centroids, labels = cluster_values(nonzero, k, init, seed)
        indices[mask] = torch.from_numpy(labels).to(weight.device)
    else:  # an all-zero layer stays zero (its one centroid is masked everywhere)
        centroids = np.zeros(1, dtype=np.float32)
    shared = SharedWeight(torch.from_numpy(centroids).to(weight.device, weight.dtype), indices,
                          mask if has_zeros else None, None if fold is None else 1.0 / fold.to(weight))
    parametrize.register_parametrization(module, "weight", shared)
    module.parametrizations.weight.original.requires_grad_(False)  # only the centroids train
    return shared


def share_weights(model: nn.Module, cfg: QuantizeConfig, folds: dict[str, torch.Tensor] | None = None) \
        -> tuple[list[SharedLayer], list[str]]:
    """Share the weights of every eligible layer of ``model`` in place (see :func:`share_layer`;
    ``folds`` {conv name: BatchNorm factor s} clusters those layers in the folded domain);
    returns (one :class:`SharedLayer` per shared layer, the names of layers left unshared)."""
    layers, small = shareable_layers(model, cfg.min_weights)
    folds = folds or {}
    rows = []
    for i, (name, module, kind) in enumerate(layers):
        bits = cfg.layer_bits(kind)
        zeros = int((module.weight == 0).sum())
        shared = share_layer(module, bits, cfg.kmeans_init, seed=cfg.seed + i, fold=folds.get(name))
        rows.append(SharedLayer(name, kind, bits, module.weight.numel(), zeros=zeros,
                                centroids=int(shared.centroids.numel())))
    update_counts(model, rows)
    return rows, small


def update_counts(model: nn.Module, rows: list[SharedLayer]) -> None:
    """Refresh each row's distinct values and zeros from the model's current weights."""
    modules = dict(model.named_modules())
    for row in rows:
        w = modules[row.name].weight.detach()
        row.values, row.zeros = int(torch.unique(w).numel()), int((w == 0).sum())


AUTO_FOLD_ZEROS = 0.05  # share of zero weights (prune's "global" sparsity) from which the default folds the BNs


def fold_factors_now(model: nn.Module, pairs) -> dict[str, torch.Tensor]:
    """{conv name: s} of the Conv→BN ``pairs`` under the BNs' current statistics (float32)."""
    from ..fold import fold_factors

    modules = dict(model.named_modules())
    return {p.conv: torch.from_numpy(fold_factors(modules[p.conv], modules[p.bn])[0]) for p in pairs}


def settle_folded(model: nn.Module, pairs) -> None:
    """After fine-tuning: move each folded layer's 1/s into its BatchNorm, so the conv weight is
    exactly ``centroids[indices]`` (one codebook, storable as codebook + indices) and the BN the
    per-channel factor s_now/s_then plus the folded bias (mean 0, var 1 − eps: see
    :mod:`compress.fold`). The network computes the same function up to float rounding."""
    from ..fold import fold_factors, set_folded

    modules = dict(model.named_modules())
    for pair in pairs:
        conv, bn = modules[pair.conv], modules[pair.bn]
        if not parametrize.is_parametrized(conv, "weight"):
            continue
        shared = conv.parametrizations.weight[0]
        if not isinstance(shared, SharedWeight) or shared.scale is None:
            continue
        s_now, bias = (torch.from_numpy(v) for v in fold_factors(conv, bn))
        set_folded(conv, bn, pair, bias, gamma=s_now * shared.scale.cpu())
        shared.scale = None


def bake(model: nn.Module) -> None:
    """Remove every :class:`SharedWeight` parametrization, leaving each weight as the plain
    parameter ``centroids[indices]`` (zeros masked)."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], SharedWeight):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


class HoldZeros:
    """``after_step`` for fine-tuning: re-zero the pruned weights of layers left unshared (the
    shared ones are zero by construction)."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        self.masks = [(modules[n], modules[n].weight.detach() != 0) for n in names]
        self.masks = [(m, mask) for m, mask in self.masks if not bool(mask.all())]

    @torch.no_grad()
    def __call__(self, _model: nn.Module) -> None:
        for m, mask in self.masks:
            m.weight.mul_(mask.to(m.weight.device))


# ----------------------------------------------------------------------------- the stage

@dataclass
class KMeansResult:
    """What ``--kmeans-bits`` did: per-layer rows, accuracy of the input, of the shared model
    before fine-tuning and after (``val``: the validation split, ``test``: the test split; the
    metric is ``accuracy["metric"]``), the storage estimate in bits, and where it was written."""

    input: Path
    output: Path
    report_path: Path
    params: dict[str, Any]
    layers: list[SharedLayer]
    unshared: list[str]
    accuracy: dict[str, Any]
    storage: dict[str, Any]
    file_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"command": "quantize", "mode": "kmeans", "input": str(self.input), "output": str(self.output),
                "params": self.params, "layers": [r.to_dict() for r in self.layers], "unshared": self.unshared,
                "accuracy": self.accuracy, "storage": self.storage, "file_bytes": self.file_bytes,
                "timing": self.timing, "seconds": self.seconds}


def storage_estimate(model: nn.Module, rows: list[SharedLayer]) -> dict[str, Any]:
    """Bits to store the parameters: shared layers as indices (``bits`` per weight, zeros included)
    plus an fp32 codebook, everything else fp32; against all of them in fp32 (before any
    entropy coding or sparse storage, which is the Huffman stage's job)."""
    total = sum(p.numel() for p in model.parameters())
    shared_weights = sum(r.weights for r in rows)
    shared_bits = sum(r.index_bits + r.codebook_bits for r in rows)
    model_bits = shared_bits + (total - shared_weights) * FP32_BITS
    return {"params": total, "shared_weights": shared_weights, "shared_layers_bits": shared_bits,
            "shared_layers_fp32_bits": shared_weights * FP32_BITS,
            "shared_layers_ratio": shared_weights * FP32_BITS / shared_bits if shared_bits else None,
            "model_bits": model_bits, "model_fp32_bits": total * FP32_BITS,
            "model_ratio": total * FP32_BITS / model_bits if model_bits else None}


def _check_paths(model_path: Path, out: Path) -> tuple[Path, Path]:
    from ..io import check_outputs, existing_file, sidecar

    existing_file(model_path, "a .safetensors model artifact")
    if model_path.suffix.lower() == ".onnx":
        raise UserError(f"{model_path}: k-means weight sharing works on the .safetensors artifact; give the "
                        f"model before export (or use --int8 / --dynamic for an ONNX graph)")
    if out.suffix != ".safetensors":
        raise UserError(f"output {out} should end in .safetensors (k-means keeps the PyTorch artifact)")
    out, report_path = check_outputs([out, sidecar(out)], [model_path])
    return out, report_path


def _data_facts(cfg: QuantizeConfig, meta, bundle) -> dict[str, Any]:
    """The fine-tuning data as ``compress train`` records it, so later stages find it."""
    recorded = meta.training_data()
    return {"spec": cfg.data or recorded.get("spec"), "interpolation": bundle.interpolation,
            "data_seed": cfg.data_seed if cfg.data_seed is not None else recorded.get("data_seed", 0),
            "label_sep": recorded.get("label_sep", ";")}


def _criterion(cfg: QuantizeConfig, model: nn.Module, meta, bundle, model_path: Path):
    """Distillation from the unquantized ``model`` (copied now, before sharing), else ``None``
    (the training loop's label loss)."""
    from ..distill.teacher import logits_cache_file
    from ..prune.api import loop_config
    from ..training.criteria import build_criterion

    if not (cfg.distill and cfg.finetune > 0):
        return None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return build_criterion(loop_config(cfg, 1), meta.task, teacher=teacher, loss=cfg.distill_loss(meta.task),
                           cache_file=logits_cache_file(model_path, bundle.summary()))


def kmeans_artifact(model_path: str | os.PathLike, output: str | os.PathLike, config: QuantizeConfig, *,
                    log: Log = lambda msg: None, progress: bool = True) -> KMeansResult:
    """Share the weights of the artifact at ``model_path`` by k-means (``config.kmeans_bits``,
    ``conv_bits``, ``fc_bits``), fine-tune the shared values (``config.finetune`` epochs, distilled
    from the input model unless ``config.distill`` is off), and write ``output`` (.safetensors,
    codebook + uint8 indices per shared layer, a "quantize" history entry) and its JSON report."""
    from ..artifact import load_model, save_model
    from ..data import load_data_for_model
    from ..evaluate import measure_splits, primary_metric
    from ..io import write_json
    from ..prune.api import loop_config
    from ..prune.recovery import finetune

    cfg = config.validate()
    if cfg.mode() != "kmeans":
        raise UserError("kmeans_artifact needs --kmeans-bits")
    started = time.time()
    model_path, out = Path(model_path), Path(output)
    out, report_path = _check_paths(model_path, out)
    torch.manual_seed(cfg.seed)
    model, meta = load_model(model_path)
    bundle = None
    if cfg.finetune > 0 or cfg.data or meta.training_data():
        bundle = load_data_for_model(meta, cfg.data, seed=cfg.data_seed, data_root=cfg.data_root,
                                     train_limit=cfg.train_limit, source=str(model_path),
                                     why="needed to fine-tune the shared weights; --finetune 0 skips it")
    metric = primary_metric(meta.task)
    splits = ("val", "test") if cfg.test else ("val",)  # --no-test skips the test split
    accuracy: dict[str, Any] = {"metric": metric}
    timing: dict[str, float] = {}
    if bundle is not None:
        log("measuring the input model ...")
        accuracy["before"] = measure_splits(model, bundle, meta.task, splits)
    criterion = _criterion(cfg, model, meta, bundle, model_path) if bundle is not None else None
    folded, frozen = [], []
    fold = cfg.fold_bn
    if fold is None:  # auto: fold a pruned model (or when asked to freeze the folded BN)
        from ..prune.unstructured import sparsity_report

        share = sparsity_report(model)["global"]
        fold = cfg.freeze_bn or share >= AUTO_FOLD_ZEROS
        log(f"BatchNorm folding {'on' if fold else 'off'}: {100 * share:.0f}% of the prunable conv/linear weights "
            "are zero"
            + (" (--freeze-bn)" if cfg.freeze_bn else "") + "; --fold-bn/--no-fold-bn to choose")
    if fold and cfg.freeze_bn:
        from ..fold import fold_in_place

        frozen = fold_in_place(model)
        log(f"folded {len(frozen)} BatchNorm layer(s) into their convolutions (frozen while fine-tuning)")
    elif fold:
        from ..fold import conv_bn_pairs

        folded = conv_bn_pairs(model)
        log(f"{len(folded)} convolution(s) followed by BatchNorm: clustering their BatchNorm-folded weights")

    t0 = time.time()
    bits = {"conv": cfg.layer_bits("conv"), "fc": cfg.layer_bits("fc")}
    log(f"k-means weight sharing: conv {bits['conv']} bits, fc {bits['fc']} bits, {cfg.kmeans_init} init ...")
    rows, unshared = share_weights(model, cfg, fold_factors_now(model, folded))
    if not rows:
        raise UserError(f"{model_path}: no conv or linear layer has --min-weights {cfg.min_weights} weights; "
                        f"nothing to share")
    timing["kmeans_seconds"] = round(time.time() - t0, 2)
    log(f"shared {len(rows)} layers in {timing['kmeans_seconds']:.1f} s"
        + (f" ({len(unshared)} below --min-weights left as they are)" if unshared else ""))
    if bundle is not None:
        accuracy["kmeans"] = measure_splits(model, bundle, meta.task, splits)

    if cfg.finetune > 0:
        t0 = time.time()
        shared_state = copy.deepcopy(model.state_dict())  # to return to if fine-tuning makes it worse
        how = "distilled from the unquantized model" if criterion is not None else "labels only"
        log(f"fine-tuning the shared centroids for {cfg.finetune} epoch(s), {how} ...")
        tuned = finetune(model, bundle, loop_config(cfg, cfg.finetune, meta.training_augmentation()),
                         criterion=criterion, after_step=HoldZeros(model, unshared), progress=progress,
                         label="centroid epoch")
        accuracy["finetune_best_val"] = {k: v for k, v in tuned.items() if isinstance(v, (int, float))}
        timing["finetune_seconds"] = round(time.time() - t0, 2)
        before_ft = accuracy.get("kmeans", {}).get("val")
        if before_ft is not None and tuned.get(metric, before_ft) < before_ft:
            model.load_state_dict(shared_state)
            accuracy["finetune_reverted"] = True
            log(f"fine-tuning lowered validation {metric} ({100 * tuned[metric]:.2f}% < {100 * before_ft:.2f}% "
                f"right after k-means): keeping the k-means centroids (try a lower --lr)")
    settle_folded(model, folded)
    bake(model)
    model.eval()
    update_counts(model, rows)
    if bundle is not None and cfg.finetune > 0:
        accuracy["finetuned"] = measure_splits(model, bundle, meta.task, splits)

    storage = storage_estimate(model, rows)
    params: dict[str, Any] = {
        "mode": "kmeans", "bits": bits, "init": cfg.kmeans_init, "min_weights": cfg.min_weights,
        "folded_bn": len(folded) + len(frozen), "frozen_bn": bool(frozen),
        "seed": cfg.seed, "layers_shared": len(rows), "unshared": unshared,
        "zeros": "pruned weights stay exactly zero and take one of the 2^bits codes",
        "finetune_epochs": cfg.finetune, "distill": criterion is not None, "balance": cfg.balance,
        "lr": cfg.lr, "batch_size": cfg.batch_size, "max_steps_per_epoch": cfg.max_steps_per_epoch,
        "train_limit": cfg.train_limit, "data": None if bundle is None else _data_facts(cfg, meta, bundle)}
    if criterion is not None:
        params["kd"] = cfg.kd_params(meta.task)
        params["criterion"] = {**criterion.describe(), "teacher": "the unquantized input model"}
    elif cfg.finetune > 0:
        params["criterion"] = {"name": "supervised"}
    metrics: dict[str, Any] = {"storage_ratio": storage["model_ratio"], "shared_layers_ratio":
                               storage["shared_layers_ratio"]}
    for stage in ("before", "kmeans", "finetuned"):
        for split, v in accuracy.get(stage, {}).items():
            metrics[f"{stage}_{split}_{metric}"] = v
    if "finetune_best_val" in accuracy:
        metrics["finetune_best_val"] = accuracy["finetune_best_val"]
    meta.add_history("quantize", params, metrics, seconds=round(time.time() - started, 1))
    save_model(model, out, meta, shared={f"{r.name}.weight": r.bits for r in rows})
    seconds = round(time.time() - started, 1)
    result = KMeansResult(model_path, out, report_path, params, rows, unshared, accuracy, storage,
                          {"input": model_path.stat().st_size, "output": out.stat().st_size}, seconds, timing)
    write_json(report_path, result.to_dict())
    return result
