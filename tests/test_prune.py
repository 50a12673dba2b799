"""Pruning library: structured channel pruning over the whole registry (reload, ONNX parity),
unstructured magnitude pruning with held masks and AGP, sensitivity analysis, ratio search, KD loss."""
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
from compress.artifact import ModelMeta, load_model, save_model
from compress.training.losses import kd_loss
from compress.prune import (GradualMagnitudePruner, agp_sparsity, analyze_sensitivity, channel_groups,
                            choose_ratios, importance_by_name, magnitude_masks, prune_channels,
                            prune_magnitude, round_channels, search_ratio, sparsity_report)
from compress.report.plots import plot_sensitivity

warnings.filterwarnings("ignore", module="torch_pruning")



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(name: str, **kw) -> nn.Module:
    if name.startswith("mobilenet_v2"):
        kw.setdefault("width_mult", 0.25)
    m = models.create_model(name, num_classes=10, small_input=True, **kw)
    _randomize_bn(m)
    return m.eval()


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so pruning the wrong channel shows up in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


def x32(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- structured, registry-wide

@pytest.mark.parametrize("name", models.list_models())  # all of them, in the default suite (~25 s)
def test_prune_half_every_architecture(name, tmp_path):
    import onnxruntime as ort

    from compress.export import export_onnx

    model = tiny(name)
    x = x32()
    params0, macs0 = models.count_params(model), models.count_macs(model, (3, 32, 32))
    prune_channels(model, x[:1], ratio=0.5, importance=importance_by_name("l2"))
    model.eval()
    assert models.count_params(model) < 0.6 * params0
    assert models.count_macs(model, (3, 32, 32)) < 0.6 * macs0
    head = model.get_classifier()
    assert head.out_features == 10
    assert model.num_features == head.in_features
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()

    path = tmp_path / "p.safetensors"
    meta = ModelMeta.for_model(model, input_size=[3, 32, 32])
    save_model(model, path, meta)
    loaded, meta2 = load_model(path)
    assert loaded.num_features == head.in_features
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y)

    onnx_path = tmp_path / "p.onnx"
    export_onnx(loaded, meta2, onnx_path, verify=False)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, y.numpy(), atol=1e-3, rtol=1e-3)


def test_depthwise_and_residual_shapes_stay_consistent():
    model = tiny("mobilenet_v2")
    prune_channels(model, x32(1), ratio=0.5, importance=importance_by_name("l1"))
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels, name  # depthwise stays depthwise
    # every pruned group keeps a multiple of round_to channels (or its whole width when smaller)
    for g in channel_groups(model, x32(1)):
        assert g.channels % 8 == 0 or g.channels < 8, g


def test_round_channels():
    assert round_channels(12, 24, 8) == 16          # nearest multiple
    assert round_channels(11, 24, 8) == 8
    assert round_channels(3, 16, 8) == 8            # never below round_to ...
    assert round_channels(2, 4, 8) == 4             # ... nor above the current width
    assert round_channels(5, 16, 0) == 5
    assert round_channels(0, 16, 0) == 1


def test_ratio_per_layer_prunes_only_that_group():
    model = tiny("resnet18")
    before = {g.name: g.channels for g in channel_groups(model, x32(1))}
    prune_channels(model, x32(1), ratio=0.0, ratio_per_layer={"layer1.0.conv1": 0.5}, importance=importance_by_name("l2"))
    after = {g.name: g.channels for g in channel_groups(model, x32(1))}
    assert after["layer1.0.conv1"] == before["layer1.0.conv1"] // 2
    assert {k: v for k, v in after.items() if k != "layer1.0.conv1"} == \
        {k: v for k, v in before.items() if k != "layer1.0.conv1"}


def test_ignored_layer_keeps_its_channels():
    model = tiny("resnet18")
    prune_channels(model, x32(1), ratio=0.5, importance=importance_by_name("l2"), ignored_layers=["layer1.0.conv1"])
    assert model.layer1[0].conv1.out_channels == 64
    assert model.layer1[1].conv1.out_channels == 32


def test_global_lamp_and_bn_criteria_prune():
    for method, global_pruning in (("lamp", True), ("bn", False), ("l1", True)):
        model = tiny("mobilenet_v2")
        macs0 = models.count_macs(model, 32)
        prune_channels(model, x32(1), ratio=0.4, importance=importance_by_name(method), global_pruning=global_pruning)
        assert models.count_macs(model, 32) < 0.85 * macs0, method
        assert model(x32()).shape == (2, 10)


def test_taylor_needs_and_uses_gradients():
    model = tiny("mobilenet_v2")
    with pytest.raises(ValueError, match="gradients"):
        prune_channels(model, x32(1), ratio=0.5, importance=importance_by_name("taylor"))
    calls = []

    def grads(m):
        calls.append(1)
        m(x32(4)).logsumexp(1).mean().backward()

    prune_channels(model, x32(1), ratio=0.5, importance=importance_by_name("taylor"), compute_gradients=grads, steps=2)
    assert len(calls) == 2
    assert all(p.grad is None for p in model.parameters())


def test_iterative_steps_call_between_steps():
    model = tiny("mobilenet_v2")
    seen = []
    prune_channels(model, x32(1), ratio=0.5, importance=importance_by_name("l2"), steps=3, round_to=None,
                   between_steps=lambda m, step: seen.append((step, models.count_macs(m, 32))))
    assert [s for s, _ in seen] == [1, 2]
    assert seen[0][1] > seen[1][1] > models.count_macs(model, 32)


@pytest.mark.parametrize("bad", [dict(ratio=0.0), dict(ratio=1.0), dict(ratio=-0.1),
                                 dict(ratio=0.5, ignored_layers=["no.such.layer"]),
                                 dict(ratio=0.5, ratio_per_layer={"features.1": 1.2}), dict(ratio=0.5, steps=0)])
def test_bad_arguments_raise(bad):
    model = tiny("mobilenet_v2")
    with pytest.raises(ValueError):
        prune_channels(model, x32(1), importance=importance_by_name("l2"), **bad)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown pruning method"):
        importance_by_name("random-forest")


# ----------------------------------------------------------------------------- unstructured

def test_magnitude_masks_per_layer_and_global():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(100, generator=g), "b": torch.randn(40, 10, generator=g) * 10}
    masks = magnitude_masks(weights, 0.9)
    assert int((~masks["a"]).sum()) == 90 and int((~masks["b"]).sum()) == 360
    kept_a = weights["a"][masks["a"]].abs().min()
    assert kept_a >= weights["a"][~masks["a"]].abs().max()
    gm = magnitude_masks(weights, 0.5, global_scope=True)
    assert int(sum((~m).sum() for m in gm.values())) == 250
    # the large-magnitude layer keeps more of its weights under global ranking
    assert gm["b"].float().mean() > gm["a"].float().mean()


def test_unstructured_sparsity_reached_and_survives_save_load(tmp_path):
    model = tiny("resnet18")
    prune_magnitude(model, 0.9)
    rep = sparsity_report(model)
    assert abs(rep["global"] - 0.9) < 1e-3
    assert all(abs(v["sparsity"] - 0.9) < 0.01 for v in rep["layers"].values())
    assert model.fc.weight.eq(0).float().mean() < 0.5  # classifier protected
    assert not any("weight_orig" in k or "mask" in k for k in model.state_dict())
    path = tmp_path / "s.safetensors"
    save_model(model, path, ModelMeta.for_model(model, input_size=[3, 32, 32]))
    loaded, _ = load_model(path)
    assert abs(sparsity_report(loaded)["global"] - 0.9) < 1e-3
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_masks_hold_through_optimizer_steps():
    model = tiny("mobilenet_v2").train()
    masks = prune_magnitude(model, 0.8, global_scope=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x32(4)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        masks(model)
    assert abs(sparsity_report(model)["global"] - 0.8) < 1e-3
    # without re-applying, momentum regrows the pruned weights
    opt.zero_grad()
    nn.functional.cross_entropy(model(x32(4)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert sparsity_report(model)["global"] < 0.75


def test_agp_schedule_values():
    assert agp_sparsity(0, 100, 0.9) == pytest.approx(0.0)
    assert agp_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert agp_sparsity(50, 100, 0.9) == pytest.approx(0.9 - 0.9 * 0.5 ** 3)
    assert agp_sparsity(25, 100, 0.8, initial=0.2) == pytest.approx(0.8 + (0.2 - 0.8) * 0.75 ** 3)
    assert agp_sparsity(500, 100, 0.9) == pytest.approx(0.9)  # held after the end
    values = [agp_sparsity(t, 20, 0.9) for t in range(21)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # steep early, flat late (the point of the cubic)
    assert values[5] - values[0] > values[20] - values[15]


def test_gradual_pruner_follows_schedule():
    model = tiny("mobilenet_v2")
    pruner = GradualMagnitudePruner(model, 0.75, total_steps=10, frequency=2)
    seen = []
    for _ in range(14):
        pruner(model)
        seen.append(sparsity_report(model)["global"])
    assert seen[0] == pytest.approx(0.0, abs=1e-3)                       # step 1: not an update step
    assert seen[1] == pytest.approx(agp_sparsity(2, 10, 0.75), abs=1e-3)
    assert seen[9] == pytest.approx(0.75, abs=1e-3)
    assert seen[13] == pytest.approx(0.75, abs=1e-3)
    assert all(b >= a - 1e-6 for a, b in zip(seen, seen[1:]))


# ----------------------------------------------------------------------------- sensitivity and search

def _output_metric(x):
    """A "metric" that any change of the network's outputs moves (higher is not better, only different)."""
    def metric(m):
        with torch.no_grad():
            out = m(x).double()
        return float(out.sum() + (out ** 2).sum())
    return metric


@pytest.mark.parametrize("name", models.list_models())
def test_sensitivity_rows_equal_real_pruning_and_leave_the_model_exact(name):
    """Each row's metric is what pruning that group alone (on a copy, for real) gives, and the
    analysed model ends bit-for-bit as it started (a tensor shared by producer and consumer must
    be restored to its original, not to a half-zeroed copy)."""
    model = tiny(name)
    x = x32()
    metric = _output_metric(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    imp = importance_by_name("l2")
    baseline, rows = analyze_sensitivity(model, x[:1], metric, ratios=(0.5,), importance=imp, round_to=8)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{name}: {k} not restored"
    assert baseline == pytest.approx(metric(model), rel=1e-9)
    picked = {0, len(rows) // 2, len(rows) - 1}
    for i in sorted(picked):
        row = rows[i]
        pruned = copy.deepcopy(model)
        prune_channels(pruned, x[:1], ratio=0.0, ratio_per_layer={row.layer: 0.5}, importance=imp, round_to=8)
        groups = {g.name: g.channels for g in channel_groups(pruned, x[:1])}
        assert groups[row.layer] == row.kept, (name, row)
        assert metric(pruned) == pytest.approx(row.metric, rel=1e-5, abs=1e-4), (name, row)


def test_sensitivity_analysis_rows_ratios_and_plot(tmp_path):
    model = tiny("mobilenet_v2")
    x = x32(8)
    with torch.no_grad():
        ref = model(x).argmax(1)
    state = copy.deepcopy(model.state_dict())

    def agreement(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == ref).float().mean())

    baseline, rows = analyze_sensitivity(model, x[:1], agreement, ratios=(0.3, 0.7),
                                         importance=importance_by_name("l2"))
    assert baseline == 1.0
    groups = {r.layer for r in rows}
    assert len(rows) == 2 * len(groups) and "features.18.0" in groups
    assert all(r.kept <= r.channels for r in rows)
    assert any(r.drop > 0 for r in rows)
    for k, v in model.state_dict().items():  # the model is restored
        assert torch.equal(v, state[k]), k
    ratios = choose_ratios(rows, max_drop=10.0)
    assert set(ratios) == groups and all(v in (0.0, 0.3, 0.7) for v in ratios.values())
    png = tmp_path / "s.png"
    plot_sensitivity(baseline, rows, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_choose_ratios_stops_at_first_violation():
    from compress.prune import SensitivityRow

    rows = [SensitivityRow("a", 16, 0.1, 16, 0.9, 0.5), SensitivityRow("a", 16, 0.3, 8, 0.8, 2.0),
            SensitivityRow("a", 16, 0.5, 8, 0.9, 0.5), SensitivityRow("b", 16, 0.1, 16, 0.5, 40.0)]
    assert choose_ratios(rows, 1.0) == {"a": 0.1, "b": 0.0}


def test_search_ratio_meets_macs_target():
    model = tiny("mobilenet_v2")
    macs0 = models.count_macs(model, 32)
    imp = importance_by_name("l2")
    prune = lambda m, r: prune_channels(m, x32(1), ratio=r, importance=imp, round_to=None)  # noqa: E731
    measure = lambda m: models.count_macs(m, 32)  # noqa: E731
    found = search_ratio(model, prune, measure, 0.5 * macs0, tolerance=0.05)
    assert found.reached and found.cost <= 0.5 * macs0
    assert 0.1 < found.ratio < 0.6
    assert models.count_macs(model, 32) == macs0  # the original is untouched
    assert measure(prune(copy.deepcopy(model), max(found.ratio - 0.08, 0.01))) > 0.5 * macs0
    unreachable = search_ratio(model, prune, measure, 10, max_ratio=0.5)
    assert not unreachable.reached


# ----------------------------------------------------------------------------- distillation loss

def test_kd_loss_limits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    ce = nn.functional.cross_entropy(s, y)
    assert kd_loss(s, t, y, alpha=0.0) == pytest.approx(float(ce))
    assert kd_loss(s, s, y, alpha=1.0) == pytest.approx(0.0, abs=1e-6)
    soft = nn.functional.kl_div(nn.functional.log_softmax(s / 2, 1), nn.functional.softmax(t / 2, 1),
                                reduction="batchmean")
    assert kd_loss(s, t, y, temperature=2.0, alpha=1.0) == pytest.approx(4 * float(soft), rel=1e-5)
    with pytest.raises(ValueError):
        kd_loss(s, t, y, temperature=0)


@pytest.mark.slow
def test_masks_hold_during_fit_and_gradual_finetune_ends_sparse():
    from compress.data import load_data
    from compress.prune import gradual_sparse_finetune
    from compress.training.config import TrainConfig
    from compress.training.loop import fit

    bundle = load_data("digits", image_size=32, train_limit=96)
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0.0, max_steps_per_epoch=3)
    pruner = GradualMagnitudePruner(model, 0.6, total_steps=4, frequency=1)
    seen = []

    def after_step(m):
        pruner(m)
        seen.append(sparsity_report(m)["global"])

    fit(model, bundle, cfg, after_step=after_step)
    assert len(seen) == 6
    assert seen == pytest.approx([agp_sparsity(t, 4, 0.6) for t in range(1, 7)], abs=1e-3)

    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    gradual_sparse_finetune(model, bundle, cfg, 0.6, global_scope=True)
    assert sparsity_report(model)["global"] == pytest.approx(0.6, abs=1e-3)


def test_recovery_hands_the_criterion_to_fit(monkeypatch):
    """finetune/gradual_sparse_finetune hand their criterion (e.g. distillation) to the training loop."""
    import compress.training.loop
    from compress.prune import finetune, gradual_sparse_finetune
    from compress.training.config import TrainConfig
    from compress.training.criteria import DistillationCriterion
    from compress.training.loop import TrainResult

    calls = []

    def fake_fit(model, bundle, cfg, *, criterion=None, after_step=None, callback=None):
        calls.append((criterion, after_step is not None, cfg.epochs))
        return TrainResult(best_metrics={"top1": 0.5}, history=[], epochs_run=cfg.epochs, seconds=0.0)

    monkeypatch.setattr(compress.training.loop, "fit", fake_fit)
    bundle = type("Bundle", (), {"train": list(range(64))})()
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    kd = DistillationCriterion(copy.deepcopy(model), nn.functional.cross_entropy, temperature=2.0, alpha=0.25)
    cfg = TrainConfig(epochs=2, batch_size=32)
    assert finetune(model, bundle, cfg, criterion=kd) == {"top1": 0.5}
    assert finetune(model, bundle, cfg) == {"top1": 0.5}
    assert calls == [(kd, False, 2), (None, False, 2)]
    calls.clear()
    gradual_sparse_finetune(model, bundle, cfg, 0.5, criterion=kd)
    assert calls == [(kd, True, 1), (kd, True, 1)]  # one sparsifying epoch, one recovery epoch
