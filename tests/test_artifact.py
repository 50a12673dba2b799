"""The .safetensors model artifact: exact round trips, pruned shapes, clear errors, no pickle."""
from __future__ import annotations

import json
import struct

import pytest
import torch
import torch.nn as nn

from compress.artifact import ModelMeta, layer_shapes, load_model, read_meta, save_model
from compress.errors import ArtifactError
from models import create_model, list_models


def _meta(model, **kw):
    return ModelMeta.for_model(model, labels=[f"c{i}" for i in range(model.get_classifier().out_features)], **kw)


def _assert_same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", list_models())
def test_round_trip_is_exact_for_every_model(name, tmp_path):
    model = create_model(name, num_classes=6, small_input=True)
    # non-trivial BN statistics so the buffers are checked too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    path = save_model(model, tmp_path / "m.safetensors", _meta(model, input_size=[3, 32, 32]))
    loaded, meta = load_model(path)
    assert meta.arch == name and meta.num_classes == 6 and meta.labels[0] == "c0"
    assert meta.arch_kwargs == {"small_input": True}
    _assert_same(model, loaded, torch.randn(2, 3, 32, 32))


def _slice_mobilenet_v2_block(model: nn.Module, keep: int) -> None:
    """Simulate channel pruning inside one inverted-residual block: keep ``keep`` hidden channels."""
    block = model.features[2].conv
    expand, dw, project = block[0], block[1], block[2]
    idx = torch.arange(keep)
    conv, bn = expand[0], expand[1]
    conv.weight = nn.Parameter(conv.weight.data[idx].clone())
    conv.out_channels = keep
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name).data[idx].clone()))
    bn.running_mean, bn.running_var, bn.num_features = bn.running_mean[idx].clone(), bn.running_var[idx].clone(), keep
    conv, bn = dw[0], dw[1]
    conv.weight = nn.Parameter(conv.weight.data[idx].clone())
    conv.in_channels = conv.out_channels = conv.groups = keep
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name).data[idx].clone()))
    bn.running_mean, bn.running_var, bn.num_features = bn.running_mean[idx].clone(), bn.running_var[idx].clone(), keep
    project.weight = nn.Parameter(project.weight.data[:, idx].clone())
    project.in_channels = keep


def test_pruned_shapes_round_trip(tmp_path):
    model = create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.5)
    _slice_mobilenet_v2_block(model, keep=20)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()(x)  # the sliced model is consistent
    meta = _meta(model)
    meta.add_history("prune", {"ratio": 0.5}, {"params": sum(p.numel() for p in model.parameters())})
    path = save_model(model, tmp_path / "pruned.safetensors", meta)
    loaded, meta2 = load_model(path)
    assert loaded.features[2].conv[1][0].groups == 20
    assert layer_shapes(loaded) == layer_shapes(model)
    _assert_same(model, loaded, x)
    assert meta2.history[-1]["stage"] == "prune" and meta2.history[-1]["params"] == {"ratio": 0.5}


def test_sparse_weights_survive(tmp_path):
    model = create_model("mobilenet_v2", num_classes=3, small_input=True, width_mult=0.25)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    loaded, _ = load_model(save_model(model, tmp_path / "s.safetensors", _meta(model)))
    for (n, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a == 0, b == 0), n


def test_file_is_safetensors_not_pickle(tmp_path):
    model = create_model("resnet18", num_classes=2, small_input=True)
    path = save_model(model, tmp_path / "r.safetensors", _meta(model))
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert "__metadata__" in header and "compress" in header["__metadata__"]
    assert b"\x80\x04\x95" not in raw[:8 + header_len]  # no pickle protocol-4 frame in the header
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away


def test_meta_without_weights(tmp_path):
    model = create_model("mobilenet_v2", num_classes=2, small_input=True, width_mult=0.25)
    path = save_model(model, tmp_path / "m.safetensors", _meta(model, task="multilabel", mean=[0.5] * 3))
    meta, raw = read_meta(path)
    assert meta.task == "multilabel" and meta.mean == [0.5, 0.5, 0.5]
    assert raw["format"] == "compress-model/1" and "features.0.0" in raw["layers"]


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        load_model(tmp_path / "nope.safetensors")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ArtifactError, match="directory"):
        load_model(tmp_path)


def test_file_of_another_format(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x08\x07\x12\x04onnx-ish bytes that are not a safetensors header")
    with pytest.raises(ArtifactError, match="not a safetensors"):
        load_model(p)


def test_truncated_file(tmp_path):
    model = create_model("mobilenet_v2", num_classes=2, small_input=True, width_mult=0.25)
    path = save_model(model, tmp_path / "m.safetensors", _meta(model))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        load_model(path)


def test_plain_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(ArtifactError, match="without compress metadata"):
        load_model(p)


def _rewrite_meta(path, **changes):
    from safetensors.torch import load_file, save_file

    meta, raw = read_meta(path)
    raw.update(changes)
    save_file(load_file(str(path)), str(path), metadata={"compress": json.dumps(raw), "format": "pt"})


def test_unknown_architecture(tmp_path):
    model = create_model("mobilenet_v2", num_classes=2, small_input=True, width_mult=0.25)
    path = save_model(model, tmp_path / "m.safetensors", _meta(model))
    _rewrite_meta(path, arch="mobilenet_v9")
    with pytest.raises(ArtifactError, match="unknown model 'mobilenet_v9'"):
        load_model(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    model = create_model("mobilenet_v2", num_classes=2, small_input=True, width_mult=0.25)
    path = save_model(model, tmp_path / "m.safetensors", _meta(model))
    _rewrite_meta(path, arch="resnet18", arch_kwargs={"small_input": True}, layers={})
    with pytest.raises(ArtifactError, match="do not fit resnet18"):
        load_model(path)


def test_meta_validation():
    with pytest.raises(ValueError, match="task"):
        ModelMeta(arch="mobilenet_v2", num_classes=2, task="regression")
    with pytest.raises(ValueError, match="labels"):
        ModelMeta(arch="mobilenet_v2", num_classes=2, labels=["a"])


def test_interpolation_round_trips_and_is_validated(tmp_path):
    model = create_model("mobilenet_v2", num_classes=2, small_input=True, width_mult=0.25)
    assert _meta(model).interpolation == "bilinear"
    path = save_model(model, tmp_path / "m.safetensors", _meta(model, interpolation="bicubic"))
    meta, raw = read_meta(path)
    assert meta.interpolation == "bicubic" and raw["interpolation"] == "bicubic"
    assert load_model(path)[1].interpolation == "bicubic"
    with pytest.raises(ValueError, match="interpolation"):
        ModelMeta(arch="mobilenet_v2", num_classes=2, interpolation="cubic")
    _rewrite_meta(path, interpolation="sinc")
    with pytest.raises(ArtifactError, match="interpolation"):
        read_meta(path)


def test_artifact_without_interpolation_loads_as_bilinear(tmp_path):
    model = create_model("mobilenet_v2", num_classes=2, small_input=True, width_mult=0.25)
    path = save_model(model, tmp_path / "old.safetensors", _meta(model, interpolation="lanczos"))
    from safetensors.torch import load_file, save_file

    _, raw = read_meta(path)
    del raw["interpolation"]  # an artifact written before the key existed
    save_file(load_file(str(path)), str(path), metadata={"compress": json.dumps(raw), "format": "pt"})
    assert "interpolation" not in read_meta(path)[1]
    assert load_model(path)[1].interpolation == "bilinear"
