"""Depth pruning: residual blocks out (``x + f(x)`` → ``x``), chosen by how little the outputs
change, rebuilt from the artifact, exported with fewer operators; bad requests exit 2."""
import json
import warnings

import pytest
import torch
import torch.nn as nn

import models
from compress.artifact import ModelMeta, load_model, save_model
from compress.cli import main
from compress.io import sidecar
from compress.prune.depth import divergence, rank_blocks

warnings.filterwarnings("ignore", module="torch_pruning")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _live(model: nn.Module) -> nn.Module:
    """An untrained model whose blocks all matter: the zoo zero-initialises residual branches and
    untrained BatchNorm statistics shrink activations to ~1e-7, so give every residual branch a
    unit scale, set the statistics from one batch, and a unit-variance head. Eval mode."""
    with torch.no_grad():
        for name in models.residual_blocks(model):
            [m for m in model.get_submodule(name).modules() if isinstance(m, nn.BatchNorm2d)][-1].weight.fill_(1.0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average: one batch sets the statistics
        model.train()(torch.randn(32, 3, 32, 32))
        model.eval().get_classifier().weight.normal_(0, 1.0)
    return model


def _silence(block: nn.Module) -> None:
    """Make a block's residual branch output exactly zero (its last BatchNorm scale and shift 0)."""
    last_bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    nn.init.zeros_(last_bn.weight)
    nn.init.zeros_(last_bn.bias)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet18"])
def test_removing_a_block_equals_a_zero_residual_branch(arch):
    torch.manual_seed(0)
    model = _live(models.create_model(arch, num_classes=5, small_input=True))
    blocks = models.residual_blocks(model)
    assert blocks, arch
    name = blocks[len(blocks) // 2]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        _silence(model.get_submodule(name))
        want = model(x)
        pruned = models.remove_blocks(model, [name])
        got = pruned(x)
    assert (before - want).abs().max() > 1e-3  # the block mattered before it was silenced
    assert isinstance(pruned.get_submodule(name), nn.Identity)
    assert pruned.arch_kwargs["removed_blocks"] == [name]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_identity_shortcut_blocks_are_removable():
    model = models.create_model("mobilenet_v2", num_classes=5)
    blocks = models.residual_blocks(model)
    for name in blocks:
        b = model.get_submodule(name)
        assert b.use_res_connect
    strided = [n for n, m in model.named_modules() if getattr(m, "use_res_connect", None) is False]
    assert strided and not set(strided) & set(blocks)
    assert models.residual_blocks(models.create_model("pplcnet_x0_25", num_classes=5)) == []
    with pytest.raises(ValueError, match="not removable"):
        models.create_model("mobilenet_v2", num_classes=5, removed_blocks=[strided[0]])


def test_depth_pruned_artifact_round_trips(tmp_path):
    torch.manual_seed(0)
    model = _live(models.create_model("mobilenet_v2", num_classes=4, small_input=True, width_mult=0.25,
                                      removed_blocks=["features.5", "features.3"]))
    assert model.arch_kwargs["removed_blocks"] == ["features.3", "features.5"]  # forward order
    path = save_model(model, tmp_path / "d.safetensors", ModelMeta.for_model(model, input_size=[3, 32, 32]))
    loaded, meta = load_model(path)
    assert meta.arch_kwargs["removed_blocks"] == ["features.3", "features.5"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_ranking_puts_the_block_that_changes_nothing_first():
    torch.manual_seed(0)
    model = _live(models.create_model("mobilenet_v2", num_classes=4, small_input=True, width_mult=0.5))
    blocks = models.residual_blocks(model)
    quiet = blocks[-3]
    _silence(model.get_submodule(quiet))
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))) for _ in range(2)]
    baseline, trials = rank_blocks(model, batches, "multiclass")
    assert [t.block for t in trials][0] == quiet and trials[0].divergence == pytest.approx(0, abs=1e-6)
    assert all(t.divergence > 0 for t in trials[1:])
    assert sorted(t.block for t in trials) == sorted(blocks)
    assert trials[0].drop == pytest.approx(0, abs=1e-9) and 0 <= baseline <= 1


def test_divergence_is_kl_of_the_softmax_and_zero_only_for_equal_outputs():
    ref = torch.tensor([[2.0, 0.0, -1.0]])
    other = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = ref.softmax(1), other.softmax(1)
    assert divergence(ref, other, "multiclass") == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert divergence(ref, ref, "multiclass") == pytest.approx(0, abs=1e-7)
    s, t = torch.sigmoid(ref), torch.sigmoid(other)
    bern = (s * (s / t).log() + (1 - s) * ((1 - s) / (1 - t)).log()).sum()
    assert divergence(ref, other, "multilabel") == pytest.approx(float(bern), rel=1e-5)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("depth") / "base.safetensors"
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    save_model(model, path, ModelMeta.for_model(model, input_size=[3, 32, 32]))
    return path


def test_cli_blocks_ranks_removes_and_exports_fewer_nodes(base, tmp_path, capsys):
    import onnx

    out = tmp_path / "d.safetensors"
    assert main(["prune", str(base), "--blocks", "2", "--ratio", "0.25", "--data", "digits", "--analyze-samples",
                 "64", "--no-bench", "--quiet", "-o", str(out)]) == 0
    report = json.loads(sidecar(out).read_text())
    trials = report["depth"]["trials"]
    assert report["depth"]["removed"] == sorted([t["block"] for t in trials[:2]],
                                                key=models.residual_blocks(load_model(base)[0]).index)
    assert [t["divergence"] for t in trials] == sorted(t["divergence"] for t in trials)
    model, meta = load_model(out)
    assert meta.arch_kwargs["removed_blocks"] == report["depth"]["removed"]
    assert meta.history[-1]["params"]["removed_blocks"] and meta.history[-1]["params"]["ratio"] == 0.25
    assert report["after"]["macs"] < report["before"]["macs"]
    printed = capsys.readouterr().out
    assert "depth pruning: 2 residual block(s) out" in printed and "KL alone out" in printed
    assert main(["export", str(out), "-o", str(tmp_path / "d.onnx")]) == 0
    assert main(["export", str(base), "-o", str(tmp_path / "b.onnx")]) == 0
    nodes = {n: len(onnx.load(str(tmp_path / f"{n}.onnx")).graph.node) for n in ("d", "b")}
    assert nodes["d"] < nodes["b"]


def test_cli_drop_block_by_name(base, tmp_path):
    out = tmp_path / "n.safetensors"
    assert main(["prune", str(base), "--drop-block", "features.3", "--no-bench", "--quiet", "-o", str(out)]) == 0
    model, meta = load_model(out)
    assert meta.arch_kwargs["removed_blocks"] == ["features.3"]
    assert isinstance(model.features[3], nn.Identity)


@pytest.mark.parametrize("args, message", [
    (["--drop-block", "features.0"], "not a removable residual block"),
    (["--blocks", "99", "--data", "digits"], "removable residual blocks ("),
    (["--blocks", "1", "--drop-block", "features.3"], "not both"),
    (["--blocks", "-1"], "must be >= 0"),
])
def test_cli_bad_depth_requests_exit_2(base, tmp_path, capsys, args, message):
    out = tmp_path / "x.safetensors"
    assert main(["prune", str(base), *args, "--no-bench", "--quiet", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_cli_blocks_on_a_network_without_residual_blocks(tmp_path, capsys):
    model = models.create_model("pplcnet_x0_25", num_classes=10, small_input=True)
    path = save_model(model, tmp_path / "lc.safetensors", ModelMeta.for_model(model, input_size=[3, 32, 32]))
    assert main(["prune", str(path), "--blocks", "1", "--data", "digits", "--no-bench", "--quiet",
                 "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "no residual blocks" in capsys.readouterr().err
