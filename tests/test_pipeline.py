"""`compress pipeline`: recipe validation naming the line, the equivalent commands, skipping by
content hash, resume after an interruption or a deleted output, and the result served by serve/."""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from compress.cli import build_parser, main
from compress.errors import UserError
from compress.pipeline import load_recipe, parse_recipe, run_pipeline
from compress.pipeline.runner import default_bench_models, read_state, resolve_references
from compress.pipeline.stages import STAGE_TYPES
from tests.test_serve import digit_test_images, encode, make_client, wait_ready

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))

TINY = """\
name: tiny
data: digits
model: mobilenet_v2
defaults: {train_limit: 96, max_steps_per_epoch: 2}
stages:
  - train: {name: base, width_mult: 0.25, image_size: 16, epochs: 1, batch_size: 32, bn_recalibrate: 64}
  - prune: {name: pruned, ratio: 0.5, finetune: 1, bench: false}
  - export: {name: base_onnx, input: base}
  - export: {name: pruned_onnx, input: pruned}
  - quantize: {name: int8, int8: true, quant_format: qdq, types: s8s8, per_channel: on, calibration: minmax,
               calib_samples: 32, eval_samples: 64, min_agreement: 0.5, qat: off, budget: 0.05}
  - quantize: {name: k4, input: pruned, kmeans_bits: 4, finetune: 0}
  - huffman: {name: coded, coder: CODER}
  - bench: {batch: [1, 8], threads: [1], budget: 0.02, min_runs: 2, warmup: 1}
"""


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(UserError) as e:
        load_recipe(write_recipe(tmp_path, text))
    return str(e.value)


# ----------------------------------------------------------------------------- validation

HEAD = "name: t\ndata: digits\nstages:\n"


@pytest.mark.parametrize("body, line, words", [
    ("  - train: {}\n  - squash: {}\n", 5, "unknown stage 'squash'"),
    ("  - train:\n      epochs: 2\n      epocs: 3\n", 6, "unknown option 'epocs'"),
    ("  - train:\n      epochs: many\n", 5, "must be an integer"),
    ("  - train:\n      lr: -1\n", 5, "learning rate"),
    ("  - train: {}\n  - quantize:\n      finetune: 1\n", 5, "nothing to do"),
    ("  - train: {}\n  - prune:\n      analyze: true\n", 5, "not a pipeline stage"),
    ("  - train: {}\n  - export: {input: later}\n  - export: {name: later}\n", 5, "is a later stage"),
    ("  - train: {}\n  - export: {input: nowhere}\n", 5, "neither an earlier stage"),
    ("  - export: {}\n", 4, "needs an input"),
    ("  - train: {}\n  - train: {name: train}\n", 5, "two stages are named 'train'"),
    ("  - train: {}\n  - huffman: {input: train, models: [train]}\n", 5, "huffman takes no `models`"),
    ("  - train: {name: base}\n  - export: {name: x, input: base}\n  - prune: {input: x, ratio: 0.5}\n", 6,
     "makes a .onnx file; prune takes .safetensors"),
    ("  - train: {}\n  - distill: {student: a.safetensors}\n", 5, "as `input:`"),
    ("  - train: [1, 2]\n", 4, "must be a mapping"),
])
def test_recipe_errors_name_the_line(tmp_path, body, line, words):
    message = error_of(HEAD + body, tmp_path)
    assert f"recipe.yaml:{line}:" in message and words in message, message


def test_recipe_level_errors_name_the_line(tmp_path):
    assert "recipe.yaml:2: unknown recipe key 'stagez'" in error_of("name: t\nstagez: []\n", tmp_path)
    assert "recipe.yaml:2:" in error_of("name: t\nstages: []\n", tmp_path)
    assert "recipe.yaml:3: not valid YAML" in error_of("name: t\nstages:\n  - train: {epochs: [}\n", tmp_path)
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_bad_recipe_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_recipe(tmp_path, HEAD + "  - train: {epocs: 3}\n")
    assert main(["pipeline", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "recipe.yaml:4" in err and "epocs" in err
    assert not (tmp_path / "out").exists(), "nothing may be written before the recipe is valid"


def test_defaults_and_yaml_on_off_fill_the_configs(tmp_path):
    recipe = parse_recipe(HEAD.replace("data: digits", "data: digits\nmodel: resnet18\ndefaults: {data_seed: 3}")
                          + "  - train: {}\n  - quantize: {int8: true, per_channel: on, qat: off}\n")
    train, quant = recipe.stages
    assert train.config.model == "resnet18" and train.config.data == "digits" and train.config.data_seed == 3
    assert quant.config.per_channel == "on" and quant.config.qat == "off" and quant.config.data_seed == 3


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    resolve_references(recipe.stages)
    assert recipe.stages and all(s.config is not None for s in recipe.stages)


def test_required_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"mobilenetv2-digits", "mobilenetv2-fashion", "resnet18-deep-compression", "mobilenetv2-multilabel",
            "mobilenetv2-cifar10"} <= names


def test_default_inputs_and_bench_models():
    recipe = parse_recipe(TINY.replace("CODER", "huffman"))
    resolve_references(recipe.stages)
    by = {s.name: s for s in recipe.stages}
    assert by["int8"].input == "pruned_onnx"  # the latest output a quantize --int8 takes
    assert by["coded"].input == "k4"
    # an exported model stands for its .safetensors; one that was only Huffman-coded is left out
    assert by["bench"].models == ["base_onnx", "pruned_onnx", "int8", "coded"]
    demo = load_recipe(Path("recipes/mobilenetv2-digits.yaml"))
    resolve_references(demo.stages)
    assert demo.stages[-1].models == default_bench_models(demo.stages[:-1])
    assert demo.stages[-1].models[0] == "base_onnx", "the trained model is the baseline"


def test_distill_gets_train_as_teacher_and_previous_as_student():
    recipe = parse_recipe(HEAD + "  - train: {name: base}\n  - prune: {name: p, ratio: 0.5}\n"
                                 "  - distill: {epochs: 1}\n  - distill: {name: fresh, model: mobilenet_v2}\n")
    resolve_references(recipe.stages)
    d, fresh = recipe.stages[2:]
    assert (d.teacher, d.input) == ("base", "p")
    assert fresh.teacher == "base" and not fresh.type.needs_input(fresh.config)


# ----------------------------------------------------------------------------- a real run

def run(recipe_path: Path, out: Path, **kw):
    return run_pipeline(load_recipe(recipe_path), out, progress=False, say=lambda m: None, log=lambda m: None, **kw)


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != "pipeline.json"
            and not p.name.startswith("report") and p.name != ".pipeline.lock"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    recipe = write_recipe(folder, TINY.replace("CODER", "huffman"))
    out = folder / "out"
    result = run(recipe, out)
    return recipe, out, result


def test_every_stage_ran_and_left_its_output_and_report(tiny_run):
    recipe, out, result = tiny_run
    names = [s.name for s in load_recipe(recipe).stages]
    assert result.ran == names and result.skipped == []
    state = read_state(out)
    assert [r["name"] for r in state["stages"]] == names
    for r in state["stages"]:
        assert Path(r["output"]).is_file() and r["status"] == "ran", r
        assert r["report"] and Path(r["report"]).is_file(), r
    suffixes = {r["name"]: Path(r["output"]).suffix for r in state["stages"]}
    assert suffixes == {"base": ".safetensors", "pruned": ".safetensors", "base_onnx": ".onnx",
                        "pruned_onnx": ".onnx", "int8": ".onnx", "k4": ".safetensors", "coded": ".dcz",
                        "bench": ".json"}
    bench = json.loads((out / "bench.json").read_text())
    assert [Path(v["path"]).name for v in bench["variants"]] == ["base_onnx.onnx", "pruned_onnx.onnx",
                                                                 "int8.onnx", "coded.dcz"]
    assert {r["batch"] for r in bench["results"]} == {1, 8}
    assert state["bench"] == str(out / "bench.json") and state["finished"]
    assert result.report_html and result.report_html.is_file() and result.report_md.is_file()
    html, md = result.report_html.read_text(), result.report_md.read_text()
    for r in state["stages"]:
        assert r["name"] in html and r["name"] in md and r["command"].split()[1] in md
    assert html.count("data:image/png;base64,") >= 3, "accuracy plots and the per-layer plots are inlined"


def test_each_stage_command_fills_the_same_config(tiny_run):
    """The command printed for each stage, parsed by the real CLI, gives the Config the stage ran."""
    _recipe, out, _result = tiny_run
    for r in read_state(out)["stages"]:
        argv = shlex.split(r["command"])[1:]
        args = build_parser(argv).parse_args(argv)
        cls = STAGE_TYPES[r["type"]].config_class()
        assert json.loads(json.dumps(cls.from_args(args).to_dict())) == r["config"], r["name"]


def test_a_second_run_skips_everything_and_touches_nothing(tiny_run):
    recipe, out, _ = tiny_run
    before = mtimes(out)
    result = run(recipe, out)
    assert result.ran == [] and len(result.skipped) == 8
    assert mtimes(out) == before
    assert all(r["status"] == "skipped" for r in read_state(out)["stages"])


def test_deleted_output_reruns_its_stage_and_only_changed_downstream(tiny_run):
    recipe, out, _ = tiny_run
    int8_before = (out / "int8.onnx").read_bytes()
    (out / "pruned_onnx.onnx").unlink()
    result = run(recipe, out)
    assert result.ran[0] == "pruned_onnx" and "base" in result.skipped and "pruned" in result.skipped
    # the export is deterministic: its new file is the old one, so the INT8 stage after it is unchanged
    assert "int8" in result.skipped and (out / "int8.onnx").read_bytes() == int8_before


def test_changed_option_reruns_from_that_stage_and_an_interrupted_run_resumes(tiny_run, monkeypatch):
    recipe, out, _ = tiny_run
    edited = write_recipe(recipe.parent, TINY.replace("CODER", "ans"), "edited.yaml")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setitem(STAGE_TYPES, "bench", dataclasses.replace(STAGE_TYPES["bench"], run_fn=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run(edited, out)
    monkeypatch.undo()
    state = read_state(out)
    coded = next(r for r in state["stages"] if r["name"] == "coded")
    assert coded["status"] == "ran" and coded["config"]["coder"] == "ans"
    result = run(edited, out)
    assert result.ran == ["bench"], "the resumed run re-runs only what the interruption left undone"


def test_the_result_serves_through_serve(tiny_run):
    _recipe, out, _ = tiny_run
    images, _targets = digit_test_images()
    for name in ("int8.onnx", "coded.dcz"):
        with make_client(("m", out / name)) as client:
            wait_ready(client)
            r = client.post("/predict", files={"file": ("d.png", encode(images[0]), "image/png")})
            assert r.status_code == 200, r.text
            body = r.json()
            labels = client.get("/model").json()
            assert body["predictions"][0]["label"] in json.dumps(labels)


def test_force_names_must_be_stages(tiny_run):
    recipe, out, _ = tiny_run
    with pytest.raises(UserError, match="no such stage"):
        run(recipe, out, force=["nope"])


def test_input_inside_the_output_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    model = tmp_path / "out" / "mine.safetensors"
    model.write_bytes(b"x")
    recipe = write_recipe(tmp_path, HEAD + f"  - export: {{input: {model}}}\n")
    with pytest.raises(UserError, match="lies in the output folder"):
        run(recipe, tmp_path / "out")


def test_distill_stages_get_their_teacher_and_student(tmp_path):
    """Fine-tuning a pruned student and training a new one, both taught by the train stage; each
    stage's command parses back into the Config it ran with."""
    recipe = write_recipe(tmp_path, """\
name: tinyd
data: digits
defaults: {train_limit: 64, max_steps_per_epoch: 1}
stages:
  - train: {name: base, width_mult: 0.25, image_size: 16, epochs: 1, batch_size: 32, bn_recalibrate: 32}
  - prune: {name: pruned, ratio: 0.5, finetune: 0, bench: false}
  - distill: {name: healed, epochs: 1, batch_size: 32}
  - distill: {name: fresh, model: mobilenet_v2, width_mult: 0.25, image_size: 16, epochs: 1, batch_size: 32}
""")
    out = tmp_path / "out"
    run(recipe, out, report=False)
    records = {r["name"]: r for r in read_state(out)["stages"]}
    assert records["healed"]["inputs"] == {"model": str(out / "pruned.safetensors"),
                                          "teacher": str(out / "base.safetensors")}
    assert records["fresh"]["inputs"] == {"teacher": str(out / "base.safetensors")}
    assert records["healed"]["config"]["student"] == str(out / "pruned.safetensors")
    assert records["fresh"]["config"]["student"] is None and records["fresh"]["config"]["model"] == "mobilenet_v2"
    for r in records.values():
        argv = shlex.split(r["command"])[1:]
        args = build_parser(argv).parse_args(argv)
        cls = STAGE_TYPES[r["type"]].config_class()
        assert json.loads(json.dumps(cls.from_args(args).to_dict())) == r["config"], r["name"]


def test_output_folder_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    recipe = write_recipe(tmp_path, HEAD + "  - train: {}\n")
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main(["pipeline", str(recipe), "-o", str(taken)]) == 2
    assert "is a file" in capsys.readouterr().err and taken.read_text() == "mine"


def test_the_model_suggested_for_serving_is_onnx_runtimes_fastest(tmp_path):
    """A peer runtime's faster row for the same file does not count: the service runs ONNX Runtime."""
    from compress.commands.pipeline import serving_choice

    files = {n: tmp_path / f"{n}.onnx" for n in ("base", "pruned", "int8")}
    for p in files.values():
        p.write_bytes(b"x")
    variants = [{"model": n, "path": str(p)} for n, p in files.items()] + \
        [{"model": "pruned [openvino]", "path": str(files["pruned"])}]
    results = [{"model": "base", "engine": "onnxruntime", "batch": 1, "p50_ms": 1.0},
               {"model": "pruned", "engine": "onnxruntime", "batch": 1, "p50_ms": 0.75},
               {"model": "int8", "engine": "onnxruntime-int8", "batch": 1, "p50_ms": 0.6},
               {"model": "int8", "engine": "onnxruntime-int8", "batch": 8, "p50_ms": 9.0},
               {"model": "pruned [openvino]", "engine": "openvino", "batch": 1, "p50_ms": 0.5}]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"variants": variants, "results": results}))
    stages = [{"output": str(p)} for p in files.values()]
    assert serving_choice({"stages": stages, "bench": str(bench)}) == files["int8"]
    assert serving_choice({"stages": stages, "bench": None}) == files["int8"], "no bench: the last model made"
