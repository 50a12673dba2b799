"""Knowledge distillation, one module per concern:

    config.py   KDOptions (the loss options every distilling stage shares) and DistillConfig
                (`compress distill`); torch-free, the CLI derives its flags
    losses.py   Hinton KD, DKD (decoupled KD) and DIST on logits: DistillLoss
    hints.py    FitNets feature hints with a learned 1x1 adapter: FeatureHint
    teacher.py  a teacher artifact checked against the student's classes and fed its input
    api.py      the stage: distill(output, DistillConfig) -> DistillResult

The criterion handed to the training loop is compress.training.criteria.DistillationCriterion.

    from compress.distill import DistillConfig, distill
    distill("s.safetensors", DistillConfig.with_preset({"teacher": "t.safetensors", "model": "pplcnet_x0_25"}))
"""
from .._lazy import lazy_exports

_EXPORTS = {"DistillConfig": "config", "KDOptions": "config", "distill": "api", "DistillResult": "api",
            "DistillLoss": "losses", "dkd_loss": "losses", "dist_loss": "losses", "dkd_terms": "losses",
            "FeatureHint": "hints", "load_teacher": "teacher", "TeacherInput": "teacher"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
