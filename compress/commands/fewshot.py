"""Few-shot classes without retraining: N-way K-shot accuracy of nearest-prototype classification
on a frozen model's embeddings, over seeded random episodes.

Each episode takes --shots labelled images of each novel class (its prototype: the mean of their
L2-normalised embeddings) and --queries other images per class, classified by the most similar
prototype (cosine). Prints the mean accuracy over --episodes episodes and the half-width of its
95% interval (1.96 s / sqrt(episodes)). Several models are measured on the same episodes, e.g. a
trained model and its compressed versions. --classes defaults to the data set's classes the first
model has no output for (a model trained on fashion-mnist:classes=0-4 → classes 5-9), --data to
the data set it was trained on without that classes= view. MODEL: a model artifact (.safetensors,
.dcz) or an ONNX file with an 'embedding' output. JSON report: --json, else MODEL.fewshot.json.

    compress fewshot base.safetensors --data fashion-mnist --classes 5-9 --shots 5 --episodes 100
    compress fewshot base.safetensors pruned.safetensors pruned.int8.onnx
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..embed.api import FewShotConfig

    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model artifacts (.safetensors, .dcz) or ONNX files with an 'embedding' output")
    FewShotConfig.add_arguments(p)
    p.add_argument("--json", dest="json_path", default=None, help="report path (default FIRST_MODEL.fewshot.json)")


def run(args: argparse.Namespace) -> int:
    from ..embed.api import FewShotConfig, fewshot_artifacts
    from ..report.embed import format_fewshot

    print(format_fewshot(fewshot_artifacts(args.models, FewShotConfig.from_args(args), report_path=args.json_path)))
    return 0
