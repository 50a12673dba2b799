"""The three stride layouts for small images (``small_input`` False / "stem" / True) in every
architecture, and the per-data-set training presets that pick one."""
from __future__ import annotations

import pytest
import torch

from compress.errors import UserError
from compress.training.api import TrainStageConfig
from compress.training.presets import PRESETS, describe
from models import create_model, list_models
from models._profile import model_cost


@pytest.mark.parametrize("name", list_models())
def test_each_mode_sets_the_final_map_at_32px(name):
    """off: total stride 32 (1x1 at 32px), stem: 16 (2x2), on: 8 (4x4); the MACs grow in that order."""
    x = torch.randn(1, 3, 32, 32)
    sides, macs = [], []
    for mode in (False, "stem", True):
        model = create_model(name, num_classes=3, small_input=mode).eval()
        with torch.no_grad():
            sides.append(tuple(model.forward_features(x).shape[-2:]))
        macs.append(model_cost(model, 32).macs)
    assert sides == [(1, 1), (2, 2), (4, 4)]
    assert macs[0] < macs[1] < macs[2]


def test_stem_mode_is_recorded_and_rebuilds():
    model = create_model("resnet18", num_classes=3, small_input="stem")
    assert model.arch_kwargs == {"small_input": "stem"}
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("bad", ["yes", 2, "Stem"])
def test_unknown_mode_is_an_error(bad):
    with pytest.raises(ValueError, match="small_input"):
        create_model("mobilenet_v2", num_classes=3, small_input=bad)


def test_preset_fills_only_what_the_user_did_not_set():
    preset = PRESETS["fashion-mnist"]
    cfg = TrainStageConfig.with_preset({"data": "fashion-mnist", "epochs": 1, "hflip": False})
    assert cfg.epochs == 1 and cfg.hflip is False                      # given wins
    assert cfg.lr == preset["lr"] and cfg.batch_size == preset["batch_size"]
    assert cfg.arch_kwargs()["small_input"] == "stem"
    assert "epochs" not in cfg.preset_applied and cfg.preset_applied["lr"] == preset["lr"]


def test_no_preset_for_digits_or_when_turned_off():
    plain = TrainStageConfig().validate()
    for given in ({"data": "digits"}, {"data": "fashion-mnist", "preset": "none"}):
        cfg = TrainStageConfig.with_preset(given)
        assert cfg.preset_applied == {}
        assert (cfg.epochs, cfg.lr, cfg.batch_size) == (plain.epochs, plain.lr, plain.batch_size)
    assert TrainStageConfig.with_preset({"data": "digits"}).arch_kwargs()["small_input"] is True


def test_preset_through_the_command_line_and_yaml_keys():
    import argparse

    p = argparse.ArgumentParser()
    TrainStageConfig.add_arguments(p)
    cfg = TrainStageConfig.from_args(p.parse_args(["--data", "fashion-mnist", "--lr", "0.5", "--small-input", "on"]))
    assert cfg.lr == 0.5 and cfg.arch_kwargs()["small_input"] is True
    assert cfg.epochs == PRESETS["fashion-mnist"]["epochs"]
    cfg = TrainStageConfig.from_dict({"data": "fashion-mnist", "batch_size": 7})
    assert cfg.batch_size == 7 and cfg.epochs == PRESETS["fashion-mnist"]["epochs"]
    with pytest.raises(UserError, match="small-input"):
        TrainStageConfig.from_dict({"data": "digits", "small_input": "half"})


def test_describe_spells_the_flags():
    assert describe({"epochs": 6, "hflip": True, "small_input": "stem", "amp": "bf16"}) == \
        "--epochs 6 --hflip --small-input stem --amp bf16"
    assert describe({"hflip": False}) == "--no-hflip"


def test_finetuning_takes_the_training_runs_augmentation():
    """A model trained with flips (the fashion-mnist preset) is fine-tuned with flips after pruning;
    one trained without them (digits) is not. Later stages win over earlier ones."""
    from compress.meta import ModelMeta
    from compress.prune.api import loop_config
    from compress.prune.config import PruneConfig

    meta = ModelMeta(arch="mobilenet_v2", num_classes=10)
    cfg = PruneConfig(ratio=0.5).validate()
    assert meta.training_augmentation() == {}
    assert loop_config(cfg, 1, meta.training_augmentation()).hflip is False
    meta.add_history("train", {"config": {"hflip": False, "crop_padding": 2, "lr": 0.1}})
    meta.add_history("prune", {"config": {"hflip": False}})
    meta.add_history("train", {"config": {"hflip": True, "crop_padding": 4, "cutout": 8, "label_smoothing": 0.0,
                                          "lr": 0.1}})
    tuned = loop_config(cfg, 3, meta.training_augmentation())
    assert (tuned.hflip, tuned.crop_padding, tuned.cutout, tuned.label_smoothing) == (True, 4, 8, 0.0)
    assert tuned.lr == cfg.lr and tuned.epochs == 3  # the fine-tuning's own settings stay


def test_prune_augment_off_fine_tunes_on_plain_images():
    """``compress prune --augment off``: none of the training run's flips, shifts or cutout, its label
    smoothing kept (a loss, not an augmentation); the flag parses from the command line and refuses
    other values."""
    import argparse

    from compress.meta import ModelMeta
    from compress.prune.api import loop_config
    from compress.prune.config import PruneConfig

    meta = ModelMeta(arch="mobilenet_v2", num_classes=10)
    meta.add_history("train", {"config": {"hflip": True, "crop_padding": 2, "cutout": 8, "label_smoothing": 0.1}})
    cfg = PruneConfig(ratio=0.5, augment="off").validate()
    plain = loop_config(cfg, 3, meta.training_augmentation())
    assert (plain.hflip, plain.crop_padding, plain.cutout, plain.label_smoothing) == (False, 0, 0, 0.1)
    assert PruneConfig(ratio=0.5).validate().augment == "inherit"
    parser = argparse.ArgumentParser()
    PruneConfig.add_arguments(parser)
    assert PruneConfig.from_args(parser.parse_args(["--ratio", "0.5", "--augment", "off"])).augment == "off"
    with pytest.raises(UserError, match="augment"):
        PruneConfig.from_args(parser.parse_args(["--ratio", "0.5", "--augment", "none"])).validate()
