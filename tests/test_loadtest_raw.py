"""The raw-socket client of ``compress loadtest`` (``--client raw``): against a real server process
on a loopback port (bounded: a few hundred requests) and against a scripted socket server for
the answers it must refuse or survive."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.test_loadtest import digit_file  # noqa: F401
from tests.test_serve import digit_test_images, digits_onnx, encode  # noqa: F401
from tests.test_serve_cli import free_port, live_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
COMPRESS = [sys.executable, "-m", "compress"]


def test_raw_client_measures_concurrency_1(live_server, digit_file):  # noqa: F811
    from serve.loadtest import run_loadtest, run_raw_loadtest

    data = digit_file.read_bytes()
    report = run_raw_loadtest(live_server, data, "image/png", requests=80)
    (level,) = report["levels"]
    assert report["client"] == "raw" and level["concurrency"] == 1
    assert level["requests"] == level["ok"] == 80 and level["errors"] == 0 and level["batch_sizes"] == {"1": 80}
    assert 0 < level["server_p50_ms"] < level["p50_ms"] and level["overhead_p50_ms"] > 0
    assert report["server_rss_bytes"]["before"] > 10 * 2**20
    multipart = run_raw_loadtest(live_server, data, "image/png", duration=0.3, multipart=True)["levels"][0]
    assert multipart["ok"] > 5 and multipart["errors"] == 0
    # the same server through aiohttp answers the same way (the raw client only costs less)
    assert run_loadtest(live_server, data, "image/png", [1], requests=20)["levels"][0]["ok"] == 20


def test_raw_client_errors(live_server, digit_file):  # noqa: F811
    from serve.loadtest import LoadTestError, run_raw_loadtest

    data = digit_file.read_bytes()
    with pytest.raises(LoadTestError, match="answered 404"):
        run_raw_loadtest(live_server, data, "image/png", requests=3, path="/predict?model=nope")
    with pytest.raises(LoadTestError, match="cannot reach"):
        run_raw_loadtest(f"http://127.0.0.1:{free_port()}", data, "image/png", requests=3)
    with pytest.raises(LoadTestError, match="plain http"):
        run_raw_loadtest("https://127.0.0.1:1", data, "image/png", requests=3)
    with pytest.raises(LoadTestError, match="either a duration"):
        run_raw_loadtest(live_server, data, "image/png")


def test_cli_raw_client(live_server, digit_file):  # noqa: F811
    out = subprocess.run(COMPRESS + ["loadtest", live_server, "--image", str(digit_file), "--concurrency", "1",
                                     "--requests", "40", "--client", "raw"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "raw client" in out.stdout and "client-server p50 ms" in out.stdout
    bad = subprocess.run(COMPRESS + ["loadtest", live_server, "--image", str(digit_file), "--concurrency", "1,4",
                                     "--client", "raw"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "concurrency 1 only" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


class _Scripted:
    """A socket server that answers each request with the next canned response (then closes
    the connection when the script says so)."""

    def __init__(self, answers: list[tuple[bytes, bool]]):
        self.answers = list(answers)
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.answers:
            conn, _ = self.sock.accept()
            self.connections += 1
            with conn:
                while self.answers:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        request += chunk
                    if not request:
                        break
                    head, _, body = request.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(body) < length:
                        body += conn.recv(65536)
                    answer, close = self.answers.pop(0)
                    conn.sendall(answer)
                    if close:
                        break
        self.sock.close()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nServer-Timing: total;dur=0.250\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_raw_client_reconnects_and_refuses_chunked():
    from serve.loadtest import LoadTestError, RawClient, raw_request

    server = _Scripted([(_ok(b'{"batch_size": 1}'), False), (_ok(b"{}", b"Connection: close\r\n"), True),
                        (_ok(b"x" * 100_000), False),
                        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", True)])
    client = RawClient(server.url, timeout=5)
    request = raw_request("POST", "x", "/predict", b"img", {"Content-Type": "image/png"})
    status, head, body = client.request(request)
    assert status == 200 and body == b'{"batch_size": 1}' and b"total;dur=0.250" in head
    assert client.request(request)[2] == b"{}" and client.sock is None  # closed as the server said
    assert client.request(request)[2] == b"x" * 100_000  # reconnected; a body in several reads
    with pytest.raises(LoadTestError, match="Content-Length"):
        client.request(request)
    assert server.connections == 2
    client.close()


def test_raw_request_and_multipart_bytes():
    from serve.loadtest import multipart_body, raw_request

    assert raw_request("GET", "h:1", "/metrics", headers={"A": "b"}) == b"GET /metrics HTTP/1.1\r\nHost: h:1\r\nA: b\r\n\r\n"
    assert raw_request("POST", "h", "/p", b"xy") == b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy"
    body, ctype = multipart_body(b"IMG", "image/png")
    boundary = ctype.split("boundary=")[1]
    assert ctype.startswith("multipart/form-data; boundary=")
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert b'name="file"; filename="image"\r\nContent-Type: image/png\r\n\r\nIMG\r\n' in body
