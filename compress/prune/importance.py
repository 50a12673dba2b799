"""Channel importance criteria: which channels of a dependency group to remove first.

Each criterion is a torch-pruning ``Importance`` object (one score per channel of a group, the
lowest scores are pruned). Code passes these objects around; names are resolved only at the CLI
edge with :func:`importance_by_name`.

    l1      group L1 norm of the weights (Li et al. 2017, "Pruning Filters for Efficient ConvNets")
    l2      group L2 norm of the weights
    bn      |gamma| of the BatchNorm layers in the group (Liu et al. 2017, "Network Slimming")
    taylor  first-order Taylor |w * dL/dw| (Molchanov et al. 2019); needs gradients, see
            :func:`needs_gradients`
    lamp    layer-adaptive magnitude score (Lee et al. 2021), comparable across layers, which
            makes it the natural choice for global pruning
"""
from __future__ import annotations

from typing import Callable

import torch_pruning as tp

from ..errors import UserError
from .config import METHODS

_CRITERIA: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.TaylorImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
}

assert tuple(_CRITERIA) == METHODS, "compress.prune.config.METHODS names every criterion here"


def importance_by_name(name: str) -> tp.importance.Importance:
    """A fresh criterion object for ``name`` (one of :data:`METHODS`); :class:`UserError` otherwise."""
    key = str(name).lower()
    if key not in _CRITERIA:
        raise UserError(f"unknown pruning method {name!r}; choose one of {', '.join(METHODS)}")
    return _CRITERIA[key]()


def needs_gradients(importance: tp.importance.Importance) -> bool:
    """True when the criterion reads ``.grad`` of the weights (Taylor, Hessian-style criteria)."""
    return isinstance(importance, (tp.importance.GroupTaylorImportance, tp.importance.GroupHessianImportance))
