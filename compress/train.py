"""Supervised training of a registry model on a :class:`~compress.data.DataBundle`.

    cfg = TrainConfig(epochs=15)
    result = fit(model, bundle, cfg)         # model now holds the best-validation weights

One optimizer step per batch; the learning rate follows :mod:`compress.schedules` per step;
augmentations come from :mod:`compress.augment`, losses from :mod:`compress.losses`. After each
epoch the model is evaluated on ``bundle.val``; the weights with the best validation metric
(top-1 for multiclass, mAP for multilabel) are kept and restored at the end, and training stops
early after ``patience`` epochs without improvement.

Distributed: under ``torchrun`` (env ``WORLD_SIZE`` > 1) ``fit`` joins the process group (gloo on
CPU, nccl on CUDA), wraps the model in DistributedDataParallel and shards the training set with a
DistributedSampler; ``batch_size`` stays the global batch (each process takes
``batch_size / world_size``). Every process evaluates the full validation set on identical
weights (BatchNorm buffers are broadcast from rank 0 each epoch) and follows rank 0's decisions;
only rank 0 shows progress and writes logs.

Knowledge distillation: ``fit(student, bundle, cfg, teacher=teacher)`` trains on Hinton's loss
(:func:`compress.distill_loss.kd_loss`) with ``cfg.kd_temperature`` and ``cfg.kd_alpha``; the hard
term is the configured training loss. Everything else (schedule, augmentation, BatchNorm
recalibration, best-epoch selection, logging, DDP) is the same as plain training.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import UserError
from .schedules import SCHEDULES

if TYPE_CHECKING:  # heavy imports happen inside the functions, so `compress --help` stays quick
    import torch
    import torch.nn as nn

    from .data import DataBundle

OPTIMIZERS = ("sgd", "adam", "adamw", "adamax", "nadam")
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Every training knob, with the defaults that train MobileNetV2 on digits to >= 97% test
    accuracy in a few CPU minutes. Rates and probabilities are fractions; sizes are pixels."""

    epochs: int = 10
    batch_size: int = 32                # global batch (split across processes under torchrun)
    lr: float = 0.03                    # peak learning rate (after warm-up)
    optimizer: str = "sgd"              # sgd (momentum + Nesterov), adam, adamw, adamax, nadam
    momentum: float = 0.9               # SGD momentum; beta1 for the Adam family
    weight_decay: float = 5e-4          # not applied to biases and normalisation weights
    schedule: str = "cosine"            # constant, step, cosine, htd
    warmup_epochs: float = 1.0          # linear warm-up length
    min_lr_ratio: float = 0.0           # floor of cosine/htd as a fraction of lr
    step_epochs: int = 10               # step schedule: decay every this many epochs ...
    step_gamma: float = 0.1             # ... by this factor
    htd_lower: float = -6.0             # HTD tanh range (Hsueh et al. 2019)
    htd_upper: float = 3.0
    loss: str = "auto"                  # auto (ce | bce by task), ce, focal, bce
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    mixup: float = 0.0                  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0                 # Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0               # chance a batch is mixed when mixup/cutmix is on
    cutout: int = 0                     # side of the zeroed square; 0 = off
    crop_padding: int = 2               # random shift up to this many pixels; 0 = off
    hflip: bool = False                 # off by default: flipping changes a digit's identity
    grad_clip: float = 0.0              # max global grad norm; 0 = off
    patience: int = 0                   # early stopping after this many epochs without gain; 0 = off
    seed: int = 0
    amp: str = "auto"                   # auto: fp16 autocast on CUDA, off on CPU; bf16; fp16; off
    device: str = "auto"                # auto, cpu, cuda, cuda:N
    num_workers: int = 0
    eval_batch_size: int = 256
    threshold: float = 0.5              # acceptance threshold for FAR/FRR and multilabel decisions
    max_steps_per_epoch: int = 0        # cap on optimizer steps per epoch; 0 = whole training set
    bn_recalibrate: int = 512           # precise BatchNorm: re-estimate BN statistics on this many
                                        # training images before each validation; 0 = off
    kd_temperature: float = 4.0         # distillation (only with fit(..., teacher=...)): softmax temperature T
    kd_alpha: float = 0.7               # weight of the soft-target term; 1 - alpha weighs the hard-label loss

    def validate(self) -> None:
        """Raise :class:`UserError` (one line) for out-of-range values."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be > 0, got {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.min_lr_ratio <= 1, f"min lr ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.grad_clip >= 0, f"gradient clip must be >= 0, got {self.grad_clip}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.amp in AMP_MODES, f"unknown amp mode {self.amp!r}; choose one of {', '.join(AMP_MODES)}"),
            (self.num_workers >= 0, f"workers must be >= 0, got {self.num_workers}"),
            (self.max_steps_per_epoch >= 0, f"max steps per epoch must be >= 0, got {self.max_steps_per_epoch}"),
            (0 < self.threshold < 1, f"threshold must be in (0, 1), got {self.threshold}"),
            (self.bn_recalibrate >= 0, f"bn recalibration samples must be >= 0, got {self.bn_recalibrate}"),
            (self.kd_temperature > 0 and math.isfinite(self.kd_temperature),
             f"distillation temperature must be > 0, got {self.kd_temperature}"),
            (0 <= self.kd_alpha <= 1, f"distillation alpha must be in [0, 1], got {self.kd_alpha}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers

def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> "torch.device":
    import torch

    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA device is available")
    return dev


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
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistributedContext(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def _init_distributed(device_type: str) -> DistributedContext:
    import torch.distributed as dist

    ctx = distributed_context()
    if ctx.enabled and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        ctx.created_group = True
    return ctx


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer for ``cfg.optimizer``; biases and normalisation weights get no weight decay."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
    if cfg.optimizer == "adamax":
        return torch.optim.Adamax(groups, lr=cfg.lr, betas=betas)
    if cfg.optimizer == "nadam":
        return torch.optim.NAdam(groups, lr=cfg.lr, betas=betas)
    raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def _autocast(cfg: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None) for the AMP mode and device."""
    import torch

    mode = cfg.amp
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return nullcontext, None
    if mode == "fp16":
        if device.type != "cuda":
            raise UserError("amp fp16 needs a CUDA device; use --amp bf16 or off on CPU")
        scaler = torch.amp.GradScaler("cuda")
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), scaler
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None


def _distillation_loss(hard_loss: Callable, cfg: TrainConfig, task: str) -> Callable:
    """``(student_logits, teacher_logits, target) -> loss``: Hinton's KD with ``hard_loss`` (the
    configured training loss, so label smoothing / focal / soft mixup targets keep their meaning)
    as the hard-label term."""
    from .distill_loss import kd_loss

    def loss(student_logits, teacher_logits, target):
        return kd_loss(student_logits, teacher_logits, target, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha,
                       task=task, hard_loss=hard_loss)

    return loss


def _check_model_fits(model: nn.Module, bundle: DataBundle) -> None:
    get = getattr(model, "get_classifier", None)
    out = get().out_features if callable(get) else None
    if out is not None and out != bundle.num_classes:
        raise UserError(f"the model has {out} outputs but data set {bundle.name!r} has {bundle.num_classes} classes")


class _Log:
    """Epoch lines to a text file (rank 0 only), appended, flushed per line."""

    def __init__(self, path: str | os.PathLike | None):
        self.f = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "a", encoding="utf-8")

    def write(self, line: str) -> None:
        if self.f is not None:
            self.f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


# ----------------------------------------------------------------------------- fit

def fit(model: nn.Module, bundle: DataBundle, cfg: TrainConfig | None = None, *,
        after_step: Callable[[nn.Module], None] | None = None, log_dir: str | os.PathLike | None = None,
        log_file: str | os.PathLike | None = None, progress: bool = True,
        teacher: nn.Module | None = None) -> TrainResult:
    """Train ``model`` on ``bundle.train``, select on ``bundle.val``; return a :class:`TrainResult`.

    ``after_step(model)`` runs after every optimizer step (on the unwrapped model; pruning uses it
    to re-apply masks). ``log_dir``: TensorBoard event files. ``log_file``: a text log, one line
    per epoch. ``progress``: a tqdm bar per epoch on stderr. On return the model holds the weights
    of the best validation epoch, in eval mode.

    ``teacher``: distil from this network (same classes as the data): the loss becomes
    ``alpha * T^2 * soft + (1 - alpha) * hard`` (:func:`compress.distill_loss.kd_loss`, T =
    ``cfg.kd_temperature``, alpha = ``cfg.kd_alpha``), hard being the configured training loss.
    The teacher runs in eval mode under ``no_grad`` on the very batch the student sees, after
    augmentation; with mixup/cutmix that is the mixed image, so the soft term matches the
    teacher's prediction on exactly the student's input (well defined, "function matching") and
    the hard term uses the mixed soft labels as in plain training. The teacher is moved to the
    training device, never wrapped in DistributedDataParallel (it takes no gradients; each
    process runs it on its own shard), never updated, and given back in its original train/eval
    mode. Validation and the returned metrics are the student's."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from .augment import BatchAugment
    from .data import make_loader
    from .evaluate import evaluate, primary_metric, scalar_metrics
    from .losses import build_loss
    from .schedules import Schedule

    cfg = cfg or TrainConfig()
    cfg.validate()
    _check_model_fits(model, bundle)
    if teacher is not None and teacher is model:
        raise ValueError("the teacher must be a separate network from the student")
    started = time.time()
    ctx_dist = distributed_context()
    device = resolve_device(cfg.device, ctx_dist.local_rank)
    ctx_dist = _init_distributed(device.type)
    seed_everything(cfg.seed + ctx_dist.rank)  # different augmentation draws per process
    model.to(device)
    task = bundle.task
    teacher_was_training = False
    if teacher is not None:
        teacher_was_training = teacher.training
        teacher.to(device).eval()
    monitor = primary_metric(task)
    train_model: nn.Module = model
    if ctx_dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    per_process_batch = max(1, cfg.batch_size // ctx_dist.world_size)
    n_train = len(bundle.train)
    if n_train == 0:
        raise UserError(f"data set {bundle.name!r} has no training samples")
    loader = make_loader(bundle.train, per_process_batch, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers,
                         drop_last=n_train // ctx_dist.world_size > per_process_batch, distributed=ctx_dist.enabled)
    steps_per_epoch = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(cfg.schedule, total_steps=cfg.epochs * steps_per_epoch,
                        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
                        steps_per_epoch=steps_per_epoch, min_factor=cfg.min_lr_ratio, step_epochs=cfg.step_epochs,
                        gamma=cfg.step_gamma, htd_lower=cfg.htd_lower, htd_upper=cfg.htd_upper)
    scheduler = schedule.scheduler(optimizer)
    loss_fn = build_loss(cfg.loss, task, label_smoothing=cfg.label_smoothing, focal_gamma=cfg.focal_gamma)
    distill_fn = _distillation_loss(loss_fn, cfg, task) if teacher is not None else None
    augment = BatchAugment(cfg.crop_padding, cfg.hflip, cfg.cutout, cfg.mixup, cfg.cutmix, cfg.mix_prob)
    autocast, scaler = _autocast(cfg, device)
    main = ctx_dist.is_main
    writer = None
    if main and log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir))
    log = _Log(log_file if main else None)
    log.write(f"start: data={bundle.name} train={n_train} val={len(bundle.val)} world={ctx_dist.world_size} "
              f"device={device} steps/epoch={steps_per_epoch} config={cfg.to_dict()}")
    if teacher is not None:
        log.write(f"distillation: teacher={getattr(teacher, 'arch', type(teacher).__name__)} "
                  f"T={cfg.kd_temperature:g} alpha={cfg.kd_alpha:g}")
    show = progress and main
    if show:
        from tqdm import tqdm

    history: list[dict[str, Any]] = []
    best_value = -math.inf
    best_loss = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = {}
    best_epoch = 0
    bad_epochs = 0
    stopped_early = False
    global_step = 0
    epoch = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_start = time.time()
            if ctx_dist.enabled:
                loader.sampler.set_epoch(epoch)
            train_model.train()
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, file=sys.stderr,
                       dynamic_ncols=True, disable=None) if show else None  # None: no bar when not a TTY
            loss_sum, seen, correct = 0.0, 0, 0
            for step, (x, y) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                target = y
                if task == "multiclass" and augment.mixes:
                    target = F.one_hot(y.long(), bundle.num_classes).float()
                x, target = augment(x, target)
                with autocast():
                    logits = train_model(x)
                    if distill_fn is None:
                        loss = loss_fn(logits, target)
                    else:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                        if teacher_logits.shape != logits.shape:
                            raise UserError(f"the teacher has {teacher_logits.shape[-1]} outputs but the student "
                                            f"has {logits.shape[-1]}; distillation needs the same classes")
                        loss = distill_fn(logits, teacher_logits, target)
                if not torch.isfinite(loss):
                    raise UserError(f"training diverged (loss {loss.item()}) at epoch {epoch} step {step + 1}; "
                                    f"lower --lr or enable --grad-clip")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if cfg.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                scheduler.step()
                global_step += 1
                if after_step is not None:
                    after_step(model)
                n = x.shape[0]
                loss_sum += float(loss.detach()) * n
                seen += n
                if task == "multiclass":
                    correct += int((logits.detach().argmax(1) == y).sum())
                if bar is not None:
                    post = {"loss": f"{loss_sum / seen:.4f}"}
                    if task == "multiclass":
                        post["acc"] = f"{correct / seen:.3f}"
                    bar.set_postfix(post)
                    bar.update()
                if writer is not None and (global_step % 10 == 0 or step == 0):
                    writer.add_scalar("train/loss", float(loss.detach()), global_step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], global_step)
            if bar is not None:
                bar.close()
            recalibrate_batchnorm(model, bundle.train, cfg.bn_recalibrate, cfg.eval_batch_size, device, cfg.seed)
            if ctx_dist.enabled:
                _broadcast_buffers(model)
            val = scalar_metrics(evaluate(model, bundle.val, task, cfg.eval_batch_size, labels=bundle.labels,
                                          threshold=cfg.threshold, device=device))
            value = val[monitor]
            gained = value > best_value + 1e-9
            # a tie on the metric (common once validation saturates) goes to the lower validation loss
            improved = gained or (abs(value - best_value) <= 1e-9 and val["loss"] < best_loss)
            if ctx_dist.enabled:
                gained, improved = _rank0_decision(gained, device), _rank0_decision(improved, device)
            if improved:
                best_value, best_loss, best_epoch, best_metrics = value, val["loss"], epoch, val
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0 if gained else bad_epochs + 1  # patience counts epochs without a metric gain
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(seen, 1),
                   **({"train_top1": correct / max(seen, 1)} if task == "multiclass" else {}),
                   **{f"val_{k}": v for k, v in val.items() if k != "n"},
                   "seconds": round(time.time() - epoch_start, 3)}
            history.append(row)
            stage = "distill epoch" if teacher is not None else "epoch"
            line = (f"{stage} {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  val_loss {val['loss']:.4f}  "
                    f"val_{monitor} {value:.4f}{' *' if improved else ''}  lr {row['lr']:.3g}  {row['seconds']:.1f}s")
            log.write(line)
            if show:
                print(line, file=sys.stderr, flush=True)
            if writer is not None:
                writer.add_scalar("train/epoch_loss", row["train_loss"], epoch)
                for k, v in val.items():
                    writer.add_scalar(f"val/{k}", v, epoch)
                writer.flush()
            if cfg.patience and bad_epochs >= cfg.patience:
                stopped_early = epoch < cfg.epochs
                log.write(f"early stop: no {monitor} gain in {bad_epochs} epochs (best {best_value:.4f} at epoch {best_epoch})")
                if show:
                    print(f"early stop after epoch {epoch}: best val_{monitor} {best_value:.4f} at epoch {best_epoch}",
                          file=sys.stderr)
                break
    finally:
        if writer is not None:
            writer.close()
        if ctx_dist.created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
        if teacher is not None:
            teacher.train(teacher_was_training)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    seconds = time.time() - started
    log.write(f"done: best val_{monitor} {best_value:.4f} at epoch {best_epoch}, {len(history)} epochs, {seconds:.1f}s")
    log.close()
    extra = {}
    if teacher is not None:
        extra["distill"] = {"temperature": cfg.kd_temperature, "alpha": cfg.kd_alpha}
    return TrainResult(best_metrics=best_metrics, history=history, epochs_run=len(history), seconds=seconds,
                       best_epoch=best_epoch, monitor=monitor, stopped_early=stopped_early,
                       world_size=ctx_dist.world_size, extra=extra)


def recalibrate_batchnorm(model: "nn.Module", dataset, num_samples: int, batch_size: int = 256,
                          device: "torch.device | str" = "cpu", seed: int = 0) -> None:
    """Precise BatchNorm (Wu & Johnson, 2021): replace every BN layer's running mean/var by the
    plain average over ``num_samples`` un-augmented training images under the current weights.

    The exponential running averages lag behind weights that change quickly (early epochs, high
    learning rates), which can leave an eval-mode network at chance while it trains well; the
    validation metric, early stopping and the saved model all use the recalibrated statistics.
    Dropout and stochastic depth stay off during the pass. ``num_samples`` 0 does nothing."""
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader, Subset

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or num_samples <= 0 or len(dataset) == 0:
        return
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:num_samples].tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
        bn.train()
    try:
        with torch.no_grad():
            for x, _ in loader:
                model(x.to(device))
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        model.train(was_training)


def _broadcast_buffers(model: nn.Module) -> None:
    """Make BatchNorm running statistics identical on every process (rank 0's)."""
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def _rank0_decision(flag: bool, device: "torch.device") -> bool:
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
