"""The embed and few-shot stages.

``embed``: :class:`EmbedConfig` → :func:`embed_artifact` → :class:`EmbedResult`. The embeddings
of a data split (every sample) written as ``.npz`` (plain arrays, no pickle: ``np.load(path)``
works with ``allow_pickle=False``) or ``.safetensors``, a seeded t-SNE map as a PNG, and the
k-NN / silhouette numbers of the space; with a parent model (the one it was compressed from),
both models on the same points side by side and the CKA of the two spaces.

``fewshot``: :class:`FewShotConfig` → :func:`fewshot_artifacts` → :class:`FewShotResult`. N-way
K-shot accuracy of nearest-prototype classification over seeded random episodes, for one or
more models on the same episodes, with the mean and its 95% interval.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import StageConfig, option
from ..errors import UserError

OUTPUT_SUFFIXES = (".npz", ".safetensors")


@dataclass(kw_only=True)
class EmbedConfig(StageConfig):
    """Options of the embed stage (``compress embed``)."""

    data: str | None = option(None, help="data spec (default: the one the model was trained on)")
    split: str = option("test", choices=("train", "val", "test"), help="which split to embed")
    data_seed: int | None = option(None, help="split seed (default: the training run's, else 0)")
    data_root: str | None = option(None, help="folder for cifar10/cifar100/fashion-mnist (default $COMPRESS_DATA_ROOT)")
    parent: str | None = option(None, help="the model this one was compressed from: embedded on the same points, "
                                           "drawn beside it, compared by CKA")
    max_points: int = option(2000, check=(lambda v: v >= 0, "must be >= 0"),
                             help="points (a seeded random subset of the split) for t-SNE, k-NN and silhouette; "
                                  "0 = all. The output file holds every sample")
    plot: str | None = option(None, help="t-SNE PNG (default: OUTPUT with .tsne.png)")
    perplexity: float = option(30.0, check=(lambda v: v > 1, "must be > 1"), help="t-SNE perplexity")
    knn: int = option(5, check=(lambda v: v >= 1, "must be >= 1"), help="k of the leave-one-out k-NN accuracy")
    seed: int = option(0, help="seed of the point subset and of t-SNE")
    batch_size: int = option(256, check=(lambda v: v >= 1, "must be >= 1"), help="embedding batch size")
    threads: int = option(1, check=(lambda v: v >= 1, "must be >= 1"), help="ONNX Runtime threads (ONNX models)")
    device: str = option("cpu", help="cpu, cuda (PyTorch models)")


@dataclass
class SpaceStats:
    """One model's embedding space on the chosen points."""

    model: str
    engine: str
    dim: int
    knn_top1: float
    silhouette: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EmbedResult:
    model: Path
    parent: Path | None
    data: str
    split: str
    data_seed: int
    n: int  # samples embedded (and written)
    points: int  # samples in the t-SNE map and the statistics
    knn: int
    spaces: list[SpaceStats]
    cka: float | None
    output: Path
    plot: Path
    report_path: Path
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"command": "embed", "model": str(self.model), "parent": self.parent and str(self.parent),
                "data": self.data, "split": self.split, "data_seed": self.data_seed, "n": self.n,
                "points": self.points, "knn": self.knn, "spaces": [s.to_dict() for s in self.spaces],
                "cka": self.cka, "output": str(self.output), "plot": str(self.plot), "seconds": self.seconds,
                "config": self.config}


def _resolve_spec(meta, spec: str | None, source: str) -> tuple[str, int]:
    trained = meta.training_data() if meta is not None else {}
    spec = spec or trained.get("spec")
    if not spec:
        raise UserError(f"{source} records no training data set; give --data")
    return spec, int(trained.get("data_seed", 0))


def _load_split(embedder, spec: str, seed: int, split: str, data_root: str | None):
    from ..data import load_data_for_model

    bundle = load_data_for_model(embedder.meta, spec, seed=seed, data_root=data_root, source=str(embedder.path),
                                 check=False)
    if bundle.task != "multiclass":
        raise UserError(f"embeddings are coloured and compared by class: {bundle.name!r} is {bundle.task}")
    data = bundle.split(split)
    if not len(data):
        raise UserError(f"the {split} split of {bundle.name!r} is empty")
    return bundle, data


def write_embeddings(path: Path, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """``arrays`` (and ``info`` as JSON) to ``path`` atomically: ``.npz`` (``info`` as a 0-d
    unicode array ``info``, label names as a unicode array: no object arrays, no pickle) or
    ``.safetensors`` (``info`` in its metadata)."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, **arrays, info=np.array(json.dumps(info)))
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items() if v.dtype.kind != "U"}, str(tmp),
                      metadata={"compress_embed": json.dumps(info)})


def embed_artifact(model_path: str | os.PathLike, output: str | os.PathLike,
                   config: EmbedConfig | None = None) -> EmbedResult:
    """The embed stage (see the module docstring). Writes ``output`` (.npz or .safetensors: arrays
    ``embeddings`` (N, D) float32, ``labels`` (N,) int64, ``tsne`` (M, 2) float32 and ``tsne_rows``
    (M,) int64, the rows of the map; ``parent_embeddings`` / ``parent_tsne`` with a parent;
    label names and the facts in ``info``), the PNG, and the JSON report ``output`` + .json."""
    from ..io import check_outputs, sidecar
    from ..io import write_json
    from .extract import embed_dataset, open_embedder
    from .space import knn_accuracy, linear_cka, plot_tsne, silhouette, tsne_2d

    cfg = (config or EmbedConfig()).validate()
    start = time.perf_counter()
    src, out = Path(model_path), Path(output)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"output {out} should end in .npz or .safetensors")
    plot = Path(cfg.plot) if cfg.plot else out.with_name(out.stem + ".tsne.png")
    if plot.suffix.lower() != ".png":
        raise UserError(f"plot {plot} should end in .png")
    parent = Path(cfg.parent) if cfg.parent else None
    check_outputs([out, plot, sidecar(out)], [src, parent])
    models = [open_embedder(src, device=cfg.device, threads=cfg.threads)]
    if parent is not None:
        models.append(open_embedder(parent, device=cfg.device, threads=cfg.threads))
    spec, recorded_seed = _resolve_spec(models[0].meta, cfg.data, str(src))
    seed = recorded_seed if cfg.data_seed is None else cfg.data_seed
    feats, labels, names = [], None, None
    for m in models:
        bundle, data = _load_split(m, spec, seed, cfg.split, cfg.data_root)
        f, y = embed_dataset(m, data, cfg.batch_size)
        if labels is not None and not np.array_equal(y, labels):
            raise UserError(f"{m.path} and {src} see different samples of {spec!r} (their preprocessing or split "
                            f"differs)")
        feats.append(f)
        labels, names = y.astype(np.int64), list(bundle.labels)
    n = len(labels)
    rows = np.arange(n) if cfg.max_points in (0, None) or cfg.max_points >= n else \
        np.sort(np.random.default_rng(cfg.seed).permutation(n)[:cfg.max_points])
    k = min(cfg.knn, len(rows) - 1)
    spaces, maps = [], []
    for m, f in zip(models, feats):
        sub = f[rows]
        stats = SpaceStats(m.name, m.engine, int(f.shape[1]), knn_accuracy(sub, labels[rows], k),
                           silhouette(sub, labels[rows]))
        spaces.append(stats)
        sil = "n/a" if stats.silhouette is None else f"{stats.silhouette:.3f}"
        maps.append((f"{m.name} ({stats.dim}-d): {k}-NN top-1 {100 * stats.knn_top1:.1f}%, silhouette {sil}",
                     tsne_2d(sub, cfg.seed, cfg.perplexity)))
    cka = linear_cka(feats[0][rows], feats[1][rows]) if len(feats) > 1 else None
    title = f"t-SNE of the embeddings: {spec} {cfg.split}, {len(rows)} points"
    if cka is not None:
        title += f"; linear CKA of the two spaces {cka:.3f}"
    plot_tsne(maps if len(maps) == 1 else maps[::-1], labels[rows], names, plot, suptitle=title)
    info = {"model": str(src), "parent": parent and str(parent), "data": spec, "split": cfg.split,
            "data_seed": seed, "label_names": names, "engine": models[0].engine}
    arrays = {"embeddings": feats[0], "labels": labels, "tsne": maps[0][1], "tsne_rows": rows.astype(np.int64),
              "label_names": np.array(names)}
    if parent is not None:
        arrays.update(parent_embeddings=feats[1], parent_tsne=maps[1][1])
    write_embeddings(out, arrays, info)
    result = EmbedResult(src, parent, spec, cfg.split, seed, n, len(rows), k, spaces, cka, out, plot, sidecar(out),
                         time.perf_counter() - start, cfg.to_dict())
    write_json(result.report_path, result.to_dict())
    return result


# ----------------------------------------------------------------------------- few-shot

def parse_class_list(text: str) -> list[int]:
    """``"5,6,7"``, ``"5-9"``, ``"0-2,7"`` (or ``+`` instead of ``,``) → class indices."""
    from ..data.classes import parse_classes

    try:
        return parse_classes(str(text).replace(",", "+"))
    except UserError as e:
        raise UserError(str(e).replace("data spec option classes=", "--classes ")) from None


def _without_class_view(spec: str) -> str:
    """``fashion-mnist:classes=0-4`` → ``fashion-mnist``: the full data set a class-subset model
    was trained on a view of (its other classes are the few-shot ones)."""
    from ..data.spec import split_spec_options

    base, options = split_spec_options(spec)
    options.pop("classes", None)
    return base + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")


@dataclass(kw_only=True)
class FewShotConfig(StageConfig):
    """Options of the few-shot stage (``compress fewshot``)."""

    data: str | None = option(None, help="data spec (default: the one the first model was trained on, without "
                                         "its classes= view)")
    split: str = option("test", choices=("train", "val", "test"), help="split the episodes are drawn from")
    data_seed: int | None = option(None, help="split seed (default: the training run's, else 0)")
    data_root: str | None = option(None, help="folder for cifar10/cifar100/fashion-mnist (default $COMPRESS_DATA_ROOT)")
    classes: str | None = option(None, help="the novel classes, as indices of the data set's classes: 5,6,7,8,9 or "
                                            "5-9 (default: the data set's classes the first model has no output for)")
    shots: int = option(5, check=(lambda v: v >= 1, "must be >= 1"), help="labelled images per class (K)")
    queries: int = option(15, check=(lambda v: v >= 1, "must be >= 1"), help="query images per class and episode")
    ways: int | None = option(None, check=(lambda v: v >= 2, "must be >= 2"),
                              help="classes per episode (N; default: all of --classes)")
    episodes: int = option(100, check=(lambda v: v >= 1, "must be >= 1"), help="random episodes")
    seed: int = option(0, help="seed of the episodes (the same for every model)")
    batch_size: int = option(256, check=(lambda v: v >= 1, "must be >= 1"), help="embedding batch size")
    threads: int = option(1, check=(lambda v: v >= 1, "must be >= 1"), help="ONNX Runtime threads (ONNX models)")
    device: str = option("cpu", help="cpu, cuda (PyTorch models)")


@dataclass
class FewShotRow:
    model: str
    engine: str
    dim: int
    mean: float  # accuracy in [0, 1]
    ci95: float  # half-width of the 95% interval of the mean
    std: float
    accuracies: list[float]
    # paired with the first model on the same episodes: mean of (this - first) and its 95% half-width
    delta: float | None = None
    delta_ci95: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FewShotResult:
    models: list[Path]
    data: str
    split: str
    data_seed: int
    classes: list[str]
    class_indices: list[int]
    ways: int
    shots: int
    queries: int
    episodes: int
    seed: int
    pool: int  # samples of the novel classes in the split
    rows: list[FewShotRow]
    report_path: Path
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"command": "fewshot", "models": [str(m) for m in self.models], "data": self.data,
                "split": self.split, "data_seed": self.data_seed, "classes": self.classes,
                "class_indices": self.class_indices, "ways": self.ways, "shots": self.shots,
                "queries": self.queries, "episodes": self.episodes, "seed": self.seed, "pool": self.pool,
                "results": [r.to_dict() for r in self.rows], "seconds": self.seconds, "config": self.config}


def fewshot_artifacts(model_paths: Sequence[str | os.PathLike], config: FewShotConfig | None = None, *,
                      report_path: str | os.PathLike | None = None) -> FewShotResult:
    """The few-shot stage: for each model, the embeddings of the novel classes' samples of the
    split, then nearest-prototype accuracy on the same seeded episodes; JSON report to
    ``report_path`` (default: the first model's name + ``.fewshot.json``)."""
    from ..data.imbalance import class_targets
    from ..data.loading import take
    from ..io import check_outputs, sidecar, write_json
    from .extract import embed_dataset, open_embedder
    from .prototypes import check_episode_shape, class_members, episode_accuracies, mean_interval, sample_episodes

    cfg = (config or FewShotConfig()).validate()
    start = time.perf_counter()
    paths = [Path(p) for p in model_paths]
    if not paths:
        raise UserError("give at least one model")
    (json_path,) = check_outputs([report_path or sidecar(paths[0], ".fewshot.json")], paths)
    embedders = [open_embedder(p, device=cfg.device, threads=cfg.threads) for p in paths]
    first = embedders[0]
    spec, recorded_seed = _resolve_spec(first.meta, cfg.data, str(first.path))
    if cfg.data is None:
        spec = _without_class_view(spec)
    seed = recorded_seed if cfg.data_seed is None else cfg.data_seed
    rows, labels, classes, names, episodes = [], None, None, None, None
    for m in embedders:
        bundle, data = _load_split(m, spec, seed, cfg.split, cfg.data_root)
        if classes is None:
            names = list(bundle.labels)
            if cfg.classes is not None:
                classes = parse_class_list(cfg.classes)
                bad = [c for c in classes if c >= len(names)]
                if bad:
                    raise UserError(f"--classes: {bundle.name!r} has classes 0-{len(names) - 1}, not {bad[0]}")
            else:
                known = set(first.meta.labels) if first.meta is not None else set()
                classes = [i for i, n in enumerate(names) if n not in known]
                if len(classes) < 2:
                    raise UserError(f"{first.path} has outputs for the classes of {spec!r}; give --classes (the "
                                    f"novel classes, e.g. 5-9)")
            ways = cfg.ways or len(classes)
            if ways > len(classes):
                raise UserError(f"--ways {ways} is more than the {len(classes)} classes given")
            all_targets = class_targets(data)
            pool_rows = np.flatnonzero(np.isin(all_targets, classes))
            check_episode_shape(class_members(all_targets, classes), cfg.shots, cfg.queries,
                                {i: n for i, n in enumerate(names)})
        feats, y = embed_dataset(m, take(data, pool_rows), cfg.batch_size)
        if labels is None:
            labels = y
            episodes = sample_episodes(labels, classes, shots=cfg.shots, queries=cfg.queries, episodes=cfg.episodes,
                                       ways=ways, seed=cfg.seed)
        elif not np.array_equal(y, labels):
            raise UserError(f"{m.path} and {first.path} see different samples of {spec!r}")
        accs = episode_accuracies(feats, episodes)
        mean, half = mean_interval(accs)
        row = FewShotRow(m.name, m.engine, int(feats.shape[1]), mean, half,
                         float(accs.std(ddof=1)) if len(accs) > 1 else 0.0, accs.tolist())
        if rows:  # the same episodes: the paired difference is much tighter than the two intervals
            row.delta, row.delta_ci95 = mean_interval(accs - np.asarray(rows[0].accuracies))
        rows.append(row)
    result = FewShotResult(paths, spec, cfg.split, seed, [names[c] for c in classes], classes, ways, cfg.shots,
                           cfg.queries, cfg.episodes, cfg.seed, len(labels), rows, json_path,
                           time.perf_counter() - start, cfg.to_dict())
    write_json(json_path, result.to_dict())
    return result
