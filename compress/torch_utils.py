"""Small PyTorch helpers every stage shares, written once: a model's train/eval mode and
PyTorch's process-wide thread count, each set for a block and restored afterwards; the head
width kept in step with a pruned classifier."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Run the block with ``model`` in train (``training=True``) or eval mode, then give it back
    the mode it had (also on error)."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def restore_torch_threads(initial: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``set_threads(n)``; on exit PyTorch's intra-op thread count is what it was before.
    ``initial`` is set on entry when given."""
    before = torch.get_num_threads()

    def set_threads(n: int) -> None:
        torch.set_num_threads(int(n))

    if initial is not None:
        set_threads(initial)
    try:
        yield set_threads
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` PyTorch intra-op threads, then restore the previous setting."""
    with restore_torch_threads(n):
        yield


def sync_head(model: nn.Module) -> None:
    """Keep ``model.num_features`` equal to the classifier's input width (after pruning, or when
    rebuilding a pruned network)."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and hasattr(model, "num_features"):
        model.num_features = int(get_classifier().in_features)
