"""`compress train` and `compress eval`: artifact round trip, sidecars, one-line errors (exit 2)."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from compress.cli import main

TINY = ["--model", "mobilenet_v2", "--width-mult", "0.25", "--image-size", "16", "--train-limit", "96",
        "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "32", "--bn-recalibrate", "64",
        "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "tiny.safetensors"
    assert main(["train", *TINY, "--data", "digits", "-o", str(out)]) == 0
    return out


def test_train_writes_artifact_sidecar_and_log(trained):
    from compress.artifact import load_model

    model, meta = load_model(trained)
    assert meta.arch == "mobilenet_v2" and meta.arch_kwargs == {"width_mult": 0.25, "small_input": True}
    assert meta.task == "multiclass" and meta.labels == [str(i) for i in range(10)]
    assert meta.input_size == [3, 16, 16] and len(meta.mean) == 3 and min(meta.std) > 0
    entry = meta.history[-1]
    assert entry["stage"] == "train" and entry["params"]["data"]["spec"] == "digits"
    assert entry["params"]["config"]["epochs"] == 1 and 0 <= entry["metrics"]["test_top1"] <= 1
    assert entry["seconds"] > 0
    report = json.loads(trained.with_name("tiny.safetensors.json").read_text())
    assert report["result"]["test"]["top1"] == entry["metrics"]["top1"]
    assert len(report["history"]) == 1 and report["data"]["sizes"]["train"] == 96
    assert report["machine"]["usable_cores"] >= 1 and "load_average" in report["machine"]  # times come with the load
    assert "epoch 1/1" in trained.with_name("tiny.safetensors.log").read_text()


def test_eval_prints_table_and_writes_json(trained, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained), "--split", "test", "--per-class"]) == 0  # data from the history
    out = capsys.readouterr().out
    assert "top1" in out and "far" in out and "frr" in out and "test, 270 samples" in out
    report = json.loads(trained.with_name("tiny.safetensors.eval-test.json").read_text())
    meta_top1 = json.loads(trained.with_name("tiny.safetensors.json").read_text())["result"]["test"]["top1"]
    assert report["metrics"]["top1"] == pytest.approx(meta_top1)  # same preprocessing, same numbers
    assert len(report["metrics"]["confusion_matrix"]) == 10


def _one_line_error(capsys, argv, fragment):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    return err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, trained, monkeypatch):
    out = str(tmp_path / "m.safetensors")
    _one_line_error(capsys, ["train", "--data", "nope", "-o", out], "unknown data set 'nope'")
    _one_line_error(capsys, ["train", "--data", f"imagefolder:{tmp_path / 'missing'}", "-o", out], "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["train", "--data", f"imagefolder:{tmp_path / 'empty'}", "-o", out], "is empty")
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("image,labels\na.png,x\nb.png,y\n")
    _one_line_error(capsys, ["train", "--data", f"csv:{tmp_path / 'l.csv'}", "-o", out], "'b.png' not found")
    _one_line_error(capsys, ["train", "--num-classes", "5", "--data", "digits", "-o", out],
                    "--num-classes 5 does not match")
    _one_line_error(capsys, ["train", "--model", "mobilenet_v9", "-o", out], "unknown model")
    _one_line_error(capsys, ["train", "--model-kwargs", "{oops", "-o", out], "not valid JSON")
    _one_line_error(capsys, ["train", *TINY, "--lr", "-1", "-o", out], "learning rate must be > 0")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    _one_line_error(capsys, ["train", "--image-size", "16", "--pretrained", "-o", out], "not on this machine")
    _one_line_error(capsys, ["eval", str(trained), "--data", "digits-multilabel"], "is a multiclass model")
    _one_line_error(capsys, ["eval", str(tmp_path / "none.safetensors")], "no such file")
    assert not (tmp_path / "m.safetensors").exists()


def test_argparse_errors_and_help_exit_cleanly():
    proc = subprocess.run([sys.executable, "-m", "compress", "train", "--epochs", "x", "-o", "m.safetensors"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "compress", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--label-smoothing" in proc.stdout and "--tensorboard" in proc.stdout


def test_multilabel_train_and_eval(tmp_path, capsys):
    out = tmp_path / "ml.safetensors"
    assert main(["train", *TINY, "--data", "digits-multilabel", "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert "map" in table and "exact_match" in table
    assert main(["eval", str(out), "--threshold", "0.4", "--json", str(tmp_path / "ml-eval.json")]) == 0
    report = json.loads((tmp_path / "ml-eval.json").read_text())
    assert report["task"] == "multilabel" and report["metrics"]["threshold"] == 0.4
    assert 0 <= report["metrics"]["map"] <= 1 and set(report["metrics"]["per_label"]) == {str(i) for i in range(10)}


class _StopBeforeTraining(Exception):
    pass


def _initial_weights(monkeypatch, tmp_path, seed):
    """The model's weights as `compress train --seed SEED` hands it to fit (fit is stopped there)."""
    import compress.training.loop

    seen = {}

    def fake_fit(model, *args, **kwargs):
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        raise _StopBeforeTraining

    monkeypatch.setattr(compress.training.loop, "fit", fake_fit)
    with pytest.raises(_StopBeforeTraining):
        main(["train", *TINY, "--seed", str(seed), "-o", str(tmp_path / "never-written.safetensors")])
    return seen


def test_seed_sets_the_initial_weights(monkeypatch, tmp_path):
    import torch

    torch.manual_seed(12345)  # whatever state the process is in must not matter
    a = _initial_weights(monkeypatch, tmp_path, 1)
    torch.randn(100)
    b = _initial_weights(monkeypatch, tmp_path, 1)
    c = _initial_weights(monkeypatch, tmp_path, 2)
    weights = [k for k in a if k.endswith("weight")]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in weights)


def test_train_records_the_interpolation(trained):
    from compress.artifact import read_meta

    meta, raw = read_meta(trained)
    assert meta.interpolation == "bilinear" and raw["interpolation"] == "bilinear"
    assert meta.history[-1]["params"]["data"]["interpolation"] == meta.interpolation
