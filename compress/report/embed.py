"""The tables `compress embed` and `compress fewshot` print."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tables import format_table

if TYPE_CHECKING:  # pragma: no cover
    from ..embed.api import EmbedResult, FewShotResult


def format_embed(result: "EmbedResult") -> str:
    """One row per model: engine, embedding width, k-NN top-1 and silhouette on the chosen points;
    then the CKA of the two spaces (with a parent) and the files written."""
    rows = [{"model": s.model, "engine": s.engine, "dim": s.dim, f"{result.knn}-NN top-1": f"{100 * s.knn_top1:.2f}%",
             "silhouette": None if s.silhouette is None else round(s.silhouette, 4)} for s in result.spaces]
    parts = [f"embeddings of {result.data} [{result.split}, {result.n} samples; statistics and t-SNE on "
             f"{result.points}]", format_table(rows)]
    if result.cka is not None:
        parts.append(f"linear CKA of the two spaces: {result.cka:.4f} (1 = same geometry up to rotation and scale)")
    parts.append(f"wrote {result.output}, {result.plot} and {result.report_path}")
    return "\n".join(parts)


def format_fewshot(result: "FewShotResult") -> str:
    """One row per model: mean accuracy over the episodes ± the half-width of its 95% interval;
    with several models, each one's paired difference from the first on the same episodes."""
    rows = [{"model": r.model, "engine": r.engine, "dim": r.dim, "accuracy": f"{100 * r.mean:.2f}%",
             "95% interval": f"± {100 * r.ci95:.2f}", "std": f"{100 * r.std:.2f}",
             "min": f"{100 * min(r.accuracies):.1f}%", "max": f"{100 * max(r.accuracies):.1f}%",
             **({"vs first (paired)": "-" if r.delta is None else f"{100 * r.delta:+.2f} ± {100 * r.delta_ci95:.2f}"}
                if len(result.rows) > 1 else {})} for r in result.rows]
    head = (f"{result.ways}-way {result.shots}-shot, {result.queries} queries per class, {result.episodes} episodes "
            f"(seed {result.seed}) on {result.data} [{result.split}]: classes {', '.join(result.classes)} "
            f"({result.pool} samples)")
    return "\n".join([head, format_table(rows), f"wrote {result.report_path}"])
