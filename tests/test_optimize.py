"""``compress optimize``: a tiny search (tiny model, two candidates per axis) chooses a variant on
the Pareto frontier and within the accuracy budget on the validation split, writes it with a recipe
that rebuilds it, resumes from its candidates, and refuses bad input with exit code 2."""
import json
import warnings

import pytest

from compress.cli import main
from compress.optimize.frontier import choose, pareto

warnings.filterwarnings("ignore", module="torch_pruning")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = ["--model", "mobilenet_v2", "--width-mult", "0.25", "--image-size", "16", "--train-limit", "600",
         "--epochs", "4", "--max-steps-per-epoch", "19", "--batch-size", "32", "--no-progress"]
QUICK = ["--finetune", "1", "--max-steps-per-epoch", "3", "--train-limit", "96", "--runs", "5", "--threads", "1",
         "--rank-samples", "64", "--int8-min-agreement", "0.5", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimize") / "base.safetensors"
    assert main(["train", *TRAIN, "--data", "digits", "-o", str(out)]) == 0
    return out


def _dominated(p, others, cost):
    return any(q[cost] <= p[cost] and q["val_accuracy"] >= p["val_accuracy"]
               and (q[cost] < p[cost] or q["val_accuracy"] > p["val_accuracy"]) for q in others)


def test_pareto_and_choice_by_hand():
    pts = [{"id": "a", "ms": 1.0, "val_accuracy": 0.80}, {"id": "b", "ms": 2.0, "val_accuracy": 0.90},
           {"id": "c", "ms": 2.5, "val_accuracy": 0.85}, {"id": "d", "ms": 3.0, "val_accuracy": 0.95},
           {"id": "e", "ms": 1.0, "val_accuracy": 0.70}, {"id": "f", "ms": None, "val_accuracy": 0.99}]
    assert [p["id"] for p in pareto(pts, "ms")] == ["a", "b", "d"]
    assert choose(pts, "ms", baseline=0.95, max_drop_points=5.0)["id"] == "b"  # 0.90 is exactly 5 points down
    assert choose(pts, "ms", baseline=0.95, max_drop_points=4.9)["id"] == "d"
    assert choose(pts, "ms", baseline=0.99, max_drop_points=1.0) is None


def test_latency_search_chooses_a_frontier_point_within_budget(trained, tmp_path, capsys):
    out = tmp_path / "opt"
    assert main(["optimize", str(trained), "--blocks", "0,1", "--ratios", "0,0.5", "--max-drop", "3", *QUICK,
                 "-o", str(out)]) == 0
    rep = json.loads((out / "optimize.json").read_text())
    built = {c["id"] for c in rep["candidates"]} | {s["id"] for s in rep["skipped"]}
    assert built == {"d0-r0", "d0-r0.5", "d1-r0", "d1-r0.5"}
    variants, front, chosen = rep["variants"], rep["frontier"], rep["chosen"]
    assert {v["precision"] for v in variants} == {"fp32", "int8"} and len(variants) >= 4
    assert all(not _dominated(p, variants, "latency_ms") for p in front)
    assert all(_dominated(v, front, "latency_ms") or v["id"] in {p["id"] for p in front} for v in variants)
    base = rep["baseline"]["val_accuracy"]
    if chosen is not None:
        assert chosen["id"] in {p["id"] for p in front}
        assert 100 * (base - chosen["val_accuracy"]) <= 3 + 1e-9
        within = [v for v in variants if 100 * (base - v["val_accuracy"]) <= 3 + 1e-9]
        assert chosen["latency_ms"] == min(v["latency_ms"] for v in within)
        assert "test_accuracy" in chosen and (out / "chosen.onnx").is_file() and (out / "recipe.yaml").is_file()
        assert main(["pipeline", str(out / "recipe.yaml"), "-o", str(tmp_path / "rebuilt"), "--dry-run"]) == 0
    for v in variants:  # no test-set numbers anywhere off the frontier: the choice never saw them
        if v["id"] not in {p["id"] for p in front} and (chosen is None or v["id"] != chosen["id"]):
            assert "test_accuracy" not in v
    pruned_report = json.loads((out / "candidates" / "d0-r0.5" / "model.safetensors.json").read_text())
    assert "top1" not in pruned_report["before"] and "top1" not in pruned_report["after"]  # prune --no-test
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "input (ORT fp32)" in printed and "frontier" in printed

    # resumable: the same command reuses every candidate (same files, untouched)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "candidates").rglob("*") if p.is_file()}
    assert main(["optimize", str(trained), "--blocks", "0,1", "--ratios", "0,0.5", "--max-drop", "3", *QUICK[:-1],
                 "-o", str(out)]) == 0
    assert "reused" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_hopeless_branch_stops_more_aggressive_candidates(trained, tmp_path):
    out = tmp_path / "opt"
    # --max-drop 0 and --hopeless 1: any loss at all stops the branch
    assert main(["optimize", str(trained), "--blocks", "0", "--ratios", "0.5,0.7", "--max-drop", "0",
                 "--hopeless", "1", "--no-int8", *QUICK, "-o", str(out)]) == 0
    rep = json.loads((out / "optimize.json").read_text())
    first = next(c for c in rep["candidates"] if c["id"] == "d0-r0.5")
    if first["drop_points"] > 0:
        assert rep["skipped"] == [{"id": "d0-r0.7", "why": "branch stopped by d0-r0.5"}]
    else:
        assert {c["id"] for c in rep["candidates"]} == {"d0-r0.5", "d0-r0.7"}


def test_grid_ids_and_branches_with_per_layer_allocation():
    from compress.optimize.api import candidate_id, more_aggressive
    from compress.optimize.config import OptimizeConfig

    grid = OptimizeConfig(blocks=[0, 2], ratios=[0, 0.5], allocate=["uniform", "sensitivity"]).candidates()
    assert grid == [(0, 0), (0, 0.5), (0, 0.5, "sensitivity"), (2, 0), (2, 0.5), (2, 0.5, "sensitivity")]
    assert [candidate_id("latency", *c) for c in grid] == ["d0-r0", "d0-r0.5", "d0-s0.5", "d2-r0", "d2-r0.5",
                                                           "d2-s0.5"]
    # a hopeless uniform ratio stops uniform ratios only; a hopeless depth alone stops everything deeper
    assert more_aggressive("latency", (2, 0.5), (0, 0.5)) and not more_aggressive("latency", (2, 0.5, "sensitivity"),
                                                                                    (0, 0.5))
    assert more_aggressive("latency", (2, 0.5, "sensitivity"), (0, 0.5, "sensitivity"))
    assert more_aggressive("latency", (2, 0.5, "sensitivity"), (2, 0))
    only = OptimizeConfig(allocate=["sensitivity"], ratios=[0, 0.3]).candidates()
    assert only[:2] == [(0, 0), (0, 0.3, "sensitivity")]


def test_sensitivity_allocated_candidate(trained, tmp_path):
    out = tmp_path / "opt"
    assert main(["optimize", str(trained), "--blocks", "0", "--ratios", "0.5", "--allocate", "uniform,sensitivity",
                 "--max-drop", "50", "--no-int8", *QUICK, "-o", str(out)]) == 0
    rep = json.loads((out / "optimize.json").read_text())
    recs = {c["id"]: c for c in rep["candidates"]}
    assert set(recs) == {"d0-r0.5", "d0-s0.5"}
    assert recs["d0-s0.5"]["allocate"] == "sensitivity" and recs["d0-s0.5"]["ratio_per_layer"]
    assert "ratio_per_layer" not in recs["d0-r0.5"]
    report = json.loads((out / "candidates" / "d0-s0.5" / "model.safetensors.json").read_text())
    assert report["allocation"]["macs_removed"] >= 0.99 * report["allocation"]["macs_removed_uniform"]
    if rep["chosen"] and rep["chosen"]["candidate"] == "d0-s0.5":
        assert "allocate: sensitivity" in (out / "recipe.yaml").read_text()


def test_bad_allocation_exits_2(trained, tmp_path, capsys):
    assert main(["optimize", str(trained), "--allocate", "evenly", "-o", str(tmp_path / "o")]) == 2
    assert "must be a list of uniform, sensitivity" in capsys.readouterr().err


def test_size_search_chooses_the_smallest_dcz_within_budget(trained, tmp_path):
    out = tmp_path / "opt"
    assert main(["optimize", str(trained), "--objective", "size", "--sparsities", "0,0.5", "--bits", "4,6",
                 "--max-drop", "5", *QUICK, "-o", str(out)]) == 0
    rep = json.loads((out / "optimize.json").read_text())
    variants, chosen = rep["variants"], rep["chosen"]
    assert {v["id"] for v in variants} == {"s0-b6", "s0.5-b6", "s0-b4", "s0.5-b4"} - {s["id"] for s in rep["skipped"]}
    assert all(v["bytes"] < rep["baseline"]["bytes"] / 4 for v in variants)  # <= 6 bits + Huffman vs fp32
    if chosen is not None:
        base = rep["baseline"]["val_accuracy"]
        within = [v for v in variants if 100 * (base - v["val_accuracy"]) <= 5 + 1e-9]
        assert chosen["bytes"] == min(v["bytes"] for v in within)
        assert (out / "chosen.dcz").stat().st_size == chosen["bytes"]
        assert main(["eval", str(out / "chosen.dcz"), "--split", "val"]) == 0


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.safetensors", "no such file"),
    (lambda d: _write(d / "m.onnx", b"x"), "give its .safetensors"),
])
def test_bad_input_exits_2(tmp_path, capsys, make, message):
    assert main(["optimize", str(make(tmp_path)), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_options_and_output_exit_2(trained, tmp_path, capsys):
    for argv in (["--ratios", "0,1.5"], ["--objective", "speed"], ["--bits", "9"], ["--max-drop", "-1"]):
        assert main(["optimize", str(trained), *argv, "-o", str(tmp_path / "o")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    afile = tmp_path / "file"
    afile.write_text("keep")
    assert main(["optimize", str(trained), "-o", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "keep"


def test_a_second_search_in_the_same_folder_is_refused(trained, tmp_path, capsys):
    import fcntl

    out = tmp_path / "opt"
    out.mkdir()
    with open(out / ".optimize.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["optimize", str(trained), "--blocks", "0", "--ratios", "0", *QUICK, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "another `compress optimize` is running" in err and len(err.splitlines()) == 1
    assert not (out / "candidates").exists()


def test_round_to_and_augment_reach_every_pruned_candidate(trained, tmp_path):
    """--round-to and --augment are handed to the prune stage of every candidate: its report shows
    the rounding and plain-image fine-tuning (no shifts, flips or cutout), and the options the
    recipe is written from carry both."""
    out = tmp_path / "opt"
    assert main(["optimize", str(trained), "--blocks", "0", "--ratios", "0.5", "--round-to", "16", "--augment", "off",
                 "--max-drop", "50", "--no-int8", *QUICK, "-o", str(out)]) == 0
    report = json.loads((out / "candidates" / "d0-r0.5" / "model.safetensors.json").read_text())
    params, channels = report["params"], report["channels"]
    assert params["round_to"] == 16 and params["augment"] == "off"
    assert (params["augmentation"]["crop_padding"], params["augmentation"]["hflip"],
            params["augmentation"]["cutout"]) == (0, False, 0)
    assert channels and all(after % 16 == 0 or after == before for before, after in channels.values())
    assert any(after < before for before, after in channels.values())
    rec = {c["id"]: c for c in json.loads((out / "optimize.json").read_text())["candidates"]}["d0-r0.5"]
    assert (rec["prune_options"]["round_to"], rec["prune_options"]["augment"]) == (16, "off")  # the recipe's source
