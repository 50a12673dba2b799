"""Export verification: the gate that refuses an ONNX file whose outputs differ from PyTorch's.

Exact differences come from a fake ONNX Runtime session that returns PyTorch's logits plus a
chosen error on a chosen check (whole batch, first image alone, first image enlarged), so the
largest difference and the tolerance boundary are known to the bit. Real exports then show the
gate compares ONNX Runtime with *PyTorch* (a weight perturbed on either side fails) and that a
NaN anywhere fails."""
import time
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.export import ExportVerificationError, _max_abs_diff, export_onnx, verify_onnx
from compress.meta import ModelMeta

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> global pool -> linear: small, fully convolutional, BN to fold."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5, generator=g)
            self.bn.running_var.uniform_(0.5, 2.0, generator=g)
            self.fc.weight.mul_(8.0)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class ChannelMeans(nn.Module):
    """logits = per-channel means: exact in float32 for images of dyadic values."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))  # a parameter, so .numpy() needs no_grad

    def forward(self, x):
        return x.mean((2, 3)) * self.scale


def meta(classes=3, side=8):
    return ModelMeta(arch="tiny", num_classes=classes, input_size=[3, side, side])


def images(n=3, side=8, seed=0):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


class FakeSession:
    """Stands in for ONNX Runtime: PyTorch's logits, plus ``error(x)`` added."""

    def __init__(self, model, error=lambda x: 0.0, name="pixels", shape=None):
        self.model, self.error, self.name, self.shape = model, error, name, shape
        self.seen = []

    def get_inputs(self):
        return [type("Input", (), {"name": self.name})()]

    def run(self, outputs, feed):
        assert outputs is None and list(feed) == [self.name]
        x = feed[self.name]
        assert x.dtype == np.float32
        self.seen.append(x.copy())
        with torch.no_grad():
            out = self.model(torch.from_numpy(x)).numpy()
        out = out + np.float32(self.error(x))
        if self.shape is not None:
            out = out.reshape(self.shape(out))
        return [out]


def on(n=None, side=None, value=0.0):
    """An error of ``value`` on the checks with batch ``n`` and/or side ``side`` only."""
    return lambda x: value if (n is None or len(x) == n) and (side is None or x.shape[-1] == side) else 0.0


# ----------------------------------------------------------------------------- _max_abs_diff, exactly

def test_the_three_checks_and_their_inputs():
    model, x = ChannelMeans(), images(3, 8)
    sess = FakeSession(model)
    assert _max_abs_diff(model, sess, x, dynamic_spatial=True) == 0.0
    shapes = [s.shape for s in sess.seen]
    assert shapes == [(3, 3, 8, 8), (1, 3, 8, 8), (1, 3, 24, 24)]  # batch, first image, first image enlarged
    np.testing.assert_array_equal(sess.seen[0], x.numpy())
    np.testing.assert_array_equal(sess.seen[1], x[:1].numpy())
    enlarged = nn.functional.interpolate(x[:1], size=(24, 24), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(sess.seen[2], enlarged.numpy(), rtol=0, atol=1e-6)
    static = FakeSession(model)
    _max_abs_diff(model, static, x, dynamic_spatial=False)
    assert [s.shape for s in static.seen] == [(3, 3, 8, 8), (1, 3, 8, 8)]  # a static graph runs only at 8x8


def test_rectangular_images_are_enlarged_on_both_sides():
    model = ChannelMeans()
    sess = FakeSession(model)
    _max_abs_diff(model, sess, torch.randn(2, 3, 8, 12), dynamic_spatial=True)
    assert sess.seen[2].shape == (1, 3, 24, 28)


@pytest.mark.parametrize("n,side,value", [(3, 8, 0.25), (1, 8, 0.5), (1, 24, 0.75), (3, 8, -0.375)])
def test_an_error_on_any_one_check_is_found(n, side, value):
    model = ChannelMeans()
    x = torch.full((3, 3, 8, 8), 0.5)  # logits 0.5: the added error is exact in float32
    assert _max_abs_diff(model, FakeSession(model, on(n, side, value)), x, True) == abs(value)


def test_the_largest_difference_wins_whatever_its_check():
    model, x = ChannelMeans(), torch.full((3, 3, 8, 8), 0.5)
    errors = lambda x: {(3, 8): 0.125, (1, 8): 0.375, (1, 24): 0.25}[(len(x), x.shape[-1])]
    assert _max_abs_diff(model, FakeSession(model, errors), x, True) == 0.375
    errors = lambda x: {(3, 8): 0.5, (1, 8): 0.125, (1, 24): 0.25}[(len(x), x.shape[-1])]
    assert _max_abs_diff(model, FakeSession(model, errors), x, True) == 0.5
    # the enlarged image's error does not count when the graph is static
    assert _max_abs_diff(model, FakeSession(model, on(1, 24, 9.0)), x, False) == 0.0


@pytest.mark.parametrize("n,side", [(3, 8), (1, 8), (1, 24)])
def test_a_nan_on_any_check_is_not_lost(n, side):
    model, x = ChannelMeans(), torch.full((3, 3, 8, 8), 0.5)
    assert np.isnan(_max_abs_diff(model, FakeSession(model, on(n, side, np.nan)), x, True))


def test_a_different_output_shape_fails():
    model, x = ChannelMeans(), images(3, 8)
    sess = FakeSession(model, shape=lambda out: (out.shape[0], 1, out.shape[1]))
    with pytest.raises(ExportVerificationError,
                       match=r"^ONNX output shape \(3, 1, 3\) differs from PyTorch's \(3, 3\)$"):
        _max_abs_diff(model, sess, x, True)


def test_runs_without_autograd():
    model = ChannelMeans()
    _max_abs_diff(model, FakeSession(model), images(2, 8), True)  # .numpy() of a grad-tracking tensor would raise
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------- verify_onnx: the tolerance, exactly

@pytest.fixture
def fake_ort(monkeypatch):
    """compress.export.ort_session replaced by a FakeSession with a chosen error on every check."""
    import compress.export as E

    made = []

    def install(model, error):
        def session(path, threads=1, **kw):
            made.append((str(path), threads))
            return FakeSession(model, lambda x: error)
        monkeypatch.setattr(E, "ort_session", session)
        return made
    return install


def test_the_tolerance_is_honoured_exactly(fake_ort, tmp_path):
    model, x = ChannelMeans(), torch.full((2, 3, 8, 8), 0.5)
    made = fake_ort(model, 0.125)
    assert verify_onnx(model, tmp_path / "m.onnx", x, tol=0.125) == 0.125  # equal to the tolerance: accepted
    assert verify_onnx(model, tmp_path / "m.onnx", x, tol=1.0) == 0.125
    with pytest.raises(ExportVerificationError, match=r"^ONNX Runtime differs from PyTorch by 0\.125 \(max abs logit\) "
                                                      r"> tolerance 0\.12; nothing written"):
        verify_onnx(model, tmp_path / "m.onnx", x, tol=0.12)
    with pytest.raises(ExportVerificationError):
        verify_onnx(model, tmp_path / "m.onnx", x, tol=np.nextafter(0.125, 0))
    assert made[0] == (str(tmp_path / "m.onnx"), 1)  # one thread, the file given


def test_verify_uses_dynamic_spatial_by_default(monkeypatch, tmp_path):
    import compress.export as E

    seen = []
    model = ChannelMeans()
    monkeypatch.setattr(E, "ort_session", lambda path, threads=1: FakeSession(model))
    monkeypatch.setattr(E, "_max_abs_diff", lambda m, s, x, dyn: seen.append(dyn) or 0.0)
    verify_onnx(model, tmp_path / "m.onnx", images(2, 8), tol=1e-4)
    verify_onnx(model, tmp_path / "m.onnx", images(2, 8), tol=1e-4, dynamic_spatial=False)
    assert seen == [True, False]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_difference_fails(fake_ort, tmp_path, bad):
    model = ChannelMeans()
    fake_ort(model, bad)
    with pytest.raises(ExportVerificationError, match="differs from PyTorch by (nan|inf)"):
        verify_onnx(model, tmp_path / "m.onnx", torch.full((2, 3, 8, 8), 0.5), tol=1e6)


# ----------------------------------------------------------------------------- real exports

def test_a_clean_export_matches_and_reports(tmp_path):
    import onnx

    model = Tiny()
    model.train()
    report = export_onnx(model, meta(), tmp_path / "m.onnx", verify_images=images(5), verify_source="unit test")
    assert model.training  # mode given back
    assert report.max_abs_diff is not None and 0 <= report.max_abs_diff <= 1e-4
    assert report.verified_on == "5 images (unit test)" and report.tolerance == 1e-4
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert report.path == tmp_path / "m.onnx" and report.file_bytes == (tmp_path / "m.onnx").stat().st_size
    assert report.nodes == len(proto.graph.node) and report.opset == 17 and report.input_size == (3, 8, 8)
    counts = Counter(n.op_type for n in proto.graph.node)
    assert report.op_counts == dict(counts) and list(report.op_counts.values()) == sorted(counts.values(), reverse=True)
    assert report.batchnorm_nodes == 0 and "BatchNormalization" not in counts  # folded into the conv
    assert report.simplified is False and report.dynamic_spatial is True and report.seconds > 0
    assert proto.producer_name == "compress" and "tiny (multiclass, 3 classes)" in proto.doc_string
    d = report.to_dict()
    assert d["path"] == str(tmp_path / "m.onnx") and d["input_size"] == [3, 8, 8] and d["max_abs_diff"] == report.max_abs_diff
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_weight_perturbed_after_export_fails_verification(tmp_path):
    """ORT (the file) against PyTorch (the module): were ORT compared with itself, this would pass."""
    model, x = Tiny().eval(), images(4)
    export_onnx(model, meta(), tmp_path / "m.onnx", verify=False)
    assert verify_onnx(model, tmp_path / "m.onnx", x, tol=1e-4) <= 1e-4
    with torch.no_grad():
        model.fc.bias[1] += 0.01
    with pytest.raises(ExportVerificationError, match="differs from PyTorch by 0.01"):
        verify_onnx(model, tmp_path / "m.onnx", x, tol=1e-4)
    assert verify_onnx(model, tmp_path / "m.onnx", x, tol=0.02) == pytest.approx(0.01, abs=1e-5)


def test_a_weight_perturbed_in_the_file_fails_verification(tmp_path):
    import onnx
    from onnx import numpy_helper

    model, x = Tiny().eval(), images(4)
    export_onnx(model, meta(), tmp_path / "m.onnx", verify=False)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the folded conv weight
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(ExportVerificationError, match="> tolerance 0.0001"):
        verify_onnx(model, tmp_path / "bad.onnx", x, tol=1e-4)


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path):
    model = Tiny()
    with torch.no_grad():
        model.fc.weight[2, 0] = float("nan")  # PyTorch and ORT both give NaN: |NaN - NaN| is no match
    with pytest.raises(ExportVerificationError, match="differs from PyTorch by nan"):
        export_onnx(model, meta(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    assert export_onnx(model, meta(), tmp_path / "m.onnx", verify=False).max_abs_diff is None  # unverified: written


def test_the_gate_in_export_onnx_uses_the_tolerance_given(fake_ort, tmp_path):
    model = ChannelMeans()
    made = fake_ort(model, 0.25)
    x = torch.full((2, 3, 8, 8), 0.5)
    report = export_onnx(model, meta(), tmp_path / "ok.onnx", verify_images=x, tol=0.25)
    assert report.max_abs_diff == 0.25 and report.tolerance == 0.25 and (tmp_path / "ok.onnx").exists()
    assert made[0][0] != str(tmp_path / "ok.onnx")  # verified under the temporary name, before the rename
    with pytest.raises(ExportVerificationError, match="> tolerance 0.2;"):
        export_onnx(model, meta(), tmp_path / "bad.onnx", verify_images=x, tol=0.2)
    with pytest.raises(ExportVerificationError, match="> tolerance 0.0001;"):
        export_onnx(model, meta(), tmp_path / "bad.onnx", verify_images=x)  # the default tolerance
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.onnx"]  # nothing else written, no temporary left


def test_unverified_export_reports_skipped(tmp_path, fake_ort):
    made = fake_ort(ChannelMeans(), 99.0)
    report = export_onnx(Tiny(), meta(), tmp_path / "m.onnx", verify=False)
    assert report.max_abs_diff is None and report.verified_on == "skipped" and made == []


def test_default_verification_images_are_four_seeded_random_ones(tmp_path, monkeypatch):
    import compress.export as E

    seen = []
    monkeypatch.setattr(E, "verify_onnx", lambda model, path, x, tol, dyn: seen.append((x.clone(), tol, dyn)) or 0.0)
    r1 = export_onnx(Tiny(), meta(side=16), tmp_path / "a.onnx", tol=0.5, dynamic_spatial=False)
    r2 = export_onnx(Tiny(), meta(side=16), tmp_path / "b.onnx")
    assert r1.verified_on == "4 images (random normal inputs)" and r1.dynamic_spatial is False
    assert seen[0][0].shape == (4, 3, 16, 16) and torch.equal(seen[0][0], seen[1][0])  # seeded: the same each time
    assert seen[0][0].std() > 0.5  # random normal, not zeros
    assert (seen[0][1], seen[0][2]) == (0.5, False) and (seen[1][1], seen[1][2]) == (1e-4, True)
    r3 = export_onnx(Tiny(), meta(side=16), tmp_path / "c.onnx", verify_source="my images")
    assert r3.verified_on == "4 images (my images)"


def test_verification_images_must_match_the_input(tmp_path):
    with pytest.raises(UserError, match=r"^verification images are \(3, 16, 16\), export input is \(3, 8, 8\)$"):
        export_onnx(Tiny(), meta(), tmp_path / "m.onnx", verify_images=images(2, 16))
    assert list(tmp_path.iterdir()) == []


def test_the_traced_size_follows_input_size(tmp_path):
    import onnx

    r = export_onnx(Tiny(), meta(), tmp_path / "a.onnx", input_size=12, dynamic_spatial=False, verify=False)
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(tmp_path / "a.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert r.input_size == (3, 12, 12) and dims == ["batch", 3, 12, 12]
    assert export_onnx(Tiny(), meta(), tmp_path / "b.onnx", input_size=(3, 10, 14)).input_size == (3, 10, 14)


@pytest.mark.parametrize("kw,message", [
    (dict(opset=12), r"^opset must be between 13 and 20, got 12$"),
    (dict(opset=21), r"^opset must be between 13 and 20, got 21$"),
    (dict(tol=0.0), r"^tolerance must be > 0, got 0.0$"),
    (dict(tol=-1e-3), r"^tolerance must be > 0, got -0.001$"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        export_onnx(Tiny(), meta(), tmp_path / "m.onnx", **kw)
    assert list(tmp_path.iterdir()) == []


def test_other_opsets_in_range(tmp_path):
    import onnx

    for opset in (13, 20):
        r = export_onnx(Tiny(), meta(), tmp_path / f"m{opset}.onnx", opset=opset)
        assert r.opset == opset and onnx.load(str(tmp_path / f"m{opset}.onnx")).opset_import[0].version == opset


class NormFirst(nn.Module):
    """A BatchNorm on the input, before any convolution: nothing can fold it."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.norm.running_mean.fill_(0.25)
            self.norm.running_var.fill_(2.0)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.norm(x))).mean((2, 3)))


def test_an_unfoldable_batchnorm_is_reported(tmp_path):
    report = export_onnx(NormFirst(), meta(), tmp_path / "m.onnx")
    assert report.batchnorm_nodes == 1 and report.op_counts.get("BatchNormalization") == 1
    assert report.notes == ["BatchNorm folded with torch.fx before export",
                            "1 BatchNormalization node(s) not after a convolution stay in the graph"]
    assert report.max_abs_diff <= 1e-4 and report.to_dict()["notes"] == report.notes
    assert export_onnx(Tiny(), meta(), tmp_path / "t.onnx").notes == []


def test_export_takes_its_own_time_threads_and_randomness(tmp_path):
    class Spy(Tiny):
        threads: list = []

        def forward(self, x):
            Spy.threads.append(torch.get_num_threads())
            return super().forward(x)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = Spy().eval()
        torch.manual_seed(123)
        expected_draw = torch.rand(3)
        torch.manual_seed(123)
        start = time.perf_counter()
        report = export_onnx(model, meta(), tmp_path / "m.onnx")
        elapsed = time.perf_counter() - start
        assert torch.equal(torch.rand(3), expected_draw)  # the global random state is left alone
        assert Spy.threads and set(Spy.threads) == {1}  # traced and verified with one thread ...
        assert torch.get_num_threads() == 2  # ... and the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    assert 0 < report.seconds <= elapsed


def test_export_writes_nothing_but_its_output(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    export_onnx(Tiny(), meta(), tmp_path / "out" / "m.onnx")
    assert list(cwd.iterdir()) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.onnx"]


def test_simplified_export_is_verified_too(tmp_path):
    pytest.importorskip("onnxslim")
    import onnx

    report = export_onnx(Tiny(), meta(), tmp_path / "s.onnx", simplify=True)
    assert report.simplified and report.max_abs_diff <= 1e-4
    proto = onnx.load(str(tmp_path / "s.onnx"))
    assert report.nodes == len(proto.graph.node) and proto.producer_name == "compress"
