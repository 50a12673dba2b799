"""Run a recipe: the stages it names (train → prune → distill → quantize → huffman → export →
bench, any subset, in the order given), each filled from YAML exactly as its command fills it from
flags, all checked before any work starts (an error names the recipe's line).

Every output lands in OUT (default: the recipe's `out:`, else runs/<recipe name>) as
OUT/<stage name>.<ext> with the stage's own JSON report beside it. OUT/pipeline.json records
each stage's key: a hash of its options and of its input files' content. Running the recipe
again skips every stage whose key did not change and whose output is intact, so an edited
option re-runs that stage and the ones after it, a deleted output re-runs its stage, and an
interrupted run resumes. At the end: OUT/report.html (one self-contained page) and OUT/report.md.

    compress pipeline recipes/mobilenetv2-digits.yaml
    compress pipeline recipes/mobilenetv2-fashion.yaml -o runs/fashion --dry-run   # what would run
    compress pipeline recipes/mobilenetv2-digits.yaml --force prune               # re-run one stage

A stage in a recipe is `- TYPE: {options}`; the options are its command's flags with '_' for '-'
(see `compress TYPE --help`), plus `name`, `input` (an earlier stage or a file), `teacher`
(distill) and `models` (bench). See recipes/ for complete examples.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="the recipe (YAML)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: the recipe's `out:`, else runs/NAME)")
    p.add_argument("--force", nargs="*", metavar="STAGE", default=None,
                   help="re-run these stages even if unchanged (no names: every stage)")
    p.add_argument("--dry-run", action="store_true", help="check the recipe and say which stages would run")
    p.add_argument("--no-report", action="store_true", help="do not write report.html / report.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import load_recipe, run_pipeline

    recipe = load_recipe(args.recipe)
    force = True if args.force == [] else (args.force or False)
    result = run_pipeline(recipe, args.out, force=force, dry_run=args.dry_run, progress=not args.no_progress,
                          report=not args.no_report)
    if args.dry_run:
        print(f"recipe {recipe.path}: {len(recipe.stages)} stages, valid; outputs in {result.out_dir}")
        return 0
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    from ..report import format_table, human_bytes

    rows = []
    for r in result.state["stages"]:
        out = Path(r["output"])
        rows.append({"stage": r["name"], "type": r["type"], "status": r["status"], "seconds": r.get("seconds"),
                     "output": str(out), "size": human_bytes(out.stat().st_size) if out.is_file() else "-"})
    print("\n" + format_table(rows, ["stage", "type", "status", "seconds", "output", "size"]))
    print(f"{len(result.ran)} ran, {len(result.skipped)} unchanged (skipped); "
          f"{result.state['seconds']:.0f} s; state in {result.out_dir}/pipeline.json")
    bench = result.state.get("bench")
    if bench and Path(bench).is_file():
        import json

        from ..report.bench import format_comparison

        print("\n" + format_comparison(json.loads(Path(bench).read_text())))
    if result.report_html:
        print(f"report: {result.report_html} (and {result.report_md})")
    model = serving_choice(result.state)
    if model is not None:
        name = model.stem.replace(".", "_")
        mount = model.resolve() if model.is_absolute() else f"$PWD/{model}"
        print(f"serve it:  compress serve {model} --port 8000      (then: curl -F file=@image.png "
              f"http://127.0.0.1:8000/predict)")
        print(f"in Docker: make docker && docker run --rm -p 8000:8000 -v \"{mount}:/models/{name}{model.suffix}:ro\" "
              f"deepcompress-serve")
    sys.stdout.flush()


def serving_choice(state: dict) -> Path | None:
    """The model to serve: the ONNX or .dcz file ONNX Runtime ran fastest at batch 1 in the run's
    bench (not a peer runtime's row for the same file), else the last one the run made."""
    import json

    files = [Path(r["output"]) for r in state["stages"] if r["output"].endswith((".onnx", ".dcz"))]
    if state.get("bench") and Path(state["bench"]).is_file():
        bench = json.loads(Path(state["bench"]).read_text())
        results, variants = bench.get("results", []), bench.get("variants", [])
        paths = {v["model"]: Path(v["path"]) for v in variants}
        timed = [(r["p50_ms"], paths.get(r["model"])) for r in results  # the service runs ONNX Runtime
                 if r.get("batch") == 1 and str(r.get("engine", "")).startswith("onnxruntime")]
        timed = [(t, p) for t, p in timed if p is not None and p.suffix in (".onnx", ".dcz") and p.is_file()]
        if timed:
            return min(timed, key=lambda tp: tp[0])[1]
    return files[-1] if files else None
