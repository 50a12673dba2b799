"""Numbers that summarise an embedding space, and its t-SNE picture.

* :func:`knn_accuracy`: leave-one-out k-nearest-neighbour top-1 by cosine similarity (each point
  classified by a similarity-weighted vote of its ``k`` nearest other points): how well the
  classes separate locally, the way a few-shot or retrieval system uses the space.
* :func:`silhouette`: scikit-learn's silhouette score with the cosine distance, in [-1, 1]: how
  compact and apart the classes are as wholes.
* :func:`linear_cka`: linear centred kernel alignment (Kornblith et al. 2019) of two models'
  embeddings of the same points, in [0, 1]: 1 = the same geometry up to rotation and scale.
* :func:`tsne_2d` and :func:`plot_tsne`: a seeded t-SNE map per model, side by side, coloured
  by class.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from .prototypes import l2_normalize


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN top-1 in [0, 1] (cosine similarity, similarity-weighted vote)."""
    n = len(features)
    if not 1 <= k < n:
        raise UserError(f"k-NN needs 1 <= k < number of points, got k={k} for {n} points")
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    x = l2_normalize(features)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    weights = np.take_along_axis(sims, nearest, axis=1)
    votes = np.zeros((n, len(classes)))
    np.add.at(votes, (np.repeat(np.arange(n), k), y[nearest].ravel()), weights.ravel())
    return float(np.mean(votes.argmax(axis=1) == y))


def silhouette(features: np.ndarray, labels: np.ndarray) -> float | None:
    """Silhouette score with the cosine distance; ``None`` with fewer than 2 classes."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if not 2 <= len(np.unique(labels)) <= len(labels) - 1:
        return None
    return float(silhouette_score(l2_normalize(features), labels, metric="cosine"))


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA of two embeddings (N, D1), (N, D2) of the same N points."""
    if len(a) != len(b):
        raise UserError(f"CKA needs the same points: {len(a)} vs {len(b)}")
    x = np.asarray(a, dtype=np.float64) - np.mean(a, axis=0)
    y = np.asarray(b, dtype=np.float64) - np.mean(b, axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else 0.0


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, 2) t-SNE map of the L2-normalised ``features`` (scikit-learn, PCA initialisation,
    ``random_state=seed``: the same input gives the same map). The perplexity is capped at
    (N - 1) / 3 so small sets work."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 5:
        raise UserError(f"t-SNE needs at least 5 points, got {n}")
    perplexity = float(min(perplexity, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(l2_normalize(features).astype(np.float64)).astype(np.float32)


def plot_tsne(maps: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, label_names: Sequence[str],
              path: str | os.PathLike, *, suptitle: str = "") -> Path:
    """One scatter panel per (title, (N, 2) map), the same points in each, coloured by class,
    with one legend of class names; written atomically as a PNG."""
    from ..report.plots import _pyplot, _save

    plt = _pyplot()
    from matplotlib.lines import Line2D

    labels = np.asarray(labels)
    present = [int(c) for c in np.unique(labels)]
    cmap = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
    colors = {c: cmap(i % cmap.N) for i, c in enumerate(present)}
    fig, axes = plt.subplots(1, len(maps), figsize=(6.2 * len(maps), 6.0), squeeze=False)
    for ax, (title, xy) in zip(axes[0], maps):
        ax.scatter(xy[:, 0], xy[:, 1], c=[colors[int(c)] for c in labels], s=7, alpha=0.8, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=colors[c], marker="o", linestyle="",
                      label=label_names[c] if c < len(label_names) else str(c)) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=8, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95 if suptitle else 1))
    return _save(fig, path, dpi=100)
