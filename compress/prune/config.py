"""Every option of the prune stage, in one place (torch-free): ``compress prune`` derives its flags
from :class:`PruneConfig`, a pipeline fills it from YAML, library callers build it directly.

Modes (:meth:`PruneConfig.mode`): ``structured`` (``ratio``, ``ratio_file``, ``target_macs`` or
``target_latency_ms``), ``unstructured`` (``sparsity``) and ``analyze`` (the sensitivity analysis).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option, parse_count, parse_list
from ..distill.config import KDOptions
from ..errors import UserError

# Channel importance criteria (compress.prune.importance maps each name to a torch-pruning object).
METHODS = ("l1", "l2", "bn", "taylor", "lamp")
MODES = ("structured", "unstructured", "analyze")
ALLOCATIONS = ("uniform", "sensitivity")
AUGMENT = ("inherit", "off")

_S, _U, _A = "structured (channel) pruning", "unstructured (weight) pruning", "sensitivity analysis"
_F, _B = "fine-tuning and data", "report"
_D = "depth pruning (whole residual blocks)"
_open_unit = (lambda v: 0 < v < 1, "must satisfy 0 < ratio < 1")
_at_least_1 = (lambda v: v >= 1, "must be >= 1")
_at_least_0 = (lambda v: v >= 0, "must be >= 0")


@dataclass(kw_only=True)
class PruneConfig(KDOptions):
    """Options of ``compress prune`` (the input model and the output path are arguments)."""

    ratio: float | None = option(None, check=_open_unit, group=_S,
                                 help="channel ratio to remove, 0 < r < 1 (e.g. 0.5)")
    method: str = option("l2", choices=METHODS, parse=str.lower, group=_S, help="importance criterion")
    global_pruning: bool = option(False, flag="--global", group=_S,
                                  help="rank channels (or weights, with --sparsity) across all layers instead of "
                                       "per layer")
    steps: int = option(1, check=_at_least_1, group=_S, help="iterative pruning steps, fine-tuning between")
    step_epochs: int = option(1, check=_at_least_1, group=_S,
                              help="fine-tuning epochs between iterative steps when --finetune is given")
    round_to: int = option(8, check=_at_least_0, group=_S, help="keep channel counts multiples of this (0: off)")
    ignore: list[str] = option(default_factory=list, repeat=True, metavar="LAYER", group=_S,
                               help="layer names never pruned (the classifier always is protected)")
    allocate: str = option("uniform", choices=ALLOCATIONS, group=_S,
                           help="how --ratio is spread: uniform (every group loses the ratio) or sensitivity (the "
                                "analysis of --ratios on --analyze-samples validation images, then the groups "
                                "losing least accuracy per MAC saved at the timing size (--bench-input-size, "
                                "--bench-imagenet-stem) give more, until the uniform ratio's MACs are gone)")
    ratio_file: str | None = option(None, group=_S,
                                    help="JSON {layer: ratio} (from --analyze); other layers use --ratio")
    target_macs: float | None = option(None, parse=parse_count, check=(lambda v: v > 0, "must be > 0"), group=_S,
                                       help="search the ratio to reach these MACs (e.g. 20M)")
    target_latency_ms: float | None = option(None, check=(lambda v: v > 0, "must be > 0"), group=_S,
                                             help="search the ratio to reach this ONNX Runtime latency (batch 1, "
                                                  "2 threads, bench input size)")
    blocks: int = option(0, check=_at_least_0, group=_D,
                         help="depth pruning: remove this many residual blocks (x + f(x) becomes x), those whose "
                              "removal alone changes the outputs least (mean KL divergence on --analyze-samples "
                              "validation images); applied before channel pruning, so it combines with --ratio")
    drop_block: list[str] = option(default_factory=list, repeat=True, metavar="BLOCK", group=_D,
                                   help="remove this residual block by name (e.g. features.5; `compress prune "
                                        "--blocks` reports the candidates); repeatable")
    sparsity: float | None = option(None, check=(lambda v: 0 < v < 1, "must satisfy 0 < sparsity < 1"), group=_U,
                                    help="fraction of conv/linear weights to zero, 0 < s < 1")
    analyze: bool = option(False, group=_A, help="prune each layer group alone and report the accuracy drop")
    ratios: list[float] = option(default_factory=lambda: [0.1, 0.3, 0.5, 0.7], parse=parse_list(float),
                                 check=(lambda v: all(0 < r < 1 for r in v), "must all satisfy 0 < r < 1"),
                                 group=_A, metavar="R[,R...]", help="ratios to try per group")
    analyze_samples: int = option(0, check=_at_least_0, group=_A,
                                  help="evaluate each trial (of --analyze and of the --blocks ranking) on the first N "
                                       "validation samples (0 = all)")
    max_drop: float = option(1.0, check=_at_least_0, group=_A,
                             help="accuracy drop (points) allowed per group when writing the ratio file")
    finetune: int = option(0, check=_at_least_0, metavar="EPOCHS", group=_F, help="fine-tuning epochs after pruning")
    distill: bool = option(True, group=_F,
                           help="fine-tune with knowledge distillation from the unpruned model (the loss: "
                                "--kd-loss and the distillation options); --no-distill for the labels alone")
    augment: str = option("inherit", choices=AUGMENT, group=_F,
                          help="fine-tuning's image augmentation: inherit = the training run's flips, shifts and "
                               "cutout (from the model's history); off = the plain images, where a distilled "
                               "fine-tune computes the teacher's logits once")
    lr: float = option(0.01, check=(lambda v: v > 0, "must be > 0"), group=_F, help="fine-tuning learning rate")
    batch_size: int = option(64, check=_at_least_1, group=_F, help="fine-tuning batch size")
    max_steps_per_epoch: int = option(0, check=_at_least_0, group=_F, help="cap optimizer steps per epoch (0 = all)")
    data: str | None = option(None, group=_F, help="data spec (default: the one the model was trained on)")
    data_seed: int | None = option(None, group=_F, help="split seed (default: the training run's, else 0)")
    data_root: str | None = option(None, group=_F, help="folder for cifar10/cifar100")
    train_limit: int | None = option(None, check=_at_least_1, group=_F,
                                     help="use this many training samples (quick runs)")
    seed: int = option(0, group=_F, help="seed of fine-tuning and of the example input")
    test: bool = option(True, group=_B, help="measure test-split accuracy before and after for the report (--no-test: "
                                             "skip it, e.g. inside a search that must choose without the test split)")
    bench: bool = option(True, group=_B, help="time both models in ONNX Runtime (interleaved) for the report")
    bench_input_size: int | None = option(None, check=(lambda v: 8 <= v <= 1024, "must be between 8 and 1024"),
                                          group=_B, help="latency input side (default: the model's input size)")
    bench_imagenet_stem: bool = option(False, group=_B,
                                       help="time (and count MACs of) the same channel widths with the ImageNet "
                                            "stem (small_input=False): the architecture as deployed on e.g. "
                                            "224x224 photos")
    bench_runs: int = option(50, check=_at_least_1, group=_B, help="timed runs per model")

    def structured_options(self) -> list[str]:
        return [n for n, v in (("--ratio", self.ratio), ("--ratio-file", self.ratio_file),
                               ("--target-macs", self.target_macs),
                               ("--target-latency-ms", self.target_latency_ms)) if v is not None] + \
            (["--blocks"] if self.blocks else []) + (["--drop-block"] if self.drop_block else [])

    def mode(self) -> str:
        """structured | unstructured | analyze (after :meth:`check`)."""
        if self.analyze:
            return "analyze"
        return "unstructured" if self.sparsity is not None else "structured"

    def check(self) -> None:
        structured = self.structured_options()
        if self.analyze and self.sparsity is not None:
            raise UserError("--analyze and --sparsity are separate modes; give one")
        if self.sparsity is not None and structured:
            raise UserError(f"--sparsity (unstructured) cannot be combined with {', '.join(structured)}")
        targets = [n for n in structured if n.startswith("--target")]
        if len(targets) > 1:
            raise UserError("give one of --target-macs and --target-latency-ms")
        if self.blocks and self.drop_block:
            raise UserError("give --blocks (ranked on validation images) or --drop-block (named), not both")
        if targets and (self.ratio is not None or self.ratio_file):
            raise UserError(f"{targets[0]} searches the ratio itself; drop --ratio/--ratio-file")
        if self.allocate != "uniform" and (self.ratio is None or self.ratio_file or self.global_pruning
                                           or self.steps != 1):
            raise UserError(f"--allocate {self.allocate} spreads --ratio over the layers itself: give --ratio, without "
                            "--ratio-file, --global or --steps")
        if self.sparsity is not None and self.steps != 1:
            raise UserError("--steps is for structured pruning; --sparsity uses the AGP schedule over --finetune")
        if not (self.analyze or self.sparsity is not None or structured):
            raise UserError("nothing to do: give --ratio, --ratio-file, --target-macs, --target-latency-ms, "
                            "--blocks, --drop-block, --sparsity or --analyze")

    def distilling(self) -> bool:
        """Whether fine-tuning distils from the unpruned model (the default whenever it fine-tunes)."""
        return self.distill and self.finetune > 0

    def needs_data(self) -> bool:
        """Whether the stage needs a data set (fine-tuning, the analysis, Taylor importance, ranking
        blocks for --blocks)."""
        return (self.analyze or self.finetune > 0 or self.method == "taylor" or self.blocks > 0
                or self.allocate != "uniform")

    def bench_size(self, model_side: int) -> int | None:
        """The latency input side, or ``None`` when latency is not measured."""
        return int(self.bench_input_size or model_side) if self.bench else None
