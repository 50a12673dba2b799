"""Every option of the Huffman stage (``compress huffman encode``), in one place (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import StageConfig, option

CODERS = ("huffman", "ans")
_C, _D = "coding", "accuracy of the decoded model"


@dataclass(kw_only=True)
class HuffmanConfig(StageConfig):
    """Options of ``compress huffman encode`` (the input model and the output path are arguments)."""

    coder: str = option("huffman", choices=CODERS, group=_C,
                        help="entropy coder of the weight and index streams: huffman (canonical, decodable "
                             "with numpy alone) or ans (constriction's range/ANS coder, within a fraction of a "
                             "percent of the entropy; needs constriction to decode)")
    linear_bits: int = option(8, check=(lambda v: 2 <= v <= 12, "must be between 2 and 12"), group=_C,
                              help="conv/linear weights without a k-means codebook are first quantized "
                                   "linearly to this many bits per tensor (symmetric, zero kept exact)")
    fold_bn: bool = option(True, group=_C,
                           help="fold each BatchNorm into the convolution before it (a per-channel scale "
                                "beside the codebook + one bias); --no-fold-bn stores BatchNorm as it is")
    vector_bits: int = option(16, choices=(16, 32), group=_C,
                              help="precision of the per-channel vectors (folded BatchNorm scales and biases, "
                                   "conv/linear biases): 16 rounds them to float16 values, stored in 2 bytes "
                                   "(the decoded model uses the rounded values), 32 keeps float32")
    min_weights: int = option(64, check=(lambda v: v >= 1, "must be >= 1"), group=_C,
                              help="conv/linear weights with fewer elements are stored raw (float32)")
    data: str | None = option(None, group=_D,
                              help="data set to measure the input and the decoded model on (default: the one "
                                   "the model was trained on; none recorded: accuracy is not measured)")
    data_root: str | None = option(None, group=_D, help="folder of the data set files (fashion-mnist, ...)")
    data_seed: int | None = option(None, group=_D, help="split seed (default: the training run's, else 0)")
    test: bool = option(True, group=_D, help="measure on the test split too (--no-test: validation only)")
    measure: bool = option(True, group=_D, help="measure accuracy at all (--no-measure: size report only)")
