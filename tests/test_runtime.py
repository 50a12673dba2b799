"""compress/runtime.py, the torch-free timing layer: latency statistics with known answers,
interleaved timing on a fake clock (exact timings, exact round counts) and the choice of the
input size a model is run at."""
import gc
import math
import time

import numpy as np
import pytest

from compress.errors import UserError
from compress.runtime import (LatencyStats, measure_interleaved, ort_session, resolve_input_size, spin_mode,
                              square_size)


# ----------------------------------------------------------------------------- LatencyStats

def test_statistics_of_1_to_101_ms():
    # 101 evenly spaced samples: every percentile falls exactly on a sample
    st = LatencyStats.from_seconds([i / 1000 for i in range(101, 0, -1)], batch=8, threads=2)
    assert (st.batch, st.threads, st.runs) == (8, 2, 101)
    assert st.p50_ms == pytest.approx(51.0)
    assert st.p90_ms == pytest.approx(91.0)
    assert st.p99_ms == pytest.approx(100.0)
    assert st.iqr_ms == pytest.approx(76.0 - 26.0)
    assert st.mean_ms == pytest.approx(51.0)
    assert st.std_ms == pytest.approx(math.sqrt((101 ** 2 - 1) / 12))  # population std of 1..101
    assert (st.min_ms, st.max_ms) == (pytest.approx(1.0), pytest.approx(101.0))
    assert st.throughput == pytest.approx(8 * 1000 / 51.0)  # images per second at the median


def test_statistics_interpolate_between_samples():
    st = LatencyStats.from_seconds(np.array([0.004, 0.001, 0.002, 0.003]), batch=1, threads=1)
    assert st.p50_ms == pytest.approx(2.5)
    assert st.iqr_ms == pytest.approx(3.25 - 1.75)
    assert st.p90_ms == pytest.approx(3.7) and st.p99_ms == pytest.approx(3.97)
    assert st.std_ms == pytest.approx(np.std([1, 2, 3, 4]))


def test_types_are_plain_python():
    st = LatencyStats.from_seconds(np.array([0.002, 0.002]), batch=np.int64(4), threads=np.int32(1))
    assert type(st.batch) is int and type(st.threads) is int and type(st.runs) is int
    assert all(type(getattr(st, f)) is float for f in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "iqr_ms",
                                                        "min_ms", "max_ms"))
    assert st.std_ms == 0.0 and st.iqr_ms == 0.0


def test_no_timings_is_an_error():
    with pytest.raises(ValueError, match="^no timings$"):
        LatencyStats.from_seconds([], batch=1, threads=1)


def test_throughput_of_a_zero_latency_is_infinite():
    st = LatencyStats.from_seconds([0.0, 0.0, 0.0], batch=2, threads=1)
    assert st.throughput == float("inf")


def test_to_dict_has_every_field_and_the_throughput():
    st = LatencyStats.from_seconds([0.010, 0.020, 0.030], batch=2, threads=3)
    d = st.to_dict()
    assert d == {"batch": 2, "threads": 3, "runs": 3, "p50_ms": pytest.approx(20.0), "p90_ms": pytest.approx(28.0),
                 "p99_ms": pytest.approx(29.8), "mean_ms": pytest.approx(20.0),
                 "std_ms": pytest.approx(np.std([10, 20, 30])), "iqr_ms": pytest.approx(10.0),
                 "min_ms": pytest.approx(10.0), "max_ms": pytest.approx(30.0), "throughput": pytest.approx(100.0)}


def test_format_is_the_documented_line():
    st = LatencyStats(batch=1, threads=2, runs=30, p50_ms=12.3, p90_ms=13.0, p99_ms=15.2, mean_ms=12.5, std_ms=0.6,
                      iqr_ms=0.4, min_ms=11.9, max_ms=16.0)
    # the example in LatencyStats.format's docstring
    assert st.format() == "p50 12.30 ms (p90 13.00, p99 15.20, IQR 0.40; 81.3 img/s, 30 runs, batch 1, 2 thr)"


# ----------------------------------------------------------------------------- measure_interleaved

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


def runner(clock, name, seconds, log):
    def run():
        log.append(name)
        clock.now += seconds
    return run


def test_timings_are_per_runner_and_exact(clock):
    log = []
    a, b, c = (runner(clock, n, s, log) for n, s in (("a", 0.002), ("b", 0.005), ("c", 0.001)))
    times = measure_interleaved([a, b, c], warmup=2, min_runs=4, budget_s=0.0, max_runs=100)
    assert [len(t) for t in times] == [4, 4, 4]
    np.testing.assert_allclose(times[0], 0.002)
    np.testing.assert_allclose(times[1], 0.005)
    np.testing.assert_allclose(times[2], 0.001)
    # warm-up: each runner twice, one after the other; then rounds a b c a b c ...
    assert log == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 4


def test_rounds_continue_until_the_budget_is_spent(clock):
    log = []
    # binary fractions, so the fake clock adds up exactly: a round takes 5/512 s; the budget is
    # 25/512 s per runner, 50/512 s for the two -> exactly 10 rounds
    a, b = runner(clock, "a", 1 / 512, log), runner(clock, "b", 4 / 512, log)
    times = measure_interleaved([a, b], warmup=0, min_runs=1, budget_s=25 / 512, max_runs=1000)
    assert [len(t) for t in times] == [10, 10]
    assert log == ["a", "b"] * 10


def test_min_runs_beats_the_budget_and_max_runs_caps_it(clock):
    log = []
    a = runner(clock, "a", 1.0, log)
    assert len(measure_interleaved([a], warmup=0, min_runs=7, budget_s=0.5, max_runs=50)[0]) == 7
    b = runner(clock, "b", 0.001, log)
    assert len(measure_interleaved([b], warmup=0, min_runs=2, budget_s=60.0, max_runs=9)[0]) == 9
    assert len(measure_interleaved([b], warmup=0, min_runs=3, budget_s=60.0, max_runs=3)[0]) == 3


def test_defaults_warm_up_three_times_and_time_at_least_ten(clock):
    log = []
    a = runner(clock, "a", 0.5, log)  # slow enough that the default 2 s budget ends after 4 runs
    (times,) = measure_interleaved([a])
    assert len(times) == 10 and log.count("a") == 13


def test_negative_warmup_means_none(clock):
    log = []
    measure_interleaved([runner(clock, "a", 0.001, log)], warmup=-3, min_runs=2, budget_s=0.0)
    assert log == ["a", "a"]


def test_no_runners_no_timings():
    assert measure_interleaved([]) == []


@pytest.mark.parametrize("kw", [dict(min_runs=0), dict(min_runs=5, max_runs=4), dict(min_runs=-1, max_runs=0)])
def test_bad_run_counts(kw):
    with pytest.raises(ValueError, match=r"^need 1 <= min_runs <= max_runs, got -?\d+, -?\d+$"):
        measure_interleaved([lambda: None], **kw)


def test_one_run_each_is_allowed(clock):
    log = []
    times = measure_interleaved([runner(clock, "a", 0.001, log)], warmup=0, min_runs=1, budget_s=0.0, max_runs=1)
    assert [len(t) for t in times] == [1]


def test_garbage_collector_paused_while_timing_and_restored():
    seen = []
    assert gc.isenabled()
    measure_interleaved([lambda: seen.append(gc.isenabled())], warmup=1, min_runs=3, budget_s=0.0)
    assert seen == [True, False, False, False]  # the warm-up call runs with the collector on
    assert gc.isenabled()


def test_garbage_collector_stays_off_if_it_was_off():
    gc.disable()
    try:
        measure_interleaved([lambda: None], warmup=0, min_runs=2, budget_s=0.0)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_garbage_collector_restored_when_a_runner_fails():
    def boom():
        raise RuntimeError("runner failed")
    with pytest.raises(RuntimeError, match="runner failed"):
        measure_interleaved([boom], warmup=0, min_runs=1, budget_s=0.0)
    assert gc.isenabled()


def test_real_sleeps_are_measured():
    times = measure_interleaved([lambda: time.sleep(0.002), lambda: time.sleep(0.01)], warmup=0, min_runs=3,
                                budget_s=0.0)
    assert min(times[0]) >= 0.002 and min(times[1]) >= 0.01
    assert np.median(times[1]) > np.median(times[0])


def warm_then(clock, name, cold, warm, log):
    """A runner whose call takes ``cold`` seconds right after another runner's call, else ``warm``."""
    def run():
        clock.now += warm if log and log[-1][0] == name else cold
        log.append((name, clock.now))
    return run


def test_blocks_sized_from_the_warm_up_with_one_untimed_call_first(clock):
    log = []
    # 1/256 s and 1/64 s per warm call; blocks of 8/256 s -> 8 and 2 timed calls per turn
    a = warm_then(clock, "a", 1 / 32, 1 / 256, log)
    b = warm_then(clock, "b", 1 / 32, 1 / 64, log)
    times = measure_interleaved([a, b], warmup=2, min_runs=16, budget_s=0.0, max_runs=1000, block_s=8 / 256)
    names = [n for n, _ in log]
    assert names[:4] == ["a", "a", "b", "b"]
    assert names[4:4 + 9 + 3] == ["a"] * 9 + ["b"] * 3  # one untimed call, then the block
    # the cold call after the other runner is never timed: every timing is the warm one
    np.testing.assert_allclose(times[0], 1 / 256)
    np.testing.assert_allclose(times[1], 1 / 64)
    assert len(times[1]) == 16 and len(times[0]) == 64  # 8 turns: b needs 8 to reach min_runs


def test_strict_alternation_times_the_cold_calls(clock):
    log = []
    a = warm_then(clock, "a", 1 / 32, 1 / 256, log)
    b = warm_then(clock, "b", 1 / 32, 1 / 64, log)
    times = measure_interleaved([a, b], warmup=2, min_runs=4, budget_s=0.0, block_s=0.0)
    np.testing.assert_allclose(times[0], 1 / 32)  # every call follows the other runner's
    assert [len(t) for t in times] == [4, 4]


def test_blocks_stop_at_max_runs_and_a_lone_runner_gets_no_blocks(clock):
    log = []
    a = warm_then(clock, "a", 1 / 32, 1 / 256, log)
    b = warm_then(clock, "b", 1 / 32, 1 / 64, log)
    times = measure_interleaved([a, b], warmup=2, min_runs=5, budget_s=0.0, max_runs=5, block_s=8 / 256)
    assert [len(t) for t in times] == [5, 5]
    log.clear()
    (times,) = measure_interleaved([a], warmup=1, min_runs=3, budget_s=0.0, max_runs=3, block_s=1.0)
    assert len(log) == 4 and len(times) == 3


def test_spin_modes():
    assert (spin_mode(True), spin_mode(False), spin_mode("run")) == ("on", "off", "run")
    with pytest.raises(ValueError, match="spinning must be one of off, run, on"):
        spin_mode("sometimes")


@pytest.mark.parametrize("mode, allow, stop", [("run", "1", "1"), ("off", "0", ""), ("on", "", "")])
def test_spin_mode_reaches_the_session_options(tmp_path, mode, allow, stop):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    so = ort_session(tmp_path / "m.onnx", 2, spinning=mode).get_session_options()

    def entry(key):
        try:
            return so.get_session_config_entry(key)
        except RuntimeError:  # not set: ONNX Runtime's default
            return ""
    assert (entry("session.intra_op.allow_spinning"), entry("session.force_spinning_stop")) == (allow, stop)


# ----------------------------------------------------------------------------- input sizes

def test_square_size():
    assert square_size(32) == (3, 32, 32)
    assert square_size(16, channels=1) == (1, 16, 16)
    size = square_size([np.int64(3), 24, 40])
    assert size == (3, 24, 40) and all(type(v) is int for v in size)
    for bad in ([3, 32], (1, 3, 32, 32)):
        with pytest.raises(UserError, match=r"^input size must be a side length or \(C, H, W\), got "):
            square_size(bad)


@pytest.mark.parametrize("kw,expected", [
    (dict(requested=64, meta_size=[1, 32, 32]), (1, 64, 64)),               # side + the model's channels
    (dict(requested=64, graph_shape=("N", 1, "H", "W")), (1, 64, 64)),      # channels from a fixed graph axis
    (dict(requested=64, graph_shape=("N", "C", "H", "W")), (3, 64, 64)),    # nothing known: RGB
    (dict(requested=64, graph_shape=("N", 0, "H", "W")), (3, 64, 64)),      # 0 is not a fixed size
    (dict(requested=64), (3, 64, 64)),
    (dict(requested=(1, 20, 30), meta_size=[3, 32, 32]), (1, 20, 30)),      # an explicit C, H, W wins
    (dict(requested=32, graph_shape=(1, 3, 32, 32), batch=1), (3, 32, 32)),  # matches the fixed graph
    (dict(requested=None, meta_size=[3, 40, 48], graph_shape=(1, 3, 32, 32)), (3, 40, 48)),
    (dict(requested=None, graph_shape=(None, 3, 28, 28)), (3, 28, 28)),     # the graph's fixed C, H, W
    (dict(requested=None, graph_shape=("N", 3, 28, 28), batch=8), (3, 28, 28)),
    (dict(requested=None, meta_size=[3, 32, 32], graph_shape=(-1, 3, 32, 32), batch=4), (3, 32, 32)),
])
def test_resolved_sizes(kw, expected):
    size = resolve_input_size(**kw)
    assert size == expected and all(type(v) is int for v in size)


@pytest.mark.parametrize("kw,message", [
    (dict(requested=64, graph_shape=(1, 3, 32, 32), source="m.onnx"),
     r"^m\.onnx: the graph's input is fixed at 32x32; it cannot run at 64x64 \(re-export without --static-shape\)$"),
    (dict(requested=(3, 32, 48), graph_shape=("N", 3, 32, 32)), r"^the model: the graph's input is fixed at 32x32"),
    (dict(requested=None, graph_shape=("N", 3, "H", "W"), source="x.onnx"),
     r"^x\.onnx: no input size in its metadata or graph; pass --input-size$"),
    (dict(requested=None, graph_shape=(1, 3, 32)), r"no input size in its metadata or graph"),
    (dict(requested=None), r"^the model: no input size"),
    (dict(requested=None, meta_size=[3, 32, 32], graph_shape=(1, 3, 32, 32), batch=8, source="b.onnx"),
     r"^b\.onnx: the graph has a fixed batch size of 1; use --batch 1$"),
    (dict(requested=32, graph_shape=(2, 3, "H", "W"), batch=1), r"fixed batch size of 2; use --batch 2$"),
])
def test_refused_sizes(kw, message):
    with pytest.raises(UserError, match=message):
        resolve_input_size(**kw)


def test_a_fixed_batch_is_checked_only_when_a_batch_is_given():
    assert resolve_input_size(None, graph_shape=(1, 3, 8, 8)) == (3, 8, 8)
    assert resolve_input_size(None, graph_shape=(1, 3, 8, 8), batch=1) == (3, 8, 8)


@pytest.mark.parametrize("kw,expected", [
    (dict(requested=32, graph_shape=("N",)), (3, 32, 32)),          # too short to name channels
    (dict(requested=32, graph_shape=("N", 1)), (1, 32, 32)),
    (dict(requested=(3, 24, 32), graph_shape=("N", 3, 24, 32)), (3, 24, 32)),
])
def test_resolved_sizes_of_odd_graphs(kw, expected):
    assert resolve_input_size(**kw) == expected


def test_messages_name_height_and_width():
    with pytest.raises(UserError, match=r"fixed at 24x32; it cannot run at 40x48 "):
        resolve_input_size((3, 40, 48), graph_shape=("N", 3, 24, 32))


def test_a_graph_with_a_dynamic_channel_axis_gives_no_size():
    with pytest.raises(UserError, match="no input size in its metadata or graph"):
        resolve_input_size(None, graph_shape=("N", "C", 28, 28))


def test_a_fixed_batch_is_checked_whatever_the_other_axes():
    with pytest.raises(UserError, match="fixed batch size of 1; use --batch 1"):
        resolve_input_size(8, graph_shape=(1, "C", "H", "W"), batch=4)
