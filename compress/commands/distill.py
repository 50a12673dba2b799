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
    from ..report import format_table, human_count

    cfg = DistillConfig.from_args(args)
    result = distill(args.output, cfg, report_path=args.json_path, log_path=args.log_path,
                     progress=not args.no_progress)
    if result is None:  # a torchrun worker other than rank 0
        return 0
    r = result.report
    key = "top1" if r["data"]["task"] == "multiclass" else "map"
    t, s = r["teacher"], r["student"]
    teacher_value = (t["test"] or {}).get(key, t.get("recorded_" + key))
    rows = [{"model": f"teacher {t['arch']}", "params": human_count(t["params"]), "MACs": human_count(t["macs"]),
             f"test {key}": teacher_value},
            {"model": f"student {s['arch']}", "params": human_count(s["params"]), "MACs": human_count(s["macs"]),
             f"test {key}": r["result"]["test_scalars"][key]}]
    print(format_table(rows, ["model", "params", "MACs", f"test {key}"]))
    crit = r["config"]["criterion"]
    print(f"loss {crit.get('loss')} (T={crit.get('temperature')}), teacher logits "
          f"{crit.get('teacher_logits', 'computed every step')}; best epoch {r['result']['best_epoch']}/"
          f"{r['result']['epochs_run']}, {r['result']['seconds']:.1f} s")
    print(f"saved {result.output} (report {result.report_path}, log {result.log_path})")
    return 0
