"""NNCF's post-training INT8 quantization of an ONNX model: the peer our own INT8 is compared with
("NNCF's PTQ of the same ONNX model in ORT").

    .venv/bin/python scripts/nncf_ptq.py base.onnx -o base.nncf.onnx [--calib fashion-mnist] \\
        [--calib-samples 256] [--preset performance|mixed]
    compress bench base.onnx base.int8.onnx base.nncf.onnx --data fashion-mnist

Calibrates on exactly the images `compress quantize --int8` uses (the same seeded sample of the
training split, preprocessed by the serving transform: compress.quantize.calib), one image per
NNCF sample, all of them (``subset_size`` = --calib-samples). The output is a QDQ ONNX model with
the input's metadata (labels, preprocessing, history plus an "nncf-ptq" record), so
`compress bench --data` and the service can use it. Needs the 'peers' extra
(pip install -e '.[peers]'). Exit 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESETS = ("performance", "mixed")


def quantize_with_nncf(model_path: Path, out: Path, *, calib: str | None, calib_samples: int, preset: str) -> dict:
    """Quantize ``model_path`` with ``nncf.quantize`` and write ``out`` atomically; return what was done."""
    from compress.errors import UserError
    from compress.io import atomic_path, check_outputs
    from compress.onnx_graph import QUANT_OPS
    from compress.onnx_meta import load_onnx, read_onnx_meta, set_onnx_meta
    from compress.quantize.calib import quantization_data

    if calib_samples < 1:
        raise UserError(f"--calib-samples must be >= 1, got {calib_samples}")
    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    check_outputs([out], [model_path])
    meta = read_onnx_meta(model_path, warn=False)
    if meta is not None and not calib and not meta.training_data().get("spec"):
        raise UserError(f"{model_path} records no training data set; give --calib DATA (e.g. digits)")
    data = quantization_data(meta, calib, calib_samples=calib_samples, eval_samples=1, test=False)
    os.environ.setdefault("NNCF_CI", "1")  # NNCF sends usage telemetry unless told it runs in CI
    try:
        import nncf
        import onnx
    except ImportError:
        raise UserError("NNCF is not installed; install it with: pip install -e '.[peers]'") from None

    proto = load_onnx(model_path)
    init_names = {i.name for i in proto.graph.initializer}
    input_name = next(i.name for i in proto.graph.input if i.name not in init_names)
    dataset = nncf.Dataset(list(data.calib), lambda image: {input_name: image[None]})
    start = time.perf_counter()
    quantized = nncf.quantize(proto, dataset, preset=nncf.QuantizationPreset(preset), subset_size=len(data.calib))
    seconds = time.perf_counter() - start
    params = {"tool": "nncf", "nncf_version": nncf.__version__, "preset": preset, "calib_samples": len(data.calib),
              "calib": data.source.get("calib"), "data": data.source.get("data"), "source": str(model_path)}
    meta.add_history("nncf-ptq", params, {"seconds": round(seconds, 2)})
    set_onnx_meta(quantized, meta)
    with atomic_path(out) as tmp:
        onnx.save(quantized, str(tmp))
    quant_nodes = sum(n.op_type in QUANT_OPS for n in quantized.graph.node)
    return {**params, "output": str(out), "seconds": seconds, "quant_nodes": quant_nodes,
            "bytes_in": model_path.stat().st_size, "bytes_out": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="ONNX model with compress metadata (from compress export)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="quantized ONNX model to write")
    ap.add_argument("--calib", help="data set to calibrate on (default: the one the model was trained on)")
    ap.add_argument("--calib-samples", type=int, default=256, help="calibration images (default 256)")
    ap.add_argument("--preset", choices=PRESETS, default="performance",
                    help="NNCF preset: performance = symmetric activations, mixed = asymmetric "
                         "(default performance)")
    a = ap.parse_args(argv)
    from compress.errors import UserError

    try:
        done = quantize_with_nncf(a.model, a.output, calib=a.calib, calib_samples=a.calib_samples, preset=a.preset)
    except UserError as e:
        print(f"nncf_ptq: error: {e}", file=sys.stderr)
        return 2
    print(f"NNCF {done['nncf_version']} PTQ (preset {done['preset']}) of {done['source']}: "
          f"{done['quant_nodes']} Quantize/DequantizeLinear nodes, calibrated on {done['calib']} "
          f"of {done['data']} in {done['seconds']:.1f} s")
    print(f"wrote {done['output']} ({done['bytes_out'] / 1024:.1f} KiB, was {done['bytes_in'] / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
