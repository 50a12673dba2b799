"""List the registered architectures with their parameter count and MACs per image.

MACs count convolutions and fully connected layers (the papers' convention), for one image at
--input-size. Example:

    compress models --input-size 224
    compress models 'mobilenet*' --input-size 32 --small-input --num-classes 10
"""
from __future__ import annotations

import argparse

from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter on names (default: all)")
    p.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--small-input", action="store_true", help="use the reduced-stride stem for small images")
    p.add_argument("--json", dest="json_path", help="also write the table as JSON to this file")


def run(args: argparse.Namespace) -> int:
    from models import create_model, get_model_entry, list_models, model_cost

    from ..io import write_json
    from ..report import format_table, human_count

    if args.input_size < 8 or args.input_size > 2048:
        raise UserError(f"--input-size must be between 8 and 2048, got {args.input_size}")
    if args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}; known: {', '.join(list_models())}")
    rows = []
    kwargs = {"small_input": True} if args.small_input else {}
    for name in names:
        model = create_model(name, num_classes=args.num_classes, **kwargs)
        cost = model_cost(model, args.input_size)
        rows.append({"model": name, "family": get_model_entry(name).family, "params": cost.params,
                     "params_h": human_count(cost.params), "macs": cost.macs,
                     "macs_h": human_count(cost.macs), "input": f"{args.input_size}x{args.input_size}"})
    print(format_table([{"model": r["model"], "family": r["family"], "params": r["params_h"],
                         "MACs": r["macs_h"], "input": r["input"]} for r in rows]))
    if args.json_path:
        write_json(args.json_path, rows)
    return 0
