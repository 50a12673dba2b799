"""Per-model facts for the MobileNet family (V1, V2, V3 Small/Large) and PP-LCNet.

Published parameter counts and MACs, torchvision state_dict compatibility, and what the
``act_layer`` / ``small_input`` / ``drop_path_rate`` keywords do. The generic forward/backward
checks over the whole registry live in tests/test_models.py.

torchvision compatibility is tested for mobilenet_v2, mobilenet_v3_small and mobilenet_v3_large.
torchvision has no MobileNetV1 and no PP-LCNet, so those two families have no torchvision layout
to load; their parameter counts are checked against imgclsmob (V1) and the official PaddleClas
implementation (PP-LCNet) instead.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import count_macs, count_params, create_model, list_models
from models._layers import DropPath, SqueezeExcite

# Parameter counts at 224x224 and 1000 classes, with where each figure comes from.
_PPLCNET_SRC = ("PaddleClas ppcls/arch/backbone/legendary_models/pp_lcnet.py (official implementation), "
                "learnable parameters counted layer by layer from its NET_CONFIG (see "
                "test_pplcnet_reference_counts_follow_the_official_layer_list); PaddleClas docs round it to {}")
REFERENCE_PARAMS: dict[str, tuple[int, str]] = {
    "mobilenet_v1": (4_231_976, "imgclsmob MobileNet x1.0 (TF-slim/Gluon port) 4,231,976; paper Table 6: 4.2M"),
    "mobilenet_v2": (3_504_872, "torchvision mobilenet_v2 num_params 3,504,872; paper Table 3: 3.4M"),
    "mobilenet_v3_small": (2_542_856, "torchvision mobilenet_v3_small num_params 2,542,856; paper Table 3: 2.5M"),
    "mobilenet_v3_large": (5_483_032, "torchvision mobilenet_v3_large num_params 5,483,032; paper Table 3: 5.4M"),
    "pplcnet_x0_25": (1_521_184, _PPLCNET_SRC.format("1.5M")),
    "pplcnet_x0_35": (1_643_090, _PPLCNET_SRC.format("1.6M")),
    "pplcnet_x0_5": (1_879_576, _PPLCNET_SRC.format("1.9M") + "; keras_cv_attention_models LCNet050: 1.88M"),
    "pplcnet_x0_75": (2_357_008, _PPLCNET_SRC.format("2.4M") + "; keras_cv_attention_models LCNet075: 2.36M"),
    "pplcnet_x1_0": (2_952_520, _PPLCNET_SRC.format("3.0M") + "; keras_cv_attention_models LCNet100: 2.95M"),
    "pplcnet_x1_5": (4_499_832, _PPLCNET_SRC.format("4.5M")),
    "pplcnet_x2_0": (6_521_512, _PPLCNET_SRC.format("6.5M")),
    "pplcnet_x2_5": (9_017_560, _PPLCNET_SRC.format("9.0M")),
}

MY_FAMILIES = ("mobilenet_v*", "pplcnet_*")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_model_of_these_families_has_a_reference():
    names = {n for pattern in MY_FAMILIES for n in list_models(pattern)}
    assert names, "no MobileNet / PP-LCNet model is registered"
    assert names <= set(REFERENCE_PARAMS), f"missing reference for {sorted(names - set(REFERENCE_PARAMS))}"
    assert set(REFERENCE_PARAMS) <= set(list_models()), "a reference names an unregistered model"


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_reference(name):
    expected, source = REFERENCE_PARAMS[name]
    got = count_params(create_model(name, num_classes=1000))
    assert abs(got - expected) <= 0.01 * expected, f"{name}: {got:,} params vs {expected:,} ({source})"


# ---- PP-LCNet: the reference counts are the official network's --------------------------------------------

def _paddle_make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# PaddleClas NET_CONFIG, [kernel, in_c, out_c, stride, use_se] for blocks2..blocks6.
_PADDLE_NET_CONFIG = ([(3, 16, 32, 1, False), (3, 32, 64, 2, False), (3, 64, 64, 1, False), (3, 64, 128, 2, False),
                       (3, 128, 128, 1, False), (3, 128, 256, 2, False)] + [(5, 256, 256, 1, False)] * 5
                      + [(5, 256, 512, 2, True), (5, 512, 512, 1, True)])


def _paddle_pplcnet_params(scale: float, num_classes: int = 1000) -> int:
    """Learnable parameters of PaddleClas PPLCNetBaseNet: convs without bias, BN (scale, shift),
    SE convs with bias and channel // 4 squeeze, a 1280-d 1x1 last_conv without bias, an FC with bias."""
    md = _paddle_make_divisible
    stem = md(16 * scale)
    total = 3 * 3 * 3 * stem + 2 * stem
    for k, in_c, out_c, _stride, use_se in _PADDLE_NET_CONFIG:
        ci, co = md(in_c * scale), md(out_c * scale)
        total += k * k * ci + 2 * ci  # depthwise conv + BN
        if use_se:
            total += 2 * ci * (ci // 4) + ci // 4 + ci
        total += ci * co + 2 * co  # pointwise conv + BN
    return total + md(512 * scale) * 1280 + 1280 * num_classes + num_classes


@pytest.mark.parametrize("scale", [0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5])
def test_pplcnet_reference_counts_follow_the_official_layer_list(scale):
    name = "pplcnet_x" + str(scale).replace(".", "_")
    assert REFERENCE_PARAMS[name][0] == _paddle_pplcnet_params(scale)
    # The rounded figures PaddleClas publishes (Params(M) column of its PP-LCNet table).
    published = {0.25: 1.5, 0.35: 1.6, 0.5: 1.9, 0.75: 2.4, 1.0: 3.0, 1.5: 4.5, 2.0: 6.5, 2.5: 9.0}[scale]
    assert round(REFERENCE_PARAMS[name][0] / 1e6, 1) == published


def test_pplcnet_structure_matches_the_paper():
    model = create_model("pplcnet_x1_0")
    blocks = list(model.features)[1:]
    assert len(blocks) == 13
    assert [b.dw[0].kernel_size[0] for b in blocks] == [3] * 6 + [5] * 7  # 5x5 kernels at the tail
    assert [not isinstance(b.se, nn.Identity) for b in blocks] == [False] * 11 + [True] * 2  # SE in the last two
    head_conv = model.head[0]
    assert head_conv.out_channels == 1280 and head_conv.kernel_size == (1, 1) and head_conv.bias is None
    assert isinstance(model.head[2], nn.Dropout) and model.head[2].p == 0.2


# ---- MACs at 224x224 against the papers ---------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, paper_macs, tolerance", [
    ("mobilenet_v1", {}, 569e6, 0.02),                    # Table 6
    ("mobilenet_v1", {"width_mult": 0.75}, 325e6, 0.02),
    ("mobilenet_v1", {"width_mult": 0.5}, 149e6, 0.02),
    ("mobilenet_v1", {"width_mult": 0.25}, 41e6, 0.02),
    ("mobilenet_v2", {}, 300e6, 0.02),                    # Table 3
    ("mobilenet_v3_small", {}, 56e6, 0.03),               # Table 3 (its SE on the last conv is not in torchvision's)
    ("mobilenet_v3_large", {}, 217e6, 0.02),              # torchvision 0.217 GMACs; paper Table 3: 219M
    # PaddleClas: 161M FLOPs; its counter also counts BN and activations, ours convs and FCs only.
    ("pplcnet_x1_0", {}, 161e6, 0.05),
])
def test_macs_match_paper(name, kwargs, paper_macs, tolerance):
    macs = count_macs(create_model(name, **kwargs), 224)
    assert abs(macs - paper_macs) <= tolerance * paper_macs, f"{name} {kwargs}: {macs / 1e6:.1f}M MACs"


@pytest.mark.parametrize("width_mult, expected", [(0.75, 2_585_560), (0.5, 1_331_592), (0.25, 470_072)])
def test_mobilenet_v1_width_multiplier_matches_table6(width_mult, expected):
    # imgclsmob's exact counts; the paper's Table 6 rounds them to 2.6M / 1.3M / 0.5M.
    got = count_params(create_model("mobilenet_v1", width_mult=width_mult))
    assert abs(got - expected) <= 0.01 * expected


# ---- torchvision state_dict compatibility -------------------------------------------------------------------

def _randomize(model: nn.Module) -> None:
    """Give BatchNorm statistics/affine terms and Linear layers non-trivial values, so a layout or
    hyper-parameter mismatch (e.g. a different BN eps) shows in the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, m.in_features ** -0.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)


def _torchvision_model(name: str, **kwargs) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    _randomize(model)
    return model.eval()


@pytest.mark.parametrize("name, kwargs", [
    ("mobilenet_v2", {}),
    ("mobilenet_v3_small", {}),
    ("mobilenet_v3_large", {}),
    ("mobilenet_v3_small", {"width_mult": 0.5}),
])
def test_loads_torchvision_state_dict_with_identical_outputs(name, kwargs):
    reference = _torchvision_model(name, **kwargs)
    ours = create_model(name, num_classes=1000, **kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.std() > 0.1, "reference outputs too small for the comparison to mean anything"
    assert (got - expected).abs().max().item() < 1e-5


def test_torchvision_comparison_detects_a_batchnorm_eps_mismatch():
    # MobileNetV3 uses TensorFlow's BN eps (1e-3); with PyTorch's default the outputs must differ.
    reference = _torchvision_model("mobilenet_v3_small")
    ours = create_model("mobilenet_v3_small").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    for m in ours.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-5
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() > 1e-4


# ---- keywords --------------------------------------------------------------------------------------------

SMALL_VARIANTS = [
    ("mobilenet_v1", {"width_mult": 0.25}),
    ("mobilenet_v2", {"width_mult": 0.25}),
    ("mobilenet_v3_small", {"width_mult": 0.25}),
    ("mobilenet_v3_large", {"width_mult": 0.25}),
    ("pplcnet_x0_25", {}),
]


@pytest.mark.parametrize("name, kwargs", SMALL_VARIANTS)
def test_small_input_keeps_a_4x4_map_at_32x32(name, kwargs):
    x = torch.randn(1, 3, 32, 32)
    standard = create_model(name, num_classes=10, **kwargs).eval()
    small = create_model(name, num_classes=10, small_input=True, **kwargs).eval()
    with torch.no_grad():
        assert standard.forward_features(x).shape[-2:] == (1, 1)
        assert small.forward_features(x).shape[-2:] == (4, 4)
        assert small(x).shape == (1, 10)
    # Same weights, only strides differ: the parameter count does not change.
    assert count_params(small) == count_params(standard)
    assert small.default_cfg["input_size"] == (3, 32, 32) and standard.default_cfg["input_size"] == (3, 224, 224)


def _activation_types(model: nn.Module) -> set[type]:
    """Activation module types outside squeeze-excite blocks."""
    acts = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Mish, nn.GELU)
    inside_se = {id(m) for se in model.modules() if isinstance(se, SqueezeExcite) for m in se.modules()}
    return {type(m) for m in model.modules() if isinstance(m, acts) and id(m) not in inside_se}


@pytest.mark.parametrize("name, kwargs, default_acts", [
    ("mobilenet_v1", {"width_mult": 0.25}, {nn.ReLU}),
    ("mobilenet_v3_small", {"width_mult": 0.25}, {nn.ReLU, nn.Hardswish}),  # the paper mixes RE and HS layers
    ("mobilenet_v3_large", {"width_mult": 0.25}, {nn.ReLU, nn.Hardswish}),
    ("pplcnet_x0_25", {}, {nn.Hardswish}),
])
def test_act_layer_replaces_the_papers_activation(name, kwargs, default_acts):
    assert _activation_types(create_model(name, **kwargs)) == default_acts
    assert _activation_types(create_model(name, act_layer="mish", **kwargs)) == {nn.Mish}
    assert _activation_types(create_model(name, act_layer="relu6", **kwargs)) == {nn.ReLU6}


def test_mobilenet_v3_default_activation_follows_table1():
    model = create_model("mobilenet_v3_large")
    assert isinstance(model.features[0][2], nn.Hardswish)  # stem: HS
    assert isinstance(model.features[1].block[0][2], nn.ReLU)  # first bneck: RE
    assert isinstance(model.features[7].block[0][2], nn.Hardswish)  # 3x3, 240 -> 80: HS
    assert isinstance(model.classifier[1], nn.Hardswish)


def test_mobilenet_v3_stochastic_depth_on_residual_blocks():
    model = create_model("mobilenet_v3_large", width_mult=0.25, drop_path_rate=0.2)
    blocks = [b for b in model.features if hasattr(b, "use_res_connect")]
    # Rate rises linearly from 0 (first block) to drop_path_rate (last block); only residual blocks get one.
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]
    assert rates == pytest.approx([0.2 * i / (len(blocks) - 1) if b.use_res_connect else 0.0
                                   for i, b in enumerate(blocks)])
    assert blocks[-1].use_res_connect and rates[-1] == pytest.approx(0.2)
    x = torch.randn(8, 3, 32, 32)
    model.train()
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(x)
    assert not torch.allclose(a, b)  # branches dropped at random in training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), model.forward_features(x))


@pytest.mark.parametrize("name", ["mobilenet_v1", "pplcnet_x0_25"])
def test_drop_path_without_residuals_warns(name):
    with pytest.warns(UserWarning, match="no residual"):
        create_model(name, drop_path_rate=0.1)


@pytest.mark.parametrize("name, kwargs, num_features", [
    ("mobilenet_v3_small", {}, 1024), ("mobilenet_v3_large", {"width_mult": 0.25}, 320),
    ("pplcnet_x0_25", {}, 1280), ("mobilenet_v1", {"width_mult": 0.25}, 256),
])
def test_pre_logits_is_the_input_of_the_final_linear(name, kwargs, num_features):
    model = create_model(name, num_classes=5, small_input=True, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, num_features) == (2, model.num_features)
        assert torch.allclose(model.get_classifier()(pre), model(x), atol=1e-6)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_bad_width_mult_is_a_value_error(name):
    with pytest.raises(ValueError, match="width_mult"):
        create_model(name, width_mult=0)


def test_in_chans():
    model = create_model("mobilenet_v3_small", width_mult=0.25, in_chans=1, small_input=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("name, kwargs", SMALL_VARIANTS)
def test_fx_traceable(name, kwargs):
    model = create_model(name, num_classes=10, small_input=True, **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)
