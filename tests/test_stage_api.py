"""Every stage is a library call first: Config → function → Result, no argparse. Structured and
unstructured pruning and the sensitivity analysis through their stage functions; --global and
--distill do what they claim; the Configs validate the same way from Python, flags and dicts."""
import copy
import json

import pytest
import torch

import models
from compress.artifact import ModelMeta, load_model, read_meta, save_model
from compress.errors import UserError
from compress.io import sidecar
from compress.prune.api import analyze_artifact, prune_artifact
from compress.prune.config import PruneConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def base(tmp_path):
    """A tiny MobileNetV2 artifact for 32x32 digits, with non-trivial weights and BN statistics."""
    torch.manual_seed(0)
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    meta = ModelMeta.for_model(model, input_size=[3, 32, 32])
    meta.add_history("train", {"data": {"spec": "digits", "data_seed": 0}}, {"top1": 0.1})
    return save_model(model, tmp_path / "base.safetensors", meta)


def _channels(result) -> dict[str, tuple[int, int]]:
    return {k: tuple(v) for k, v in result.extra["channels"].items()}


def test_structured_pruning_as_a_library_call(base, tmp_path):
    out = tmp_path / "p.safetensors"
    result = prune_artifact(base, out, PruneConfig(ratio=0.5, bench=False))
    assert result.output == out and result.report_path == sidecar(out)
    assert result.after["params"] < 0.5 * result.before["params"] and result.after["macs"] < result.before["macs"]
    assert result.after["top1"] is not None  # the recorded data set measured both
    model, meta = load_model(out)
    assert models.count_params(model) == result.after["params"]
    entry = meta.history[-1]
    assert entry["stage"] == "prune" and entry["params"]["mode"] == "structured" and entry["params"]["ratio"] == 0.5
    assert entry["params"]["data"]["spec"] == "digits" and meta.training_data()["spec"] == "digits"
    assert json.loads(result.report_path.read_text()) == json.loads(json.dumps(result.to_dict()))
    for name, (before, after) in _channels(result).items():  # per layer: half, rounded to 8, never emptied
        assert after == max(8, int(before * 0.5 / 8 + 0.5) * 8) or after == before, name


def test_unstructured_pruning_as_a_library_call(base, tmp_path):
    result = prune_artifact(base, tmp_path / "s.safetensors", PruneConfig(sparsity=0.6, bench=False))
    layers = result.extra["sparsity"]["layers"]
    assert all(abs(v - 0.6) < 0.01 for v in layers.values())  # per layer without --global
    model, _ = load_model(tmp_path / "s.safetensors")
    from compress.prune.unstructured import sparsity_report

    assert sparsity_report(model)["global"] == pytest.approx(result.extra["sparsity"]["global"])
    assert result.after["nonzero_params"] < 0.6 * result.before["nonzero_params"]


def test_global_ranks_across_layers(base, tmp_path):
    """--global: one ranking over all layers (ratios differ per layer, the total is right);
    without it every layer loses the same fraction."""
    glob = prune_artifact(base, tmp_path / "g.safetensors", PruneConfig(sparsity=0.6, global_pruning=True,
                                                                        bench=False))
    per_layer = glob.extra["sparsity"]["layers"]
    assert glob.extra["sparsity"]["global"] == pytest.approx(0.6, abs=1e-3)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.2
    structured = prune_artifact(base, tmp_path / "gs.safetensors",
                                PruneConfig(ratio=0.5, global_pruning=True, method="lamp", bench=False))
    fractions = {round(after / before, 2) for before, after in _channels(structured).values() if before >= 32}
    assert len(fractions) > 1  # the layers were not all cut by the same ratio


def test_distillation_teacher_is_the_unpruned_model(base, tmp_path, monkeypatch):
    import compress.prune.recovery as recovery

    seen = []
    monkeypatch.setattr(recovery, "finetune", lambda model, bundle, cfg, *, criterion=None, after_step=None,
                        progress=True, label="": seen.append((criterion, copy.deepcopy(model))) or {})
    prune_artifact(base, tmp_path / "d.safetensors", PruneConfig(ratio=0.5, finetune=1, kd_loss="kd",
                                                                 kd_temperature=2.0, kd_alpha=0.5, bench=False))
    (criterion, student), = seen
    original, _ = load_model(base)
    teacher = criterion.teacher
    assert teacher is not student and (criterion.temperature, criterion.alpha) == (2.0, 0.5)
    for (k, v), (k0, v0) in zip(teacher.state_dict().items(), original.state_dict().items()):
        assert k == k0 and torch.equal(v, v0), k  # the unpruned input, unchanged
    assert models.count_params(student) < models.count_params(teacher)
    entry = read_meta(tmp_path / "d.safetensors")[0].history[-1]
    assert entry["params"]["criterion"]["name"] == "distillation"
    seen.clear()
    prune_artifact(base, tmp_path / "nd.safetensors", PruneConfig(ratio=0.5, finetune=1, bench=False, distill=False))
    assert seen[0][0] is None  # plain fine-tuning with --no-distill


def test_sensitivity_analysis_as_a_library_call(base, tmp_path):
    cfg = PruneConfig(analyze=True, ratios=[0.5], analyze_samples=32)
    before = base.read_bytes()
    result = analyze_artifact(base, tmp_path / "sens.json", cfg)
    assert base.read_bytes() == before
    assert json.loads(result.output.read_text()) == result.ratios
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"
    assert {r.layer for r in result.rows} == set(result.ratios) and len(result.rows) == len(result.ratios)
    assert json.loads(result.report_path.read_text())["samples"] == 32


@pytest.mark.parametrize("bad, message", [
    (dict(ratio=1.0), "--ratio must satisfy"),
    (dict(ratio=0.5, method="magic"), "unknown --method"),
    (dict(ratio=0.5, sparsity=0.5), "cannot be combined"),
    (dict(), "nothing to do"),
    (dict(ratio=0.5, kd_loss="hinton"), "unknown --kd-loss"),
    (dict(ratio="half"), "--ratio must be a number"),
    (dict(ratio=0.5, steps=True), "--steps must be an integer"),
    (dict(analyze=True, ratios=[0.5, 1.5]), "--ratios must all satisfy"),
])
def test_config_validation_names_the_option(bad, message):
    with pytest.raises(UserError, match=message):
        PruneConfig(**bad).validate()


def test_config_from_dict_is_what_a_recipe_gets():
    cfg = PruneConfig.from_dict({"ratio": 0.5, "target_macs": None, "ignore": ["features.1"], "lr": 1})
    assert cfg.ratio == 0.5 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg
    assert PruneConfig.from_dict({"target_macs": "20M"}).target_macs == 2e7
    with pytest.raises(UserError, match="unknown option.*ratoi"):
        PruneConfig.from_dict({"ratoi": 0.5}, where="recipe.yaml: prune")


@pytest.mark.parametrize("command, config", [("prune", "compress.prune.config:PruneConfig"),
                                             ("train", "compress.training.api:TrainStageConfig"),
                                             ("export", "compress.export:ExportConfig"),
                                             ("eval", "compress.evaluate:EvalConfig"),
                                             ("bench", "compress.bench.api:BenchConfig")])
def test_every_config_option_is_a_flag(command, config, capsys):
    """The CLI derives its flags from the stage's Config: none is missing from --help."""
    import dataclasses
    import importlib

    from compress.cli import main
    from compress.config import flag_name

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        assert flag_name(f) in text, f.name
