"""compress bench: timing statistics, interleaving, MACs from ONNX graphs, reports, bad input."""
from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
from compress.artifact import ModelMeta, save_model
from compress.bench.variants import load_variant, time_torch
from compress.onnx_graph import onnx_macs
from compress.runtime import LatencyStats, measure_interleaved, time_onnx
from compress.cli import main
from compress.errors import UserError
from compress.export import export_onnx


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two tiny artifacts (32x32, 10 classes) and the ONNX export of the first."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("zoo")
    torch.set_num_threads(1)
    a = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25).eval()
    b = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.5).eval()
    for name, m in (("a", a), ("b", b)):
        save_model(m, d / f"{name}.safetensors", ModelMeta.for_model(m, input_size=[3, 32, 32]))
    export_onnx(a, ModelMeta.for_model(a, input_size=[3, 32, 32]), d / "a.onnx")
    return d


def test_latency_stats_percentiles():
    st = LatencyStats.from_seconds([0.001 * i for i in range(1, 101)], batch=4, threads=1)
    assert st.runs == 100 and st.min_ms == pytest.approx(1.0) and st.max_ms == pytest.approx(100.0)
    assert st.p50_ms == pytest.approx(50.5) and st.p90_ms == pytest.approx(90.1) and st.p99_ms == pytest.approx(99.01)
    assert st.iqr_ms == pytest.approx(49.5)
    assert st.throughput == pytest.approx(4 * 1000 / 50.5)


def test_measure_interleaved_alternates_and_respects_counts():
    calls: list[str] = []
    runners = [lambda: calls.append("A"), lambda: calls.append("B"), lambda: calls.append("C")]
    times = measure_interleaved(runners, warmup=2, min_runs=5, budget_s=0.0)
    assert calls[:6] == ["A", "A", "B", "B", "C", "C"]  # warm-up, per runner
    assert calls[6:] == ["A", "B", "C"] * 5  # then strictly interleaved rounds
    assert [len(t) for t in times] == [5, 5, 5]
    # a time budget keeps going past min_runs, all runners equally often
    times = measure_interleaved(runners[:2], warmup=0, min_runs=1, budget_s=0.02, max_runs=10_000)
    assert len(times[0]) == len(times[1]) > 1


def test_time_onnx_and_time_torch(zoo):
    st = time_onnx(zoo / "a.onnx", batch=2, threads=1, warmup=1, runs=7)
    assert (st.batch, st.threads, st.runs) == (2, 1, 7)
    assert 0 < st.min_ms <= st.p50_ms <= st.p90_ms <= st.p99_ms <= st.max_ms
    st64 = time_onnx(zoo / "a.onnx", batch=1, threads=1, input_size=64, warmup=1, runs=3)
    assert st64.runs == 3
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    torch.set_num_threads(2)
    st = time_torch(model, batch=1, threads=1, input_size=32, warmup=1, runs=4)
    assert st.runs == 4 and st.p50_ms > 0 and torch.get_num_threads() == 2  # thread count restored
    with pytest.raises(UserError):
        time_onnx(zoo / "a.onnx", batch=0)
    with pytest.raises(UserError):
        time_torch(model, threads=0)


def test_onnx_macs_match_pytorch_count(zoo):
    from compress.artifact import load_model

    model, _ = load_model(zoo / "a.safetensors")
    for side in (32, 48):
        assert onnx_macs(zoo / "a.onnx", (3, side, side)) == models.count_macs(model, (3, side, side))


def test_bench_cli_reports(zoo, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["bench", str(zoo / "a.safetensors"), str(zoo / "a.onnx"), str(zoo / "b.safetensors"),
            "--batch", "1,2", "--threads", "1", "--warmup", "1", "--min-runs", "3", "--budget", "0",
            "--data", "digits", "--data-limit", "40", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "GMAC/s" in printed and "machine:" in printed
    report = json.loads((out / "bench.json").read_text())
    assert report["machine"]["cpu"] and report["machine"]["versions"]["onnxruntime"]
    variants = {v["model"]: v for v in report["variants"]}
    base, onnx_v, other = variants["a.safetensors"], variants["a.onnx"], variants["b.safetensors"]
    assert base["size_ratio"] == 1.0 and base["macs_ratio"] == 1.0 and base["agreement"] == 1.0
    assert onnx_v["engine"] == "onnxruntime" and base["engine"] == "pytorch"
    assert onnx_v["macs"] == base["macs"]  # graph count == module count
    assert onnx_v["agreement"] == 1.0 and onnx_v["accuracy"] == base["accuracy"]  # same network
    assert other["params"] > base["params"] and other["macs"] > base["macs"]
    assert 0 <= other["accuracy"] <= 1 and base["eval_samples"] == 40
    rows = report["results"]
    assert len(rows) == 3 * 2  # variants x batch sizes
    for r in rows:
        assert r["runs"] >= 3 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput"] == pytest.approx(r["batch"] * 1000 / r["p50_ms"])
        assert r["gmacs_per_s"] > 0
        if r["model"] == "a.safetensors":
            assert r["speedup"] == 1.0 and r["latency_ratio"] == 1.0
    with open(out / "bench.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows) and {"p50_ms", "speedup", "size_ratio", "accuracy"} <= set(csv_rows[0])
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_input_size_override_and_prefix(zoo, tmp_path, capsys):
    prefix = tmp_path / "sub" / "mnv2"
    assert main(["bench", str(zoo / "a.onnx"), "--input-size", "64", "--threads", "1", "--min-runs", "2",
                 "--budget", "0", "--warmup", "0", "-o", str(prefix), "--no-plot"]) == 0
    report = json.loads((tmp_path / "sub" / "mnv2.json").read_text())
    assert report["results"][0]["input"] == "64x64"
    assert report["variants"][0]["macs"] == onnx_macs(zoo / "a.onnx", (3, 64, 64))
    assert not (tmp_path / "sub" / "mnv2.png").exists()


def _plain_onnx(path, dynamic_hw: bool):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5)).eval()
    axes = {"x": {0: "n", 2: "h", 3: "w"} if dynamic_hw else {0: "n"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 24, 24),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes=axes)
    return path


def test_onnx_without_metadata_benchmarks_with_warning(tmp_path, capsys):
    path = _plain_onnx(tmp_path / "plain.onnx", dynamic_hw=False)
    v = load_variant(path)
    assert v.meta is None and v.warnings and v.timing_size(None) == (3, 24, 24)
    assert v.macs((3, 24, 24)) == 24 * 24 * 8 * 27 + 5 * 8
    assert main(["bench", str(path), "--threads", "1", "--min-runs", "2", "--budget", "0"]) == 0
    out = capsys.readouterr().out
    assert "without compress metadata" in out and "24x24" in out


def test_onnx_without_size_needs_input_size(tmp_path, capsys):
    path = _plain_onnx(tmp_path / "dyn.onnx", dynamic_hw=True)
    assert main(["bench", str(path), "--threads", "1"]) == 2
    assert "--input-size" in capsys.readouterr().err
    assert main(["bench", str(path), "--threads", "1", "--input-size", "16", "--min-runs", "2", "--budget", "0"]) == 0


@pytest.mark.parametrize("extra", [["--batch", "0"], ["--batch", "-1"], ["--threads", "0"], ["--batch", "1,x"],
                                   ["--min-runs", "0"], ["--input-size", "2"]],
                         ids=["batch0", "batch-neg", "threads0", "batch-word", "min-runs", "input-size"])
def test_bench_bad_options_exit_2(zoo, capsys, extra):
    assert main(["bench", str(zoo / "a.onnx"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compress bench: error:") and "\n" not in err


def test_bench_bad_files_exit_2(zoo, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n" * 10)
    fake_onnx = tmp_path / "fake.onnx"
    fake_onnx.write_bytes(np.random.default_rng(0).bytes(300))
    fake_st = tmp_path / "fake.safetensors"
    fake_st.write_text("{}")
    for bad in (text, fake_onnx, fake_st, tmp_path / "missing.onnx", tmp_path):
        assert main(["bench", str(zoo / "a.onnx"), str(bad), "--threads", "1"]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("compress bench: error:") and "\n" not in err, err
    assert main(["bench", str(text)]) == 2
    assert "neither a model artifact" in capsys.readouterr().err


def test_bench_refuses_to_overwrite_an_input(zoo, tmp_path, capsys):
    victim = tmp_path / "x.json"
    victim.write_text("{}")
    assert main(["bench", str(zoo / "a.onnx"), str(victim), "-o", str(tmp_path / "x")]) == 2
    assert victim.read_text() == "{}"


def test_format_hook_reports_stored_size(zoo, tmp_path, monkeypatch):
    """A compressed container registers a loader; bench shows its stored size next to the file size."""
    import compress.formats as formats
    from compress.artifact import load_model
    from compress.bench import BenchConfig, run_benchmark
    from compress.report.bench import format_report

    def load_container(path):
        model, meta = load_model(zoo / "a.safetensors")  # stands in for decoding the container
        return formats.LoadedModel(model=model, meta=meta, stored_bytes=1234)

    monkeypatch.setitem(formats._FORMATS, ".dcz", load_container)
    container = tmp_path / "a.dcz"
    container.write_bytes(b"\0" * 100)
    report = run_benchmark([zoo / "a.onnx", container], BenchConfig(threads=[1], min_runs=2, budget=0, warmup=0))
    v = {x["model"]: x for x in report.variants}
    assert v["a.dcz"]["stored_bytes"] == 1234 and v["a.dcz"]["engine"] == "pytorch"
    assert v["a.onnx"]["stored_bytes"] is None
    assert "stored" in format_report(report)
