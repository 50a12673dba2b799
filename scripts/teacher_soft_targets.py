"""How much a teacher's softened outputs say beyond the label: per temperature, the mean
probability of the true class and the entropy of the distribution over the other classes
(normalised: 1 = uniform, nothing to learn from), on the training images a distillation run sees.
Uses (and fills) the teacher-logit cache of `compress distill`.

    python scripts/teacher_soft_targets.py runs/bench_distill/teacher_resnet18.safetensors \
        runs/bench_distill_nols/teacher_resnet18_nols.safetensors --data fashion-mnist
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> int:
    from compress.artifact import load_model
    from compress.data import load_data_for_model
    from compress.distill.teacher import logits_cache_file
    from compress.training.criteria import read_cached_logits, write_cached_logits, teacher_logits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teachers", nargs="+")
    ap.add_argument("--data", default=None)
    ap.add_argument("--temperatures", default="1,4")
    args = ap.parse_args()
    for path in args.teachers:
        model, meta = load_model(path)
        bundle = load_data_for_model(meta, args.data)
        cache = logits_cache_file(path, bundle.summary())
        z = read_cached_logits(cache, len(bundle.train))
        if z is None:
            z = teacher_logits(model, bundle.train, 500, torch.device("cpu"))
            write_cached_logits(cache, z, print)
        z = z.double().numpy()
        y = np.array([int(bundle.train[i][1]) for i in range(len(bundle.train))])
        rows = np.arange(len(y))
        parts = [f"{path}: train top-1 {(z.argmax(1) == y).mean():.4f}"]
        for t in map(float, args.temperatures.split(",")):
            p = np.exp((z - z.max(1, keepdims=True)) / t)
            p /= p.sum(1, keepdims=True)
            q = p.copy()
            q[rows, y] = 0
            q /= q.sum(1, keepdims=True)
            ent = -(q * np.log(np.clip(q, 1e-12, None))).sum(1) / np.log(z.shape[1] - 1)
            parts.append(f"T={t:g}: p(true class) {p[rows, y].mean():.3f}, other-class entropy {ent.mean():.3f}")
        print(" | ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
