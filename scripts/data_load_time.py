"""How long an IDX data set takes to load: all 70,000 images read, split, resized and normalised.

    .venv/bin/python scripts/data_load_time.py [NAME] [--sizes 28,32] [--data-root DIR]

For each image size, a fresh process-level cache: the first load reads and decompresses the four
files; the second load of the same size shows what the in-process cache saves (a pipeline's
stages in one process load the data set more than once). The figures behind README's
"Fashion-MNIST" section (issue 10: loading must take seconds, not minutes).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.data import load_data  # noqa: E402
from compress.data import idx as idx_mod  # noqa: E402
from compress.errors import UserError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", default="fashion-mnist")
    ap.add_argument("--sizes", default="28,32", help="image sizes, comma-separated (28: no resizing)")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        print(f"--sizes: integers separated by commas, got {args.sizes!r}", file=sys.stderr)
        return 2
    for size in sizes:
        idx_mod._read_cached.cache_clear()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            try:
                b = load_data(args.name, image_size=size, data_root=args.data_root)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            times.append(time.perf_counter() - start)
        n = len(b.train) + len(b.val) + len(b.test)
        print(f"{args.name} at {size}x{size}: {n:,} images ({len(b.train):,} train, {len(b.val):,} val, "
              f"{len(b.test):,} test) in {times[0]:.2f} s; again in the same process {times[1]:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
