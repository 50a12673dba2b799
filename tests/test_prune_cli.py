"""``compress prune``: structured/unstructured runs, analysis → ratio file, bad input (exit 2, input
untouched). The CLI runs in-process through ``compress.cli.main``."""
import hashlib
import json
import warnings

import pytest
import torch

import models
from compress.artifact import ModelMeta, load_model, read_meta, save_model
from compress.cli import main
from compress.io import sidecar
from compress.prune import sparsity_report

warnings.filterwarnings("ignore", module="torch_pruning")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny untrained MobileNetV2 artifact for 32x32 digits (10 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("prune_cli") / "base.safetensors"
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    save_model(model, path, ModelMeta.for_model(model, input_size=[3, 32, 32]))
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_structured_ratio_half(base, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    assert main(["prune", str(base), "--ratio", "0.5", "--quiet", "-o", str(out)]) == 0
    model, meta = load_model(out)
    assert meta.history[-1]["stage"] == "prune" and meta.history[-1]["params"]["ratio"] == 0.5
    assert model.get_classifier().out_features == 10
    report = json.loads(sidecar(out).read_text())
    assert report["after"]["macs"] < 0.6 * report["before"]["macs"]
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["file_bytes"] < report["before"]["file_bytes"]
    assert report["after"]["latency_ms"] > 0
    assert report["bench"] == {"input_size": 32, "batch": 1, "threads": 2, "imagenet_stem": False}
    printed = capsys.readouterr().out
    assert "MACs" in printed and "ORT latency" in printed


def test_unstructured_sparsity_global(base, tmp_path):
    out = tmp_path / "s.safetensors"
    assert main(["prune", str(base), "--sparsity", "0.7", "--global", "--no-bench", "--quiet", "-o", str(out)]) == 0
    model, meta = load_model(out)
    assert abs(sparsity_report(model)["global"] - 0.7) < 1e-3
    report = json.loads(sidecar(out).read_text())
    assert abs(report["sparsity"]["global"] - 0.7) < 1e-3
    assert set(report["sparsity"]["layers"]) == set(sparsity_report(model)["layers"])
    assert meta.history[-1]["params"]["sparsity"] == 0.7


def test_target_macs(base, tmp_path):
    out = tmp_path / "t.safetensors"
    before = json.loads(json.dumps(models.count_macs(load_model(base)[0], (3, 32, 32))))
    target = int(before * 0.6)
    assert main(["prune", str(base), "--target-macs", str(target), "--round-to", "0", "--no-bench", "--quiet",
                 "-o", str(out)]) == 0
    report = json.loads(sidecar(out).read_text())
    assert report["search"]["reached"] and report["after"]["macs"] <= target
    assert 0 < report["params"]["ratio"] < 0.9


@pytest.mark.slow
def test_analyze_then_ratio_file_and_finetune(base, tmp_path):
    ratios = tmp_path / "sens.json"
    assert main(["prune", str(base), "--analyze", "--ratios", "0.3,0.6", "--data", "digits", "--max-drop", "5",
                 "--analyze-samples", "64", "--quiet", "-o", str(ratios)]) == 0
    chosen = json.loads(ratios.read_text())
    assert "features.18.0" in chosen and all(v in (0.0, 0.3, 0.6) for v in chosen.values())
    full = json.loads((tmp_path / "sens.sensitivity.json").read_text())
    assert {r["ratio"] for r in full["rows"]} == {0.3, 0.6} and full["samples"] == 64
    assert (tmp_path / "sens.png").read_bytes()[:4] == b"\x89PNG"
    chosen["features.18.0"] = 0.5  # make sure something is pruned
    ratios.write_text(json.dumps(chosen))
    out = tmp_path / "r.safetensors"
    assert main(["prune", str(base), "--ratio-file", str(ratios), "--finetune", "1", "--data", "digits",
                 "--max-steps-per-epoch", "2", "--train-limit", "128", "--no-bench", "--quiet", "-o", str(out)]) == 0
    model, meta = load_model(out)
    assert model.features[18][0].out_channels == 640  # 1280 channels, ratio 0.5
    assert "top1" in meta.history[-1]["metrics"]


@pytest.mark.slow
def test_sparsity_with_finetune_and_distill(base, tmp_path):
    out = tmp_path / "sd.safetensors"
    assert main(["prune", str(base), "--sparsity", "0.8", "--finetune", "2", "--distill", "--data", "digits",
                 "--max-steps-per-epoch", "3", "--train-limit", "192", "--no-bench", "--quiet", "-o", str(out)]) == 0
    model, _ = load_model(out)
    assert abs(sparsity_report(model)["global"] - 0.8) < 1e-3


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "0"], "0 < ratio < 1"),
    (["--ratio", "1"], "0 < ratio < 1"),
    (["--ratio", "1.5"], "0 < ratio < 1"),
    (["--ratio", "0.5", "--method", "magic"], "unknown --method"),
    (["--ratio", "0.5", "--ignore", "features.99.conv"], "no layer named"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--ratio", "0.5", "--sparsity", "0.5"], "cannot be combined"),
    ([], "nothing to do"),
])
def test_bad_input_exits_2_and_leaves_input(base, tmp_path, capsys, argv, message):
    before = digest(base)
    out = tmp_path / "bad.safetensors"
    assert main(["prune", str(base), *argv, "--no-bench", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert digest(base) == before and not out.exists()


def test_not_an_artifact_and_same_output(base, tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model")
    before = junk.read_bytes()
    assert main(["prune", str(junk), "--ratio", "0.5", "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "not a safetensors model artifact" in capsys.readouterr().err
    assert junk.read_bytes() == before and not (tmp_path / "o.safetensors").exists()

    base_digest = digest(base)
    assert main(["prune", str(base), "--ratio", "0.5", "-o", str(base)]) == 2
    assert "same file" in capsys.readouterr().err
    assert digest(base) == base_digest and read_meta(base)[0].history == []


def test_ratio_file_with_unknown_layer(base, tmp_path, capsys):
    rf = tmp_path / "r.json"
    rf.write_text(json.dumps({"features.1.conv.0.0": 0.5, "nope": 0.3}))
    assert main(["prune", str(base), "--ratio-file", str(rf), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "nope" in capsys.readouterr().err
    rf.write_text(json.dumps({"features.1.conv.0.0": 1.5}))
    assert main(["prune", str(base), "--ratio-file", str(rf), "-o", str(tmp_path / "o.safetensors")]) == 2


def test_imagenet_stem_twin_keeps_pruned_widths(base, tmp_path):
    from compress.prune.measure import imagenet_stem_twin

    out = tmp_path / "p.safetensors"
    assert main(["prune", str(base), "--ratio", "0.5", "--no-bench", "--quiet", "-o", str(out)]) == 0
    model, meta = load_model(out)
    twin, twin_meta = imagenet_stem_twin(model, meta)
    assert twin_meta.arch_kwargs["small_input"] is False and meta.arch_kwargs["small_input"] is True
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # same widths, larger strides: 16x fewer MACs at the same resolution
    assert models.count_macs(twin, (3, 64, 64)) * 8 < models.count_macs(model, (3, 64, 64))


def test_iterative_steps_and_lamp_global(base, tmp_path):
    out = tmp_path / "it.safetensors"
    assert main(["prune", str(base), "--ratio", "0.5", "--steps", "2", "--method", "lamp", "--global",
                 "--no-bench", "--quiet", "-o", str(out)]) == 0
    report = json.loads(sidecar(out).read_text())
    assert report["params"]["steps"] == 2 and report["params"]["global"] is True
    assert report["after"]["params"] < 0.7 * report["before"]["params"]


@pytest.mark.slow
def test_taylor_and_target_latency(base, tmp_path):
    out = tmp_path / "ty.safetensors"
    assert main(["prune", str(base), "--ratio", "0.5", "--method", "taylor", "--data", "digits", "--no-bench",
                 "--quiet", "-o", str(out)]) == 0
    assert load_model(out)[0].get_classifier().out_features == 10
    out = tmp_path / "lat.safetensors"
    assert main(["prune", str(base), "--target-latency-ms", "0.0001", "--bench-runs", "5", "--quiet",
                 "-o", str(out)]) == 0
    report = json.loads(sidecar(out).read_text())
    assert report["search"]["measure"] == "latency_ms" and report["search"]["reached"] is False
    assert report["params"]["ratio"] == 0.9


def test_structured_distill_keeps_meta_and_interpolation(tmp_path):
    torch.manual_seed(1)
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    base = save_model(model, tmp_path / "bicubic.safetensors",
                      ModelMeta.for_model(model, input_size=[3, 32, 32], interpolation="bicubic"))
    out = tmp_path / "pd.safetensors"
    assert main(["prune", str(base), "--ratio", "0.3", "--finetune", "1", "--kd-loss", "kd", "--kd-temperature", "2",
                 "--kd-alpha", "0.5", "--data", "digits", "--max-steps-per-epoch", "2", "--train-limit", "96",
                 "--no-bench", "--quiet", "-o", str(out)]) == 0
    meta, _ = read_meta(out)
    assert meta.interpolation == "bicubic"
    entry = meta.history[-1]
    assert entry["stage"] == "prune" and entry["params"]["distill"] is True
    assert entry["params"]["kd"] == {"loss": "kd", "kd_temperature": 2.0, "kd_alpha": 0.5}
    assert "top1" in entry["metrics"]["finetune_best_val"]


@pytest.mark.parametrize("argv, message", [(["--kd-temperature", "0"], "--kd-temperature"),
                                           (["--kd-alpha", "1.5"], "--kd-alpha"),
                                           (["--kd-loss", "hinton"], "--kd-loss"),
                                           (["--dkd-beta", "-1"], "--dkd-beta")])
def test_bad_distillation_settings_exit_2(base, tmp_path, capsys, argv, message):
    assert main(["prune", str(base), "--ratio", "0.3", "--finetune", "1", "--distill", *argv,
                 "--no-bench", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert message in capsys.readouterr().err
