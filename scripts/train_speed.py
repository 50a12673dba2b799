"""Training-step throughput on this CPU: stride layout x bfloat16 autocast x memory layout.

    .venv/bin/python scripts/train_speed.py [ARCH] [--modes stem,on] [--steps 6] [--size 32] [--batch 128]

Random images, SGD steps of batch 128 with 2 PyTorch threads after 2 warm-up steps; prints
images/s for every combination. The figures behind channels-last being the CPU default and
bfloat16 staying opt-in (README, "Fashion-MNIST").
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", nargs="?", default="mobilenet_v2")
    ap.add_argument("--modes", default="stem,on", help="small_input layouts: off, stem, on")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from models import create_model

    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))
    layouts = {"on": True, "off": False, "stem": "stem"}
    for mode, bf16, cl in itertools.product(a.modes.split(","), (False, True), (False, True)):
        torch.manual_seed(0)
        model = create_model(a.arch, num_classes=10, small_input=layouts[mode]).train()
        xx = x
        if cl:
            model = model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(xx), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(2):
            step()
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        rate = a.batch * a.steps / (time.perf_counter() - t)
        print(f"{a.arch} small_input={mode:5s} bf16={bf16!s:5s} channels_last={cl!s:5s}: {rate:7.1f} img/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
