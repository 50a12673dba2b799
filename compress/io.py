"""Safe output handling: write to a temporary name in the target folder, then rename; never
overwrite an input."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def check_output(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Refuse an output path that is one of the inputs; create its parent folder."""
    out = Path(output)
    for inp in inputs:
        if inp is None:
            continue
        p = Path(inp)
        if p.exists() and out.exists() and os.path.samefile(p, out):
            raise UserError(f"output {out} is the same file as input {p}; choose another -o path")
        if out.resolve() == p.resolve():
            raise UserError(f"output {out} is the same file as input {p}; choose another -o path")
    if out.exists() and out.is_dir():
        raise UserError(f"output {out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sidecar(path: str | os.PathLike, suffix: str = ".json") -> Path:
    """The report written next to an output: ``out.safetensors`` → ``out.json``."""
    p = Path(path)
    return p.with_suffix(suffix) if p.suffix else p.with_name(p.name + suffix)
