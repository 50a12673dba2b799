"""Export a model artifact to ONNX, verified against PyTorch.

The ONNX file has dynamic batch, height and width axes (--static-shape fixes H and W),
BatchNorm folded into the convolutions, and the model facts (labels, mean/std, input size, task,
history) in its metadata_props. ONNX Runtime's outputs are compared with PyTorch's on real
images (the test split of --data, or of the data set the model was trained on when its history
names one, else random inputs); the export fails above --tol (max abs logit difference).
A JSON report is written next to the output.

    compress export base.safetensors -o base.onnx
    compress export pruned.safetensors -o pruned.onnx --opset 17 --data digits
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

VERIFY_IMAGES = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model artifact (.safetensors)")
    p.add_argument("-o", "--output", help="ONNX file to write (default: the model's name with .onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version, 13-20 (default 17)")
    p.add_argument("--input-size", type=int, help="square input side to trace and verify at (default: the "
                                                  "model's training size)")
    p.add_argument("--static-shape", action="store_true",
                   help="fix height and width in the graph (default: dynamic, any input size works)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the ONNX Runtime vs PyTorch comparison")
    p.add_argument("--data", help="data set whose test images verify the export (default: the one in the "
                                  "model's history, else random inputs)")
    p.add_argument("--tol", type=float, default=1e-4, help="largest allowed |ORT - PyTorch| logit difference "
                                                           "(default 1e-4)")
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=None,
                   help="run onnxslim on the graph (default: off; see compress/export.py)")


def _data_from_history(meta) -> tuple[str | None, int]:
    """(data spec, split seed) of the latest stage that names its data set (train writes
    ``params.data = {"spec": ..., "data_seed": ...}``)."""
    for entry in reversed(meta.history):
        data = (entry.get("params") or {}).get("data")
        if isinstance(data, dict) and isinstance(data.get("spec"), str) and data["spec"]:
            return data["spec"], int(data.get("data_seed") or 0)
        if isinstance(data, str) and data:
            return data, 0
    return None, 0


def _verification_images(spec: str, meta, side: int, explicit: bool, seed: int = 0):
    """(images, description) from the test split of ``spec``; (None, note) when it cannot be
    loaded and was not asked for explicitly."""
    import torch

    from ..data import load_data

    try:
        bundle = load_data(spec, image_size=side, seed=seed, mean=meta.mean, std=meta.std)
    except UserError:
        if explicit:
            raise
        return None, f"data set {spec!r} from the model's history is not available"
    split = bundle.test if len(bundle.test) else bundle.val
    n = min(VERIFY_IMAGES, len(split))
    if n == 0:
        raise UserError(f"data set {spec!r} has no test images to verify with")
    images = torch.stack([split[i][0] for i in range(n)])
    if images.shape[1] != meta.input_size[0]:
        raise UserError(f"data set {spec!r} has {images.shape[1]} channels, the model expects {meta.input_size[0]}")
    return images, f"{spec} test split"


def run(args: argparse.Namespace) -> int:
    from ..artifact import load_model
    from ..export import DEFAULT_SIMPLIFY, export_onnx
    from ..io import check_output, sidecar, write_json
    from ..report import format_table, human_bytes

    src = Path(args.model)
    out = Path(args.output) if args.output else src.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"output {out} should end in .onnx")
    check_output(out, src)
    if args.tol <= 0:
        raise UserError(f"--tol must be > 0, got {args.tol}")
    model, meta = load_model(src)
    side = args.input_size or int(meta.input_size[-1])
    images, source, notes = None, "", []
    if args.verify:
        spec, seed = (args.data, 0) if args.data else _data_from_history(meta)
        if spec:
            images, source = _verification_images(spec, meta, side, explicit=bool(args.data), seed=seed)
            if images is None:
                notes.append(source + "; verified on random inputs")
                source = ""
    simplify = DEFAULT_SIMPLIFY if args.simplify is None else args.simplify
    report = export_onnx(model, meta, out, opset=args.opset, verify=args.verify, input_size=args.input_size,
                         verify_images=images, verify_source=source, tol=args.tol, simplify=simplify,
                         dynamic_spatial=not args.static_shape)
    report.notes[:0] = notes
    diff = "-" if report.max_abs_diff is None else f"{report.max_abs_diff:.2e}"
    print(format_table([{"onnx": str(report.path), "size": human_bytes(report.file_bytes), "opset": report.opset,
                         "nodes": report.nodes, "input": "Nx{}x{}x{}".format(*report.input_size) if args.static_shape
                         else f"Nx{report.input_size[0]}xHxW",
                         "max abs diff": diff, "verified on": report.verified_on}]))
    for note in report.notes:
        print(f"note: {note}")
    payload = report.to_dict()
    payload.update({"source": str(src), "arch": meta.arch, "command": "export", "simplify": simplify})
    write_json(sidecar(out), payload)
    return 0
