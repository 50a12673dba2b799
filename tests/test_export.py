"""ONNX export: every registered architecture matches PyTorch, metadata travels, BN is folded."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
from compress.artifact import ModelMeta, load_model, save_model
from compress.cli import main
from compress.export import ExportVerificationError, export_onnx
from compress.runtime import ort_session
from compress.onnx_meta import ONNX_META_FORMAT, read_onnx_meta

onnx = pytest.importorskip("onnx")

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Every architecture runs in the default suite (about 25 s in all): the export contract is
# "every registered model", so CI checks every registered model.
ARCH_PARAMS = models.list_models()


def randomize(model: nn.Module, seed: int = 0, logit_scale: float = 10.0) -> nn.Module:
    """Non-trivial BN statistics and classifier weights, so BN folding matters and logits are at
    a trained classifier's scale (largest |logit| = ``logit_scale``) — a freshly initialised
    network has identity BNs and near-zero logits, which any export would match."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 1.0 / m.in_features ** 0.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
        model.eval()
        side = 32
        peak = model(torch.randn(4, 3, side, side, generator=g)).abs().max()
        head = model.get_classifier()
        head.weight.mul_(logit_scale / peak)
        head.bias.mul_(logit_scale / peak)
    return model


def tiny(name: str, **kw) -> tuple[nn.Module, ModelMeta]:
    model = randomize(models.create_model(name, num_classes=10, small_input=True, **kw))
    meta = ModelMeta.for_model(model, input_size=[3, 32, 32], labels=[f"class{i}" for i in range(10)])
    return model, meta


def ort_logits(path, x: torch.Tensor) -> np.ndarray:
    sess = ort_session(path, threads=1)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def op_types(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("name", ARCH_PARAMS)
def test_every_architecture_exports_and_matches_pytorch(name, tmp_path):
    model, meta = tiny(name)
    out = tmp_path / f"{name}.onnx"
    report = export_onnx(model, meta, out)
    assert report.max_abs_diff is not None and report.max_abs_diff <= TOL
    # Independent check at two batch sizes through the dynamic batch axis.
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(ref).max() > 1.0, "logits too small for the comparison to mean anything"
    for batch in (1, 3):
        got = ort_logits(out, x[:batch])
        assert got.shape == (batch, 10)
        assert np.abs(got - ref[:batch]).max() <= TOL
    ops = op_types(out)
    assert "BatchNormalization" not in ops and report.batchnorm_nodes == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_metadata_round_trip_and_model_facts(tmp_path):
    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    meta.task = "multilabel"
    meta.mean, meta.std = [0.1, 0.2, 0.3], [0.9, 0.8, 0.7]
    meta.add_history("train", {"epochs": 3, "data": "digits"}, {"top1": 0.5})
    out = tmp_path / "m.onnx"
    report = export_onnx(model, meta, out, opset=15, input_size=40)
    assert report.opset == 15 and report.input_size == (3, 40, 40)
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 15
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["format"]) == ONNX_META_FORMAT
    assert json.loads(props["labels"]) == meta.labels  # JSON-encoded, readable without this package
    back = read_onnx_meta(out)
    assert back == meta
    # batch, height and width are symbolic; channels fixed
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[2].dim_param and dims[3].dim_param and dims[1].dim_value == 3


def test_dynamic_and_static_spatial_axes(tmp_path):
    model, meta = tiny("mobilenet_v3_small", width_mult=0.5)
    export_onnx(model, meta, tmp_path / "dyn.onnx")
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(ort_logits(tmp_path / "dyn.onnx", x) - ref).max() <= TOL  # trained at 32, run at 64x48
    report = export_onnx(model, meta, tmp_path / "static.onnx", dynamic_spatial=False)
    assert not report.dynamic_spatial
    dims = onnx.load(str(tmp_path / "static.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]


def test_read_onnx_meta_warns_for_foreign_model(tmp_path):
    path = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.warns(UserWarning, match="no compress metadata"):
        assert read_onnx_meta(path) is None


def test_pruned_artifact_exports(tmp_path):
    tp = pytest.importorskip("torch_pruning")
    model, meta = tiny("mobilenet_v2", width_mult=0.5)
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 32, 32),
                                       importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.3, ignored_layers=[model.get_classifier()])
    pruner.step()
    src = tmp_path / "pruned.safetensors"
    save_model(model, src, meta)
    loaded, meta2 = load_model(src)  # the odd channel counts come back from the stored shapes
    widths = {m.out_channels for m in loaded.modules() if isinstance(m, nn.Conv2d)}
    assert any(w % 8 for w in widths), "pruning should leave channel counts that are not multiples of 8"
    report = export_onnx(loaded, meta2, tmp_path / "pruned.onnx")
    assert report.max_abs_diff <= TOL
    assert "BatchNormalization" not in op_types(tmp_path / "pruned.onnx")


def test_simplified_export_matches(tmp_path):
    pytest.importorskip("onnxslim")
    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    plain = export_onnx(model, meta, tmp_path / "plain.onnx")
    slim = export_onnx(model, meta, tmp_path / "slim.onnx", simplify=True)
    assert slim.simplified and slim.max_abs_diff <= TOL
    assert slim.nodes <= plain.nodes
    assert read_onnx_meta(tmp_path / "slim.onnx") == meta


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    import compress.export as E

    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    monkeypatch.setattr(E, "_max_abs_diff", lambda *a: 0.5)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportVerificationError, match="differs from PyTorch"):
        export_onnx(model, meta, out)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary left behind


def test_export_restores_training_mode(tmp_path):
    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    model.train()
    export_onnx(model, meta, tmp_path / "m.onnx")
    assert model.training


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    path = tmp_path_factory.mktemp("art") / "small.safetensors"
    save_model(model, path, meta)
    return path


def test_cli_export_with_real_images(artifact, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main(["export", str(artifact), "-o", str(out), "--data", "digits"]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "digits test split" in printed
    side = json.loads((tmp_path / "small.onnx.json").read_text())
    assert side["max_abs_diff"] <= TOL and side["verified_on"].startswith("8 images")
    assert side["batchnorm_nodes"] == 0 and side["opset"] == 17
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx", "small.onnx.json"]


def test_cli_export_no_verify_default_output(artifact, tmp_path):
    src = tmp_path / "copy.safetensors"
    src.write_bytes(artifact.read_bytes())
    assert main(["export", str(src), "--no-verify"]) == 0
    side = json.loads((tmp_path / "copy.onnx.json").read_text())
    assert side["max_abs_diff"] is None and side["verified_on"] == "skipped"
    assert (tmp_path / "copy.onnx").exists()


@pytest.mark.parametrize("make_args", [
    lambda a, t: ["export", str(t / "missing.safetensors"), "-o", str(t / "x.onnx")],
    lambda a, t: ["export", str(a), "-o", str(a)],
    lambda a, t: ["export", str(a), "-o", str(t / "x.onnx"), "--opset", "9"],
    lambda a, t: ["export", str(a), "-o", str(t / "x.txt")],
    lambda a, t: ["export", str(a), "-o", str(t / "x.onnx"), "--tol", "0"],
    lambda a, t: ["export", str(a), "-o", str(t / "x.onnx"), "--data", "nosuchdata"],
], ids=["missing", "overwrite-input", "opset", "suffix", "tol", "data"])
def test_cli_export_bad_input_exits_2(artifact, tmp_path, capsys, make_args):
    assert main(make_args(artifact, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compress export: error:") and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_rejects_non_artifact(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a model")
    assert main(["export", str(junk), "-o", str(tmp_path / "j.onnx")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("spec,expected", [("digits", "digits test split"),
                                           ("imagefolder:/no/such/folder", "random normal inputs")])
def test_cli_export_verifies_on_the_training_data_from_history(tmp_path, spec, expected):
    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    meta.add_history("train", {"data": {"spec": spec, "data_seed": 1}}, {"top1": 0.9})
    src = tmp_path / "trained.safetensors"
    save_model(model, src, meta)
    assert main(["export", str(src)]) == 0
    side = json.loads((tmp_path / "trained.onnx.json").read_text())
    assert expected in side["verified_on"] and side["max_abs_diff"] <= TOL
    assert read_onnx_meta(tmp_path / "trained.onnx").history == meta.history


def test_interpolation_travels_into_onnx_and_old_files_read_as_bilinear(tmp_path):
    from compress.onnx_meta import META_KEYS, meta_to_props, props_to_meta

    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    meta.interpolation = "bicubic"
    out = tmp_path / "m.onnx"
    export_onnx(model, meta, out, verify=False)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "interpolation" in META_KEYS and json.loads(props["interpolation"]) == "bicubic"
    assert read_onnx_meta(out).interpolation == "bicubic"
    old = {k: v for k, v in meta_to_props(meta).items() if k != "interpolation"}  # written before the key
    assert props_to_meta(old).interpolation == "bilinear"
    from compress.errors import ArtifactError

    with pytest.raises(ArtifactError, match="interpolation"):
        props_to_meta({**old, "interpolation": json.dumps("sinc")})


def test_verify_onnx_compares_in_eval_mode_and_restores_the_mode(tmp_path):
    """A model handed over in training mode is compared with its eval-mode self (BatchNorm running
    statistics, as exported), not with batch statistics, and goes back to training mode."""
    from compress.export import verify_onnx

    model, meta = tiny("mobilenet_v2", width_mult=0.25)
    path = tmp_path / "m.onnx"
    export_onnx(model, meta, path, verify=False)
    model.train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert verify_onnx(model, path, images, tol=TOL) <= TOL
    assert model.training
