"""Few-shot classes without retraining: nearest class prototype by cosine similarity (Snell et
al. 2017, "Prototypical Networks", with the cosine form of Chen et al. 2019, "A Closer Look at
Few-shot Classification"), on a frozen backbone's embeddings. Numpy only (the service uses the
same arithmetic on ONNX Runtime's ``embedding`` output).

    clf = PrototypeClassifier()
    clf.add_class("sandal", support_embeddings)      # a handful of (k, D) embeddings
    clf.predict(query_embeddings)                     # (N,) class indices, by cosine similarity

A prototype is the mean of the class's L2-normalised embeddings, normalised again (so a dot
product is a cosine similarity). :func:`episode_accuracies` is the standard N-way K-shot
benchmark: random episodes of ``shots`` support and ``queries`` query images per class, drawn
with a seeded generator, accuracy per episode; :func:`mean_interval` gives the mean and the
half-width of its 95% interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UserError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32; an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def prototype(embeddings: np.ndarray) -> np.ndarray:
    """One class prototype (D,): the mean of the L2-normalised ``embeddings`` (k, D), normalised."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise UserError(f"a prototype needs at least one embedding of shape (k, D), got {embeddings.shape}")
    return l2_normalize(l2_normalize(embeddings).mean(axis=0))


def cosine_scores(queries: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """(N, C) cosine similarities of ``queries`` (N, D) to unit ``prototypes`` (C, D)."""
    return l2_normalize(queries) @ np.asarray(prototypes, dtype=np.float32).T


def nearest_prototype(queries: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """(N,) index of the most similar prototype of each query (highest cosine similarity)."""
    return np.argmax(cosine_scores(queries, prototypes), axis=1)


class PrototypeClassifier:
    """New classes from a few labelled embeddings each: ``add_class`` then ``predict``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._protos: list[np.ndarray] = []

    @property
    def prototypes(self) -> np.ndarray:
        """(C, D) unit prototypes, in the order the classes were added."""
        if not self._protos:
            raise UserError("no classes yet: add_class() first")
        return np.stack(self._protos)

    def add_class(self, name: str, embeddings: np.ndarray) -> None:
        """Add (or replace) class ``name`` from its support embeddings (k, D)."""
        p = prototype(embeddings)
        if self._protos and p.shape != self._protos[0].shape:
            raise UserError(f"class {name!r} has {p.shape[0]}-d embeddings, the others {self._protos[0].shape[0]}-d")
        if name in self.names:
            self._protos[self.names.index(name)] = p
        else:
            self.names.append(name)
            self._protos.append(p)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return cosine_scores(embeddings, self.prototypes)

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return nearest_prototype(embeddings, self.prototypes)


@dataclass
class Episode:
    """One N-way K-shot episode: sample indices into the pool, and the way (0..N-1) of each."""

    classes: list[int]  # the pool's class ids, in way order
    support: np.ndarray  # (N * shots,)
    support_ways: np.ndarray
    query: np.ndarray  # (N * queries,)
    query_ways: np.ndarray


def class_members(labels: np.ndarray, classes: Sequence[int]) -> dict[int, np.ndarray]:
    """The indices of each of ``classes`` in ``labels``."""
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in classes}


def check_episode_shape(members: dict[int, np.ndarray], shots: int, queries: int, names: dict[int, str] | None = None
                        ) -> None:
    """:class:`UserError` when a class has fewer than ``shots + queries`` samples."""
    if shots < 1 or queries < 1:
        raise UserError(f"shots and queries must be >= 1, got {shots} and {queries}")
    for c, idx in members.items():
        if len(idx) < shots + queries:
            name = (names or {}).get(c, str(c))
            raise UserError(f"class {name!r} has {len(idx)} samples in the split, fewer than shots + queries = "
                            f"{shots} + {queries}; lower --shots or --queries")


def sample_episodes(labels: np.ndarray, classes: Sequence[int], *, shots: int, queries: int, episodes: int,
                    ways: int | None = None, seed: int = 0) -> list[Episode]:
    """``episodes`` random episodes over the samples ``labels`` (N,) of the pool: each picks
    ``ways`` of ``classes`` (default: all, in the given order) and, per class, ``shots`` support and
    ``queries`` query samples without overlap. The same arguments give the same episodes."""
    classes = [int(c) for c in classes]
    ways = len(classes) if ways is None else int(ways)
    if len(set(classes)) != len(classes) or not 2 <= ways <= len(classes):
        raise UserError(f"an episode needs 2 <= ways <= {len(classes)} distinct classes, got ways={ways} of {classes}")
    if episodes < 1:
        raise UserError(f"episodes must be >= 1, got {episodes}")
    members = class_members(labels, classes)
    check_episode_shape(members, shots, queries)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        chosen = classes if ways == len(classes) else [classes[i] for i in sorted(rng.choice(len(classes), ways,
                                                                                          replace=False))]
        support, query = [], []
        for c in chosen:
            pick = rng.choice(members[c], shots + queries, replace=False)
            support.append(pick[:shots])
            query.append(pick[shots:])
        out.append(Episode(chosen, np.concatenate(support), np.repeat(np.arange(ways), shots),
                           np.concatenate(query), np.repeat(np.arange(ways), queries)))
    return out


def episode_accuracy(embeddings: np.ndarray, episode: Episode) -> float:
    """Nearest-prototype accuracy on the episode's queries (prototypes from its support)."""
    protos = np.stack([prototype(embeddings[episode.support[episode.support_ways == w]])
                       for w in range(len(episode.classes))])
    return float(np.mean(nearest_prototype(embeddings[episode.query], protos) == episode.query_ways))


def episode_accuracies(embeddings: np.ndarray, episodes: Sequence[Episode]) -> np.ndarray:
    """(E,) accuracy of each episode, in [0, 1]."""
    return np.array([episode_accuracy(embeddings, e) for e in episodes], dtype=np.float64)


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """(mean, half-width of its ``z`` interval): ``z * s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof 1), the normal approximation the few-shot literature reports as ± (95% by
    default). One value: half-width 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise UserError("no values to average")
    half = 0.0 if v.size == 1 else z * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()), half
