"""The data a model artifact belongs to: the data set its history names (or the one given),
preprocessed exactly as the model expects (input size, mean/std, interpolation from the
artifact), with its split seed, and checked against the model's classes, task and labels."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError
from .loading import load_data

if TYPE_CHECKING:  # pragma: no cover
    from ..meta import ModelMeta
    from .datasets import DataBundle


def load_data_for_model(meta: "ModelMeta", spec: str | None = None, *, seed: int | None = None,
                        data_root: str | None = None, label_sep: str | None = None,
                        train_limit: int | None = None, image_size: int | None = None,
                        source: str = "the model", why: str = "", check: bool = True) -> "DataBundle":
    """Load ``spec`` (default: the data set recorded in ``meta.history``) for ``meta``'s model.

    ``seed`` defaults to the recorded split seed, ``label_sep`` to the recorded separator,
    ``image_size`` to the model's input size. Raises :class:`UserError` when no data set is
    given or recorded (``why`` says what needed it) or when the data's classes, task or labels
    differ from the model's."""
    trained_on = meta.training_data()
    spec = spec or trained_on.get("spec")
    if not spec:
        raise UserError(f"{source} records no training data set; give --data{' (' + why + ')' if why else ''}")
    bundle = load_data(spec, image_size=int(image_size or meta.input_size[-1]),
                       seed=int(trained_on.get("data_seed", 0)) if seed is None else seed,
                       mean=meta.mean, std=meta.std, interpolation=trained_on.get("interpolation"),
                       data_root=data_root, label_sep=label_sep or trained_on.get("label_sep", ";"),
                       train_limit=train_limit)
    if not check:
        return bundle
    if bundle.num_classes != meta.num_classes or bundle.task != meta.task:
        raise UserError(f"{source} is a {meta.task} model with {meta.num_classes} classes but data set "
                        f"{bundle.name!r} is {bundle.task} with {bundle.num_classes}")
    if list(bundle.labels) != list(meta.labels):
        raise UserError(f"{source} labels {meta.labels[:5]}... differ from the data's {bundle.labels[:5]}...")
    return bundle
