"""``compress loadtest`` against a real server process on a loopback port (bounded: a few hundred
requests), and its one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import digit_test_images, digits_onnx, encode, multilabel_onnx  # noqa: F401
from tests.test_serve_cli import free_port, live_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
COMPRESS = [sys.executable, "-m", "compress"]


@pytest.fixture(scope="module")
def digit_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lt") / "digit.png"
    path.write_bytes(encode(digit_test_images()[0][0]))
    return path


def test_loadtest_reports_every_level(live_server, digit_file, tmp_path):  # noqa: F811
    report_path = tmp_path / "lt.json"
    out = subprocess.run(COMPRESS + ["loadtest", live_server, "--image", str(digit_file), "--concurrency", "1,3",
                                     "--requests", "60", "--json", str(report_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "req/s" in out.stdout and "p99 ms" in out.stdout and "server RSS" in out.stdout
    report = json.loads(report_path.read_text())
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 3]
    for lv in report["levels"]:
        assert lv["requests"] == lv["ok"] == 60 and lv["errors"] == 0
        assert lv["rps"] > 0 and 0 < lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"]
        assert 0 < lv["server_p50_ms"] < lv["p50_ms"]  # Server-Timing read and below client time
        assert lv["overhead_p50_ms"] > 0
        assert lv["batch_sizes"] == {"1": 60}
    assert report["server_rss_bytes"]["before"] > 10 * 2**20


def test_loadtest_multipart_and_duration(live_server, digit_file):  # noqa: F811
    from serve.loadtest import run_loadtest

    report = run_loadtest(live_server, digit_file.read_bytes(), "image/png", [2], duration=0.5, multipart=True)
    (level,) = report["levels"]
    assert level["ok"] > 5 and level["errors"] == 0 and 0.4 < level["seconds"] < 3


def test_loadtest_counts_errors_by_kind(live_server, digit_file):  # noqa: F811
    from serve.loadtest import LoadTestError, run_loadtest

    with pytest.raises(LoadTestError, match="answered 404"):
        run_loadtest(live_server, digit_file.read_bytes(), "image/png", [1], requests=5, path="/predict?model=nope")


@pytest.mark.parametrize("args, message", [
    (["http://127.0.0.1:9", "--image", "{img}", "--requests", "3"], "cannot reach"),
    (["ftp://x", "--image", "{img}"], "URL must look like"),
    (["http://127.0.0.1:9", "--image", "/no/such.png"], "no such file"),
    (["http://127.0.0.1:9", "--image", "{img}", "--concurrency", "0"], "between 1 and 1024"),
    (["http://127.0.0.1:9", "--image", "{img}", "--concurrency", "a,b"], "comma-separated"),
    (["http://127.0.0.1:9", "--image", "{img}", "--duration", "-1"], "--duration"),
])
def test_loadtest_bad_input_is_one_line_exit_2(args, message, digit_file):
    args = [a.replace("{img}", str(digit_file)) for a in args]
    out = subprocess.run(COMPRESS + ["loadtest"] + args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
