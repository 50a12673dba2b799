"""The tables `compress train` and `compress distill` print (also printed by `compress pipeline`)."""
from __future__ import annotations

import json
from typing import Any

from .tables import format_table, human_count


def format_train(report: dict[str, Any], image_size: int) -> str:
    """Validation (best epoch) and test metrics, then the model's size and the run's length."""
    cols = ["top1", "top5", "f1_macro", "far", "frr", "loss"] if report["data"]["task"] == "multiclass" else \
        ["map", "f1_micro", "f1_macro", "exact_match", "far", "frr", "loss"]
    res = report["result"]
    test = res["test_scalars"]
    table = format_table([{"split": "val (best)", **{c: res["val"].get(c) for c in cols}},
                          {"split": "test", **{c: test.get(c) for c in cols}}], ["split", *cols])
    m = report["model"]
    return (f"{table}\n{m['arch']} {json.dumps(m['kwargs'])}: {human_count(m['params'])} params, "
            f"{human_count(m['macs'])} MACs at {image_size}px; best epoch {res['best_epoch']}/{res['epochs_run']}, "
            f"{res['seconds']:.1f} s")


def format_distill(report: dict[str, Any]) -> str:
    """Teacher and student side by side (params, MACs, test metric), then the loss used."""
    key = "top1" if report["data"]["task"] == "multiclass" else "map"
    t, s = report["teacher"], report["student"]
    teacher_value = (t["test"] or {}).get(key, t.get("recorded_" + key))
    rows = [{"model": f"teacher {t['arch']}", "params": human_count(t["params"]), "MACs": human_count(t["macs"]),
             f"test {key}": teacher_value},
            {"model": f"student {s['arch']}", "params": human_count(s["params"]), "MACs": human_count(s["macs"]),
             f"test {key}": report["result"]["test_scalars"][key]}]
    crit = report["config"]["criterion"]
    return (f"{format_table(rows, ['model', 'params', 'MACs', f'test {key}'])}\n"
            f"loss {crit.get('loss')} (T={crit.get('temperature')}), teacher logits "
            f"{crit.get('teacher_logits', 'computed every step')}; best epoch {report['result']['best_epoch']}/"
            f"{report['result']['epochs_run']}, {report['result']['seconds']:.1f} s")
