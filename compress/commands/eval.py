"""Evaluate a model artifact on a data set split; print the metric table and write it as JSON.

The images are preprocessed the way the model was trained (input size and mean/std from the
artifact). --data defaults to the data set recorded in the model's training history, and
--data-seed to its split seed. The JSON goes to --json, else next to the model
(MODEL.eval-SPLIT.json).

Multiclass: top-1/top-5 accuracy, macro precision/recall/F1, FAR/FRR at --threshold
(class-vs-rest acceptance on softmax probabilities), equal error rate, per-class table,
confusion matrix. Multilabel: micro/macro F1, mAP, exact match, FAR/FRR, per-label table.

    compress eval base.safetensors --data digits --split test
    compress eval ml.safetensors --data digits-multilabel --threshold 0.4 --per-class
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model artifact (.safetensors)")
    p.add_argument("--data", default=None, help="data spec (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="(default %(default)s)")
    p.add_argument("--data-seed", type=int, default=None, help="split seed (default: the training run's, else 0)")
    p.add_argument("--data-root", default=None, help="folder for cifar10/cifar100 (default $COMPRESS_DATA_ROOT)")
    p.add_argument("--label-sep", default=None, help="separator of several labels in a csv cell")
    p.add_argument("--batch-size", type=int, default=256, help="(default %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="acceptance threshold for FAR/FRR and multilabel decisions (default %(default)s)")
    p.add_argument("--per-class", action="store_true", help="also print the per-class (per-label) table")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default %(default)s)")
    p.add_argument("--json", dest="json_path", default=None, help="report path (default MODEL.eval-SPLIT.json)")


def training_data_facts(meta) -> dict[str, Any]:
    """The data facts recorded by ``compress train`` in the model history (last train entry), or {}."""
    for entry in reversed(meta.history):
        data = (entry.get("params") or {}).get("data")
        if isinstance(data, dict) and data.get("spec"):
            return data
    return {}


def run(args: argparse.Namespace) -> int:
    from ..artifact import load_model
    from ..data import load_data
    from ..evaluate import evaluate, scalar_metrics
    from ..io import check_output, sidecar, write_json
    from ..report import format_table
    from ..train import resolve_device

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be in (0, 1), got {args.threshold}")
    model_path = Path(args.model)
    json_path = check_output(args.json_path or sidecar(model_path, f".eval-{args.split}.json"), model_path)
    device = resolve_device(args.device)
    model, meta = load_model(model_path, device=device)
    trained_on = training_data_facts(meta)
    spec = args.data or trained_on.get("spec")
    if not spec:
        raise UserError(f"{model_path} records no training data set; give --data")
    seed = args.data_seed if args.data_seed is not None else int(trained_on.get("data_seed", 0))
    label_sep = args.label_sep or trained_on.get("label_sep", ";")
    bundle = load_data(spec, image_size=int(meta.input_size[-1]), seed=seed, mean=meta.mean, std=meta.std,
                       interpolation=trained_on.get("interpolation"), data_root=args.data_root, label_sep=label_sep)
    if bundle.num_classes != meta.num_classes:
        raise UserError(f"{model_path} has {meta.num_classes} classes but data set {bundle.name!r} has "
                        f"{bundle.num_classes}")
    if bundle.task != meta.task:
        raise UserError(f"{model_path} is a {meta.task} model but data set {bundle.name!r} is {bundle.task}")
    if list(bundle.labels) != list(meta.labels):
        raise UserError(f"{model_path} labels {meta.labels[:5]}... differ from the data's {bundle.labels[:5]}...")
    dataset = bundle.split(args.split)
    result = evaluate(model, dataset, meta.task, args.batch_size, labels=meta.labels, threshold=args.threshold,
                      device=device)
    report = {"command": "eval", "model": str(model_path), "data": spec, "split": args.split, "data_seed": seed,
              "task": meta.task, "n": len(dataset), "metrics": result}
    write_json(json_path, report)

    scalars = scalar_metrics(result)
    order = (["top1", "top5", "precision_macro", "recall_macro", "f1_macro"] if meta.task == "multiclass" else
             ["map", "f1_micro", "f1_macro", "precision_micro", "recall_micro", "exact_match"])
    order += ["far", "frr", "threshold", "eer", "eer_threshold", "loss", "n"]
    print(f"{model_path} on {spec} [{args.split}, {len(dataset)} samples]")
    print(format_table([{"metric": k, "value": scalars[k]} for k in order if k in scalars], ["metric", "value"]))
    if args.per_class:
        table = result.get("per_class") or result.get("per_label") or {}
        print(format_table([{"label": lab, **vals} for lab, vals in table.items()]))
    print(f"wrote {json_path}")
    return 0
