"""``compress``: one subcommand per stage. Each command module is a thin adapter: it declares its
arguments (``add_arguments``, mostly derived from the stage's Config), fills the Config, makes
one library call (``run``) and prints a short table.

Bad input raises ``UserError``; ``main`` turns it into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from . import __version__
from .errors import UserError

# name -> (module, one-line help). Only the module of the command being run is imported (its
# Config may import torch), so ``compress --help`` and every other command's start stay quick.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("compress.commands.models", "list architectures with parameters and MACs"),
    "train": ("compress.commands.train", "train a model from the zoo on a data set"),
    "eval": ("compress.commands.eval", "evaluate a model artifact on a data set"),
    "prune": ("compress.commands.prune", "structured / unstructured pruning with fine-tuning"),
    "distill": ("compress.commands.distill", "knowledge distillation: Hinton KD, DKD, DIST, feature hints"),
    "quantize": ("compress.commands.quantize", "INT8 for ONNX Runtime (searched on this CPU), k-means weight sharing"),
    "huffman": ("compress.commands.huffman", "Huffman-code a model into a .dcz container (Deep Compression), or decode one"),
    "export": ("compress.commands.export", "export a model artifact to ONNX (verified against PyTorch)"),
    "bench": ("compress.commands.bench", "compare latency, size and accuracy of model variants"),
    "pipeline": ("compress.commands.pipeline", "run a YAML recipe of stages, skipping what did not change"),
    "optimize": ("compress.commands.optimize", "search pruning, INT8 and weight coding for the fastest or smallest "
                                               "model within an accuracy budget"),
    "serve": ("compress.commands.serve", "serve ONNX models over HTTP (FastAPI + ONNX Runtime)"),
    "loadtest": ("compress.commands.loadtest", "load-test a running service: req/s and latency percentiles"),
    "embed": ("compress.commands.embed", "penultimate-layer embeddings, their t-SNE map, what compression did to them"),
    "fewshot": ("compress.commands.fewshot", "N-way K-shot accuracy of new classes by nearest prototype, no retraining"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _chosen_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), if any."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser for ``argv``'s subcommand; the others are listed by name and help only
    (``argv=None``: every subcommand gets its arguments)."""
    parser = _Parser(
        prog="compress",
        description="Make lightweight image classifiers small and fast on CPU, and measure what it cost.\n"
                    "Stages: train → prune → distill → quantize → huffman → export → bench → serve.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = None if argv is None else _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:  # a stage not built yet
            continue
        if argv is not None and name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a one-line usage error (already printed)
        return e.code if isinstance(e.code, int) else 2
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
