"""The INT8 quantize stage's result as a person reads it: what was tried, what was chosen."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tables import format_table, human_bytes, pct, ratio

if TYPE_CHECKING:  # pragma: no cover
    from ..quantize.api import QuantizeResult

_ORDER = {"chosen": 0, "passed": 1, "below threshold": 2, "not scored": 3, "failed": 4, "untried": 5}


def format_quantize(result: "QuantizeResult") -> str:
    """The candidates (fastest first), then the chosen one against fp32."""
    timing = result.timing
    rows = []
    for t in sorted(result.trials, key=lambda t: (t["p50_ms"] is None, t["p50_ms"] or 0, _ORDER.get(t["status"], 9))):
        rows.append({"candidate": t["label"], "p50 ms": round(t["p50_ms"], 3) if t["p50_ms"] else None,
                     "speedup": ratio(t["speedup"]), "agreement": pct(t["agreement"], 2), "status": t["status"],
                     "note": t["note"] or None})
    head = (f"INT8 candidates ({result.mode}; ONNX Runtime, batch {timing['batch']}, {timing['threads']} thread(s), "
            f"{timing['input']}, interleaved with fp32 at p50 "
            f"{result.fp32_ms:.3f} ms)" if result.fp32_ms else f"INT8 candidates ({result.mode})")
    parts = [head, format_table(rows)]
    if result.chosen:
        c = result.chosen
        summary = [{"": "fp32", "p50 ms": round(result.fp32_ms, 3) if result.fp32_ms else None,
                    "size": human_bytes(result.fp32_bytes) if result.fp32_bytes else None,
                    "test acc": pct(result.fp32_test, 2), "agreement": None},
                   {"": "int8", "p50 ms": round(c["p50_ms"], 3) if c["p50_ms"] else None,
                    "size": human_bytes(result.int8_bytes) if result.int8_bytes else None,
                    "test acc": pct(result.int8_test, 2),
                    "agreement": f"{pct(result.agreement, 2)} held-out"
                                 + (f", {pct(result.test_agreement, 2)} test" if result.test_agreement is not None
                                    else "")}]
        parts += ["", f"chosen: {c['label']}, {ratio(c['speedup'])} faster than fp32", format_table(summary)]
    if result.sensitivity:
        top = ", ".join(f"{s['node']} ({s['sqnr_drop_db']:.1f} dB)" for s in result.sensitivity[:5])
        parts.append(f"most sensitive nodes (SQNR drop): {top}")
    if result.qat:
        q = result.qat
        parts.append(f"QAT: {'ran' if q['ran'] else 'not run'}, {'needed' if q['needed'] else 'not needed'} "
                     f"({q['why']})" + (f"; {q['epochs']} epoch(s){' distilled' if q['distill'] else ''}, agreement "
                                        f"{pct(q['agreement_before'], 2)} -> {pct(q['agreement_after'], 2)}"
                                        if q.get("agreement_after") is not None else ""))
    parts += [f"data: {', '.join(f'{k} {v}' for k, v in result.data.items())}"]
    parts += [f"note: {n}" for n in result.notes]
    return "\n".join(parts)
