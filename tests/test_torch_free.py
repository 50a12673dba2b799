"""The bottom layer is torch-free: opening, inspecting, running and timing an ONNX model (and
benchmarking ONNX files alone) never imports PyTorch, and neither does building a stage's Config
or the CLI's top-level help."""
import subprocess
import sys
import textwrap

import pytest
import torch

import models
from compress.artifact import ModelMeta
from compress.export import export_onnx


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25).eval()
    path = tmp_path_factory.mktemp("tf") / "m.onnx"
    export_onnx(model, ModelMeta.for_model(model, input_size=[3, 32, 32]), path, verify=False)
    return path


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing torch raises."""
    guard = textwrap.dedent("""
        import sys
        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch imported by the torch-free layer: " + name)
        sys.meta_path.insert(0, _NoTorch())
    """)
    return subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_onnx_side_needs_no_torch(onnx_file):
    proc = _run_without_torch(f"""
        from compress.formats import open_model_file
        from compress.onnx_graph import onnx_macs
        from compress.runtime import OnnxRunner, time_onnx, time_onnx_interleaved
        loaded = open_model_file({str(onnx_file)!r})
        assert loaded.meta.arch == "mobilenet_v2" and loaded.model is None
        assert time_onnx({str(onnx_file)!r}, batch=1, threads=1, runs=2).runs == 2
        a, b = time_onnx_interleaved([{str(onnx_file)!r}] * 2, 48, threads=1, runs=2)
        assert onnx_macs({str(onnx_file)!r}, (3, 32, 32)) > 0
        from compress.cli import main
        assert main(["bench", {str(onnx_file)!r}, "--threads", "1", "--min-runs", "2", "--budget", "0",
                     "--warmup", "0"]) == 0
        from compress.prune.config import PruneConfig
        from compress.training.config import TrainConfig
        from compress.bench import BenchConfig
        PruneConfig(ratio=0.5).validate(); TrainConfig().validate(); BenchConfig().validate()
        from compress.distill.config import DistillConfig
        DistillConfig(teacher="t.safetensors", model="pplcnet_x0_25").validate()
        assert main(["--help"]) == 0
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedup" in proc.stdout
