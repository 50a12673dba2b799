"""The README's Deep Compression table from the reports of scripts/bench_huffman.sh.

    python scripts/huffman_table.py [OUT_DIR] [--bits 4]       (default runs/bench_huffman)

One block per model (mnv2, r18): the fp32 base, the base coded directly (linear 8-bit + Huffman),
the AGP-pruned model, + k-means, + Huffman (.dcz: size and the DECODED model's test top-1 from
`compress eval` of `compress huffman decode`'s output), and the ANS-coded twin's size.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"mnv2": "MobileNetV2", "r18": "ResNet-18"}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def rows(out: Path, name: str, bits: int) -> list[str]:
    prune = _load(out / f"{name}.sparse.safetensors.json")
    if prune is None:
        return []
    kmeans = _load(out / f"{name}.k{bits}.safetensors.json")
    dcz = _load(out / f"{name}.dcz.json")
    ans = _load(out / f"{name}.ans.dcz.json")
    base_dcz = _load(out / f"{name}.base.dcz.json")
    decoded = _load(out / f"{name}.decoded.eval.json")
    fp32 = prune["before"]["file_bytes"]  # the fp32 .safetensors file
    base_top1 = prune["before"]["top1"]
    model = NAMES.get(name, name)
    lines = []

    def line(stage: str, size: float | None, top1: float | None, extra: str = "") -> None:
        cells = [model if not lines else "", stage, _mib(size) if size else "-",
                 f"{fp32 / size:.1f}x" if size else "-", f"{100 * top1:.2f}%" if top1 is not None else "-",
                 f"{100 * (top1 - base_top1):+.2f}" if top1 is not None else "-", extra]
        lines.append("| " + " | ".join(cells) + " |")

    line("fp32 base", prune["before"]["file_bytes"], base_top1)
    if base_dcz:
        line("base, linear 8-bit + Huffman (.dcz)", base_dcz["sizes"]["dcz_bytes"],
             base_dcz["accuracy"].get("decoded", {}).get("test"))
    sparsity = prune["sparsity"]["global"]
    line(f"AGP pruned to {100 * sparsity:.0f}% (global)", None, prune["after"]["top1"],
         f"{prune['after']['nonzero_params'] / 1e6:.2f}M non-zero of {prune['after']['params'] / 1e6:.2f}M")
    if kmeans:
        acc = kmeans["accuracy"]
        line(f"+ k-means {bits}-bit, centroids fine-tuned", kmeans["file_bytes"]["output"],
             acc.get("finetuned", acc.get("kmeans", {})).get("test"), "uint8 indices in .safetensors")
    if dcz:
        top1 = decoded["metrics"]["top1"] if decoded else dcz["accuracy"].get("decoded", {}).get("test")
        t = dcz["timing"]
        line("+ Huffman (.dcz), decoded", dcz["sizes"]["dcz_bytes"], top1,
             f"encode {t['encode_seconds']:.2f} s, decode {t['decode_seconds']:.2f} s")
    if ans:
        line("+ ANS instead of Huffman (.dcz)", ans["sizes"]["dcz_bytes"], None, "same decoded weights")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default="runs/bench_huffman")
    p.add_argument("--bits", type=int, default=4)
    args = p.parse_args()
    out = Path(args.out)
    print("| model | stage | file | vs fp32 | test top-1 | change (pt) | |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name in NAMES:
        for row in rows(out, name, args.bits):
            print(row)


if __name__ == "__main__":
    main()
