"""``compress huffman``: the container's sizes in the form of Deep Compression's tables (Han et al.
2016, table 2: weights kept, bits per weight before and after Huffman, index bits, ratio), with
the entropy bound and the ANS figure beside Huffman's, then the file's totals and accuracy."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .tables import format_table, human_bytes, human_count, pct, ratio

if TYPE_CHECKING:  # pragma: no cover
    from ..huffman.api import EncodeResult

PER_LAYER_ROWS = 16  # more coded tensors than this: one row per kind (conv, dw, fc); the JSON has all
COLUMNS = ["layer", "weights", "kept", "bits P+Q", "bits P+Q+H", "index bits P+Q", "index bits P+Q+H",
           "stream bits", "entropy bits", "codebook", "bytes", "ratio P+Q", "ratio P+Q+H"]


def _bits(n_bits: float, per: int) -> float | None:
    return round(n_bits / per, 2) if per else None


def _row(label: str, ts: list[dict]) -> dict[str, Any]:
    """One table row over coded tensors ``ts`` (TensorStats dicts). Bits are per stored weight
    as in the paper (sparse layout: kept + fillers; dense: every weight); P+Q is the fixed-width
    form: log2(codebook) bits per weight plus, for the sparse layout, the b-bit relative index
    (per weight stored sparsely). "stream bits" is the coded weight and index streams together
    per stored weight, "entropy bits" their Shannon bound."""
    count = sum(t["count"] for t in ts)
    kept = sum(t["kept"] for t in ts)
    stored = sum(t["kept"] + t.get("fillers", 0) if t["layout"] == "sparse" else t["count"] for t in ts)
    q_bits = sum(math.ceil(math.log2(max(t["codebook_bytes"] // 4, 2)))
                 * (t["kept"] + t.get("fillers", 0) if t["layout"] == "sparse" else t["count"]) for t in ts)
    idx_bits = sum(t["index_bits"] * (t["kept"] + t.get("fillers", 0)) for t in ts if t["layout"] == "sparse")
    sparse_stored = sum(t["kept"] + t.get("fillers", 0) for t in ts if t["layout"] == "sparse")
    side = sum(t["codebook_bytes"] + t["scale_bytes"] + t["table_bytes"] for t in ts)
    payload = sum(t["weights_bytes"] + t["index_bytes"] + t["table_bytes"] + t["codebook_bytes"]
                  + t["scale_bytes"] for t in ts)
    pq_bytes = (q_bits + idx_bits) / 8 + side
    return {"layer": label, "weights": human_count(count), "kept": pct(kept / count if count else None),
            "bits P+Q": _bits(q_bits, stored), "bits P+Q+H": _bits(sum(t["weights_bytes"] for t in ts) * 8, stored),
            "index bits P+Q": _bits(idx_bits, sparse_stored) if sparse_stored else None,
            "index bits P+Q+H": _bits(sum(t["index_bytes"] for t in ts) * 8, sparse_stored) if sparse_stored else None,
            "stream bits": _bits(sum(t["weights_bytes"] + t["index_bytes"] for t in ts) * 8, stored),
            "entropy bits": _bits(sum(t["weights_entropy_bits"] + t["index_entropy_bits"] for t in ts), stored),
            "codebook": human_bytes(sum(t["codebook_bytes"] for t in ts)), "bytes": human_bytes(payload),
            "ratio P+Q": ratio(count * 4 / pq_bytes) if pq_bytes else None,
            "ratio P+Q+H": ratio(count * 4 / payload) if payload else None}


def layer_rows(stats: dict, kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Rows per coded tensor (or per kind when there are many), then the total over them."""
    coded = [t for t in stats["tensors"] if t["kind"] == "shared"]
    if len(coded) <= PER_LAYER_ROWS:
        rows = [_row(t["name"].removesuffix(".weight"), [t]) for t in coded]
    else:
        groups: dict[str, list[dict]] = {}
        for t in coded:
            groups.setdefault(kinds.get(t["name"], "other"), []).append(t)
        rows = [_row(f"{len(ts)} {kind} layers", ts) for kind, ts in groups.items()]
    if coded:
        rows.append(_row("coded total", coded))
    return rows


def format_stats(stats: dict, header: dict) -> str:
    """The size table of a container (``dcz.Stats.to_dict()`` and its header) and its totals
    (for an ANS-coded file the "H" columns are the ANS streams)."""
    parts = [format_table(layer_rows(stats, header.get("kinds") or {}), COLUMNS)]
    raw = [t for t in stats["tensors"] if t["kind"] == "raw"]
    total = stats["total"]
    file_bytes = stats["total_bytes"]
    parts.append(f"other tensors (biases, folded BatchNorm, small layers): {len(raw)}, "
                 f"{human_bytes(sum(t['raw_bytes'] for t in raw))}; scales {human_bytes(total['scale_bytes'])}; "
                 f"header {human_bytes(stats['header_bytes'])}; ONNX graph {human_bytes(stats['graph_bytes'])}; "
                 f"file {human_bytes(file_bytes)}")
    streams = total["stream_bytes"]
    coder = "ANS" if any(t.get("coder") == "ans" for t in stats["tensors"]) else "Huffman"
    line = (f"coded streams: {coder} {human_bytes(streams)} + tables {human_bytes(total['table_bytes'])}; "
            f"entropy bound {human_bytes(total['entropy_bytes'])}"
            + (f" ({coder} +{100 * (streams / total['entropy_bytes'] - 1):.1f}%)" if total["entropy_bytes"] else ""))
    if coder == "Huffman" and total.get("ans_stream_bytes") is not None:
        line += (f"; ANS {human_bytes(total['ans_stream_bytes'])} + tables "
                 f"{human_bytes(total['ans_table_bytes'])}")
    parts.append(line)
    quantized = header.get("quantized") or {}
    if quantized:
        kinds: dict[str, int] = {}
        for how in quantized.values():
            kinds[how] = kinds.get(how, 0) + 1
        parts.append("codebooks: " + ", ".join(f"{n} {how}" for how, n in sorted(kinds.items())))
    return "\n".join(parts)


def format_encode(result: "EncodeResult") -> str:
    """The size table, the file against fp32 and the input, the accuracy of the input and the
    decoded model, and the notes."""
    parts = [format_stats(result.stats, {"kinds": result.kinds, "quantized": result.quantized})]
    s = result.sizes
    parts.append(f"{result.output}: {human_bytes(s['dcz_bytes'])}, {ratio(s['ratio_fp32'])} smaller than fp32 "
                 f"({human_bytes(s['fp32_bytes'])}), {ratio(s['ratio_input'])} smaller than the input file "
                 f"({human_bytes(s['input_bytes'])}); coder {result.params['coder']}")
    acc = result.accuracy
    if acc.get("decoded"):
        metric = acc.get("metric", "top1")
        splits = list(acc["decoded"])
        rows = [{"": label, **{f"{sp} {metric}": pct(acc[key].get(sp), 2) for sp in splits}}
                for key, label in (("input", "input model"), ("decoded", "decoded .dcz")) if key in acc]
        parts.append(format_table(rows, ["", *(f"{sp} {metric}" for sp in splits)]))
    else:
        parts.append("accuracy not measured (no data set recorded or given, or --no-measure)")
    t = result.timing
    parts.append(f"encode {t.get('encode_seconds', 0):.2f} s, decode {t.get('decode_seconds', 0):.2f} s "
                 f"(container only), {t.get('seconds', 0):.1f} s in all")
    parts += [f"note: {n}" for n in result.notes]
    return "\n".join(parts)
