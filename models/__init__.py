"""The model zoo: lightweight CPU classifiers written from their papers.

    from models import create_model, list_models
    net = create_model("mobilenet_v2", num_classes=10, small_input=True)
"""
from ._layers import ClassifierModel, activation_names
from ._profile import ModelCost, count_macs, count_params, model_cost
from ._registry import (UnknownModelError, create_model, get_model_entry, list_models, register_model, remove_blocks,
                        residual_blocks)

# Importing the family modules registers their builders.
from . import mobilenetv1, mobilenetv2, mobilenetv3, efficientnet, pplcnet, resnet  # noqa: E402,F401

__all__ = [
    "ClassifierModel", "ModelCost", "UnknownModelError", "activation_names", "count_macs", "count_params",
    "create_model", "get_model_entry", "list_models", "model_cost", "register_model", "remove_blocks", "residual_blocks",
]
