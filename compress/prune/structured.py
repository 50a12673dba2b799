"""Structured channel pruning on torch-pruning's dependency graph.

Removing output channel ``c`` of a conv also removes input channel ``c`` of every layer that
reads it; torch-pruning's dependency graph finds those coupled layers (BatchNorm, depthwise convs,
the other branches of a residual add, SE blocks' 1x1 convs, the classifier's input), so each
"group" of coupled channels is kept or removed as a whole and the network stays consistent.
The pruned network is an ordinary ``nn.Module`` with smaller layers; the artifact stores the
new layer shapes (see :mod:`compress.artifact`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import UserError
from ..torch_utils import model_mode, sync_head
from .importance import needs_gradients

ROOT_TYPES = (nn.Conv2d, nn.Linear)


def resolve_layers(model: nn.Module, layers: Iterable[str | nn.Module]) -> list[nn.Module]:
    """Modules for a mix of module names and modules; an unknown name raises :class:`UserError`
    naming the closest existing layers."""
    named = dict(model.named_modules())
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            out.append(layer)
            continue
        if layer not in named or layer == "":
            close = difflib.get_close_matches(str(layer), [n for n in named if n], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"model has no layer named {layer!r}{hint}")
        out.append(named[layer])
    return out


def protected_layers(model: nn.Module, ignored_layers: Iterable[str | nn.Module] = ()) -> list[nn.Module]:
    """The classifier (``model.get_classifier()``) plus the user-named layers."""
    layers = resolve_layers(model, ignored_layers)
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        layers.append(get_classifier())
    return layers


def round_channels(keep: int, current: int, round_to: int) -> int:
    """Channels to keep after rounding ``keep`` to the nearest multiple of ``round_to``, never
    below ``round_to`` and never above ``current`` (so a small layer is not emptied)."""
    if not round_to or round_to <= 1:
        return max(1, min(keep, current))
    rounded = int(keep / round_to + 0.5) * round_to
    return max(1, min(current, max(round_to, rounded)))


class _ChannelPruner(tp.pruner.BasePruner):
    """BasePruner with nearest-multiple rounding: the stock rounding floors ``current - n_pruned``
    and removes a whole layer when fewer than ``round_to`` channels would stay."""

    def _round_to(self, n_pruned, current_channels, round_to):  # noqa: D401 - torch-pruning hook
        return current_channels - round_channels(current_channels - n_pruned, current_channels, round_to)


def _check_ratio(value: float, what: str, allow_zero: bool) -> float:
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bound = "0 <=" if allow_zero else "0 <"
        raise UserError(f"{what} must satisfy {bound} ratio < 1, got {value}")
    return value


def prune_channels(model: nn.Module, example_input: torch.Tensor, *, ratio: float,
                   importance: tp.importance.Importance, global_pruning: bool = False, round_to: int | None = 8,
                   ignored_layers: Iterable[str | nn.Module] = (), ratio_per_layer: Mapping[str, float] | None = None,
                   steps: int = 1, between_steps: Callable[[nn.Module, int], None] | None = None,
                   compute_gradients: Callable[[nn.Module], None] | None = None,
                   max_layer_ratio: float = 0.95) -> nn.Module:
    """Remove a fraction ``ratio`` of the channels of every prunable group of ``model`` (in place).

    ``ratio`` is a channel ratio (0 < ratio < 1; 0.5 keeps about half the channels, hence roughly a
    quarter of the MACs). ``global_pruning`` ranks all groups together (with ``LAMPImportance`` the
    scores are comparable across layers) instead of removing ``ratio`` from each group.
    ``round_to`` rounds every group's kept channel count to a multiple (8 suits SIMD kernels).
    The classifier and ``ignored_layers`` (names or modules) keep their output channels.
    ``ratio_per_layer`` maps layer names to their own ratio (layers not listed use ``ratio``, which
    may then be 0). ``steps`` > 1 prunes iteratively (ratio grows linearly per step), calling
    ``between_steps(model, step)`` after each step but the last (fine-tuning goes there).
    Criteria that need gradients (Taylor) call ``compute_gradients(model)`` before each step; it
    must accumulate ``.grad`` on the weights (e.g. backward over a few batches).
    ``max_layer_ratio`` is torch-pruning's ``max_pruning_ratio``: with ``steps`` > 1, a layer
    already cut to ``1 - max_layer_ratio`` of its width is not pruned in later steps (within one
    step it caps nothing).
    Returns ``model``, pruned, in the train/eval mode it had."""
    per_layer = dict(ratio_per_layer or {})
    ratio = _check_ratio(ratio, "pruning ratio", allow_zero=bool(per_layer))
    for name, r in per_layer.items():
        _check_ratio(r, f"pruning ratio of layer {name!r}", allow_zero=True)
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if round_to is not None and round_to < 0:
        raise UserError(f"round_to must be >= 0, got {round_to}")
    if needs_gradients(importance) and compute_gradients is None:
        raise UserError(f"{type(importance).__name__} needs gradients: pass compute_gradients")
    ignored = protected_layers(model, ignored_layers)
    modules = resolve_layers(model, per_layer)
    ratio_dict = {m: per_layer[name] for m, name in zip(modules, per_layer)}

    # round_to 1 when not rounding: torch-pruning calls _round_to (which keeps at least one channel)
    # only when round_to is set, and otherwise skips, unpruned, any group the ratio would empty
    with model_mode(model, training=False):  # tracing must not update BatchNorm statistics
        pruner = _ChannelPruner(model, example_input, importance=importance, global_pruning=global_pruning,
                                pruning_ratio=ratio, pruning_ratio_dict=ratio_dict or None, iterative_steps=steps,
                                ignored_layers=ignored, round_to=round_to or 1, max_pruning_ratio=max_layer_ratio)
        try:
            for step in range(1, steps + 1):
                if needs_gradients(importance):
                    model.zero_grad(set_to_none=True)
                    compute_gradients(model)
                model.eval()  # fine-tuning between steps leaves it training
                pruner.step()
                sync_head(model)
                if between_steps is not None and step < steps:
                    between_steps(model, step)
        finally:
            model.zero_grad(set_to_none=True)
    return model


@dataclass(frozen=True)
class ChannelGroup:
    """A set of coupled layers whose output channels are pruned together, named by its root."""

    name: str               # root layer, usable as a key of ``ratio_per_layer``
    channels: int           # current channel count of the group
    members: tuple[str, ...]  # every layer whose output channels belong to the group


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    with model_mode(model, training=False):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def iter_groups(graph: tp.DependencyGraph, model: nn.Module, ignored_layers: Iterable[str | nn.Module] = ()):
    """The prunable dependency groups of ``model`` (classifier and ignored layers excluded)."""
    ignored = [sub for m in protected_layers(model, ignored_layers) for sub in m.modules()]
    yield from graph.get_all_groups(ignored_layers=ignored, root_module_types=list(ROOT_TYPES))


def channel_groups(model: nn.Module, example_input: torch.Tensor,
                   ignored_layers: Iterable[str | nn.Module] = ()) -> list[ChannelGroup]:
    """Describe the prunable channel groups (names to use in a ratio file)."""
    graph = build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in iter_groups(graph, model, ignored_layers):
        root = group[0].dep.target.module
        members = tuple(dict.fromkeys(
            names[dep.target.module] for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names
            and isinstance(dep.target.module, ROOT_TYPES)))
        out.append(ChannelGroup(names[root], int(graph.get_out_channels(root)), members))
    return out
