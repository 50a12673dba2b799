"""The report of `compress pipeline` (compress.report.pipeline): built from a synthetic state and
synthetic stage reports shaped like the real ones (train, structured prune, export, INT8, k-means,
Huffman, bench); every expected figure is computed here from those inputs."""
from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compress.report.pipeline import FIGURE_NAMES, build_view, write_pipeline_report

PNG = b"\x89PNG\r\n\x1a\n"
RECIPE_TEXT = "name: demo\n# a <script>alert('x')</script> & friends\nstages:\n  - train: {name: base}\n"

# bench figures: (model, stage, engine, precision, file_bytes, stored_bytes, accuracy, agreement)
VARIANTS = [
    ("base.safetensors", "base", "pytorch", "fp32", 90_000, None, 0.95, 1.0),
    ("pruned_onnx.onnx", "pruned_onnx", "onnxruntime", "fp32", 23_000, None, 0.94, 0.97),
    ("pruned_int8.onnx", "pruned_int8", "onnxruntime-int8", "int8", 6_100, None, 0.935, 0.96),
    # stored_bytes differs from file_bytes only so that the test tells which one the ratio uses
    ("pruned_dcz.dcz", "pruned_dcz", "pytorch", "fp32", 3_700, 3_500, 0.9375, 0.965),
]
# (model, batch) -> (p50_ms, p99_ms)
LATENCY = {
    ("base.safetensors", 1): (20.0, 25.0), ("base.safetensors", 8): (120.0, 140.0),
    ("pruned_onnx.onnx", 1): (8.0, 9.5), ("pruned_onnx.onnx", 8): (40.0, 44.0),
    ("pruned_int8.onnx", 1): (3.2, 4.1), ("pruned_int8.onnx", 8): (14.0, 16.5),
    ("pruned_dcz.dcz", 1): (19.0, 23.0), ("pruned_dcz.dcz", 8): (118.0, 130.0),
}
# stage outputs and their size on disk (bytes)
OUTPUTS = {"base": ("base.safetensors", 90_000), "pruned": ("pruned.safetensors", 24_000),
           "pruned_onnx": ("pruned_onnx.onnx", 23_000), "pruned_int8": ("pruned_int8.onnx", 6_100),
           "pruned_k4": ("pruned_k4.safetensors", 24_500), "pruned_dcz": ("pruned_dcz.dcz", 3_700),
           "bench": ("bench.json", None)}
CHANNELS = {"features.2.conv.0": [32, 16], "features.1.conv.0": [16, 12]}  # listed backwards, as the pruner does
SHARED = [  # Huffman-coded tensors: bits per weight = 8 * (weights_bytes + index_bytes) / count
    {"name": "features.1.conv.0.weight", "kind": "shared", "layout": "dense", "count": 400, "kept": 300,
     "fillers": 0, "index_bits": 2, "weights_bytes": 105, "index_bytes": 0, "table_bytes": 10,
     "codebook_bytes": 16, "scale_bytes": 0, "raw_bytes": 0, "weights_entropy_bits": 800.0, "index_entropy_bits": 0.0},
    {"name": "features.2.conv.0.weight", "kind": "shared", "layout": "sparse", "count": 1000, "kept": 200,
     "fillers": 10, "index_bits": 4, "weights_bytes": 80, "index_bytes": 70, "table_bytes": 20,
     "codebook_bytes": 16, "scale_bytes": 0, "raw_bytes": 0, "weights_entropy_bits": 600.0,
     "index_entropy_bits": 500.0},
    {"name": "features.0.1.bias", "kind": "raw", "layout": "raw", "count": 16, "kept": 16, "fillers": 0,
     "index_bits": 0, "weights_bytes": 0, "index_bytes": 0, "table_bytes": 0, "codebook_bytes": 0,
     "scale_bytes": 0, "raw_bytes": 64, "weights_entropy_bits": 0.0, "index_entropy_bits": 0.0},
]
KMEANS_LAYERS = [{"name": "features.1.conv.0", "kind": "conv", "bits": 4, "weights": 400, "zeros": 100},
                 {"name": "features.2.conv.0", "kind": "conv", "bits": 3, "weights": 1000, "zeros": 800}]


def _reports(out: Path) -> dict[str, dict]:
    """Stage reports shaped like the real ones (runs/.../*.json), cut down to what matters."""
    return {
        "base": {"command": "train", "model": {"arch": "mobilenet_v2", "params": 2_236_682, "macs": 87_976_448},
                 "result": {"seconds": 80.1, "val": {"top1": 0.96}, "test_scalars": {"top1": 0.95, "n": 270}}},
        "pruned": {"command": "prune", "params": {"mode": "structured", "ratio": 0.5},
                   "before": {"params": 2_236_682, "macs": 87_976_448, "top1": 0.95, "file_bytes": 90_000},
                   "after": {"params": 588_250, "macs": 24_769_792, "top1": 0.9412, "file_bytes": 24_000},
                   "channels": CHANNELS, "seconds": 77.8},
        "pruned_onnx": {"path": str(out / "pruned_onnx.onnx"), "opset": 17, "nodes": 170, "file_bytes": 23_000,
                        "max_abs_diff": 3.9e-06, "command": "export"},
        "pruned_int8": {"stage": "quantize", "mode": "int8",
                        "chosen": {"label": "QOPERATOR U8S8 per-tensor percentile", "speedup": 1.63},
                        "agreement": 0.9945, "test_agreement": 0.9941, "fp32_test_accuracy": 0.94,
                        "int8_test_accuracy": 0.935, "fp32_bytes": 23_000, "int8_bytes": 6_100},
        "pruned_k4": {"command": "quantize", "mode": "kmeans", "params": {"bits": {"conv": 4, "fc": 4}},
                      "layers": KMEANS_LAYERS, "storage": {"params": 588_250, "model_ratio": 7.21},
                      "accuracy": {"metric": "top1", "before": {"test": 0.9412}, "kmeans": {"test": 0.93},
                                   "finetuned": {"test": 0.9375}}},
        "pruned_dcz": {"sizes": {"fp32_bytes": 2_300_000, "dcz_bytes": 3_700, "ratio_fp32": 621.62},
                       "stats": {"tensors": SHARED}, "accuracy": {"metric": "top1", "decoded": {"test": 0.9375}}},
    }


def _bench() -> dict:
    variants = [{"model": m, "path": None, "engine": e, "precision": p, "params": 588_250, "macs": 24_769_792,
                 "file_bytes": fb, "stored_bytes": sb, "size_ratio": fb / VARIANTS[0][4], "accuracy": acc,
                 "accuracy_metric": "top1", "agreement": agr} for m, _s, e, p, fb, sb, acc, agr in VARIANTS]
    results = [{"model": m, "engine": "x", "batch": b, "threads": 2, "p50_ms": p50, "p90_ms": p50, "p99_ms": p99,
                "speedup": LATENCY[(VARIANTS[0][0], b)][0] / p50} for (m, b), (p50, p99) in LATENCY.items()]
    return {"machine": {"cpu": "Test CPU"}, "config": {"command": "compress bench ..."}, "variants": variants,
            "results": results, "warnings": []}


def make_run(root: Path, *, bench: bool = True, recipe_name: str = "demo") -> tuple[Path, dict]:
    """A finished pipeline run in ``root``/out: outputs of the right sizes, their reports, a bench
    report, and the state the runner passes to write_pipeline_report."""
    out = root / "out"
    out.mkdir(parents=True)
    reports = _reports(out)
    stages = []
    for name, (file_name, size) in OUTPUTS.items():
        if name == "bench" and not bench:
            continue
        path = out / file_name
        if size is not None:
            with open(path, "wb") as f:
                f.truncate(size)
        report = None
        if name in reports:
            report = path.with_name(path.name + ".json")
            report.write_text(json.dumps(reports[name]))
        kind = {"base": "train", "pruned": "prune", "pruned_onnx": "export", "pruned_int8": "quantize",
                "pruned_k4": "quantize", "pruned_dcz": "huffman", "bench": "bench"}[name]
        mode = {"pruned_int8": "int8", "pruned_k4": "kmeans"}.get(name)
        status = "skipped" if name == "pruned_onnx" else "ran"
        stages.append({"name": name, "type": kind, "mode": mode, "status": status, "inputs": {}, "output": str(path),
                       "report": str(report) if report else None, "seconds": 10.0 + len(stages),
                       "command": f"compress {kind} --stage {name} -o {path}", "config": {}})
    if bench:
        data = _bench()
        for v, (_m, stage, *_rest) in zip(data["variants"], VARIANTS):
            v["path"] = str(out / OUTPUTS[stage][0])
        (out / "bench.json").write_text(json.dumps(data))
    state = {"recipe": {"name": recipe_name, "path": "recipes/demo.yaml", "sha256": "0" * 64, "text": RECIPE_TEXT},
             "out_dir": str(out), "command": f"compress pipeline recipes/demo.yaml -o {out}",
             "machine": {"cpu": "Test CPU", "usable_cores": 2, "logical_cpus": 2, "os": "Linux", "python": "3.11",
                         "versions": {"torch": "2.x"}, "load_average": [0.5, 0.5, 0.5]},
             "started": "2026-11-24T15:40:00+00:00", "finished": "2026-11-24T15:45:21+00:00", "seconds": 321.5,
             "stages": stages, "bench": str(out / "bench.json") if bench else None}
    return out, state


# ----------------------------------------------------------------------------- reading the output

class _Tables(HTMLParser):
    """The text of every cell of every <table id=...>, as {id: [[cell, ...], ...]} (header first)."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str) -> dict[str, list[dict[str, str]]]:
    parser = _Tables()
    parser.feed(text)
    return {k: [dict(zip(rows[0], r)) for r in rows[1:]] for k, rows in parser.tables.items() if rows}


def md_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The first Markdown table under each '## ' heading, as rows of {column: cell}."""
    out: dict[str, list[dict[str, str]]] = {}
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        lines = [ln for ln in section.splitlines() if ln.startswith("|")]
        if len(lines) >= 2:
            split = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
            out[section.splitlines()[0].strip()] = [dict(zip(split[0], r)) for r in split[2:]]
    return out


def expected_rows() -> dict[str, dict[str, str]]:
    """The speed-up and compression cells computed from the bench inputs."""
    base_p50 = {b: LATENCY[(VARIANTS[0][0], b)][0] for b in (1, 8)}
    base_bytes = VARIANTS[0][4]
    rows = {}
    for m, stage, _e, _p, fb, sb, acc, _agr in VARIANTS:
        rows[m] = {"stage": stage, "speed-up b1": f"{base_p50[1] / LATENCY[(m, 1)][0]:.2f}x",
                   "speed-up b8": f"{base_p50[8] / LATENCY[(m, 8)][0]:.2f}x",
                   "compression": f"{base_bytes / (sb if sb is not None else fb):.2f}x",
                   "p50 ms b1": f"{LATENCY[(m, 1)][0]:.2f}", "p99 ms b8": f"{LATENCY[(m, 8)][1]:.2f}",
                   "accuracy (top1)": f"{100 * acc:.2f}%"}
    return rows


@pytest.fixture
def report(tmp_path):
    out, state = make_run(tmp_path)
    html_path, md_path = write_pipeline_report(out, state)
    return out, state, html_path.read_text(), md_path.read_text()


# ----------------------------------------------------------------------------- tests

def test_returns_the_two_paths_in_the_run_folder(tmp_path):
    out, state = make_run(tmp_path)
    assert write_pipeline_report(out, state) == (out / "report.html", out / "report.md")


def test_every_variant_in_both_tables_with_its_speedup_and_compression(report):
    _out, _state, html_text, md_text = report
    expected = expected_rows()
    for rows in (html_tables(html_text)["variants"], md_tables(md_text)["Variants"]):
        by_name = {r["variant"]: r for r in rows}
        assert set(by_name) == set(expected)
        for name, cells in expected.items():
            for column, value in cells.items():
                assert by_name[name][column] == value, (name, column)


def test_headline_names_the_best_speedup_and_compression_with_the_accuracy_change(report):
    _out, _state, html_text, md_text = report
    # fastest at batch 1: pruned_int8 (20.0 / 3.2 ms), 93.50% vs 95.00%; smallest: the .dcz (90000 / 3500 B)
    for text in (html_text, md_text):
        assert "Best speed-up: pruned_int8.onnx, 6.25x faster" in text
        assert "accuracy 93.50%, -1.50 points" in text
        assert "Best compression: pruned_dcz.dcz, 25.71x smaller" in text
        assert "accuracy 93.75%, -1.25 points" in text


def test_images_are_inlined_pngs_and_nothing_is_fetched(report):
    _out, _state, html_text, _md = report
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', html_text)
    assert len(images) == len(FIGURE_NAMES)  # accuracy vs latency and vs size, pruning ratios, bits
    for data, alt in images:
        assert base64.b64decode(data, validate=True).startswith(PNG) and alt
    assert html_text.count("<img") == len(images)
    for external in ("http://", "https://", "<link", "<script", "url(", "@import", "src=\"/", "src=\"report_files"):
        assert external not in html_text


def test_markdown_links_point_to_pngs_written_beside_it(report):
    out, _state, _html, md_text = report
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", md_text)
    assert sorted(Path(link).name for link in links) == sorted(FIGURE_NAMES)
    for link in links:
        assert not Path(link).is_absolute() and (out / link).read_bytes().startswith(PNG)


def test_strings_from_the_state_are_escaped(tmp_path):
    out, state = make_run(tmp_path, recipe_name="demo <i>x</i> & co")
    html_path, md_path = write_pipeline_report(out, state)
    html_text, md_text = html_path.read_text(), md_path.read_text()
    assert "<script>" not in html_text and "<i>" not in html_text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in html_text  # the recipe, shown
    assert "demo &lt;i&gt;x&lt;/i&gt; &amp; co" in html_text
    assert "<i>" not in md_text.split("## Recipe")[0]  # outside the fenced recipe text
    assert "# a <script>alert('x')</script> & friends" in md_text.split("## Recipe")[1]  # verbatim in the fence


def test_stage_history_and_commands(report):
    _out, state, html_text, md_text = report
    for rows in (html_tables(html_text)["stages"], md_tables(md_text)["Stages"]):
        assert [r["stage"] for r in rows] == [s["name"] for s in state["stages"]]
        by_name = {r["stage"]: r for r in rows}
        assert by_name["pruned_onnx"]["status"] == "skipped" and by_name["base"]["status"] == "ran"
        assert by_name["pruned_int8"]["type"] == "quantize (int8)"
        assert by_name["pruned_dcz"]["size"] == "3.61 KiB"  # 3,700 bytes on disk
        assert "621.62x smaller than fp32" in by_name["pruned_dcz"]["key result"]
        assert "588.25k" in by_name["pruned"]["key result"]
        assert by_name["base"]["time"] == "10.0 s"
    pre = re.search(r"<h2>Commands</h2>\s*<pre>(.*?)</pre>", html_text, re.DOTALL).group(1)
    commands = [state["command"]] + [s["command"] for s in state["stages"]]
    positions = [pre.find(c) for c in commands]
    assert -1 not in positions and positions == sorted(positions)
    assert "Test CPU (2 of 2 logical CPUs usable)" in html_text and "Test CPU" in md_text


def test_without_a_bench_latency_is_not_measured_and_rows_come_from_the_stages(tmp_path):
    out, state = make_run(tmp_path, bench=False)
    html_path, md_path = write_pipeline_report(out, state)
    html_text, md_text = html_path.read_text(), md_path.read_text()
    for text in (html_text, md_text):
        assert "latency not measured" in text.lower()
        assert "p50" not in text and "speed-up" not in text
    base_bytes = OUTPUTS["base"][1]
    for rows in (html_tables(html_text)["variants"], md_tables(md_text)["Variants"]):
        by_name = {r["variant"]: r for r in rows}
        assert list(by_name) == ["base", "pruned", "pruned_onnx", "pruned_int8", "pruned_k4", "pruned_dcz"]
        for name, (_file, size) in OUTPUTS.items():
            if name in by_name:
                assert by_name[name]["compression"] == f"{base_bytes / size:.2f}x", name
        assert by_name["pruned_int8"]["accuracy (top1)"] == "93.50%"  # int8_test_accuracy
        assert by_name["pruned_k4"]["accuracy (top1)"] == "93.75%"  # accuracy.finetuned.test
        assert by_name["pruned_dcz"]["coded size"] == "3.61 KiB"
        assert by_name["pruned_onnx"]["accuracy (top1)"] == "-"  # an export's report has no accuracy
    links = re.findall(r"\]\((report_files/[^)]+)\)", md_text)
    assert "report_files/accuracy_latency.png" not in links and "report_files/accuracy_size.png" in links


def test_an_eval_stage_gives_the_accuracy_of_the_model_it_measured(tmp_path):
    out, state = make_run(tmp_path, bench=False)
    report = out / "pruned_onnx.eval.json"
    report.write_text(json.dumps({"command": "eval", "split": "test", "n": 270, "metrics": {"top1": 0.9321}}))
    state["stages"].append({"name": "eval_onnx", "type": "eval", "status": "ran", "output": str(report),
                            "report": str(report), "inputs": {"model": str(out / "pruned_onnx.onnx")}})
    other = out / "pruned.eval.json"
    other.write_text(json.dumps({"command": "eval", "split": "val", "n": 30, "metrics": {"top1": 0.5}}))
    state["stages"].append({"name": "eval_pruned", "type": "eval", "status": "ran", "output": str(other),
                            "report": str(other), "inputs": {"model": str(out / "pruned.safetensors")}})
    html_path, _md = write_pipeline_report(out, state)
    rows = {r["variant"]: r for r in html_tables(html_path.read_text())["variants"]}
    assert rows["pruned_onnx"]["accuracy (top1)"] == "93.21%"
    assert rows["pruned"]["accuracy (top1)"] == "94.12%"  # its own report's figure stays


def test_a_bench_report_named_but_missing_is_said(tmp_path):
    out, state = make_run(tmp_path)
    (out / "bench.json").unlink()
    html_path, _md = write_pipeline_report(out, state)
    assert "bench report" in html_path.read_text() and "not found" in html_path.read_text()


def test_missing_or_broken_stage_reports_do_not_crash(tmp_path):
    out, state = make_run(tmp_path, bench=False)
    write_pipeline_report(out, state)
    assert (out / "report_files" / "pruning_ratios.png").is_file()
    by_name = {s["name"]: s for s in state["stages"]}
    Path(by_name["pruned"]["report"]).unlink()  # gone
    Path(by_name["pruned_k4"]["report"]).write_text("{not json")  # broken
    Path(by_name["pruned_dcz"]["report"]).write_text(json.dumps({"sizes": "?", "stats": {"tensors": [1, None]}}))
    by_name["base"]["report"] = None
    by_name["pruned_int8"]["output"] = str(out / "nowhere.onnx")
    html_path, md_path = write_pipeline_report(out, state)
    rows = {r["stage"]: r for r in html_tables(html_path.read_text())["stages"]}
    assert rows["pruned"]["key result"] == "-" and rows["pruned_k4"]["key result"] == "-"
    assert rows["base"]["key result"] == "-" and rows["pruned_int8"]["size"] == "-"
    # the per-layer plots had no data left: not drawn, and last run's files are gone
    assert not (out / "report_files" / "pruning_ratios.png").exists()
    assert not (out / "report_files" / "layer_bits.png").exists()
    assert "pruning_ratios.png" not in md_path.read_text()


def test_paths_relative_to_the_current_folder(tmp_path, monkeypatch):
    out, state = make_run(tmp_path)
    text = json.dumps(state).replace(str(tmp_path) + "/", "")
    (out / "bench.json").write_text((out / "bench.json").read_text().replace(str(tmp_path) + "/", ""))
    monkeypatch.chdir(tmp_path)
    html_path, _md = write_pipeline_report(Path("out"), json.loads(text))
    rows = {r["variant"]: r for r in html_tables(html_path.read_text())["variants"]}
    assert rows["pruned_int8.onnx"]["stage"] == "pruned_int8"
    assert rows["pruned_int8.onnx"]["speed-up b1"] == expected_rows()["pruned_int8.onnx"]["speed-up b1"]


def test_per_layer_data(tmp_path):
    out, state = make_run(tmp_path)
    view = build_view(state, out)
    ratios = view.ratios["pruned: channels removed"]
    assert list(ratios) == ["features.1.conv.0", "features.2.conv.0"]  # input to output
    assert ratios == {k: pytest.approx(1 - after / before) for k, (before, after) in CHANNELS.items()}
    assert view.bits["pruned_k4: k-means index bits"] == {r["name"]: r["bits"] for r in KMEANS_LAYERS}
    assert view.bits["pruned_dcz: Huffman-coded bits (zeros included)"] == {
        t["name"].removesuffix(".weight"): pytest.approx(8 * (t["weights_bytes"] + t["index_bytes"]) / t["count"])
        for t in SHARED if t["kind"] == "shared"}


def test_unstructured_prune_report_gives_per_layer_sparsity(tmp_path):
    out, state = make_run(tmp_path)
    prune = next(s for s in state["stages"] if s["name"] == "pruned")
    sparsity = {"conv1": 0.2, "layer1.0.conv1": 0.46}
    Path(prune["report"]).write_text(json.dumps({"params": {"mode": "unstructured"}, "before": {}, "after": {},
                                                 "sparsity": {"global": 0.85, "layers": sparsity}}))
    assert build_view(state, out).ratios == {"pruned: weights zeroed": sparsity}


def test_writes_only_the_report_files(tmp_path):
    out, state = make_run(tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_pipeline_report(out, state)
    write_pipeline_report(out, state)  # a second run replaces them
    after = {p for p in out.rglob("*") if p.is_file()}
    new = {p.relative_to(out).as_posix() for p in after - set(before)}
    assert new == {"report.html", "report.md", *(f"report_files/{n}" for n in FIGURE_NAMES)}
    assert all(p.read_bytes() == data for p, data in before.items())
