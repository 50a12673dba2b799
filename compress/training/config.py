"""Every knob of the training loop, in one place (torch-free): name, default, allowed values, help
and validation. ``compress train`` derives its flags from it; fine-tuning stages (prune, and later
distill and quantize) build one for the loop with their own defaults."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import StageConfig, option
from ..errors import UserError
from .schedules import SCHEDULES

OPTIMIZERS = ("sgd", "adam", "adamw", "adamax", "nadam")
AMP_MODES = ("auto", "off", "bf16", "fp16")
LOSSES = ("auto", "ce", "focal", "bce")
# Teacher logits cached once per run (distillation): auto = when nothing augments the inputs.
TEACHER_CACHE = ("auto", "on", "off")
# Class imbalance (compress.training.balance): how the loop evens out rare and common classes.
BALANCE_MODES = ("none", "oversample", "undersample", "class-weights")
BALANCE_HELP = ("class imbalance of the training split: oversample = draw samples with replacement weighted "
                "1/class count (same epoch length); undersample = each epoch draws as many samples of every "
                "class as the rarest has (shorter epochs); class-weights = the label loss weighted by inverse "
                "class frequency, N/(K*count) (mean weight 1 over the samples; multilabel: BCE pos_weight = negatives/positives per label); "
                "multilabel data take only none or class-weights")


def balance_option(group: str):
    """The ``--balance`` field, shared by the training loop and every fine-tuning stage's config."""
    return option("none", choices=BALANCE_MODES, parse=str.lower, group=group, help=BALANCE_HELP)


_T = "training"
_at_least_1 = (lambda v: v >= 1, "must be >= 1")
_at_least_0 = (lambda v: v >= 0, "must be >= 0")
_fraction = (lambda v: 0 <= v <= 1, "must be in [0, 1]")


@dataclass(kw_only=True)
class TrainConfig(StageConfig):
    """The defaults train MobileNetV2 on digits to >= 97% test accuracy in a few CPU minutes.
    Rates and probabilities are fractions; sizes are pixels."""

    epochs: int = option(10, check=_at_least_1, group=_T, help="training epochs")
    batch_size: int = option(32, check=_at_least_1, group=_T,
                             help="global batch size (split across processes under torchrun)")
    lr: float = option(0.03, check=(lambda v: v > 0, "must be > 0"), group=_T, label="learning rate",
                       help="peak learning rate")
    optimizer: str = option("sgd", choices=OPTIMIZERS, group=_T, help="sgd uses Nesterov momentum")
    momentum: float = option(0.9, check=(lambda v: 0 <= v < 1, "must be in [0, 1)"), group=_T,
                             help="SGD momentum / Adam beta1")
    weight_decay: float = option(5e-4, check=_at_least_0, group=_T,
                                 help="L2 penalty (not on biases and normalisation weights)")
    schedule: str = option("cosine", choices=SCHEDULES, group=_T, help="learning-rate schedule after warm-up")
    warmup_epochs: float = option(1.0, check=_at_least_0, group=_T, help="linear warm-up length in epochs")
    min_lr_ratio: float = option(0.0, check=_fraction, group=_T, help="cosine/htd floor as a fraction of --lr")
    step_epochs: int = option(10, check=_at_least_1, group=_T, help="step schedule: decay every this many epochs")
    step_gamma: float = option(0.1, check=(lambda v: v > 0, "must be > 0"), group=_T,
                               help="step schedule: decay factor")
    htd_lower: float = option(-6.0, group=_T, help="HTD tanh range, lower end (Hsueh et al. 2019)")
    htd_upper: float = option(3.0, group=_T, help="HTD tanh range, upper end")
    loss: str = option("auto", choices=LOSSES, group=_T, help="auto: ce for multiclass, bce for multilabel")
    label_smoothing: float = option(0.1, check=(lambda v: 0 <= v < 1, "must be in [0, 1)"), group=_T,
                                    help="label smoothing of the cross-entropy")
    focal_gamma: float = option(2.0, check=_at_least_0, group=_T, help="focal loss gamma")
    mixup: float = option(0.0, check=_at_least_0, group=_T, help="mixup Beta alpha, 0 = off")
    cutmix: float = option(0.0, check=_at_least_0, group=_T, help="cutmix Beta alpha, 0 = off")
    mix_prob: float = option(1.0, check=_fraction, group=_T, help="chance a batch is mixed when mixup/cutmix is on")
    cutout: int = option(0, check=_at_least_0, group=_T, help="cutout square side in pixels, 0 = off")
    crop_padding: int = option(2, check=_at_least_0, group=_T, help="random shift by up to this many pixels")
    hflip: bool = option(False, group=_T, help="random horizontal flips (off by default: they change digits)")
    grad_clip: float = option(0.0, check=_at_least_0, group=_T, help="max global gradient norm, 0 = off")
    patience: int = option(0, check=_at_least_0, group=_T, help="early stopping patience in epochs, 0 = off")
    balance: str = balance_option(_T)
    seed: int = option(0, group=_T, help="seed of weight initialisation, data order, augmentation and dropout")
    amp: str = option("auto", choices=AMP_MODES, group=_T,
                      help="mixed precision: auto = fp16 on CUDA, off on CPU")
    channels_last: bool | None = option(None, group=_T,
                                        help="train in the channels-last memory layout (default: on for CPU, "
                                             "where oneDNN's convolutions run it about 2x faster here; "
                                             "the saved weights are the same layout-free tensors)")
    device: str = option("auto", group=_T, help="auto, cpu, cuda, cuda:N")
    num_workers: int = option(0, check=_at_least_0, flag="--workers", group=_T,
                              help="data loader worker processes")
    eval_batch_size: int = option(256, check=_at_least_1, group=_T, help="batch size of validation passes")
    threshold: float = option(0.5, check=(lambda v: 0 < v < 1, "must be in (0, 1)"), group=_T,
                              help="acceptance threshold for FAR/FRR and multilabel predictions")
    max_steps_per_epoch: int = option(0, check=_at_least_0, group=_T,
                                      help="cap on optimizer steps per epoch, 0 = the whole training set")
    bn_recalibrate: int = option(512, check=_at_least_0, metavar="N", group=_T,
                                 help="re-estimate BatchNorm statistics on N training images before each "
                                      "validation (precise BN), 0 = off")
    swa_epochs: int = option(0, check=_at_least_0, metavar="N", group=_T,
                             help="stochastic weight averaging (Izmailov et al. 2018): the schedule runs over "
                                  "the first epochs - N epochs, then N epochs at the constant --swa-lr, whose "
                                  "end-of-epoch weights are averaged; each epoch validates the average (its "
                                  "BatchNorm statistics re-estimated), which is kept when it is the best, 0 = off")
    swa_lr: float | None = option(None, check=(lambda v: v > 0, "must be > 0"), group=_T,
                                  help="learning rate of the averaged epochs (default: --lr / 20)")

    def check(self) -> None:
        if self.swa_epochs > self.epochs:
            raise UserError(f"--swa-epochs {self.swa_epochs} is more than --epochs {self.epochs}")
        if self.swa_epochs and not self.bn_recalibrate:
            raise UserError("--swa-epochs needs --bn-recalibrate > 0: the averaged weights' BatchNorm statistics "
                            "must be re-estimated")

    @property
    def swa_rate(self) -> float:
        """The constant learning rate of the averaged epochs."""
        return self.swa_lr if self.swa_lr is not None else self.lr / 20
