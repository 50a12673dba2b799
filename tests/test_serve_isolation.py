"""serve/ runs without torch and without the compression code: a fresh interpreter in which any
import of torch, torchvision, compress or models fails starts the app and answers /predict, and
no serve module names them in an import statement."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.test_serve import digits_onnx, multilabel_onnx  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "compress", "models")

BLOCKED_RUN = r'''
import sys, time
FORBIDDEN = {forbidden!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())
from fastapi.testclient import TestClient
from serve import ModelSpec, Settings, create_app
from serve.cli import build_parser
build_parser()
app = create_app(Settings(models=(ModelSpec("digits", {onnx!r}),)))
with TestClient(app) as c:
    for _ in range(500):
        if c.get("/readyz").status_code == 200:
            break
        time.sleep(0.01)
    from PIL import Image
    import io
    buf = io.BytesIO(); Image.new("L", (8, 8), 200).save(buf, "PNG")
    r = c.post("/predict", content=buf.getvalue(), headers={{"content-type": "image/png"}})
    assert r.status_code == 200, r.text
    assert c.post("/v2/models/digits/infer", json={{"inputs": [{{"name": "input", "shape": [1, 3, 8, 8],
        "datatype": "FP32", "data": [0.0] * 192}}]}}).status_code == 200
    import serve.loadtest  # noqa: F401  (the load tester is torch-free too)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
assert not loaded, loaded
print("served without torch")
'''


def test_service_starts_and_answers_with_torch_and_compress_unavailable(digits_onnx):  # noqa: F811
    code = BLOCKED_RUN.format(forbidden=FORBIDDEN, onnx=str(digits_onnx))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "served without torch" in out.stdout


def test_python_m_serve_help_without_torch():
    code = ("import sys, runpy\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {FORBIDDEN!r}: raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "sys.argv = ['serve', '--help']\n"
            "runpy.run_module('serve', run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--max-batch" in out.stdout


def test_no_serve_module_imports_torch_or_compress():
    offenders = []
    for path in sorted((ROOT / "serve").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
