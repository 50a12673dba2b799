"""The service as users start it: ``python -m serve`` and ``compress serve`` in a real process on a
loopback port — help texts, one-line errors with exit code 2, an unmodified Triton client speaking
the Open Inference Protocol to it, and two worker processes sharing one /metrics."""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_serve import digit_test_images, digits_onnx, encode, multilabel_onnx  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
COMPRESS = [sys.executable, "-m", "compress"]
SERVE = [sys.executable, "-m", "serve"]
OPTIONS = ["--model", "--host", "--port", "--workers", "--threads", "--ort-spinning", "--max-batch", "--max-wait-ms",
           "--max-queue", "--timeout", "--max-upload-mb", "--max-pixels", "--max-files", "--top-k", "--api-key",
           "--inline-max-ms", "--classes-dir", "--log-level", "--access-log"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], port: int, timeout: float = 60.0):
    """Start ``cmd``, wait for /readyz, yield the base URL; stop the process (by its pid) after."""
    import httpx

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise AssertionError("server did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def live_server(digits_onnx):  # noqa: F811
    port = free_port()
    with running_server(SERVE + [str(digits_onnx), "--port", str(port), "--log-level", "warning"], port) as url:
        yield url


def test_help_explains_every_option_with_defaults():
    for cmd in (SERVE, COMPRESS + ["serve"]):
        out = subprocess.run(cmd + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())
        for option in OPTIONS:
            assert option in text, (cmd, option)
        assert text.count("default") >= 14
        assert "127.0.0.1" in text and "/predict" in text


def _one_line_error(cmd: list[str]) -> str:
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, (cmd, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


@pytest.mark.parametrize("cli", [SERVE, COMPRESS + ["serve"]], ids=["python -m serve", "compress serve"])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, digits_onnx, live_server):  # noqa: F811
    (tmp_path / "junk.onnx").write_text("not a model")
    port = live_server.rsplit(":", 1)[1]
    assert "no such file" in _one_line_error(cli + [str(tmp_path / "missing.onnx")])
    assert "not a loadable ONNX model" in _one_line_error(cli + [str(tmp_path / "junk.onnx")])
    assert "no model to serve" in _one_line_error(cli)
    assert "model name" in _one_line_error(cli + ["--model", "bad name=x.onnx"])
    assert "used twice" in _one_line_error(cli + ["--model", f"a={digits_onnx}", "--model", f"a={digits_onnx}"])
    assert "threads" in _one_line_error(cli + [str(digits_onnx), "--threads", "0"])
    assert "inline_max_ms" in _one_line_error(cli + [str(digits_onnx), "--inline-max-ms", "-1"])
    assert "--workers" in _one_line_error(cli + [str(digits_onnx), "--workers", "0"])
    assert "cannot listen" in _one_line_error(cli + [str(digits_onnx), "--port", port])
    assert "invalid int" in _one_line_error(cli + [str(digits_onnx), "--port", "eighty"])


def test_serves_real_digits_over_http(live_server):
    import httpx

    images, _ = digit_test_images()
    r = httpx.post(live_server + "/predict", content=encode(images[0]), headers={"content-type": "image/png"})
    assert r.status_code == 200 and "server-timing" in r.headers
    assert httpx.get(live_server + "/docs").status_code == 200


def test_triton_client_speaks_to_the_server_unchanged(live_server, digits_onnx):  # noqa: F811
    import onnxruntime as ort
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=live_server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["name"] == "logits"
    assert client.get_server_metadata()["name"] == "deepcompress-serve"
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"input": x})[0]
    for binary in (True, False):
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("digits", [inp], outputs=[out], request_id="42")
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
        assert result.get_response()["id"] == "42"
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    top = client.infer("digits", [inp], outputs=[triton.InferRequestedOutput("logits", class_count=2)])
    labels = top.as_numpy("logits")
    assert labels.shape == (3, 2)
    assert [int(v.decode().split(":")[1]) for v in labels[:, 0]] == list(expected.argmax(1))
    with pytest.raises(Exception, match="no model named"):
        client.infer("nope", [inp])
    client.close()


def test_two_workers_share_one_metrics_view(digits_onnx, multilabel_onnx, tmp_path):  # noqa: F811
    import httpx

    port = free_port()
    cmd = COMPRESS + ["serve", "--model", f"digits={digits_onnx}", "--model", f"ml={multilabel_onnx}",
                      "--port", str(port), "--workers", "2", "--threads", "1", "--log-level", "warning"]
    env_dir = tmp_path / "prom"
    env_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(env_dir)
    try:
        with running_server(cmd, port, timeout=90) as url:
            png = encode(digit_test_images()[0][0])
            with httpx.Client(base_url=url) as c:
                codes = [c.post("/predict?model=ml" if i % 2 else "/predict", content=png,
                                headers={"content-type": "image/png"}).status_code for i in range(20)]
            assert codes == [200] * 20
            text = ""
            for _ in range(5):  # any worker answers, and each reports the sum over both
                text = httpx.get(url + "/metrics").text
            total = sum(float(v) for v in re.findall(
                r'serve_requests_total\{method="POST",route="/predict",status="200"\} ([0-9.e+]+)', text))
            assert total == 20
            pids = {f.name for f in env_dir.iterdir()}
            assert len({re.sub(r"\D", "", p) for p in pids}) >= 2  # two processes wrote metrics
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
