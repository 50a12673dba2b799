"""Safe output handling, shared by every stage.

* :func:`check_outputs` refuses any output that is one of the inputs (or another output) under
  any spelling: the same path, a symlink to it, a hard link, ``./a/../a``.
* :func:`atomic_path` writes a regular file under a temporary name in the target folder and
  renames it into place, so a failed run leaves the previous file untouched. Only regular files
  (or new paths) are replaced by a rename; a device, FIFO or socket (``/dev/null``,
  ``/dev/stdout``, a named pipe) is written in place, never replaced. The result gets the
  permissions a plain ``open()`` would give it: the mode of the file it replaces, else
  0666 minus the umask.
* :func:`sidecar` names the JSON report written next to an output: the output's full name plus
  ``.json`` (``base.onnx`` → ``base.onnx.json``), so reports of different stages never collide.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError

PathLike = str | os.PathLike


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def existing_file(path: PathLike, expected: str, error: type[UserError] = UserError) -> Path:
    """``path`` as a Path when it names an existing file; ``error`` ("no such file", "is a
    directory, expected …") otherwise."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    if path.is_dir():
        raise error(f"{path}: is a directory, expected {expected}")
    return path


def check_outputs(outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None] = ()) -> list[Path]:
    """Refuse an output that is an input or another output (same file under any spelling) or a
    directory; create the outputs' parent folders. Returns the outputs as paths (``None``s dropped)."""
    outs = [Path(o) for o in outputs if o is not None]
    ins = [Path(i) for i in inputs if i is not None]
    for k, out in enumerate(outs):
        for inp in ins:
            if _same_file(out, inp):
                raise UserError(f"output {out} is the same file as input {inp}; choose another output path")
        for other in outs[:k]:
            if _same_file(out, other):
                raise UserError(f"two outputs would be written to the same file {out}; choose another output path")
        if out.is_dir():
            raise UserError(f"output {out} is a directory; give a file name")
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
    return outs


def _plain_open_mode(existing: os.stat_result | None) -> int:
    if existing is not None:
        return stat.S_IMODE(existing.st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield the path to write ``path``'s new content to (see the module docstring): a temporary
    file renamed onto ``path`` on success and deleted on failure, or ``path`` itself when it is a
    special file (device, FIFO, socket). A symlink is followed: its target is replaced."""
    yield from _atomic_path(path)


def _atomic_path(path: PathLike) -> Iterator[Path]:
    # the body of atomic_path, undecorated so that `make mutation` can mutate it (mutmut skips
    # decorated functions); exceptions and close() reach it through ``yield from``
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UserError(f"output {path} is a directory; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        yield path  # /dev/null, a FIFO, ...: write in place, never rename onto it
        return
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _plain_open_mode(st))
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON through :func:`atomic_path`."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return Path(path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sidecar(path: PathLike, suffix: str = ".json") -> Path:
    """The report written next to an output: its full name plus ``suffix``
    (``out.safetensors`` → ``out.safetensors.json``)."""
    p = Path(path)
    return p.with_name(p.name + suffix)
