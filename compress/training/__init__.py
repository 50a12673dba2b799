"""Training: the one loop every stage that trains or fine-tunes uses.

    config.py      TrainConfig: every knob of the loop (torch-free; the CLI derives its flags)
    loop.py        fit = train_one_epoch + validate + BestCheckpoint
    criteria.py    what is minimised: SupervisedCriterion, DistillationCriterion (a teacher), ...
    losses.py      cross-entropy / focal / BCE, Hinton's KD loss
    schedules.py   learning-rate schedules (step, cosine, HTD) with warm-up
    augment.py     batch augmentations (crop, flip, cutout, mixup, cutmix)
    batchnorm.py   precise BatchNorm before validation
    optim.py       optimizer, mixed precision, device, seeding
    distributed.py torchrun / DistributedDataParallel helpers
    callbacks.py   progress, text log and TensorBoard behind one callback
    api.py         the train stage: TrainStageConfig → train() → TrainStageResult

    from compress.training import TrainConfig, fit
    result = fit(model, bundle, TrainConfig(epochs=15))
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"TrainConfig": "config", "fit": "loop", "TrainResult": "loop", "TrainLogger": "callbacks",
            "TrainCallback": "callbacks", "build_criterion": "criteria", "DistillationCriterion": "criteria",
            "SupervisedCriterion": "criteria", "Criterion": "criteria"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
