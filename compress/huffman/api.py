"""The Huffman stage: a model artifact → a ``.dcz`` container (Deep Compression's storage,
Han et al. 2016 §3), and back.

:func:`encode_artifact` (``compress huffman encode``):

1. load the artifact; every Conv2d/Linear weight becomes codebook + indices — the k-means
   codebook the quantize stage stored (``compress quantize --kmeans-bits``), otherwise a linear
   ``--linear-bits`` (8) per-tensor quantization made here (the report says which);
2. fold each BatchNorm into the conv before it (:mod:`.fold`: a per-channel scale stored beside the
   codebook, and one bias);
3. build the decoded network from exactly the values the file will decode to (:func:`dcz.expand`)
   and export it to ONNX; the graph is stored in the container with every weight it shares with the
   coded tensors left out (external data), so ``serve/`` can run a ``.dcz`` with numpy + ONNX
   Runtime alone;
4. write the container (:mod:`dcz`: Huffman-coded indices, sparse positions as coded gaps,
   checksums), read it back and check the round trip bit for bit, and measure the decoded model.

:func:`decode_artifact` (``compress huffman decode``): ``.dcz`` → ``.safetensors`` (the same
architecture, BatchNorm folded to identity + bias) or ``.onnx`` (the stored graph with its
weights filled in).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..errors import ArtifactError, UserError
from ..fold import FoldedPair, conv_bn_pairs, fold_factors, identity_bn_state
from .config import HuffmanConfig

FORMAT = "compress-dcz/1"
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- quantization

def linear_codes(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-tensor linear quantization to ``bits`` bits: (codebook float32 of the levels
    used, ascending; integer indices of ``weight``'s shape). Zero stays exactly zero."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(weight, dtype=np.float32)
    peak = float(np.abs(w).max()) if w.size else 0.0
    if peak == 0.0 or not np.isfinite(peak):
        if not np.isfinite(peak):
            raise UserError("a weight tensor holds NaN or infinity; refusing to code it")
        return np.zeros(1, np.float32), np.zeros(w.shape, np.uint8)
    step = np.float32(peak / qmax)
    q = np.clip(np.rint(w / step), -qmax, qmax).astype(np.int32)
    levels, inverse = np.unique(q, return_inverse=True)
    dtype = np.uint8 if levels.size <= 256 else np.uint16
    return (levels.astype(np.float32) * step).astype(np.float32), inverse.reshape(w.shape).astype(dtype)


def zero_code(codebook: np.ndarray) -> int | None:
    hits = np.flatnonzero(codebook == 0)
    return int(hits[0]) if hits.size else None


def _weight_keys(model: nn.Module) -> dict[str, str]:
    """{state-dict key of a Conv2d/Linear weight: "conv" | "dw" | "fc"}."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[f"{name}.weight"] = "dw" if m.groups > 1 and m.groups == m.in_channels else "conv"
        elif isinstance(m, nn.Linear):
            out[f"{name}.weight"] = "fc"
    return out


@dataclass
class Plan:
    """What goes into the container: the dcz tensors, how each weight was quantized, the folded
    pairs, and the decoded state dict (torch) the file will give back."""

    tensors: list = field(default_factory=list)
    quantized: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    folded: list[FoldedPair] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)


def plan_tensors(model: nn.Module, shared: dict[str, tuple[np.ndarray, np.ndarray, int]],
                 cfg: HuffmanConfig) -> Plan:
    """The container's tensors for ``model`` (see the module docstring). ``shared`` is the
    artifact's k-means codebooks: {weight key: (codebook, indices, bits)}."""
    import dcz

    plan = Plan(folded=conv_bn_pairs(model) if cfg.fold_bn else [])
    modules = dict(model.named_modules())
    scales: dict[str, np.ndarray] = {}
    skip: set[str] = set()

    def vector(a: np.ndarray) -> np.ndarray:  # dcz stores float16-exact float32 values in 2 bytes
        return a.astype(np.float16).astype(np.float32) if cfg.vector_bits == 16 else a

    for pair in plan.folded:
        scale, bias = (vector(v) for v in fold_factors(modules[pair.conv], modules[pair.bn]))
        if not np.all(scale == 1):  # a BN already folded to identity + bias has s = 1: nothing to store
            scales[f"{pair.conv}.weight"] = scale
        bn_state = identity_bn_state(pair, torch.from_numpy(bias))
        skip.update(bn_state)
        skip.add(f"{pair.conv}.bias")
        plan.tensors.append(dcz.RawTensor(f"{pair.bn}.bias", bias))
        plan.state.update(bn_state)
        if pair.conv_bias:
            plan.state[f"{pair.conv}.bias"] = torch.zeros(bias.shape[0])
    weights = _weight_keys(model)
    for key, value in model.state_dict().items():
        if key in skip:
            continue
        array = value.detach().cpu().numpy()
        kind = weights.get(key)
        if key in shared or (kind and array.size >= cfg.min_weights):
            if key in shared:
                codebook, indices, bits = shared[key]
                plan.quantized[key] = f"k-means {bits}-bit"
            else:
                codebook, indices = linear_codes(array, cfg.linear_bits)
                plan.quantized[key] = f"linear {cfg.linear_bits}-bit"
            codebook = np.asarray(codebook, np.float32)
            indices = np.asarray(indices).reshape(array.shape)
            tensor = dcz.SharedTensor(key, codebook, indices, scale=scales.get(key), zero_code=zero_code(codebook))
            decoded = dcz.expand(codebook, indices, scales.get(key))
            plan.kinds[key] = kind or "fc"
        else:
            if key.endswith(".bias") and key.removesuffix(".bias") + ".weight" in weights:
                array = vector(array)
            tensor = dcz.RawTensor(key, array.copy())
            decoded = array
            if key in scales:  # a folded conv below --min-weights: fold its raw weight here
                decoded = (array.reshape(array.shape[0], -1) * scales[key][:, None]).reshape(array.shape)
                tensor = dcz.RawTensor(key, decoded.astype(array.dtype))
        plan.tensors.append(tensor)
        plan.state[key] = torch.from_numpy(np.array(decoded, order="C"))  # ascontiguousarray makes 0-d 1-d
    return plan


# ----------------------------------------------------------------------------- ONNX skeleton

def _digest(array: np.ndarray) -> str:
    a = np.array(array, order="C")
    return hashlib.sha1(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def graph_skeleton(onnx_path: Path, decoded: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str], int]:
    """The exported graph with every initializer equal (bit for bit) to a decoded tensor turned
    into an external-data reference: (serialized model, {initializer: tensor name}, bytes of the
    initializers that stay inline)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    by_digest = {}
    for name, array in decoded.items():
        by_digest.setdefault(_digest(array), name)
    links: dict[str, str] = {}
    inline = 0
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        name = by_digest.get(_digest(array)) if array.size >= 16 else None
        if name is None:
            inline += array.nbytes
            continue
        links[init.name] = name
        init.ClearField("raw_data")
        for f in ("float_data", "int64_data", "int32_data", "double_data"):
            init.ClearField(f)
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", "dcz"), ("offset", "0"), ("length", str(array.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = k, v
    return proto.SerializeToString(), links, inline


def fill_graph(graph: bytes, links: dict[str, str], tensors: dict[str, np.ndarray]):
    """The ONNX model of a container: its graph with the linked initializers filled in."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(graph)
    for init in proto.graph.initializer:
        name = links.get(init.name)
        if name is None:
            continue
        if name not in tensors:
            raise ArtifactError(f"the stored graph needs tensor {name!r}, which the container lacks")
        filled = numpy_helper.from_array(np.array(tensors[name], order="C").reshape(tuple(init.dims)), init.name)
        init.CopyFrom(filled)
    return proto


# ----------------------------------------------------------------------------- decoding

def decoded_state(container) -> dict[str, torch.Tensor]:
    """The state dict of a read container: its tensors plus the identity BatchNorms of the folded
    pairs (and zero conv biases where a conv had one)."""
    header = container.header
    state = {k: torch.from_numpy(np.array(v)) for k, v in container.tensors.items()}
    try:
        pairs = [FoldedPair.from_list(p) for p in header.get("folded", [])]
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"corrupt 'folded' entry in the container header ({e})") from None
    for pair in pairs:
        bias = state.pop(f"{pair.bn}.bias", None)
        if bias is None:
            raise ArtifactError(f"the container lacks the folded bias of {pair.bn!r}")
        state.update(identity_bn_state(pair, bias))
        if pair.conv_bias:
            state[f"{pair.conv}.bias"] = torch.zeros(bias.shape[0])
    return state


def read_container(path: str | os.PathLike):
    """``dcz.read`` with its errors as one-line :class:`ArtifactError`\\ s naming the file."""
    import dcz

    from ..io import existing_file

    path = existing_file(path, "a .dcz container", ArtifactError)
    try:
        container = dcz.read(path)
    except dcz.DczError as e:  # its message starts with the path
        raise ArtifactError(str(e)) from None
    if container.header.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a compress model container (format {container.header.get('format')!r})")
    return container


def load_dcz(path: str | os.PathLike, container=None) -> tuple[nn.Module, Any]:
    """(model, ModelMeta) of a ``.dcz`` (or of its ``container`` already read): the decoded network
    in eval mode."""
    from ..artifact import build_model
    from ..meta import ModelMeta

    container = container if container is not None else read_container(path)
    raw = dict(container.header.get("artifact") or {})
    try:
        meta = ModelMeta(**{k: raw[k] for k in ModelMeta.__dataclass_fields__ if k in raw})
    except (TypeError, ValueError, KeyError) as e:
        raise ArtifactError(f"{path}: corrupt model metadata in the container ({e})") from None
    return build_model(meta, raw.get("layers", {}), decoded_state(container), str(path)), meta


@dataclass
class DecodeResult:
    source: Path
    output: Path
    kind: str
    seconds: float
    bytes_in: int
    bytes_out: int

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def decode_artifact(path: str | os.PathLike, output: str | os.PathLike, *, log: Log = lambda m: None) -> DecodeResult:
    """``.dcz`` → ``output``: ``.safetensors`` (the decoded network as a model artifact) or
    ``.onnx`` (the stored graph with its weights)."""
    from ..artifact import save_model
    from ..io import atomic_path, check_outputs

    src, out = Path(path), Path(output)
    kind = out.suffix.lower()
    if kind not in (".safetensors", ".onnx"):
        raise UserError(f"output {out} should end in .safetensors or .onnx")
    check_outputs([out], [src])
    started = time.perf_counter()
    if kind == ".onnx":
        import onnx

        container = read_container(src)
        if container.graph is None:
            raise ArtifactError(f"{src}: the container holds no ONNX graph; decode to .safetensors, then "
                                f"compress export")
        proto = fill_graph(container.graph, (container.header.get("onnx") or {}).get("initializers", {}),
                           container.tensors)
        with atomic_path(out) as tmp:
            onnx.save(proto, str(tmp))
    else:
        model, meta = load_dcz(src)
        save_model(model, out, meta)
    seconds = time.perf_counter() - started
    log(f"decoded {src} in {seconds:.2f} s")
    return DecodeResult(src, out, kind.lstrip("."), round(seconds, 3), src.stat().st_size, out.stat().st_size)


# ----------------------------------------------------------------------------- encoding

@dataclass
class EncodeResult:
    source: Path
    output: Path
    report_path: Path
    params: dict[str, Any]
    stats: dict[str, Any]          # dcz.Stats.to_dict(): per tensor and file totals
    sizes: dict[str, Any]          # fp32 / input file / container bytes and ratios
    quantized: dict[str, str]
    kinds: dict[str, str]
    accuracy: dict[str, Any]
    timing: dict[str, float]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _fp32_bytes(model: nn.Module) -> int:
    """The model's parameters and buffers as dense float32 (what Deep Compression's ratios divide)."""
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())


def encode_artifact(model_path: str | os.PathLike, output: str | os.PathLike, config: HuffmanConfig | None = None,
                    *, log: Log = lambda msg: None) -> EncodeResult:
    """Write ``output`` (.dcz) from the artifact at ``model_path`` and its JSON report; see the module
    docstring."""
    import dcz

    from ..artifact import build_model, load_model, read_meta, read_shared
    from ..evaluate import measure_splits
    from ..export import export_onnx
    from ..io import check_outputs, existing_file, sidecar, write_json

    cfg = (config or HuffmanConfig()).validate()
    started = time.perf_counter()
    src, out = Path(model_path), Path(output)
    existing_file(src, "a .safetensors model artifact")
    if src.suffix.lower() != ".safetensors":
        raise UserError(f"{src}: Huffman coding reads the .safetensors artifact (pruned and/or k-means shared), "
                        f"not {src.suffix or 'this file'}")
    if out.suffix.lower() != ".dcz":
        raise UserError(f"output {out} should end in .dcz")
    out, report_path = check_outputs([out, sidecar(out)], [src])
    model, meta = load_model(src)
    _, raw = read_meta(src)
    shared = {k: (c.numpy(), i.numpy(), b) for k, (c, i, b) in read_shared(src).items()}
    timing: dict[str, float] = {}
    notes: list[str] = []

    bundle, accuracy = None, {}
    if cfg.measure and (cfg.data or meta.training_data()):
        from ..data import load_data_for_model
        from ..evaluate import primary_metric

        bundle = load_data_for_model(meta, cfg.data, seed=cfg.data_seed, data_root=cfg.data_root, source=str(src),
                                     why="to measure the decoded model; --no-measure skips it")
        accuracy["metric"] = primary_metric(meta.task)
    splits = ("val", "test") if cfg.test else ("val",)
    if bundle is not None:
        log("measuring the input model ...")
        accuracy["input"] = measure_splits(model, bundle, meta.task, splits)

    t0 = time.perf_counter()
    plan = plan_tensors(model, shared, cfg)
    layers = raw.get("layers", {})
    decoded_model = build_model(meta, layers, plan.state, str(src))
    timing["plan_seconds"] = round(time.perf_counter() - t0, 3)
    linear = sorted(k for k, v in plan.quantized.items() if v.startswith("linear"))
    if linear:
        notes.append(f"{len(linear)} weight tensor(s) had no k-means codebook and were quantized linearly to "
                     f"{cfg.linear_bits} bits per tensor here: the decoded weights are those {cfg.linear_bits}-bit "
                     f"values, not the input's fp32 ones")
    if plan.folded:
        notes.append(f"{len(plan.folded)} BatchNorm layer(s) folded into the convolution before them "
                     f"(per-channel scale beside the codebook, one bias)")
    if cfg.vector_bits == 16:
        notes.append("per-channel scales and biases rounded to float16 values (--vector-bits 32 keeps float32)")

    params = {"coder": cfg.coder, "linear_bits": cfg.linear_bits, "fold_bn": cfg.fold_bn,
              "vector_bits": cfg.vector_bits,
              "min_weights": cfg.min_weights, "folded": len(plan.folded),
              "kmeans_tensors": len(plan.quantized) - len(linear), "linear_tensors": len(linear)}
    if bundle is not None:
        log("measuring the decoded model ...")
        accuracy["decoded"] = measure_splits(decoded_model, bundle, meta.task, splits)
    metrics = {f"decoded_{s}_{accuracy['metric']}": v for s, v in accuracy.get("decoded", {}).items()}
    meta.add_history("huffman", params, metrics)
    header_meta = {**asdict(meta), "layers": layers}

    with tempfile.TemporaryDirectory(prefix="dcz-") as tmpdir:
        t0 = time.perf_counter()
        onnx_path = Path(tmpdir) / "graph.onnx"
        export_onnx(decoded_model, meta, onnx_path, verify=True, simplify=False)
        decoded_arrays = {k: v.numpy() for k, v in plan.state.items() if k in {t.name for t in plan.tensors}}
        graph, links, inline = graph_skeleton(onnx_path, decoded_arrays)
        timing["export_seconds"] = round(time.perf_counter() - t0, 3)
    if inline > 4096:
        notes.append(f"{inline / 1024:.1f} KiB of ONNX initializers match no coded tensor and stay inline in the graph")

    header = {"format": FORMAT, "artifact": header_meta, "folded": [p.to_list() for p in plan.folded],
              "quantized": plan.quantized, "kinds": plan.kinds, "onnx": {"initializers": links}}
    t0 = time.perf_counter()
    stats = dcz.write(out, header, plan.tensors, graph=graph, coder=cfg.coder)
    timing["encode_seconds"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    container = read_container(out)
    timing["decode_seconds"] = round(time.perf_counter() - t0, 3)
    for t in plan.tensors:  # the round trip, bit for bit
        got = container.tensors.get(t.name)
        want = plan.state[t.name].numpy()
        if got is None or got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
            out.unlink(missing_ok=True)
            raise RuntimeError(f"{t.name}: the container did not decode to the values written (a bug; nothing kept)")

    fp32 = _fp32_bytes(model)
    total = out.stat().st_size
    sizes = {"fp32_bytes": fp32, "input_bytes": src.stat().st_size, "dcz_bytes": total,
             "ratio_fp32": fp32 / total, "ratio_input": src.stat().st_size / total,
             "graph_inline_bytes": inline}
    result = EncodeResult(src, out, report_path, params, stats.to_dict(), sizes, plan.quantized, plan.kinds,
                          accuracy, timing, notes)
    timing["seconds"] = round(time.perf_counter() - started, 2)
    write_json(report_path, result.to_dict())
    return result
