"""Pruning: structured channel pruning (torch-pruning dependency graph), unstructured magnitude
pruning with a gradual (AGP) schedule and held masks, per-layer sensitivity analysis, the search
for a ratio that meets a MACs or latency target, and fine-tuning (optionally distilled).

    from compress.prune import prune_channels, importance_by_name
    prune_channels(model, torch.zeros(1, 3, 32, 32), ratio=0.5, importance=importance_by_name("l2"))
"""
from .importance import METHODS, importance_by_name, needs_gradients
from .recovery import finetune, gradual_sparse_finetune
from .search import RatioSearch, search_ratio
from .sensitivity import SensitivityRow, analyze_sensitivity, choose_ratios, plot_sensitivity
from .structured import ChannelGroup, channel_groups, prune_channels, resolve_layers, round_channels, sync_head
from .unstructured import (GradualMagnitudePruner, WeightMasks, agp_sparsity, magnitude_masks, prunable_weights,
                           prune_magnitude, sparsity_report)

__all__ = [
    "METHODS", "ChannelGroup", "GradualMagnitudePruner", "RatioSearch", "SensitivityRow", "WeightMasks",
    "agp_sparsity", "analyze_sensitivity", "channel_groups", "choose_ratios", "finetune", "gradual_sparse_finetune",
    "importance_by_name", "magnitude_masks", "needs_gradients", "plot_sensitivity", "prunable_weights",
    "prune_channels", "prune_magnitude", "resolve_layers", "round_channels", "search_ratio", "sparsity_report",
    "sync_head",
]
