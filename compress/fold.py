"""BatchNorm folding: each Conv2d → BatchNorm2d pair becomes one convolution whose weight is the
conv weight scaled per output channel, plus one bias. Used by the Huffman stage (storage) and by
k-means weight sharing (clustering in the folded domain, ``compress quantize --fold-bn``).

For a conv ``W`` (bias ``c``, often absent) followed by BN (``γ, β, μ, σ², ε``) in eval mode:

    s  = γ / sqrt(σ² + ε)                    one factor per output channel
    W' = W · s[:, None, None, None]          the folded weight
    b' = β + (c − μ) · s                     the folded bias

The container keeps ``W``'s shared codebook and indices and stores ``s`` beside them, so k-means
weight sharing survives folding (folding first would give every channel its own centroids);
the decoded weight is ``codebook[indices] · s`` computed by :func:`dcz.expand`.

Why k-means clusters folded weights: a conv followed by BN is scale-invariant per channel, so
after pruning the surviving weights of different channels can differ in size by 100x (measured:
up to |w| = 124 in MobileNetV2's last blocks at 85% global sparsity, 0.4 elsewhere). One
codebook over such a tensor leaves the small channels one or two values; folded, every channel
is on the scale of its output. Zero-shot top-1 of that model on 500 validation images after
4-bit k-means: 7.0% clustering the raw weights, 88.8% clustering the folded ones (91.4% before).

The folded network is the same architecture with every folded BN set to the identity plus
``b'``: γ = 1, μ = 0, σ² = 1 − ε (so σ² + ε rounds to exactly 1.0 in float32 and the division is
exact) and β = b'. Its conv weights are the folded ones, so PyTorch, the ONNX export (whose own
folding multiplies by 1.0) and the ``.dcz`` decoder all see the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError


@dataclass(frozen=True)
class FoldedPair:
    """One Conv2d → BatchNorm2d pair (module names) and the BN's epsilon."""

    conv: str
    bn: str
    eps: float
    conv_bias: bool  # the conv had its own bias (folded into b'; decoded as zeros)

    def to_list(self) -> list:
        return [self.conv, self.bn, self.eps, self.conv_bias]

    @classmethod
    def from_list(cls, item) -> "FoldedPair":
        conv, bn, eps, conv_bias = item
        return cls(str(conv), str(bn), float(eps), bool(conv_bias))


def conv_bn_pairs(model: nn.Module) -> list[FoldedPair]:
    """Every BatchNorm2d whose input is a Conv2d's output used by that BN alone, found by tracing
    ``model`` with ``torch.fx`` (a conv called twice, or feeding anything else too, is left)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - any tracing failure means: cannot fold this model
        raise UserError(f"cannot trace {type(model).__name__} to find Conv→BatchNorm pairs "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); use --no-fold-bn") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        conv, bn = modules.get(src.target), modules[node.target]
        if (isinstance(conv, nn.Conv2d) and len(src.users) == 1 and calls[src.target] == 1
                and calls[node.target] == 1 and bn.track_running_stats and bn.affine
                and conv.out_channels == bn.num_features):
            pairs.append(FoldedPair(src.target, node.target, float(bn.eps), conv.bias is not None))
    return pairs


def fold_in_place(model: nn.Module) -> list[FoldedPair]:
    """Fold every Conv→BN pair of ``model`` in place: conv weight × s, conv bias 0, the BN the
    identity + b' (module docstring), and the BN frozen in eval mode from now on (a forward
    pre-hook; a training loop's ``model.train()`` would otherwise normalise by batch statistics).
    Returns the pairs. The network computes the same function up to float rounding."""
    pairs = conv_bn_pairs(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for pair in pairs:
            conv, bn = modules[pair.conv], modules[pair.bn]
            scale, bias = fold_factors(conv, bn)
            conv.weight.mul_(torch.from_numpy(scale).to(conv.weight).view(-1, *[1] * (conv.weight.ndim - 1)))
            set_folded(conv, bn, pair, torch.from_numpy(bias))
            bn.register_forward_pre_hook(_frozen)
    return pairs


def _frozen(module: nn.Module, _inputs) -> None:
    module.training = False


def fold_factors(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(s, b') in float32 for one pair (computed in float64, rounded once)."""
    gamma = bn.weight.detach().double()
    beta = bn.bias.detach().double()
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    scale = gamma / torch.sqrt(var + bn.eps)
    conv_bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    bias = beta + (conv_bias - mean) * scale
    return scale.float().numpy().copy(), bias.float().numpy().copy()


def identity_bn_state(pair: FoldedPair, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state-dict entries of a folded BN in the decoded network (see the module docstring)."""
    n = bias.numel()
    eps = torch.tensor(pair.eps, dtype=torch.float32)
    return {f"{pair.bn}.weight": torch.ones(n), f"{pair.bn}.bias": bias,
            f"{pair.bn}.running_mean": torch.zeros(n),
            f"{pair.bn}.running_var": torch.full((n,), float(torch.tensor(1.0) - eps)),
            f"{pair.bn}.num_batches_tracked": torch.tensor(0, dtype=torch.long)}


def set_folded(conv: nn.Conv2d, bn: nn.BatchNorm2d, pair: FoldedPair, bias: torch.Tensor,
               gamma: torch.Tensor | None = None) -> None:
    """Give ``bn`` the folded state (:func:`identity_bn_state`: identity + ``bias``, or ``gamma``
    per channel instead of 1) and zero the conv's own bias (``bias`` includes it). No grad."""
    state = identity_bn_state(pair, bias)
    if gamma is not None:
        state[f"{pair.bn}.weight"] = gamma
    with torch.no_grad():
        for key, value in state.items():
            getattr(bn, key.rsplit(".", 1)[1]).copy_(value)
        if conv.bias is not None:
            conv.bias.zero_()
