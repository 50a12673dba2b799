"""The facts that travel with a model in every file format (safetensors metadata, ONNX
``metadata_props``, the Huffman container's header): architecture, classes, labels, task,
preprocessing and the history of the stages that produced it. Torch-free.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .data.preprocess import INTERPOLATIONS
from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

TASKS = ("multiclass", "multilabel")
# Training options that fine-tuning stages (prune, distill, ...) take over from the training run.
AUGMENTATION_KEYS = ("hflip", "crop_padding", "cutout", "label_smoothing")


@dataclass
class ModelMeta:
    arch: str
    num_classes: int
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "multiclass"
    labels: list[str] = field(default_factory=list)
    input_size: list[int] = field(default_factory=lambda: [3, 224, 224])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    history: list[dict[str, Any]] = field(default_factory=list)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not self.labels:
            self.labels = [str(i) for i in range(self.num_classes)]
        if len(self.labels) != self.num_classes:
            raise UserError(f"{len(self.labels)} labels for {self.num_classes} classes")
        self.input_size = [int(v) for v in self.input_size]
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]

    def add_history(self, stage: str, params: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None, **extra: Any) -> None:
        """Append one stage record (stage name, its parameters, key metrics, wall-clock time)."""
        entry = {"stage": stage, "params": params or {}, "metrics": metrics or {},
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        entry.update(extra)
        self.history.append(entry)

    @classmethod
    def for_model(cls, model: "nn.Module", **kw: Any) -> "ModelMeta":
        """Metadata for a model built by ``create_model`` (arch, kwargs and class count from it)."""
        arch = getattr(model, "arch", None)
        if arch is None:
            raise UserError("model was not built by models.create_model (no .arch attribute)")
        cfg = getattr(model, "default_cfg", {})
        kw.setdefault("input_size", list(cfg.get("input_size", (3, 224, 224))))
        kw.setdefault("mean", list(cfg.get("mean", (0.485, 0.456, 0.406))))
        kw.setdefault("std", list(cfg.get("std", (0.229, 0.224, 0.225))))
        return cls(arch=arch, arch_kwargs=dict(getattr(model, "arch_kwargs", {})),
                   num_classes=int(model.get_classifier().out_features), **kw)

    def training_augmentation(self) -> dict[str, Any]:
        """The data augmentation of the last training run recorded in the history (flips, shifts,
        cutout, label smoothing), for fine-tuning stages to train alike; ``{}`` when none."""
        for entry in reversed(self.history):
            config = (entry.get("params") or {}).get("config")
            if entry.get("stage") == "train" and isinstance(config, dict):
                return {k: config[k] for k in AUGMENTATION_KEYS if k in config}
        return {}

    def training_data(self) -> dict[str, Any]:
        """The data facts recorded by the last stage that trained on a named data set: ``spec``,
        ``data_seed`` (0 when not recorded) and, where recorded, ``interpolation``, ``label_sep``,
        ``image_size``. ``{}`` when no stage names one (a model from elsewhere)."""
        for entry in reversed(self.history):
            data = (entry.get("params") or {}).get("data")
            if isinstance(data, dict) and isinstance(data.get("spec"), str) and data["spec"]:
                return {**data, "data_seed": int(data.get("data_seed") or 0)}
        return {}

