"""A/B of training-preset variants on a seeded subset of a data set (the comparison behind the
fashion-mnist preset in compress/training/presets.py).

    .venv/bin/python scripts/preset_ab.py [--data fashion-mnist] [--train-limit 12800] [--epochs 3] \\
        [--model mobilenet_v2] VARIANT ...

VARIANT is name=JSON of options over the data set's preset, e.g. 'noaug={"hflip": false,
"crop_padding": 0}' or 'preset={}'. Prints the validation top-1 after each epoch and the time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--train-limit", type=int, default=12800)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    from compress.data import load_data
    from compress.training.api import TrainStageConfig, build_model
    from compress.training.loop import fit
    from compress.training.optim import seed_everything

    bundle = None
    for spec in a.variants:
        name, _, text = spec.partition("=")
        cfg = TrainStageConfig.with_preset({"data": a.data, "model": a.model, "epochs": a.epochs,
                                            **json.loads(text or "{}")})
        if bundle is None:
            bundle = load_data(a.data, image_size=cfg.image_size, train_limit=a.train_limit)
        seed_everything(cfg.seed)
        model = build_model(cfg.model, bundle.num_classes, cfg.arch_kwargs())
        t = time.time()
        result = fit(model, bundle, cfg.loop_config())
        print(name, [round(h["val_top1"], 4) for h in result.history], f"{time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
