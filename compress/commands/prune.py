"""Prune a model artifact: structured channel pruning, unstructured magnitude pruning, or a
per-layer sensitivity analysis; optionally fine-tune to recover accuracy. Fine-tuning distils from
the unpruned model by default (--kd-loss kd|dkd|dist and the distillation options; --no-distill
for the labels alone); with no augmentation the teacher's logits are computed once and kept in
$COMPRESS_CACHE_DIR (default ~/.cache/compress) for later runs on the same model and data.

Structured (smaller and faster dense layers; torch-pruning keeps residual adds, depthwise convs
and SE blocks consistent; the classifier keeps its outputs):

    compress prune base.safetensors --ratio 0.5 --method l2 --finetune 5 -o p.safetensors
    compress prune base.safetensors --target-macs 20M -o p.safetensors        # search the ratio
    compress prune base.safetensors --target-latency-ms 2 --bench-input-size 224 -o p.safetensors
    compress prune base.safetensors --ratio 0.6 --steps 3 --finetune 3 -o p.safetensors

Depth pruning (whole residual blocks out, x + f(x) becomes x; fewer operators, which width
pruning cannot give; combines with --ratio, blocks first):

    compress prune base.safetensors --blocks 3 --ratio 0.3 --finetune 3 -o p.safetensors
    compress prune base.safetensors --drop-block features.3 --drop-block features.5 -o p.safetensors

Unstructured (zeros for the Huffman stage; gradual AGP schedule during --finetune, masks held):

    compress prune resnet.safetensors --sparsity 0.9 --global --finetune 6 -o s.safetensors

Sensitivity analysis (each layer group alone at --ratios; table, PNG and a ratio file for
--ratio-file, allowing each group the largest ratio that costs at most --max-drop points):

    compress prune base.safetensors --analyze --ratios 0.1,0.3,0.5,0.7 -o sens.json
    compress prune base.safetensors --ratio-file sens.json --finetune 5 -o p.safetensors

Accuracy needs a data set (--data, default: the one the model was trained on). Latency is ONNX
Runtime on this CPU (batch 1, 2 threads) at --bench-input-size (default: the model's input size).
A JSON report is written next to the output (OUTPUT.json).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..prune.config import PruneConfig

    p.add_argument("model", help="model artifact (.safetensors)")
    p.add_argument("-o", "--output", default=None,
                   help="pruned artifact (.safetensors); with --analyze the ratio file (default MODEL.ratios.json)")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    PruneConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..prune.api import analyze_artifact, prune_artifact
    from ..prune.config import PruneConfig

    cfg = PruneConfig.from_args(args)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.mode() == "analyze":
        from ..report.prune import format_sensitivity

        sens = analyze_artifact(args.model, args.output, cfg, log=log)
        print(format_sensitivity(sens))
        print(f"wrote {sens.output} (ratio file for --ratio-file), {sens.report_path}, {sens.plot_path}")
        return 0
    if args.output is None:
        raise UserError("give the output path with -o")
    from ..report.prune import format_prune

    result = prune_artifact(args.model, args.output, cfg, log=log, progress=not args.quiet)
    print(format_prune(result))
    print(f"wrote {result.output} and {result.report_path}")
    return 0
