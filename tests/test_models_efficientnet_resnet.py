"""EfficientNet-B0..B3 and ResNet-18/34/50: published sizes, torchvision parity, and the keywords
(small_input, act_layer, drop_path_rate, width_mult) doing what they say."""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn
import torchvision

from models import count_macs, count_params, create_model
from models._layers import DropPath

# Published parameter counts at 1000 classes (torchvision's model cards; they match the papers' tables).
REFERENCE_PARAMS: dict[str, tuple[int, str]] = {
    "efficientnet_b0": (5_288_548, "torchvision efficientnet_b0 (paper Table 2: 5.3M)"),
    "efficientnet_b1": (7_794_184, "torchvision efficientnet_b1 (paper Table 2: 7.8M)"),
    "efficientnet_b2": (9_109_994, "torchvision efficientnet_b2 (paper Table 2: 9.2M)"),
    "efficientnet_b3": (12_233_232, "torchvision efficientnet_b3 (paper Table 2: 12M)"),
    "resnet18": (11_689_512, "torchvision resnet18"),
    "resnet34": (21_797_672, "torchvision resnet34"),
    "resnet50": (25_557_032, "torchvision resnet50"),
}

EFFICIENTNETS = ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"]
RESNETS = ["resnet18", "resnet34", "resnet50"]


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_published(name):
    expected, _source = REFERENCE_PARAMS[name]
    got = count_params(create_model(name, num_classes=1000))
    assert abs(got - expected) / expected < 0.01, f"{name}: {got:,} vs published {expected:,}"


# Published multiply-accumulates per image at the variant's own resolution
# (He et al. Table 1 quotes "FLOPs" that are multiply-adds; Tan & Le Table 2 likewise).
@pytest.mark.parametrize("name,side,published_gmacs", [
    ("resnet18", 224, 1.81),
    ("resnet50", 224, 4.1),
    ("efficientnet_b0", 224, 0.39),
    ("efficientnet_b1", 240, 0.70),
])
def test_macs_match_published(name, side, published_gmacs):
    torch.set_num_threads(2)
    gmacs = count_macs(create_model(name), side) / 1e9
    assert abs(gmacs - published_gmacs) / published_gmacs < 0.03, f"{name}: {gmacs:.3f}G vs {published_gmacs}G"


@pytest.mark.parametrize("name", EFFICIENTNETS + RESNETS)
def test_torchvision_state_dict_loads_strictly_and_outputs_match(name):
    torch.set_num_threads(2)
    reference = getattr(torchvision.models, name)().eval()
    ours = create_model(name, num_classes=1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18"])
def test_stochastic_depth_is_random_in_train_and_off_in_eval(name):
    x = torch.randn(4, 3, 32, 32)
    with_sd = create_model(name, num_classes=5, small_input=True, drop_rate=0.0, drop_path_rate=0.5).train()
    without = create_model(name, num_classes=5, small_input=True, drop_rate=0.0, drop_path_rate=0.0).train()
    with torch.no_grad():
        assert not torch.allclose(with_sd(x), with_sd(x))
        assert torch.allclose(without(x), without(x))  # train-mode BN alone is deterministic
        with_sd.eval()
        assert torch.equal(with_sd(x), with_sd(x))


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b3"])
def test_efficientnet_drop_path_schedule_follows_torchvision(name):
    ours = create_model(name, drop_path_rate=0.2)
    reference = getattr(torchvision.models, name)()  # stochastic_depth_prob=0.2: block i of L gets 0.2 * i / L
    ours_blocks = [b for stage in ours.features[1:-1] for b in stage]
    ref_blocks = [b for stage in reference.features[1:-1] for b in stage]
    assert len(ours_blocks) == len(ref_blocks)
    for mine, theirs in zip(ours_blocks, ref_blocks):
        assert mine.use_res_connect == theirs.use_res_connect
        if mine.use_res_connect:  # torchvision applies its StochasticDepth only on identity-skip blocks
            assert isinstance(mine.stochastic_depth, DropPath)
            assert mine.stochastic_depth.p == pytest.approx(theirs.stochastic_depth.p)
    assert create_model(name).features[2][1].stochastic_depth.p > 0  # on by default, as in the paper


def test_resnet_drop_path_decays_linearly_to_the_rate():
    model = create_model("resnet18", drop_path_rate=0.4)
    probs = [m.drop_path.p for m in model.modules() if hasattr(m, "drop_path")]
    assert probs == pytest.approx([0.4 * (i + 1) / 8 for i in range(8)])
    assert not any(isinstance(m, DropPath) for m in create_model("resnet18").modules())  # off by default


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18", "resnet50"])
def test_small_input_keeps_a_larger_final_map_at_32px(name):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        small = create_model(name, num_classes=3, small_input=True).eval().forward_features(x)
        imagenet = create_model(name, num_classes=3).eval().forward_features(x)
    assert small.shape[-2:] == (4, 4)
    assert imagenet.shape[-2:] == (1, 1)
    assert create_model(name, small_input=True).default_cfg["input_size"] == (3, 32, 32)


@pytest.mark.parametrize("name,default,other,other_cls", [
    ("efficientnet_b0", nn.SiLU, "relu", nn.ReLU),
    ("resnet18", nn.ReLU, "silu", nn.SiLU),
])
def test_act_layer_replaces_every_activation(name, default, other, other_cls):
    default_model = create_model(name, num_classes=3, small_input=True)
    assert any(isinstance(m, default) for m in default_model.modules())
    assert not any(isinstance(m, other_cls) for m in default_model.modules())
    changed = create_model(name, num_classes=3, small_input=True, act_layer=other)
    assert not any(isinstance(m, default) for m in changed.modules())
    n_default = sum(isinstance(m, default) for m in default_model.modules())
    assert sum(isinstance(m, other_cls) for m in changed.modules()) == n_default


def test_efficientnet_variants_carry_their_resolution_and_dropout():
    expected = {"efficientnet_b0": (224, 0.2), "efficientnet_b1": (240, 0.2),
                "efficientnet_b2": (260, 0.3), "efficientnet_b3": (300, 0.3)}
    for name, (side, dropout) in expected.items():
        model = create_model(name, num_classes=2)
        assert model.default_cfg["input_size"] == (3, side, side)
        assert model.classifier[0].p == dropout
    assert create_model("efficientnet_b2", num_classes=2, drop_rate=0.0).classifier[0].p == 0.0


def test_efficientnet_width_mult_overrides_compound_width():
    base = create_model("efficientnet_b0", num_classes=10)
    half = create_model("efficientnet_b0", num_classes=10, width_mult=0.5)
    assert base.features[0][0].out_channels == 32 and half.features[0][0].out_channels == 16
    assert half.num_features == 4 * 160 and half.get_classifier().in_features == half.num_features
    assert count_params(half) < count_params(base)
    assert create_model("efficientnet_b3", num_classes=10).features[0][0].out_channels == 40  # 32 x 1.2


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18"])
def test_in_chans_and_fx_trace(name):
    model = create_model(name, num_classes=4, small_input=True, in_chans=1, drop_path_rate=0.1).eval()
    x = torch.randn(2, 1, 32, 32)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18"])
@pytest.mark.parametrize("bad", [{"drop_path_rate": 1.0}, {"drop_rate": -0.1}])
def test_bad_rates_are_value_errors(name, bad):
    with pytest.raises(ValueError, match="drop"):
        create_model(name, num_classes=2, **bad)
