"""The stage types a recipe can name: which Config fills each, what it takes and makes, and how
the runner calls the stage's library function (the same one its command calls) and prints the
command's own table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError

MODEL_SUFFIXES = (".safetensors", ".onnx", ".dcz")


@dataclass
class StageRun:
    """What running a stage left behind: its report (JSON) and the table its command prints."""

    report: Path | None
    table: str


@dataclass(frozen=True)
class StageType:
    name: str
    config_path: str  # "module:Class", imported on first use (the Configs may import torch)
    run_fn: Callable[..., StageRun]
    inputs: tuple[str, ...] = (".safetensors",)  # what `input` may be; () = takes none
    output: str | Callable[[Any], str] = ".safetensors"
    pipeline_keys: tuple[str, ...] = ("input",)

    def config_class(self):
        import importlib

        module, cls = self.config_path.split(":")
        return getattr(importlib.import_module(module), cls)

    def mode(self, config) -> str | None:
        return config.mode() if hasattr(config, "mode") else None

    def output_suffix(self, config) -> str:
        return self.output(config) if callable(self.output) else self.output

    def accepts(self, config) -> tuple[str, ...]:
        if self.name == "quantize" and config.mode() == "kmeans":
            return (".safetensors",)
        return self.inputs

    def needs_input(self, config) -> bool:
        if self.name == "distill":
            return not config.model  # a new student (`model:`) starts from scratch
        return bool(self.inputs) and self.name != "bench"

    def injected(self, inputs: dict[str, Path]) -> dict[str, Any]:
        """Options the runner fills from the resolved inputs (distill's teacher and student)."""
        if self.name != "distill":
            return {}
        out = {"teacher": str(inputs["teacher"])}
        if "model" in inputs:
            out["student"] = str(inputs["model"])
        return out

    def placeholders(self, options: dict[str, Any]) -> dict[str, Any]:
        """Stand-ins for the injected options while a recipe is validated (no file exists yet)."""
        if self.name != "distill":
            return {}
        return {"teacher": "<teacher>", **({} if options.get("model") else {"student": "<input>"})}

    def check(self, config, where: str) -> None:
        if self.name == "prune" and config.mode() == "analyze":
            raise UserError(f"{where}: the sensitivity analysis is not a pipeline stage; run `compress prune "
                            f"--analyze` once and give its ratio file as `ratio_file:`")


# ----------------------------------------------------------------------------- the stage calls

def _train(config, inputs, output: Path, progress: bool, log) -> StageRun:
    from ..report.train import format_train
    from ..training.api import train

    result = train(output, config, progress=progress)
    return StageRun(result.report_path, format_train(result.report, config.image_size))


def _distill(config, inputs, output: Path, progress: bool, log) -> StageRun:
    from ..distill.api import distill
    from ..report.train import format_distill

    result = distill(output, config, progress=progress)
    return StageRun(result.report_path, format_distill(result.report))


def _prune(config, inputs, output: Path, progress: bool, log) -> StageRun:
    from ..prune.api import prune_artifact
    from ..report.prune import format_prune

    result = prune_artifact(inputs["model"], output, config, log=log, progress=progress)
    return StageRun(result.report_path, format_prune(result))


def _export(config, inputs, output: Path, progress: bool, log) -> StageRun:
    from ..export import export_artifact
    from ..io import sidecar
    from ..report.export import format_export

    table = format_export(export_artifact(inputs["model"], output, config), config.static_shape)
    report = sidecar(output)
    return StageRun(report if report.is_file() else None, table)


def _quantize(config, inputs, output: Path, progress: bool, log) -> StageRun:
    if config.mode() == "kmeans":
        from ..quantize.kmeans import kmeans_artifact
        from ..report.kmeans import format_kmeans

        result = kmeans_artifact(inputs["model"], output, config, log=log, progress=progress)
        return StageRun(result.report_path, format_kmeans(result))
    from ..quantize.api import quantize_artifact
    from ..quantize.int8 import QuantizationRefused
    from ..report.quantize import format_quantize

    try:
        result = quantize_artifact(inputs["model"], output, config, log=log)
    except QuantizationRefused as e:
        if e.result is not None:
            print(format_quantize(e.result))
        raise
    return StageRun(result.report_path, format_quantize(result))


def _huffman(config, inputs, output: Path, progress: bool, log) -> StageRun:
    from ..huffman.api import encode_artifact
    from ..report.huffman import format_encode

    result = encode_artifact(inputs["model"], output, config, log=log)
    return StageRun(result.report_path, format_encode(result))


def _eval(config, inputs, output: Path, progress: bool, log) -> StageRun:
    from ..evaluate import evaluate_artifact
    from ..report.evaluate import format_eval

    return StageRun(output, format_eval(evaluate_artifact(inputs["model"], config, report_path=output)))


def _bench(config, inputs, output: Path, progress: bool, log) -> StageRun:
    from ..bench.api import run_benchmark
    from ..report.bench import format_report, write_report

    models = inputs["models"]
    report = run_benchmark(models, config, progress=log)
    write_report(report, output.with_suffix(""), plot=config.plot)
    return StageRun(output, format_report(report))


def _quantize_output(config) -> str:
    return ".safetensors" if config.mode() == "kmeans" else ".onnx"


STAGE_TYPES: dict[str, StageType] = {t.name: t for t in (
    StageType("train", "compress.training.api:TrainStageConfig", _train, inputs=(), pipeline_keys=()),
    StageType("distill", "compress.distill.config:DistillConfig", _distill, pipeline_keys=("input", "teacher")),
    StageType("prune", "compress.prune.config:PruneConfig", _prune),
    StageType("export", "compress.export:ExportConfig", _export, output=".onnx"),
    StageType("quantize", "compress.quantize.config:QuantizeConfig", _quantize, inputs=(".onnx", ".safetensors"),
              output=_quantize_output),
    StageType("huffman", "compress.huffman.config:HuffmanConfig", _huffman, output=".dcz"),
    StageType("eval", "compress.evaluate:EvalConfig", _eval, inputs=(".safetensors", ".dcz"), output=".json"),
    StageType("bench", "compress.bench.api:BenchConfig", _bench, inputs=MODEL_SUFFIXES, output=".json",
              pipeline_keys=("models",)),
)}
