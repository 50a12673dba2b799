"""Quantization, one module per concern:

    config.py   QuantizeConfig: every option of the stage (torch-free; the CLI derives its flags)
    calib.py    calibration / held-out / test images, preprocessed as the service does (quantization_data)
    int8.py     ONNX Runtime INT8: pre-processing, candidates, interleaved timing, agreement, the search
                and its sensitivity fallback (torch-free)
    biascorr.py bias correction: the mean output shift of INT8 weight rounding taken out of the biases
    api.py      the INT8 stage: quantize_artifact → QuantizeResult
    kmeans.py   Deep Compression's trained quantization: k-means weight sharing (kmeans_artifact)

    from compress.quantize import QuantizeConfig, quantize_artifact
    quantize_artifact("base.onnx", "base.int8.onnx", QuantizeConfig(int8=True))
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "QuantizeConfig": "config", "quantization_data": "calib", "ArrayReader": "calib", "QuantData": "calib",
    "quantize_artifact": "api", "QuantizeResult": "api", "QuantizationRefused": "int8", "Candidate": "int8",
    "search": "int8", "node_sensitivity": "int8", "kmeans_artifact": "kmeans",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
