"""Distil a teacher model artifact into a student: an artifact to fine-tune (e.g. a pruned model)
or a new network of a registry architecture trained from scratch.

Losses (--kd-loss): kd = Hinton et al. 2015 (alpha * T^2 * KL + (1 - alpha) * labels), dkd =
decoupled KD (Zhao et al. 2022: target and non-target class terms weighed apart), dist = Pearson-
correlation KD (Huang et al. 2022: inter- and intra-class relations). Multilabel models use kd with
per-label sigmoid targets. --hint-weight adds a FitNets feature hint between the last feature maps
(or named layers), through a learned 1x1 adapter when the widths differ. The teacher may have
another input size or normalisation: its input is converted from the student's.

With no augmentation (the Fashion-MNIST preset) the teacher's logits are computed once for the
whole training set and reused every epoch; the report says whether they were.

    compress distill --teacher r18.safetensors --student-arch pplcnet_x0_25 --data fashion-mnist -o s.safetensors
    compress distill --teacher base.safetensors --student pruned.safetensors --epochs 5 -o d.safetensors
    compress distill --teacher r18.safetensors --student-arch mobilenet_v3_small --student-kw '{"width_mult": 0.5}' \\
        --kd-loss dist --hint-weight 1 -o s.safetensors

Writes OUT (.safetensors, with a "distill" history entry naming the teacher and the loss), OUT.json
(config, per-epoch history, student and teacher test metrics) and OUT.log.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..distill.config import DistillConfig

    from .train import add_output_arguments

    DistillConfig.add_arguments(p)
    add_output_arguments(p, what="student artifact", tensorboard=False)


def run(args: argparse.Namespace) -> int:
    from ..distill.api import distill
    from ..distill.config import DistillConfig
    from ..report.train import format_distill

    cfg = DistillConfig.from_args(args)
    result = distill(args.output, cfg, report_path=args.json_path, log_path=args.log_path,
                     progress=not args.no_progress)
    if result is None:  # a torchrun worker other than rank 0
        return 0
    print(format_distill(result.report))
    print(f"saved {result.output} (report {result.report_path}, log {result.log_path})")
    return 0
