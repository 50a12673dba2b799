"""The model facts inside an ONNX file (``ModelProto.metadata_props``), so a server or any ONNX
Runtime user needs nothing but the ``.onnx`` file.

Every value is a JSON document (strings too), under these keys:

    format       "compress-onnx/1"
    arch         registry name the network was built from, e.g. "mobilenet_v2"
    arch_kwargs  keyword arguments of ``create_model`` (width_mult, small_input, ...)
    num_classes  number of outputs
    task         "multiclass" (softmax over logits) | "multilabel" (sigmoid per logit)
    labels       class names, one per output
    input_size   [C, H, W] the model was trained at (the graph accepts other H, W only when
                 exported with dynamic spatial axes; batch is always dynamic)
    mean, std    per-channel normalisation applied after scaling pixels to [0, 1]
    interpolation  Pillow resampling filter used to resize images to input_size ("bilinear",
                 "bicubic", ...; absent in files written before it existed: read as "bilinear")
    history      one record per stage that produced the model (stage, params, metrics, time)
    embedding_output  "embedding": the name of the graph's second output, (N, D) float32, the
                 pooled features before the final Linear (not normalised); present only when
                 the graph has that output (``compress export --embedding``, the default)
    embedding_dim  D, the width of that output

Read them without this package with ``onnxruntime``:
``json.loads(session.get_modelmeta().custom_metadata_map["labels"])``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Mapping

from .errors import ArtifactError
from .io import existing_file

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from .meta import ModelMeta

ONNX_META_FORMAT = "compress-onnx/1"
META_KEYS = ("arch", "arch_kwargs", "num_classes", "task", "labels", "input_size", "mean", "std", "history",
             "interpolation")
EMBEDDING_OUTPUT = "embedding"  # see compress/export.py; serve/ reads it by this name
EMBEDDING_KEYS = ("embedding_output", "embedding_dim")


def meta_to_props(meta: "ModelMeta") -> dict[str, str]:
    """The ``metadata_props`` entries for ``meta``: key → JSON text."""
    facts = asdict(meta)
    props = {"format": json.dumps(ONNX_META_FORMAT)}
    props.update({k: json.dumps(facts[k]) for k in META_KEYS})
    return props


def embedding_dim(model: "onnx.ModelProto") -> int | None:
    """D of the graph's ``embedding`` output (N, D), or ``None`` when it has none (or D is not a
    fixed number)."""
    for out in model.graph.output:
        if out.name == EMBEDDING_OUTPUT:
            dims = out.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
                return int(dims[1].dim_value)
    return None


def set_onnx_meta(model: "onnx.ModelProto", meta: "ModelMeta") -> None:
    """Write ``meta`` into ``model.metadata_props``, replacing earlier values of our keys and
    keeping any other entries (a quantizer's, for example). The embedding keys follow the graph:
    written when it has an ``embedding`` output, removed when it has not."""
    props = meta_to_props(meta)
    dim = embedding_dim(model)
    if dim is not None:
        props.update({"embedding_output": json.dumps(EMBEDDING_OUTPUT), "embedding_dim": json.dumps(dim)})
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props and p.key not in EMBEDDING_KEYS]
    del model.metadata_props[:]
    for key, value in kept + list(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def props_to_meta(props: Mapping[str, str], source: str = "ONNX model", *, warn: bool = True) -> "ModelMeta | None":
    """Parse our facts out of a ``metadata_props`` mapping.

    Returns ``None`` (with a warning when ``warn``) when the model carries no ``format`` key of
    ours — a third-party ONNX file. Raises :class:`ArtifactError` when our keys are present but
    unreadable."""
    from .meta import ModelMeta

    if "format" not in props:
        if warn:
            warnings.warn(f"{source}: no compress metadata in the ONNX file (labels, mean/std, input size unknown)",
                          stacklevel=3)
        return None
    try:
        fmt = json.loads(props["format"])
        if fmt != ONNX_META_FORMAT:
            raise ArtifactError(f"{source}: unsupported ONNX metadata format {fmt!r}, expected {ONNX_META_FORMAT}")
        facts: dict[str, Any] = {k: json.loads(props[k]) for k in META_KEYS if k in props}
        return ModelMeta(**facts)
    except ArtifactError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ArtifactError(f"{source}: corrupt compress metadata in the ONNX file ({e})") from None


def load_onnx(path: str | os.PathLike) -> "onnx.ModelProto":
    """``onnx.load`` with file errors turned into :class:`ArtifactError` (one line)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = existing_file(path, "an ONNX model", ArtifactError)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path}: not an ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    # Protobuf parses many arbitrary byte strings without complaint; an ONNX model has a graph.
    if not model.graph.node or not model.graph.input or not model.opset_import:
        raise ArtifactError(f"{path}: not an ONNX model (no graph)")
    return model


def read_onnx_meta(path: str | os.PathLike, *, warn: bool = True) -> "ModelMeta | None":
    """The :class:`~compress.artifact.ModelMeta` stored in an ONNX file, or ``None`` (and a
    warning) if the file has none of our metadata."""
    model = load_onnx(path)
    return props_to_meta({p.key: p.value for p in model.metadata_props}, str(path), warn=warn)
