"""Huffman coding, Deep Compression's third stage (the container format itself is :mod:`dcz`,
numpy-only, so the service can read it without torch):

    config.py   HuffmanConfig: every option of ``compress huffman encode`` (torch-free)
    fold.py     BatchNorm folding for storage (Conv→BN pairs, per-channel scale + bias)
    api.py      the stage: encode_artifact → EncodeResult, decode_artifact, load_dcz

    from compress.huffman import HuffmanConfig, encode_artifact
    encode_artifact("k.safetensors", "model.dcz", HuffmanConfig())
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "HuffmanConfig": "config", "encode_artifact": "api", "decode_artifact": "api", "load_dcz": "api",
    "EncodeResult": "api", "DecodeResult": "api", "read_container": "api", "conv_bn_pairs": "fold",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
