"""Control Segment benchmark: pure decisions per second, and QUERY->REPLY round trips over loopback UDP.

::

    python bench/bench_cs.py [--quick] [--json PATH] [--seconds S]

1. ``decisions``: :meth:`ControlSegment.handle` on QUERY messages for each selection method, no I/O.
2. ``udp``: one client keeps one QUERY outstanding against the real daemon (``nodes.csd``, started here on
   127.0.0.1 with ephemeral ports) and times each REPLY; the same client against a plain UDP echo server
   in its own process gives the ceiling of this machine's loopback + Python socket path. The report gives
   both rates, their ratio, and p50/p99 latency.

Every loop is bounded by a message count and a wall-clock budget. ``--quick`` takes about 5 s (CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from slbcore.cs.config import Method, parse_config_text  # noqa: E402
from slbcore.cs.engine import ControlSegment  # noqa: E402
from slbproto import ssmb  # noqa: E402
from slbproto.peer import SerialCounter  # noqa: E402

SERVERS = 16
STARTUP_DEADLINE = 20.0


def bench_config(method: str, status_port: int = 0) -> str:
    """A CS configuration with one VS of SERVERS real servers on documentation addresses (never probed)."""
    servers = "".join(
        f'[[virtual_server.real_server]]\nname = "s{i}"\naddress = "192.0.2.{i + 1}"\nweight = {1 + i % 3}\n'
        for i in range(SERVERS)
    )
    return (
        "[cs]\n"
        'csmb_listen = "127.0.0.1"\ncsmb_port = 0\nssmb_listen = "127.0.0.1"\nssmb_port = 0\n'
        f'status_listen = "127.0.0.1"\nstatus_port = {status_port}\n'
        "flow_idle_timeout = 3600\nmax_flows = 5000000\nquery_rate = 0\n\n"
        "[[virtual_server]]\n"
        f'name = "bench"\nvip = "10.0.0.100"\nport = 80\nmethod = "{method}"\n'
        'flags = ["translate_addr"]\n' + servers
    )


def _query(i: int) -> ssmb.Query:
    return ssmb.Query(
        orig_src_ipaddr=f"198.51.{(i >> 8) & 255}.{i & 255}",
        orig_dst_ipaddr="10.0.0.100",
        orig_src_port=1024 + (i % 60000),
        orig_dst_port=80,
        proto=6,
        flow_id=i & 0x7FFF_FFFF,
    )


def bench_decisions(seconds: float, max_messages: int) -> dict[str, Any]:
    """QUERY decisions per second of the pure engine, per method."""
    results: dict[str, Any] = {}
    dfs = ("127.0.0.1", 7700)
    for method in Method:
        cs = ControlSegment(parse_config_text(bench_config(method.value)))
        queries = [_query(i) for i in range(min(max_messages, 50_000))]
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while n < max_messages and time.perf_counter() < deadline:
            for q in queries[:1000]:
                cs.handle(q if n < len(queries) else queries[n % len(queries)], dfs, 0.0)
                n += 1
            # Rotate the window so most queries are new flows, not retransmissions.
            queries = queries[1000:] + queries[:1000]
        elapsed = time.perf_counter() - start
        results[method.value] = {
            "decisions": n,
            "seconds": round(elapsed, 3),
            "per_second": round(n / elapsed),
        }
    return results


def _echo_server() -> None:
    """Bounded UDP echo loop (child process); exits after 60 s idle or on its parent's request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(60.0)
    print(f"READY echo={sock.getsockname()[1]}", flush=True)
    with contextlib.suppress(TimeoutError, socket.timeout):
        for _ in range(10_000_000):
            data, addr = sock.recvfrom(65536)
            if data == b"quit":
                break
            sock.sendto(data, addr)
    sock.close()


def _wait_line(proc: subprocess.Popen[str], pattern: str, log: Path | None = None) -> re.Match[str]:
    deadline = time.monotonic() + STARTUP_DEADLINE
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        if log is not None:
            text = log.read_text() if log.exists() else ""
            m = rx.search(text)
            if m:
                return m
            time.sleep(0.05)
        else:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            m = rx.search(line)
            if m:
                return m
    raise RuntimeError(f"no line matching {pattern!r} within {STARTUP_DEADLINE}s")


def _round_trips(dest: tuple[str, int], make: Any, seconds: float, max_messages: int) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    latencies: list[float] = []
    lost = 0
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    try:
        while i < max_messages and time.perf_counter() < deadline:
            payload = make(i)
            t0 = time.perf_counter()
            sock.sendto(payload, dest)
            try:
                sock.recvfrom(65536)
            except TimeoutError:
                lost += 1
                i += 1
                continue
            latencies.append(time.perf_counter() - t0)
            i += 1
    finally:
        sock.close()
    elapsed = time.perf_counter() - start
    return _summary(latencies, lost, elapsed)


def _summary(latencies: list[float], lost: int, elapsed: float) -> dict[str, Any]:
    if not latencies:
        return {"round_trips": 0, "lost": lost, "per_second": 0, "p50_us": None, "p99_us": None}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "round_trips": len(latencies),
        "lost": lost,
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed),
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(p99 * 1e6, 1),
    }


def bench_udp(seconds: float, max_messages: int) -> dict[str, Any]:
    """Round trips against the daemon and against a plain echo server."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="bench-cs-") as tmp:
        cfg = Path(tmp) / "cs.toml"
        cfg.write_text(bench_config("maglev"))
        log = Path(tmp) / "csd.log"
        csd = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodes.csd",
                "--config",
                str(cfg),
                "--log-file",
                str(log),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            text=True,
        )
        echo = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-echo"],
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            text=True,
        )
        echo_port = 0
        try:
            ssmb_port = int(_wait_line(csd, r"READY csmb=\S+ ssmb=127\.0\.0\.1:(\d+)", log).group(1))
            echo_port = int(_wait_line(echo, r"READY echo=(\d+)").group(1))
            serials = SerialCounter()
            cs_result = _round_trips(
                ("127.0.0.1", ssmb_port),
                lambda i: ssmb.encode_datagram([serials.stamp(_query(i))]),
                seconds,
                max_messages,
            )
            sample = ssmb.encode_datagram([_query(0)])
            echo_result = _round_trips(("127.0.0.1", echo_port), lambda i: sample, seconds, max_messages)
        finally:
            if echo_port:
                with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"quit", ("127.0.0.1", echo_port))
            for proc in (csd, echo):
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    ratio = cs_result["per_second"] / echo_result["per_second"] if echo_result["per_second"] else None
    return {
        "cs": cs_result,
        "echo": echo_result,
        "ratio_cs_to_echo": None if ratio is None else round(ratio, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print (and optionally save) the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 5 s in total (for CI)")
    p.add_argument("--seconds", type=float, default=None, help="budget per measurement")
    p.add_argument("--json", dest="json_path", help="also write the results here")
    p.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_echo:
        _echo_server()
        return 0
    per_method = args.seconds if args.seconds is not None else (0.4 if args.quick else 3.0)
    per_udp = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    max_messages = 200_000 if args.quick else 2_000_000
    results = {
        "quick": args.quick,
        "servers_per_vs": SERVERS,
        "decisions": bench_decisions(per_method, max_messages),
        "udp": bench_udp(per_udp, max_messages),
    }
    print("pure decisions per second (QUERY -> REPLY, no I/O):")
    for method, r in results["decisions"].items():
        print(f"  {method:22s} {r['per_second']:>10,d}/s  ({r['decisions']} in {r['seconds']} s)")
    udp = results["udp"]
    print("UDP round trips on loopback, one outstanding:")
    for name in ("cs", "echo"):
        r = udp[name]
        line = f"  {name:5s} {r['per_second']:>8,d}/s  p50 {r['p50_us']} us  p99 {r['p99_us']} us"
        print(f"{line}  lost {r['lost']}")
    print(f"  CS / echo ratio: {udp['ratio_cs_to_echo']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
