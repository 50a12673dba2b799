"""Training defaults per data set ("presets"), applied under whatever the user sets.

``compress train --model mobilenet_v2 --data fashion-mnist -o base.safetensors`` with no other
flag trains with the data set's preset: the options below replace the plain defaults of
:class:`~compress.training.api.TrainStageConfig`, and any option the user gives (flag, YAML key or
keyword) wins over the preset. ``--preset none`` keeps the plain defaults. The values were
measured here (README, "Fashion-MNIST"); the digits defaults are the plain ones. (Not to be
confused with the YAML pipeline recipes of ``recipes/``: a preset is one stage's defaults for
one data set, and a recipe's train stage gets it too, through ``TrainStageConfig.from_dict``.)
"""
from __future__ import annotations

from typing import Any, Mapping

PRESET_CHOICES = ("auto", "none")

# Grey 28x28 product photos, used at their own size (32px costs more time for nothing new).
# Total stride 16 ("stem"): a 2x2 final map, about a quarter of the compute of the full
# small-input layout. A 20-minute budget is 6 epochs here, far from overfitting: on 12,800
# training images x 3 epochs, no augmentation reached 87.4% val top-1 against 84.9% with flips
# and 2px shifts, and batch 64 at lr 0.05 88.5% (lr 0.2 at batch 128: 76.8%); 10 epochs with
# flips and shifts did not beat these 6 (README). Channels-last (the CPU default) is what makes this
# fit in 20 minutes; bfloat16 autocast was slower for MobileNetV2 (scripts/train_speed.py).
# The A/B: scripts/preset_ab.py 'old={"batch_size": 128, "lr": 0.1, "hflip": true, "crop_padding": 2}'
#   'noaug={"batch_size": 128, "lr": 0.1}' 'lr0.2={"batch_size": 128, "lr": 0.2}' 'b64={}'
_FASHION = {"image_size": 28, "small_input": "stem", "epochs": 6, "batch_size": 64, "lr": 0.05,
            "warmup_epochs": 0.5, "weight_decay": 5e-5, "hflip": False, "crop_padding": 0,
            "label_smoothing": 0.1, "eval_batch_size": 500}
# Digits and characters: the same, fewer epochs (an easier task).
_CHARACTERS = {**_FASHION, "epochs": 4}

PRESETS: dict[str, dict[str, Any]] = {"fashion-mnist": _FASHION, "mnist": _CHARACTERS, "kmnist": _CHARACTERS}


def preset_for(data: str, choice: str = "auto") -> dict[str, Any]:
    """The preset's option values for the data spec ``data`` (its options, such as
    ``:imbalance=R``, aside) under ``choice`` (``{}``: none)."""
    if choice == "none" or not isinstance(data, str):
        return {}
    from ..data.spec import split_spec_options

    return dict(PRESETS.get(split_spec_options(data.strip())[0].lower(), {}))


def describe(values: Mapping[str, Any]) -> str:
    """``--epochs 6 --batch-size 128 --hflip ...``: the preset as the flags that would set it."""
    parts = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)
