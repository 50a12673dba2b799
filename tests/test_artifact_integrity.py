"""The model artifact and its metadata: exact layer shapes, resizing, what is written, and every
kind of damaged file refused with ArtifactError (one line naming the file), never a traceback
from safetensors, json or torch. Damaged files are built byte by byte from the safetensors
layout (8-byte little-endian header length, JSON header, raw data)."""
import json
import struct
import time

import pytest
import torch
import torch.nn as nn

from compress.artifact import FORMAT, _resize_layers, layer_shapes, load_model, read_meta, save_model
from compress.errors import ArtifactError, UserError
from compress.meta import ModelMeta
from models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=True)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.plain_bn = nn.BatchNorm2d(8, affine=False, track_running_stats=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 5)
        self.fc_nobias = nn.Linear(5, 2, bias=False)


def tiny_model(classes: int = 3):
    torch.manual_seed(0)
    return create_model("mobilenet_v2", num_classes=classes, small_input=True, width_mult=0.25).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, bytes) of a valid artifact of the tiny model."""
    model = tiny_model()
    path = tmp_path_factory.mktemp("art") / "m.safetensors"
    save_model(model, path, ModelMeta.for_model(model, input_size=[3, 32, 32], labels=["a", "b", "c"]))
    return path, path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def with_compress_meta(data: bytes, **changes) -> bytes:
    header, body = split(data)
    raw = json.loads(header["__metadata__"]["compress"])
    raw.update(changes)
    header["__metadata__"]["compress"] = json.dumps(raw)
    return join(header, body)


# ----------------------------------------------------------------------------- layer shapes and resizing

def test_layer_shapes():
    assert layer_shapes(Small()) == {"conv": [3, 8, 1], "dw": [8, 8, 8], "bn": [8], "plain_bn": [8], "fc": [8, 5],
                                     "fc_nobias": [5, 2]}


def test_resize_layers_gives_the_stored_shapes():
    m = Small()
    kept = m.fc_nobias.weight
    _resize_layers(m, {"conv": [3, 4, 1], "dw": [4, 4, 4], "bn": [4], "plain_bn": [4], "fc": [4, 5],
                       "fc_nobias": [5, 2]})
    assert (m.conv.in_channels, m.conv.out_channels, m.conv.groups) == (3, 4, 1)
    assert m.conv.weight.shape == (4, 3, 3, 3) and m.conv.bias.shape == (4,)
    assert m.dw.weight.shape == (4, 1, 3, 3) and m.dw.groups == 4 and m.dw.bias is None
    assert m.bn.num_features == 4 and m.bn.weight.shape == m.bn.bias.shape == (4,)
    assert torch.equal(m.bn.running_mean, torch.zeros(4)) and torch.equal(m.bn.running_var, torch.ones(4))
    assert m.plain_bn.num_features == 4 and m.plain_bn.weight is None and m.plain_bn.running_mean is None
    assert m.fc.weight.shape == (5, 4) and m.fc.bias.shape == (5,) and m.fc.in_features == 4
    assert m.fc_nobias.weight is kept  # an unchanged layer is left alone
    assert isinstance(m.conv.weight, nn.Parameter) and isinstance(m.fc.bias, nn.Parameter)
    x = torch.randn(1, 3, 9, 9)
    y = m.dw(m.conv(x))
    assert y.shape == (1, 4, 5, 5) and m.fc(torch.zeros(2, 4)).shape == (2, 5)


def test_resize_layers_other_changes():
    m = Small()
    _resize_layers(m, {"fc_nobias": [5, 7], "fc": [8, 3], "conv": [3, 8, 1], "bn": [8], "dw": [8, 8, 2]})
    assert m.fc_nobias.weight.shape == (7, 5) and m.fc_nobias.bias is None and m.fc_nobias.out_features == 7
    assert m.fc.weight.shape == (3, 8) and m.fc.out_features == 3 and m.fc.bias.shape == (3,)
    assert m.dw.groups == 2 and m.dw.weight.shape == (8, 4, 3, 3)  # the groups count is part of the shape


def test_resize_layers_refuses_unknown_or_unresizable_layers():
    with pytest.raises(ArtifactError, match=r"^artifact names layer 'head', which Small does not have$"):
        _resize_layers(Small(), {"head": [8, 5]})
    with pytest.raises(ArtifactError, match=r"^layer 'act' is a ReLU, not a resizable layer$"):
        _resize_layers(Small(), {"act": [1]})


# ----------------------------------------------------------------------------- what is written

def test_the_file_is_plain_safetensors_with_our_metadata(saved):
    path, data = saved
    header, body = split(data)
    meta = header.pop("__metadata__")
    assert meta["format"] == "pt"
    raw = json.loads(meta["compress"])
    assert raw["format"] == FORMAT == "compress-model/1" and raw["arch"] == "mobilenet_v2"
    assert raw["num_classes"] == 3 and raw["labels"] == ["a", "b", "c"] and raw["input_size"] == [3, 32, 32]
    assert raw["arch_kwargs"] == {"small_input": True, "width_mult": 0.25}
    assert raw["layers"] == layer_shapes(tiny_model())
    model = tiny_model()
    assert set(header) == set(model.state_dict())
    assert max(v["data_offsets"][1] for v in header.values()) == len(body)


def test_round_trip_restores_weights_mode_and_head(saved, tmp_path):
    path, _ = saved
    model, meta = load_model(path)
    ref = tiny_model()
    for (k, a), (k2, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not model.training and meta.labels == ["a", "b", "c"]
    # a pruned head: sync_head gives num_features the stored width
    pruned = tiny_model()
    fc = pruned.get_classifier()
    pruned.classifier[-1] = nn.Linear(fc.in_features, 3)
    with torch.no_grad():
        pruned.classifier[-1].weight.copy_(fc.weight)
    save_model(pruned, tmp_path / "p.safetensors", ModelMeta.for_model(pruned))
    loaded, _ = load_model(tmp_path / "p.safetensors", device="cpu")
    assert loaded.num_features == loaded.get_classifier().in_features


def test_non_contiguous_weights_are_saved(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        w = model.get_classifier().weight
        model.get_classifier().weight = nn.Parameter(w.t().contiguous().t())  # same values, transposed storage
    assert not model.get_classifier().weight.is_contiguous()
    path = save_model(model, tmp_path / "m.safetensors", ModelMeta.for_model(model))
    loaded, _ = load_model(path)
    assert torch.equal(loaded.get_classifier().weight, w)


def test_arch_mismatch_is_refused(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"^meta\.arch 'resnet18' does not match the model's 'mobilenet_v2'$"):
        save_model(model, tmp_path / "m.safetensors", ModelMeta(arch="resnet18", num_classes=3))
    assert list(tmp_path.iterdir()) == []


def test_save_returns_the_path_and_replaces_atomically(tmp_path, saved):
    _, data = saved
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    model = tiny_model()
    assert save_model(model, str(out), ModelMeta.for_model(model, input_size=[3, 32, 32],
                                                           labels=["a", "b", "c"])) == out
    assert split(out.read_bytes())[0].keys() == split(data)[0].keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ----------------------------------------------------------------------------- damaged files

@pytest.mark.parametrize("damage", ["empty", "short", "header cut", "data cut", "length too large", "not json",
                                    "offsets past the end", "zeros"])
def test_damaged_files_are_refused(tmp_path, saved, damage):
    _, data = saved
    n = struct.unpack("<Q", data[:8])[0]
    header, body = split(data)
    if damage == "empty":
        bad = b""
    elif damage == "short":
        bad = data[:5]
    elif damage == "header cut":
        bad = data[:8 + n // 2]
    elif damage == "data cut":
        bad = data[:8 + n + len(body) // 2]
    elif damage == "length too large":
        bad = struct.pack("<Q", 10 ** 12) + data[8:]
    elif damage == "not json":
        bad = struct.pack("<Q", 12) + b"{not json!!}" + body
    elif damage == "offsets past the end":
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 4
        bad = join(header, body)
    else:
        bad = bytes(len(data))
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bad)
    with pytest.raises(ArtifactError, match=r"^.*bad\.safetensors: "):
        load_model(path)


def test_weights_of_the_wrong_size_are_refused(tmp_path, saved):
    _, data = saved
    header, body = split(data)
    name = next(k for k in header if k.endswith("weight") and k != "__metadata__")
    header[name]["shape"] = [1] * (len(header[name]["shape"]) - 1) + [header[name]["shape"][0]]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(join(header, body))
    with pytest.raises(ArtifactError, match=r"bad\.safetensors: (corrupt weights|weights do not fit|not a safetensors)"):
        load_model(path)


def test_a_missing_or_extra_tensor_is_refused(tmp_path, saved):
    from safetensors.torch import load_file, save_file

    path, data = saved
    state = load_file(str(path))
    metadata = split(data)[0]["__metadata__"]
    missing = {k: v for k, v in state.items() if k != "features.0.0.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(ArtifactError, match=r"missing\.safetensors: weights do not fit mobilenet_v2: .*Missing key"):
        load_model(tmp_path / "missing.safetensors")
    save_file({**state, "extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"), metadata=metadata)
    with pytest.raises(ArtifactError, match=r"extra\.safetensors: weights do not fit mobilenet_v2: .*Unexpected key"):
        load_model(tmp_path / "extra.safetensors")


@pytest.mark.parametrize("layers", [{"features.0.0": [3, 8]}, {"features.0.0": [3, 16, 0]},
                                    {"features.0.0": [3, -4, 1]}, {"features.0.0": "abc"}, [1, 2],
                                    {"classifier.1": [8]}, {"features.0.1": [8, 8]}])
def test_damaged_layer_shapes_are_refused(tmp_path, saved, layers):
    """A damaged "layers" entry once escaped as a raw ValueError / ZeroDivisionError (a traceback
    from `compress eval`) instead of one line naming the file."""
    _, data = saved
    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_compress_meta(data, layers=layers))
    with pytest.raises(ArtifactError, match=rf"^{path}: corrupt layer shapes in the metadata \("):
        load_model(path)


def test_metadata_problems(tmp_path, saved):
    _, data = saved
    cases = {
        "format": (with_compress_meta(data, format="compress-model/2"),
                   r": unsupported artifact format 'compress-model/2', expected compress-model/1$"),
        "noformat": (with_compress_meta(data, format=None), r": unsupported artifact format None"),
        "task": (with_compress_meta(data, task="regression"), r": corrupt artifact metadata \(task must be one of"),
        "labels": (with_compress_meta(data, labels=["a"]), r": corrupt artifact metadata \(1 labels for 3 classes\)$"),
        "arch": (with_compress_meta(data, arch="mobilenet_v9"), r": unknown model 'mobilenet_v9'"),
        "kwargs": (with_compress_meta(data, arch_kwargs={"no_such_option": 1}),
                   r": cannot build 'mobilenet_v2' with \{'no_such_option': 1\}: "),
        "layer": (with_compress_meta(data, layers={"features.99": [3, 8, 1]}),  # names the file too
                  r": artifact names layer 'features\.99', which MobileNetV2 does not have$"),
        "shape": (with_compress_meta(data, layers={"features.0.0": [3, 16, 1]}), r": weights do not fit mobilenet_v2: "),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(bad)
        with pytest.raises(ArtifactError, match=rf"^{path}{message}"):
            load_model(path)
    header, body = split(data)
    header["__metadata__"]["compress"] = "{broken"
    (tmp_path / "json.safetensors").write_bytes(join(header, body))
    with pytest.raises(ArtifactError, match=r"json\.safetensors: corrupt artifact metadata \("):
        read_meta(tmp_path / "json.safetensors")
    header["__metadata__"]["compress"] = json.dumps({"format": FORMAT, "num_classes": 3})  # no arch
    (tmp_path / "field.safetensors").write_bytes(join(header, body))
    with pytest.raises(ArtifactError, match=r"field\.safetensors: corrupt artifact metadata \("):
        read_meta(tmp_path / "field.safetensors")
    del header["__metadata__"]["compress"]
    (tmp_path / "plain.safetensors").write_bytes(join(header, body))
    with pytest.raises(ArtifactError, match=r"plain\.safetensors: a safetensors file without compress metadata "
                                            r"\(not saved by this toolkit\)$"):
        read_meta(tmp_path / "plain.safetensors")
    del header["__metadata__"]
    (tmp_path / "nometa.safetensors").write_bytes(join(header, body))
    with pytest.raises(ArtifactError, match="without compress metadata"):
        read_meta(tmp_path / "nometa.safetensors")


def test_read_meta_ignores_unknown_keys_and_returns_the_raw_dict(tmp_path, saved):
    _, data = saved
    path = tmp_path / "m.safetensors"
    path.write_bytes(with_compress_meta(data, future_key={"x": 1}))
    meta, raw = read_meta(str(path))
    assert isinstance(meta, ModelMeta) and meta.arch == "mobilenet_v2" and meta.num_classes == 3
    assert raw["future_key"] == {"x": 1} and "layers" in raw
    with pytest.raises(ArtifactError, match=r"nope\.safetensors: no such file$"):
        read_meta(tmp_path / "nope.safetensors")
    with pytest.raises(ArtifactError, match=r": is a directory, expected a \.safetensors model artifact$"):
        read_meta(tmp_path)


# ----------------------------------------------------------------------------- ModelMeta

def test_meta_defaults_and_coercion():
    import numpy as np

    m = ModelMeta(arch="a", num_classes=3, input_size=(np.int64(1), 28.0, 28), mean=(0, 1, 0), std=[np.float32(0.5)] * 3)
    assert m.labels == ["0", "1", "2"] and m.task == "multiclass" and m.interpolation == "bilinear"
    assert m.input_size == [1, 28, 28] and all(type(v) is int for v in m.input_size)
    assert m.mean == [0.0, 1.0, 0.0] and all(type(v) is float for v in m.mean + m.std)
    d = ModelMeta(arch="a", num_classes=2)
    assert d.input_size == [3, 224, 224] and d.mean == [0.485, 0.456, 0.406] and d.std == [0.229, 0.224, 0.225]
    assert d.arch_kwargs == {} and d.history == []
    assert ModelMeta(arch="a", num_classes=2).history is not d.history  # no shared default


@pytest.mark.parametrize("kw,message", [
    (dict(task="regression"), r"^task must be one of \('multiclass', 'multilabel'\), got 'regression'$"),
    (dict(interpolation="cubic"), r"^interpolation must be one of nearest, bilinear, bicubic, .*got 'cubic'$"),
    (dict(labels=["x", "y"]), r"^2 labels for 3 classes$"),
])
def test_meta_validation(kw, message):
    with pytest.raises(UserError, match=message):
        ModelMeta(arch="a", num_classes=3, **kw)


def test_meta_accepts_every_interpolation_and_task():
    for name in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
        assert ModelMeta(arch="a", num_classes=1, interpolation=name).interpolation == name
    assert ModelMeta(arch="a", num_classes=1, task="multilabel").task == "multilabel"


def test_add_history():
    m = ModelMeta(arch="a", num_classes=2)
    before = time.strftime("%Y-%m-%dT%H:%M")
    m.add_history("train", {"epochs": 3}, {"top1": 0.9}, seconds=12.5)
    m.add_history("prune")
    assert [e["stage"] for e in m.history] == ["train", "prune"]
    first, second = m.history
    assert first["params"] == {"epochs": 3} and first["metrics"] == {"top1": 0.9} and first["seconds"] == 12.5
    assert second["params"] == {} and second["metrics"] == {} and set(second) == {"stage", "params", "metrics", "time"}
    stamp = time.strptime(first["time"], "%Y-%m-%dT%H:%M:%S%z")
    assert time.strftime("%Y-%m-%dT%H:%M", stamp) >= before[:13]


def test_for_model():
    model = tiny_model(classes=4)
    meta = ModelMeta.for_model(model, labels=list("wxyz"))
    assert meta.arch == "mobilenet_v2" and meta.num_classes == 4 and meta.labels == list("wxyz")
    assert meta.arch_kwargs == {"small_input": True, "width_mult": 0.25}
    assert meta.arch_kwargs is not model.arch_kwargs  # a copy: editing the metadata leaves the model alone
    cfg = model.default_cfg
    assert meta.input_size == list(cfg["input_size"]) and meta.mean == list(cfg["mean"]) and meta.std == list(cfg["std"])
    own = ModelMeta.for_model(model, input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.25] * 3, task="multilabel")
    assert own.input_size == [3, 32, 32] and own.mean == [0.5] * 3 and own.std == [0.25] * 3 and own.task == "multilabel"


def test_for_model_without_default_cfg_uses_imagenet_defaults():
    class Bare(nn.Module):
        arch = "bare"

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def get_classifier(self):
            return self.fc

    meta = ModelMeta.for_model(Bare())
    assert meta.input_size == [3, 224, 224] and meta.mean == [0.485, 0.456, 0.406] and meta.std == [0.229, 0.224, 0.225]
    assert meta.num_classes == 6 and meta.arch_kwargs == {}
    with pytest.raises(UserError, match=r"^model was not built by models\.create_model \(no \.arch attribute\)$"):
        ModelMeta.for_model(nn.Linear(2, 2))


def test_training_data_is_the_last_stage_that_names_a_data_set():
    m = ModelMeta(arch="a", num_classes=2)
    assert m.training_data() == {}
    m.add_history("train", {"data": {"spec": "digits", "data_seed": 3, "image_size": 32}})
    m.add_history("prune", {"data": {"spec": "cifar10"}})          # no seed recorded: 0
    m.add_history("export", {"data": None})
    m.add_history("quantize", None)
    m.add_history("eval", {"data": {"spec": ""}})                     # empty: not a data set
    m.add_history("bench", {"data": {"spec": 7}})                     # not a name
    m.add_history("huffman", {"data": "digits"})                      # not a dict
    assert m.training_data() == {"spec": "cifar10", "data_seed": 0}
    m.history.append({"stage": "odd"})                                # an entry without params
    assert m.training_data()["spec"] == "cifar10"
    m.history = m.history[:1]
    assert m.training_data() == {"spec": "digits", "data_seed": 3, "image_size": 32}
    m.history[0]["params"]["data"]["data_seed"] = None
    assert m.training_data()["data_seed"] == 0
    m.history[0]["params"]["data"]["data_seed"] = "5"
    assert m.training_data()["data_seed"] == 5


def test_an_unchanged_linear_does_not_stop_the_resizing():
    m = Small()
    _resize_layers(m, {"fc_nobias": [5, 2], "bn": [8], "conv": [3, 4, 1], "fc": [4, 5]})
    assert m.conv.out_channels == 4 and m.fc.in_features == 4


def test_an_artifact_without_layer_shapes_loads(tmp_path, saved):
    """"layers" is needed only for pruned networks; an artifact without it loads as built."""
    _, data = saved
    header, body = split(data)
    raw = json.loads(header["__metadata__"]["compress"])
    del raw["layers"]
    header["__metadata__"]["compress"] = json.dumps(raw)
    path = tmp_path / "old.safetensors"
    path.write_bytes(join(header, body))
    model, meta = load_model(path)
    assert meta.num_classes == 3 and model.get_classifier().out_features == 3
    assert torch.equal(model.get_classifier().weight, tiny_model().get_classifier().weight)


def test_unreadable_weights_are_refused_with_the_first_line_of_the_cause(tmp_path, saved, monkeypatch):
    """The header can be fine and the data not (e.g. the file changed after its header was read)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def broken(*args, **kwargs):
        raise SafetensorError("incomplete buffer\nmore detail")

    monkeypatch.setattr(safetensors.torch, "load_file", broken)
    path, _ = saved
    with pytest.raises(ArtifactError, match=rf"^{path}: corrupt weights \(incomplete buffer\)$"):
        load_model(path)


def test_weights_that_do_not_fit_are_described_on_one_line(tmp_path, saved):
    from safetensors.torch import load_file, save_file

    path, data = saved
    state = load_file(str(path))
    del state["features.0.0.weight"], state["classifier.1.bias"]
    save_file(state, str(tmp_path / "m.safetensors"), metadata=split(data)[0]["__metadata__"])
    with pytest.raises(ArtifactError) as err:
        load_model(tmp_path / "m.safetensors")
    message = str(err.value)
    assert "\n" not in message  # torch's first two lines, joined
    assert message.startswith(f"{tmp_path / 'm.safetensors'}: weights do not fit mobilenet_v2: "
                              "Error(s) in loading state_dict for MobileNetV2: \tMissing key(s) in state_dict: ")


def test_not_safetensors_says_why(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(ArtifactError, match=r"m\.safetensors: not a safetensors model artifact \((?!None\)).+\)$"):
        read_meta(path)


def test_a_module_without_arch_can_be_saved(tmp_path):
    path = save_model(Small(), tmp_path / "s.safetensors", ModelMeta(arch="small", num_classes=5))
    meta, raw = read_meta(path)
    assert meta.arch == "small" and raw["layers"] == layer_shapes(Small())


def test_a_narrower_head_sets_num_features_on_load(tmp_path):
    from compress.prune import importance_by_name, prune_channels

    model = tiny_model()
    wide = model.num_features
    prune_channels(model, torch.randn(1, 3, 32, 32), ratio=0.5, importance=importance_by_name("l2"))
    assert model.get_classifier().in_features < wide
    path = save_model(model, tmp_path / "p.safetensors", ModelMeta.for_model(model, input_size=[3, 32, 32]))
    loaded, _ = load_model(path)
    assert loaded.num_features == loaded.get_classifier().in_features == model.get_classifier().in_features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_for_model_reads_the_models_own_normalisation():
    class Gray(nn.Module):
        arch = "gray"
        default_cfg = {"input_size": (1, 28, 28), "mean": (0.1307,), "std": (0.3081,)}

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 10)

        def get_classifier(self):
            return self.fc

    meta = ModelMeta.for_model(Gray())
    assert meta.input_size == [1, 28, 28] and meta.mean == [0.1307] and meta.std == [0.3081]
