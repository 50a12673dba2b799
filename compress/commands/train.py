"""Train a model from the zoo on a data set; save the best-validation weights as a model artifact.

Writes OUT (.safetensors, with labels, task, input size, mean/std and a "train" history entry),
OUT's JSON sidecar (resolved configuration, per-epoch history, validation and test metrics) and a
text log next to it (OUT with .log). Prints validation and test metrics as a short table.

Data: digits (default, embedded), digits-multilabel, imagefolder:PATH, csv:PATH, cifar10, cifar100.
Images of 64 px or less use the models' small-input stem unless --no-small-input is given.

    compress train --model mobilenet_v2 --data digits -o base.safetensors
    compress train --model resnet18 --data imagefolder:./photos --image-size 64 --epochs 40 -o r18.safetensors
    compress train --model mobilenet_v2 --data digits-multilabel -o ml.safetensors
    torchrun --nproc_per_node 2 -m compress train --data digits -o ddp.safetensors   (DistributedDataParallel)
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import UserError

SMALL_INPUT_MAX = 64  # pixels: at or below this the reduced-stride stem is used by default


def _defaults():
    from ..train import TrainConfig  # light: no torch work at import beyond the module itself

    return TrainConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = _defaults()
    m = p.add_argument_group("model")
    m.add_argument("--model", default="mobilenet_v2", help="registry name (see `compress models`; default %(default)s)")
    m.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='extra builder keywords as a JSON object, e.g. \'{"width_mult": 0.5}\'')
    m.add_argument("--width-mult", type=float, default=None, help="channel width multiplier")
    m.add_argument("--act", default=None, help="activation name (relu, relu6, hardswish, silu, mish, ...)")
    m.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=None,
                   help=f"reduced-stride stem for small images (default: on when --image-size <= {SMALL_INPUT_MAX})")
    m.add_argument("--drop-rate", type=float, default=None, help="dropout before the classifier")
    m.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (max over blocks)")
    m.add_argument("--num-classes", type=int, default=None,
                   help="expected number of classes; an error if the data set disagrees (default: from the data)")
    m.add_argument("--pretrained", action="store_true",
                   help="start from torchvision's ImageNet weights if they are in the torch hub cache "
                        "(no download); the classifier is re-initialised for the data's classes")

    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="data spec (default %(default)s)")
    g.add_argument("--image-size", type=int, default=32, help="square input side in pixels (default %(default)s)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the train/val/test split (default %(default)s)")
    g.add_argument("--data-root", default=None, help="folder for cifar10/cifar100 (default $COMPRESS_DATA_ROOT)")
    g.add_argument("--label-sep", default=";", help="separator of several labels in a csv cell (default %(default)s)")
    g.add_argument("--train-limit", type=int, default=None, help="use a seeded subset of this many training samples")
    g.add_argument("--workers", type=int, default=d.num_workers, help="data loader worker processes")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs, help="(default %(default)s)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (default %(default)s)")
    t.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    t.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adam", "adamw", "adamax", "nadam"],
                   help="sgd uses Nesterov momentum (default %(default)s)")
    t.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum / Adam beta1 (default %(default)s)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default %(default)s)")
    t.add_argument("--schedule", default=d.schedule, choices=["constant", "step", "cosine", "htd"],
                   help="learning-rate schedule after warm-up (default %(default)s)")
    t.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up (default %(default)s)")
    t.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine/htd floor as a fraction of --lr")
    t.add_argument("--step-epochs", type=int, default=d.step_epochs, help="step schedule period (default %(default)s)")
    t.add_argument("--step-gamma", type=float, default=d.step_gamma, help="step schedule factor (default %(default)s)")
    t.add_argument("--loss", default=d.loss, choices=["auto", "ce", "focal", "bce"],
                   help="auto: ce for multiclass, bce for multilabel (default %(default)s)")
    t.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(default %(default)s)")
    t.add_argument("--focal-gamma", type=float, default=d.focal_gamma, help="(default %(default)s)")
    t.add_argument("--mixup", type=float, default=d.mixup, help="mixup Beta alpha, 0 = off (default %(default)s)")
    t.add_argument("--cutmix", type=float, default=d.cutmix, help="cutmix Beta alpha, 0 = off (default %(default)s)")
    t.add_argument("--mix-prob", type=float, default=d.mix_prob, help="chance a batch is mixed (default %(default)s)")
    t.add_argument("--cutout", type=int, default=d.cutout, help="cutout square side in pixels, 0 = off")
    t.add_argument("--crop-padding", type=int, default=d.crop_padding,
                   help="random shift by up to this many pixels (default %(default)s)")
    t.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=d.hflip,
                   help="random horizontal flips (off by default: they change digits)")
    t.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm, 0 = off")
    t.add_argument("--patience", type=int, default=d.patience, help="early stopping patience in epochs, 0 = off")
    t.add_argument("--seed", type=int, default=d.seed, help="training seed (default %(default)s)")
    t.add_argument("--amp", default=d.amp, choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision: auto = fp16 on CUDA, off on CPU (default %(default)s)")
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default %(default)s)")
    t.add_argument("--threshold", type=float, default=d.threshold,
                   help="acceptance threshold for FAR/FRR and multilabel predictions (default %(default)s)")
    t.add_argument("--bn-recalibrate", type=int, default=d.bn_recalibrate, metavar="N",
                   help="re-estimate BatchNorm statistics on N training images before each validation "
                        "(precise BN), 0 = off (default %(default)s)")
    t.add_argument("--max-steps-per-epoch", type=int, default=d.max_steps_per_epoch, help="cap steps per epoch, 0 = all")

    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", required=True, help="model artifact to write (.safetensors)")
    o.add_argument("--json", dest="json_path", default=None, help="report path (default: OUTPUT with .json)")
    o.add_argument("--log", dest="log_path", default=None, help="text log path (default: OUTPUT with .log)")
    o.add_argument("--tensorboard", default=None, metavar="DIR", help="write TensorBoard event files to DIR")
    o.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines on stderr")


def model_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Builder keywords: --model-kwargs JSON, overridden by the explicit flags; small_input auto."""
    kwargs: dict[str, Any] = {}
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as e:
            raise UserError(f"--model-kwargs is not valid JSON: {e}") from None
        if not isinstance(kwargs, dict):
            raise UserError("--model-kwargs must be a JSON object, e.g. '{\"width_mult\": 0.5}'")
    for flag, key in (("width_mult", "width_mult"), ("act", "act_layer"), ("drop_rate", "drop_rate"),
                      ("drop_path", "drop_path_rate"), ("small_input", "small_input")):
        value = getattr(args, flag)
        if value is not None:
            kwargs[key] = value
    kwargs.setdefault("small_input", args.image_size <= SMALL_INPUT_MAX)
    return kwargs


def build_model(name: str, num_classes: int, kwargs: dict[str, Any]):
    from models import UnknownModelError, create_model

    try:
        return create_model(name, num_classes=num_classes, **kwargs)
    except UnknownModelError as e:
        raise UserError(str(e)) from None
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {name} with {kwargs}: {str(e).splitlines()[0]}") from None


def load_pretrained(model, arch: str) -> dict[str, Any]:
    """Copy torchvision's ImageNet weights for ``arch`` from the local torch hub cache into
    ``model`` (all tensors but the classifier must fit). Never downloads."""
    import torch
    from urllib.parse import urlparse

    from models import get_model_entry

    tv_name = get_model_entry(arch).torchvision_name
    if not tv_name:
        raise UserError(f"--pretrained: torchvision has no weights for {arch}")
    from torchvision.models import get_model_weights

    weights = get_model_weights(tv_name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not path.is_file():
        raise UserError(f"--pretrained: torchvision weights {weights} are not on this machine (looked for {path}); "
                        f"download them once with internet access, or train without --pretrained")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"--pretrained: cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = {n for n, mod in model.named_modules() if mod is model.get_classifier()}
    skipped = [k for k in own if k not in fitting and not k.endswith("num_batches_tracked")
               and not any(k.startswith(h + ".") for h in head)]
    if skipped:
        raise UserError(f"--pretrained: {weights} does not fit this {arch} configuration ({len(skipped)} tensors "
                        f"differ, e.g. {skipped[0]}); use the default width and activation")
    model.load_state_dict(fitting, strict=False)
    return {"weights": str(weights), "path": str(path)}


def run(args: argparse.Namespace) -> int:
    import torch

    from models import model_cost

    from ..artifact import ModelMeta, save_model
    from ..data import load_data
    from ..evaluate import evaluate, primary_metric, scalar_metrics
    from ..io import check_output, sidecar, write_json
    from ..report import format_table, human_count
    from ..train import TrainConfig, distributed_context, fit, seed_everything

    out = check_output(args.output)
    json_path = check_output(args.json_path or sidecar(out), out)
    log_path = check_output(args.log_path or sidecar(out, ".log"), out)
    model_kwargs = model_kwargs_from_args(args)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")

    bundle = load_data(args.data, image_size=args.image_size, seed=args.data_seed, data_root=args.data_root,
                       label_sep=args.label_sep, train_limit=args.train_limit)
    if args.num_classes is not None and args.num_classes != bundle.num_classes:
        raise UserError(f"--num-classes {args.num_classes} does not match data set {bundle.name!r}, "
                        f"which has {bundle.num_classes} classes")
    # --seed governs the weight initialisation too (and, inside fit, data order, augmentation and
    # dropout): the same seed starts from identical weights, different seeds from different ones.
    # Every torchrun process seeds alike, so all start from the same weights.
    seed_everything(args.seed)
    model = build_model(args.model, bundle.num_classes, model_kwargs)
    pretrained = load_pretrained(model, args.model) if args.pretrained else None

    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        min_lr_ratio=args.min_lr_ratio, step_epochs=args.step_epochs, step_gamma=args.step_gamma, loss=args.loss,
        label_smoothing=args.label_smoothing, focal_gamma=args.focal_gamma, mixup=args.mixup, cutmix=args.cutmix,
        mix_prob=args.mix_prob, cutout=args.cutout, crop_padding=args.crop_padding, hflip=args.hflip,
        grad_clip=args.grad_clip, patience=args.patience, seed=args.seed, amp=args.amp, device=args.device,
        num_workers=args.workers, threshold=args.threshold, max_steps_per_epoch=args.max_steps_per_epoch,
        bn_recalibrate=args.bn_recalibrate)
    cfg.validate()
    rank_ctx = distributed_context()
    result = fit(model, bundle, cfg, log_dir=args.tensorboard, log_file=log_path if rank_ctx.is_main else None,
                 progress=not args.no_progress)
    if not rank_ctx.is_main:
        return 0  # only rank 0 writes files

    test = evaluate(model, bundle.test, bundle.task, cfg.eval_batch_size, labels=bundle.labels, threshold=cfg.threshold)
    test_scalars = scalar_metrics(test)
    key = primary_metric(bundle.task)
    cost = model_cost(model, args.image_size)
    data_facts = {"spec": args.data, "image_size": args.image_size, "data_seed": args.data_seed,
                  "train_limit": args.train_limit, "interpolation": bundle.interpolation, "label_sep": args.label_sep,
                  "sizes": bundle.summary()["sizes"]}
    params = {"config": cfg.to_dict(), "model": args.model, "model_kwargs": model_kwargs, "data": data_facts,
              "pretrained": pretrained, "world_size": result.world_size}
    history_metrics = {key: test_scalars[key], **{f"test_{k}": v for k, v in test_scalars.items()},
                       **{f"val_{k}": v for k, v in result.best_metrics.items()}}
    meta = ModelMeta.for_model(model, task=bundle.task, labels=bundle.labels, input_size=list(bundle.input_size),
                               mean=list(bundle.mean), std=list(bundle.std), interpolation=bundle.interpolation)
    meta.add_history("train", params, history_metrics, seconds=round(result.seconds, 1),
                     epochs_run=result.epochs_run, best_epoch=result.best_epoch)
    save_model(model, out, meta)
    report = {"command": "train", "output": str(out), "log": str(log_path), "config": params,
              "data": bundle.summary(), "model": {"arch": args.model, "kwargs": model_kwargs, "params": cost.params,
                                                  "macs": cost.macs, "input_size": list(bundle.input_size)},
              "result": {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                         "stopped_early": result.stopped_early, "seconds": round(result.seconds, 2),
                         "val": result.best_metrics, "test": test},
              "history": result.history}
    write_json(json_path, report)

    cols = ["top1", "top5", "f1_macro", "far", "frr", "loss"] if bundle.task == "multiclass" else \
        ["map", "f1_micro", "f1_macro", "exact_match", "far", "frr", "loss"]
    rows = [{"split": "val (best)", **{c: result.best_metrics.get(c) for c in cols}},
            {"split": "test", **{c: test_scalars.get(c) for c in cols}}]
    print(format_table(rows, ["split", *cols]))
    print(f"{args.model} {json.dumps(model_kwargs)}: {human_count(cost.params)} params, "
          f"{human_count(cost.macs)} MACs at {args.image_size}px; best epoch {result.best_epoch}/{result.epochs_run}, "
          f"{result.seconds:.1f} s")
    print(f"saved {out} (report {json_path}, log {log_path})")
    return 0
