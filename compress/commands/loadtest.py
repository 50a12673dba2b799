"""Load-test a running service: requests/s, latency percentiles and errors per concurrency level.

Each level runs CONCURRENCY asynchronous clients (aiohttp, keep-alive connections) that send the
same image back to back for --duration seconds or --requests requests. Client latency is
compared with the server's own time from its Server-Timing header, so "client-server" is what
HTTP, the event loop and the client cost. The server's RSS is read from /metrics before and
after when it exposes it. A JSON report goes to --json.

--client raw measures concurrency 1 with one blocking keep-alive socket instead (about 0.02 ms of
client cost where aiohttp spends 0.3-0.4 ms), so client-server is the server's HTTP overhead.

    compress loadtest http://127.0.0.1:8000 --image digit.png --concurrency 1,4,16 --duration 10
    compress loadtest http://127.0.0.1:8000 --image digit.png --concurrency 1 --client raw
    compress loadtest http://127.0.0.1:8000 --image cat.jpg --requests 2000 --multipart --json lt.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="base URL of the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--image", required=True, help="image file to send with every request")
    p.add_argument("--concurrency", default="1,4,16",
                   help="comma-separated numbers of concurrent clients, one level each (default %(default)s)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--duration", type=float, default=None,
                        help="seconds per level (default 10 unless --requests is given)")
    budget.add_argument("--requests", type=int, default=None, help="requests per level instead of a duration")
    p.add_argument("--client", choices=["aiohttp", "raw"], default="aiohttp",
                   help="aiohttp (any concurrency) or raw: one blocking keep-alive socket, concurrency 1 only, "
                        "the lowest client cost (default %(default)s)")
    p.add_argument("--path", default="/predict", help="endpoint to POST to (default %(default)s)")
    p.add_argument("--model", default=None, help="model name, sent as ?model= (default: the server's default)")
    p.add_argument("--multipart", action="store_true",
                   help="send the image as multipart field 'file' (default: the raw body with its image type)")
    p.add_argument("--api-key", default=None, help="bearer token, if the server runs with --api-key")
    p.add_argument("--warmup", type=int, default=5, help="requests sent before timing starts (default %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request client timeout in seconds "
                                                               "(default %(default)s)")
    p.add_argument("--json", dest="json_path", default=None, help="write the report to this JSON file")


def run(args: argparse.Namespace) -> int:
    from serve.loadtest import (LoadTestError, content_type_for, format_levels, parse_levels, run_loadtest,
                                run_raw_loadtest)

    image = Path(args.image)
    if not image.is_file():
        raise UserError(f"{image}: no such file")
    data = image.read_bytes()
    if not data:
        raise UserError(f"{image}: empty file")
    duration = args.duration if args.duration is not None or args.requests is not None else 10.0
    if duration is not None and not 0 < duration <= 3600:
        raise UserError(f"--duration must be in (0, 3600] seconds, got {duration}")
    if args.requests is not None and not 1 <= args.requests <= 10_000_000:
        raise UserError(f"--requests must be between 1 and 10,000,000, got {args.requests}")
    if not 0 <= args.warmup <= 10_000 or args.timeout <= 0:
        raise UserError("--warmup must be 0-10000 and --timeout > 0")
    path = args.path + (f"?model={args.model}" if args.model else "")
    common = dict(duration=duration, requests=args.requests, path=path, multipart=args.multipart,
                  api_key=args.api_key, warmup=max(1, args.warmup), timeout=args.timeout)
    try:
        levels = parse_levels(args.concurrency)
        if args.client == "raw":
            if levels != [1]:
                raise UserError(f"--client raw runs concurrency 1 only, got --concurrency {args.concurrency}")
            report = run_raw_loadtest(args.url, data, content_type_for(image.name), **common)
        else:
            report = run_loadtest(args.url, data, content_type_for(image.name), levels, **common)
    except LoadTestError as e:
        raise UserError(str(e)) from None
    print(f"{report['url']}  image {image.name} ({len(data):,} bytes, "
          f"{'multipart' if args.multipart else 'raw body'}), {args.client} client")
    print(format_levels(report["levels"]))
    rss = report["server_rss_bytes"]
    if rss["before"] and rss["after"]:
        print(f"server RSS {rss['before'] / 2**20:.1f} MiB before, {rss['after'] / 2**20:.1f} MiB after "
              f"({(rss['after'] / rss['before'] - 1) * 100:+.1f}%)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 0
