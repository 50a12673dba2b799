"""Model registry: ``@register_model`` on small builder functions, ``create_model(name, **kw)``.

A builder is a function ``builder(*, num_classes=1000, **kwargs) -> nn.Module``. ``create_model``
records the name and the keyword arguments on the returned module (``model.arch``,
``model.arch_kwargs``) so the artifact writer can rebuild the same network later without pickle.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "get_model_entry", "UnknownModelError", "ModelEntry",
           "residual_blocks", "remove_blocks"]


class UnknownModelError(ValueError):
    """Raised for a name that is not in the registry; the message lists close matches."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    reference: str = ""  # where the published parameter count comes from (paper / torchvision)
    torchvision_name: str | None = None  # torchvision builder with the same architecture, if any
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, reference: str = "",
                   torchvision_name: str | None = None):
    """Register ``fn`` under its function name. Usable bare or with keyword options."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        family = f.__module__.rsplit(".", 1)[-1]
        _REGISTRY[name] = ModelEntry(name, f, family, reference, torchvision_name)
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Build a registered architecture.

    ``kwargs`` go to the builder (``width_mult``, ``act_layer``, ``small_input``, ``drop_rate``,
    ``drop_path_rate``, ...). ``small_input`` is False (ImageNet layout, total stride 32), ``"stem"``
    (the stem at stride 1: total stride 16) or True (stem and first downsampling at stride 1: 8). They must be JSON-serialisable so the model artifact can store them.
    ``removed_blocks`` (a list of module names from :func:`residual_blocks`) replaces those blocks
    by the identity: the depth-pruned network, rebuilt from its name and keyword arguments alone.
    """
    entry = get_model_entry(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise TypeError(f"model keyword arguments must be JSON-serialisable (strings, numbers): {e}") from None
    removed = kwargs.pop("removed_blocks", None) or []
    model = entry.builder(num_classes=num_classes, **kwargs)
    model.arch = name
    model.arch_kwargs = dict(kwargs)
    remove_blocks(model, removed)
    return model


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks whose output is ``x + f(x)`` with an identity shortcut (same shape in
    and out), in forward order: the blocks depth pruning can remove, leaving ``x``. MobileNetV2/V3
    and EfficientNet blocks say so with ``use_res_connect``; a ResNet block has no ``downsample``
    (its final ReLU then sees a non-negative ``x``, so the identity is exact there too)."""
    names = []
    for name, m in model.named_modules():
        if getattr(m, "use_res_connect", False) is True or (hasattr(m, "downsample") and m.downsample is None
                                                             and hasattr(m, "conv1")):
            names.append(name)
    return names


def remove_blocks(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named residual blocks by ``nn.Identity`` (in place) and record them in
    ``model.arch_kwargs["removed_blocks"]``; a name that is not a removable block is a ValueError."""
    if not names:
        return model
    removable = set(residual_blocks(model))
    bad = [n for n in names if n not in removable]
    if bad:
        raise ValueError(f"not removable residual blocks of {getattr(model, 'arch', type(model).__name__)}: "
                         f"{', '.join(map(str, bad))} (removable: {', '.join(residual_blocks(model)) or 'none'})")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    kwargs = getattr(model, "arch_kwargs", {})
    done = list(kwargs.get("removed_blocks", []))
    kwargs["removed_blocks"] = sorted(set(done) | set(names), key=_name_key)
    model.arch_kwargs = kwargs
    return model


def _name_key(name: str) -> tuple:
    """Module names in forward order: ``features.10`` after ``features.9``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))
