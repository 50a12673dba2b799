"""The one training loop, split the way torchvision's classification reference is:
:func:`train_one_epoch`, :func:`validate`, best-epoch tracking (:class:`BestCheckpoint`) and
:func:`fit`, which wires them together.

    result = fit(model, bundle, TrainConfig(epochs=15))   # model now holds the best-validation weights

One optimizer step per batch; the learning rate follows :mod:`.schedules` per step;
augmentations come from :mod:`.augment`; the loss is a :class:`~.criteria.Criterion` (plain
supervised by default, distillation with a teacher, ...). After each epoch BatchNorm statistics
are re-estimated (:mod:`.batchnorm`) and the model is evaluated on ``bundle.val``; the weights
with the best validation metric (top-1 for multiclass, mAP for multilabel) are kept and restored
at the end, and training stops early after ``patience`` epochs without improvement. With
``swa_epochs`` the last epochs run at a constant rate and what is validated (and may be kept) is
the running average of their weights (:mod:`.swa`).
Distributed training (torchrun) is :mod:`.distributed`; reporting is a :class:`~.callbacks.TrainCallback`.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from ..errors import UserError
from . import distributed as D
from .augment import BatchAugment
from .batchnorm import recalibrate_batchnorm
from .callbacks import StepInfo, TrainCallback
from .config import TrainConfig
from .criteria import Criterion, build_criterion
from .optim import autocast_for, build_optimizer, resolve_device, seed_everything
from .schedules import Schedule
from .swa import WeightAverage

if TYPE_CHECKING:  # pragma: no cover
    from ..data import DataBundle


@dataclass
class TrainResult:
    """What ``fit`` measured. ``best_metrics`` are the validation metrics (plain numbers) of the
    epoch whose weights the model holds; ``history`` has one dict per epoch; ``seconds`` is wall time."""

    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    epochs_run: int
    seconds: float
    best_epoch: int = 0
    monitor: str = "top1"
    stopped_early: bool = False
    world_size: int = 1
    criterion: dict[str, Any] = field(default_factory=dict)


class BestCheckpoint:
    """The weights of the best validation epoch, and the count of epochs without a gain (for
    early stopping). A tie on the metric (common once validation saturates) goes to the lower
    validation loss; patience counts epochs without a gain on the metric itself."""

    def __init__(self, monitor: str, patience: int = 0):
        self.monitor, self.patience = monitor, patience
        self.value, self.loss, self.epoch = -math.inf, math.inf, 0
        self.metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def judge(self, val: dict[str, float]) -> tuple[bool, bool]:
        """(gained on the metric, improved incl. the loss tie-break) for these validation metrics."""
        value = val[self.monitor]
        gained = value > self.value + 1e-9
        return gained, gained or (abs(value - self.value) <= 1e-9 and val["loss"] < self.loss)

    def update(self, epoch: int, val: dict[str, float], model: nn.Module, gained: bool, improved: bool) -> None:
        if improved:
            self.value, self.loss, self.epoch, self.metrics = val[self.monitor], val["loss"], epoch, val
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.bad_epochs = 0 if gained else self.bad_epochs + 1

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


@dataclass
class _Run:
    """Everything one :func:`fit` call sets up, handed to the per-epoch functions."""

    model: nn.Module           # the network itself (after_step and validation use it)
    train_model: nn.Module     # the module stepped: ``model``, or its DDP wrapper
    bundle: Any
    cfg: TrainConfig
    criterion: Criterion
    device: torch.device
    loader: Any
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    augment: BatchAugment
    autocast: Callable
    scaler: Any
    callback: TrainCallback
    ctx: D.DistributedContext
    after_step: Callable[[nn.Module], None] | None = None
    bn_data: Any = None  # the images precise BN averages over (None: the training split)
    memory_format: torch.memory_format = torch.contiguous_format
    global_step: int = 0


def _step(run: _Run, x: torch.Tensor, target: torch.Tensor, epoch: int, step: int,
          aux: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns (logits, loss), both detached. ``aux``: the criterion's
    per-sample extra data (see :meth:`.criteria.Criterion.train_dataset`)."""
    run.criterion.at(epoch - 1 + (step - 1) / run.steps_per_epoch)
    with run.autocast():
        logits = run.train_model(x)
        loss = run.criterion(logits, x, target, aux)
    if not torch.isfinite(loss):
        raise UserError(f"training diverged (loss {loss.item()}) at epoch {epoch} step {step}; "
                        f"lower --lr or enable --grad-clip")
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        if run.cfg.grad_clip > 0:
            run.scaler.unscale_(run.optimizer)
    else:
        loss.backward()
    if run.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.global_step += 1
    if run.after_step is not None:
        run.after_step(run.model)
    return logits.detach(), loss.detach()


def train_one_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """Train over ``run.steps_per_epoch`` batches; returns the mean training loss (and top-1)."""
    multiclass = run.bundle.task == "multiclass"
    if hasattr(run.loader.sampler, "set_epoch"):  # DistributedSampler, BalancedSampler
        run.loader.sampler.set_epoch(epoch)
    run.train_model.train()
    run.callback.on_epoch_start(epoch, run.cfg.epochs, run.steps_per_epoch)
    loss_sum, seen, correct = 0.0, 0, 0
    # A full epoch runs the loader to its end (its sampler finishes drawing then, so the next
    # epoch's shuffle is the same as ever); a capped one stops without fetching an extra batch.
    batches = run.loader if run.steps_per_epoch >= len(run.loader) else \
        itertools.islice(run.loader, run.steps_per_epoch)
    for step, (x, y, *aux) in enumerate(batches, start=1):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        extra = aux[0].to(run.device, non_blocking=True) if aux else None
        target = F.one_hot(y.long(), run.bundle.num_classes).float() if multiclass and run.augment.mixes else y
        x, target = run.augment(x, target)
        x = x.contiguous(memory_format=run.memory_format)
        logits, loss = _step(run, x, target, epoch, step, extra)
        loss_sum += float(loss) * x.shape[0]
        seen += x.shape[0]
        if multiclass:
            correct += int((logits.argmax(1) == y).sum())
        run.callback.on_step(StepInfo(epoch, step, run.global_step, float(loss), loss_sum / seen,
                                      correct / seen if multiclass else None, run.optimizer.param_groups[0]["lr"]))
    out = {"train_loss": loss_sum / max(seen, 1)}
    if multiclass:
        out["train_top1"] = correct / max(seen, 1)
    return out


def validate(model: nn.Module, bundle, cfg: TrainConfig, device: torch.device, distributed: bool = False,
             bn_data=None) -> dict:
    """Precise-BN re-estimation (on ``bn_data``, default ``bundle.train``), then the plain-number
    metrics of ``model`` on ``bundle.val``."""
    from ..evaluate import evaluate, scalar_metrics

    recalibrate_batchnorm(model, bundle.train if bn_data is None else bn_data, cfg.bn_recalibrate,
                          cfg.eval_batch_size, device, cfg.seed)
    if distributed:
        D.broadcast_buffers(model)
    return scalar_metrics(evaluate(model, bundle.val, bundle.task, cfg.eval_batch_size, labels=bundle.labels,
                                   threshold=cfg.threshold, device=device))


def _check_model_fits(model: nn.Module, bundle) -> None:
    get = getattr(model, "get_classifier", None)
    out = get().out_features if callable(get) else None
    if out is not None and out != bundle.num_classes:
        raise UserError(f"the model has {out} outputs but data set {bundle.name!r} has {bundle.num_classes} classes")
    if len(bundle.train) == 0:
        raise UserError(f"data set {bundle.name!r} has no training samples")


def _prepare(model: nn.Module, bundle, cfg: TrainConfig, criterion: Criterion | None,
             callback: TrainCallback | None, after_step) -> _Run:
    """Device, process group, loader, optimizer, schedule, criterion and callback of one run."""
    from ..data import make_loader

    ctx = D.distributed_context()
    device = resolve_device(cfg.device, ctx.local_rank)
    ctx = D.init_distributed(device.type)
    seed_everything(cfg.seed + ctx.rank)  # different augmentation draws per process
    memory_format = torch.channels_last if _channels_last(cfg, device) else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    batch = max(1, cfg.batch_size // ctx.world_size)
    callback = (callback or TrainCallback()) if ctx.is_main else TrainCallback()
    augment = BatchAugment(cfg.crop_padding, cfg.hflip, cfg.cutout, cfg.mixup, cfg.cutmix, cfg.mix_prob)
    criterion = criterion or build_criterion(cfg, bundle.task)
    # The criterion comes first: it may add trainable parameters (a hint adapter) and wrap the
    # training set (cached teacher logits).
    criterion.setup(device, model, bundle.train[0][0][None].contiguous(memory_format=memory_format))
    try:
        train_set = criterion.train_dataset(bundle.train, augments=augment.changes_inputs,
                                            batch_size=cfg.eval_batch_size, device=device, log=callback.on_message)
        sampler = _balance(cfg, bundle, criterion, device, ctx, callback.on_message)
        per_epoch = len(sampler) if sampler is not None else len(bundle.train) // ctx.world_size
        loader = make_loader(train_set, batch, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers,
                             drop_last=per_epoch > batch, distributed=ctx.enabled, sampler=sampler)
        optimizer = build_optimizer(model, cfg, extra=criterion.parameters())
        steps = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
        # Weight averaging: the schedule runs over the epochs before the averaged ones, which hold
        # the rate at --swa-lr.
        scheduled = (cfg.epochs - cfg.swa_epochs) * steps
        schedule = Schedule(cfg.schedule, total_steps=max(1, scheduled),
                            warmup_steps=min(scheduled, int(round(cfg.warmup_epochs * steps))), steps_per_epoch=steps,
                            min_factor=cfg.min_lr_ratio, step_epochs=cfg.step_epochs, gamma=cfg.step_gamma,
                            htd_lower=cfg.htd_lower, htd_upper=cfg.htd_upper,
                            hold_after=scheduled if cfg.swa_epochs else None, hold_factor=cfg.swa_rate / cfg.lr)
        autocast, scaler = autocast_for(cfg, device)
    except BaseException:
        criterion.teardown()
        raise
    # Precise BN averages over the distribution the network trains on: under oversample or
    # undersample a balanced draw, not the imbalanced split (whose statistics wrecked an
    # oversampled Fashion-MNIST model: README, Class imbalance).
    bn_data = None if sampler is None else Subset(bundle.train, sampler.epoch_indices(0).tolist())
    return _Run(model=model, train_model=D.wrap_model(model, ctx, device), bundle=bundle, cfg=cfg,
                criterion=criterion, device=device, loader=loader, bn_data=bn_data,
                steps_per_epoch=steps, optimizer=optimizer, scheduler=schedule.scheduler(optimizer),
                augment=augment, autocast=autocast, scaler=scaler, callback=callback, ctx=ctx,
                after_step=after_step, memory_format=memory_format)


def _balance(cfg: TrainConfig, bundle, criterion: Criterion, device: torch.device, ctx: D.DistributedContext,
             log: Callable[[str], None]):
    """Apply ``cfg.balance``: the training sampler it needs (None: the plain shuffle), or class
    weights handed to the criterion (see :mod:`.balance`)."""
    if cfg.balance == "none":
        return None
    from ..data.imbalance import class_counts, class_targets
    from .balance import BalancedSampler, check_balance, class_weight_tensor

    check_balance(cfg.balance, bundle.task)
    targets = class_targets(bundle.train)
    counts = class_counts(targets, bundle.num_classes).tolist()
    if cfg.balance == "class-weights":
        weights = class_weight_tensor(targets, bundle.num_classes, bundle.task)
        criterion.weight_classes(weights.to(device))
        log(f"balance: class-weights {[round(float(w), 3) for w in weights]} (training counts {counts})")
        return None
    sampler = BalancedSampler(targets, cfg.balance, seed=cfg.seed, rank=ctx.rank, world=ctx.world_size)
    log(f"balance: {cfg.balance}, {sampler.total} draws per epoch (training counts {counts})")
    return sampler


def _channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return device.type == "cpu" if cfg.channels_last is None else cfg.channels_last


def fit(model: nn.Module, bundle: DataBundle, cfg: TrainConfig | None = None, *,
        criterion: Criterion | None = None, after_step: Callable[[nn.Module], None] | None = None,
        callback: TrainCallback | None = None) -> TrainResult:
    """Train ``model`` on ``bundle.train``, select on ``bundle.val``; return a :class:`TrainResult`.

    ``criterion`` is the loss (default: the configured training loss, :func:`.criteria.build_criterion`).
    ``after_step(model)`` runs after every optimizer step (on the unwrapped model; pruning uses it
    to re-apply masks). ``callback`` receives progress (main process only; see :mod:`.callbacks`).
    On return the model holds the weights of the best validation epoch, in eval mode."""
    from ..evaluate import primary_metric

    cfg = (cfg or TrainConfig()).validate()
    _check_model_fits(model, bundle)
    if criterion is not None and getattr(criterion, "teacher", None) is model:
        raise UserError("the teacher must be a separate network from the student")
    started = time.time()
    run = _prepare(model, bundle, cfg, criterion, callback, after_step)
    best = BestCheckpoint(primary_metric(bundle.task), cfg.patience)
    history: list[dict[str, Any]] = []
    run.callback.on_start({"data": bundle.name, "train": len(bundle.train), "val": len(bundle.val),
                           "world": run.ctx.world_size, "device": run.device, "steps/epoch": run.steps_per_epoch,
                           "epochs": cfg.epochs, "monitor": best.monitor, "criterion": run.criterion.describe(),
                           "config": cfg.to_dict()})
    average, first_averaged = WeightAverage(), cfg.epochs - cfg.swa_epochs + 1
    if cfg.swa_epochs:
        run.callback.on_message(f"weight averaging: epochs {first_averaged}-{cfg.epochs} at lr {cfg.swa_rate:.3g}, "
                                f"each validated as the average of the averaged epochs so far")
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_start = time.time()
            row = {"epoch": epoch, **train_one_epoch(run, epoch)}
            iterate = None
            if cfg.swa_epochs and epoch >= first_averaged:  # validate (and keep) the average, train the iterate
                average.add(model)
                iterate = average.swap_in(model)
                row["averaged_epochs"] = average.count
            val = validate(model, bundle, cfg, run.device, run.ctx.enabled, run.bn_data)
            gained, improved = best.judge(val)
            if run.ctx.enabled:
                gained, improved = D.rank0_decision(gained, run.device), D.rank0_decision(improved, run.device)
            best.update(epoch, val, model, gained, improved)
            if iterate is not None:
                model.load_state_dict(iterate)
            row.update({"lr": run.optimizer.param_groups[0]["lr"], **{f"val_{k}": v for k, v in val.items()
                                                                     if k != "n"},
                        "seconds": round(time.time() - epoch_start, 3)})
            history.append(row)
            run.callback.on_epoch_end(row, improved)
            if best.should_stop:
                run.callback.on_message(f"early stop after epoch {epoch}: no {best.monitor} gain in "
                                        f"{best.bad_epochs} epochs (best {best.value:.4f} at epoch {best.epoch})")
                break
    finally:
        run.criterion.teardown()
        D.close_distributed(run.ctx)
    model.to(memory_format=torch.contiguous_format)  # plain layout for saving and export
    best.restore(model)
    model.eval()
    seconds = time.time() - started
    run.callback.on_end(f"done: best val_{best.monitor} {best.value:.4f} at epoch {best.epoch}, "
                        f"{len(history)} epochs, {seconds:.1f}s")
    return TrainResult(best_metrics=best.metrics, history=history, epochs_run=len(history), seconds=seconds,
                       best_epoch=best.epoch, monitor=best.monitor, stopped_early=len(history) < cfg.epochs,
                       world_size=run.ctx.world_size, criterion=run.criterion.describe())
