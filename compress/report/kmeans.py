"""``compress quantize --kmeans-bits``: the k-means weight sharing result as terminal tables."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tables import format_table, human_bytes, human_count, pct, ratio

if TYPE_CHECKING:  # pragma: no cover
    from ..quantize.kmeans import KMeansResult

_STAGES = (("before", "input model"), ("kmeans", "shared (k-means)"), ("finetuned", "shared + fine-tuned"))


PER_LAYER_ROWS = 12  # more shared layers than this: one row per (kind, bits); the JSON has every layer


def _layer_rows(result: "KMeansResult") -> list[dict]:
    if len(result.layers) <= PER_LAYER_ROWS:
        return [{"layer": r.name, "kind": r.kind, "bits": r.bits, "weights": r.weights, "values": r.values,
                 "zeros": r.zeros} for r in result.layers]
    groups: dict[tuple[str, int], list] = {}
    for r in result.layers:
        groups.setdefault((r.kind, r.bits), []).append(r)
    return [{"layer": f"{len(rs)} {kind} layers", "kind": kind, "bits": bits,
             "weights": sum(r.weights for r in rs), "values": f"<= {max(r.values for r in rs)}",
             "zeros": sum(r.zeros for r in rs)} for (kind, bits), rs in groups.items()]


def format_kmeans(result: "KMeansResult") -> str:
    """The shared layers (one row each, or per kind and bits when there are many): kind, bits,
    weights, distinct values, zeros kept; then the accuracy of the input, the shared and the
    fine-tuned model per split; then the storage estimate."""
    parts = [format_table(_layer_rows(result), ["layer", "kind", "bits", "weights", "values", "zeros"])]
    if result.unshared:
        names = ", ".join(result.unshared[:6]) + (f" and {len(result.unshared) - 6} more"
                                                 if len(result.unshared) > 6 else "")
        parts.append(f"left unshared (fewer than {result.params['min_weights']} weights): {names}")
    acc = result.accuracy
    splits = [s for s in ("val", "test") if any(s in acc.get(k, {}) for k, _ in _STAGES)]
    if splits:
        metric = acc.get("metric", "top1")
        table = [{"": label, **{f"{s} {metric}": pct(acc[key].get(s), 2) for s in splits}}
                 for key, label in _STAGES if key in acc]
        parts.append(format_table(table, ["", *(f"{s} {metric}" for s in splits)]))
    else:
        parts.append("accuracy not measured (no data set recorded or given; --data names one)")
    p = result.params
    if acc.get("finetune_reverted"):
        parts.append("fine-tuning lowered the validation accuracy: the k-means centroids were kept (try a lower --lr)")
    if p.get("finetune_epochs"):
        crit = p.get("criterion") or {}
        how = (f"distilled from the unquantized model (loss {crit.get('loss')}, T={crit.get('temperature')}; "
               f"--no-distill for labels only)") if p.get("distill") else "labels only (no distillation)"
        parts.append(f"centroids fine-tuned {p['finetune_epochs']} epoch(s), gradients summed per cluster: {how}")
    s = result.storage
    parts.append(f"storage (indices + fp32 codebooks, before Huffman): shared layers "
                 f"{human_count(s['shared_weights'])} weights {ratio(s['shared_layers_ratio'])} smaller than fp32; "
                 f"whole model {ratio(s['model_ratio'])} ({human_bytes(s['model_bits'] / 8)} vs "
                 f"{human_bytes(s['model_fp32_bits'] / 8)})")
    f = result.file_bytes
    if f:
        parts.append(f"file: {human_bytes(f['input'])} -> {human_bytes(f['output'])} (uint8 indices); "
                     f"{result.seconds:.1f} s")
    return "\n".join(parts)
