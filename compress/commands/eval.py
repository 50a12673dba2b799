"""Evaluate a model artifact on a data set split; print the metric table and write it as JSON.

The images are preprocessed the way the model was trained (input size and mean/std from the
artifact). --data defaults to the data set recorded in the model's training history, and
--data-seed to its split seed. The JSON goes to --json, else next to the model
(MODEL.eval-SPLIT.json).

Multiclass: top-1/top-5 accuracy, macro precision/recall/F1, FAR/FRR at --threshold
(class-vs-rest acceptance on softmax probabilities), equal error rate, per-class table,
confusion matrix. Multilabel: micro/macro F1, mAP, exact match, FAR/FRR, per-label table.
Under the metrics the recall of each class (label) is printed, the figure a class imbalance
hurts (up to 20 classes; beyond that the 20 lowest); --per-class prints the whole table instead.

    compress eval base.safetensors --data digits --split test
    compress eval ml.safetensors --data digits-multilabel --threshold 0.4 --per-class
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluate import EvalConfig

    p.add_argument("model", help="model artifact (.safetensors, or a .dcz container: its decoded model)")
    EvalConfig.add_arguments(p)
    p.add_argument("--per-class", action="store_true", help="also print the per-class (per-label) table")
    p.add_argument("--json", dest="json_path", default=None, help="report path (default MODEL.eval-SPLIT.json)")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import EvalConfig, evaluate_artifact
    from ..report.evaluate import format_eval

    result = evaluate_artifact(args.model, EvalConfig.from_args(args), report_path=args.json_path)
    print(format_eval(result, per_class=args.per_class))
    print(f"wrote {result.report_path}")
    return 0
