"""Data sets from the user's files: ``imagefolder:PATH`` and ``csv:PATH``.

imagefolder:PATH
    Either ``PATH/<class>/<image>`` (split 70/15/15 with the seed, stratified by class), or
    ``PATH/train/<class>/...`` with ``PATH/val/`` (or ``valid``/``validation``) and optionally
    ``PATH/test/``. Without a test folder the val folder doubles as test (``info["test_is_val"]``);
    without a val folder, 15% of train (stratified) becomes val.

csv:PATH
    A CSV file whose rows name an image (path relative to the CSV's folder) and its labels:
    columns ``image,labels[,split]`` (header optional; recognised header names: image/path/file/
    filename, label/labels/tags/class, split). Several labels in one cell are separated by
    ``label_sep`` (default ``;``); the set is multi-label when any row has more than one label.
    The optional split column holds train/val/test; otherwise a seeded 70/15/15 split.

Mean/std are measured on (up to 256) training images after scaling to [0, 1].
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import UserError
from .datasets import DataBundle, FileDataset, seeded_split
from .preprocess import Preprocess, channel_stats

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
STATS_SAMPLE = 256
VAL_NAMES = ("val", "valid", "validation")
_PATH_COLS = ("image", "images", "path", "file", "filename", "image_path", "img")
_LABEL_COLS = ("label", "labels", "tags", "class", "classes", "target")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test", "testing": "test"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """{class name: image paths} for each subfolder of ``root`` holding at least one image."""
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs = _images_in(d)
        if imgs:
            out[d.name] = imgs
    return out


def _sorted_labels(names) -> list[str]:
    names = list(set(names))
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _stats(paths: list[Path], prep: Preprocess, seed: int):
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(paths))[:STATS_SAMPLE]
    ds = FileDataset([paths[i] for i in pick], [0] * len(pick), prep, 1)
    return channel_stats(np.stack([prep.to_unit(ds.load_image(i)) for i in range(len(ds))]))


def _finish(name: str, splits: dict[str, tuple[list[Path], list]], labels: list[str], multilabel: bool,
            image_size: int, seed: int, mean, std, interpolation: str, info: dict) -> DataBundle:
    prep = Preprocess(image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), interpolation)
    if mean is None or std is None:
        m, sd = _stats(splits["train"][0], prep, seed)
        mean = m if mean is None else mean
        std = sd if std is None else std
    prep = prep.with_stats(mean, std)
    ds = {s: FileDataset(p, t, prep, len(labels), multilabel) for s, (p, t) in splits.items()}
    return DataBundle(name=name, labels=labels, task="multilabel" if multilabel else "multiclass",
                      input_size=(3, image_size, image_size), mean=prep.mean, std=prep.std, preprocess=prep,
                      info=info, **ds)


def load_imagefolder(path: str, image_size: int = 32, seed: int = 0, mean=None, std=None,
                     interpolation: str = "bilinear") -> DataBundle:
    root = Path(path).expanduser()
    if not path:
        raise UserError("imagefolder: give a folder, e.g. --data imagefolder:./my_images")
    if not root.exists():
        raise UserError(f"imagefolder: {root} does not exist")
    if not root.is_dir():
        raise UserError(f"imagefolder: {root} is not a folder")
    info: dict = {"source": f"imagefolder:{root}"}
    if (root / "train").is_dir():
        train = _class_folders(root / "train")
        if not train:
            raise UserError(f"imagefolder: {root / 'train'} has no class subfolders with images")
        labels = sorted(train)
        lookup = {c: i for i, c in enumerate(labels)}

        def folder_split(folder: Path) -> tuple[list[Path], list[int]]:
            classes = _class_folders(folder)
            unknown = sorted(set(classes) - set(lookup))
            if unknown:
                raise UserError(f"imagefolder: {folder} has classes not in train: {', '.join(unknown[:5])}")
            if not classes:
                raise UserError(f"imagefolder: {folder} has no class subfolders with images")
            paths = [p for c in sorted(classes) for p in classes[c]]
            return paths, [lookup[c] for c in sorted(classes) for _ in classes[c]]

        train_paths = [p for c in labels for p in train[c]]
        train_targets = [lookup[c] for c in labels for _ in train[c]]
        splits: dict[str, tuple[list[Path], list]] = {}
        val_dir = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
        if val_dir is None:
            tr, va, _ = seeded_split(len(train_paths), (0.85, 0.15, 0.0), seed, strata=train_targets)
            splits["val"] = ([train_paths[i] for i in va], [train_targets[i] for i in va])
            train_paths = [train_paths[i] for i in tr]
            train_targets = [train_targets[i] for i in tr]
            info["val_from_train"] = True
        else:
            splits["val"] = folder_split(val_dir)
        splits["train"] = (train_paths, train_targets)
        if (root / "test").is_dir():
            splits["test"] = folder_split(root / "test")
        else:
            splits["test"] = splits["val"]
            info["test_is_val"] = True
    else:
        classes = _class_folders(root)
        if not classes:
            raise UserError(f"imagefolder: {root} is empty (expected one subfolder of images per class)")
        labels = sorted(classes)
        paths = [p for c in labels for p in classes[c]]
        targets = [i for i, c in enumerate(labels) for _ in classes[c]]
        idx = seeded_split(len(paths), SPLIT_FRACTIONS, seed, strata=targets)
        splits = {s: ([paths[i] for i in ix], [targets[i] for i in ix]) for s, ix in zip(("train", "val", "test"), idx)}
        info.update(split_seed=seed, split_fractions=list(SPLIT_FRACTIONS))
    if len(labels) < 2:
        raise UserError(f"imagefolder: {root} has {len(labels)} class folder; need at least 2 classes")
    if not splits["train"][0]:
        raise UserError(f"imagefolder: {root}: no training images after the split")
    return _finish(f"imagefolder:{root}", splits, labels, False, image_size, seed, mean, std, interpolation, info)


def load_csv(path: str, image_size: int = 32, seed: int = 0, mean=None, std=None, interpolation: str = "bilinear",
             label_sep: str = ";") -> DataBundle:
    csv_path = Path(path).expanduser()
    if not path:
        raise UserError("csv: give a file, e.g. --data csv:./labels.csv")
    if not csv_path.is_file():
        raise UserError(f"csv: {csv_path} does not exist" if not csv_path.exists() else f"csv: {csv_path} is not a file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"csv: cannot read {csv_path}: {e}") from None
    if not rows:
        raise UserError(f"csv: {csv_path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    path_col, label_col, split_col = 0, 1, None
    first_line = 1
    if header and header[0] in _PATH_COLS or any(h in _LABEL_COLS for h in header):
        first_line = 2
        path_col = next((i for i, h in enumerate(header) if h in _PATH_COLS), 0)
        label_col = next((i for i, h in enumerate(header) if h in _LABEL_COLS), 1)
        split_col = header.index("split") if "split" in header else None
        rows = rows[1:]
    elif len(header) >= 3 and rows[0][2].strip().lower() in _SPLIT_ALIASES:
        split_col = 2
    if not rows:
        raise UserError(f"csv: {csv_path} has a header but no rows")
    base = csv_path.parent
    paths, label_sets, split_names = [], [], []
    for n, row in enumerate(rows, start=first_line):
        if len(row) <= max(path_col, label_col):
            raise UserError(f"csv: {csv_path}:{n}: expected an image path and labels, got {len(row)} column(s)")
        img = (base / row[path_col].strip()).resolve()
        if not row[path_col].strip() or not img.is_file():
            raise UserError(f"csv: {csv_path}:{n}: image {row[path_col].strip()!r} not found (paths are relative to the CSV)")
        labs = [s.strip() for s in row[label_col].split(label_sep) if s.strip()]
        if not labs:
            raise UserError(f"csv: {csv_path}:{n}: no label for {row[path_col].strip()!r}")
        paths.append(img)
        label_sets.append(sorted(set(labs)))
        if split_col is not None:
            raw = row[split_col].strip().lower() if len(row) > split_col else ""
            if raw not in _SPLIT_ALIASES:
                raise UserError(f"csv: {csv_path}:{n}: split must be train, val or test, got {raw!r}")
            split_names.append(_SPLIT_ALIASES[raw])
    labels = _sorted_labels(l for ls in label_sets for l in ls)
    if len(labels) < 2:
        raise UserError(f"csv: {csv_path} names {len(labels)} label; need at least 2")
    lookup = {c: i for i, c in enumerate(labels)}
    multilabel = any(len(ls) > 1 for ls in label_sets)
    targets = [[lookup[l] for l in ls] if multilabel else lookup[ls[0]] for ls in label_sets]
    info: dict = {"source": f"csv:{csv_path}", "label_sep": label_sep}
    if split_col is not None:
        idx = [np.array([i for i, s in enumerate(split_names) if s == name], dtype=np.int64)
               for name in ("train", "val", "test")]
        if len(idx[0]) == 0:
            raise UserError(f"csv: {csv_path}: no row has split 'train'")
        if len(idx[1]) == 0 and len(idx[2]) == 0:
            raise UserError(f"csv: {csv_path}: no row has split 'val' or 'test'")
        if len(idx[1]) == 0:
            idx[1] = idx[2]
            info["val_is_test"] = True
        if len(idx[2]) == 0:
            idx[2] = idx[1]
            info["test_is_val"] = True
    else:
        idx = list(seeded_split(len(paths), SPLIT_FRACTIONS, seed, strata=None if multilabel else targets))
        info.update(split_seed=seed, split_fractions=list(SPLIT_FRACTIONS))
    splits = {s: ([paths[i] for i in ix], [targets[i] for i in ix]) for s, ix in zip(("train", "val", "test"), idx)}
    return _finish(f"csv:{csv_path}", splits, labels, multilabel, image_size, seed, mean, std, interpolation, info)
