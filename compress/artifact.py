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
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

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


def save_model(model: nn.Module, path: str | os.PathLike, meta: ModelMeta) -> Path:
    """Write ``model`` and ``meta`` to ``path`` atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if getattr(model, "arch", meta.arch) != meta.arch:
        raise ValueError(f"meta.arch {meta.arch!r} does not match the model's {model.arch!r}")
    state = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    payload = asdict(meta)
    payload["format"] = FORMAT
    payload["layers"] = layer_shapes(model)
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

    from models import UnknownModelError, create_model

    meta, raw = read_meta(path)
    try:
        model = create_model(meta.arch, num_classes=meta.num_classes, **meta.arch_kwargs)
    except UnknownModelError as e:
        raise ArtifactError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot build {meta.arch!r} with {meta.arch_kwargs}: {e}") from None
    try:
        _resize_layers(model, raw.get("layers", {}))
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
    except (ValueError, TypeError, AttributeError, ZeroDivisionError, RuntimeError) as e:  # a damaged "layers"
        raise ArtifactError(f"{path}: corrupt layer shapes in the metadata ({e})") from None
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{path}: corrupt weights ({str(e).splitlines()[0]})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ArtifactError(f"{path}: weights do not fit {meta.arch}: {' '.join(first[:2])[:300]}") from None
    sync_head(model)  # a pruned head is narrower
    model.to(device).eval()
    return model, meta
