"""The table `compress export` prints (also printed by `compress pipeline`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tables import format_table, human_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..export import ExportReport


def format_export(report: "ExportReport", static_shape: bool) -> str:
    """One row (file, size, opset, nodes, input shape, verification) and the export's notes."""
    diff = "-" if report.max_abs_diff is None else f"{report.max_abs_diff:.2e}"
    shape = "Nx{}x{}x{}".format(*report.input_size) if static_shape else f"Nx{report.input_size[0]}xHxW"
    table = format_table([{"onnx": str(report.path), "size": human_bytes(report.file_bytes), "opset": report.opset,
                           "nodes": report.nodes, "input": shape, "max abs diff": diff,
                           "verified on": report.verified_on}])
    return "\n".join([table, *(f"note: {note}" for note in report.notes)])
