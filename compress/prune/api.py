"""The prune stage: :class:`~compress.prune.config.PruneConfig` → :func:`prune_artifact` (structured or
unstructured pruning, optional fine-tuning) or :func:`analyze_artifact` (sensitivity analysis) →
a result with ``to_dict()``; each writes its output and a JSON report next to it.

    from compress.prune.api import prune_artifact
    from compress.prune.config import PruneConfig
    result = prune_artifact("base.safetensors", "p.safetensors", PruneConfig(ratio=0.5, finetune=5, distill=True))
    result.after["top1"], result.after["latency_ms"]
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import UserError
from ..meta import AUGMENTATION_KEYS
from .config import PruneConfig

Log = Callable[[str], None]


@dataclass
class PruneResult:
    """Before/after rows (params, non-zero params, MACs, file bytes, test metric, latency), what was
    done (``params``, the history entry's parameters) and mode-specific facts in ``extra``
    (``channels`` per group, ``sparsity`` per layer, the ratio ``search``)."""

    input: Path
    output: Path
    report_path: Path
    params: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    bench: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"command": "prune", "input": str(self.input), "output": str(self.output), "params": self.params,
                "bench": self.bench, "before": self.before, "after": self.after, **self.extra,
                "seconds": self.seconds}


@dataclass
class SensitivityResult:
    """Per (group, ratio) rows, the ratio file chosen from them, and where everything was written."""

    input: Path
    output: Path  # the ratio file (for --ratio-file)
    report_path: Path
    plot_path: Path
    metric: str
    baseline: float
    rows: list
    ratios: dict[str, float]
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.report


def read_ratio_file(path: str | os.PathLike) -> dict[str, float]:
    """{layer name: ratio} from a JSON file (the ``ratios`` object of an analysis report also works)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"--ratio-file {p}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--ratio-file {p}: not a JSON file ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("ratios"), dict):
        data = data["ratios"]
    if not isinstance(data, dict) or not data:
        raise UserError(f"--ratio-file {p}: expected a JSON object {{layer: ratio}}")
    out = {}
    for name, r in data.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise UserError(f"--ratio-file {p}: ratio of {name!r} must be a number in [0, 1), got {r!r}")
        out[str(name)] = float(r)
    return out


def gradient_fn(bundle, task: str, batches: int = 4, batch_size: int = 32) -> Callable[[nn.Module], None]:
    """A ``compute_gradients(model)`` for Taylor importance: backward over a few training batches,
    in eval mode (BatchNorm statistics stay as trained)."""
    import torch.nn.functional as F

    from ..data import make_loader
    from ..torch_utils import model_mode

    def compute(model: nn.Module) -> None:
        with model_mode(model, training=False):
            for i, (x, y) in enumerate(make_loader(bundle.train, batch_size, shuffle=True, seed=0)):
                if i >= batches:
                    break
                logits = model(x)
                loss = F.cross_entropy(logits, y.long()) if task == "multiclass" else \
                    F.binary_cross_entropy_with_logits(logits, y.float())
                loss.backward()

    return compute


NO_AUGMENTATION = {"hflip": False, "crop_padding": 0, "cutout": 0}  # what --augment off fine-tunes with


def loop_config(cfg: PruneConfig, epochs: int, augmentation: dict[str, Any] | None = None):
    """The training loop's settings for fine-tuning ``epochs`` epochs (no warm-up), with the
    training run's ``augmentation`` (:meth:`ModelMeta.training_augmentation`), or none of its image
    transforms when ``cfg.augment`` is "off" (its label smoothing stays: that is the loss)."""
    from ..training.config import TrainConfig

    augmentation = dict(augmentation or {})
    if getattr(cfg, "augment", "inherit") == "off":
        augmentation.update(NO_AUGMENTATION)
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, warmup_epochs=0.0, seed=cfg.seed,
                       max_steps_per_epoch=cfg.max_steps_per_epoch, balance=cfg.balance, **augmentation)


@dataclass
class _Job:
    """One prune run: the loaded model and everything the mode functions share."""

    cfg: PruneConfig
    model: nn.Module
    meta: Any
    bundle: Any
    example: torch.Tensor
    log: Log
    progress: bool
    ratio_file: dict[str, float] | None = None
    criterion: Any = None  # the fine-tuning loss (distillation from the unpruned model with --distill)

    def tune(self, epochs: int, after_step=None) -> dict:
        from .recovery import finetune

        return finetune(self.model, self.bundle, loop_config(self.cfg, epochs, self.meta.training_augmentation()),
                        criterion=self.criterion, after_step=after_step, progress=self.progress)


def _prepare(model_path: Path, cfg: PruneConfig, log: Log, progress: bool) -> _Job:
    from ..artifact import load_model
    from ..data import load_data_for_model
    from ..distill.teacher import logits_cache_file
    from ..training.criteria import build_criterion
    from .structured import resolve_layers

    torch.manual_seed(cfg.seed)
    model, meta = load_model(model_path)
    ratio_file = read_ratio_file(cfg.ratio_file) if cfg.ratio_file else {}
    resolve_layers(model, list(cfg.ignore) + list(ratio_file))
    bundle = None
    if cfg.needs_data() or cfg.data or meta.training_data():
        bundle = load_data_for_model(meta, cfg.data, seed=cfg.data_seed, data_root=cfg.data_root,
                                     train_limit=cfg.train_limit, source=str(model_path),
                                     why="needed for fine-tuning, --analyze and --method taylor")
    example = torch.randn(1, *meta.input_size, generator=torch.Generator().manual_seed(0))
    job = _Job(cfg, model, meta, bundle, example, log, progress, ratio_file or None)
    if cfg.distilling():  # the teacher is the unpruned model, frozen before any change
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        job.criterion = build_criterion(loop_config(cfg, 1), meta.task, teacher=teacher, loss=cfg.distill_loss(meta.task),
                                        cache_file=None if bundle is None else
                                        logits_cache_file(model_path, bundle.summary()))
    return job


def _structured(job: _Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """Channel pruning (ratio, ratio file or a searched ratio), then fine-tuning. Returns (params, extra)."""
    from .importance import importance_by_name
    from .structured import channel_groups, prune_channels

    cfg, model, ratio_file = job.cfg, job.model, job.ratio_file
    grads = gradient_fn(job.bundle, job.meta.task) if cfg.method == "taylor" else None
    groups_before = {g.name: g.channels for g in channel_groups(model, job.example, cfg.ignore)}

    def prune(m: nn.Module, r: float, between=None) -> nn.Module:
        return prune_channels(m, job.example, ratio=r, importance=importance_by_name(cfg.method),
                              global_pruning=cfg.global_pruning, round_to=cfg.round_to or None,
                              ignored_layers=cfg.ignore, ratio_per_layer=ratio_file, steps=cfg.steps,
                              between_steps=between, compute_gradients=grads)

    extra: dict[str, Any] = {}
    removed = _depth(job, extra) if cfg.blocks or cfg.drop_block else []
    ratio = cfg.ratio if cfg.ratio is not None else 0.0
    if cfg.target_macs is not None or cfg.target_latency_ms is not None:
        ratio, extra["search"] = _search_ratio(job, prune)
    between = (lambda m, step: job.tune(cfg.step_epochs)) if cfg.finetune and cfg.steps > 1 else None
    allocation = None
    if cfg.allocate == "sensitivity" and ratio > 0:
        ratio_file, extra["allocation"] = _sensitivity_ratios(job, ratio)
        allocation, ratio = {"allocate": cfg.allocate, "ratio": ratio, "ratio_per_layer": ratio_file}, 0.0
    if ratio > 0 or ratio_file:
        job.log(f"pruning channels: ratio {ratio:g}{', per layer' if ratio_file else ''}, method {cfg.method}, "
                f"{cfg.steps} step(s) ...")
        prune(model, ratio, between)
    params = {"ratio": ratio, "steps": cfg.steps, "round_to": cfg.round_to, "ignored": list(cfg.ignore),
              "ratio_file": cfg.ratio_file}
    if allocation:
        params.update(allocation)
    if removed:
        params["removed_blocks"] = removed
    if cfg.finetune:
        extra["finetune_metrics"] = job.tune(cfg.finetune)
    groups_after = {g.name: g.channels for g in channel_groups(model, job.example, cfg.ignore)}
    extra["channels"] = {name: [groups_before[name], groups_after.get(name)] for name in groups_before}
    return params, extra


def _sensitivity_ratios(job: _Job, ratio: float) -> tuple[dict[str, float], dict[str, Any]]:
    """``--allocate sensitivity``: per-group ratios removing as many MACs (at the timing size) as
    ``ratio`` uniformly would, spent where the analysis says accuracy is cheapest
    (:mod:`.allocate`). Returns (ratio per layer, the record for the report)."""
    from models import count_macs

    from ..evaluate import evaluate, primary_metric
    from .allocate import Option, allocate_ratios, group_savings
    from .importance import importance_by_name
    from .measure import imagenet_stem_twin
    from .sensitivity import analyze_sensitivity
    from .structured import prune_channels

    cfg, model, meta = job.cfg, job.model, job.meta
    ratios = sorted(set(cfg.ratios) | {ratio})
    split_name, split = _eval_split(job)
    key = primary_metric(meta.task)
    if cfg.method == "taylor":
        model.zero_grad(set_to_none=True)
        gradient_fn(job.bundle, meta.task)(model)
    job.log(f"sensitivity of every channel group at ratios {', '.join(map(str, ratios))} on {len(split)} "
            f"{split_name} images ...")
    _, rows = analyze_sensitivity(model, job.example, lambda m: float(evaluate(m, split, meta.task, 256)[key]),
                                  ratios=ratios, importance=importance_by_name(cfg.method),
                                  round_to=cfg.round_to or None, ignored_layers=cfg.ignore)
    model.zero_grad(set_to_none=True)
    # MACs where the model will run: the bench size, with the ImageNet stem if asked
    side = int(cfg.bench_input_size or meta.input_size[-1])
    twin = imagenet_stem_twin(model, meta)[0] if cfg.bench_imagenet_stem else copy.deepcopy(model)
    twin.eval()
    shape = (int(meta.input_size[0]), side, side)
    example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    magnitude = importance_by_name("l1")  # which channels go does not change the MACs

    def prune(m: nn.Module, ex: torch.Tensor, per_layer: dict[str, float]) -> None:
        per_layer = {g: r for g, r in per_layer.items() if r > 0}
        if per_layer:
            prune_channels(m, ex, ratio=0.0, importance=magnitude, round_to=cfg.round_to or None,
                           ignored_layers=cfg.ignore, ratio_per_layer=per_layer)

    def count(m: nn.Module) -> float:
        return float(count_macs(m, shape))

    groups = list(dict.fromkeys(r.layer for r in rows))
    job.log(f"MACs each group saves at {side}x{side} ...")
    savings = group_savings(twin, example, groups, ratios, prune, count)
    options = {g: [Option(r.ratio, r.drop, savings[(g, r.ratio)]) for r in rows if r.layer == g] for g in groups}
    full = count(twin)
    uniform = copy.deepcopy(twin)
    prune_channels(uniform, example, ratio=ratio, importance=magnitude, round_to=cfg.round_to or None,
                   ignored_layers=cfg.ignore)
    target = full - count(uniform)
    chosen: dict[str, float] = {}
    want, got = target, 0.0
    for _ in range(8):  # groups interact (shared projections): ask again for what is still missing
        chosen = allocate_ratios(options, want, start=chosen)
        trial = copy.deepcopy(twin)
        prune(trial, example, chosen)
        got = full - count(trial)
        if got >= 0.99 * target or want >= sum(max(o.saved for o in opts) for opts in options.values()):
            break
        want += target - got
    per_layer = {g: r for g, r in chosen.items() if r > 0}
    job.log(f"per-layer ratios: {len(per_layer)} of {len(groups)} groups pruned, {got / 1e6:.1f}M of "
            f"{full / 1e6:.1f}M MACs removed at {side}px (uniform {ratio:g}: {target / 1e6:.1f}M)")
    record = {"ratios_tested": ratios, "split": split_name, "samples": len(split), "timing_side": side,
              "imagenet_stem": cfg.bench_imagenet_stem, "macs_full": full, "macs_removed": got,
              "macs_removed_uniform": target, "ratio_per_layer": per_layer,
              "rows": [dict(r.to_dict(), macs_saved=savings[(r.layer, r.ratio)]) for r in rows]}
    return per_layer, record


def _eval_split(job: _Job):
    """(name, split) the analysis and the block ranking evaluate on: validation (the first
    ``--analyze-samples`` of it), the test split only for data sets without one."""
    bundle, n = job.bundle, job.cfg.analyze_samples
    name, split = ("val", bundle.val) if len(bundle.val) else ("test", bundle.test)
    if n and n < len(split):
        from torch.utils.data import Subset

        split = Subset(split, range(n))
    return name, split


def _depth(job: _Job, extra: dict[str, Any]) -> list[str]:
    """Remove ``--drop-block`` blocks, or the ``--blocks`` whose removal alone changes the outputs
    least on validation images (:func:`.depth.rank_blocks`);
    records the ranking in ``extra["depth"]`` and the removal in the artifact's ``arch_kwargs``."""
    from models import remove_blocks, residual_blocks

    from .depth import choose_blocks, rank_blocks

    cfg, model = job.cfg, job.model
    available = residual_blocks(model)
    if cfg.drop_block:
        unknown = [b for b in cfg.drop_block if b not in available]
        if unknown:
            raise UserError(f"--drop-block {unknown[0]}: not a removable residual block of this {job.meta.arch} "
                            f"(removable: {', '.join(available) or 'none'})")
        names, depth = list(dict.fromkeys(cfg.drop_block)), {"chosen_by": "name"}
    else:
        if not available:
            raise UserError(f"--blocks: {job.meta.arch} has no residual blocks left to remove (depth pruning needs "
                            "x + f(x) blocks: MobileNetV2/V3, EfficientNet, ResNet)")
        if cfg.blocks > len(available):
            raise UserError(f"--blocks {cfg.blocks}: this {job.meta.arch} has only {len(available)} removable "
                            f"residual blocks ({', '.join(available)})")
        from ..data import make_loader

        split_name, split = _eval_split(job)
        job.log(f"ranking {len(available)} residual blocks on {len(split)} {split_name} images ...")
        baseline, trials = rank_blocks(model, make_loader(split, 256, shuffle=False), job.meta.task,
                                       progress=job.log)
        names = choose_blocks(trials, cfg.blocks)
        depth = {"chosen_by": f"the change of the outputs (mean KL divergence) on {len(split)} {split_name} "
                              "images, each block removed alone",
                 "baseline": baseline, "trials": [t.to_dict() for t in trials]}
    job.log(f"removing {len(names)} residual block(s): {', '.join(names)}")
    remove_blocks(model, names)
    job.meta.arch_kwargs = dict(model.arch_kwargs)
    extra["depth"] = {**depth, "removed": list(model.arch_kwargs["removed_blocks"])}
    return names


def _search_ratio(job: _Job, prune) -> tuple[float, dict[str, Any]]:
    """The smallest ratio meeting ``--target-macs`` or ``--target-latency-ms`` (bisection)."""
    from models import count_macs

    from .measure import latency_ms
    from .search import search_ratio

    cfg, meta = job.cfg, job.meta
    if cfg.target_macs is not None:
        target, what = cfg.target_macs, "macs"
        cost = lambda m: count_macs(m, tuple(meta.input_size))  # noqa: E731
    else:
        target, what = cfg.target_latency_ms, "latency_ms"
        size = int(cfg.bench_input_size or meta.input_size[-1])
        cost = lambda m: latency_ms(m, meta, size, cfg.bench_runs, cfg.bench_imagenet_stem)  # noqa: E731
    job.log(f"searching the ratio for {what} <= {target:g} ...")
    found = search_ratio(job.model, lambda m, r: prune(m, r), cost, target, progress=job.log)
    if not found.reached:
        job.log(f"warning: even ratio {found.ratio} gives {what} {found.cost:.4g} > target {target:g}")
    if found.ratio == 0.0:
        job.log("the input model already meets the target; nothing pruned")
    return found.ratio, {"target": target, "measure": what, "reached": found.reached, "ratio": found.ratio,
                         "cost": found.cost, "trials": found.trials}


def _unstructured(job: _Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """Magnitude pruning to ``--sparsity`` (gradually over fine-tuning, AGP). Returns (params, extra)."""
    from .recovery import gradual_sparse_finetune
    from .unstructured import prune_magnitude, sparsity_report

    cfg, extra = job.cfg, {}
    if cfg.finetune:
        job.log(f"gradual magnitude pruning to {cfg.sparsity:g} over {cfg.finetune} epoch(s) ...")
        extra["finetune_metrics"] = gradual_sparse_finetune(
            job.model, job.bundle, loop_config(cfg, cfg.finetune, job.meta.training_augmentation()), cfg.sparsity,
            global_scope=cfg.global_pruning,
            ignored_layers=cfg.ignore, criterion=job.criterion, progress=job.progress)
    else:
        prune_magnitude(job.model, cfg.sparsity, global_scope=cfg.global_pruning, ignored_layers=cfg.ignore)
    rep = sparsity_report(job.model, cfg.ignore)
    extra["sparsity"] = {"global": rep["global"], "overall": rep["overall"],
                         "layers": {k: v["sparsity"] for k, v in rep["layers"].items()}}
    return {"sparsity": cfg.sparsity, "ignored": list(cfg.ignore)}, extra


def _data_facts(job: _Job) -> dict[str, Any]:
    """The fine-tuning data as ``compress train`` records it, so later stages find it."""
    recorded = job.meta.training_data()
    return {"spec": job.cfg.data or recorded.get("spec"), "interpolation": job.bundle.interpolation,
            "data_seed": job.cfg.data_seed if job.cfg.data_seed is not None else recorded.get("data_seed", 0),
            "label_sep": recorded.get("label_sep", ";")}


def _history_params(job: _Job, mode: str) -> dict[str, Any]:
    cfg, bundle = job.cfg, job.bundle
    params: dict[str, Any] = {"mode": mode, "method": cfg.method, "global": cfg.global_pruning,
                              "finetune_epochs": cfg.finetune, "distill": cfg.distilling(), "balance": cfg.balance,
                              "data": None if bundle is None else _data_facts(job)}
    if cfg.finetune:
        tuned = loop_config(cfg, cfg.finetune, job.meta.training_augmentation())
        params["augment"] = cfg.augment
        params["augmentation"] = {k: getattr(tuned, k) for k in AUGMENTATION_KEYS}
    if job.criterion is not None:
        params["kd"] = cfg.kd_params(job.meta.task)
        params["criterion"] = {**job.criterion.describe(), "teacher": "the unpruned input model"}
    return params


def prune_artifact(model_path: str | os.PathLike, output: str | os.PathLike, config: PruneConfig, *,
                   log: Log | None = None, progress: bool = True) -> PruneResult:
    """Prune the model artifact at ``model_path`` as ``config`` says (structured or unstructured,
    optional fine-tuning), measure before and after, and write ``output`` (.safetensors) with a
    "prune" history entry plus its JSON report (``output``.json). ``log`` receives progress lines."""
    from ..artifact import save_model
    from ..io import check_outputs, sidecar, write_json
    from .measure import ModelMeasure

    cfg = config.validate()
    mode = cfg.mode()
    if mode == "analyze":
        raise UserError("--analyze is the sensitivity analysis: use analyze_artifact")
    started, log = time.time(), log or (lambda _msg: None)
    model_path, out = Path(model_path), Path(output)
    if out.suffix != ".safetensors":
        raise UserError(f"output {out} should end in .safetensors")
    out, report_path = check_outputs([out, sidecar(out)], [model_path, cfg.ratio_file])
    job = _prepare(model_path, cfg, log, progress)
    with tempfile.TemporaryDirectory(prefix="compress-prune-") as workdir:
        measure = ModelMeasure(job.meta, job.bundle if cfg.test else None, cfg.bench_size(job.meta.input_size[-1]),
                               Path(workdir), imagenet_stem=cfg.bench_imagenet_stem, runs=cfg.bench_runs)
        log("measuring the input model ...")
        before = measure(job.model, model_path.stat().st_size)
        params, extra = (_structured if mode == "structured" else _unstructured)(job)
        params = {**_history_params(job, mode), **params}
        job.model.eval()
        after = measure(job.model, None)
        if measure.bench_size is not None:
            log("timing both models in ONNX Runtime (interleaved) ...")
            measure.time_latency([before, after])
    metrics = {k: v for k, v in after.items() if k != "file_bytes"}
    metrics.update({f"before_{k}": v for k, v in before.items() if k in ("params", "macs", "top1", "map",
                                                                          "latency_ms")})
    tuned = extra.pop("finetune_metrics", None)
    if tuned:
        metrics["finetune_best_val"] = {k: v for k, v in tuned.items() if isinstance(v, (int, float))}
    job.meta.add_history("prune", params, metrics, seconds=round(time.time() - started, 1))
    save_model(job.model, out, job.meta)
    after["file_bytes"] = out.stat().st_size
    bench = None if measure.bench_size is None else {"input_size": measure.bench_size, "batch": 1, "threads": 2,
                                                     "imagenet_stem": cfg.bench_imagenet_stem}
    result = PruneResult(model_path, out, report_path, params, before, after, bench, extra,
                         round(time.time() - started, 1))
    write_json(report_path, result.to_dict())
    return result


def analyze_artifact(model_path: str | os.PathLike, output: str | os.PathLike | None, config: PruneConfig, *,
                     log: Log | None = None) -> SensitivityResult:
    """The sensitivity analysis: each channel group of the model at ``model_path`` pruned alone at
    every ratio of ``config.ratios``; writes the ratio file ``output`` (default
    ``MODEL.ratios.json``; for ``--ratio-file``), the full report (``….sensitivity.json``) and a plot."""
    from ..evaluate import evaluate, primary_metric
    from ..io import check_outputs, write_json
    from ..report.plots import plot_sensitivity
    from .importance import importance_by_name
    from .sensitivity import analyze_sensitivity, choose_ratios

    cfg = config.validate()
    started, log = time.time(), log or (lambda _msg: None)
    model_path = Path(model_path)
    out = Path(output) if output else model_path.with_name(model_path.stem + ".ratios.json")
    stem = out.with_suffix("") if out.suffix == ".json" else out
    out, report_path, png_path = check_outputs([out, stem.with_name(stem.name + ".sensitivity.json"),
                                                stem.with_name(stem.name + ".png")], [model_path, cfg.ratio_file])
    job = _prepare(model_path, cfg, log, progress=False)
    model, meta, bundle = job.model, job.meta, job.bundle
    key = primary_metric(meta.task)
    if cfg.method == "taylor":
        model.zero_grad(set_to_none=True)
        gradient_fn(bundle, meta.task)(model)
    split_name, split = _eval_split(job)
    baseline, rows = analyze_sensitivity(model, job.example, lambda m: float(evaluate(m, split, meta.task, 256)[key]),
                                         ratios=cfg.ratios, importance=importance_by_name(cfg.method),
                                         round_to=cfg.round_to or None, ignored_layers=cfg.ignore, progress=log)
    ratios = choose_ratios(rows, cfg.max_drop)
    report = {"command": "prune --analyze", "input": str(model_path), "metric": key,
              "split": split_name, "samples": len(split), "baseline": baseline,
              "ratios_tested": cfg.ratios, "max_drop": cfg.max_drop, "method": cfg.method, "round_to": cfg.round_to,
              "rows": [r.to_dict() for r in rows], "ratios": ratios, "seconds": round(time.time() - started, 1)}
    write_json(out, ratios)
    write_json(report_path, report)
    plot_sensitivity(baseline, rows, png_path, metric_name=key)
    return SensitivityResult(model_path, out, report_path, png_path, key, baseline, rows, ratios, report)
