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

__all__ = ["register_model", "create_model", "list_models", "get_model_entry", "UnknownModelError", "ModelEntry"]


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
    """
    entry = get_model_entry(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise TypeError(f"model keyword arguments must be JSON-serialisable (strings, numbers): {e}") from None
    model = entry.builder(num_classes=num_classes, **kwargs)
    model.arch = name
    model.arch_kwargs = dict(kwargs)
    return model
