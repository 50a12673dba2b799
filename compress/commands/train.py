"""Train a model from the zoo on a data set; save the best-validation weights as a model artifact.

Writes OUT (.safetensors, with labels, task, input size, mean/std and a "train" history entry),
OUT.json (resolved configuration, per-epoch history, validation and test metrics) and a text log
OUT.log. Prints validation and test metrics as a short table.

Data: digits (default, embedded), digits-multilabel, fashion-mnist, mnist, kmnist, idx:PATH,
imagefolder:PATH, csv:PATH, cifar10, cifar100. Images of 64 px or less use the models' small-input
layout (--small-input on: total stride 8) unless --small-input stem (stride 16) or off is given.
fashion-mnist, mnist and kmnist come with a preset (epochs, schedule, stride layout, ...) printed at
the start: any flag given overrides it, --preset none turns it off.
Any spec takes :imbalance=R (e.g. fashion-mnist:imbalance=0.05): only a fraction R of the training
and validation images of the upper half of the classes is kept, the test split stays whole;
--balance oversample|undersample|class-weights is the loop's answer to such data.

    compress train --model mobilenet_v2 --data digits -o base.safetensors
    compress train --model resnet18 --data imagefolder:./photos --image-size 64 --epochs 40 -o r18.safetensors
    compress train --model mobilenet_v2 --data digits-multilabel -o ml.safetensors
    compress train --model mobilenet_v2 --data fashion-mnist -o fmnist.safetensors   (its preset; `make data` first)
    compress train --data digits:imbalance=0.1 --balance oversample -o bal.safetensors
    compress train --init fmnist.safetensors --data fashion-mnist --epochs 6 --swa-epochs 6 --swa-lr 0.003 \
        --hflip --cutout 8 -o fmnist-swa.safetensors   (continue a trained model: 6 weight-averaged epochs)
    torchrun --nproc_per_node 2 -m compress train --data digits -o ddp.safetensors   (DistributedDataParallel)
"""
from __future__ import annotations

import argparse


def add_output_arguments(p: argparse.ArgumentParser, *, what: str = "model artifact", tensorboard: bool = True) -> None:
    """-o, --json, --log (and --tensorboard), --no-progress: the outputs of a stage that trains."""
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", required=True, help=f"{what} to write (.safetensors)")
    o.add_argument("--json", dest="json_path", default=None, help="report path (default: OUTPUT.json)")
    o.add_argument("--log", dest="log_path", default=None, help="text log path (default: OUTPUT.log)")
    if tensorboard:
        o.add_argument("--tensorboard", default=None, metavar="DIR", help="write TensorBoard event files to DIR")
    o.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines on stderr")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training.api import TrainStageConfig

    TrainStageConfig.add_arguments(p)
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..report.train import format_train
    from ..training.api import TrainStageConfig, train

    cfg = TrainStageConfig.from_args(args)
    result = train(args.output, cfg, report_path=args.json_path, log_path=args.log_path,
                   tensorboard=args.tensorboard, progress=not args.no_progress)
    if result is None:  # a torchrun worker other than rank 0
        return 0
    print(format_train(result.report, cfg.image_size))
    print(f"saved {result.output} (report {result.report_path}, log {result.log_path})")
    return 0
