"""Data spec options: ``NAME:key=value[,key=value]`` (torch-free, so config code may parse specs).

The last colon-separated part of a spec is read as options when every comma-separated item in it
is ``key=value``: ``fashion-mnist:imbalance=0.05``, ``imagefolder:/data/pets:imbalance=0.1``. The
known keys are :data:`SPEC_OPTIONS`; what ``imbalance`` does: :mod:`.imbalance`.
"""
from __future__ import annotations

import re

from ..errors import UserError

SPEC_OPTIONS = {"imbalance": "keep this fraction (0 < R <= 1) of the training and validation images of the "
                             "upper half of the classes (indices K//2..K-1); the test split is untouched",
                "classes": "keep only these classes in every split, relabelled 0..k-1 in this order: 0-4, "
                           "0+2+4, 5-9+0 (see compress/data/classes.py)"}
_OPTION_ITEM = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*=[^,=]*")


def split_spec_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"fashion-mnist:imbalance=0.05"`` → ``("fashion-mnist", {"imbalance": "0.05"})``; a spec
    without options comes back unchanged with ``{}``. Unknown keys are a :class:`UserError`."""
    base, sep, tail = spec.rpartition(":")
    if not sep or not tail or not all(_OPTION_ITEM.fullmatch(item.strip()) for item in tail.split(",")):
        return spec, {}
    options: dict[str, str] = {}
    for item in tail.split(","):
        key, _, value = item.strip().partition("=")
        key = key.lower().replace("-", "_")
        if key not in SPEC_OPTIONS:
            raise UserError(f"unknown data spec option {key!r} in {spec!r}; known: "
                            f"{', '.join(f'{k} ({h})' for k, h in SPEC_OPTIONS.items())}")
        if key in options:
            raise UserError(f"data spec option {key!r} given twice in {spec!r}")
        options[key] = value.strip()
    if not base:
        raise UserError(f"data spec {spec!r} names no data set before its options")
    return base, options


def parse_imbalance(text: str) -> float:
    """The ``imbalance=`` value: a number in (0, 1]."""
    try:
        ratio = float(text)
    except ValueError:
        raise UserError(f"data spec option imbalance={text!r} is not a number; give a fraction in (0, 1], "
                        f"e.g. imbalance=0.05") from None
    if not 0 < ratio <= 1:
        raise UserError(f"data spec option imbalance must be in (0, 1], got {text}")
    return ratio
