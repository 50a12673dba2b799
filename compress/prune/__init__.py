"""Pruning, one package per concern:

    config.py       PruneConfig: every option of the stage (torch-free; the CLI derives its flags)
    api.py          the stage: prune_artifact (structured / unstructured + fine-tuning), analyze_artifact
    measure.py      before/after measurement: params, MACs, accuracy, ONNX Runtime latency
    structured.py   channel pruning on torch-pruning's dependency graph (prune_channels)
    unstructured.py magnitude pruning, AGP schedule, held masks (prune_magnitude, GradualMagnitudePruner)
    sensitivity.py  per-group sensitivity analysis (analyze_sensitivity, choose_ratios)
    search.py       the ratio that meets a MACs or latency target (search_ratio)
    importance.py   channel importance criteria by name (l1, l2, bn, taylor, lamp)
    recovery.py     fine-tuning after pruning (plain or distilled) through the training loop

    from compress.prune import prune_channels, importance_by_name
    prune_channels(model, torch.zeros(1, 3, 32, 32), ratio=0.5, importance=importance_by_name("l2"))
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "METHODS": "config", "PruneConfig": "config", "prune_artifact": "api", "analyze_artifact": "api",
    "PruneResult": "api", "SensitivityResult": "api", "importance_by_name": "importance",
    "needs_gradients": "importance", "finetune": "recovery", "gradual_sparse_finetune": "recovery",
    "RatioSearch": "search", "search_ratio": "search", "SensitivityRow": "sensitivity",
    "analyze_sensitivity": "sensitivity", "choose_ratios": "sensitivity", "zeroed_group": "sensitivity",
    "ChannelGroup": "structured", "channel_groups": "structured", "prune_channels": "structured",
    "resolve_layers": "structured", "round_channels": "structured", "GradualMagnitudePruner": "unstructured",
    "WeightMasks": "unstructured", "agp_sparsity": "unstructured", "magnitude_masks": "unstructured",
    "prunable_weights": "unstructured", "prune_magnitude": "unstructured", "sparsity_report": "unstructured",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
