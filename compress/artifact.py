"""The model artifact: one ``.safetensors`` file, weights + JSON metadata, never pickle.

Metadata (the ``compress`` key of the safetensors header, a JSON string):

    format       "compress-model/1"
    arch         registry name, e.g. "mobilenet_v2"
    arch_kwargs  keyword arguments for ``create_model`` (width_mult, small_input, ...)
    num_classes  int
    task         "multiclass" | "multilabel"
    labels       list of class names (len == num_classes)
    input_size   [C, H, W] the model was trained at
    mean, std    per-channel normalisation (after scaling pixels to [0, 1])
    interpolation  Pillow resampling filter name used to resize images to input_size
                 (compress.data.preprocess.INTERPOLATIONS: nearest, bilinear, bicubic, lanczos,
                 box, hamming); artifacts written before this key existed load as "bilinear"
    history      list of {"stage", "params", "metrics", "time", ...}, one per stage
    layers       {module name: shape facts} for every Conv2d / Linear / BatchNorm2d, so a
                 pruned network is rebuilt from ``create_model`` + these shapes, then
                 ``load_state_dict(strict=True)``
    shared       (only when weights are shared, e.g. by k-means) {state-dict key: bits}: that
                 tensor is stored as ``<key>.codebook`` (its distinct values, ascending, in its
                 own dtype, at most 2^bits of them) and ``<key>.indices`` (uint8, the tensor's
                 shape) instead of ``<key>``; :func:`load_model` decodes ``codebook[indices]``,
                 which gives back the saved values bit for bit
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .errors import ArtifactError
from .io import atomic_path, existing_file
from .meta import ModelMeta
from .torch_utils import sync_head

FORMAT = "compress-model/1"
META_KEY = "compress"


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Shape facts of every resizable layer: conv [in, out, groups], linear [in, out], BN [n]."""
    shapes: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, nn.Linear):
            shapes[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = [m.num_features]
    return shapes


def _resize_layers(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give each named layer the stored shape with empty tensors; load_state_dict fills them."""
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        m = modules.get(name)
        if m is None:
            raise ArtifactError(f"artifact names layer {name!r}, which {type(model).__name__} does not have")
        if isinstance(m, nn.Conv2d):
            cin, cout, groups = shape
            if (cin, cout, groups) == (m.in_channels, m.out_channels, m.groups):
                continue
            m.in_channels, m.out_channels, m.groups = cin, cout, groups
            m.weight = nn.Parameter(torch.empty(cout, cin // groups, *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(cout))
        elif isinstance(m, nn.Linear):
            fin, fout = shape
            if (fin, fout) == (m.in_features, m.out_features):
                continue
            m.in_features, m.out_features = fin, fout
            m.weight = nn.Parameter(torch.empty(fout, fin))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(fout))
        elif isinstance(m, nn.BatchNorm2d):
            (n,) = shape
            if n == m.num_features:
                continue
            m.num_features = n
            if m.affine:
                m.weight = nn.Parameter(torch.empty(n))
                m.bias = nn.Parameter(torch.empty(n))
            if m.track_running_stats:
                m.running_mean = torch.zeros(n)
                m.running_var = torch.ones(n)
        else:
            raise ArtifactError(f"layer {name!r} is a {type(m).__name__}, not a resizable layer")


CODEBOOK, INDICES = ".codebook", ".indices"


def encode_shared(tensor: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook, indices) of a tensor with at most ``2**bits`` distinct values (``bits`` <= 8):
    the distinct values ascending (the tensor's dtype) and, per element, the uint8 position of
    its value, so that ``codebook[indices.long()]`` equals ``tensor`` exactly."""
    if not 1 <= bits <= 8:
        raise ValueError(f"shared tensors use 1 to 8 bits per index, not {bits}")
    codebook, inverse = torch.unique(tensor.detach().cpu(), sorted=True, return_inverse=True)
    if codebook.numel() > 2 ** bits:
        raise ValueError(f"{codebook.numel()} distinct values do not fit a {bits}-bit codebook")
    return codebook.contiguous(), inverse.to(torch.uint8).reshape(tensor.shape).contiguous()


def decode_shared(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The dense tensor ``codebook[indices]`` (the inverse of :func:`encode_shared`)."""
    if codebook.ndim != 1 or indices.dtype != torch.uint8:
        raise ValueError("expected a 1-D codebook and uint8 indices")
    idx = indices.long()
    if idx.numel() and int(idx.max()) >= codebook.numel():
        raise ValueError(f"an index {int(idx.max())} beyond the codebook's {codebook.numel()} values")
    return codebook[idx]


def _decode_state(state: dict[str, torch.Tensor], shared: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """``state`` with each shared tensor's codebook + indices replaced by the dense tensor."""
    if not isinstance(shared, Mapping):
        raise ArtifactError("corrupt 'shared' entry in the metadata (expected {tensor: bits})")
    for key, bits in shared.items():
        codebook, indices = state.pop(key + CODEBOOK, None), state.pop(key + INDICES, None)
        if codebook is None or indices is None:
            raise ArtifactError(f"shared weight {key!r} lacks its {CODEBOOK} or {INDICES} tensor")
        if not isinstance(bits, int) or codebook.numel() > 2 ** min(max(bits, 0), 8):
            raise ArtifactError(f"shared weight {key!r}: {codebook.numel()} values do not fit {bits!r} bits")
        try:
            state[key] = decode_shared(codebook, indices)
        except ValueError as e:
            raise ArtifactError(f"shared weight {key!r}: {e}") from None
    return state


def save_model(model: nn.Module, path: str | os.PathLike, meta: ModelMeta, *,
               shared: Mapping[str, int] | None = None) -> Path:
    """Write ``model`` and ``meta`` to ``path`` atomically (temporary name, then rename).

    ``shared`` ({state-dict key: bits}) names tensors with at most 2^bits distinct values (weight
    sharing) to store as codebook + uint8 indices instead of dense (see the module docstring);
    a tensor with more distinct values is a ``ValueError``."""
    from safetensors.torch import save_file

    path = Path(path)
    if getattr(model, "arch", meta.arch) != meta.arch:
        raise ValueError(f"meta.arch {meta.arch!r} does not match the model's {model.arch!r}")
    state = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    payload = asdict(meta)
    payload["format"] = FORMAT
    payload["layers"] = layer_shapes(model)
    if shared:
        for key, bits in shared.items():
            if key not in state:
                raise ValueError(f"shared tensor {key!r} is not in the model's state dict")
            state[key + CODEBOOK], state[key + INDICES] = encode_shared(state.pop(key), int(bits))
        payload["shared"] = {k: int(b) for k, b in shared.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(payload), "format": "pt"})
    return path


def read_meta(path: str | os.PathLike) -> tuple[ModelMeta, dict[str, Any]]:
    """The metadata of an artifact without loading weights: (ModelMeta, raw dict incl. layers)."""
    from safetensors import SafetensorError, safe_open

    path = existing_file(path, "a .safetensors model artifact", ArtifactError)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: not a safetensors model artifact ({str(e).splitlines()[0]})") from None
    raw_json = header.get(META_KEY)
    if raw_json is None:
        raise ArtifactError(f"{path}: a safetensors file without compress metadata (not saved by this toolkit)")
    try:
        raw = json.loads(raw_json)
        if raw.get("format") != FORMAT:
            raise ArtifactError(f"{path}: unsupported artifact format {raw.get('format')!r}, expected {FORMAT}")
        fields = {k: raw[k] for k in ModelMeta.__dataclass_fields__ if k in raw}
        meta = ModelMeta(**fields)
    except ArtifactError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ArtifactError(f"{path}: corrupt artifact metadata ({e})") from None
    return meta, raw


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the network from the registry + stored layer shapes and load the weights (eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta, raw = read_meta(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{path}: corrupt weights ({str(e).splitlines()[0]})") from None
    state = _decode_state(state, raw.get("shared") or {})
    return build_model(meta, raw.get("layers", {}), state, str(path), device), meta


def build_model(meta: ModelMeta, layers: Mapping[str, list[int]], state: Mapping[str, torch.Tensor],
                source: str, device: str | torch.device = "cpu") -> nn.Module:
    """The network of ``meta`` resized to ``layers`` (the artifact's shape facts) with ``state``
    loaded strictly, in eval mode; :class:`ArtifactError` naming ``source`` when they do not fit."""
    from models import UnknownModelError, create_model

    try:
        model = create_model(meta.arch, num_classes=meta.num_classes, **meta.arch_kwargs)
    except UnknownModelError as e:
        raise ArtifactError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{source}: cannot build {meta.arch!r} with {meta.arch_kwargs}: {e}") from None
    try:
        _resize_layers(model, layers)
    except ArtifactError as e:
        raise ArtifactError(f"{source}: {e}") from None
    except (ValueError, TypeError, AttributeError, ZeroDivisionError, RuntimeError) as e:  # a damaged "layers"
        raise ArtifactError(f"{source}: corrupt layer shapes in the metadata ({e})") from None
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ArtifactError(f"{source}: weights do not fit {meta.arch}: {' '.join(first[:2])[:300]}") from None
    sync_head(model)  # a pruned head is narrower
    model.to(device).eval()
    return model


def read_shared(path: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """The shared tensors of an artifact as stored: {state-dict key: (codebook, uint8 indices,
    bits)} (empty when nothing is shared), e.g. for entropy coding the indices."""
    from safetensors import SafetensorError, safe_open

    _, raw = read_meta(path)
    shared = raw.get("shared") or {}
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key, bits in shared.items():
                out[key] = (f.get_tensor(key + CODEBOOK), f.get_tensor(key + INDICES), int(bits))
    except (SafetensorError, OSError, AttributeError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: corrupt shared weights ({str(e).splitlines()[0]})") from None
    return out
