"""A small load tester for the service (``compress loadtest``), with two clients:

- aiohttp (the default; any concurrency): for each concurrency level, that many client tasks send
  the same image back to back over keep-alive connections. aiohttp costs 0.3-0.4 ms per request
  of client time on this machine (httpx 0.8 ms), time that sits inside every latency it reports.
- raw (:func:`run_raw_loadtest`, concurrency 1 only): one blocking keep-alive socket, the request
  bytes built once, a response read as its head plus ``Content-Length`` bytes. Against a bare
  ASGI app answering a constant under uvicorn its round trip is 0.10-0.12 ms here, what ``wrk -c1``
  measures too (0.10-0.12 ms), so at concurrency 1 its latency minus the server's own time is the
  server's HTTP cost rather than the client's.

Each run is a fixed time or a fixed number of requests; the report gives requests/s, client
latency percentiles, errors by kind, and the server's own time from the ``Server-Timing``
header (``total``), so client minus server is what HTTP (and the client) cost. The server's
resident memory is read from its ``/metrics`` (``process_resident_memory_bytes``) before and
after, where the server exposes it.

    levels = run_loadtest("http://127.0.0.1:8000", image_bytes, "image/png", [1, 4, 16], duration=10)
    level1 = run_raw_loadtest("http://127.0.0.1:8000", image_bytes, "image/png", duration=10)
"""
from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

TOTAL_RE = re.compile(r"(?:^|,)\s*total;dur=([0-9.]+)")
BATCH_RE = re.compile(rb'"batch_size":\s*([0-9]+)')
RSS_RE = re.compile(r"^process_resident_memory_bytes\s+([0-9.e+]+)$", re.M)


class LoadTestError(ValueError):
    """Bad input or an unreachable server (one line)."""


@dataclass
class LevelResult:
    concurrency: int
    requests: int                     # answered (any status) + failed to answer
    ok: int
    errors: int
    error_kinds: dict[str, int]       # "HTTP 503", "ConnectError", ...
    seconds: float
    rps: float                        # successful requests per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    server_p50_ms: float | None       # Server-Timing total
    server_p99_ms: float | None
    overhead_p50_ms: float | None     # median of (client - server) per request
    batch_sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


class Tally:
    """The answers of one level (or one client of an interleaved run) as they come in, then its
    :class:`LevelResult`."""

    def __init__(self) -> None:
        self.client_ms: list[float] = []
        self.server_ms: list[float] = []
        self.overhead_ms: list[float] = []
        self.kinds: dict[str, int] = {}
        self.batch_sizes: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def answer(self, status: int, elapsed_ms: float, server_timing: str, content: bytes) -> None:
        if status != 200:
            self.error(f"HTTP {status}")
            return
        self.client_ms.append(elapsed_ms)
        m = TOTAL_RE.search(server_timing)
        if m:
            server = float(m.group(1))
            self.server_ms.append(server)
            self.overhead_ms.append(elapsed_ms - server)
        size = BATCH_RE.search(content)
        if size:
            key = size.group(1).decode()
            self.batch_sizes[key] = self.batch_sizes.get(key, 0) + 1

    def result(self, concurrency: int, seconds: float) -> LevelResult:
        c, s, o = np.asarray(self.client_ms), np.asarray(self.server_ms), np.asarray(self.overhead_ms)
        errors = sum(self.kinds.values())
        return LevelResult(
            concurrency=concurrency, requests=len(c) + errors, ok=len(c), errors=errors, error_kinds=self.kinds,
            seconds=round(seconds, 3), rps=round(len(c) / seconds, 2) if seconds else 0.0,
            p50_ms=_percentile(c, 50), p95_ms=_percentile(c, 95), p99_ms=_percentile(c, 99),
            mean_ms=round(float(c.mean()), 3) if len(c) else None,
            server_p50_ms=_percentile(s, 50), server_p99_ms=_percentile(s, 99), overhead_p50_ms=_percentile(o, 50),
            batch_sizes=dict(sorted(self.batch_sizes.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)))


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LoadTestError(f"--concurrency must be comma-separated integers, got {text!r}") from None
    if not levels or any(not 1 <= c <= 1024 for c in levels):
        raise LoadTestError(f"--concurrency levels must be between 1 and 1024, got {text!r}")
    return levels


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadTestError(f"URL must look like http://HOST:PORT, got {url!r}")
    return url.rstrip("/")


async def _server_rss(session, base: str) -> int | None:
    try:
        async with session.get(base + "/metrics") as r:
            text = await r.text()
            status = r.status
    except Exception:  # noqa: BLE001 - optional facts; the load test does not depend on them
        return None
    m = RSS_RE.search(text) if status == 200 else None
    return int(float(m.group(1))) if m else None


def _payload(image: bytes, content_type: str, multipart: bool):
    """A fresh request body each time (aiohttp's FormData is single-use)."""
    if not multipart:
        return {"data": image, "headers": {"content-type": content_type}}
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", image, filename="image", content_type=content_type)
    return {"data": form}


class _Budget:
    """A fixed number of requests or a deadline, shared by the clients of one level."""

    def __init__(self, duration: float | None, requests: int | None):
        self.requests = requests
        self.sent = 0
        self.deadline = time.perf_counter() + duration if duration else None

    def take(self) -> bool:
        if self.requests is not None:
            if self.sent >= self.requests:
                return False
            self.sent += 1
            return True
        return time.perf_counter() < self.deadline


async def _level(session, url: str, body, concurrency: int, duration: float | None,
                 requests: int | None) -> LevelResult:
    tally = Tally()
    start = time.perf_counter()
    budget = _Budget(duration, requests)

    async def worker():
        while budget.take():
            t0 = time.perf_counter()
            try:
                async with session.post(url, **body()) as r:
                    content = await r.read()
                    status, timing = r.status, r.headers.get("server-timing", "")
            except Exception as e:  # noqa: BLE001 - every failure is counted by kind
                tally.error(type(e).__name__)
                continue
            tally.answer(status, (time.perf_counter() - t0) * 1000.0, timing, content)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally.result(concurrency, time.perf_counter() - start)


async def run_loadtest_async(base_url: str, image: bytes, content_type: str, levels: Sequence[int], *,
                             duration: float | None = None, requests: int | None = None, path: str = "/predict",
                             multipart: bool = False, api_key: str | None = None, warmup: int = 5,
                             timeout: float = 30.0) -> dict[str, Any]:
    """Run every level in turn; returns ``{"levels": [LevelResult dicts], "server_rss_bytes": ...}``."""
    import aiohttp

    if (duration is None) == (requests is None):
        raise LoadTestError("give either a duration or a number of requests")
    base = check_url(base_url)
    url = base + (path if path.startswith("/") else "/" + path)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def body():
        return _payload(image, content_type, multipart)

    connector = aiohttp.TCPConnector(limit=max(levels))
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        try:
            async with session.post(url, **body()) as first:
                status, text = first.status, await first.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise LoadTestError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
        if status != 200:
            detail = text.strip().splitlines()[0][:200] if text.strip() else ""
            raise LoadTestError(f"{url} answered {status} to the first request: {detail}")
        for _ in range(max(0, warmup - 1)):
            async with session.post(url, **body()) as r:
                await r.read()
        rss_before = await _server_rss(session, base)
        results = [await _level(session, url, body, c, duration, requests) for c in levels]
        rss_after = await _server_rss(session, base)
    return {"url": url, "content_type": content_type, "multipart": multipart, "image_bytes": len(image),
            "duration_s": duration, "requests_per_level": requests, "client": "aiohttp",
            "server_rss_bytes": {"before": rss_before, "after": rss_after},
            "levels": [r.to_dict() for r in results]}


def run_loadtest(*args, **kwargs) -> dict[str, Any]:
    return asyncio.run(run_loadtest_async(*args, **kwargs))


class RawClient:
    """One keep-alive HTTP/1.1 connection on a blocking socket (``TCP_NODELAY``), for sequential
    requests whose bytes are built once: ``request(data)`` sends them and reads the response head
    and ``Content-Length`` bytes of body. It reconnects after the server closed the connection."""

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(check_url(url))
        if parts.scheme != "http":
            raise LoadTestError(f"the raw client speaks plain http only, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._pending = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self._pending = None, b""

    def request(self, data: bytes) -> tuple[int, bytes, bytes]:
        """Send one whole request; ``(status, head, body)`` of the answer. Raises ``OSError`` for
        a connection problem and :class:`LoadTestError` for an answer it cannot read."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.sendall(data)
            return self._response()
        except BaseException:
            self.close()
            raise

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        return chunk

    def _response(self) -> tuple[int, bytes, bytes]:
        buf = self._pending
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head, rest = buf[:end], buf[end + 4:]
        try:
            status = int(head[9:12])
        except ValueError:
            raise LoadTestError(f"not an HTTP response: {head[:40]!r}") from None
        length, close = None, head.startswith(b"HTTP/1.0")
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise LoadTestError("the raw client reads only answers with a Content-Length, not chunked ones")
            elif name == b"connection":
                close = b"close" in value.lower()
        if length is None:
            raise LoadTestError("the raw client reads only answers with a Content-Length")
        while len(rest) < length:
            rest += self._recv()
        body, self._pending = rest[:length], rest[length:]
        if close:
            self.close()
        return status, head, body


def header_value(head: bytes, name: bytes) -> str:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


def raw_request(method: str, host: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def multipart_body(image: bytes, content_type: str) -> tuple[bytes, str]:
    """(body, content type) of a multipart form with the image in field ``file``."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run_raw_loadtest(base_url: str, image: bytes, content_type: str, *, duration: float | None = None,
                     requests: int | None = None, path: str = "/predict", multipart: bool = False,
                     api_key: str | None = None, warmup: int = 5, timeout: float = 30.0) -> dict[str, Any]:
    """:func:`run_loadtest` at concurrency 1 with :class:`RawClient` (same report)."""
    if (duration is None) == (requests is None):
        raise LoadTestError("give either a duration or a number of requests")
    base = check_url(base_url)
    client = RawClient(base, timeout)
    host = f"{client.host}:{client.port}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body, ctype = multipart_body(image, content_type) if multipart else (image, content_type)
    path = path if path.startswith("/") else "/" + path
    data = raw_request("POST", host, path, body, {**headers, "Content-Type": ctype})
    metrics = raw_request("GET", host, "/metrics", headers=headers)

    def rss() -> int | None:
        try:
            status, _, text = client.request(metrics)
        except (OSError, LoadTestError):
            return None
        m = RSS_RE.search(text.decode("utf-8", "replace")) if status == 200 else None
        return int(float(m.group(1))) if m else None

    try:
        try:
            status, _, first = client.request(data)
        except OSError as e:
            raise LoadTestError(f"cannot reach {base + path}: {type(e).__name__}: {e}") from None
        if status != 200:
            text = first.decode("utf-8", "replace").strip()
            raise LoadTestError(f"{base + path} answered {status} to the first request: "
                                f"{text.splitlines()[0][:200] if text else ''}")
        for _ in range(max(0, warmup - 1)):
            client.request(data)
        rss_before = rss()
        tally, budget, start = Tally(), _Budget(duration, requests), time.perf_counter()
        while budget.take():
            t0 = time.perf_counter()
            try:
                status, head, content = client.request(data)
            except (OSError, LoadTestError) as e:
                tally.error(type(e).__name__)
                continue
            tally.answer(status, (time.perf_counter() - t0) * 1000.0, header_value(head, b"server-timing"), content)
        level = tally.result(1, time.perf_counter() - start)
        rss_after = rss()
    finally:
        client.close()
    return {"url": base + path, "content_type": content_type, "multipart": multipart, "image_bytes": len(image),
            "duration_s": duration, "requests_per_level": requests, "client": "raw",
            "server_rss_bytes": {"before": rss_before, "after": rss_after}, "levels": [level.to_dict()]}


CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}


def content_type_for(name: str) -> str:
    for suffix, ctype in CONTENT_TYPES.items():
        if name.lower().endswith(suffix):
            return ctype
    return "application/octet-stream"


def format_levels(levels: list[dict[str, Any]]) -> str:
    """The levels as a plain-text table."""
    cols = [("concurrency", "concurrency"), ("requests", "requests"), ("errors", "errors"), ("req/s", "rps"),
            ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"), ("p99 ms", "p99_ms"), ("server p50 ms", "server_p50_ms"),
            ("client-server p50 ms", "overhead_p50_ms")]
    rows = [[h for h, _ in cols]] + [["-" if r[k] is None else str(r[k]) for _, k in cols] for r in levels]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
