"""The train stage: :class:`TrainStageConfig` → :func:`train` → :class:`TrainStageResult`.

Builds a registry model for the data set, trains it with :func:`~compress.training.loop.fit`,
evaluates the best-validation weights on the test split and writes the model artifact (with a
"train" history entry), its JSON report (``OUTPUT.json``) and a text log (``OUTPUT.log``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..config import option
from ..errors import UserError
from .config import TrainConfig
from .presets import PRESET_CHOICES

SMALL_INPUT_MAX = 64  # pixels: at or below this the reduced-stride stem is used by default
SMALL_INPUT_MODES = {"on": True, "stem": "stem", "off": False}  # --small-input → the builders' keyword
SMALL_INPUT_CHOICES = tuple(SMALL_INPUT_MODES)


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object, e.g. '{\"width_mult\": 0.5}'")
    return value


_M, _D = "model", "data"


@dataclass(kw_only=True)
class TrainStageConfig(TrainConfig):
    """The train stage's options: the model, the data, and every knob of the loop (inherited)."""

    model: str = option("mobilenet_v2", group=_M, help="registry name (see `compress models`)")
    model_kwargs: dict[str, Any] | None = option(None, parse=parse_json_object, metavar="JSON", group=_M,
                                                 help='extra builder keywords as a JSON object, e.g. '
                                                      '\'{"width_mult": 0.5}\'')
    width_mult: float | None = option(None, check=(lambda v: v > 0, "must be > 0"), group=_M,
                                      help="channel width multiplier")
    act: str | None = option(None, group=_M, help="activation name (relu, relu6, hardswish, silu, mish, ...)")
    small_input: str | None = option(None, choices=SMALL_INPUT_CHOICES, group=_M,
                                     help="stride layout for small images: on = stem and first downsampling at "
                                          "stride 1 (total stride 8), stem = only the stem (total stride 16, "
                                          "~1/4 of the compute), off = the ImageNet layout (stride 32) "
                                          f"(default: on when --image-size <= {SMALL_INPUT_MAX}, or the "
                                          "data set's preset)")
    drop_rate: float | None = option(None, check=(lambda v: 0 <= v < 1, "must be in [0, 1)"), group=_M,
                                     help="dropout before the classifier")
    drop_path: float | None = option(None, check=(lambda v: 0 <= v < 1, "must be in [0, 1)"), group=_M,
                                     help="stochastic depth rate (max over blocks)")
    num_classes: int | None = option(None, check=(lambda v: v >= 1, "must be >= 1"), group=_M,
                                     help="expected number of classes; an error if the data set disagrees")
    init: str | None = option(None, metavar="MODEL", group=_M,
                              help="start from the weights of this model artifact instead of a new network (its "
                                   "architecture replaces --model and the builder options): continue training "
                                   "a model, e.g. a few weight-averaged epochs (--swa-epochs)")
    pretrained: bool = option(False, group=_M, help="start from torchvision's ImageNet weights if they are in "
                                                    "the torch hub cache (no download); the classifier is "
                                                    "re-initialised for the data's classes")
    data: str = option("digits", group=_D, help="data spec: digits, digits-multilabel, imagefolder:PATH, "
                                               "csv:PATH, cifar10, cifar100, fashion-mnist, mnist, kmnist, "
                                               "idx:PATH (a folder of the four MNIST-format files); any of them + "
                                               ":imbalance=R keeps a fraction R of the train/val images of "
                                               "the upper half of the classes (test untouched)")
    image_size: int = option(32, check=(lambda v: 8 <= v <= 1024, "must be between 8 and 1024"), group=_D,
                             help="square input side in pixels")
    data_seed: int = option(0, group=_D, help="seed of the train/val/test split")
    data_root: str | None = option(None, group=_D, help="folder for cifar10/cifar100 and fashion-mnist/mnist/kmnist "
                                                       "(default $COMPRESS_DATA_ROOT; fashion-mnist also "
                                                       "/usr/share/datasets, see make data)")
    label_sep: str = option(";", group=_D, help="separator of several labels in a csv cell")
    train_limit: int | None = option(None, check=(lambda v: v >= 1, "must be >= 1"), group=_D,
                                     help="use a seeded subset of this many training samples")

    preset: str = option("auto", choices=PRESET_CHOICES, group=_D,
                         help="auto: the data set's own defaults where it has a preset (fashion-mnist, mnist, "
                              "kmnist; printed at the start), under any option given; none: the plain defaults")

    def __post_init__(self) -> None:
        if isinstance(self.small_input, bool):  # the Python API's True/False
            self.small_input = "on" if self.small_input else "off"
        self.preset_applied: dict[str, Any] = {}

    @classmethod
    def with_preset(cls, given: Mapping[str, Any], *, where: str = "") -> "TrainStageConfig":
        """A validated config from the options ``given``, over the data set's preset (see
        :mod:`.presets`); ``preset_applied`` holds the values the preset set."""
        from .presets import preset_for

        fields_ = {f.name: f for f in dataclasses.fields(cls)}
        choice = given.get("preset", fields_["preset"].default)
        values = preset_for(given.get("data", fields_["data"].default), choice)
        applied = {k: v for k, v in values.items() if k not in given}
        cfg = super().from_dict({**applied, **given}, where=where)
        cfg.preset_applied = applied
        return cfg

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = ""):
        return cls.with_preset(data, where=where) if isinstance(data, Mapping) else super().from_dict(data, where=where)

    @classmethod
    def from_args(cls, args):
        return cls.with_preset({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})

    def loop_config(self) -> TrainConfig:
        """The loop's part of this config."""
        from dataclasses import fields

        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    def arch_kwargs(self) -> dict[str, Any]:
        """Builder keywords: ``model_kwargs``, overridden by the explicit options; small_input auto."""
        kwargs = dict(self.model_kwargs or {})
        for name, key in (("width_mult", "width_mult"), ("act", "act_layer"), ("drop_rate", "drop_rate"),
                          ("drop_path", "drop_path_rate")):
            if getattr(self, name) is not None:
                kwargs[key] = getattr(self, name)
        if self.small_input is not None:
            kwargs["small_input"] = SMALL_INPUT_MODES[self.small_input]
        kwargs.setdefault("small_input", self.image_size <= SMALL_INPUT_MAX)
        return kwargs


@dataclass
class TrainStageResult:
    output: Path
    report_path: Path
    log_path: Path
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.report


def build_model(name: str, num_classes: int, kwargs: dict[str, Any]):
    """``create_model`` with its errors as one-line :class:`UserError`."""
    from models import UnknownModelError, create_model

    try:
        return create_model(name, num_classes=num_classes, **kwargs)
    except UnknownModelError as e:
        raise UserError(str(e)) from None
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {name} with {kwargs}: {str(e).splitlines()[0]}") from None


def load_pretrained(model, arch: str) -> dict[str, Any]:
    """Copy torchvision's ImageNet weights for ``arch`` from the local torch hub cache into
    ``model`` (all tensors but the classifier must fit). Never downloads."""
    import torch
    from urllib.parse import urlparse

    from models import get_model_entry

    tv_name = get_model_entry(arch).torchvision_name
    if not tv_name:
        raise UserError(f"--pretrained: torchvision has no weights for {arch}")
    from torchvision.models import get_model_weights

    weights = get_model_weights(tv_name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not path.is_file():
        raise UserError(f"--pretrained: torchvision weights {weights} are not on this machine (looked for {path}); "
                        f"download them once with internet access, or train without --pretrained")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"--pretrained: cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = {n for n, mod in model.named_modules() if mod is model.get_classifier()}
    skipped = [k for k in own if k not in fitting and not k.endswith("num_batches_tracked")
               and not any(k.startswith(h + ".") for h in head)]
    if skipped:
        raise UserError(f"--pretrained: {weights} does not fit this {arch} configuration ({len(skipped)} tensors "
                        f"differ, e.g. {skipped[0]}); use the default width and activation")
    model.load_state_dict(fitting, strict=False)
    return {"weights": str(weights), "path": str(path)}


def train(output: str | os.PathLike, config: TrainStageConfig | None = None, *,
          report_path: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None,
          tensorboard: str | os.PathLike | None = None, progress: bool = True) -> TrainStageResult | None:
    """Train ``config.model`` on ``config.data`` and write ``output`` (.safetensors), its report
    (default ``output``.json) and log (default ``output``.log). Under torchrun only rank 0 writes
    files and gets a result; the other ranks get ``None``."""
    from ..data import load_data
    from ..io import check_outputs, sidecar
    from .callbacks import TrainLogger
    from .distributed import distributed_context
    from .loop import fit
    from .optim import seed_everything

    cfg = (config or TrainStageConfig()).validate()
    out, report_path, log_path = check_outputs([output, report_path or sidecar(output),
                                                log_path or sidecar(output, ".log")], [cfg.init] if cfg.init else [])
    bundle = load_data(cfg.data, image_size=cfg.image_size, seed=cfg.data_seed, data_root=cfg.data_root,
                       label_sep=cfg.label_sep, train_limit=cfg.train_limit)
    if cfg.num_classes is not None and cfg.num_classes != bundle.num_classes:
        raise UserError(f"--num-classes {cfg.num_classes} does not match data set {bundle.name!r}, "
                        f"which has {bundle.num_classes} classes")
    # The seed governs the weight initialisation too (and, inside fit, data order, augmentation and
    # dropout): the same seed starts from identical weights. Every torchrun process seeds alike.
    seed_everything(cfg.seed)
    model, init_meta = _initial_model(cfg, bundle)
    pretrained = load_pretrained(model, cfg.model) if cfg.pretrained else None
    is_main = distributed_context().is_main
    logger = TrainLogger(progress=progress, log_file=log_path if is_main else None,
                         tensorboard=tensorboard if is_main else None)
    if init_meta is not None:
        logger.on_message(f"starting from {cfg.init} ({init_meta.arch} {json.dumps(model.arch_kwargs)}); its "
                          f"architecture replaces --model and the builder options")
    if cfg.preset_applied:
        from .presets import describe

        logger.on_message(f"preset for {bundle.name}: {describe(cfg.preset_applied)} (any flag overrides "
                          f"these; --preset none for the plain defaults)")
    try:
        result = fit(model, bundle, cfg.loop_config(), callback=logger)
    finally:
        logger.close()
    if not is_main:
        return None
    report = _finish(model, bundle, cfg, result, pretrained, out, log_path, init_meta)
    from ..io import write_json

    write_json(report_path, report)
    return TrainStageResult(out, report_path, log_path, report)


def _initial_model(cfg: TrainStageConfig, bundle):
    """(the network to train, the metadata of ``--init`` or None): a new registry network, or the
    artifact ``--init`` names, which must take the data's image size."""
    if not cfg.init:
        return build_model(cfg.model, bundle.num_classes, cfg.arch_kwargs()), None
    from ..artifact import load_model

    if cfg.pretrained:
        raise UserError("--init and --pretrained both give the starting weights; choose one")
    model, meta = load_model(cfg.init)
    side = int(meta.input_size[-1])
    if side != cfg.image_size:
        raise UserError(f"--init {cfg.init} takes {side}x{side} images, the data is read at {cfg.image_size}x"
                        f"{cfg.image_size}; pass --image-size {side}")
    if meta.task != bundle.task:
        raise UserError(f"--init {cfg.init} is a {meta.task} model; data set {bundle.name!r} is {bundle.task}")
    return model, meta


def _finish(model, bundle, cfg: TrainStageConfig, result, pretrained, out: Path, log_path: Path,
            init_meta=None) -> dict[str, Any]:
    """Test metrics, the artifact with its history entry, and the report dict."""
    from models import model_cost

    from ..artifact import save_model
    from ..evaluate import evaluate, primary_metric, scalar_metrics
    from ..meta import ModelMeta

    test = evaluate(model, bundle.test, bundle.task, cfg.eval_batch_size, labels=bundle.labels,
                    threshold=cfg.threshold)
    test_scalars = scalar_metrics(test)
    key = primary_metric(bundle.task)
    cost = model_cost(model, cfg.image_size)
    data_facts = {"spec": cfg.data, "image_size": cfg.image_size, "data_seed": cfg.data_seed,
                  "train_limit": cfg.train_limit, "interpolation": bundle.interpolation, "label_sep": cfg.label_sep,
                  "sizes": bundle.summary()["sizes"]}
    arch = model.arch
    arch_kwargs = dict(model.arch_kwargs) if init_meta is not None else cfg.arch_kwargs()
    params = {"config": cfg.loop_config().to_dict(), "model": arch, "model_kwargs": arch_kwargs,
              "data": data_facts, "pretrained": pretrained, "init": cfg.init, "world_size": result.world_size,
              "preset": cfg.preset_applied}
    if init_meta is not None:  # the artifact's metadata and history go on, with this run added
        meta = init_meta
    else:
        meta = ModelMeta.for_model(model, task=bundle.task, labels=bundle.labels, input_size=list(bundle.input_size),
                                   mean=list(bundle.mean), std=list(bundle.std), interpolation=bundle.interpolation)
    meta.add_history("train", params, {key: test_scalars[key], **{f"test_{k}": v for k, v in test_scalars.items()},
                                       **{f"val_{k}": v for k, v in result.best_metrics.items()}},
                     seconds=round(result.seconds, 1), epochs_run=result.epochs_run, best_epoch=result.best_epoch)
    save_model(model, out, meta)
    return {"command": "train", "output": str(out), "log": str(log_path), "config": params,
            "data": bundle.summary(), "model": {"arch": arch, "kwargs": arch_kwargs, "params": cost.params,
                                                "macs": cost.macs, "input_size": list(bundle.input_size)},
            "result": {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                       "stopped_early": result.stopped_early, "seconds": round(result.seconds, 2),
                       "val": result.best_metrics, "test": test, "test_scalars": test_scalars},
            "history": result.history, "machine": _machine_now()}


def _machine_now() -> dict[str, Any]:
    """The machine and its load average as the run ends (1, 5, 15 minutes: the 15-minute figure
    covers most of a short run), so a time quoted from this report comes with its load."""
    from ..sysinfo import machine_info

    return machine_info()
