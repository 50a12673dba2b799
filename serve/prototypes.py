"""Few-shot classes without retraining: a class is enrolled from a few images as a *prototype*,
the mean of their L2-normalised embeddings (normalised again), and an image is classified by the
prototype nearest to its embedding by cosine similarity.

One :class:`PrototypeStore` per model that has an embedding output. Its classes live in a JSON
file (no pickle), ``<model file stem>.classes.json`` next to the model or
``<model name>.classes.json`` in ``--classes-dir``:

    {"format": "serve-prototypes/1", "model": "digits", "model_sha256": "...", "embedding_dim": 64,
     "classes": [{"name": "seven", "shots": 3, "prototype": [0.012, ...]}, ...]}

It is written atomically (a temporary file in the same directory, fsync, ``os.replace``, fsync of
the directory), so a crash mid-write leaves the previous file whole; it is loaded at start-up and
refused, with a log line, when it belongs to another model (sha256 or embedding size differ).
Changes are serialised by an ``asyncio.Lock`` within a process and a ``flock`` on
``.<file>.lock`` across worker processes; each change re-reads the file first when another
process rewrote it, and readers pick up such a rewrite by its ``stat`` (:meth:`refresh`).
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ServeError

log = logging.getLogger("serve")

FORMAT = "serve-prototypes/1"
MAX_NAME_CHARS = 100
MAX_CLASSES = 1_000  # per model: at D = 1280 the file is ~25 MB of JSON, rewritten on every change
SUFFIX = ".classes.json"


def check_class_name(name: Any) -> str:
    """``name`` if it can name a class, else :class:`ServeError` 400 saying why: empty or only
    whitespace, longer than :data:`MAX_NAME_CHARS`, leading or trailing whitespace, or any control,
    format or unassigned character (newlines, NUL, bidi overrides, ...)."""
    if not isinstance(name, str) or not name.strip():
        raise ServeError(400, "class name is empty: send a non-blank form field 'name'")
    if len(name) > MAX_NAME_CHARS:
        raise ServeError(400, f"class name is {len(name)} characters long, the limit is {MAX_NAME_CHARS}")
    bad = next((ch for ch in name if unicodedata.category(ch).startswith("C")), None)
    if bad is not None:
        raise ServeError(400, f"class name contains the control character U+{ord(bad):04X}")
    if name != name.strip():
        raise ServeError(400, "class name starts or ends with whitespace")
    return name


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (float64 arithmetic, float32 result). ValueError for a row
    that is not finite or is all zeros (it has no direction)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.isfinite(norms).all() or (norms == 0).any():
        raise ValueError("an embedding is all zeros or not finite")
    return (x / norms).astype(np.float32)


def make_prototype(embeddings: np.ndarray) -> np.ndarray:
    """The prototype (D,) of a class from the embeddings (n, D) of its images: the mean of the
    L2-normalised rows, normalised again. ValueError as :func:`normalise_rows`."""
    return normalise_rows(normalise_rows(embeddings).astype(np.float64).mean(axis=0, keepdims=True))[0]


@dataclass(frozen=True)
class ClassSet:
    """The enrolled classes at one moment (never mutated: a change makes a new one)."""

    names: tuple[str, ...] = ()
    shots: tuple[int, ...] = ()
    prototypes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (C, D), unit rows

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def with_class(self, name: str, prototype: np.ndarray, shots: int) -> "ClassSet":
        """A new set with ``name`` added at the end, or replaced in place when it exists."""
        names, counts, rows = list(self.names), list(self.shots), list(self.prototypes)
        if name in names:
            i = names.index(name)
            counts[i], rows[i] = shots, prototype
        else:
            names.append(name)
            counts.append(shots)
            rows.append(prototype)
        return ClassSet(tuple(names), tuple(counts), np.stack(rows).astype(np.float32))

    def without(self, name: str) -> "ClassSet":
        i = self.names.index(name)
        keep = [j for j in range(len(self.names)) if j != i]
        return ClassSet(tuple(self.names[j] for j in keep), tuple(self.shots[j] for j in keep),
                        self.prototypes[keep])

    def nearest(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]:
        """``[{label, index, score}]``: the ``k`` prototypes most similar to ``embedding`` (D,), best
        first (ties: the class enrolled first), score = cosine similarity. ValueError for an
        embedding without a direction (all zeros, not finite)."""
        query = normalise_rows(embedding[None])[0]
        sims = self.prototypes @ query  # float32: ~1e-7 off the float64 value, without copying (C, D)
        order = np.argsort(-sims, kind="stable")[:k]
        return [{"label": self.names[i], "index": i, "score": float(np.clip(sims[i], -1.0, 1.0))}
                for i in order.tolist()]


class PersistError(ServeError):
    """The classes could not be saved (503: enrolment is unavailable until the location is fixed)."""


class PrototypeStore:
    """The enrolled classes of one model and the file they persist in."""

    def __init__(self, model: str, path: Path, *, model_sha256: str, embedding_dim: int,
                 configurable_hint: str = "--classes-dir"):
        self.model = model
        self.path = Path(path)
        self.model_sha256 = model_sha256
        self.embedding_dim = int(embedding_dim)
        self.hint = configurable_hint
        self.lock = asyncio.Lock()     # one change at a time in this process
        # (classes, stamp) are set together under this (briefly held) lock: a re-read on the event
        # loop and the change being committed by its worker thread must not interleave, or a file
        # read before the change could overwrite the change in memory
        self._state_lock = threading.Lock()
        self.classes = ClassSet(prototypes=np.zeros((0, self.embedding_dim), np.float32))
        self._empty = self.classes
        self._stamp: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of the file last read/written

    # --- reading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file (if any) into :attr:`classes`. A file that cannot be used — unreadable,
        not ours, or another model's — is logged and ignored: the store starts empty and the next
        enrolment replaces it."""
        with self._state_lock:
            self._stamp = _stamp(self.path)
            if self._stamp is None:
                self.classes = self._empty
                return
            try:
                self.classes = self._parse(self.path.read_bytes())
            except (OSError, ValueError) as e:
                log.error("few-shot classes of model %s: %s: %s; ignored (the next enrolment replaces the file)",
                          self.model, self.path, e)
                self.classes = self._empty
                return
        if self.classes:
            log.info("few-shot classes of model %s: %d loaded from %s", self.model, len(self.classes), self.path)

    def check_writable(self) -> None:
        """Log a warning at start-up when enrolments could not be saved (a read-only mount)."""
        folder = self.path.parent
        if folder.is_dir() and not os.access(folder, os.W_OK):
            log.warning("few-shot classes of model %s cannot be saved in %s (not writable): enrolments will "
                        "answer 503; start the server with %s DIR naming a writable directory",
                        self.model, folder, self.hint)

    def refresh(self) -> ClassSet:
        """The classes, re-read first when the file changed on disk since (another worker enrolled)."""
        if _stamp(self.path) != self._stamp:
            self.load()
        return self.classes

    def _parse(self, data: bytes) -> ClassSet:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if doc.get("embedding_dim") != self.embedding_dim:
            raise ValueError(f"written for embeddings of size {doc.get('embedding_dim')!r}, this model's are "
                             f"{self.embedding_dim}: prototypes of another model")
        if doc.get("model_sha256") != self.model_sha256:
            raise ValueError(f"written for another model file (sha256 {str(doc.get('model_sha256'))[:12]}..., "
                             f"this one is {self.model_sha256[:12]}...): prototypes of another model")
        entries = doc.get("classes")
        if not isinstance(entries, list):
            raise ValueError("'classes' is not a list")
        classes = self._empty
        for entry in entries:
            name, shots, proto = entry.get("name"), entry.get("shots"), entry.get("prototype")
            if not isinstance(name, str) or name in classes or not isinstance(shots, int) or shots < 1:
                raise ValueError(f"bad class entry {str(name)[:40]!r}")
            try:
                check_class_name(name)
            except ServeError as e:
                raise ValueError(e.message) from None
            vec = np.asarray(proto, dtype=np.float64)
            if vec.shape != (self.embedding_dim,):
                raise ValueError(f"class {name!r}: prototype of shape {vec.shape}")
            classes = classes.with_class(name, normalise_rows(vec[None])[0], shots)
        return classes

    # --- changing --------------------------------------------------------------------------

    async def change(self, edit: Callable[[ClassSet], ClassSet]) -> ClassSet:
        """Apply ``edit`` (current classes → new classes; it may raise :class:`ServeError`) to the
        latest classes and save the result; on any failure nothing changes, in memory or on disk.
        Serialised in this process and, by ``flock``, across worker processes; the file I/O
        runs in a worker thread."""
        async with self.lock:
            return await asyncio.to_thread(self._change_locked, edit)

    def _change_locked(self, edit: Callable[[ClassSet], ClassSet]) -> ClassSet:
        import fcntl

        lock_path = self.path.with_name(f".{self.path.name}.lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(lock_path, "a")
        except OSError as e:
            raise self._persist_error(e) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            current = self.refresh()
            new = edit(current)
            try:
                self._write(new)
            except OSError as e:
                raise self._persist_error(e) from None
            with self._state_lock:
                self.classes = new
                self._stamp = _stamp(self.path)
            return new

    def _persist_error(self, e: OSError) -> PersistError:
        where = self.path.parent
        why = e.strerror or str(e)
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return PersistError(503, f"cannot save few-shot classes in {where} ({why}): start the server with "
                                     f"{self.hint} DIR naming a writable directory")
        return PersistError(503, f"cannot save few-shot classes to {self.path.name} ({why}); nothing was changed")

    def _document(self, classes: ClassSet) -> bytes:
        doc = {"format": FORMAT, "model": self.model, "model_sha256": self.model_sha256,
               "embedding_dim": self.embedding_dim,
               "classes": [{"name": n, "shots": s, "prototype": p.tolist()}
                           for n, s, p in zip(classes.names, classes.shots, classes.prototypes)]}
        return json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")

    def _write(self, classes: ClassSet) -> None:
        """Atomic replace: temporary file beside the target, fsync, ``os.replace``, fsync the folder."""
        data = self._document(classes)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.path.parent)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every file system lets a directory be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def classes_path(model_name: str, model_path: Path, classes_dir: Path | None) -> Path:
    """Where a model's classes persist: ``<classes_dir>/<name>.classes.json`` (names are unique
    per server) or, without a classes dir, ``<model file stem>.classes.json`` beside the model."""
    if classes_dir is not None:
        return Path(classes_dir) / f"{model_name}{SUFFIX}"
    return Path(model_path).with_name(f"{Path(model_path).stem}{SUFFIX}")
