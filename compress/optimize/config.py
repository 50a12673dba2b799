"""Every option of ``compress optimize`` (torch-free): the search space per objective, the accuracy
budget, how latency is measured, and how long the search may take."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import StageConfig, option, parse_list
from ..prune.config import AUGMENT

OBJECTIVES = ("latency", "size")
ALLOCATIONS = ("uniform", "sensitivity")  # as compress.prune.config.ALLOCATIONS (this module stays torch-free)

_S, _L, _Z, _F, _T = ("search", "latency objective (structured: depth, width, INT8, threads)",
                      "size objective (sparsity, k-means bits, Huffman)", "fine-tuning and data", "timing")
_at_least_0 = (lambda v: v >= 0, "must be >= 0")
_at_least_1 = (lambda v: v >= 1, "must be >= 1")


@dataclass(kw_only=True)
class OptimizeConfig(StageConfig):
    """Options of ``compress optimize`` (the input model and the output folder are arguments)."""

    objective: str = option("latency", choices=OBJECTIVES, group=_S,
                            help="latency: the fastest variant on this CPU; size: the smallest file")
    max_drop: float = option(1.0, check=_at_least_0, group=_S,
                             help="accuracy budget: points of validation accuracy the chosen variant may lose")
    budget_minutes: float = option(0.0, check=_at_least_0, group=_S,
                                   help="start no new candidate after this many minutes (0: no limit); finished "
                                        "candidates are kept, so a second run resumes")
    hopeless: float = option(2.0, check=(lambda v: v >= 1, "must be >= 1"), group=_S,
                             help="a candidate losing more than max-drop x this after fine-tuning stops its branch: "
                                  "the more aggressive settings of the same kind are skipped")
    blocks: list[int] = option(default_factory=lambda: [0, 2, 4], parse=parse_list(int),
                               check=(lambda v: all(b >= 0 for b in v), "must all be >= 0"), group=_L,
                               metavar="N[,N...]", help="residual blocks to remove (depth pruning) per candidate")
    ratios: list[float] = option(default_factory=lambda: [0.0, 0.3, 0.5, 0.7], parse=parse_list(float),
                                 check=(lambda v: all(0 <= r < 1 for r in v), "must all satisfy 0 <= r < 1"),
                                 group=_L, metavar="R[,R...]", help="channel ratios to remove (width pruning)")
    allocate: list[str] = option(default_factory=lambda: ["uniform"], parse=parse_list(str),
                                 check=(lambda v: bool(v) and all(a in ALLOCATIONS for a in v),
                                        f"must be a list of {', '.join(ALLOCATIONS)}"), group=_L,
                                 metavar="A[,A...]",
                                 help="how each ratio is spread over the layers: uniform, sensitivity (per-layer "
                                      "ratios from the sensitivity analysis, spending the uniform ratio's MACs at "
                                      "the timing size where accuracy is cheapest: prune --allocate), or both")
    int8: bool = option(True, group=_L, help="also try ONNX Runtime static INT8 of every candidate (searched on "
                                             "this CPU; accuracy measured on the validation split)")
    int8_min_agreement: float = option(0.98, check=(lambda v: 0 < v <= 1, "must be in (0, 1]"), group=_L,
                                       help="INT8 configurations agreeing less than this with the candidate's fp32 "
                                            "top-1 are not kept (the accuracy budget then judges the rest)")
    sparsities: list[float] = option(default_factory=lambda: [0.5, 0.7, 0.85], parse=parse_list(float),
                                     check=(lambda v: all(0 <= s < 1 for s in v), "must all satisfy 0 <= s < 1"),
                                     group=_Z, metavar="S[,S...]", help="unstructured sparsities (0: none)")
    bits: list[int] = option(default_factory=lambda: [4, 5], parse=parse_list(int),
                             check=(lambda v: all(1 <= b <= 8 for b in v), "must all be between 1 and 8"),
                             group=_Z, metavar="B[,B...]", help="k-means bits per weight (then Huffman coding)")
    finetune: int = option(2, check=_at_least_0, metavar="EPOCHS", group=_F,
                           help="distilled fine-tuning epochs of every pruned candidate (and of k-means)")
    augment: str = option("inherit", choices=AUGMENT, group=_F,
                          help="fine-tuning's image augmentation: the training run's (inherit) or none (off; "
                               "`compress prune --augment`)")
    round_to: int = option(8, check=_at_least_0, group=_L,
                           help="pruned layers keep a multiple of this many channels (`compress prune --round-to`; "
                                "16 is faster on AVX-512 CPUs, README)")
    lr: float = option(0.01, check=(lambda v: v > 0, "must be > 0"), group=_F, help="fine-tuning learning rate")
    batch_size: int = option(64, check=_at_least_1, group=_F, help="fine-tuning batch size")
    max_steps_per_epoch: int = option(0, check=_at_least_0, group=_F, help="cap optimizer steps per epoch (0 = all)")
    data: str | None = option(None, group=_F, help="data spec (default: the one the model was trained on)")
    data_seed: int | None = option(None, group=_F, help="split seed (default: the training run's, else 0)")
    data_root: str | None = option(None, group=_F, help="folder of the data set files")
    train_limit: int | None = option(None, check=_at_least_1, group=_F,
                                     help="use this many training samples (quick runs)")
    rank_samples: int = option(1000, check=_at_least_0, group=_F,
                               help="validation images that rank residual blocks for depth pruning (0 = all)")
    seed: int = option(0, group=_F, help="seed of fine-tuning")
    threads: int = option(2, check=_at_least_1, group=_T,
                          help="intra-op threads available; every count from 1 to this is timed and the fastest kept")
    batch: int = option(1, check=_at_least_1, group=_T, help="batch size when timing")
    input_size: int | None = option(None, check=(lambda v: 8 <= v <= 1024, "must be between 8 and 1024"), group=_T,
                                    help="latency input side (default: the model's input size)")
    imagenet_stem: bool = option(False, group=_T,
                                 help="time the same widths with the ImageNet stem (small_input=False), the "
                                      "architecture as deployed on e.g. 224x224 photos; accuracy stays that of "
                                      "the trained model")
    runs: int = option(100, check=_at_least_1, group=_T, help="timed interleaved rounds per thread count")

    def candidates(self) -> list[tuple]:
        """The grid of the objective, least aggressive first: (blocks, ratio) with uniform ratios,
        (blocks, ratio, allocation) otherwise, or (sparsity, bits)."""
        if self.objective == "latency":
            allocs = list(dict.fromkeys(self.allocate))
            return [(b, r) if a == "uniform" else (b, r, a) for b in sorted(set(self.blocks))
                    for r in sorted(set(self.ratios)) for a in (allocs if r else ["uniform"])]
        return [(s, b) for b in sorted(set(self.bits), reverse=True) for s in sorted(set(self.sparsities))]
