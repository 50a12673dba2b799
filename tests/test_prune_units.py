"""Pruning, unit by unit, through the library functions on a tiny network whose answers are known:
which channels go (the least important), how many (rounding, ratios, steps, global ranking),
what sensitivity analysis zeroes and restores, the AGP schedule, magnitude masks, the sparsity
report and the ratio search (bisection on a cost whose root is known)."""
import copy
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.prune import importance_by_name
from compress.prune.search import RatioSearch, search_ratio
from compress.prune.sensitivity import SensitivityRow, analyze_sensitivity, choose_ratios, zeroed_group
from compress.prune.structured import (ChannelGroup, build_graph, channel_groups, iter_groups, protected_layers,
                                       prune_channels, resolve_layers, round_channels)
from compress.prune.unstructured import (GradualMagnitudePruner, WeightMasks, agp_sparsity, magnitude_masks,
                                         prunable_weights, prune_magnitude, sparsity_report)

warnings.filterwarnings("ignore", module="torch_pruning")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(nn.Module):
    """stem conv (16) -> depthwise (16) -> pointwise (16) + residual -> conv3 (24) -> pool -> fc.

    Two channel groups: 'conv1' (conv1, the depthwise conv and the pointwise conv, tied by the
    residual add) and 'conv3'. conv3's output channel c has weights of size (c + 1), so the L2
    ranking of its channels is known: low indices are the least important."""

    def __init__(self, classes: int = 4, width: int = 24):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, width, 1)
        self.bn4 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)
        self.num_features = width
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2, self.bn3, self.bn4):
                bn.running_mean.uniform_(-0.2, 0.2, generator=g)
                bn.running_var.uniform_(0.5, 1.5, generator=g)
            signs = torch.randint(0, 2, self.conv3.weight.shape, generator=g) * 2 - 1
            self.conv3.weight.copy_(signs * torch.arange(1, width + 1).view(width, 1, 1, 1) * 0.05)
            self.fc.weight.fill_(0.1)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.dw(a)))
        c = self.bn3(self.pw(b)) + a
        d = torch.relu(self.bn4(self.conv3(c)))
        return self.fc(d.mean((2, 3)))


def x8(n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def l2():
    return importance_by_name("l2")


def widths(model: Net) -> tuple[int, int]:
    return model.conv1.out_channels, model.conv3.out_channels


# ----------------------------------------------------------------------------- layers and rounding

def test_resolve_layers_by_name_or_module():
    m = Net()
    assert resolve_layers(m, ["conv3", m.dw, "bn1"]) == [m.conv3, m.dw, m.bn1]
    assert resolve_layers(m, []) == []
    with pytest.raises(UserError, match=r"^model has no layer named 'conv4'; did you mean (conv3, conv1|conv1, conv3)\?$"):
        resolve_layers(m, ["conv4"])
    with pytest.raises(UserError, match=r"^model has no layer named 'zzzzzz'$"):
        resolve_layers(m, ["zzzzzz"])
    with pytest.raises(UserError, match=r"^model has no layer named ''"):
        resolve_layers(m, [""])  # the model itself is not a layer to name


def test_protected_layers_add_the_classifier():
    m = Net()
    assert protected_layers(m) == [m.fc]
    assert protected_layers(m, ["conv3"]) == [m.conv3, m.fc]
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Linear(4, 2))
    assert protected_layers(plain, ["1"]) == [plain[1]]  # no get_classifier: only what was named


@pytest.mark.parametrize("keep,current,round_to,expected", [
    (12, 24, 8, 16), (11, 24, 8, 8), (20, 32, 8, 24), (27, 64, 8, 24), (28, 64, 8, 32),  # nearest; halfway rounds up
    (3, 16, 8, 8), (0, 4, 8, 4), (2, 4, 8, 4),       # never below round_to, never above the current width
    (36, 40, 8, 40), (45, 40, 8, 40),
    (5, 16, 0, 5), (5, 16, None, 5), (5, 16, 1, 5),  # no rounding
    (0, 16, 0, 1), (-3, 16, 1, 1), (20, 16, 0, 16),  # at least one channel, at most all
    (6, 48, 4, 8), (9, 48, 6, 12),
])
def test_round_channels(keep, current, round_to, expected):
    assert round_channels(keep, current, round_to) == expected


# ----------------------------------------------------------------------------- prune_channels

def test_half_the_channels_of_each_group_and_the_head_follows():
    m = Net().eval()
    x = x8(2)
    assert prune_channels(m, x[:1], ratio=0.5, importance=l2(), round_to=None) is m
    assert widths(m) == (8, 12)
    assert (m.dw.in_channels, m.dw.out_channels, m.dw.groups) == (8, 8, 8)  # depthwise stays depthwise
    assert m.pw.out_channels == 8 and m.conv3.in_channels == 8
    assert m.fc.in_features == 12 and m.fc.out_features == 4 and m.num_features == 12
    assert m(x).shape == (2, 4)


def test_the_least_important_channels_go():
    m = Net().eval()
    before = m.conv3.weight.detach().clone()
    prune_channels(m, x8(), ratio=0.0, ratio_per_layer={"conv3": 0.5}, importance=l2(), round_to=None)
    # conv3's channels 12..23 have the largest weights: they stay, in order
    assert torch.equal(m.conv3.weight, before[12:])


def test_rounding_keeps_multiples_of_round_to():
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.5, importance=l2())  # round_to 8 by default: 12 of 24 -> 16
    assert widths(m) == (8, 16)
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.5, importance=l2(), round_to=0)  # 0: no rounding
    assert widths(m) == (8, 12)


def test_ratio_per_layer_prunes_only_that_group():
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.0, ratio_per_layer={"conv3": 0.25}, importance=l2(), round_to=None)
    assert widths(m) == (16, 18)
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.5, ratio_per_layer={"conv3": 0.25}, importance=l2(), round_to=None)
    assert widths(m) == (8, 18)  # the others use ratio


def test_ignored_layers_keep_their_channels():
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.5, importance=l2(), round_to=None, ignored_layers=["conv3"])
    assert widths(m) == (8, 24)
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.5, importance=l2(), round_to=None, ignored_layers=[m.conv1])
    assert widths(m) == (16, 12)


def test_global_ranking_prunes_unevenly():
    def make():
        m = Net().eval()
        with torch.no_grad():  # conv3: 18 near-useless channels, 6 strong ones
            m.conv3.weight.fill_(0.01)
            m.conv3.weight[18:] = 1.0
        return m
    local, glob = make(), make()
    prune_channels(local, x8(), ratio=0.5, importance=l2(), round_to=None)
    prune_channels(glob, x8(), ratio=0.5, importance=l2(), round_to=None, global_pruning=True)
    assert widths(local) == (8, 12)
    assert sum(widths(glob)) == 20  # half of all 40 channels, ranked together
    assert glob.conv3.out_channels < 12 < 2 * glob.conv1.out_channels
    assert torch.all(glob.conv3.weight == 1.0)  # the strong channels are the ones left


def test_iterative_steps_grow_the_ratio_linearly():
    m = Net().eval()
    seen = []

    def between(model, step):
        assert model is m
        seen.append((step, model.conv3.out_channels))
        model.train()  # fine-tuning leaves the model training

    prune_channels(m, x8(), ratio=0.5, importance=l2(), round_to=None, steps=3, between_steps=between)
    assert seen == [(1, 20), (2, 16)]  # 24 x (1 - 0.5 x step / 3)
    assert m.conv3.out_channels == 12 and not m.training  # given back in the mode it had


def test_the_mode_is_given_back_and_statistics_untouched():
    m = Net().train()
    stats = m.bn4.running_mean.clone()
    prune_channels(m, x8(), ratio=0.5, importance=l2(), round_to=None, ratio_per_layer={"conv1": 0.5})
    assert m.training
    assert torch.equal(m.bn4.running_mean, stats[12:])  # tracing did not update BatchNorm statistics


def test_taylor_gets_fresh_gradients_before_every_step():
    m = Net().eval()
    calls = []

    def grads(model):
        calls.append(all(p.grad is None for p in model.parameters()))
        model(x8(4)).logsumexp(1).mean().backward()

    prune_channels(m, x8(), ratio=0.5, importance=importance_by_name("taylor"), compute_gradients=grads, steps=2,
                   round_to=None)
    assert calls == [True, True]  # gradients cleared before each call
    assert all(p.grad is None for p in m.parameters())  # and after
    assert widths(m) == (8, 12)


@pytest.mark.parametrize("kw,message", [
    (dict(ratio=0.0), r"^pruning ratio must satisfy 0 < ratio < 1, got 0\.0$"),
    (dict(ratio=1.0), r"^pruning ratio must satisfy 0 < ratio < 1, got 1\.0$"),
    (dict(ratio=-0.5, ratio_per_layer={"conv3": 0.5}), r"^pruning ratio must satisfy 0 <= ratio < 1, got -0\.5$"),
    (dict(ratio=0.0, ratio_per_layer={"conv3": 1.0}),
     r"^pruning ratio of layer 'conv3' must satisfy 0 <= ratio < 1, got 1\.0$"),
    (dict(ratio=0.5, steps=0), r"^steps must be >= 1, got 0$"),
    (dict(ratio=0.5, round_to=-1), r"^round_to must be >= 0, got -1$"),
    (dict(ratio=0.5, ratio_per_layer={"conv9": 0.5}), r"^model has no layer named 'conv9'"),
])
def test_bad_arguments(kw, message):
    m = Net().eval()
    with pytest.raises(UserError, match=message):
        prune_channels(m, x8(), importance=l2(), **kw)
    assert widths(m) == (16, 24)


def test_taylor_without_gradients_is_refused():
    with pytest.raises(UserError, match=r"^TaylorImportance needs gradients: pass compute_gradients$"):
        prune_channels(Net().eval(), x8(), ratio=0.5, importance=importance_by_name("taylor"))


def test_a_ratio_of_zero_with_per_layer_ratios_is_allowed_and_noop_elsewhere():
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.0, ratio_per_layer={"conv1": 0.0}, importance=l2())
    assert widths(m) == (16, 24)


# ----------------------------------------------------------------------------- groups

def test_channel_groups_name_their_members():
    m = Net().eval()
    groups = {g.name: g for g in channel_groups(m, x8())}
    assert groups == {"conv1": ChannelGroup("conv1", 16, ("conv1", "dw", "pw")),
                      "conv3": ChannelGroup("conv3", 24, ("conv3",))}
    assert [g.name for g in channel_groups(m, x8(), ignored_layers=["conv3"])] == ["conv1"]
    prune_channels(m, x8(), ratio=0.5, importance=l2(), round_to=None)
    assert {g.name: g.channels for g in channel_groups(m, x8())} == {"conv1": 8, "conv3": 12}


def test_build_graph_leaves_the_model_as_it_was():
    m = Net().train()
    state = copy.deepcopy(m.state_dict())
    graph = build_graph(m, x8(2))
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k  # no BatchNorm update while tracing
    roots = {g[0].dep.target.module for g in iter_groups(graph, m)}
    assert m.fc not in roots and roots <= {m.conv1, m.dw, m.pw, m.conv3}


# ----------------------------------------------------------------------------- sensitivity: zeroed_group

def fake_dep(module, handler):
    return SimpleNamespace(target=SimpleNamespace(module=module), handler=handler)


FAKE_GRAPH = SimpleNamespace(is_out_channel_pruning_fn=lambda handler: handler == "out")


def test_zeroed_group_zeroes_each_role_and_restores_bit_for_bit():
    m = Net().eval()
    state = copy.deepcopy(m.state_dict())
    idx = [0, 5]
    group = [(fake_dep(m.conv3, "out"), idx),      # producer: output slice of weight and bias
             (fake_dep(m.bn4, "out"), idx),        # BatchNorm: weight and bias, not the statistics
             (fake_dep(m.fc, "in"), idx),          # consumer: input slice of the weight only
             (fake_dep(m.dw, "in"), [1]),          # depthwise: its output slice, whatever the handler
             (fake_dep(nn.ReLU(), "out"), idx),    # no parameters: skipped
             (fake_dep(m.pw, "in"), [])]           # nothing to prune: skipped
    with zeroed_group(FAKE_GRAPH, group):
        assert m.conv3.weight[idx].abs().sum() == 0 and m.conv3.bias[idx].abs().sum() == 0
        assert m.conv3.weight[[1, 2, 23]].abs().sum() > 0 and torch.all(m.conv3.bias[[1, 2]] == state["conv3.bias"][[1, 2]])
        assert m.bn4.weight[idx].abs().sum() == 0 and m.bn4.bias[idx].abs().sum() == 0
        assert torch.equal(m.bn4.running_mean, state["bn4.running_mean"])
        assert m.fc.weight[:, idx].abs().sum() == 0 and torch.equal(m.fc.bias, state["fc.bias"])
        assert torch.all(m.fc.weight[:, 1] == 0.1)
        assert m.dw.weight[1].abs().sum() == 0 and m.dw.weight[0].abs().sum() > 0
        assert torch.equal(m.pw.weight, state["pw.weight"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_zeroed_group_restores_a_tensor_listed_twice():
    """A depthwise conv is both producer and consumer: restoring each entry's copy in order would
    put back the half-zeroed one (the bug that left MobileNetV3-Small damaged)."""
    m = Net().eval()
    state = copy.deepcopy(m.state_dict())
    group = [(fake_dep(m.dw, "out"), [2, 3]), (fake_dep(m.bn2, "out"), [2, 3]), (fake_dep(m.dw, "in"), [2, 3]),
             (fake_dep(m.conv3, "in"), [2]), (fake_dep(m.conv3, "in"), [3])]
    with zeroed_group(FAKE_GRAPH, group):
        assert m.dw.weight[[2, 3]].abs().sum() == 0 and m.conv3.weight[:, [2, 3]].abs().sum() == 0
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_zeroed_group_restores_on_error():
    m = Net().eval()
    state = copy.deepcopy(m.state_dict())
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with zeroed_group(FAKE_GRAPH, [(fake_dep(m.conv3, "out"), [0, 1, 2])]):
            raise RuntimeError("evaluation failed")
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_zeroing_a_real_group_gives_the_pruned_outputs():
    m, x = Net().eval(), x8(3)
    graph = build_graph(m, x[:1])
    group = graph.get_pruning_group(m.conv3, graph.get_pruner_of_module(m.conv3).prune_out_channels, [0, 4, 7])
    reference = copy.deepcopy(m)
    with torch.no_grad():
        reference.fc.weight[:, [0, 4, 7]] = 0  # what the head sees once those channels are gone
        expected = reference(x)
        with zeroed_group(graph, group):
            got = m(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- sensitivity: analysis

def conv3_norm_kept(model):
    """Fraction of conv3's squared weight norm still in place: which channels were zeroed shows."""
    return float(model.conv3.weight.detach().pow(2).sum() / Net().conv3.weight.detach().pow(2).sum())


def test_rows_zero_the_least_important_channels():
    m = Net().eval()
    baseline, rows = analyze_sensitivity(m, x8(), conv3_norm_kept, ratios=(0.5, 0.25), importance=l2(),
                                         round_to=None, ignored_layers=["conv1"])
    assert baseline == 1.0
    norms = torch.arange(1, 25, dtype=torch.float64) ** 2  # channel c has squared norm ~ (c + 1)^2
    for row, r, kept in zip(rows, (0.25, 0.5), (18, 12)):  # rows come sorted by ratio
        assert (row.layer, row.channels, row.ratio, row.kept) == ("conv3", 24, r, kept)
        expected = float(norms[24 - kept:].sum() / norms.sum())  # the `kept` largest channels remain
        assert row.metric == pytest.approx(expected, rel=1e-5)
        assert row.drop == pytest.approx((1.0 - expected) * 100)


def test_rows_equal_real_pruning_of_a_copy_and_the_model_is_restored():
    m, x = Net().train(), x8(4)

    def metric(model):
        assert not model.training  # evaluated in eval mode
        with torch.no_grad():
            out = model(x).double()
        return float(out.sum() + out.pow(2).sum())

    state = copy.deepcopy(m.state_dict())
    baseline, rows = analyze_sensitivity(m, x[:1], metric, ratios=(0.5,), importance=l2(), round_to=None,
                                         scale=1.0)
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    m.eval()
    assert baseline == metric(m)
    assert {r.layer for r in rows} == {"conv1", "conv3"}
    for row in rows:
        pruned = copy.deepcopy(m)
        prune_channels(pruned, x[:1], ratio=0.0, ratio_per_layer={row.layer: 0.5}, importance=l2(), round_to=None)
        assert metric(pruned) == pytest.approx(row.metric, rel=1e-5, abs=1e-6), row
        assert row.drop == pytest.approx(baseline - row.metric)
        assert row.kept == row.channels // 2


def test_rounding_up_to_the_full_width_costs_nothing_and_skips_the_evaluation():
    m = Net().eval()
    calls = []

    def metric(model):
        calls.append(1)
        return 0.5

    messages = []
    baseline, rows = analyze_sensitivity(m, x8(), metric, ratios=(0.25, 0.5), importance=l2(), round_to=8,
                                         progress=messages.append)
    by = {(r.layer, r.ratio): r for r in rows}
    assert by[("conv1", 0.25)].kept == 16 and by[("conv1", 0.25)].metric == baseline and by[("conv1", 0.25)].drop == 0
    assert by[("conv1", 0.5)].kept == 8 and by[("conv3", 0.25)].kept == 16 and by[("conv3", 0.5)].kept == 16
    assert len(calls) == 1 + 3  # the baseline, then only the rows that remove channels
    assert len(messages) == 4 and "conv3 ratio 0.5: kept 16/24, metric 0.5000" in messages


def test_groups_without_scores_are_skipped():
    class NoScores:
        def __call__(self, group):
            return None

    baseline, rows = analyze_sensitivity(Net().eval(), x8(), lambda m: 1.0, ratios=(0.5,), importance=NoScores())
    assert baseline == 1.0 and rows == []


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1])
def test_sensitivity_ratios_are_checked(bad):
    with pytest.raises(UserError, match=rf"^sensitivity ratios must satisfy 0 < r < 1, got {bad}$"):
        analyze_sensitivity(Net().eval(), x8(), lambda m: 1.0, ratios=(0.5, bad), importance=l2())


def test_sensitivity_row_to_dict():
    row = SensitivityRow("conv3", 24, 0.5, 12, 0.75, 25.0)
    assert row.to_dict() == {"layer": "conv3", "channels": 24, "ratio": 0.5, "kept": 12, "metric": 0.75, "drop": 25.0}


def test_choose_ratios():
    rows = [SensitivityRow("a", 16, 0.5, 8, 0.8, 2.0), SensitivityRow("a", 16, 0.1, 16, 0.9, 0.5),
            SensitivityRow("a", 16, 0.3, 8, 0.85, 1.0),  # unsorted on purpose; drop equal to the limit is fine
            SensitivityRow("b", 16, 0.1, 16, 0.5, 40.0), SensitivityRow("b", 16, 0.3, 8, 0.9, 0.0),
            SensitivityRow("c", 16, 0.1, 16, math.nan, 0.0), SensitivityRow("c", 16, 0.3, 16, 0.9, 0.0),
            SensitivityRow("d", 16, 0.1, 16, 0.9, 0.0), SensitivityRow("d", 16, 0.3, 16, math.nan, 0.0)]
    assert choose_ratios(rows, max_drop=1.0) == {"a": 0.3, "b": 0.0, "c": 0.0, "d": 0.1}
    assert choose_ratios(rows, max_drop=5.0)["a"] == 0.5
    assert choose_ratios([], 1.0) == {}


# ----------------------------------------------------------------------------- unstructured

def test_prunable_weights_leave_out_the_classifier_and_ignored_layers():
    m = Net()
    weights = prunable_weights(m)
    assert list(weights) == ["conv1", "dw", "pw", "conv3"] and weights["conv3"] is m.conv3.weight
    assert list(prunable_weights(m, ["dw", m.conv3])) == ["conv1", "pw"]


@pytest.mark.parametrize("step,total,final,initial,expected", [
    (0, 10, 0.8, 0.0, 0.0), (5, 10, 0.8, 0.0, 0.8 * (1 - 0.5 ** 3)), (10, 10, 0.8, 0.0, 0.8),
    (3, 10, 0.9, 0.5, 0.9 + (0.5 - 0.9) * 0.7 ** 3), (-4, 10, 0.9, 0.5, 0.5), (15, 10, 0.9, 0.5, 0.9),
    (7, 0, 0.6, 0.0, 0.6), (7, -2, 0.6, 0.1, 0.6),
])
def test_agp_sparsity(step, total, final, initial, expected):
    value = agp_sparsity(step, total, final, initial)
    assert value == pytest.approx(expected) and isinstance(value, float)


def test_agp_default_starts_at_zero():
    assert agp_sparsity(2, 4, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))


def test_magnitude_masks_per_tensor_and_global():
    weights = {"a": torch.tensor([5.0, -1.0, 3.0, -4.0, 2.0]), "b": torch.tensor([[10.0, -20.0], [0.5, 7.0]])}
    masks = magnitude_masks(weights, 0.4)  # round(0.4 x 5) = 2 and round(0.4 x 4) = 2 smallest |w| go
    assert masks["a"].tolist() == [True, False, True, True, False]
    assert masks["b"].tolist() == [[True, True], [False, False]] and masks["b"].dtype == torch.bool
    masks = magnitude_masks(weights, 0.5, global_scope=True)  # round(0.5 x 9) = 4 smallest of all nine go
    assert masks["a"].tolist() == [True, False, False, True, False]
    assert masks["b"].tolist() == [[True, True], [False, True]]
    none = magnitude_masks(weights, 0.0)
    assert all(mask.all() for mask in none.values())
    assert magnitude_masks({"p": nn.Parameter(torch.tensor([1.0, -2.0]))}, 0.5)["p"].tolist() == [False, True]


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_magnitude_masks_refuse_bad_sparsity(bad):
    with pytest.raises(UserError, match=rf"^sparsity must satisfy 0 <= s < 1, got {bad}$"):
        magnitude_masks({"a": torch.ones(3)}, bad)


def test_weight_masks_zero_the_masked_weights():
    w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    masks = WeightMasks({"w": w}, {"w": torch.tensor([True, False, True])})
    masks.apply()
    assert w.tolist() == [1.0, 0.0, 3.0]
    with torch.no_grad():
        w[1] = 5.0
    masks(None)  # as an after_step callback
    assert w.tolist() == [1.0, 0.0, 3.0]


def test_prune_magnitude_in_place_protecting_the_classifier():
    m = Net()
    fc = m.fc.weight.detach().clone()
    masks = prune_magnitude(m, 0.75, ignored_layers=["dw"])
    assert isinstance(masks, WeightMasks) and set(masks.masks) == {"conv1", "pw", "conv3"}
    for name in ("conv1", "pw", "conv3"):
        w = getattr(m, name).weight
        assert int((w == 0).sum()) == round(0.75 * w.numel())
        assert torch.equal(w != 0, masks.masks[name])
    assert int((m.dw.weight == 0).sum()) == 0 and torch.equal(m.fc.weight, fc)


def test_prune_magnitude_global_scope_reaches_the_layers_unevenly():
    per_layer, glob = Net(), Net()
    prune_magnitude(per_layer, 0.5)
    prune_magnitude(glob, 0.5, global_scope=True)
    rep_l, rep_g = sparsity_report(per_layer), sparsity_report(glob)
    assert rep_l["global"] == pytest.approx(0.5, abs=1e-3) and rep_g["global"] == pytest.approx(0.5, abs=1e-3)
    assert all(v["sparsity"] == pytest.approx(0.5, abs=0.01) for v in rep_l["layers"].values())
    assert rep_g["layers"]["conv3"]["sparsity"] < 0.2  # conv3's weights are large: global ranking spares them


def test_sparsity_report_counts():
    m = Net()
    with torch.no_grad():
        m.conv1.weight.view(-1)[:108] = 0  # 108 of 432
        m.pw.weight.zero_()                # 256 of 256
    rep = sparsity_report(m)
    assert rep["layers"]["conv1"] == {"params": 432, "zeros": 108, "sparsity": 0.25}
    assert rep["layers"]["pw"] == {"params": 256, "zeros": 256, "sparsity": 1.0}
    assert rep["layers"]["dw"]["params"] == 144 and rep["layers"]["conv3"]["params"] == 384
    assert rep["prunable_params"] == 432 + 144 + 256 + 384
    assert rep["global"] == pytest.approx((108 + 256) / (432 + 144 + 256 + 384))
    all_params = list(m.parameters())
    zeros = sum(int((p == 0).sum()) for p in all_params)  # BatchNorm biases start at zero too
    assert rep["params"] == sum(p.numel() for p in all_params)
    assert rep["overall"] == pytest.approx(zeros / rep["params"])
    assert set(rep) == {"layers", "global", "prunable_params", "overall", "params"}
    assert list(sparsity_report(m, ["conv1"])["layers"]) == ["dw", "pw", "conv3"]


def test_sparsity_report_of_a_model_without_prunable_layers():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def get_classifier(self):
            return self.fc

    rep = sparsity_report(Head())
    assert rep["layers"] == {} and rep["global"] == 0.0 and rep["prunable_params"] == 0 and rep["params"] == 6


def sparsity_of(m):
    return sparsity_report(m)["global"]


def test_gradual_pruner_schedule_and_masks():
    m = Net()
    pruner = GradualMagnitudePruner(m, 0.6, total_steps=9, frequency=3, initial=0.2)
    assert pruner.current == 0.2 and sparsity_of(m) == pytest.approx(0.2, abs=2e-3)  # initial masks applied at once
    seen = []
    for _ in range(12):
        pruner(m)
        seen.append(pruner.current)
    a = [agp_sparsity(t, 9, 0.6, 0.2) for t in (3, 6, 9)]
    assert seen == pytest.approx([0.2, 0.2, a[0], a[0], a[0], a[1], a[1], a[1], 0.6, 0.6, 0.6, 0.6])
    assert sparsity_of(m) == pytest.approx(0.6, abs=2e-3)
    with torch.no_grad():
        m.conv1.weight.fill_(1.0)  # "momentum" regrows every weight of conv1 ...
    pruner(m)
    assert sparsity_of(m) == pytest.approx(0.6, abs=2e-3)  # ... the held masks zero them again


def test_gradual_pruner_updates_on_the_last_step_when_not_a_multiple():
    m = Net()
    pruner = GradualMagnitudePruner(m, 0.5, total_steps=5, frequency=3)
    currents = []
    for _ in range(6):
        pruner(m)
        currents.append(pruner.current)
    assert currents == pytest.approx([0.0, 0.0, agp_sparsity(3, 5, 0.5), agp_sparsity(3, 5, 0.5), 0.5, 0.5])


@pytest.mark.parametrize("total,frequency,expected", [(25, None, 2), (5, None, 1), (100, None, 10), (25, 4, 4),
                                                      (25, 0, 2), (0, None, 1)])
def test_gradual_pruner_default_frequency(total, frequency, expected):
    pruner = GradualMagnitudePruner(Net(), 0.5, total_steps=total, frequency=frequency)
    assert pruner.frequency == expected and pruner.total_steps == max(1, total)


def test_gradual_pruner_finish_forces_the_final_sparsity():
    m = Net()
    pruner = GradualMagnitudePruner(m, 0.7, total_steps=100, global_scope=True, ignored_layers=["conv3"])
    pruner(m)
    masks = pruner.finish()
    assert isinstance(masks, WeightMasks) and pruner.current == 0.7
    assert set(masks.masks) == {"conv1", "dw", "pw"}
    kept = sum(int(mask.sum()) for mask in masks.masks.values())
    assert kept == (432 + 144 + 256) - round(0.7 * (432 + 144 + 256))  # one ranking across the layers
    assert int((m.conv3.weight == 0).sum()) == 0


@pytest.mark.parametrize("initial,final", [(0.5, 0.3), (0.0, 1.0), (-0.1, 0.5)])
def test_gradual_pruner_refuses_bad_targets(initial, final):
    with pytest.raises(UserError, match=rf"^need 0 <= initial <= final < 1, got initial={initial}, final={final}$"):
        GradualMagnitudePruner(Net(), final, total_steps=10, initial=initial)


# ----------------------------------------------------------------------------- ratio search

class Box:
    """A stand-in model: the ratio it was pruned at. Cost = 100 x (1 - ratio): the target 50 is met
    from ratio 0.5 on."""

    def __init__(self):
        self.ratio = 0.0


def prune_box(box, ratio):
    box.ratio = ratio
    return box


def cost(box):
    return 100.0 * (1.0 - box.ratio)


def test_search_finds_the_smallest_ratio_within_the_tolerance():
    model, messages = Box(), []
    found = search_ratio(model, prune_box, cost, 50.0, max_ratio=0.9, tolerance=0.01, progress=messages.append)
    assert isinstance(found, RatioSearch) and found.reached and found.target == 50.0
    assert 0.5 <= found.ratio <= 0.5 + 0.01
    assert found.cost == pytest.approx(cost(prune_box(Box(), found.ratio))) and found.cost <= 50.0
    assert found.trials[0] == {"ratio": 0.9, "cost": pytest.approx(10.0)}
    assert all(t["ratio"] == round(t["ratio"], 4) for t in found.trials)
    assert len(found.trials) <= 10 and model.ratio == 0.0  # the model itself is never pruned
    assert messages[0] == "ratio 0.900: cost 10 (target 50)" and len(messages) == len(found.trials)
    # bisection: every trial after the first halves the bracket
    ratios = [t["ratio"] for t in found.trials[1:]]
    assert ratios[0] == 0.45 and ratios[1] == pytest.approx(0.675, abs=1e-4)


def test_search_stops_at_max_trials():
    found = search_ratio(Box(), prune_box, cost, 50.0, max_ratio=0.9, tolerance=1e-6, max_trials=3)
    assert len(found.trials) == 3 and found.reached
    assert found.ratio == pytest.approx(0.675) and found.cost == pytest.approx(32.5)


def test_search_with_a_coarse_tolerance():
    found = search_ratio(Box(), prune_box, cost, 50.0, max_ratio=0.9, tolerance=0.5)
    assert [t["ratio"] for t in found.trials] == [0.9, 0.45] and found.ratio == 0.9 and found.cost == pytest.approx(10)


def test_search_when_the_model_already_meets_the_target():
    calls = []
    found = search_ratio(Box(), lambda m, r: calls.append(r) or m, cost, 100.0)
    assert found == RatioSearch(0.0, 100.0, 100.0, True, [{"ratio": 0.0, "cost": 100.0}]) and calls == []


def test_search_when_even_the_largest_ratio_misses():
    found = search_ratio(Box(), prune_box, cost, 5.0, max_ratio=0.8)
    assert not found.reached and found.ratio == 0.8 and found.cost == pytest.approx(20.0)
    assert found.trials == [{"ratio": 0.8, "cost": pytest.approx(20.0)}] and found.target == 5.0


def test_search_default_max_ratio():
    found = search_ratio(Box(), prune_box, cost, 1.0)
    assert found.trials[0]["ratio"] == 0.9 and not found.reached


# ----------------------------------------------------------------------------- more edges

def test_without_rounding_a_high_ratio_still_keeps_one_channel_per_group():
    """torch-pruning skips, unpruned, a group the ratio would empty: at ratio 0.96 without rounding
    nothing was pruned at all, and at 0.95 conv1's group (16 channels) was left whole while conv3
    went to one channel; and sensitivity rows (kept = 1) disagreed with real pruning."""
    for ratio in (0.95, 0.96, 0.99):
        m = Net().eval()
        prune_channels(m, x8(), ratio=ratio, importance=l2(), round_to=None)
        assert widths(m) == (1, 1), ratio
    _, rows = analyze_sensitivity(Net().eval(), x8(), lambda model: 1.0, ratios=(0.95,), importance=l2(), round_to=0)
    for row in rows:
        real = Net().eval()
        prune_channels(real, x8(), ratio=0.0, ratio_per_layer={row.layer: 0.95}, importance=l2(), round_to=0)
        assert {"conv1": real.conv1.out_channels, "conv3": real.conv3.out_channels}[row.layer] == row.kept == 1


def test_the_per_layer_cap_holds_between_steps():
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.9, importance=l2(), round_to=None, steps=3, max_layer_ratio=0.5)
    assert widths(m) == (6, 9)  # no layer is pruned further once below half its width
    m = Net().eval()
    prune_channels(m, x8(), ratio=0.9, importance=l2(), round_to=None, steps=3)
    assert widths(m) == (1, 2)  # the default cap, 0.95, leaves room for 0.9


@pytest.mark.parametrize("keep,current,round_to,expected", [(1, 1, 8, 1), (5, 16, 2, 6), (7, 16, 2, 8)])
def test_round_channels_more(keep, current, round_to, expected):
    assert round_channels(keep, current, round_to) == expected


def test_at_most_three_suggestions():
    with pytest.raises(UserError) as err:
        resolve_layers(Net(), ["bn"])
    suggestions = str(err.value).split("did you mean ")[1].rstrip("?").split(", ")
    assert len(suggestions) == 3 and set(suggestions) <= {"bn1", "bn2", "bn3", "bn4"}


def test_zeroed_group_tells_depthwise_from_other_convs():
    one_in = nn.Conv2d(1, 4, 1)            # groups == in_channels == 1: an ordinary conv, a consumer
    dw2 = nn.Conv2d(2, 2, 3, groups=2)     # the smallest depthwise conv: its channels are its outputs
    w1, b1, w2 = one_in.weight.detach().clone(), one_in.bias.detach().clone(), dw2.weight.detach().clone()
    with zeroed_group(FAKE_GRAPH, [(fake_dep(one_in, "in"), [0]), (fake_dep(dw2, "in"), [1])]):
        assert one_in.weight.abs().sum() == 0 and torch.equal(one_in.bias, b1)  # input slice: all of it
        assert dw2.weight[1].abs().sum() == 0 and torch.equal(dw2.weight[0], w2[0])
    assert torch.equal(one_in.weight, w1) and torch.equal(dw2.weight, w2)


def test_sensitivity_defaults_round_to_8_and_evaluates_a_single_dropped_channel():
    _, rows = analyze_sensitivity(Net().eval(), x8(), conv3_norm_kept, ratios=(0.5,), importance=l2())
    assert {r.layer: r.kept for r in rows} == {"conv1": 8, "conv3": 16}
    _, rows = analyze_sensitivity(Net().eval(), x8(), conv3_norm_kept, ratios=(0.04,), importance=l2(),
                                  round_to=None, ignored_layers=["conv1"])
    assert len(rows) == 1 and rows[0].kept == 23  # one channel dropped: evaluated, not assumed free
    assert rows[0].metric == pytest.approx(1 - 1 / float((torch.arange(1, 25, dtype=torch.float64) ** 2).sum()))


def test_only_groups_without_scores_are_skipped():
    class SkipConv3:
        def __init__(self, model):
            self.model, self.inner = model, l2()

        def __call__(self, group):
            return None if group[0].dep.target.module is self.model.conv3 else self.inner(group)

    m = Net().eval()
    _, rows = analyze_sensitivity(m, x8(), lambda model: 1.0, ratios=(0.5,), importance=SkipConv3(m))
    assert [r.layer for r in rows] == ["conv1"]


def test_agp_with_a_single_step():
    assert agp_sparsity(0, 1, 0.8, 0.2) == pytest.approx(0.2)
    assert agp_sparsity(1, 1, 0.8, 0.2) == pytest.approx(0.8)


def test_gradual_pruner_defaults_to_per_layer_and_global_reaches_layers_unevenly():
    per_layer, glob = Net(), Net()
    a = GradualMagnitudePruner(per_layer, 0.6, total_steps=2)
    b = GradualMagnitudePruner(glob, 0.6, total_steps=2, global_scope=True)
    for _ in range(2):
        a(per_layer)
        b(glob)
    rep_a, rep_b = sparsity_report(per_layer), sparsity_report(glob)
    assert all(v["sparsity"] == pytest.approx(0.6, abs=0.01) for v in rep_a["layers"].values())
    assert rep_b["global"] == pytest.approx(0.6, abs=2e-3) and rep_b["layers"]["conv3"]["sparsity"] < 0.3


def test_gradual_pruner_may_hold_a_constant_sparsity():
    m = Net()
    pruner = GradualMagnitudePruner(m, 0.5, total_steps=4, initial=0.5)
    pruner(m)
    assert pruner.current == 0.5 and sparsity_of(m) == pytest.approx(0.5, abs=2e-3)


def test_sparsity_report_of_a_single_weight():
    m = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False))
    with torch.no_grad():
        m[0].weight.zero_()
    rep = sparsity_report(m)
    assert rep["global"] == 1.0 and rep["overall"] == 1.0 and rep["prunable_params"] == rep["params"] == 1


class Shared:
    """A model whose state lives in a mutable member, like a module's submodules."""

    def __init__(self):
        self.state = {"ratio": 0.0}


def test_search_prunes_deep_copies():
    model = Shared()

    def prune(m, ratio):
        m.state["ratio"] = ratio
        return m

    found = search_ratio(model, prune, lambda m: 100.0 * (1 - m.state["ratio"]), 50.0)
    assert found.reached and model.state["ratio"] == 0.0


def test_search_defaults():
    found = search_ratio(Box(), prune_box, cost, 50.0)  # max ratio 0.9, tolerance 0.01, at most 10 trials
    assert found.reached and 0.5 <= found.ratio <= 0.51 and found.trials[0]["ratio"] == 0.9
    found = search_ratio(Box(), prune_box, cost, 50.0, tolerance=1e-9)
    assert len(found.trials) == 10


def test_search_boundaries_are_inclusive():
    found = search_ratio(Box(), prune_box, cost, 50.0, max_ratio=0.5)  # the largest ratio meets it exactly
    assert found.reached is True and found.ratio == 0.5 and found.trials[0] == {"ratio": 0.5, "cost": 50.0}
    found = search_ratio(Box(), prune_box, cost, 50.0, max_ratio=1.0, tolerance=0.3)  # the first midpoint does
    assert found.ratio == 0.5 and [t["ratio"] for t in found.trials] == [1.0, 0.5, 0.25]
    found = search_ratio(Box(), prune_box, cost, 80.0, max_ratio=0.5, tolerance=0.25)  # the bracket hits 0.25
    assert [t["ratio"] for t in found.trials] == [0.5, 0.25] and found.ratio == 0.25
    missed = search_ratio(Box(), prune_box, cost, 5.0, max_ratio=0.5)
    assert missed.reached is False

