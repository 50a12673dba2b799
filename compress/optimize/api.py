"""``compress optimize``: the fastest (or smallest) variant of a model within an accuracy budget,
found by building and measuring candidates.

    from compress.optimize.api import optimize
    from compress.optimize.config import OptimizeConfig
    result = optimize("base.safetensors", "opt/", OptimizeConfig(objective="latency", max_drop=1.0))
    result.chosen, result.frontier

Latency objective: a grid of depth pruning (residual blocks out) x width pruning (channel ratio),
each candidate fine-tuned with distillation from the input model by the prune stage; each then
also as ONNX Runtime static INT8 (the quantize stage's search on this CPU), and every variant timed
at every thread count from 1 to ``threads``, all files interleaved in one run with the input
model's ONNX Runtime fp32 (the reference of every speed-up). Size objective: unstructured
sparsity x k-means bits, each Huffman-coded into a ``.dcz``; the cost is the file's bytes.

Accuracy is measured on the validation split during the search (the choice never sees the test
split); the test split is measured once at the end for the frontier's points. Candidates are kept
in ``OUT/candidates/ID/`` with a record keyed by their settings and the input's hash, so a second
run (or one after ``--budget-minutes`` stopped it) reuses them. A candidate that loses more than
``max_drop x hopeless`` points stops its branch: more aggressive settings of the same kind are
not built.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from ..pipeline.runner import file_sha256
from .config import OptimizeConfig
from .frontier import choose, pareto

Log = Callable[[str], None]
RECORD = "record.json"


@dataclass
class OptimizeResult:
    """Every candidate and variant measured, the frontier(s), the chosen variant and the files."""

    objective: str
    input: Path
    out_dir: Path
    baseline: dict[str, Any]
    candidates: list[dict[str, Any]]
    variants: list[dict[str, Any]]
    frontier: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    files: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"command": "optimize", "objective": self.objective, "input": str(self.input),
                "out_dir": str(self.out_dir), "config": self.config, "timing": self.timing,
                "baseline": self.baseline, "candidates": self.candidates, "skipped": self.skipped,
                "variants": self.variants, "frontier": self.frontier, "chosen": self.chosen, "files": self.files,
                "stopped_by_budget": self.stopped_by_budget, "seconds": self.seconds}


def candidate_id(objective: str, a: float, b: float, allocation: str = "uniform") -> str:
    """d<blocks>-r<ratio> (uniform), d<blocks>-s<ratio> (per-layer by sensitivity), s<sparsity>-b<bits>."""
    if objective == "latency":
        return f"d{a:g}-{'r' if allocation == 'uniform' else 's'}{b:g}"
    return f"s{a:g}-b{b:g}"


def more_aggressive(objective: str, cand: tuple, than: tuple) -> bool:
    """Whether ``cand`` prunes at least as hard as ``than`` on every axis (and is not it)."""
    if cand == than:
        return False
    if objective == "latency":  # (blocks, ratio[, allocation]): more of both, same allocation
        same = len(cand) == len(than) or not than[1]
        return same and cand[0] >= than[0] and cand[1] >= than[1]
    return cand[0] >= than[0] and cand[1] <= than[1]  # (sparsity, bits): sparser, fewer bits


class _Data:
    """The validation and test arrays at the model's input size, loaded once."""

    def __init__(self, meta, cfg: OptimizeConfig, source: str):
        from ..data import load_data_for_model

        self.bundle = load_data_for_model(meta, cfg.data, seed=cfg.data_seed, data_root=cfg.data_root, source=source,
                                          why="the search measures accuracy on its validation split")
        if not len(self.bundle.val):
            raise UserError(f"data set {self.bundle.name!r} has no validation split; the search must not choose on "
                            "the test split")
        self.task = self.bundle.task
        self.side = int(meta.input_size[-1])
        recorded = meta.training_data()
        self.spec = cfg.data or recorded.get("spec")  # explicit from here on: timing twins record no history
        self.seed = cfg.data_seed if cfg.data_seed is not None else int(recorded.get("data_seed", 0))
        self.options = {"data": self.spec, "data_seed": self.seed, "data_root": cfg.data_root}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def accuracy(self, predict: Callable[[np.ndarray], np.ndarray], split: str = "val") -> float:
        from ..bench.accuracy import accuracy, predict_all, split_arrays

        if split not in self._arrays:
            self._arrays[split] = split_arrays(getattr(self.bundle, split))
        images, targets = self._arrays[split]
        return float(accuracy(predict_all(predict, images), targets, self.task))


def _torch_predict(model):
    import torch

    model.eval()

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images)).float().numpy()

    return predict


def _model_predict(path: Path):
    """A batch predictor for a .safetensors, .dcz or .onnx file."""
    if path.suffix == ".onnx":
        from ..runtime import OnnxRunner

        return OnnxRunner(path, 2, spinning=False).predict
    if path.suffix == ".dcz":
        from ..huffman.api import load_dcz

        return _torch_predict(load_dcz(path)[0])
    from ..artifact import load_model

    return _torch_predict(load_model(path)[0])


def _timing_onnx(model_path: Path, out: Path, size: int, imagenet_stem: bool) -> Path:
    """The fp32 ONNX file timed for ``model_path``: the model itself, or its ImageNet-stem twin."""
    from ..artifact import load_model
    from ..prune.measure import export_for_timing, imagenet_stem_twin

    model, meta = load_model(model_path)
    if imagenet_stem:
        model, meta = imagenet_stem_twin(model, meta)
    return export_for_timing(model, meta, size, out)


def _record_key(cfg: OptimizeConfig, cand: tuple, input_sha: str) -> str:
    from .. import __version__

    own = {k: v for k, v in cfg.to_dict().items() if k not in ("budget_minutes", "hopeless", "blocks", "ratios",
                                                                "sparsities", "bits", "max_drop", "runs",
                                                                "allocate")}
    blob = json.dumps({"cand": list(cand), "cfg": own, "input": input_sha, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _reuse(folder: Path, key: str) -> dict[str, Any] | None:
    try:
        rec = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("key") != key:
        return None
    for name, sha in rec.get("files", {}).items():
        p = folder / name
        if not p.is_file() or file_sha256(p) != sha:
            return None
    return rec


def _save_record(folder: Path, rec: dict[str, Any]) -> None:
    from ..io import write_json

    rec["files"] = {name: file_sha256(folder / name) for name in rec.get("outputs", {}).values() if name}
    write_json(folder / RECORD, rec)


# ----------------------------------------------------------------------------- candidates
def _build_latency(src: Path, folder: Path, cand: tuple, cfg: OptimizeConfig, data: _Data, size: int,
                   log: Log, progress: bool) -> dict[str, Any]:
    """Prune (depth + width, distilled fine-tuning), INT8, timing files. Returns the record."""
    from ..prune.api import prune_artifact
    from ..prune.config import PruneConfig

    blocks, ratio = int(cand[0]), float(cand[1])
    allocation = cand[2] if len(cand) > 2 else "uniform"
    outputs: dict[str, str | None] = {}
    rec: dict[str, Any] = {"blocks": blocks, "ratio": ratio, "allocate": allocation}
    model = src
    if blocks or ratio:
        # with --allocate sensitivity the MACs that decide are those of the timed network
        alloc = {} if allocation == "uniform" else {"allocate": allocation, "bench_input_size": size,
                                                    "bench_imagenet_stem": cfg.imagenet_stem}
        pcfg = PruneConfig(blocks=blocks, ratio=ratio or None, **alloc, finetune=cfg.finetune, lr=cfg.lr,
                           round_to=cfg.round_to, augment=cfg.augment,
                           batch_size=cfg.batch_size, max_steps_per_epoch=cfg.max_steps_per_epoch,
                           train_limit=cfg.train_limit, analyze_samples=cfg.rank_samples, seed=cfg.seed, bench=False,
                           test=False, **data.options)
        model = folder / "model.safetensors"
        res = prune_artifact(src, model, pcfg, log=lambda m: log("    " + m), progress=progress)
        outputs["model"] = model.name
        rec["removed_blocks"] = res.extra.get("depth", {}).get("removed", [])
        if res.params.get("ratio_per_layer"):
            rec["ratio_per_layer"] = res.params["ratio_per_layer"]
        rec["prune_command"] = pcfg
    rec["val_accuracy"] = data.accuracy(_model_predict(model))
    outputs["timing_fp32"] = _timing_onnx(model, folder / "timing_fp32.onnx", size, cfg.imagenet_stem).name
    if cfg.int8:
        _int8(model, folder, cfg, data, size, rec, outputs, log)
    rec["outputs"] = outputs
    return rec


def _int8(model: Path, folder: Path, cfg: OptimizeConfig, data: _Data, size: int, rec: dict, outputs: dict,
          log: Log) -> None:
    """Static INT8 of the candidate (the quantize stage's search on this CPU, at the model's own
    size), its validation accuracy, and the same configuration applied to the timing file."""
    from ..quantize.api import quantize_artifact
    from ..quantize.config import QuantizeConfig
    from ..quantize.int8 import QuantizationRefused

    common = dict(int8=True, qat="off", test=False, threads=cfg.threads, calib=data.spec, data_seed=data.seed,
                  data_root=cfg.data_root, min_agreement=cfg.int8_min_agreement)
    try:
        q = quantize_artifact(model, folder / "int8.onnx", QuantizeConfig(**common), log=lambda m: log("    " + m))
    except QuantizationRefused as e:
        rec["int8"] = {"refused": str(e)}
        return
    outputs["int8"] = "int8.onnx"
    chosen = q.chosen
    rec["int8"] = {"config": {k: chosen.get(k, False) for k in ("label", "format", "types", "per_channel",
                                                                "calibration", "bias_corrected", "exclude")},
                   "agreement": q.agreement, "val_accuracy": data.accuracy(_model_predict(folder / "int8.onnx"))}
    if not cfg.imagenet_stem and size == data.side:
        outputs["timing_int8"] = "int8.onnx"
        return
    # The timing twin's graph has the same node names, so the excluded nodes carry over.
    fixed = QuantizeConfig(**{**common, "quant_format": chosen["format"], "types": chosen["types"],
                              "per_channel": "on" if chosen["per_channel"] else "off",
                              "calibration": chosen["calibration"], "exclude": list(chosen["exclude"]),
                              "bias_correction": "on" if chosen.get("bias_corrected") else "off",
                              "max_exclude": 0, "min_agreement": 1e-9, "input_size": size, "budget": 0.2})
    quantize_artifact(folder / "timing_fp32.onnx", folder / "timing_int8.onnx", fixed)
    outputs["timing_int8"] = "timing_int8.onnx"


def _build_size(src: Path, folder: Path, cand: tuple, cfg: OptimizeConfig, data: _Data, log: Log,
                progress: bool) -> dict[str, Any]:
    """Sparsity (AGP during distilled fine-tuning), k-means bits (fine-tuned), Huffman .dcz."""
    from ..huffman.api import encode_artifact
    from ..huffman.config import HuffmanConfig
    from ..prune.api import prune_artifact
    from ..prune.config import PruneConfig
    from ..quantize.config import QuantizeConfig
    from ..quantize.kmeans import kmeans_artifact

    sparsity, bits = float(cand[0]), int(cand[1])
    outputs: dict[str, str | None] = {}
    sparse = src
    data_opts = data.options
    if sparsity:
        sparse = folder / "sparse.safetensors"
        prune_artifact(src, sparse, PruneConfig(sparsity=sparsity, global_pruning=True, finetune=cfg.finetune,
                                                augment=cfg.augment,
                                                lr=cfg.lr, batch_size=cfg.batch_size, bench=False, test=False,
                                                max_steps_per_epoch=cfg.max_steps_per_epoch,
                                                train_limit=cfg.train_limit, seed=cfg.seed, **data_opts),
                       log=lambda m: log("    " + m), progress=progress)
        outputs["sparse"] = sparse.name
    shared = folder / "kmeans.safetensors"
    kmeans_artifact(sparse, shared, QuantizeConfig(kmeans_bits=bits, finetune=cfg.finetune, lr=cfg.lr / 10,
                                                   batch_size=cfg.batch_size, test=False, seed=cfg.seed,
                                                   max_steps_per_epoch=cfg.max_steps_per_epoch,
                                                   train_limit=cfg.train_limit, **data_opts),
                    log=lambda m: log("    " + m), progress=progress)
    outputs["kmeans"] = shared.name
    dcz = folder / "model.dcz"
    encode_artifact(shared, dcz, HuffmanConfig(measure=False, **data_opts))
    outputs["dcz"] = dcz.name
    return {"sparsity": sparsity, "bits": bits, "val_accuracy": data.accuracy(_model_predict(dcz)),
            "bytes": dcz.stat().st_size, "outputs": outputs}


# ----------------------------------------------------------------------------- the search
def optimize(model_path: str | os.PathLike, out_dir: str | os.PathLike, config: OptimizeConfig, *,
             log: Log | None = None, progress: bool = True) -> OptimizeResult:
    """Search ``config``'s grid for ``model_path`` (a .safetensors artifact), write every candidate
    under ``out_dir``/candidates, the chosen variant, its recipe and the report in ``out_dir``."""
    from ..artifact import read_meta
    from ..io import existing_file
    from ..pipeline.runner import locked

    cfg = config.validate()
    log = log or (lambda _m: None)
    started = time.time()
    src = existing_file(model_path, "a .safetensors model artifact")
    if src.suffix != ".safetensors":
        raise UserError(f"{src}: optimize searches from the trained PyTorch model; give its .safetensors artifact")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; give a folder")
    if out.resolve() in src.resolve().parents:
        raise UserError(f"{src} is inside {out}; give an output folder that does not hold the input")
    meta, _ = read_meta(src)
    size = int(cfg.input_size or meta.input_size[-1])
    data = _Data(meta, cfg, str(src))
    with locked(out, "optimize"):
        return _search(src, out, cfg, data, size, started, log, progress)


def _search(src: Path, out: Path, cfg: OptimizeConfig, data: _Data, size: int, started: float, log: Log,
            progress: bool) -> OptimizeResult:
    """The search proper (under the output folder's lock): candidates, variants, frontier, choice."""
    from ..io import write_json

    input_sha = file_sha256(src)
    log(f"{cfg.objective} search over {len(cfg.candidates())} candidates; accuracy on {len(data.bundle.val)} "
        f"validation images, budget {cfg.max_drop:g} points")
    base_acc = data.accuracy(_model_predict(src))
    baseline: dict[str, Any] = {"val_accuracy": base_acc, "bytes": src.stat().st_size}
    records, skipped, failed_at, stopped = [], [], [], False
    for i, cand in enumerate(cfg.candidates()):
        cid = candidate_id(cfg.objective, *cand)
        blocker = next((f for f in failed_at if more_aggressive(cfg.objective, cand, f)), None)
        if blocker is not None:
            skipped.append({"id": cid, "why": f"branch stopped by {candidate_id(cfg.objective, *blocker)}"})
            log(f"[{i + 1}/{len(cfg.candidates())}] {cid}: skipped (more aggressive than the hopeless "
                f"{candidate_id(cfg.objective, *blocker)})")
            continue
        folder = out / "candidates" / cid
        key = _record_key(cfg, cand, input_sha)
        rec = _reuse(folder, key)
        if rec is not None:
            log(f"[{i + 1}/{len(cfg.candidates())}] {cid}: reused")
        elif cfg.budget_minutes and time.time() - started > 60 * cfg.budget_minutes:
            stopped = True
            skipped.append({"id": cid, "why": "budget"})
            log(f"[{i + 1}/{len(cfg.candidates())}] {cid}: not built (--budget-minutes {cfg.budget_minutes:g})")
            continue
        else:
            log(f"[{i + 1}/{len(cfg.candidates())}] {cid}: building ...")
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            t0 = time.time()
            if cfg.objective == "latency":
                rec = _build_latency(src, folder, cand, cfg, data, size, log, progress)
            else:
                rec = _build_size(src, folder, cand, cfg, data, log, progress)
            pc = rec.pop("prune_command", None)
            rec.update({"id": cid, "key": key, "seconds": round(time.time() - t0, 1),
                        "prune_options": None if pc is None else _prune_options(pc)})
            _save_record(folder, rec)
        rec["drop_points"] = 100 * (base_acc - rec["val_accuracy"])
        log(f"    {cid}: validation {100 * rec['val_accuracy']:.2f}% ({rec['drop_points']:+.2f} pt)")
        records.append(rec)
        if rec["drop_points"] > cfg.max_drop * cfg.hopeless:
            failed_at.append(cand)
    if cfg.objective == "latency":
        variants, timing = _time_variants(src, out, records, cfg, data, size, baseline, log)
        cost = "latency_ms"
    else:
        variants, timing = _size_variants(src, records, baseline), {}
        cost = "bytes"
    front = pareto(variants, cost)
    chosen = choose(variants, cost, base_acc, cfg.max_drop)
    by_id = {rec["id"]: rec for rec in records}
    _test_accuracies(src, out, by_id, front, chosen, data, baseline, log)
    files = _write_chosen(src, out, by_id[chosen["candidate"]], chosen, cfg, data.options) if chosen else {}
    result = OptimizeResult(cfg.objective, src, out, baseline, records, variants, front, chosen, files, skipped,
                            cfg.to_dict(), timing, round(time.time() - started, 1), stopped)
    _plot(result, out, cost)
    result.files["report"] = str(write_json(out / "optimize.json", result.to_dict()))
    return result


def _prune_options(pcfg) -> dict[str, Any]:
    from ..prune.config import PruneConfig

    default = PruneConfig()
    return {k: v for k, v in pcfg.to_dict().items() if v != getattr(default, k)}


def _time_variants(src: Path, out: Path, records: list[dict], cfg: OptimizeConfig, data: _Data, size: int,
                   baseline: dict, log: Log) -> tuple[list[dict], dict]:
    """Every (candidate, precision) timed at every thread count, interleaved with the input model's
    fp32 in one run per count; the fastest count is each variant's latency."""
    from ..runtime import time_onnx_interleaved

    ref = _timing_onnx(src, out / "input_timing_fp32.onnx", size, cfg.imagenet_stem)
    entries = [("input", "fp32", ref, baseline["val_accuracy"], None)]
    for rec in records:
        folder = out / "candidates" / rec["id"]
        entries.append((rec["id"], "fp32", folder / rec["outputs"]["timing_fp32"], rec["val_accuracy"], rec))
        if rec["outputs"].get("timing_int8"):
            entries.append((rec["id"], "int8", folder / rec["outputs"]["timing_int8"], rec["int8"]["val_accuracy"],
                            rec))
    per_threads: dict[int, list[float]] = {}
    for t in range(1, cfg.threads + 1):
        log(f"timing {len(entries)} variants interleaved: batch {cfg.batch}, {t} thread(s), {size}px ...")
        stats = time_onnx_interleaved([e[2] for e in entries], size, batch=cfg.batch, threads=t, runs=cfg.runs,
                                      warmup=10)
        per_threads[t] = [s.p50_ms for s in stats]
    ref_ms = per_threads[cfg.threads][0]  # the reference: ORT fp32 of the input model at --threads
    baseline.update({"latency_ms": ref_ms, "threads": cfg.threads})
    variants = []
    for i, (cid, precision, path, acc, rec) in enumerate(entries):
        if cid == "input" and precision == "fp32":
            continue
        best_t = min(per_threads, key=lambda t: per_threads[t][i])
        v = {"id": f"{cid}/{precision}/{best_t}t", "candidate": cid, "precision": precision, "threads": best_t,
             "latency_ms": per_threads[best_t][i], "latency_by_threads": {t: per_threads[t][i] for t in per_threads},
             "speedup": ref_ms / per_threads[best_t][i], "val_accuracy": acc,
             "drop_points": 100 * (baseline["val_accuracy"] - acc)}
        variants.append(v)
    timing = {"input_size": size, "batch": cfg.batch, "threads": list(per_threads), "imagenet_stem": cfg.imagenet_stem,
              "runs": cfg.runs, "reference": f"ONNX Runtime fp32 of the input model, {cfg.threads} thread(s)",
              "reference_by_threads": {t: per_threads[t][0] for t in per_threads}}
    return variants, timing


def _size_variants(src: Path, records: list[dict], baseline: dict) -> list[dict]:
    return [{"id": rec["id"], "candidate": rec["id"], "bytes": rec["bytes"],
             "ratio": baseline["bytes"] / rec["bytes"], "val_accuracy": rec["val_accuracy"],
             "drop_points": 100 * (baseline["val_accuracy"] - rec["val_accuracy"])} for rec in records]


def _variant_file(src: Path, out: Path, rec: dict, v: dict) -> Path:
    """The model file a variant is evaluated from: its .dcz, its INT8 ONNX, its pruned artifact, or
    the input model itself (a latency candidate that pruned nothing)."""
    folder, o = out / "candidates" / rec["id"], rec["outputs"]
    name = o.get("dcz") or (o["int8"] if v.get("precision") == "int8" else o.get("model"))
    return folder / name if name else src


def _test_accuracies(src: Path, out: Path, records: dict[str, dict], front: list[dict], chosen: dict | None,
                     data: _Data, baseline: dict, log: Log) -> None:
    """The test split, once, for the frontier's points (and the chosen one): for the report only."""
    log("measuring the frontier on the test split (for the report; the choice is made) ...")
    baseline["test_accuracy"] = data.accuracy(_model_predict(src), "test")
    done: dict[str, float] = {}
    for v in front + ([chosen] if chosen else []):
        if v["id"] not in done:
            done[v["id"]] = data.accuracy(_model_predict(_variant_file(src, out, records[v["candidate"]], v)), "test")
        v["test_accuracy"] = done[v["id"]]
        v["test_drop_points"] = 100 * (baseline["test_accuracy"] - v["test_accuracy"])


def _write_chosen(src: Path, out: Path, rec: dict, chosen: dict, cfg: OptimizeConfig,
                  data_options: dict) -> dict[str, str]:
    """The chosen variant's files next to the report (copied atomically) and its pipeline recipe."""
    from ..io import atomic_path

    folder = out / "candidates" / rec["id"]
    o, files = rec["outputs"], {}
    wanted = {"chosen.safetensors": o.get("model") or o.get("kmeans"), "chosen.onnx": o.get("int8")
              if chosen.get("precision") == "int8" else None, "chosen.dcz": o.get("dcz")}
    for name, rel in wanted.items():
        if rel:
            with atomic_path(out / name) as tmp:
                shutil.copyfile(folder / rel, tmp)
            files[name] = str(out / name)
    if chosen.get("precision") == "fp32" and o.get("model"):
        from ..export import ExportConfig, export_artifact

        export_artifact(out / "chosen.safetensors", out / "chosen.onnx", ExportConfig())
        files["chosen.onnx"] = str(out / "chosen.onnx")
    recipe = out / "recipe.yaml"
    with atomic_path(recipe) as tmp:
        Path(tmp).write_text(_recipe_text(src, rec, chosen, cfg, data_options))
    files["recipe"] = str(recipe)
    return files


def _recipe_text(src: Path, rec: dict, chosen: dict, cfg: OptimizeConfig, data_options: dict) -> str:
    """A `compress pipeline` recipe that rebuilds the chosen variant from the input model."""
    import yaml

    data = {k: v for k, v in {**data_options, "train_limit": cfg.train_limit}.items() if v is not None}
    source = str(src.resolve())
    stages: list[tuple[str, dict[str, Any]]] = []
    if cfg.objective == "latency":
        model_ref = source
        if rec.get("prune_options"):
            opts = {**rec["prune_options"]}
            if rec.get("removed_blocks"):  # the blocks this run ranked and removed, by name
                opts.pop("blocks", None)
                opts["drop_block"] = rec["removed_blocks"]
            stages.append(("prune", {"name": "pruned", "input": source, **opts}))
            model_ref = "pruned"
        stages.append(("export", {"name": "pruned_onnx", "input": model_ref}))
        if chosen.get("precision") == "int8":
            c = rec["int8"]["config"]
            stages.append(("quantize", {
                "name": "pruned_int8", "input": "pruned_onnx", "int8": True, "qat": "off", "quant_format": c["format"],
                "types": c["types"], "per_channel": "on" if c["per_channel"] else "off",
                "calibration": c["calibration"], "exclude": list(c["exclude"]), "max_exclude": 0,
                "bias_correction": "on" if c.get("bias_corrected") else "off",
                "calib": data.get("data"), "data_seed": data.get("data_seed"), "threads": cfg.threads,
                "min_agreement": cfg.int8_min_agreement}))
    else:
        if rec["sparsity"]:
            stages.append(("prune", {"name": "sparse", "input": source, "sparsity": rec["sparsity"],
                                     "global_pruning": True, "finetune": cfg.finetune, "lr": cfg.lr, "bench": False,
                                     **({"augment": cfg.augment} if cfg.augment != "inherit" else {}), **data}))
        stages.append(("quantize", {"name": "kmeans", **({} if rec["sparsity"] else {"input": source}),
                                    "kmeans_bits": rec["bits"], "finetune": cfg.finetune, "lr": cfg.lr / 10,
                                    "test": False, **data}))
        stages.append(("huffman", {"name": "coded", "measure": False,
                                   **{k: v for k, v in data.items() if k != "train_limit"}}))
    header = (f"# Written by compress optimize ({cfg.objective}); rebuilds {chosen['id']}:\n"
              "#   compress pipeline recipe.yaml -o rebuilt\n")
    doc = {"name": f"optimize-{rec['id']}", "stages": [{kind: opts} for kind, opts in stages]}
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def _plot(result: OptimizeResult, out: Path, cost: str) -> None:
    from ..report.optimize import plot_frontier

    path = plot_frontier(result, out / "frontier.png", cost)
    if path:
        result.files["plot"] = str(path)
