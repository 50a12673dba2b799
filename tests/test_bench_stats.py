"""Bench statistics with known answers: speed-up, latency ratio and GMAC/s from fixed latencies;
size / params / MACs ratios; accuracy, agreement and decisions on predictions constructed in the
test; and one end-to-end ``run_benchmark`` over two tiny ONNX models with fake timings and
constructed predictions, so every ratio and the agreement in the report is exact."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm

from compress import metrics as M
from compress.bench import accuracy as A
from compress.bench.api import BenchConfig, _static_rows, _timing_rows, run_benchmark
from compress.bench.variants import Variant
from compress.meta import ModelMeta
from compress.runtime import LatencyStats


def stats(p50_ms: float, batch: int = 1, threads: int = 1) -> LatencyStats:
    return LatencyStats(batch=batch, threads=threads, runs=10, p50_ms=p50_ms, p90_ms=p50_ms * 1.5,
                        p99_ms=p50_ms * 2, mean_ms=p50_ms * 1.1, std_ms=0.1, iqr_ms=0.2, min_ms=p50_ms / 2,
                        max_ms=p50_ms * 3)


def variant(name, size=(3, 32, 32), macs=None, engine="onnxruntime", file_bytes=1000, params=None, meta=None,
            stored_bytes=None):
    return Variant(name=name, path=Path("/models") / name, engine=engine, file_bytes=file_bytes,
                   stored_bytes=stored_bytes, params=params, meta=meta, _macs={size: macs})


# ----------------------------------------------------------------------------- timing rows

def test_speedup_latency_ratio_and_gmacs_are_exact():
    size = (3, 224, 224)
    vs = [variant("base.pt", size, macs=300_000_000, engine="pytorch"),
          variant("base.onnx", size, macs=300_000_000),
          variant("pruned.onnx", size, macs=75_000_000)]
    sizes = {v.name: size for v in vs}
    cells = [[stats(40.0, 8, 2), stats(10.0, 8, 2), stats(5.0, 8, 2)],   # batch 8, 2 threads
             [stats(20.0, 1, 1), stats(25.0, 1, 1), stats(4.0, 1, 1)]]   # batch 1, 1 thread
    rows = _timing_rows(vs, sizes, cells)
    assert len(rows) == 6
    got = [(r["model"], r["engine"], r["batch"], r["threads"], r["speedup"], r["latency_ratio"], r["gmacs_per_s"])
           for r in rows]
    expected = [  # speed-up = baseline p50 / p50; latency ratio = p50 / baseline p50; GMAC/s = MACs x batch / p50
        ("base.pt", "pytorch", 8, 2, 1.0, 1.0, 300e6 * 8 / 0.040 / 1e9),
        ("base.onnx", "onnxruntime", 8, 2, 4.0, 0.25, 300e6 * 8 / 0.010 / 1e9),
        ("pruned.onnx", "onnxruntime", 8, 2, 8.0, 0.125, 75e6 * 8 / 0.005 / 1e9),
        ("base.pt", "pytorch", 1, 1, 1.0, 1.0, 300e6 / 0.020 / 1e9),
        ("base.onnx", "onnxruntime", 1, 1, 0.8, 1.25, 300e6 / 0.025 / 1e9),   # slower than the baseline
        ("pruned.onnx", "onnxruntime", 1, 1, 5.0, 0.2, 75e6 / 0.004 / 1e9),
    ]
    for g, e in zip(got, expected):
        assert g == (e[0], e[1], e[2], e[3], pytest.approx(e[4]), pytest.approx(e[5]), pytest.approx(e[6]))
    assert rows[1]["gmacs_per_s"] == pytest.approx(240.0)
    # every latency field travels into the row
    assert {k: rows[2][k] for k in stats(5.0, 8, 2).to_dict()} == stats(5.0, 8, 2).to_dict()
    assert all(r["input"] == "224x224" for r in rows)


def test_timing_rows_edge_cases():
    vs = [variant("a", (3, 24, 40), macs=None), variant("b", (1, 16, 16), macs=0)]
    sizes = {"a": (3, 24, 40), "b": (1, 16, 16)}
    rows = _timing_rows(vs, sizes, [[stats(0.0), stats(2.0)]])
    assert rows[0]["input"] == "24x40" and rows[1]["input"] == "16x16"  # H x W, per variant
    assert rows[0]["speedup"] is None  # zero latency: no ratio rather than a division by zero
    assert rows[1]["speedup"] == 0.0
    assert rows[1]["latency_ratio"] is None  # the baseline's zero latency
    assert rows[0]["gmacs_per_s"] is None and rows[1]["gmacs_per_s"] is None  # MACs unknown or zero
    assert _timing_rows(vs, sizes, []) == []


# ----------------------------------------------------------------------------- static rows

def test_static_ratios_are_exact_and_metrics_are_attached():
    size = (3, 32, 32)
    meta = ModelMeta(arch="mobilenet_v2", num_classes=10)
    vs = [variant("base.safetensors", size, macs=88_000_000, engine="pytorch", file_bytes=8_000_000,
                  params=2_000_000, meta=meta),
          variant("pruned.onnx", size, macs=22_000_000, file_bytes=2_000_000, params=500_000, meta=meta,
                  stored_bytes=1_500_000),
          variant("foreign.onnx", (3, 64, 64), macs=None, file_bytes=4_000_000, params=None)]
    sizes = {"base.safetensors": size, "pruned.onnx": size, "foreign.onnx": (3, 64, 64)}
    metrics = {"base.safetensors": {"accuracy": 0.99, "metric": "top1", "agreement": 1.0, "samples": 270},
               "pruned.onnx": {"accuracy": 0.98, "metric": "top1", "agreement": 0.97, "samples": 270}}
    rows = _static_rows(vs, sizes, metrics)
    assert rows[0] == {"model": "base.safetensors", "path": str(Path("/models/base.safetensors")), "engine": "pytorch",
                       "precision": None, "arch": "mobilenet_v2", "has_metadata": True, "file_bytes": 8_000_000, "stored_bytes": None,
                       "size_ratio": 1.0, "params": 2_000_000, "params_ratio": 1.0, "input": "32x32",
                       "macs": 88_000_000, "macs_ratio": 1.0, "accuracy": 0.99, "accuracy_metric": "top1",
                       "agreement": 1.0, "eval_samples": 270, "eval_note": None}
    p = rows[1]
    assert (p["size_ratio"], p["params_ratio"], p["macs_ratio"]) == (0.25, 0.25, 0.25)
    assert (p["stored_bytes"], p["accuracy"], p["agreement"], p["arch"]) == (1_500_000, 0.98, 0.97, "mobilenet_v2")
    f = rows[2]
    assert f["size_ratio"] == 0.5 and f["params_ratio"] is None and f["macs_ratio"] is None
    assert f["arch"] is None and f["has_metadata"] is False and f["input"] == "64x64"
    assert all(f[k] is None for k in ("accuracy", "accuracy_metric", "agreement", "eval_samples", "eval_note"))


def test_static_ratios_without_baseline_facts():
    vs = [variant("a", macs=None, params=None), variant("b", macs=5, params=7, file_bytes=3000)]
    rows = _static_rows(vs, {"a": (3, 32, 32), "b": (3, 32, 32)}, {"b": {"note": "10 outputs vs 3 classes"}})
    assert rows[1]["params_ratio"] is None and rows[1]["macs_ratio"] is None  # nothing to divide by
    assert rows[1]["size_ratio"] == 3.0 and rows[1]["eval_note"] == "10 outputs vs 3 classes"


# ----------------------------------------------------------------------------- accuracy, agreement, decisions

def test_decisions():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, -0.5]])
    np.testing.assert_array_equal(A.decisions(logits, "multiclass"), [1, 0])
    np.testing.assert_array_equal(A.decisions(logits, "multilabel"), [[True, True, False], [True, True, False]])


def test_multiclass_accuracy_against_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    targets = rng.integers(0, 4, 50)
    assert A.accuracy(logits, targets, "multiclass") == pytest.approx(skm.accuracy_score(targets, logits.argmax(1)))
    assert A.accuracy(np.eye(3), np.array([0, 1, 2]), "multiclass") == 1.0


def test_multilabel_accuracy_is_micro_f1_at_probability_one_half():
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 5)) < 0.3).astype(np.float32)
    logits = rng.normal(size=(40, 5)) + 1.5 * targets - 0.5
    assert A.accuracy(logits, targets, "multilabel") == pytest.approx(
        skm.f1_score(targets.astype(int), (logits >= 0).astype(int), average="micro"))
    # nothing true, nothing predicted: perfect
    assert A.accuracy(-np.ones((3, 2)), np.zeros((3, 2)), "multilabel") == 1.0
    assert A.accuracy(np.ones((3, 2)), np.zeros((3, 2)), "multilabel") == 0.0


def test_bench_and_eval_agree_on_a_logit_of_exactly_zero():
    """sigmoid(0) = 0.5: eval (metrics.multilabel_metrics) and the service predict a label whose
    probability is >= the threshold 0.5; bench's accuracy and decisions must count it the same."""
    targets = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    logits = np.array([[0.0, -1.0], [2.0, 0.0], [-3.0, -0.5]])  # every true label at probability >= 0.5
    assert M.multilabel_metrics(targets, logits)["f1_micro"] == 1.0
    assert A.accuracy(logits, targets, "multilabel") == 1.0
    np.testing.assert_array_equal(A.decisions(logits, "multilabel"), targets.astype(bool))


def test_agreement():
    assert A.agreement(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3])) == 0.75
    a = np.array([[True, False], [True, True], [False, False]])
    b = np.array([[True, False], [True, False], [False, False]])
    assert A.agreement(a, b) == pytest.approx(2 / 3)  # one differing label makes the whole sample differ
    assert A.agreement(a, a) == 1.0


def test_predict_all_batches_in_order():
    calls = []

    def predict(x):
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, :2] * 10

    images = np.arange(5 * 2 * 1 * 1, dtype=np.float32).reshape(5, 2, 1, 1)
    out = A.predict_all(predict, images, batch=2)
    np.testing.assert_array_equal(out, images.reshape(5, 2) * 10)
    assert calls == [2, 2, 1]
    A.predict_all(predict, np.zeros((130, 2, 1, 1), np.float32))
    assert calls[3:] == [64, 64, 2]  # default batch 64


# ----------------------------------------------------------------------------- data_metrics with constructed predictions

class FakeRunner:
    def __init__(self, logits):
        self.logits = np.asarray(logits, dtype=np.float32)
        self.seen = 0

    def predict(self, images):
        out = self.logits[self.seen:self.seen + len(images)]
        self.seen += len(images)
        return out


@pytest.fixture
def fake_data(monkeypatch):
    """Six test images of a 3-class set; targets 0 1 2 0 1 2. Records each load."""
    loads = []

    def test_arrays(spec, side, meta, seed, limit):
        loads.append((spec, side, seed, limit))
        bundle = SimpleNamespace(labels=["a", "b", "c"], task="multiclass")
        return bundle, np.zeros((6, 3, side, side), np.float32), np.array([0, 1, 2, 0, 1, 2])

    monkeypatch.setattr(A, "_test_arrays", test_arrays)
    return loads


def onehot_logits(pred, k=3):
    out = np.full((len(pred), k), -4.0)
    out[np.arange(len(pred)), pred] = 4.0
    return out


def test_agreement_is_with_the_baseline_not_with_itself(fake_data):
    meta = ModelMeta(arch="m", num_classes=3, input_size=[3, 8, 8])
    vs = [variant("base", meta=meta), variant("pruned", meta=meta), variant("other", meta=meta)]
    runners = {"base": FakeRunner(onehot_logits([0, 1, 2, 0, 1, 1])),     # 5 of 6 right
               "pruned": FakeRunner(onehot_logits([0, 1, 2, 2, 1, 1])),   # 4 of 6 right, agrees on 5
               "other": FakeRunner(onehot_logits([1, 1, 2, 0, 0, 2]))}    # 4 of 6 right, agrees on 3
    out = A.data_metrics(vs, "fake", limit=None, seed=3, runners=runners)
    assert out["base"] == {"accuracy": pytest.approx(5 / 6), "metric": "top1", "samples": 6, "agreement": 1.0}
    assert out["pruned"]["accuracy"] == pytest.approx(4 / 6) and out["pruned"]["agreement"] == pytest.approx(5 / 6)
    assert out["other"]["accuracy"] == pytest.approx(4 / 6) and out["other"]["agreement"] == pytest.approx(3 / 6)
    assert fake_data == [("fake", 8, 3, None)]  # one load serves every variant with the same preprocessing


def test_a_model_with_the_wrong_number_of_outputs_gets_a_note(fake_data):
    meta3 = ModelMeta(arch="m", num_classes=3, input_size=[3, 8, 8])
    meta10 = ModelMeta(arch="m", num_classes=10, input_size=[3, 16, 16], mean=[0.5] * 3)
    vs = [variant("base", meta=meta3), variant("imagenet", meta=meta10)]
    runners = {"base": FakeRunner(onehot_logits([0, 1, 2, 0, 1, 2])), "imagenet": FakeRunner(np.zeros((6, 10)))}
    out = A.data_metrics(vs, "digits", limit=4, seed=0, runners=runners)
    assert out["imagenet"] == {"accuracy": None, "agreement": None, "samples": 6,
                               "note": "10 outputs vs 3 classes in digits"}
    assert out["base"]["accuracy"] == 1.0
    assert fake_data == [("digits", 8, 0, 4), ("digits", 16, 0, 4)]  # another size or normalisation: another load


def test_without_a_usable_baseline_there_is_no_agreement(fake_data):
    vs = [variant("base", meta=ModelMeta(arch="m", num_classes=5, input_size=[3, 8, 8])),
          variant("b", meta=ModelMeta(arch="m", num_classes=3, input_size=[3, 8, 8]))]
    runners = {"base": FakeRunner(np.zeros((6, 5))), "b": FakeRunner(onehot_logits([0, 1, 2, 0, 1, 2]))}
    out = A.data_metrics(vs, "x", None, 0, runners)
    assert out["b"]["accuracy"] == 1.0 and out["b"]["agreement"] is None


def test_multilabel_variants_use_f1_and_label_sets(monkeypatch):
    targets = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.float32)
    monkeypatch.setattr(A, "_test_arrays", lambda spec, side, meta, seed, limit: (
        SimpleNamespace(labels=["x", "y"], task="multilabel"), np.zeros((4, 3, side, side), np.float32), targets))
    meta = ModelMeta(arch="m", num_classes=2, task="multilabel", input_size=[3, 8, 8])
    base_logits = np.where(targets > 0, 3.0, -3.0)
    other = base_logits.copy()
    other[1, 1] = -3.0  # one label missed in sample 1
    vs = [variant("base", meta=meta), variant("other", meta=meta)]
    out = A.data_metrics(vs, "ml", None, 0, {"base": FakeRunner(base_logits), "other": FakeRunner(other)})
    assert out["base"] == {"accuracy": 1.0, "metric": "f1_micro", "samples": 4, "agreement": 1.0}
    assert out["other"]["accuracy"] == pytest.approx(2 * 3 / (3 + 4)) and out["other"]["agreement"] == 0.75


# ----------------------------------------------------------------------------- run_benchmark end to end

def _linear_onnx(path: Path, weight: np.ndarray) -> Path:
    """logits = mean over H, W of each channel, times ``weight`` (3 x 3): no torch needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weight.astype(np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_run_benchmark_reports_exact_ratios_and_agreement(tmp_path, monkeypatch):
    import compress.bench.api as api

    base = _linear_onnx(tmp_path / "base.onnx", np.eye(3))
    swapped = _linear_onnx(tmp_path / "swapped.onnx", np.eye(3)[[1, 0, 2]])  # classes 0 and 1 exchanged
    timings = {}

    def fake_measure(runners, **kw):
        timings.setdefault("calls", []).append(kw)
        return [[0.004] * 7, [0.001] * 7][:len(runners)]  # the baseline takes 4 ms, the other 1 ms

    monkeypatch.setattr(api, "measure_interleaved", fake_measure)
    # six images whose brightest channel is their class: 0 1 2 0 1 2 (targets 0 1 2 0 1 1)
    images = np.zeros((6, 3, 4, 4), np.float32)
    images[np.arange(6), [0, 1, 2, 0, 1, 2]] = 1.0
    monkeypatch.setattr(A, "_test_arrays", lambda spec, side, meta, seed, limit: (
        SimpleNamespace(labels=["a", "b", "c"], task="multiclass"), images, np.array([0, 1, 2, 0, 1, 1])))
    cfg = BenchConfig(batch=[1, 4], threads=[1], data="fake", min_runs=7, budget=0.0, warmup=0)
    with pytest.warns(UserWarning, match="without compress metadata"):
        report = run_benchmark([base, swapped], cfg)
    assert [c["min_runs"] for c in timings["calls"]] == [7, 7]
    assert [(r["model"], r["batch"]) for r in report.results] == [
        ("base.onnx", 1), ("swapped.onnx", 1), ("base.onnx", 4), ("swapped.onnx", 4)]
    for r in report.results:
        fast = r["model"] == "swapped.onnx"
        assert r["p50_ms"] == pytest.approx(1.0 if fast else 4.0) and r["runs"] == 7
        assert r["speedup"] == pytest.approx(4.0 if fast else 1.0)
        assert r["latency_ratio"] == pytest.approx(0.25 if fast else 1.0)
        assert r["gmacs_per_s"] == pytest.approx(9 * r["batch"] / (r["p50_ms"] / 1000) / 1e9)  # 3x3 MatMul
    base_row, swapped_row = report.variants
    assert base_row["accuracy"] == pytest.approx(5 / 6) and base_row["agreement"] == 1.0
    # the swapped model predicts 1 0 2 1 0 2: right on sample 2 only, agrees with the baseline on 2 and 5
    assert swapped_row["accuracy"] == pytest.approx(1 / 6) and swapped_row["agreement"] == pytest.approx(2 / 6)
    assert swapped_row["size_ratio"] == 1.0 and swapped_row["macs"] == 9 and swapped_row["macs_ratio"] == 1.0


def test_timing_row_schema_sub_millisecond_baselines_and_exact_gmacs():
    vs = [variant("a", (3, 16, 16), macs=2_000_000_000), variant("b", (3, 16, 16), macs=500_000_000)]
    sizes = {"a": (3, 16, 16), "b": (3, 16, 16)}
    rows = _timing_rows(vs, sizes, [[stats(1000.0), stats(0.5)]])
    assert rows[0]["gmacs_per_s"] == 2.0  # 2e9 MACs in one second: exactly 2 GMAC/s
    assert set(rows[0]) == {"model", "engine", "batch", "threads", "input", "speedup", "latency_ratio", "gmacs_per_s",
                            *stats(1.0).to_dict()}
    rows = _timing_rows(vs, sizes, [[stats(0.5), stats(0.25)]])  # tiny models run in under a millisecond
    assert rows[1]["speedup"] == 2.0 and rows[1]["latency_ratio"] == 0.5


def test_static_rows_give_height_by_width():
    vs = [variant("a", (3, 24, 40), macs=10)]
    assert _static_rows(vs, {"a": (3, 24, 40)}, {})[0]["input"] == "24x40"


def test_each_variant_is_preprocessed_as_its_own_metadata_says(monkeypatch):
    loads = []

    def test_arrays(spec, side, meta, seed, limit):
        loads.append((side, meta))
        bundle = SimpleNamespace(labels=["a", "b", "c"], task="multiclass")
        return bundle, np.zeros((6, 3, side, side), np.float32), np.array([0, 1, 2, 0, 1, 2])

    monkeypatch.setattr(A, "_test_arrays", test_arrays)
    m1 = ModelMeta(arch="m", num_classes=3, input_size=[3, 8, 8])
    m2 = ModelMeta(arch="m", num_classes=3, input_size=[3, 8, 8], mean=[0.5, 0.5, 0.5])   # same size, other mean
    m3 = ModelMeta(arch="m", num_classes=3, input_size=[3, 8, 8], std=[0.5, 0.5, 0.5])    # same size, other std
    vs = [variant("one", meta=m1), variant("two", meta=m2), variant("three", meta=m3), variant("again", meta=m1)]
    runners = {n: FakeRunner(onehot_logits([0, 1, 2, 0, 1, 2])) for n in ("one", "two", "three", "again")}
    out = A.data_metrics(vs, "x", None, 0, runners)
    assert loads == [(8, m1), (8, m2), (8, m3)]  # one load per preprocessing, each with its model's facts
    assert all(out[n]["accuracy"] == 1.0 and out[n]["agreement"] == 1.0 for n in runners)


def test_a_model_without_metadata_is_evaluated_at_its_timing_size(fake_data):
    def plain(graph):
        return Variant(name="plain", path=Path("/m/plain.onnx"), engine="onnxruntime", file_bytes=1,
                       stored_bytes=None, params=None, graph_input=graph)

    A.data_metrics([plain(("N", 3, 16, 16))], "d", None, 0, {"plain": FakeRunner(onehot_logits([0, 1, 2] * 2))})
    A.data_metrics([plain(("N", 3, "H", "W"))], "d", None, 0, {"plain": FakeRunner(onehot_logits([0] * 6))},
                   input_size=24)
    assert [load[1] for load in fake_data] == [16, 24]  # the graph's fixed size, else the one asked for


def test_a_model_with_metadata_is_evaluated_at_its_training_size(fake_data):
    """--input-size changes the timing size only; accuracy is measured at the training resolution."""
    meta = ModelMeta(arch="m", num_classes=3, input_size=[3, 8, 8])
    A.data_metrics([variant("base", meta=meta)], "d", None, 0, {"base": FakeRunner(onehot_logits([0] * 6))},
                   input_size=24)
    assert [load[1] for load in fake_data] == [8]
