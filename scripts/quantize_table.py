"""The README's quantization tables from the reports of scripts/bench_quantize.sh:

    .venv/bin/python scripts/quantize_table.py runs/bench_quantize

One table per model (base, pruned): every variant of the training-size bench (PREFIX-28.json: size,
test top-1 on the 10,000 images, agreement with fp32, batch 1 and 8 latency) next to the same file's
ImageNet-stem twin at 224x224 (PREFIX-224.json, latency only); then k-means, one row per BatchNorm
handling the script ran (PREFIX.k4.safetensors.json: folded, BN live while fine-tuning, --fold-bn;
PREFIX.k4fz: folded and frozen, --freeze-bn; PREFIX.k4raw: raw weights, --no-fold-bn).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"{p}.onnx": "fp32", "{p}.int8.onnx": "our INT8, searched", "{p}.int8qdq.onnx": "our INT8, QDQ form",
         "{p}.nncf.onnx": "NNCF PTQ"}


def label(model: str, prefix: str) -> tuple[str, str]:
    base, _, peer = model.partition(" [")
    base = base.replace(".twin", "")
    name = next((v for k, v in NAMES.items() if k.format(p=prefix) == base), base)
    runtime = {"": "ONNX Runtime", "openvino]": "OpenVINO", "openvino-f32]": "OpenVINO, f32 hint"}[peer]
    return name, runtime


def cells(report: dict) -> dict[tuple[str, int], dict]:
    return {(r["model"].replace(".twin", ""), r["batch"]): r for r in report["results"]}


def table(folder: Path, prefix: str) -> str:
    small = json.loads((folder / f"{prefix}-28.json").read_text())
    big = json.loads((folder / f"{prefix}-224.json").read_text())
    at28, at224 = cells(small), cells(big)
    loads = [small["machine"].get("load_average", [None])[0], big["machine"].get("load_average_end", [None])[0]]
    rows = ["| variant | runtime | computes in | size | test top-1 | agreement | 28px b1 ms | b8 ms | "
            "224px b1 ms | b8 ms |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in small["variants"]:
        name, runtime = label(v["model"], prefix)

        def lat(table, b):
            r = table.get((v["model"], b))
            return f"{r['p50_ms']:.2f} ({r['speedup']:.2f}x)" if r else "cannot load"

        rows.append(f"| {name} | {runtime} | {v['precision']} | {v['file_bytes'] / 2**20:.2f} MiB | "
                    f"{100 * v['accuracy']:.2f}% | {100 * v['agreement']:.2f}% | {lat(at28, 1)} | {lat(at28, 8)} | "
                    f"{lat(at224, 1)} | {lat(at224, 8)} |")
    rows.append(f"\n(load average {loads[0]} at the start of the 28px run, {loads[1]} at the end of the 224px run)")
    return "\n".join(rows)


KMEANS = {"k4": "folded, BN live (`--fold-bn`)", "k4fz": "folded, BN frozen (`--freeze-bn`)",
          "k4raw": "raw weights (`--no-fold-bn`; the default for a model without pruned weights)"}


def kmeans(folder: Path, prefix: str, suffix: str) -> str | None:
    path = folder / f"{prefix}.{suffix}.safetensors.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    acc, st = r["accuracy"], r["storage"]
    return (f"| {prefix} | {KMEANS[suffix]} | {100 * acc['before']['test']:.2f}% | {100 * acc['kmeans']['test']:.2f}% | "
            f"{100 * acc['finetuned']['test']:.2f}% | {100 * (acc['finetuned']['test'] - acc['before']['test']):+.2f} pt | "
            f"{st['shared_layers_ratio']:.2f}x | {st['model_ratio']:.2f}x | {r['seconds']:.0f} s |")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench_quantize")
    rows = []
    for prefix in ("base", "pruned"):
        if (folder / f"{prefix}-28.json").exists():
            print(f"### {prefix}\n\n{table(folder, prefix)}\n")
        rows += [kmeans(folder, prefix, suffix) for suffix in KMEANS]
    if any(rows):
        print("| k-means 4 bits | BatchNorm | test top-1 before | shared | shared + fine-tuned | change | shared layers "
              "vs fp32 | whole model | wall time |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(r for r in rows if r))


if __name__ == "__main__":
    main()
