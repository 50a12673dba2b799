"""Running a recipe: each stage's inputs resolved, its key (a hash of its type, options and the
content of its input files) compared with the last run's, the stage run or skipped, and the state
(OUT/pipeline.json) written after every stage so an interrupted run resumes where it stopped.

A stage is skipped when the last run recorded the same key and its output still exists with the
content recorded then; so deleting one output re-runs that stage, and the stages after it only if
its new output differs."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import __version__
from ..errors import UserError
from .recipe import Recipe, Stage
from .stages import MODEL_SUFFIXES

STATE_NAME = "pipeline.json"
Log = Callable[[str], None]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class PipelineResult:
    out_dir: Path
    state: dict[str, Any]
    report_html: Path | None = None
    report_md: Path | None = None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "ran": self.ran, "skipped": self.skipped,
                "report_html": str(self.report_html) if self.report_html else None,
                "report_md": str(self.report_md) if self.report_md else None, "state": self.state}


# ----------------------------------------------------------------------------- inputs

def default_bench_models(stages: list[Stage]) -> list[str]:
    """The stages a bench with no `models:` compares, baseline first: every model the pipeline made,
    a .safetensors that was exported standing for its ONNX file at its own place, one that was only
    Huffman-coded left out (its .dcz stands for it)."""
    by_input: dict[str, list[Stage]] = {}
    for s in stages:
        if s.type.name in ("export", "huffman") and s.input:
            by_input.setdefault(s.input, []).append(s)
    names: list[str] = []
    for s in stages:
        suffix = s.output_suffix
        if suffix not in MODEL_SUFFIXES:
            continue
        if s.type.name == "export" and s.input and any(st.name == s.input for st in stages):
            continue  # listed at its source's place
        if suffix == ".safetensors":
            consumers = by_input.get(s.name, [])
            exports = [c.name for c in consumers if c.type.name == "export"]
            if exports:
                names.extend(n for n in exports if n not in names)
                continue
            if any(c.type.name == "huffman" for c in consumers):
                continue
        if s.name not in names:
            names.append(s.name)
    return names


def resolve_references(stages: list[Stage]) -> None:
    """Fill every stage's default `input` (the latest earlier output it can take), distill's default
    `teacher` (the train stage) and bench's default `models`, as stage names."""
    for i, s in enumerate(stages):
        before = stages[:i]
        if not s.input and s.type.needs_input(s.config):
            accepts = s.type.accepts(s.config)
            s.input = next(b.name for b in reversed(before) if b.output_suffix in accepts)
        if s.type.name == "distill" and not s.teacher:
            s.teacher = next(b.name for b in before if b.type.name == "train")
        if s.type.name == "bench" and not s.models:
            s.models = default_bench_models(before)
            if not s.models:
                raise UserError(f"{s.name}: no earlier stage makes a model to bench; give `models:`")


def _path_of(ref: str, outputs: dict[str, Path]) -> Path:
    return outputs[ref] if ref in outputs else Path(ref)


def stage_inputs(stage: Stage, outputs: dict[str, Path]) -> dict[str, Any]:
    """Role → path (bench: "models" → list of paths)."""
    inputs: dict[str, Any] = {}
    if stage.input and (stage.type.name != "distill" or not stage.config.model):
        inputs["model"] = _path_of(stage.input, outputs)
    if stage.teacher:
        inputs["teacher"] = _path_of(stage.teacher, outputs)
    if stage.type.name == "bench":
        inputs["models"] = [_path_of(m, outputs) for m in stage.models]
    return inputs


def _input_files(inputs: dict[str, Any]) -> list[tuple[str, Path]]:
    files = []
    for role, value in inputs.items():
        for p in (value if isinstance(value, list) else [value]):
            files.append((role, Path(p)))
    return files


def stage_key(stage: Stage, options: dict[str, Any], inputs: dict[str, Any], hashes: dict[str, str]) -> str:
    """What decides whether a stage must run again: its type, options, input contents and our version."""
    files = [[role, hashes[str(p)]] for role, p in _input_files(inputs)]
    blob = json.dumps({"type": stage.type.name, "options": options, "inputs": files, "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- commands

def stage_command(stage: Stage, inputs: dict[str, Any], output: Path) -> str:
    """The `compress ...` command that does what this stage does."""
    # the options the recipe gave (never teacher/student: those are inputs), with their validated values
    flags = stage.type.config_class().argv({k: getattr(stage.config, k) for k in stage.options})
    model = [str(inputs["model"])] if "model" in inputs else []
    t = stage.type.name
    if t == "train":
        parts = ["compress", "train", *flags, "-o", str(output)]
    elif t == "distill":
        who = ["--teacher", str(inputs["teacher"])] + (["--student", *model] if model else [])
        parts = ["compress", "distill", *who, *flags, "-o", str(output)]
    elif t == "huffman":
        parts = ["compress", "huffman", "encode", *model, *flags, "-o", str(output)]
    elif t == "eval":
        parts = ["compress", "eval", *model, *flags, "--json", str(output)]
    elif t == "bench":
        parts = ["compress", "bench", *map(str, inputs["models"]), *flags, "--out", str(output.with_suffix(""))]
    else:
        parts = ["compress", t, *model, *flags, "-o", str(output)]
    return shlex.join(parts)


# ----------------------------------------------------------------------------- state

@contextlib.contextmanager
def locked(out_dir: Path, command: str = "pipeline") -> Iterator[None]:
    """Hold ``OUT/.COMMAND.lock`` while ``compress COMMAND`` writes into ``out_dir``; a second run
    in the same folder is a one-line :class:`UserError`."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f".{command}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `compress {command}` is running in {out_dir}; wait for it or use another "
                            f"-o folder") from None
        yield


def read_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE_NAME
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # unreadable: every stage runs again
    return state if isinstance(state, dict) else {}


def _reusable(record: dict[str, Any] | None, key: str, output: Path) -> bool:
    if not record or record.get("key") != key or not output.is_file():
        return False
    report = record.get("report")
    if report and not Path(report).is_file():
        return False
    return file_sha256(output) == record.get("output_sha256")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the run

def plan_outputs(recipe: Recipe, out_dir: Path) -> dict[str, Path]:
    return {s.name: out_dir / f"{s.name}{s.output_suffix}" for s in recipe.stages}


def run_pipeline(recipe: Recipe, out_dir: str | Path | None = None, *, force: bool | list[str] = False,
                 dry_run: bool = False, progress: bool = True, report: bool = True,
                 say: Log = lambda m: print(m, flush=True), log: Log | None = None) -> PipelineResult:
    """Run ``recipe`` into ``out_dir`` (default: the recipe's `out`, else runs/<name>): every stage
    whose key changed (or, with ``force``, every stage, or the named ones), skipping the rest."""
    from ..sysinfo import machine_info

    out = Path(out_dir or recipe.out or Path("runs") / recipe.name)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file; give a folder with -o")
    stages = recipe.stages
    resolve_references(stages)
    outputs = plan_outputs(recipe, out)
    for s in stages:
        for ref in ([s.input] if s.input else []) + ([s.teacher] if s.teacher else []) + s.models:
            if ref not in outputs and Path(ref).resolve().parent == out.resolve():
                raise UserError(f"{s.name}: input {ref} lies in the output folder {out}, where the pipeline writes; "
                                f"copy it elsewhere")
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    forced = set(s.name for s in stages) if force is True else set(force or [])
    unknown = forced - set(outputs)
    if unknown:
        raise UserError(f"--force {', '.join(sorted(unknown))}: no such stage; stages: {', '.join(outputs)}")
    with (contextlib.nullcontext() if dry_run else locked(out)):
        previous = read_state(out)
        old_records = {r.get("name"): r for r in previous.get("stages", []) if isinstance(r, dict)}
        started = time.perf_counter()
        state: dict[str, Any] = {"recipe": recipe.to_dict(), "out_dir": str(out), "command": _pipeline_command(recipe, out),
                                 "machine": machine_info(), "started": _now(), "finished": None, "seconds": None,
                                 "version": __version__, "stages": [], "bench": None}
        result = PipelineResult(out, state)
        for i, stage in enumerate(stages, 1):
            output = outputs[stage.name]
            inputs = stage_inputs(stage, outputs)
            missing = [str(p) for _r, p in _input_files(inputs) if not p.is_file()]
            if missing and dry_run:
                say(f"[{i}/{len(stages)}] {stage.name} ({stage.type.name}): will run (after its inputs exist)")
                continue
            if missing:
                raise UserError(f"{stage.name}: input not found: {missing[0]}")
            hashes = {str(p): file_sha256(p) for _r, p in _input_files(inputs)}
            options = {**stage.options, **stage.type.injected(inputs)}
            key = stage_key(stage, stage.options, inputs, hashes)
            record = old_records.get(stage.name)
            header = f"[{i}/{len(stages)}] {stage.name} ({stage.type.name}) -> {output}"
            if stage.name not in forced and _reusable(record, key, output):
                say(f"\n== {header}: unchanged, skipped ==")
                rec = {**record, "status": "skipped"}
                result.skipped.append(stage.name)
            elif dry_run:
                say(f"[{i}/{len(stages)}] {stage.name} ({stage.type.name}): will run")
                continue
            else:
                command = stage_command(stage, inputs, output)
                say(f"\n== {header} ==\n$ {command}")
                config = stage.type.config_class().from_dict(options, where=f"{recipe.path}:{stage.line}: {stage.name}")
                t0 = time.perf_counter()
                run = stage.type.run_fn(config, inputs, output, progress, log)
                seconds = time.perf_counter() - t0
                say(run.table)
                rec = {"name": stage.name, "type": stage.type.name, "mode": stage.mode, "status": "ran",
                       "line": stage.line, "key": key,
                       "inputs": {r: ([str(p) for p in v] if isinstance(v, list) else str(v)) for r, v in inputs.items()},
                       "input_sha256": hashes, "output": str(output), "output_sha256": file_sha256(output),
                       "report": str(run.report) if run.report else None, "seconds": round(seconds, 2),
                       "command": command, "config": config.to_dict(), "finished": _now()}
                result.ran.append(stage.name)
            state["stages"].append(rec)
            if stage.type.name == "bench":
                state["bench"] = rec["output"]
            if not dry_run:
                _save_state(out, state, old_records, stages[i:])
        if dry_run:
            return result
        state["finished"] = _now()
        state["seconds"] = round(time.perf_counter() - started, 2)
        _save_state(out, state, {}, [])
        if report:
            result.report_html, result.report_md = _write_report(out, state)
        return result


def _pipeline_command(recipe: Recipe, out: Path) -> str:
    return shlex.join(["compress", "pipeline", str(recipe.path), "-o", str(out)])


def _save_state(out: Path, state: dict[str, Any], old_records: dict[str, dict], remaining: list[Stage]) -> None:
    """The state now: this run's records, then the last run's records of the stages still to come
    (so an interrupted run resumes from them)."""
    from ..io import write_json

    later = [old_records[s.name] for s in remaining if s.name in old_records]
    write_json(out / STATE_NAME, {**state, "stages": state["stages"] + later})


def _write_report(out: Path, state: dict[str, Any]) -> tuple[Path | None, Path | None]:
    """report.html and report.md; a failure to write them (a full disk) is a warning, not a lost run."""
    from ..report.pipeline import write_pipeline_report

    try:
        return write_pipeline_report(out, state)
    except OSError as e:
        print(f"warning: the report was not written: {e}", file=sys.stderr)
        return None, None
