"""The table `compress eval` prints (also printed by `compress pipeline`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tables import format_table

if TYPE_CHECKING:  # pragma: no cover
    from ..evaluate import EvalResult

MULTICLASS_ROWS = ["top1", "top5", "precision_macro", "recall_macro", "f1_macro"]
MULTILABEL_ROWS = ["map", "f1_micro", "f1_macro", "precision_micro", "recall_micro", "exact_match"]
COMMON_ROWS = ["far", "frr", "threshold", "eer", "eer_threshold", "loss", "n"]
RECALL_ROWS = 20  # the recall table lists every class up to this many, else the lowest of them


def format_eval(result: "EvalResult", per_class: bool = False) -> str:
    """The metrics of an evaluation, one per row, then the recall of each class (or label), or
    with ``per_class`` the whole per-class table."""
    from ..evaluate import scalar_metrics

    scalars = scalar_metrics(result.metrics)
    order = (MULTICLASS_ROWS if result.task == "multiclass" else MULTILABEL_ROWS) + COMMON_ROWS
    parts = [f"{result.model} on {result.data} [{result.split}, {result.n} samples]",
             format_table([{"metric": k, "value": scalars[k]} for k in order if k in scalars], ["metric", "value"])]
    table = result.metrics.get("per_class") or result.metrics.get("per_label") or {}
    if per_class:
        parts.append(format_table([{"label": lab, **vals} for lab, vals in table.items()]))
    elif table:
        parts.append(format_recall(table))
    return "\n".join(parts)


def format_recall(table: dict[str, dict[str, Any]], limit: int = RECALL_ROWS) -> str:
    """The "recall per class" table: label, recall and support, in class order; beyond ``limit`` classes
    only the ``limit`` lowest recalls (the classes an imbalance or a compression hurts first)."""
    rows = [{"label": lab, "recall": vals.get("recall"), "support": vals.get("support")} for lab, vals in table.items()]
    title = "recall per class"
    if len(rows) > limit:
        rows = sorted(rows, key=lambda r: (r["recall"] is None, r["recall"]))[:limit]
        title += f" (the {limit} lowest of {len(table)}; --per-class for all)"
    return f"{title}\n{format_table(rows, ['label', 'recall', 'support'])}"
