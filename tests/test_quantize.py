"""compress quantize --int8 / --dynamic: the calibration images are the service's preprocessing,
the search keeps the fastest candidate at or above its agreement threshold and never returns one
below it, the sensitivity fallback keeps nodes in float, the output is a served-as-is ONNX graph,
and bad input exits 2 with one line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from compress.cli import main
from compress.errors import UserError
from compress.onnx_graph import onnx_macs
from compress.quantize import int8
from compress.quantize.api import quantize_artifact
from compress.quantize.calib import ArrayReader, _sample, quantization_data
from compress.quantize.config import QuantizeConfig
from compress.runtime import LatencyStats
from tests.test_serve import digits_onnx, encode  # noqa: F401  (a session fixture: tiny digits model)

QUICK = dict(calib_samples=16, eval_samples=120, budget=0.05, threads=1, test=False)


def quick(**kw) -> QuantizeConfig:
    return QuantizeConfig(int8=True, **{**QUICK, **kw})


def meta_of(path: Path):
    from compress.onnx_meta import read_onnx_meta

    return read_onnx_meta(path)


# ----------------------------------------------------------------------------- calibration data

def test_calibration_images_are_the_services_preprocessing(digits_onnx):
    """The calibration arrays equal what serve/ computes for the same digit images uploaded as PNG."""
    from compress.data.datasets import seeded_split
    from compress.data.digits import SPLIT_FRACTIONS, _raw_digits, scan_to_image
    from serve.engine import Model
    from serve.images import decode_image

    data = quantization_data(meta_of(digits_onnx), None, calib_samples=24, eval_samples=10, test=False)
    scans, targets = _raw_digits()
    train, _, _ = seeded_split(len(scans), SPLIT_FRACTIONS, 0, strata=targets)
    picked = train[_sample(len(train), 24, 0)]
    served = Model("digits", digits_onnx)
    expected = np.stack([served.transform(decode_image(encode(scan_to_image(scans[i])), max_pixels=10_000))
                         for i in picked])
    assert data.calib.shape == expected.shape == (24, 3, 32, 32)
    assert np.array_equal(data.calib, expected)
    assert len(data.eval) == 10 and "val" in data.source["agreement"]


def test_calibration_sample_is_seeded_and_distinct():
    a, b, c = _sample(1000, 50, 0), _sample(1000, 50, 0), _sample(1000, 50, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(set(a.tolist())) == 50 and a.max() < 1000
    assert np.array_equal(_sample(7, 50, 0), np.arange(7))  # fewer images than asked: all of them


def test_array_reader_yields_every_image_once_per_pass():
    images = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    reader = ArrayReader("x", images, batch=4)
    for _ in range(2):
        batches = []
        while (b := reader.get_next()) is not None:
            batches.append(b["x"])
        assert [len(b) for b in batches] == [4, 4, 2] and len(reader) == 3
        assert np.array_equal(np.concatenate(batches), images)
        reader.rewind()
    with pytest.raises(UserError):
        ArrayReader("x", np.zeros((0, 3, 2, 2), np.float32))


# ----------------------------------------------------------------------------- the search

def test_search_writes_the_fastest_candidate_at_or_above_the_threshold(digits_onnx, tmp_path, monkeypatch):
    """With timings planted (QOperator U8S8 per-tensor fastest), that structure wins when it agrees
    enough; the slower structures are left unscored; the output is a served-as-is INT8 graph."""
    planted = {("qoperator", "u8s8", False): 1.0}
    real_time = int8.time_models

    def fake_time(paths, size, **kw):
        stats = real_time(paths[:1], size, batch=1, threads=1, budget_s=0.0)
        out = [stats[0]]
        for p in paths[1:]:
            idx = int(Path(p).stem.split("-")[1])  # cand-N; N >= len(order): the mixed step's copies
            out.append(type(stats[0]).from_seconds([planted.get(order[idx] if idx < len(order) else None, 5.0)
                                                    / 1000], 1, 1))
        return out

    order = [c.structure() for c in int8.structures(("qdq", "qoperator"), ("s8s8", "u8s8"), (True, False))]
    monkeypatch.setattr(int8, "time_models", fake_time)
    out = tmp_path / "q.onnx"
    result = quantize_artifact(digits_onnx, out, quick(min_agreement=0.5, calibration="minmax"))
    assert (result.chosen["format"], result.chosen["types"], result.chosen["per_channel"]) == \
        ("qoperator", "u8s8", False)
    assert result.chosen["agreement"] >= 0.5 and result.chosen["status"] == "chosen"
    assert not result.chosen["exclude"]  # the mixed copies were planted slower
    assert sum(t["status"] == "chosen" for t in result.trials) == 1
    assert all(t["agreement"] is None for t in result.trials if t["status"] == "not scored")
    proto = onnx.load(str(out))
    assert any(n.op_type == "QLinearConv" for n in proto.graph.node)
    # MACs still counted through ONNX Runtime's com.microsoft ops (QLinearAdd, QLinearGlobalAveragePool, QGemm)
    assert any(n.domain == "com.microsoft" for n in proto.graph.node)
    assert onnx_macs(out, (3, 32, 32)) == onnx_macs(digits_onnx, (3, 32, 32)) > 0
    props = {p.key: p.value for p in proto.metadata_props}
    history = json.loads(props["history"])
    assert history[-1]["stage"] == "quantize" and history[-1]["params"]["types"] == "u8s8"
    assert json.loads(props["labels"]) == meta_of(digits_onnx).labels
    report = json.loads((tmp_path / "q.onnx.json").read_text())
    assert report["chosen"]["label"] == result.chosen["label"] and len(report["trials"]) == len(result.trials)


def test_search_never_returns_a_candidate_below_the_threshold(digits_onnx, tmp_path):
    """The barely trained digits model disagrees with its INT8 versions somewhere: at 100% and no
    fallback nothing passes, the stage refuses with its table and writes nothing."""
    out = tmp_path / "q.onnx"
    cfg = quick(min_agreement=1.0, max_exclude=0, calibration="minmax", types="u8s8", eval_samples=269)
    with pytest.raises(int8.QuantizationRefused) as caught:
        quantize_artifact(digits_onnx, out, cfg)
    assert not out.exists() and not (tmp_path / "q.onnx.json").exists()
    trials = caught.value.result.trials
    assert trials and all(t["agreement"] is None or t["agreement"] < 1.0 for t in trials)
    assert caught.value.exit_code == 1


def test_fallback_keeps_the_most_sensitive_nodes_in_float(digits_onnx, tmp_path):
    """At 100% the fallback excludes nodes; whatever it returns has agreement >= 100% and names
    the excluded nodes, else it refuses."""
    out = tmp_path / "q.onnx"
    cfg = quick(min_agreement=1.0, max_exclude=64, calibration="minmax", types="u8s8", quant_format="qdq",
                per_channel="on", eval_samples=269)
    try:
        result = quantize_artifact(digits_onnx, out, cfg)
    except int8.QuantizationRefused as e:
        result = e.result
        assert not out.exists()
    else:
        assert result.agreement == 1.0 and result.chosen["exclude"]
        excluded = set(result.chosen["exclude"])
        kept = [n for n in onnx.load(str(out)).graph.node if n.name in excluded]
        assert kept and all(n.op_type in int8.QUANTIZABLE_OPS for n in kept)
        assert all(n.input[1] in {i.name for i in onnx.load(str(out)).graph.initializer} for n in kept
                   if n.op_type == "Conv")  # float weights, no DequantizeLinear in front
    assert any("most sensitive" in n for n in result.notes)
    assert result.sensitivity and result.sensitivity[0]["sqnr_drop_db"] >= result.sensitivity[-1]["sqnr_drop_db"]


def test_resolution_levels_group_convolutions_by_output_size(digits_onnx, tmp_path):
    """Every convolution lands in one level, largest output first, and the sizes follow the input
    size the levels are read at."""
    convs = {n.name for n in onnx.load(str(digits_onnx)).graph.node if n.op_type == "Conv"}
    levels = int8.resolution_levels(digits_onnx, (3, 32, 32), tmp_path)
    areas = [h * w for (h, w), _ in levels]
    assert len(levels) >= 3 and areas == sorted(areas, reverse=True) and len(set(areas)) == len(areas)
    assert sorted(n for _, names in levels for n in names) == sorted(convs)
    first_conv = next(n.name for n in onnx.load(str(digits_onnx)).graph.node if n.op_type == "Conv")
    assert first_conv in levels[0][1]
    bigger = int8.resolution_levels(digits_onnx, (3, 64, 64), tmp_path)
    (h, w), names = levels[0]
    assert bigger[0] == ((2 * h, 2 * w), names)


def _float_convs(path) -> set[str]:
    """Conv nodes of an INT8 QDQ graph that still read float weights straight from an initializer."""
    proto = onnx.load(str(path))
    inits = {i.name for i in proto.graph.initializer}
    return {n.name for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits}


@pytest.mark.parametrize("gain", [0.10, 0.01])
def test_mixed_step_keeps_high_resolution_layers_in_float_only_when_faster(gain, digits_onnx, tmp_path,
                                                                           monkeypatch):
    """Planted timings: the copy with the highest-resolution level in float is ``gain`` faster than
    all-INT8. 10% (over the 3% margin) -> written with exactly that level in float, and the note
    says so; 1% -> all-INT8 is kept. With --no-mixed no copy is built."""
    levels = int8.resolution_levels(digits_onnx, (3, 32, 32), tmp_path)
    top = set(levels[0][1])

    def fake_time(paths, size, **kw):
        ms = [2.0]
        for p in paths[1:]:
            kept = _float_convs(p)
            ms.append(1.0 if not kept else 1.0 - gain if kept == top else 1.0 - gain / 2)
        return [LatencyStats.from_seconds([m / 1000], 1, 1) for m in ms]

    monkeypatch.setattr(int8, "time_models", fake_time)
    pinned = dict(min_agreement=0.5, calibration="minmax", types="u8s8", quant_format="qdq", per_channel="on",
                  bias_correction="off")
    out = tmp_path / "q.onnx"
    result = quantize_artifact(digits_onnx, out, quick(**pinned))
    if gain > int8.MIXED_MARGIN:
        assert set(result.chosen["exclude"]) == top == _float_convs(out)
        assert result.chosen["p50_ms"] == pytest.approx(1.0 - gain)
        assert any(n.startswith(f"kept the {len(top)} convolution(s)") for n in result.notes)
    else:
        assert not result.chosen["exclude"] and not _float_convs(out)
        assert any(n.startswith("all-INT8 kept") for n in result.notes)
    assert len(result.trials) == 3  # all-INT8 + two levels in float
    plain = quantize_artifact(digits_onnx, tmp_path / "plain.onnx", quick(**pinned, mixed=False))
    assert len(plain.trials) == 1 and not plain.chosen["exclude"]


def test_sqnr_db():
    ref = np.ones(1000, np.float32)
    assert math.isinf(int8.sqnr_db(ref, ref.copy()))
    assert int8.sqnr_db(ref, ref + 0.1) == pytest.approx(20.0, abs=1e-4)  # S/N = 1 / 0.01
    assert int8.sqnr_db(ref, ref + 0.01) == pytest.approx(40.0, abs=1e-4)
    # a small signal of both signs (a logit vector near zero): power is the mean square, not cube
    small = np.tile(np.array([-0.02, 0.02], np.float32), 500)
    assert int8.sqnr_db(small, small + 0.002) == pytest.approx(20.0, abs=1e-3)
    assert int8.sqnr_db(np.zeros(4, np.float32), np.full(4, 0.1, np.float32)) < -200  # no signal at all


def test_node_sensitivity_ranks_the_node_that_adds_the_error(tmp_path):
    """Two chained 1x1 convolutions; only the second one's weights are perturbed in the 'QDQ'
    graph: it is ranked first with a positive drop, the first one with none."""
    from onnx import TensorProto, helper, numpy_helper

    def graph(w2: np.ndarray, path: Path) -> Path:
        w1 = np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
        nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="first"),
                 helper.make_node("Conv", ["a", "w2"], ["y"], name="second")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    w2 = np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
    ref = graph(w2, tmp_path / "f.onnx")
    noisy = graph(w2 + 0.05, tmp_path / "q.onnx")
    images = np.random.default_rng(0).standard_normal((8, 2, 3, 3)).astype(np.float32)
    ranking = int8.node_sensitivity(ref, noisy, images, tmp_path)
    assert [n for n, _ in ranking] == ["second", "first"]
    assert ranking[0][1] > 10 and ranking[1][1] == 0


def test_dynamic_mode_and_safetensors_input(digits_onnx, tmp_path):
    """--dynamic quantizes without calibration; a .safetensors input is exported first."""
    art = digits_onnx.with_suffix(".safetensors")
    out = tmp_path / "d.onnx"
    result = quantize_artifact(art, out, QuantizeConfig(dynamic=True, **{**QUICK, "min_agreement": 0.5}))
    assert result.mode == "dynamic" and result.chosen["agreement"] >= 0.5
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


# ----------------------------------------------------------------------------- bad input

def test_config_rules():
    with pytest.raises(UserError, match="nothing to do"):
        QuantizeConfig().validate()
    with pytest.raises(UserError, match="one of"):
        QuantizeConfig(int8=True, dynamic=True).validate()
    with pytest.raises(UserError):
        QuantizeConfig(int8=True, min_agreement=1.5).validate()
    with pytest.raises(UserError):
        QuantizeConfig(int8=True, types="s8u8").validate()
    assert QuantizeConfig(int8=True, types="u8s8").validate().pinned() == {"types": "u8s8"}


def _no_metadata_copy(src: Path, dst: Path) -> Path:
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("case", ["no-metadata", "no-metadata-calib", "quantized", "same-file", "suffix",
                                  "missing", "not-onnx", "bad-format"])
def test_bad_input_exits_2_with_one_line(case, digits_onnx, tmp_path, capsys):
    src, out, extra = digits_onnx, tmp_path / "q.onnx", []
    if case.startswith("no-metadata"):
        src = _no_metadata_copy(digits_onnx, tmp_path / "foreign.onnx")
        extra = ["--calib", "digits"] if case.endswith("calib") else []
    elif case == "quantized":
        from onnxruntime.quantization import quantize_dynamic

        src = tmp_path / "already.onnx"
        quantize_dynamic(str(digits_onnx), str(src))
    elif case == "same-file":
        src = tmp_path / "same.onnx"
        src.write_bytes(digits_onnx.read_bytes())
        out = src
    elif case == "suffix":
        out = tmp_path / "q.safetensors"
    elif case == "missing":
        src = tmp_path / "nope.onnx"
    elif case == "not-onnx":
        src = tmp_path / "junk.onnx"
        src.write_bytes(b"definitely not a model")
    elif case == "bad-format":
        extra = ["--format", "qlinear"]
    before = src.read_bytes() if src.exists() else None
    code = main(["quantize", str(src), "--int8", "--quiet", "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("compress quantize: error:") and "Traceback" not in err
    if before is not None:
        assert src.read_bytes() == before
    if case != "same-file":
        assert not out.exists()


def test_entropy_calibration_clips_outliers_that_minmax_keeps(tmp_path):
    """The "entropy" candidate's ranges are its own: on a heavy-tailed activation (rare values 50x
    the rest) the KL threshold lies far inside the min-max range. quantize_static's own Entropy
    (128 histogram bins = the 128 quantized bins) returns exactly the min-max range."""
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import load_tensors_data

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    rng = np.random.default_rng(0)
    images = np.abs(rng.standard_normal((16, 1, 8, 8))).astype(np.float32)
    images.reshape(-1)[rng.choice(images.size, 4, replace=False)] = 50.0
    int8.entropy_ranges(src, "x", images, tmp_path / "ranges.json")
    ranges = load_tensors_data(tmp_path / "ranges.json")
    low, high = (float(np.ravel(v)[0]) for v in ranges.data["y"].range_value)
    assert ranges.calibration_method.name == "Entropy"
    assert 1.0 < high < 10.0 and low < 0.01  # the outliers (50) are clipped, the bulk (|N(0,1)|) kept
    # and it is what an "entropy" candidate is quantized with
    from compress.quantize.calib import QuantData

    cache = tmp_path / "cache"
    cache.mkdir()
    int8.quantize_candidate(src, tmp_path / "q.onnx", int8.Candidate("qdq", "u8s8", False, "entropy"),
                            QuantData(calib=images, eval=images[:1]), "x", cache)
    used = load_tensors_data(cache / "ranges-entropy.json").data["y"].range_value
    assert float(np.ravel(used[1])[0]) == pytest.approx(high)
