"""Model files by type: a suffix → loader registry, torch-free itself.

``.safetensors`` (the PyTorch-side artifact; its loader imports torch when called) and ``.onnx``
and the Huffman stage's ``.dcz`` container (decoded on load; ``stored_bytes`` is its size) are
built in; :func:`register_format` adds more.
A file with an unknown suffix is recognised by its content.

    loaded = open_model_file("pruned.onnx")   # LoadedModel(onnx_path=..., meta=ModelMeta | None)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ArtifactError, UserError
from .io import existing_file


@dataclass
class LoadedModel:
    """What a format loader returns: a PyTorch module and/or an ONNX file, plus the facts."""

    model: Any = None  # nn.Module, for the PyTorch engines
    onnx_path: Path | None = None
    meta: Any = None  # ModelMeta | None (an ONNX file from elsewhere has none)
    stored_bytes: int | None = None  # size of a compressed container (.dcz), if that is the input


_FORMATS: dict[str, Callable[[Path], LoadedModel]] = {}


def register_format(suffix: str, loader: Callable[[Path], LoadedModel]) -> None:
    """Teach :func:`open_model_file` a new file type (e.g. a compressed container)."""
    _FORMATS[suffix.lower()] = loader


def known_suffixes() -> list[str]:
    return sorted(_FORMATS)


def _load_safetensors(path: Path) -> LoadedModel:
    from .artifact import load_model

    model, meta = load_model(path)
    return LoadedModel(model=model, meta=meta)


def _load_onnx(path: Path) -> LoadedModel:
    from .onnx_meta import load_onnx, props_to_meta

    proto = load_onnx(path)
    meta = props_to_meta({p.key: p.value for p in proto.metadata_props}, str(path), warn=False)
    return LoadedModel(onnx_path=path, meta=meta)


def _load_dcz(path: Path) -> LoadedModel:
    """A ``.dcz`` container: the decoded network (PyTorch) and its stored graph with the decoded
    weights as an ONNX file in a temporary folder (removed at exit), so ONNX engines time what
    the service runs; ``stored_bytes`` is the container's size."""
    import atexit
    import shutil
    import tempfile

    import onnx

    from .huffman.api import fill_graph, load_dcz, read_container

    container = read_container(path)
    model, meta = load_dcz(path, container)
    onnx_path = None
    if container.graph is not None:
        folder = tempfile.mkdtemp(prefix="dcz-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        onnx_path = Path(folder) / (path.stem + ".onnx")
        links = (container.header.get("onnx") or {}).get("initializers", {})
        onnx.save(fill_graph(container.graph, links, container.tensors), str(onnx_path))
    return LoadedModel(model=model, onnx_path=onnx_path, meta=meta, stored_bytes=path.stat().st_size)


register_format(".safetensors", _load_safetensors)
register_format(".onnx", _load_onnx)
register_format(".dcz", _load_dcz)


def _sniff(path: Path) -> Callable[[Path], LoadedModel]:
    """Loader for a file with an unknown suffix, by content: safetensors starts with an 8-byte
    little-endian header length followed by ``{``; anything else is tried as ONNX."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return _load_safetensors

    def try_onnx(p: Path) -> LoadedModel:
        try:
            return _load_onnx(p)
        except ArtifactError:
            raise UserError(f"{p}: neither a model artifact (.safetensors) nor an ONNX model "
                            f"(known types: {', '.join(known_suffixes())})") from None

    return try_onnx


def open_model_file(path: str | os.PathLike) -> LoadedModel:
    """Load any model file this toolkit knows, by suffix (or content). :class:`UserError` for a
    missing file, a directory, or a file of no known type."""
    path = existing_file(path, f"a model file ({', '.join(known_suffixes())})")
    loader = _FORMATS.get(path.suffix.lower()) or _sniff(path)
    return loader(path)
