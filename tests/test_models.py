"""Registry-driven checks every architecture must pass (the family files hold the per-model facts)."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn

from models import ClassifierModel, UnknownModelError, activation_names, create_model, list_models

ALL = list_models()


def _reference_params() -> dict[str, tuple[int, str]]:
    refs: dict[str, tuple[int, str]] = {}
    for mod in ("tests.test_models_mobilenet", "tests.test_models_efficientnet_resnet"):
        refs.update(importlib.import_module(mod).REFERENCE_PARAMS)
    return refs


def test_registry_lists_every_family():
    families = {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "resnet18", "resnet34", "resnet50"}
    assert families <= set(ALL)
    assert any(n.startswith("pplcnet_x0_25") for n in ALL) and any(n.startswith("pplcnet_x2_0") for n in ALL)


def test_every_registered_model_has_a_published_parameter_reference():
    refs = _reference_params()
    missing = [n for n in ALL if n not in refs]
    assert not missing, f"no published parameter count recorded for {missing}"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="mobilenet_v2"):
        create_model("mobilenet_v22")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_classes_is_a_value_error(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("mobilenet_v2", num_classes=bad)


def test_non_json_kwargs_rejected():
    with pytest.raises(TypeError, match="JSON"):
        create_model("mobilenet_v2", act_layer=nn.ReLU)


def _forward_backward(model: nn.Module, size: int, num_classes: int) -> None:
    model.train()
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_small_input(name):
    model = create_model(name, num_classes=10, small_input=True)
    _forward_backward(model, 32, 10)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_224(name):
    torch.set_num_threads(2)
    model = create_model(name, num_classes=1000)
    _forward_backward(model, 224, 1000)


@pytest.mark.parametrize("name", ALL)
def test_common_surface(name):
    model = create_model(name, num_classes=7, small_input=True).eval()
    assert isinstance(model, ClassifierModel)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 7 and head.in_features == model.num_features
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    with torch.no_grad():
        assert model(x).shape == (2, 3)


@pytest.mark.parametrize("name", ALL)
def test_activation_is_a_keyword(name):
    model = create_model(name, num_classes=4, small_input=True, act_layer="mish")
    assert any(isinstance(m, nn.Mish) for m in model.modules())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 32, 32))).all()


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="relu6"):
        create_model("mobilenet_v2", act_layer="tanhh")
    assert {"relu", "relu6", "hardswish", "silu", "mish"} <= set(activation_names())


def test_create_model_records_arch_and_kwargs():
    model = create_model("mobilenet_v2", num_classes=5, width_mult=0.5, small_input=True)
    assert model.arch == "mobilenet_v2"
    assert model.arch_kwargs == {"width_mult": 0.5, "small_input": True}
