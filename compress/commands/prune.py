"""Prune a model artifact: structured channel pruning, unstructured magnitude pruning, or a
per-layer sensitivity analysis; optionally fine-tune (or distill) to recover accuracy.

Structured (smaller and faster dense layers; torch-pruning keeps residual adds, depthwise convs
and SE blocks consistent; the classifier keeps its outputs):

    compress prune base.safetensors --ratio 0.5 --method l2 --finetune 5 -o p.safetensors
    compress prune base.safetensors --target-macs 20M -o p.safetensors        # search the ratio
    compress prune base.safetensors --target-latency-ms 2 --bench-input-size 224 -o p.safetensors
    compress prune base.safetensors --ratio 0.6 --steps 3 --finetune 3 -o p.safetensors

Unstructured (zeros for the Huffman stage; gradual AGP schedule during --finetune, masks held):

    compress prune resnet.safetensors --sparsity 0.9 --global --finetune 6 -o s.safetensors

Sensitivity analysis (each layer group alone at --ratios; table, PNG and a ratio file for
--ratio-file, allowing each group the largest ratio that costs at most --max-drop points):

    compress prune base.safetensors --analyze --ratios 0.1,0.3,0.5,0.7 -o sens.json
    compress prune base.safetensors --ratio-file sens.json --finetune 5 -o p.safetensors

Accuracy needs a data set (--data, default: the one the model was trained on). Latency is ONNX
Runtime on this CPU (batch 1, 2 threads) at --bench-input-size (default: the model's input size).
A JSON report is written next to the output.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import UserError

METHOD_NAMES = ("l1", "l2", "bn", "taylor", "lamp")  # mirrors compress.prune.METHODS (no torch import here)
_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_count(text: str) -> float:
    """'20M' → 2e7, '1.5G' → 1.5e9, '300000' → 3e5."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 20M, 1.5G, 300000)")
    return float(m.group(1)) * _SUFFIXES[m.group(2).lower()]


def parse_ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ratios: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one ratio")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model artifact (.safetensors)")
    p.add_argument("-o", "--output", default=None,
                   help="pruned artifact (.safetensors); with --analyze the ratio file (default MODEL.ratios.json)")
    s = p.add_argument_group("structured (channel) pruning")
    s.add_argument("--ratio", type=float, default=None, help="channel ratio to remove, 0 < r < 1 (e.g. 0.5)")
    s.add_argument("--method", default="l2", help=f"importance criterion: {', '.join(METHOD_NAMES)} (default l2)")
    s.add_argument("--global", dest="global_pruning", action="store_true",
                   help="rank channels (or weights, with --sparsity) across all layers instead of per layer")
    s.add_argument("--steps", type=int, default=1, help="iterative pruning steps, fine-tuning between (default 1)")
    s.add_argument("--step-epochs", type=int, default=1,
                   help="fine-tuning epochs between iterative steps when --finetune is given (default 1)")
    s.add_argument("--round-to", type=int, default=8, help="keep channel counts multiples of this (default 8; 0 off)")
    s.add_argument("--ignore", nargs="+", action="extend", default=[], metavar="LAYER",
                   help="layer names never pruned (the classifier always is protected)")
    s.add_argument("--ratio-file", default=None, help="JSON {layer: ratio} (from --analyze); other layers use --ratio")
    s.add_argument("--target-macs", type=parse_count, default=None, help="search the ratio to reach these MACs (e.g. 20M)")
    s.add_argument("--target-latency-ms", type=float, default=None,
                   help="search the ratio to reach this ONNX Runtime latency (batch 1, 2 threads, bench input size)")
    u = p.add_argument_group("unstructured (weight) pruning")
    u.add_argument("--sparsity", type=float, default=None, help="fraction of conv/linear weights to zero, 0 < s < 1")
    a = p.add_argument_group("sensitivity analysis")
    a.add_argument("--analyze", action="store_true", help="prune each layer group alone and report the accuracy drop")
    a.add_argument("--ratios", type=parse_ratios, default=[0.1, 0.3, 0.5, 0.7], help="(default 0.1,0.3,0.5,0.7)")
    a.add_argument("--analyze-samples", type=int, default=0,
                   help="evaluate each trial on the first N validation samples (default 0 = all)")
    a.add_argument("--max-drop", type=float, default=1.0,
                   help="accuracy drop (points) allowed per group when writing the ratio file (default 1.0)")
    f = p.add_argument_group("fine-tuning and data")
    f.add_argument("--finetune", type=int, default=0, metavar="EPOCHS", help="fine-tuning epochs after pruning")
    f.add_argument("--distill", action="store_true", help="fine-tune with KD from the unpruned model")
    f.add_argument("--kd-temperature", type=float, default=4.0, help="(default %(default)s)")
    f.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the soft-target term (default %(default)s)")
    f.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default %(default)s)")
    f.add_argument("--batch-size", type=int, default=64, help="(default %(default)s)")
    f.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap optimizer steps per epoch (0 = all)")
    f.add_argument("--data", default=None, help="data spec (default: the one the model was trained on)")
    f.add_argument("--data-seed", type=int, default=None, help="split seed (default: the training run's, else 0)")
    f.add_argument("--data-root", default=None, help="folder for cifar10/cifar100")
    f.add_argument("--train-limit", type=int, default=None, help="use this many training samples (quick runs)")
    f.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    b = p.add_argument_group("report")
    b.add_argument("--bench-input-size", type=int, default=None, help="latency input side (default: model's input size)")
    b.add_argument("--bench-imagenet-stem", action="store_true",
                   help="time (and count MACs of) the same channel widths with the ImageNet stem "
                        "(small_input=False): the architecture as deployed on e.g. 224x224 photos")
    b.add_argument("--no-bench", action="store_true", help="skip the ONNX Runtime latency measurement")
    b.add_argument("--bench-runs", type=int, default=50, help="timed runs per model (default %(default)s)")
    b.add_argument("--quiet", action="store_true", help="no progress output on stderr")


# ----------------------------------------------------------------------------- validation

def _validate_options(args: argparse.Namespace) -> str:
    """Check the options that need no file; return the mode: structured | unstructured | analyze."""
    structured = [n for n, v in (("--ratio", args.ratio), ("--ratio-file", args.ratio_file),
                                 ("--target-macs", args.target_macs),
                                 ("--target-latency-ms", args.target_latency_ms)) if v is not None]
    if args.analyze and args.sparsity is not None:
        raise UserError("--analyze and --sparsity are separate modes; give one")
    if args.sparsity is not None and structured:
        raise UserError(f"--sparsity (unstructured) cannot be combined with {', '.join(structured)}")
    targets = [n for n in structured if n.startswith("--target")]
    if len(targets) > 1:
        raise UserError("give one of --target-macs and --target-latency-ms")
    if targets and (args.ratio is not None or args.ratio_file):
        raise UserError(f"{targets[0]} searches the ratio itself; drop --ratio/--ratio-file")
    if args.ratio is not None and not 0 < args.ratio < 1:
        raise UserError(f"--ratio must satisfy 0 < ratio < 1, got {args.ratio}")
    if args.sparsity is not None and not 0 < args.sparsity < 1:
        raise UserError(f"--sparsity must satisfy 0 < sparsity < 1, got {args.sparsity}")
    if args.method.lower() not in METHOD_NAMES:
        raise UserError(f"unknown --method {args.method!r}; choose one of {', '.join(METHOD_NAMES)}")
    if args.target_macs is not None and args.target_macs <= 0:
        raise UserError(f"--target-macs must be > 0, got {args.target_macs:g}")
    if args.target_latency_ms is not None and not args.target_latency_ms > 0:
        raise UserError(f"--target-latency-ms must be > 0, got {args.target_latency_ms}")
    for name in ("steps", "step_epochs", "batch_size", "bench_runs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("finetune", "round_to", "max_steps_per_epoch", "analyze_samples"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not args.lr > 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if args.bench_input_size is not None and not 8 <= args.bench_input_size <= 1024:
        raise UserError(f"--bench-input-size must be between 8 and 1024, got {args.bench_input_size}")
    if args.distill and not args.finetune:
        raise UserError("--distill needs --finetune EPOCHS")
    if not args.kd_temperature > 0:
        raise UserError(f"--kd-temperature must be > 0, got {args.kd_temperature}")
    if not 0 <= args.kd_alpha <= 1:
        raise UserError(f"--kd-alpha must be in [0, 1], got {args.kd_alpha}")
    if args.analyze:
        for r in args.ratios:
            if not 0 < r < 1:
                raise UserError(f"--ratios must all satisfy 0 < r < 1, got {r}")
        return "analyze"
    if args.sparsity is not None:
        if args.steps != 1:
            raise UserError("--steps is for structured pruning; --sparsity uses the AGP schedule over --finetune")
        return "unstructured"
    if not structured:
        raise UserError("nothing to do: give --ratio, --ratio-file, --target-macs, --target-latency-ms, "
                        "--sparsity or --analyze")
    return "structured"


def read_ratio_file(path: str) -> dict[str, float]:
    """{layer name: ratio} from a JSON file (the ``ratios`` object of an analysis report also works)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"--ratio-file {p}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--ratio-file {p}: not a JSON file ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("ratios"), dict):
        data = data["ratios"]
    if not isinstance(data, dict) or not data:
        raise UserError(f"--ratio-file {p}: expected a JSON object {{layer: ratio}}")
    out = {}
    for name, r in data.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise UserError(f"--ratio-file {p}: ratio of {name!r} must be a number in [0, 1), got {r!r}")
        out[str(name)] = float(r)
    return out


# ----------------------------------------------------------------------------- measurements

def imagenet_stem_twin(model, meta):
    """The same layer widths (pruned shapes included) and weights built with ``small_input=False``:
    only strides differ, so the state dict loads unchanged. Returns (twin, twin_meta)."""
    import dataclasses

    from ..artifact import load_model, save_model

    if not meta.arch_kwargs.get("small_input"):
        return model, meta
    twin_meta = dataclasses.replace(meta, arch_kwargs={**meta.arch_kwargs, "small_input": False}, history=[])
    with tempfile.TemporaryDirectory(prefix="compress-prune-") as tmp:
        path = Path(tmp) / "twin.safetensors"
        save_model(model, path, twin_meta)
        return load_model(path)


def _export_for_timing(model, meta, size: int, path: Path) -> Path:
    from ..export import export_onnx

    export_onnx(model, meta, path, verify=False, input_size=size)
    return path


def time_onnx_interleaved(paths: list[Path], channels: int, size: int, runs: int) -> list[float]:
    """Median ONNX Runtime latency (ms) of each model, batch 1, 2 threads, input channels x size x
    size. The models run interleaved (a b a b ...), so load from other processes on a shared CPU
    affects them alike and the before/after ratio stays fair."""
    import numpy as np

    from ..bench import LatencyStats, OnnxRunner, measure_interleaved

    images = np.random.default_rng(0).standard_normal((1, channels, size, size)).astype(np.float32)
    runners = []
    for path in paths:
        runner = OnnxRunner(path, threads=2)
        runner.set_input(images)
        runners.append(runner)
    samples = measure_interleaved(runners, warmup=10, min_runs=runs, budget_s=0.0, max_runs=runs)
    return [LatencyStats.from_seconds(t, batch=1, threads=2).p50_ms for t in samples]


def _latency_ms(model, meta, size: int, runs: int) -> float:
    """Median ONNX Runtime latency (ms) of one model, batch 1, 2 threads."""
    with tempfile.TemporaryDirectory(prefix="compress-prune-") as tmp:
        path = _export_for_timing(model, meta, size, Path(tmp) / "model.onnx")
        return time_onnx_interleaved([path], meta.input_size[0], size, runs)[0]


class _Measure:
    """Params, MACs, accuracy of a model as one row of the report; each measured model is also
    exported to ONNX in ``workdir`` and the latencies are timed together by :meth:`time_latency`."""

    def __init__(self, args, meta, bundle, bench_size: int | None, workdir: Path):
        self.args, self.meta, self.bundle, self.bench_size = args, meta, bundle, bench_size
        self.workdir = workdir
        self.onnx_paths: list[Path] = []

    def accuracy(self, model) -> dict[str, float]:
        if self.bundle is None:
            return {}
        from ..evaluate import evaluate, primary_metric, scalar_metrics

        m = scalar_metrics(evaluate(model, self.bundle.test, self.bundle.task, 256, labels=self.bundle.labels))
        key = primary_metric(self.bundle.task)
        return {key: m[key], "loss": m["loss"]}

    def __call__(self, model, file_bytes: int | None) -> dict[str, Any]:
        from models import count_macs, count_params

        from ..prune import sparsity_report

        row: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, tuple(self.meta.input_size))}
        rep = sparsity_report(model, [])
        row["nonzero_params"] = int(round(rep["params"] * (1 - rep["overall"])))
        row["file_bytes"] = file_bytes
        row.update(self.accuracy(model))
        if self.bench_size is not None:
            bench_model, bench_meta = model, self.meta
            if self.args.bench_imagenet_stem:
                bench_model, bench_meta = imagenet_stem_twin(model, self.meta)
            path = self.workdir / f"model{len(self.onnx_paths)}.onnx"
            self.onnx_paths.append(_export_for_timing(bench_model, bench_meta, self.bench_size, path))
            if self.bench_size != self.meta.input_size[-1] or bench_model is not model:
                row["macs_at_bench_size"] = count_macs(bench_model, (self.meta.input_size[0], self.bench_size,
                                                                     self.bench_size))
        return row

    def time_latency(self, rows: list[dict[str, Any]]) -> None:
        """Fill ``latency_ms`` of ``rows`` (in measurement order), timing all models interleaved."""
        if self.bench_size is None:
            return
        times = time_onnx_interleaved(self.onnx_paths, self.meta.input_size[0], self.bench_size,
                                      self.args.bench_runs)
        for row, ms in zip(rows, times):
            row["latency_ms"] = ms


# ----------------------------------------------------------------------------- run

def run(args: argparse.Namespace) -> int:
    mode = _validate_options(args)
    model_path = Path(args.model)
    if args.output is None and mode != "analyze":
        raise UserError("give the output path with -o")
    from ..io import check_output

    out_path = Path(args.output) if args.output else model_path.with_name(model_path.stem + ".ratios.json")
    check_output(out_path, model_path)
    if mode != "analyze" and out_path.suffix != ".safetensors":
        raise UserError(f"output {out_path} should end in .safetensors")
    ratio_file = read_ratio_file(args.ratio_file) if args.ratio_file else None
    for extra in ((args.ratio_file,) if args.ratio_file else ()):
        check_output(out_path, extra)

    import torch

    from ..artifact import load_model
    from ..prune import importance_by_name, resolve_layers

    torch.manual_seed(args.seed)
    model, meta = load_model(model_path)
    try:
        resolve_layers(model, list(args.ignore) + list(ratio_file or {}))
    except ValueError as e:
        raise UserError(str(e)) from None
    importance = importance_by_name(args.method)
    bundle = _load_bundle(args, meta, model_path,
                          required=mode == "analyze" or args.finetune > 0 or args.method.lower() == "taylor")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if mode == "analyze":
        return _run_analyze(args, model, meta, bundle, importance, out_path, log)
    return _run_prune(args, mode, model, meta, bundle, ratio_file, model_path, out_path, log)


def _load_bundle(args, meta, model_path: Path, required: bool):
    from .eval import training_data_facts

    trained_on = training_data_facts(meta)
    spec = args.data or trained_on.get("spec")
    if not spec:
        if required:
            raise UserError(f"{model_path} records no training data set; give --data (needed for fine-tuning, "
                            f"--analyze and --method taylor)")
        return None
    from ..data import load_data

    seed = args.data_seed if args.data_seed is not None else int(trained_on.get("data_seed", 0))
    bundle = load_data(spec, image_size=int(meta.input_size[-1]), seed=seed, mean=meta.mean, std=meta.std,
                       interpolation=trained_on.get("interpolation"), data_root=args.data_root,
                       train_limit=args.train_limit)
    if bundle.num_classes != meta.num_classes or bundle.task != meta.task:
        raise UserError(f"{model_path} is a {meta.num_classes}-class {meta.task} model but data set "
                        f"{bundle.name!r} is a {bundle.num_classes}-class {bundle.task} one")
    return bundle


def _gradient_fn(bundle, task: str, batches: int = 4, batch_size: int = 32):
    """A ``compute_gradients(model)`` for Taylor importance: backward over a few training batches."""
    import torch.nn.functional as F

    from ..data import make_loader

    def compute(model) -> None:
        was_training = model.training
        model.eval()  # BatchNorm statistics stay as trained
        try:
            for i, (x, y) in enumerate(make_loader(bundle.train, batch_size, shuffle=True, seed=0)):
                if i >= batches:
                    break
                logits = model(x)
                loss = F.cross_entropy(logits, y.long()) if task == "multiclass" else \
                    F.binary_cross_entropy_with_logits(logits, y.float())
                loss.backward()
        finally:
            model.train(was_training)

    return compute


def _train_config(args, epochs: int):
    from ..train import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, warmup_epochs=0.0,
                       seed=args.seed, max_steps_per_epoch=args.max_steps_per_epoch,
                       kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha)


def _run_prune(args, mode, model, meta, bundle, ratio_file, model_path: Path, out_path: Path, log) -> int:
    started = time.time()
    bench_size = None if args.no_bench else int(args.bench_input_size or meta.input_size[-1])
    with tempfile.TemporaryDirectory(prefix="compress-prune-") as workdir:
        measure = _Measure(args, meta, bundle, bench_size, Path(workdir))
        return _prune_and_report(args, mode, model, meta, bundle, ratio_file, model_path, out_path, log,
                                 measure, bench_size, started)


def _prune_and_report(args, mode, model, meta, bundle, ratio_file, model_path: Path, out_path: Path, log,
                      measure: "_Measure", bench_size, started: float) -> int:
    import copy

    import torch

    from ..artifact import save_model
    from ..io import sidecar, write_json
    from ..prune import (channel_groups, gradual_sparse_finetune, importance_by_name, prune_channels,
                         prune_magnitude, search_ratio, sparsity_report)
    from ..prune.recovery import finetune

    log("measuring the input model ...")
    before = measure(model, model_path.stat().st_size)
    teacher = copy.deepcopy(model).eval() if args.distill else None
    example = torch.randn(1, *meta.input_size, generator=torch.Generator().manual_seed(0))
    grads = _gradient_fn(bundle, meta.task) if args.method.lower() == "taylor" else None
    params: dict[str, Any] = {"mode": mode, "method": args.method.lower(), "global": args.global_pruning,
                              "finetune_epochs": args.finetune, "distill": args.distill,
                              "data": bundle.name if bundle is not None else None}
    extra: dict[str, Any] = {}
    finetune_metrics: dict = {}
    if args.distill:
        params["kd"] = {"temperature": args.kd_temperature, "alpha": args.kd_alpha}

    def tune(m, epochs: int, after_step=None) -> dict:  # distillation settings travel in the TrainConfig
        return finetune(m, bundle, _train_config(args, epochs), after_step=after_step, teacher=teacher,
                        progress=not args.quiet)

    if mode == "structured":
        groups_before = {g.name: g.channels for g in channel_groups(model, example, args.ignore)}
        ratio = args.ratio if args.ratio is not None else 0.0

        def prune(m, r, between=None):
            return prune_channels(m, example, ratio=r, importance=importance_by_name(args.method),
                                  global_pruning=args.global_pruning, round_to=args.round_to or None,
                                  ignored_layers=args.ignore, ratio_per_layer=ratio_file, steps=args.steps,
                                  between_steps=between, compute_gradients=grads)

        target = args.target_macs if args.target_macs is not None else args.target_latency_ms
        if target is not None:
            from models import count_macs

            if args.target_macs is not None:
                cost = lambda m: count_macs(m, tuple(meta.input_size))  # noqa: E731
                what = "macs"
            else:
                size = int(args.bench_input_size or meta.input_size[-1])
                twin = imagenet_stem_twin if args.bench_imagenet_stem else (lambda m, mt: (m, mt))
                cost = lambda m: _latency_ms(*twin(m, meta), size, args.bench_runs)  # noqa: E731
                what = "latency_ms"
            log(f"searching the ratio for {what} <= {target:g} ...")
            found = search_ratio(model, lambda m, r: prune(m, r), cost, target, progress=log)
            ratio = found.ratio
            extra["search"] = {"target": target, "measure": what, "reached": found.reached, "ratio": found.ratio,
                               "cost": found.cost, "trials": found.trials}
            if not found.reached:
                log(f"warning: even ratio {found.ratio} gives {what} {found.cost:.4g} > target {target:g}")
            if ratio == 0.0:
                log("the input model already meets the target; nothing pruned")
        between = None
        if args.finetune and args.steps > 1:
            between = lambda m, step: tune(m, args.step_epochs)  # noqa: E731
        if ratio > 0 or ratio_file:
            log(f"pruning channels: ratio {ratio:g}, method {args.method}, {args.steps} step(s) ...")
            prune(model, ratio, between)
        params.update({"ratio": ratio, "steps": args.steps, "round_to": args.round_to, "ignored": list(args.ignore),
                       "ratio_file": args.ratio_file})
        if args.finetune:
            finetune_metrics = tune(model, args.finetune)
        groups_after = {g.name: g.channels for g in channel_groups(model, example, args.ignore)}
        extra["channels"] = {name: [groups_before[name], groups_after.get(name)] for name in groups_before}
    else:
        params.update({"sparsity": args.sparsity, "ignored": list(args.ignore)})
        if args.finetune:
            log(f"gradual magnitude pruning to {args.sparsity:g} over {args.finetune} epoch(s) ...")
            finetune_metrics = gradual_sparse_finetune(model, bundle, _train_config(args, args.finetune),
                                                       args.sparsity, global_scope=args.global_pruning,
                                                       ignored_layers=args.ignore, teacher=teacher,
                                                       progress=not args.quiet)
        else:
            prune_magnitude(model, args.sparsity, global_scope=args.global_pruning, ignored_layers=args.ignore)
        rep = sparsity_report(model, args.ignore)
        extra["sparsity"] = {"global": rep["global"], "overall": rep["overall"],
                             "layers": {k: v["sparsity"] for k, v in rep["layers"].items()}}

    model.eval()
    after = measure(model, None)
    if bench_size is not None:
        log("timing both models in ONNX Runtime (interleaved) ...")
        measure.time_latency([before, after])
    metrics = {k: v for k, v in after.items() if k not in ("file_bytes",)}
    metrics.update({f"before_{k}": v for k, v in before.items() if k in ("params", "macs", "top1", "map",
                                                                          "latency_ms")})
    if finetune_metrics:
        metrics["finetune_best_val"] = {k: v for k, v in finetune_metrics.items() if isinstance(v, (int, float))}
    meta.add_history("prune", params, metrics, seconds=round(time.time() - started, 1))
    save_model(model, out_path, meta)
    after["file_bytes"] = out_path.stat().st_size
    report = {"command": "prune", "input": str(model_path), "output": str(out_path), "params": params,
              "bench": {"input_size": bench_size, "batch": 1, "threads": 2,
                        "imagenet_stem": bool(args.bench_imagenet_stem)} if bench_size else None,
              "before": before, "after": after, **extra, "seconds": round(time.time() - started, 1)}
    json_path = sidecar(out_path)
    write_json(json_path, report)
    _print_report(before, after, extra, bench_size, out_path, json_path, args.bench_imagenet_stem)
    return 0


def _print_report(before: dict, after: dict, extra: dict, bench_size, out_path: Path, json_path: Path,
                  imagenet_stem: bool = False) -> None:
    from ..report import format_table, human_bytes, human_count

    def fmt(key: str, v):
        if v is None:
            return None
        if key in ("params", "nonzero_params", "macs", "macs_at_bench_size"):
            return human_count(v)
        if key == "file_bytes":
            return human_bytes(v)
        if key in ("top1", "map"):
            return f"{100 * v:.2f}%"
        if key == "latency_ms":
            return f"{v:.3f}"
        return v

    stem = ", ImageNet stem" if imagenet_stem else ""
    labels = {"params": "params", "nonzero_params": "non-zero params", "macs": "MACs", "file_bytes": "file size",
              "top1": "test top-1", "map": "test mAP", "loss": "test loss",
              "latency_ms": f"ORT latency ms (b1, 2 thr, {bench_size}px{stem})",
              "macs_at_bench_size": f"MACs @{bench_size}px{stem}"}
    rows = []
    for key, label in labels.items():
        if key not in before and key not in after:
            continue
        b, a = before.get(key), after.get(key)
        change = None
        if isinstance(b, (int, float)) and isinstance(a, (int, float)):
            if key in ("top1", "map"):
                change = f"{100 * (a - b):+.2f} pt"
            elif b and key != "loss":
                change = f"{a / b:.3f}x"
        rows.append({"": label, "before": fmt(key, b), "after": fmt(key, a), "change": change})
    print(format_table(rows, ["", "before", "after", "change"]))
    if "sparsity" in extra:
        s = extra["sparsity"]
        print(format_table([{"layer": name, "sparsity": f"{100 * v:.1f}%"} for name, v in s["layers"].items()],
                           ["layer", "sparsity"]))
        print(f"sparsity: {100 * s['global']:.2f}% of prunable weights, {100 * s['overall']:.2f}% of all parameters")
    if "search" in extra:
        s = extra["search"]
        print(f"ratio search: {s['measure']} target {s['target']:g} -> ratio {s['ratio']:.3f} "
              f"({s['measure']} {s['cost']:.4g}, {'reached' if s['reached'] else 'NOT reached'})")
    print(f"wrote {out_path} and {json_path}")


def _run_analyze(args, model, meta, bundle, importance, out_path: Path, log) -> int:
    import torch

    from ..evaluate import evaluate, primary_metric
    from ..io import sidecar, write_json
    from ..prune import analyze_sensitivity, choose_ratios, plot_sensitivity
    from ..report import format_table

    key = primary_metric(meta.task)
    started = time.time()
    example = torch.randn(1, *meta.input_size, generator=torch.Generator().manual_seed(0))
    if args.method.lower() == "taylor":
        model.zero_grad(set_to_none=True)
        _gradient_fn(bundle, meta.task)(model)
    split = bundle.val if len(bundle.val) else bundle.test
    if args.analyze_samples and args.analyze_samples < len(split):
        from torch.utils.data import Subset

        split = Subset(split, range(args.analyze_samples))
    metric = lambda m: float(evaluate(m, split, meta.task, 256)[key])  # noqa: E731
    baseline, rows = analyze_sensitivity(model, example, metric, ratios=args.ratios, importance=importance,
                                         round_to=args.round_to or None, ignored_layers=args.ignore, progress=log)
    ratios = choose_ratios(rows, args.max_drop)
    base = out_path.with_suffix("") if out_path.suffix == ".json" else out_path
    report_path = base.with_name(base.name + ".sensitivity.json")
    png_path = base.with_name(base.name + ".png")
    write_json(out_path, ratios)
    write_json(report_path, {"command": "prune --analyze", "input": str(args.model), "metric": key,
                             "split": "val" if len(bundle.val) else "test",
                             "samples": len(split), "baseline": baseline,
                             "ratios_tested": args.ratios, "max_drop": args.max_drop, "method": args.method.lower(),
                             "round_to": args.round_to, "rows": [r.to_dict() for r in rows], "ratios": ratios,
                             "seconds": round(time.time() - started, 1)})
    from ..io import atomic_path

    with atomic_path(png_path) as tmp:
        plot_sensitivity(baseline, rows, tmp, metric_name=key)
    table = {}
    for r in rows:
        entry = table.setdefault(r.layer, {"layer": r.layer, "channels": r.channels})
        entry[f"drop@{r.ratio:g}"] = round(r.drop, 2)
    for name, entry in table.items():
        entry["chosen"] = ratios.get(name, 0.0)
    print(f"baseline val {key}: {100 * baseline:.2f}%  (drop in points when one group is pruned alone)")
    print(format_table(list(table.values())))
    print(f"wrote {out_path} (ratio file for --ratio-file), {report_path}, {png_path}")
    return 0
