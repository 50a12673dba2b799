"""The README's distillation table from a scripts/bench_distill.sh folder: per method (plain, kd,
dkd, dist) the test top-1 of every seed, mean ± spread (half the max-min range) and the sample
standard deviation, the gain over plain training, and the wall time; then the teacher.

    python scripts/distill_table.py runs/bench_distill
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METHODS = {"plain": "plain training (labels only)", "kd": "Hinton KD", "dkd": "DKD", "dist": "DIST"}


def main(folder: str) -> int:
    root = Path(folder)
    rows, base_mean = [], None
    for key, label in METHODS.items():
        reports = sorted(root.glob(f"{key}_s*.safetensors.json"))
        if not reports:
            continue
        tops, secs = [], []
        for path in reports:
            r = json.loads(path.read_text())
            tops.append(100 * r["result"]["test_scalars"]["top1"])
            secs.append(r["result"]["seconds"])
        mean = statistics.mean(tops)
        spread = (max(tops) - min(tops)) / 2
        sd = statistics.stdev(tops) if len(tops) > 1 else 0.0
        base_mean = mean if key == "plain" else base_mean
        gain = "" if key == "plain" or base_mean is None else f"{mean - base_mean:+.2f}"
        rows.append((label, ", ".join(f"{t:.2f}" for t in tops), f"{mean:.2f} ± {spread:.2f}", f"{sd:.2f}", gain,
                     f"{statistics.mean(secs) / 60:.1f} min"))
    print("| student training | test top-1 per seed (%) | mean ± half-range | std | vs plain (pt) | time/run |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    teacher = next(root.glob("kd_s*.safetensors.json"), None)
    if teacher:
        t = json.loads(teacher.read_text())["teacher"]
        top1 = (t.get("test") or {}).get("top1")
        print(f"\nteacher: {t['arch']}, {t['params'] / 1e6:.2f}M params, {t['macs'] / 1e6:.1f}M MACs, test top-1 "
              f"{100 * top1:.2f}%" if top1 is not None else f"\nteacher: {t['arch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench_distill"))
