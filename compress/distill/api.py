"""The distill stage: :class:`~compress.distill.config.DistillConfig` → :func:`distill` →
:class:`DistillResult`.

Trains a student (a model artifact, e.g. a pruned model, or a new network of a registry
architecture) with the one training loop and a :class:`~compress.training.criteria.DistillationCriterion`
built on the teacher artifact; evaluates student and teacher on the test split; writes the
student artifact (with a "distill" history entry naming the teacher and the loss), its JSON
report (``OUTPUT.json``) and a text log (``OUTPUT.log``).

    from compress.distill import DistillConfig, distill
    cfg = DistillConfig.with_preset({"teacher": "r18.safetensors", "model": "pplcnet_x0_25",
                                     "data": "fashion-mnist", "kd_loss": "dkd"})
    result = distill("student.safetensors", cfg)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..training.api import TrainStageResult
from .config import DistillConfig


class DistillResult(TrainStageResult):
    """The student artifact, its report (``to_dict()``) and log: the train stage's result shape."""


def _student(cfg: DistillConfig, teacher_meta):
    """(student, its metadata or None, resolved config, data bundle) for an artifact or a new network."""
    from ..artifact import load_model
    from ..data import load_data, load_data_for_model
    from ..training.api import build_model

    if cfg.student:
        student, meta = load_model(cfg.student)
        spec = cfg.data or meta.training_data().get("spec") or teacher_meta.training_data().get("spec")
        if not spec:
            raise UserError(f"neither {cfg.student} nor the teacher records a data set; give --data")
        cfg = cfg.resolved(spec, finetune=True, augmentation=meta.training_augmentation())
        seed = cfg.data_seed if cfg.is_given("data_seed") else None  # None: the student's recorded split
        bundle = load_data_for_model(meta, spec, seed=seed, data_root=cfg.data_root,
                                     train_limit=cfg.train_limit, source=f"student {cfg.student}")
        return student, meta, cfg, bundle
    spec = cfg.data or teacher_meta.training_data().get("spec")
    if not spec:
        raise UserError(f"teacher {cfg.teacher} records no training data set; give --data")
    cfg = cfg.resolved(spec, finetune=False, image_size=int(teacher_meta.input_size[-1]))
    if not cfg.is_given("data_seed"):  # the teacher's split: its training images stay out of val/test
        cfg.data_seed = int(teacher_meta.training_data().get("data_seed", 0))
    bundle = load_data(spec, image_size=cfg.image_size, seed=cfg.data_seed, data_root=cfg.data_root,
                       label_sep=cfg.label_sep, train_limit=cfg.train_limit)
    if cfg.num_classes is not None and cfg.num_classes != bundle.num_classes:
        raise UserError(f"--num-classes {cfg.num_classes} does not match data set {bundle.name!r}, "
                        f"which has {bundle.num_classes} classes")
    from ..training.api import load_pretrained
    from ..training.optim import seed_everything

    seed_everything(cfg.seed)  # the same seed starts from the same weights
    student = build_model(cfg.model, bundle.num_classes, cfg.arch_kwargs())
    if cfg.pretrained:
        load_pretrained(student, cfg.model)
    return student, None, cfg, bundle


def distill(output: str | os.PathLike, config: DistillConfig, *, report_path: str | os.PathLike | None = None,
            log_path: str | os.PathLike | None = None, progress: bool = True) -> DistillResult | None:
    """Distil ``config.teacher`` into the student and write ``output`` (.safetensors), its report
    (default ``output``.json) and log (default ``output``.log). Under torchrun only rank 0 writes
    files and gets a result."""
    from ..artifact import read_meta
    from ..io import check_outputs, sidecar, write_json
    from ..training.callbacks import TrainLogger
    from ..training.criteria import build_criterion
    from ..training.distributed import distributed_context
    from ..training.loop import fit
    from .hints import FeatureHint
    from .teacher import load_teacher, logits_cache_file

    cfg = config.validate()
    out, report_path, log_path = check_outputs([output, report_path or sidecar(output),
                                                log_path or sidecar(output, ".log")], [cfg.teacher, cfg.student])
    teacher_meta, _ = read_meta(cfg.teacher)
    student, student_meta, cfg, bundle = _student(cfg, teacher_meta)
    teacher, teacher_meta = load_teacher(cfg.teacher, labels=bundle.labels, task=bundle.task,
                                         num_classes=bundle.num_classes, input_size=bundle.input_size,
                                         mean=bundle.mean, std=bundle.std, what=f"the data set {bundle.name!r}")
    spec = cfg.distill_loss(bundle.task, finetune=student_meta is not None)
    hint = FeatureHint(cfg.hint_layer, cfg.teacher_hint_layer, cfg.hint_weight) if cfg.hint_weight > 0 else None
    loop_cfg = cfg.loop_config()
    criterion = build_criterion(loop_cfg, bundle.task, teacher=teacher, loss=spec, hint=hint, cache=cfg.cache_teacher,
                                cache_file=logits_cache_file(cfg.teacher, bundle.summary()))
    is_main = distributed_context().is_main
    logger = TrainLogger(progress=progress, log_file=log_path if is_main else None, label="distill epoch")
    if cfg.preset_applied:
        from ..training.presets import describe

        logger.on_message(f"defaults for {bundle.name}{' (fine-tuning a trained student)' if student_meta else ''}: "
                          f"{describe(cfg.preset_applied)} (any flag overrides these)")
    logger.on_message(f"teacher {cfg.teacher} ({teacher_meta.arch}) → student "
                      f"{cfg.student or cfg.model}, loss {spec.name}")
    try:
        result = fit(student, bundle, loop_cfg, criterion=criterion, callback=logger)
    finally:
        logger.close()
    if not is_main:
        return None
    report = _finish(student, student_meta, teacher.inner, teacher_meta, bundle, cfg, result, out, log_path)
    write_json(report_path, report)
    return DistillResult(out, report_path, log_path, report)


def _finish(student, student_meta, teacher, teacher_meta, bundle, cfg: DistillConfig, result, out: Path,
            log_path: Path) -> dict[str, Any]:
    """Test metrics of student and teacher, the artifact with its history entry, the report."""
    from models import model_cost

    from ..artifact import save_model
    from ..evaluate import evaluate, primary_metric, scalar_metrics
    from ..meta import ModelMeta

    key = primary_metric(bundle.task)
    test = evaluate(student, bundle.test, bundle.task, cfg.eval_batch_size, labels=bundle.labels,
                    threshold=cfg.threshold)
    test_scalars = scalar_metrics(test)
    teacher_recorded = next((e.get("metrics", {}).get(key) for e in reversed(teacher_meta.history)
                             if e.get("metrics", {}).get(key) is not None), None)
    teacher_test = scalar_metrics(evaluate(teacher, bundle.test, bundle.task, cfg.eval_batch_size,
                                           labels=bundle.labels, threshold=cfg.threshold)) \
        if list(teacher_meta.input_size) == list(bundle.input_size) else {}
    side = int(bundle.input_size[-1])
    s_cost, t_cost = model_cost(student, side), model_cost(teacher, int(teacher_meta.input_size[-1]))
    data_facts = {"spec": cfg.data, "image_size": side, "data_seed": bundle.summary().get("split_seed", cfg.data_seed),
                  "train_limit": cfg.train_limit,
                  "interpolation": bundle.interpolation, "label_sep": cfg.label_sep, "sizes": bundle.summary()["sizes"]}
    params = {"teacher": {"path": str(cfg.teacher), "arch": teacher_meta.arch, key: teacher_test.get(key, teacher_recorded),
                          "params": t_cost.params, "macs": t_cost.macs},
              "student": {"path": cfg.student, "arch": getattr(student, "arch", None),
                          "kwargs": None if cfg.student else cfg.arch_kwargs()},
              "criterion": result.criterion, **cfg.kd_params(bundle.task, finetune=student_meta is not None), "config": cfg.loop_config().to_dict(),
              "defaults_applied": cfg.preset_applied, "data": data_facts, "world_size": result.world_size}
    if student_meta is not None:
        meta = student_meta
    else:
        meta = ModelMeta.for_model(student, task=bundle.task, labels=bundle.labels, input_size=list(bundle.input_size),
                                   mean=list(bundle.mean), std=list(bundle.std), interpolation=bundle.interpolation)
    metrics = {key: test_scalars[key], **{f"test_{k}": v for k, v in test_scalars.items()},
               **{f"val_{k}": v for k, v in result.best_metrics.items()}}
    meta.add_history("distill", params, metrics, seconds=round(result.seconds, 1), epochs_run=result.epochs_run,
                     best_epoch=result.best_epoch)
    save_model(student, out, meta)
    return {"command": "distill", "output": str(out), "log": str(log_path), "config": params,
            "data": bundle.summary(),
            "student": {"arch": getattr(student, "arch", None), "params": s_cost.params, "macs": s_cost.macs,
                        "input_size": list(bundle.input_size)},
            "teacher": {"arch": teacher_meta.arch, "params": t_cost.params, "macs": t_cost.macs,
                        "test": teacher_test or None, "recorded_" + key: teacher_recorded},
            "result": {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                       "stopped_early": result.stopped_early, "seconds": round(result.seconds, 2),
                       "val": result.best_metrics, "test": test, "test_scalars": test_scalars},
            "history": result.history}
