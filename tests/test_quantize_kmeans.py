"""``compress quantize --kmeans-bits``: k-means weight sharing (centroid initialisation, pruned
zeros kept, bits per layer type, gradients summed per cluster), the codebook + uint8 indices
artifact (bit-exact round trip), the stage end to end with fine-tuning, and bad input."""
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import models
from compress.artifact import ModelMeta, load_model, read_meta, read_shared, save_model
from compress.errors import ArtifactError, UserError
from compress.io import sidecar
from compress.quantize.config import QuantizeConfig
from compress.quantize.kmeans import (SharedWeight, bake, cluster_values, initial_centroids, kmeans_artifact,
                                      share_layer, share_weights)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")


@pytest.fixture(scope="module")
def one_blas_thread():
    """scikit-learn's k-means uses OpenMP threads of its own; one is plenty for tiny layers."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25).eval()


def half_zero_linear(seed: int = 0, out: int = 16, inp: int = 32) -> nn.Linear:
    """A linear layer with about half of its weights pruned to exact zeros."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(inp, out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, inp, generator=g))
        layer.weight.mul_(torch.rand(out, inp, generator=g) > 0.5)
    return layer


def distinct(t: torch.Tensor) -> int:
    return int(torch.unique(t.detach()).numel())


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- initialisation, clustering

def test_linear_init_is_evenly_spaced_over_min_max():
    values = np.random.default_rng(0).normal(size=1000) ** 3  # heavy tails: quantiles would not be even
    c = initial_centroids(values, 8, "linear")
    assert c[0] == pytest.approx(values.min()) and c[-1] == pytest.approx(values.max())
    np.testing.assert_allclose(np.diff(c), (values.max() - values.min()) / 7, rtol=1e-9)


def test_density_init_follows_the_distribution_and_random_is_seeded():
    values = np.random.default_rng(0).normal(size=1000)
    c = initial_centroids(values, 4, "density")
    np.testing.assert_allclose(c, np.quantile(values, [0.125, 0.375, 0.625, 0.875]))
    r1, r2 = initial_centroids(values, 5, "random", seed=1), initial_centroids(values, 5, "random", seed=1)
    assert np.array_equal(r1, r2) and set(r1) <= set(values) and len(set(r1)) == 5
    assert not np.array_equal(r1, initial_centroids(values, 5, "random", seed=2))


def test_linear_is_the_default_and_random_never_repeats_a_value():
    values = np.random.default_rng(0).normal(size=500)
    np.testing.assert_array_equal(initial_centroids(values, 6), initial_centroids(values, 6, "linear"))
    a, b = cluster_values(values, 6), cluster_values(values, 6, "linear", seed=0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    few = np.repeat([-2.0, -0.5, 0.0, 1.0, 3.0], 7)  # 5 distinct values, more centroids asked
    np.testing.assert_array_equal(initial_centroids(few, 8, "random", seed=3), [-2.0, -0.5, 0.0, 1.0, 3.0])
    np.testing.assert_array_equal(initial_centroids(np.array([0.25]), 1), [0.25])  # one value is enough


@pytest.mark.parametrize("values, k, method", [(np.ones(4), 0, "linear"), (np.array([]), 4, "linear"),
                                               (np.ones(4), 2, "kmeans++")])
def test_initialisation_refuses_no_centroids_no_values_and_unknown_methods(values, k, method):
    with pytest.raises(ValueError):
        initial_centroids(values, k, method)


def test_few_distinct_values_are_kept_exactly():
    values = np.array([0.5, -1.0, 0.5, 2.0, -1.0])
    centroids, labels = cluster_values(values, 4)
    np.testing.assert_array_equal(centroids[labels], values.astype(np.float32))


# ----------------------------------------------------------------------------- sharing a layer

@pytest.mark.parametrize("bits", [1, 2, 3])
def test_pruned_zeros_stay_zero_and_a_layer_has_at_most_2_to_the_bits_values(bits):
    layer = half_zero_linear()
    zeros = layer.weight.detach() == 0
    assert 0.3 < zeros.float().mean() < 0.7
    share_layer(layer, bits, "linear")
    w = layer.weight.detach()
    assert (w[zeros] == 0).all(), "a pruned weight is no longer zero"
    assert (w[~zeros] != 0).all(), "a surviving weight was clustered to zero"
    assert distinct(w) == 2 ** bits  # zero + 2^bits - 1 centroids: the index fits in bits
    bake(layer)
    assert not hasattr(layer, "parametrizations") and distinct(layer.weight) == 2 ** bits
    assert (layer.weight.detach()[zeros] == 0).all()


def test_bits_per_layer_type_and_min_weights():
    model = tiny_model()
    cfg = QuantizeConfig(kmeans_bits=5, conv_bits=3, fc_bits=2, min_weights=200).validate()
    rows, unshared = share_weights(model, cfg)
    modules = dict(model.named_modules())
    assert {r.kind for r in rows} == {"conv", "fc"} and unshared
    for r in rows:
        assert r.bits == {"conv": 3, "fc": 2}[r.kind]
        assert distinct(modules[r.name].weight) == r.values <= 2 ** r.bits
    fc = next(r for r in rows if r.kind == "fc")
    assert fc.values == 4
    for name in unshared:  # small layers keep their dense float weights
        assert modules[name].weight.numel() < 200 and not hasattr(modules[name], "parametrizations")
        assert distinct(modules[name].weight) > 8


def test_only_the_centroids_train():
    layer = half_zero_linear()
    shared = share_layer(layer, 2)
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert any(p is shared.centroids for p in trainable)
    assert not any(p is layer.parametrizations.weight.original for p in trainable)


def test_the_gradient_of_a_centroid_is_the_sum_of_its_members_gradients():
    layer = half_zero_linear(seed=3)
    shared = share_layer(layer, 3)
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(4))
    target = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    ((layer(x) - target) ** 2).sum().backward()

    dense = nn.Parameter(layer.weight.detach().clone())  # the same shared values as a plain weight
    ((nn.functional.linear(x, dense, layer.bias) - target) ** 2).sum().backward()
    members = shared.indices.clone()
    members[~shared.mask] = -1  # pruned weights belong to no cluster
    expected = torch.stack([dense.grad[members == c].sum() for c in range(shared.centroids.numel())])
    assert shared.centroids.grad is not None
    torch.testing.assert_close(shared.centroids.grad, expected, rtol=1e-5, atol=1e-5)
    assert isinstance(layer.parametrizations.weight[0], SharedWeight)


# ----------------------------------------------------------------------------- the artifact

def test_artifact_stores_codebook_and_uint8_indices_and_round_trips_bit_exactly(tmp_path):
    model = tiny_model()
    rows, _ = share_weights(model, QuantizeConfig(kmeans_bits=4).validate())
    bake(model)
    path = tmp_path / "k.safetensors"
    keys = {f"{r.name}.weight": r.bits for r in rows}
    save_model(model, path, ModelMeta.for_model(model, input_size=[3, 16, 16]), shared=keys)
    state = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
        for key in keys:
            assert key not in stored, "a shared weight was stored dense"
            codebook, indices = f.get_tensor(key + ".codebook"), f.get_tensor(key + ".indices")
            assert indices.dtype == torch.uint8 and indices.shape == state[key].shape
            assert codebook.dtype == torch.float32 and codebook.numel() <= 16
            assert torch.equal(codebook[indices.long()], state[key])
    loaded, _ = load_model(path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert {k: v[2] for k, v in read_shared(path).items()} == keys
    assert read_meta(path)[1]["shared"] == keys


def test_a_tensor_with_too_many_values_is_not_stored_as_shared(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="do not fit"):
        save_model(model, tmp_path / "x.safetensors", ModelMeta.for_model(model), shared={"classifier.1.weight": 4})
    assert not (tmp_path / "x.safetensors").exists()


def test_an_index_beyond_the_codebook_is_an_artifact_error(tmp_path):
    model = tiny_model()
    share_weights(model, QuantizeConfig(kmeans_bits=2).validate())
    bake(model)
    good = tmp_path / "good.safetensors"
    save_model(model, good, ModelMeta.for_model(model), shared={"classifier.1.weight": 2})
    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata()
    tensors["classifier.1.weight.indices"][0, 0] = 9
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(ArtifactError, match="beyond the codebook"):
        load_model(bad)


# ----------------------------------------------------------------------------- the stage

@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny MobileNetV2 for 16x16 digits with 60% of its conv/linear weights pruned to zero."""
    from compress.prune import prune_magnitude

    model = tiny_model()
    prune_magnitude(model, 0.6)
    path = tmp_path_factory.mktemp("kmeans") / "pruned.safetensors"
    save_model(model, path, ModelMeta.for_model(model, input_size=[3, 16, 16]))
    return path


# raw-weight clustering: the fixture is untrained, and an untrained network with its BatchNorms
# frozen (what --fold-bn does) passes no gradient worth a centroid's move; folding is tested on a
# trained model in tests/test_huffman.py
QUICK = {"data": "digits", "train_limit": 96, "batch_size": 32, "max_steps_per_epoch": 2, "fold_bn": False}


def _zero_masks(path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path)
    return {n: m.weight.detach() == 0 for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_kmeans_artifact_keeps_zeros_fits_the_bits_and_trains_the_centroids(pruned, tmp_path):
    from compress.report.kmeans import format_kmeans

    before = digest(pruned)
    zeros_in = _zero_masks(pruned)
    cfg = QuantizeConfig(kmeans_bits=3, fc_bits=2, min_weights=300, finetune=1, **QUICK)
    result = kmeans_artifact(pruned, tmp_path / "k.safetensors", cfg)
    assert digest(pruned) == before
    assert result.output == tmp_path / "k.safetensors" and result.report_path == sidecar(result.output)

    model, meta = load_model(result.output)
    modules = dict(model.named_modules())
    for name, zeros in zeros_in.items():  # shared and unshared layers alike
        assert (modules[name].weight.detach()[zeros] == 0).all(), f"{name}: a pruned weight came back"
    assert result.unshared and all(name not in {r.name for r in result.layers} for name in result.unshared)
    shared = read_shared(result.output)
    for r in result.layers:
        w = modules[r.name].weight.detach()
        assert r.bits == {"conv": 3, "fc": 2}[r.kind]
        assert distinct(w) == r.values <= 2 ** r.bits
        codebook, indices, bits = shared[f"{r.name}.weight"]
        assert bits == r.bits and torch.equal(codebook[indices.long()], w)
        assert r.zeros == int(zeros_in[r.name].sum())

    entry = meta.history[-1]
    assert entry["stage"] == "quantize" and entry["params"]["bits"] == {"conv": 3, "fc": 2}
    assert entry["params"]["init"] == "linear" and entry["params"]["finetune_epochs"] == 1
    assert entry["params"]["criterion"]["teacher"] == "the unquantized input model"
    report = json.loads(result.report_path.read_text())
    assert report["mode"] == "kmeans" and len(report["layers"]) == len(result.layers)
    assert set(result.accuracy) >= {"before", "kmeans", "finetuned", "finetune_best_val"}
    assert 1 < result.storage["model_ratio"] < result.storage["shared_layers_ratio"]
    text = format_kmeans(result)
    n_conv = sum(r.kind == "conv" for r in result.layers)  # many layers: one row per (kind, bits)
    assert f"{n_conv} conv layers" in text and "1 fc layers" in text and "shared + fine-tuned" in text

    # without fine-tuning the codebooks are k-means' own: fine-tuning must have moved them
    plain = kmeans_artifact(pruned, tmp_path / "k0.safetensors", QuantizeConfig(kmeans_bits=3, fc_bits=2,
                                                                                min_weights=300, finetune=0, **QUICK))
    moved = [not torch.equal(read_shared(plain.output)[k][0], shared[k][0]) for k in shared]
    assert sum(moved) > len(moved) // 2, "fine-tuning left the centroids where k-means put them"
    assert "finetuned" not in plain.accuracy and "kmeans" in plain.accuracy


def test_labels_only_fine_tuning(pruned, tmp_path):
    result = kmeans_artifact(pruned, tmp_path / "l.safetensors", QuantizeConfig(
        kmeans_bits=2, kmeans_init="density", distill=False, finetune=1, test=False, **QUICK))
    assert result.params["distill"] is False and result.params["criterion"] == {"name": "supervised"}
    assert "test" not in result.accuracy["finetuned"] and "val" in result.accuracy["finetuned"]
    assert all(r.values <= 4 for r in result.layers)


def test_library_refuses_onnx_input_and_overwriting_the_input(pruned, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really onnx")
    with pytest.raises(UserError, match="works on the .safetensors artifact"):
        kmeans_artifact(onnx, tmp_path / "o.safetensors", QuantizeConfig(kmeans_bits=4))
    with pytest.raises(UserError, match="same file"):
        kmeans_artifact(pruned, pruned, QuantizeConfig(kmeans_bits=4, finetune=0))
    for bits in (0, 9):
        with pytest.raises(UserError, match="between 1 and 8"):
            QuantizeConfig(kmeans_bits=bits).validate()


# ----------------------------------------------------------------------------- the CLI

@pytest.mark.parametrize("argv, message", [
    (["--kmeans-bits", "0"], "between 1 and 8"),
    (["--kmeans-bits", "9"], "between 1 and 8"),
    (["--kmeans-bits", "4", "--fc-bits", "9"], "between 1 and 8"),
    (["--fc-bits", "4"], "--kmeans-bits"),
    (["--kmeans-bits", "4", "--kmeans-init", "magic"], "--kmeans-init"),
])
def test_cli_bad_options_exit_2_with_one_line(pruned, tmp_path, capsys, argv, message):
    from compress.cli import main

    before = digest(pruned)
    out = tmp_path / "y.safetensors"
    assert main(["quantize", str(pruned), *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert digest(pruned) == before and not out.exists()


def test_cli_onnx_input_exits_2(tmp_path, capsys):
    from compress.cli import main

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really onnx")
    assert main(["quantize", str(onnx), "--kmeans-bits", "4", "-o", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "works on the .safetensors artifact" in err and len(err.splitlines()) == 1


def test_report_groups_many_layers_by_kind_and_bits():
    """Up to 12 shared layers: one row each; more: one row per (kind, bits) with summed weights and
    zeros and the largest count of distinct values."""
    from types import SimpleNamespace

    from compress.report.kmeans import PER_LAYER_ROWS, _layer_rows

    def layer(i, kind, bits):
        return SimpleNamespace(name=f"l{i}", kind=kind, bits=bits, weights=100 + i, values=min(i + 2, 2 ** bits),
                               zeros=i % 3)

    few = SimpleNamespace(layers=[layer(i, "conv", 4) for i in range(PER_LAYER_ROWS)])
    assert [r["layer"] for r in _layer_rows(few)] == [f"l{i}" for i in range(PER_LAYER_ROWS)]
    layers = [layer(i, "conv", 5) for i in range(12)] + [layer(12, "fc", 4)]
    rows = {(r["kind"], r["bits"]): r for r in _layer_rows(SimpleNamespace(layers=layers))}
    assert set(rows) == {("conv", 5), ("fc", 4)}
    assert rows[("conv", 5)]["weights"] == sum(100 + i for i in range(12))
    assert rows[("conv", 5)]["zeros"] == sum(i % 3 for i in range(12))
    assert rows[("conv", 5)]["values"] == "<= 13" and rows[("fc", 4)]["values"] == "<= 14"
    assert rows[("fc", 4)]["layer"] == "1 fc layers"


@pytest.mark.parametrize("fold_bn, freeze_bn, sparse, folds", [
    (None, False, False, False),  # default on a dense model: raw weights
    (None, False, True, True),    # default on a pruned one: folded
    (None, True, False, True),    # --freeze-bn folds whatever the model
    (True, False, False, True),
    (False, False, True, False),
])
def test_batchnorm_folding_default_follows_the_share_of_pruned_weights(pruned, tmp_path, fold_bn, freeze_bn, sparse,
                                                                        folds):
    from compress.prune.unstructured import sparsity_report
    from compress.quantize.kmeans import AUTO_FOLD_ZEROS

    src = pruned
    if not sparse:
        model = tiny_model()
        src = save_model(model, tmp_path / "dense.safetensors", ModelMeta.for_model(model, input_size=[3, 16, 16]))
    assert (sparsity_report(load_model(src)[0])["global"] >= AUTO_FOLD_ZEROS) == sparse
    cfg = QuantizeConfig(kmeans_bits=4, finetune=0, fold_bn=fold_bn, freeze_bn=freeze_bn)
    result = kmeans_artifact(src, tmp_path / "k.safetensors", cfg)
    assert (result.params["folded_bn"] > 0) == folds
    assert result.params["frozen_bn"] == (folds and freeze_bn)
