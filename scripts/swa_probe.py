"""Stochastic weight averaging (Izmailov et al. 2018) as a continuation of a trained model: does
averaging the weights of a few more epochs at a constant learning rate add accuracy?

    python scripts/swa_probe.py runs/fashion94/mnv2_40ep.safetensors --lr 0.01 --epochs 8

Each epoch trains the model on its own data set (read from the artifact's history) with the
training run's augmentation (flips, 2px shifts, 8px cutout, weight decay 5e-4 by default), folds
the weights into a running average, re-estimates the average's BatchNorm statistics on 8,192
training images and prints one JSON line: the current weights' and the average's validation and
test top-1. Pick an epoch by validation, not by test. Nothing is written but standard output; the
optimizer state restarts every epoch (the learning rate is constant, so only the momentum buffer
is lost). An experiment, not a stage (`compress train --init MODEL --swa-epochs N` is the stage's
way, with the momentum kept): README (Fashion-MNIST) has what it found.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from compress.artifact import load_model
from compress.data import load_data_for_model
from compress.evaluate import measure_splits
from compress.training.batchnorm import recalibrate_batchnorm
from compress.training.config import TrainConfig
from compress.training.loop import fit
from compress.training.swa import WeightAverage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a trained .safetensors artifact")
    p.add_argument("--lr", type=float, default=0.01, help="the constant learning rate of the averaged epochs")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--cutout", type=int, default=8)
    p.add_argument("--no-hflip", dest="hflip", action="store_false")
    p.add_argument("--bn-images", type=int, default=8192, help="training images the average's BN statistics use")
    args = p.parse_args()
    torch.set_num_threads(2)
    model, meta = load_model(args.model)
    bundle = load_data_for_model(meta, None, seed=0)
    print(json.dumps({"epoch": 0, "start": measure_splits(model, bundle, meta.task)}), flush=True)
    average = WeightAverage()
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        cfg = TrainConfig(epochs=1, batch_size=64, lr=args.lr, schedule="constant", warmup_epochs=0,
                          hflip=args.hflip, crop_padding=2, cutout=args.cutout, weight_decay=5e-4,
                          label_smoothing=0.1, seed=100 + epoch)
        fit(model, bundle, cfg)
        average.add(model)
        averaged = copy.deepcopy(model)
        average.swap_in(averaged)
        recalibrate_batchnorm(averaged, bundle.train, args.bn_images)
        averaged.eval()
        print(json.dumps({"epoch": epoch, "iterate": measure_splits(model, bundle, meta.task),
                          "swa": measure_splits(averaged, bundle, meta.task),
                          "seconds": round(time.time() - started)}), flush=True)
        model.train()


if __name__ == "__main__":
    main()
