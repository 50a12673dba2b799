"""Nothing the user had is lost: no command overwrites one of its inputs or another command's
report — not through a sidecar, a symlink, a hard link or another spelling of the path — and an
output that is a special file (/dev/null) is written in place, never replaced."""
import hashlib
import json
import os
import stat

import pytest
import torch

import models
from compress.artifact import ModelMeta, save_model
from compress.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_TRAIN = ["--model", "mobilenet_v2", "--width-mult", "0.25", "--image-size", "16", "--train-limit", "64",
              "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "32", "--bn-recalibrate", "32",
              "--no-progress"]


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def base(tmp_path):
    """A tiny MobileNetV2 artifact for 32x32 digits whose history names its data set."""
    torch.manual_seed(0)
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    meta = ModelMeta.for_model(model, input_size=[3, 32, 32])
    meta.add_history("train", {"data": {"spec": "digits", "data_seed": 0}}, {"top1": 0.1})
    return save_model(model, tmp_path / "base.safetensors", meta)


def test_export_keeps_the_training_report(tmp_path):
    """`compress export base.safetensors -o base.onnx` once wrote base.json over train's report."""
    out = tmp_path / "base.safetensors"
    assert main(["train", *TINY_TRAIN, "-o", str(out)]) == 0
    train_report = tmp_path / "base.safetensors.json"
    before = digest(train_report)
    assert main(["export", str(out), "-o", str(tmp_path / "base.onnx"), "--no-verify"]) == 0
    assert digest(train_report) == before
    assert json.loads(train_report.read_text())["command"] == "train"
    assert json.loads((tmp_path / "base.onnx.json").read_text())["command"] == "export"
    assert main(["eval", str(out)]) == 0  # eval's report has a name of its own too
    assert digest(train_report) == before and (tmp_path / "base.safetensors.eval-test.json").exists()


def test_prune_keeps_its_ratio_file(base, tmp_path, capsys):
    """`prune --ratio-file sens.json -o sens.safetensors` once replaced sens.json with its report."""
    ratio_file = tmp_path / "sens.json"
    ratio_file.write_text(json.dumps({"features.1.conv.0.0": 0.5}))
    before = digest(ratio_file)
    assert main(["prune", str(base), "--ratio-file", str(ratio_file), "--no-bench", "--quiet",
                 "-o", str(tmp_path / "sens.safetensors")]) == 0
    assert digest(ratio_file) == before
    # an output whose report would land on the ratio file is refused before any work
    clash = tmp_path / "p.safetensors.json"
    clash.write_text(json.dumps({"features.1.conv.0.0": 0.5}))
    before = digest(clash)
    assert main(["prune", str(base), "--ratio-file", str(clash), "--no-bench", "-o", str(tmp_path / "p.safetensors")]) == 2
    assert "same file" in capsys.readouterr().err
    assert digest(clash) == before and not (tmp_path / "p.safetensors").exists()


def _spellings(path):
    """Other names of the same file: a relative detour, a symlink, a hard link."""
    d = path.parent
    (d / "sub").mkdir(exist_ok=True)
    link = d / f"link-{path.name}"
    hard = d / f"hard-{path.name}"
    if not link.exists():
        link.symlink_to(path)
    if not hard.exists():
        os.link(path, hard)
    return {"detour": d / "sub" / ".." / path.name, "symlink": link, "hardlink": hard}


@pytest.mark.parametrize("how", ["detour", "symlink", "hardlink"])
def test_no_command_writes_onto_its_input(base, tmp_path, capsys, how):
    victim = _spellings(base)[how]
    before = digest(base)
    onnx_victim = tmp_path / f"v-{how}.onnx"
    onnx_victim.symlink_to(base)  # an .onnx name for the same bytes
    commands = [
        ["prune", str(base), "--ratio", "0.5", "--no-bench", "-o", str(victim)],
        ["export", str(base), "--no-verify", "-o", str(onnx_victim)],
        ["eval", str(base), "--json", str(victim)],
    ]
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("same file" in err or "would" in err), (argv, err)
        assert digest(base) == before, argv


def test_bench_report_cannot_replace_a_model(base, tmp_path, capsys):
    """bench -o PREFIX writes PREFIX.json/.csv/.png: refused when one of them is an input."""
    model_as_json = tmp_path / "r.json"
    model_as_json.write_bytes(base.read_bytes())
    before = digest(model_as_json)
    (tmp_path / "sub").mkdir()
    for prefix in (tmp_path / "r", tmp_path / "sub" / ".." / "r", tmp_path / "r.json"):
        assert main(["bench", str(base), str(model_as_json), "--threads", "1", "-o", str(prefix)]) == 2
        assert "same file" in capsys.readouterr().err
    assert digest(model_as_json) == before


def test_train_report_and_log_cannot_be_the_model(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["train", *TINY_TRAIN, "--json", str(out), "-o", str(out)]) == 2
    assert "same file" in capsys.readouterr().err and not out.exists()


def test_special_file_outputs_stay_special(tmp_path):
    """`--json /dev/null` once renamed a temporary file onto /dev/null (root replaced the device)."""
    assert main(["models", "mobilenet_v2", "--input-size", "32", "--json", os.devnull]) == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    assert main(["models", "resnet18", "--json", str(fifo)]) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and json.loads(got[0])[0]["model"] == "resnet18"


def test_outputs_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "models.json"
        assert main(["models", "resnet18", "--json", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644  # readable by the service's user, not 0600
