"""Huffman coding, Deep Compression's third stage (the container format itself is :mod:`dcz`,
numpy-only, so the service can read it without torch; BatchNorm folding is :mod:`compress.fold`):

    config.py   HuffmanConfig: every option of ``compress huffman encode`` (torch-free)
    api.py      the stage: encode_artifact → EncodeResult, decode_artifact, load_dcz

    from compress.huffman import HuffmanConfig, encode_artifact
    encode_artifact("k.safetensors", "model.dcz", HuffmanConfig())
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "HuffmanConfig": "config", "encode_artifact": "api", "decode_artifact": "api", "load_dcz": "api",
    "EncodeResult": "api", "DecodeResult": "api", "read_container": "api", 
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
