"""A Python HTTP client for the testbed: many requests, new connections or keep-alive, one JSON summary.

Run in a client's namespace::

    python -m nodes.httpclient http://10.0.0.100/ --requests 30 --mode close
    python -m nodes.httpclient http://10.0.0.100/ --requests 30 --mode keepalive --connections 3

Each request's body is the backend's name (see nodes.backend), so the summary tells which
backend served how many requests. Failures are counted by kind, never raised.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.parse
from collections import Counter
from typing import Any


def _fetch(conn: http.client.HTTPConnection, path: str, close: bool) -> tuple[int, bytes]:
    headers = {"Connection": "close"} if close else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def run(
    url: str, requests: int, mode: str, connections: int, timeout: float, deadline: float
) -> dict[str, Any]:
    """Issue ``requests`` GETs to ``url``; return counts per backend, per status and per failure."""
    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname or "", parts.port or 80, parts.path or "/"
    by_backend: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    received = 0
    started = time.monotonic()
    latencies: list[float] = []

    def one(conn: http.client.HTTPConnection, close: bool) -> bool:
        nonlocal received
        t0 = time.monotonic()
        try:
            status, body = _fetch(conn, path, close)
        except (OSError, http.client.HTTPException) as exc:
            failures[type(exc).__name__] += 1
            return False
        latencies.append(time.monotonic() - t0)
        statuses[status] += 1
        received += len(body)
        if status == 200:
            by_backend[body.decode(errors="replace").strip()] += 1
        return True

    if mode == "close":
        for _ in range(requests):
            if time.monotonic() - started > deadline:
                failures["deadline"] += 1
                break
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                one(conn, close=True)
            finally:
                conn.close()
    else:
        per_conn = [
            requests // connections + (1 if i < requests % connections else 0) for i in range(connections)
        ]
        for count in per_conn:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                for _ in range(count):
                    if time.monotonic() - started > deadline:
                        failures["deadline"] += 1
                        break
                    if not one(conn, close=False):
                        conn.close()
                        conn = http.client.HTTPConnection(host, port, timeout=timeout)
            finally:
                conn.close()
    latencies.sort()
    return {
        "url": url,
        "mode": mode,
        "requests": requests,
        "ok": sum(by_backend.values()),
        "by_backend": dict(sorted(by_backend.items())),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": dict(failures),
        "body_bytes": received,
        "seconds": round(time.monotonic() - started, 3),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2)
        if latencies
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON summary."""
    ap = argparse.ArgumentParser(description="HTTP load for the testbed, with a JSON summary")
    ap.add_argument("url")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument(
        "--mode",
        choices=["close", "keepalive"],
        default="close",
        help="close: a new TCP connection per request; keepalive: reuse connections",
    )
    ap.add_argument(
        "--connections", type=int, default=1, help="keep-alive connections to spread requests over"
    )
    ap.add_argument("--timeout", type=float, default=3.0, help="per-request timeout, seconds")
    ap.add_argument(
        "--deadline", type=float, default=60.0, help="stop issuing requests after this many seconds"
    )
    args = ap.parse_args(argv)
    if args.requests < 1 or args.connections < 1:
        ap.error("--requests and --connections must be at least 1")
    if not urllib.parse.urlsplit(args.url).hostname:
        ap.error(f"not an http URL: {args.url!r}")
    print(json.dumps(run(args.url, args.requests, args.mode, args.connections, args.timeout, args.deadline)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
