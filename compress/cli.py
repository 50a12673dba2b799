"""``compress``: one subcommand per stage. Each command module is a thin adapter: it declares its
arguments (``add_arguments``) and makes one library call (``run``), printing a short table.

Bad input raises ``UserError``; ``main`` turns it into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from . import __version__
from .errors import UserError

# name -> (module, one-line help). Modules are imported when argparse is built; they import
# heavy libraries (torch, onnxruntime) inside ``run`` only, so ``compress --help`` stays quick.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("compress.commands.models", "list architectures with parameters and MACs"),
    "train": ("compress.commands.train", "train a model from the zoo on a data set"),
    "eval": ("compress.commands.eval", "evaluate a model artifact on a data set"),
    "prune": ("compress.commands.prune", "structured / unstructured pruning with fine-tuning"),
    "export": ("compress.commands.export", "export a model artifact to ONNX (verified against PyTorch)"),
    "bench": ("compress.commands.bench", "compare latency, size and accuracy of model variants"),
    "serve": ("compress.commands.serve", "serve ONNX models over HTTP (FastAPI + ONNX Runtime)"),
    "loadtest": ("compress.commands.loadtest", "load-test a running service: req/s and latency percentiles"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="compress",
        description="Make lightweight image classifiers small and fast on CPU, and measure what it cost.\n"
                    "Stages: train → prune → distill → quantize → huffman → export → bench → serve.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:  # a stage not built yet
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        code = args._run(args)
    except UserError as e:
        print(f"compress {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"compress {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
