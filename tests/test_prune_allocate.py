"""``prune --ratio R --allocate sensitivity``: the uniform ratio's MAC saving spent where the
sensitivity analysis says accuracy is cheapest (compress/prune/allocate.py)."""
import json
import warnings

import pytest
import torch

import models
from compress.artifact import ModelMeta, load_model, save_model
from compress.cli import main
from compress.io import sidecar
from compress.prune.allocate import Option, allocate_ratios, group_savings
from compress.prune.importance import importance_by_name
from compress.prune.structured import channel_groups, prune_channels

warnings.filterwarnings("ignore", module="torch_pruning")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _opts(*rows):
    return [Option(r, d, s) for r, d, s in rows]


def test_the_cheap_group_pays_first():
    options = {"cheap": _opts((0.3, 0.1, 100), (0.6, 0.2, 200)),
               "dear": _opts((0.3, 5.0, 100), (0.6, 9.0, 200))}
    assert allocate_ratios(options, 150) == {"cheap": 0.6, "dear": 0.0}
    # more than the cheap group can give: the dear one pays the rest, the cheap one stays at its most
    assert allocate_ratios(options, 250) == {"cheap": 0.6, "dear": 0.3}


def test_savings_per_point_not_savings_alone_decide():
    # "big" saves more but loses far more accuracy per MAC than "small"
    options = {"big": _opts((0.5, 4.0, 400)), "small": _opts((0.5, 0.1, 50))}
    assert allocate_ratios(options, 40) == {"big": 0.0, "small": 0.5}


def test_a_jump_past_an_inefficient_step_is_taken():
    # g's first step costs a lot for little; its second is the best deal overall
    options = {"g": _opts((0.2, 2.0, 10), (0.5, 2.1, 500)), "h": _opts((0.5, 1.0, 200))}
    assert allocate_ratios(options, 300) == {"g": 0.5, "h": 0.0}


def test_noise_gains_count_as_min_drop_and_unreachable_targets_take_everything():
    options = {"noisy": _opts((0.5, -1.0, 10)), "real": _opts((0.5, 0.02, 1000))}
    assert allocate_ratios(options, 500, min_drop=0.01) == {"noisy": 0.0, "real": 0.5}
    assert allocate_ratios(options, 10 ** 9) == {"noisy": 0.5, "real": 0.5}
    assert allocate_ratios(options, 0) == {"noisy": 0.0, "real": 0.0}


def test_start_ratios_only_grow():
    options = {"a": _opts((0.3, 0.1, 100), (0.6, 0.2, 200)), "b": _opts((0.3, 5.0, 100))}
    got = allocate_ratios(options, 150, start={"b": 0.3})
    assert got["b"] == 0.3 and got["a"] >= 0.3


def _tiny():
    torch.manual_seed(0)
    return models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25).eval()


def test_group_savings_are_exact_and_leave_the_model_alone():
    model = _tiny()
    example = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = [g.name for g in channel_groups(model, example)][:3]

    def prune(m, ex, per_layer):
        prune_channels(m, ex, ratio=0.0, importance=importance_by_name("l1"), round_to=None, ratio_per_layer=per_layer)

    def count(m):
        return float(models.count_macs(m, (3, 32, 32)))

    saved = group_savings(model, example, groups, [0.25, 0.5], prune, count)
    for g in groups:
        assert 0 < saved[(g, 0.25)] < saved[(g, 0.5)]
        m = _tiny()
        prune(m, example, {g: 0.5})
        assert saved[(g, 0.5)] == count(_tiny()) - count(m)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("alloc") / "base.safetensors"
    model = _tiny()
    save_model(model, path, ModelMeta.for_model(model, input_size=[3, 32, 32]))
    return path


def test_cli_allocates_per_layer_ratios_removing_the_uniform_macs(base, tmp_path):
    uni, sens = tmp_path / "u.safetensors", tmp_path / "s.safetensors"
    common = ["--ratio", "0.5", "--data", "digits", "--analyze-samples", "64", "--no-bench", "--no-test", "--quiet",
              "--bench-input-size", "64", "--bench-imagenet-stem"]
    assert main(["prune", str(base), *common, "-o", str(uni)]) == 0
    assert main(["prune", str(base), *common, "--allocate", "sensitivity", "--ratios", "0.25,0.75",
                 "-o", str(sens)]) == 0
    report = json.loads(sidecar(sens).read_text())
    alloc = report["allocation"]
    assert alloc["ratios_tested"] == [0.25, 0.5, 0.75] and alloc["timing_side"] == 64
    per_layer = alloc["ratio_per_layer"]
    assert per_layer and set(per_layer.values()) <= {0.25, 0.5, 0.75}
    assert len(set(per_layer.values())) > 1 or len(per_layer) < len(alloc["rows"]) // 3  # not the uniform ratio
    assert alloc["macs_removed"] >= 0.99 * alloc["macs_removed_uniform"] > 0
    # the artifact holds those widths and records how they were chosen
    model, meta = load_model(sens)
    params = meta.history[-1]["params"]
    assert params["allocate"] == "sensitivity" and params["ratio_per_layer"] == per_layer
    widths = {g.name: g.channels for g in channel_groups(model, torch.randn(1, 3, 32, 32))}
    before = {g.name: g.channels for g in channel_groups(_tiny(), torch.randn(1, 3, 32, 32))}
    untouched = [g for g in before if g not in per_layer]
    assert all(widths[g] == before[g] for g in untouched)
    assert any(widths[g] < before[g] for g in per_layer)


@pytest.mark.parametrize("args, message", [
    (["--allocate", "sensitivity", "--blocks", "1"], "give --ratio"),
    (["--allocate", "sensitivity", "--ratio", "0.5", "--global"], "without --ratio-file, --global or --steps"),
    (["--allocate", "evenly", "--ratio", "0.5"], "--allocate"),
])
def test_cli_bad_allocation_requests_exit_2(base, tmp_path, capsys, args, message):
    out = tmp_path / "x.safetensors"
    assert main(["prune", str(base), *args, "--data", "digits", "--no-bench", "--quiet", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()
