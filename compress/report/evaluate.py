"""The table `compress eval` prints (also printed by `compress pipeline`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tables import format_table

if TYPE_CHECKING:  # pragma: no cover
    from ..evaluate import EvalResult

MULTICLASS_ROWS = ["top1", "top5", "precision_macro", "recall_macro", "f1_macro"]
MULTILABEL_ROWS = ["map", "f1_micro", "f1_macro", "precision_micro", "recall_micro", "exact_match"]
COMMON_ROWS = ["far", "frr", "threshold", "eer", "eer_threshold", "loss", "n"]


def format_eval(result: "EvalResult", per_class: bool = False) -> str:
    """The metrics of an evaluation, one per row (and the per-class table with ``per_class``)."""
    from ..evaluate import scalar_metrics

    scalars = scalar_metrics(result.metrics)
    order = (MULTICLASS_ROWS if result.task == "multiclass" else MULTILABEL_ROWS) + COMMON_ROWS
    parts = [f"{result.model} on {result.data} [{result.split}, {result.n} samples]",
             format_table([{"metric": k, "value": scalars[k]} for k in order if k in scalars], ["metric", "value"])]
    if per_class:
        table = result.metrics.get("per_class") or result.metrics.get("per_label") or {}
        parts.append(format_table([{"label": lab, **vals} for lab, vals in table.items()]))
    return "\n".join(parts)
