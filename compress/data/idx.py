"""MNIST-format (IDX) data sets: ``fashion-mnist``, ``mnist``, ``kmnist`` and ``idx:PATH``.

Each is a folder holding the four standard files, gzip-compressed or not (recognised by gzip's
magic bytes, not by the name): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each also found with ``.gz``).

Where the named sets are looked for, in order: ``root/<name>`` and ``root`` (``--data-root``);
``$COMPRESS_DATA_ROOT/<name>`` and ``$COMPRESS_DATA_ROOT``; the Debian location
``/usr/share/datasets/<name>`` (``make data`` installs ``dataset-fashion-mnist`` there).
``idx:PATH`` reads PATH only; its labels are ``"0"``..``"K-1"`` with K = the largest training label + 1.

Split: the test files are ``test``; ``val`` is a seeded, stratified 10% of the training files,
the rest is ``train`` (54,000 / 6,000 / 10,000 for the MNIST family).

Preprocessing is :class:`~.preprocess.Preprocess` applied to the grey PIL image of each sample,
the way the service sees a PNG of it: resized with Pillow (skipped at the files' own size), scaled
to [0, 1], normalised. The channels of a grey image are equal, so each split holds one normalised
channel (N, 1, H, W) and presents it as (N, 3, H, W) through ``expand`` (a view, no copy) whenever
mean and std are the same for the three channels (always, unless the caller passes per-channel
values); mean/std measured on the training split are per channel (three equal values).
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .datasets import ArrayDataset, DataBundle, seeded_split
from .preprocess import INTERPOLATIONS, Preprocess

ROOT_ENV = "COMPRESS_DATA_ROOT"
SYSTEM_ROOT = Path("/usr/share/datasets")  # where Debian's dataset-* packages put their files
UBYTE = 0x08  # IDX type code of unsigned bytes
GZIP_MAGIC = b"\x1f\x8b"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class IdxSource:
    """A named MNIST-format data set: its class names and where to get its files."""

    labels: tuple[str, ...]
    home: str
    debian_package: str | None = None


SOURCES = {
    "fashion-mnist": IdxSource(("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot"),
                               "https://github.com/zalandoresearch/fashion-mnist", "dataset-fashion-mnist"),
    "mnist": IdxSource(tuple(str(d) for d in range(10)), "http://yann.lecun.com/exdb/mnist/"),
    # the romanised hiragana of KMNIST's classes (お き す つ な は ま や れ を)
    "kmnist": IdxSource(("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
                        "https://github.com/rois-codh/kmnist"),
}


# --- reading IDX files ---------------------------------------------------------------------------

def parse_idx(data: bytes, ndim: int, path: Path | str) -> np.ndarray:
    """The uint8 array held by the IDX bytes ``data`` (already decompressed), read-only.

    The header is the magic number ``00 00 08 <ndim>`` then ``ndim`` big-endian uint32 sizes; the
    file must hold exactly their product of bytes after it. Anything else is a :class:`UserError`
    naming ``path``."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != UBYTE or data[3] != ndim:
        raise UserError(f"{path}: not an IDX file of {ndim}-d unsigned bytes (magic number "
                        f"{data[:4].hex() or 'missing'}, expected 000008{ndim:02x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header ({len(data)} bytes, the header needs {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else f"{len(data) - expected} trailing bytes"
        raise UserError(f"{path}: {what}: {len(data)} bytes but sizes {'x'.join(map(str, dims))} "
                        f"need {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path | str, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions, gzip-compressed or raw."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut stream an EOFError
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path}: corrupt gzip data ({msg})") from None
    return parse_idx(data, ndim, path)


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, size: int, mtime_ns: int, ndim: int) -> np.ndarray:
    return read_idx(path, ndim)  # read-only (np.frombuffer over bytes), so safe to share


def _read(path: Path, ndim: int) -> np.ndarray:
    """:func:`read_idx` with an in-process cache keyed by the file's path, size and mtime."""
    st = path.stat()
    return _read_cached(str(path), st.st_size, st.st_mtime_ns, ndim)


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) uint8) of one split; counts must agree."""
    images = _read(images_path, 3)
    labels = _read(labels_path, 1)
    if len(images) != len(labels):
        raise UserError(f"{labels_path}: {len(labels)} labels but {images_path} holds {len(images)} images")
    if len(images) == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise UserError(f"{images_path}: no images (sizes {'x'.join(map(str, images.shape))})")
    return images, labels


# --- finding the files ---------------------------------------------------------------------------

def _file_in(folder: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _files_in(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """({file base name: path} found in ``folder``, base names missing)."""
    found, missing = {}, []
    for base in (b for pair in FILES.values() for b in pair):
        p = _file_in(folder, base)
        if p is None:
            missing.append(base)
        else:
            found[base] = p
    return found, missing


def search_folders(name: str, root: str | None = None) -> list[Path]:
    """Where the named data set is looked for, in order (see the module docstring)."""
    folders: list[Path] = []
    for base in (root, os.environ.get(ROOT_ENV)):
        if base:
            b = Path(base).expanduser()
            folders += [b / name, b]  # a folder named for the data set first
    folders.append(SYSTEM_ROOT / name)
    return list(dict.fromkeys(folders))


def _how_to_get(name: str) -> str:
    src = SOURCES[name]
    apt = (f"on Debian/Ubuntu run `make data` (apt-get install {src.debian_package}); otherwise "
           if src.debian_package else "")
    return (f"{apt}download the four files from {src.home} into a folder and pass --data-root FOLDER "
            f"(or set {ROOT_ENV})")


def locate(name: str, root: str | None = None) -> dict[str, Path]:
    """{file base name: path} of the four files of the named data set (the first complete folder)."""
    folders = search_folders(name, root)
    partial = []
    for folder in folders:
        found, missing = _files_in(folder)
        if not missing:
            return found
        if found:
            partial.append(f"{folder} lacks {', '.join(missing)}")
    where = "; ".join(partial) if partial else "looked in " + ", ".join(map(str, folders))
    raise UserError(f"{name}: the IDX files ({', '.join(FILES['train'] + FILES['test'])}, raw or .gz) "
                    f"were not found ({where}); {_how_to_get(name)}")


def locate_folder(path: str) -> dict[str, Path]:
    """{file base name: path} of the four files in the folder of an ``idx:PATH`` spec."""
    folder = Path(path).expanduser()
    if not path or not folder.is_dir():
        raise UserError(f"idx:{path}: no such folder (it must hold {', '.join(FILES['train'] + FILES['test'])}, "
                        f"raw or .gz)")
    found, missing = _files_in(folder)
    if missing:
        raise UserError(f"idx:{path}: {folder} lacks {', '.join(missing)} (raw or .gz)")
    return found


# --- preprocessing -------------------------------------------------------------------------------

def resize_grey(images: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """(N, size, size) uint8: each grey image resized by Pillow exactly as :meth:`Preprocess.resize`
    does it (Pillow resizes the three equal channels of the RGB image like the grey one; a test
    checks that); the input itself when already that size."""
    n, h, w = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size), dtype=np.uint8)
    method = INTERPOLATIONS[interpolation]
    for i, im in enumerate(images):  # ~25 us an image at 28 → 32 (Pillow's resize; no numpy copy)
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), method))
    return out


def _unit_levels() -> np.ndarray:
    """The 256 values a uint8 pixel takes after step 3 of :class:`Preprocess` (float32, /255)."""
    return np.arange(256, dtype=np.float32) / np.float32(255.0)


def grey_stats(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """What :func:`~.preprocess.channel_stats` gives for the RGB [0, 1] images of grey uint8
    ``pixels`` (three equal values each), computed from a histogram without the float copy."""
    counts = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    levels = _unit_levels().astype(np.float64)
    n = counts.sum()
    mean = float((counts * levels).sum() / n)
    std = max(float(np.sqrt((counts * (levels - mean) ** 2).sum() / n)), 1e-3)
    return (round(mean, 6),) * 3, (round(std, 6),) * 3


def normalise_grey(pixels: np.ndarray, prep: Preprocess) -> torch.Tensor:
    """(N, 3, H, W) float32 from grey uint8 (N, H, W): bit-identical to ``prep`` on the RGB image
    (a 256-entry table of step 3-4's float32 results, then a lookup). A view of one channel
    expanded to three when ``prep``'s three channels share mean and std."""
    table = (_unit_levels()[:, None] - np.asarray(prep.mean, dtype=np.float32)) / np.asarray(prep.std, dtype=np.float32)
    if np.array_equal(table[:, 0], table[:, 1]) and np.array_equal(table[:, 0], table[:, 2]):
        return torch.from_numpy(table[:, 0][pixels])[:, None].expand(-1, 3, -1, -1)
    return torch.from_numpy(np.stack([table[:, c][pixels] for c in range(3)], axis=1))


# --- the bundle ----------------------------------------------------------------------------------

def load_idx_dataset(name: str, image_size: int = 28, seed: int = 0, mean=None, std=None, root: str | None = None,
                     interpolation: str = "bilinear") -> DataBundle:
    """The :class:`DataBundle` of ``name`` (``fashion-mnist``, ``mnist``, ``kmnist``, or ``idx:PATH``).

    ``root`` is the first folder searched (``--data-root``); ``seed`` fixes the validation slice;
    ``mean``/``std`` (3 values each) override the statistics of the training split."""
    if name.startswith("idx:"):
        paths = locate_folder(name[4:])
        labels = None
    elif name in SOURCES:
        paths = locate(name, root)
        labels = list(SOURCES[name].labels)
    else:
        raise UserError(f"unknown IDX data set {name!r}; known: {', '.join(SOURCES)}, idx:PATH")
    train_x, train_y = read_split(*(paths[b] for b in FILES["train"]))
    test_x, test_y = read_split(*(paths[b] for b in FILES["test"]))
    if labels is None:
        labels = [str(k) for k in range(int(train_y.max()) + 1)]
    for split, y in (("train", train_y), ("test", test_y)):
        if int(y.max()) >= len(labels):
            path = paths[FILES[split][1]]
            raise UserError(f"{path}: label {int(y.max())} out of range 0..{len(labels) - 1} "
                            f"({'the training labels' if name.startswith('idx:') else name + ' classes'})")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{paths[FILES['test'][0]]}: images of {'x'.join(map(str, test_x.shape[1:]))} pixels "
                        f"but the training images are {'x'.join(map(str, train_x.shape[1:]))}")
    train_y64 = train_y.astype(np.int64)
    tr, va, rest = seeded_split(len(train_y64), (1 - VAL_FRACTION, VAL_FRACTION, 0.0), seed, strata=train_y64)
    tr = np.sort(np.concatenate([tr, rest]))  # rounding in tiny classes can leave a few over: they train
    prep = Preprocess(image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), interpolation)
    train_px = resize_grey(train_x, image_size, interpolation)
    px = {"train": train_px[tr], "val": train_px[va], "test": resize_grey(test_x, image_size, interpolation)}
    del train_px
    if mean is None or std is None:
        m, sd = grey_stats(px["train"])
        mean = m if mean is None else mean
        std = sd if std is None else std
    prep = prep.with_stats(mean, std)
    targets = {"train": train_y64[tr], "val": train_y64[va], "test": test_y.astype(np.int64)}
    splits = {s: ArrayDataset(normalise_grey(px[s], prep), torch.from_numpy(targets[s])) for s in px}
    folder = paths[FILES["train"][0]].parent
    info = {"source": str(folder), "split_seed": seed, "val_fraction": VAL_FRACTION,
            "file_counts": {"train": len(train_y), "test": len(test_y)}}
    return DataBundle(name=name, labels=labels, task="multiclass", input_size=(3, image_size, image_size),
                      mean=prep.mean, std=prep.std, preprocess=prep, info=info, **splits)
