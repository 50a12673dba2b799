"""The ``compress`` entry point: help, the models table, one-line errors with exit code 2."""
import json
import subprocess
import sys

from compress.cli import main


def test_help_lists_commands(capsys):
    proc = subprocess.run([sys.executable, "-m", "compress", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "models" in proc.stdout and "Stages" in proc.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_models_table_and_json(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "resnet*", "--input-size", "224", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "resnet18" in text and "1.81G" in text  # 1.814 GMACs at 224 (torchvision: 1.81 GFLOPS)
    rows = {r["model"]: r for r in json.loads(out.read_text())}
    assert rows["resnet18"]["params"] == 11_689_512


def test_models_small_input_costs_more_per_pixel(capsys):
    assert main(["models", "mobilenet_v2", "--input-size", "32", "--json", "/dev/null"]) == 0
    assert main(["models", "mobilenet_v2", "--input-size", "32", "--small-input"]) == 0


def test_models_bad_input(capsys):
    assert main(["models", "nothing-like-this"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model matches" in err
    assert main(["models", "--input-size", "0"]) == 2


def test_argparse_errors_exit_2():
    proc = subprocess.run([sys.executable, "-m", "compress", "models", "--input-size", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
