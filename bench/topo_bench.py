"""The benchmark testbed and its measurements: ceiling, HAProxy, CS_ASSIST and DFS_ASSIST side by side.

How a run goes (one topology, ``topo/configs/bench.toml``, one process tree):

1. The network comes up with no CS or DFS daemon (``Lab(spec, start_daemons=False)``); the
   backends (HTTP on :80, a connection-holding sink on :9000) start.
2. **Static phase.** The DFS switch gets static OpenFlow rules and no controller: plain routing
   between the segments, and a select group behind the address 10.0.0.99 that spreads connections
   over the backends by rewriting addresses, i.e. the per-packet work of an offloaded flow with no
   per-flow setup. Measured here: ``ceiling`` (that group), ``direct1`` (one backend, plainly
   routed) and ``haproxy`` (HAProxy one-armed on the client segment, routed by the same rules).
3. **Load-balancer phase.** The static rules go, the CS and DFS daemons start, and the same
   measurements run through the CS_ASSIST and DFS_ASSIST VIPs. If the daemons do not come up, those
   scenarios are reported as unavailable with the reason, and everything else still is.
4. **Scaling** (full mode): 1k, 10k, 50k established flows held open through each class's port-9000
   VIP; at each level, the new-connection rate, the daemons' CPU and memory and the switch's flows.

Each measurement is repeated and its median quoted; every figure is also kept per repetition.
Load generators share the machine's cores with the switch, the daemons and the backends.

The same module is the in-namespace toolbox (standard library only, so it starts fast)::

    python -m bench.topo_bench sink --port 9000          # on a backend: hold connections cheaply
    python -m bench.topo_bench hold --host VIP --port 9000   # on a client: levels read from stdin
    python -m bench.topo_bench probe --host VIP --port 80 --count 200   # connect latency
    python -m bench.topo_bench run [--quick] [--json PATH]  # the whole topology benchmark
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_TOML = ROOT / "topo" / "configs" / "bench.toml"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
CEILING_VIP = "10.0.0.99"
CEILING_GROUP = 1
SINK_PORT = 9000
SCALING_LEVELS = (1000, 10000, 50000)
HOLD_ROUNDS = 10

PATHS = {
    "ceiling": "client1 -> clients switch -> dfs1sw (static OpenFlow rules, no controller: a select group "
    "rewrites 10.0.0.99 to web1..web3 and back) -> servers switch -> backends. The per-packet work of an "
    "offloaded flow, with no per-flow setup: the ceiling the ratios are taken against.",
    "direct1": "client2 -> clients switch -> dfs1sw (static routing rules, no address rewrite) -> servers "
    "switch -> web1 only. One backend, so bounded by one backend process.",
    "haproxy": "client1 -> clients switch -> hap1 (HAProxy, mode tcp, round robin) -> clients switch "
    "-> dfs1sw (static routing rules) -> servers switch -> backends.",
    "cs_assist": "client1 -> clients switch -> dfs1sw (DFS daemon; first packet to the DFS, QUERY/REPLY to "
    "the CS, then the flow offloaded) -> servers switch -> backends, VIP 10.0.0.100:80.",
    "dfs_assist": "client1 -> clients switch -> dfs1sw (DFS daemon; the switch picks the server from the "
    "pool, the DFS learns the flow) -> servers switch -> backends, VIP 10.0.0.101:80.",
}
STATIC_SCENARIOS = ("ceiling", "direct1", "haproxy")
LB_SCENARIOS = ("cs_assist", "dfs_assist")
ALL_SCENARIOS = STATIC_SCENARIOS + LB_SCENARIOS


class BenchError(RuntimeError):
    """A measurement could not be made; the message says which and why."""


# ============================================================================ pure helpers

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """The figures of one wrk run (``--latency``): requests, rate, latency percentiles, errors."""
    out: dict[str, Any] = {
        "requests": None,
        "seconds": None,
        "req_per_s": None,
        "latency_ms": {},
        "errors": {},
    }
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w?)B read", text, re.MULTILINE)
    if m:
        out["requests"] = int(m.group(1))
        out["seconds"] = _duration_ms(m.group(2)) / 1000.0
        out["bytes_read"] = int(float(m.group(3)) * _SIZE.get(m.group(4), 1))
    m = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.MULTILINE)
    if m:
        out["req_per_s"] = float(m.group(1))
    dist = re.search(r"Latency Distribution\n((?:\s+\d+%\s+\S+\n?)+)", text)
    if dist:
        for pct, value in re.findall(r"(\d+)%\s+(\S+)", dist.group(1)):
            out["latency_ms"][f"p{pct}"] = round(_duration_ms(value), 3)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["errors"]["non_2xx"] = int(m.group(1))
    if out["req_per_s"] is None:
        raise ValueError(f"wrk printed no Requests/sec line:\n{text[-1500:]}")
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank method; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and every run of a repeated measurement (None runs are dropped)."""
    runs = [float(v) for v in values if v is not None]
    return {
        "median": round(statistics.median(runs), 3) if runs else None,
        "min": round(min(runs), 3) if runs else None,
        "max": round(max(runs), 3) if runs else None,
        "runs": [round(v, 3) for v in runs],
    }


def proc_cpu_ticks(pid: int | None) -> int | None:
    """User+system clock ticks a process has used (all its threads), or None if it is gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_kb(pid: int | None) -> int | None:
    """Resident set size of a process in KiB, or None if it is gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_percent(before: int | None, after: int | None, seconds: float) -> float | None:
    """CPU use between two tick readings, in percent of one core."""
    if before is None or after is None or seconds <= 0:
        return None
    return round(100.0 * (after - before) / CLK_TCK / seconds, 1)


def flatten_numbers(doc: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a JSON document, keyed by its dotted path (booleans excluded)."""
    found: dict[str, float] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.update(flatten_numbers(value, f"{prefix}{key}."))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found.update(flatten_numbers(value, f"{prefix}{i}."))
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        found[prefix.rstrip(".")] = float(doc)
    return found


def pick_counter(flat: dict[str, float], *names: str) -> float | None:
    """The first counter whose last path element is one of ``names`` (in that order of preference)."""
    by_depth = sorted(flat.items(), key=lambda kv: kv[0].count("."))
    for name in names:
        for key, value in by_depth:
            if key.rsplit(".", 1)[-1] == name:
                return value
    return None


def dfs_flow_costs(before: Any, after: Any, connections: int) -> dict[str, Any]:
    """What the DFS process saw per flow over a window: packet-ins and offloads per connection."""
    b, a = flatten_numbers(before), flatten_numbers(after)
    delta = {k: a[k] - b.get(k, 0.0) for k in a if a[k] != b.get(k, 0.0)}
    pins = pick_counter(delta, "packet_ins", "packet_in", "packetins") or 0.0
    offl = pick_counter(delta, "flows_offloaded", "offloaded", "flows_installed") or 0.0
    return {
        "connections": connections,
        "packet_ins": int(pins),
        "flows_offloaded": int(offl),
        "packet_ins_per_flow": round(pins / connections, 3) if connections else None,
        "offloaded_per_flow": round(offl / connections, 3) if connections else None,
        "counter_deltas": {k: round(v, 3) for k, v in sorted(delta.items())},
    }


def haproxy_config(bind: str, port: int, servers: list[tuple[str, str, int]]) -> str:
    """An HAProxy configuration balancing ``servers`` at layer 4 (mode tcp), round robin."""
    lines = [
        "global",
        "    maxconn 8000",  # two fds per proxied connection must fit the default fd limit
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "frontend bench",
        f"    bind {bind}:{port}",
        "    default_backend pool",
        "backend pool",
        "    balance roundrobin",
    ]
    lines += [f"    server {name} {addr}:{sport}" for name, addr, sport in servers]
    return "\n".join(lines) + "\n"


def static_path_rules(
    cli_port: int,
    srv_port: int,
    cli_gw_mac: str,
    srv_gw_mac: str,
    clients: list[tuple[str, str]],
    backends: list[tuple[str, str]],
    vip: str,
    vip_clients: list[str],
    http_port: int = 80,
) -> tuple[list[str], list[str]]:
    """OpenFlow 1.3 groups and flows (ovs-ofctl syntax) that turn the DFS switch into a static path.

    ``clients`` and ``backends`` are (ip, mac) pairs. Hosts are routed between the segments (MACs
    rewritten, TTL decremented); TCP to ``vip``:``http_port`` from ``vip_clients`` goes to a
    select group that rewrites the destination to one backend, and replies to those clients get
    ``vip`` back as their source. Returns (groups, flows).
    """
    buckets = ",".join(
        f"bucket=weight:1,actions=set_field:{ip}->ip_dst,set_field:{srv_gw_mac}->eth_src,"
        f"set_field:{mac}->eth_dst,dec_ttl,output:{srv_port}"
        for ip, mac in backends
    )
    groups = [f"group_id={CEILING_GROUP},type=select,{buckets}"]
    flows = []
    for ip, mac in backends:
        flows.append(
            f"priority=100,ip,in_port={cli_port},nw_dst={ip},"
            f"actions=set_field:{srv_gw_mac}->eth_src,set_field:{mac}->eth_dst,dec_ttl,output:{srv_port}"
        )
        for client in vip_clients:
            cmac = dict(clients)[client]
            flows.append(
                f"priority=200,tcp,in_port={srv_port},nw_src={ip},tp_src={http_port},nw_dst={client},"
                f"actions=set_field:{vip}->ip_src,set_field:{cli_gw_mac}->eth_src,set_field:{cmac}->eth_dst,"
                f"dec_ttl,output:{cli_port}"
            )
    for ip, mac in clients:
        flows.append(
            f"priority=100,ip,in_port={srv_port},nw_dst={ip},"
            f"actions=set_field:{cli_gw_mac}->eth_src,set_field:{mac}->eth_dst,dec_ttl,output:{cli_port}"
        )
    flows.append(
        f"priority=200,tcp,in_port={cli_port},nw_dst={vip},tp_dst={http_port},actions=group:{CEILING_GROUP}"
    )
    return groups, flows


def ratio(value: float | None, ceiling: float | None) -> float | None:
    """``value / ceiling`` rounded, or None when either is missing or the ceiling is zero."""
    if value is None or not ceiling:
        return None
    return round(value / ceiling, 3)


# ============================================================================ in-namespace tools


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 400_000
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_SINK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nheld\n"


async def _sink(port: int) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(_SINK_RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "0.0.0.0", port, backlog=8192, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"READY sink on :{port}", flush=True)
    async with server:
        await stop.wait()


def sink_main(args: argparse.Namespace) -> int:
    """Hold every connection open and answer each HTTP request with a tiny response."""
    _raise_nofile()
    try:
        asyncio.run(_sink(args.port))
    except OSError as exc:
        print(f"sink: cannot listen on :{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


async def _open_held(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"held\n"), timeout)
    return reader, writer


async def _open_level(
    held: list[asyncio.StreamWriter],
    missing: int,
    host: str,
    port: int,
    parallel: int,
    timeout: float,
    deadline: float,
) -> dict[str, int]:
    """Open ``missing`` more held connections, ``parallel`` at a time, until ``deadline``."""
    failures: dict[str, int] = {}
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            if time.monotonic() > deadline:
                failures["deadline"] = failures.get("deadline", 0) + 1
                return
            try:
                _, writer = await _open_held(host, port, timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                kind = type(exc).__name__
                failures[kind] = failures.get(kind, 0) + 1
                return
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(missing)))
    return failures


async def _hold(host: str, port: int, parallel: int, timeout: float, level_deadline: float) -> None:
    held: list[asyncio.StreamWriter] = []
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        lines.put_nowait(line)
        if not line:
            loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    print("READY hold", flush=True)
    while True:
        raw = await lines.get()
        if not raw:
            break
        line = raw.strip()
        if not line:
            continue
        try:
            target = int(line)
        except ValueError:
            print(json.dumps({"error": f"not a count: {line!r}"}), flush=True)
            continue
        started = time.monotonic()
        failures: dict[str, int] = {}
        # A loaded VIP drops or refuses a few handshakes; retry those (bounded in rounds and time).
        for _ in range(HOLD_ROUNDS):
            if len(held) >= target or time.monotonic() >= started + level_deadline:
                break
            got = await _open_level(
                held, target - len(held), host, port, parallel, timeout, started + level_deadline
            )
            for kind, count in got.items():
                failures[kind] = failures.get(kind, 0) + count
        print(
            json.dumps(
                {
                    "target": target,
                    "held": len(held),
                    "failures": failures,
                    "seconds": round(time.monotonic() - started, 2),
                }
            ),
            flush=True,
        )
    for writer in held:
        writer.close()
    print(json.dumps({"closed": len(held)}), flush=True)


def hold_main(args: argparse.Namespace) -> int:
    """Open keep-alive connections up to each count read from stdin and hold them until EOF."""
    _raise_nofile()
    asyncio.run(_hold(args.host, args.port, args.parallel, args.timeout, args.level_deadline))
    return 0


def probe_main(args: argparse.Namespace) -> int:
    """Sequential new connections: time the TCP handshake and the whole request of each; print JSON."""
    connect_ms: list[float] = []
    request_ms: list[float] = []
    failures: dict[str, int] = {}
    request = f"GET / HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.monotonic() + args.deadline
    for _ in range(args.count):
        if time.monotonic() > deadline:
            failures["deadline"] = failures.get("deadline", 0) + 1
            break
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        try:
            t0 = time.perf_counter()
            sock.connect((args.host, args.port))
            t1 = time.perf_counter()
            sock.sendall(request)
            while sock.recv(65536):
                pass
            t2 = time.perf_counter()
        except OSError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            continue
        finally:
            sock.close()
        connect_ms.append((t1 - t0) * 1000)
        request_ms.append((t2 - t0) * 1000)

    def r(v: float | None) -> float | None:
        return round(v, 3) if v is not None else None

    print(
        json.dumps(
            {
                "count": len(connect_ms),
                "failures": failures,
                "connect_p50_ms": r(percentile(connect_ms, 0.5)),
                "connect_p99_ms": r(percentile(connect_ms, 0.99)),
                "request_p50_ms": r(percentile(request_ms, 0.5)),
                "request_p99_ms": r(percentile(request_ms, 0.99)),
            }
        )
    )
    return 0


# ============================================================================ the testbed


def _sh(argv: list[str], timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run a command in the root namespace (OVS tools), bounded in time."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def short_reason(exc: BaseException) -> str:
    """An exception as one line: its first line and, for daemon errors, the last line of the log it quotes."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0].removesuffix(":")
    if len(lines) > 1:
        text += f": {lines[-1]}"
    return text[:400]


def vswitchd_pid() -> int | None:
    """The pid of the running ovs-vswitchd (the userspace datapath lives in it)."""
    for path in ("/var/run/openvswitch/ovs-vswitchd.pid", "/run/openvswitch/ovs-vswitchd.pid"):
        with contextlib.suppress(OSError, ValueError):
            return int(Path(path).read_text().strip())
    return None


def switch_flow_counts(bridge: str) -> dict[str, int | None]:
    """OpenFlow entries in ``bridge`` and datapath flows in the whole userspace datapath."""
    agg = _sh(["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", bridge]).stdout
    m = re.search(r"flow_count=(\d+)", agg)
    dp = _sh(["ovs-appctl", "dpctl/dump-flows", "netdev@ovs-netdev"], timeout=60).stdout
    return {
        "openflow_flows": int(m.group(1)) if m else None,
        "datapath_flows": sum(
            1 for line in dp.splitlines() if line.strip() and not line.startswith("flow-dump")
        ),
    }


@dataclass
class Settings:
    """How long and how often to measure."""

    quick: bool = False
    repetitions: int = 3
    duration: float = 8.0
    threads: int = 2
    close_connections: int = 16
    keepalive_connections: int = 32
    bulk_bytes: int = 256 * 1024 * 1024
    probe_count: int = 300
    scaling: bool = True
    scaling_levels: tuple[int, ...] = SCALING_LEVELS
    level_deadline: float = 90.0
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    @classmethod
    def for_mode(cls, quick: bool, **overrides: Any) -> Settings:
        """Quick mode: one repetition of short runs, no scaling curves."""
        base = (
            cls(
                quick=True,
                repetitions=1,
                duration=2.0,
                bulk_bytes=32 * 1024 * 1024,
                probe_count=100,
                scaling=False,
            )
            if quick
            else cls()
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        return base


class BenchTestbed:
    """The benchmark testbed: the Lab's network, our extra processes, and the phases between them."""

    def __init__(self, spec: Any, settings: Settings) -> None:
        from topo.lab import Lab  # mininet is only needed by the orchestrator, not by the tools

        self.spec = spec
        self.settings = settings
        self.lab = Lab(spec, start_daemons=False)
        self.procs: list[subprocess.Popen[Any]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="slb-bench-"))
        self.lb_error: str | None = None
        self.env = dict(
            os.environ,
            PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(":"),
            PYTHONUNBUFFERED="1",
        )

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> BenchTestbed:
        self.lab.__enter__()
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process we started (by pid), then the daemons and the network."""
        for proc in reversed(self.procs):
            self._stop_proc(proc)
        self.procs.clear()
        self.lab.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def _stop_proc(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=grace)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def node(self, name: str) -> Any:
        """A Mininet node by name."""
        return self.lab.node(name)

    def popen(self, node: Any, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``node``'s namespace, remembered for cleanup by pid."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc: subprocess.Popen[Any] = node.popen(argv, env=self.env, cwd=str(ROOT), **kwargs)
        self.lab.testbed.remember_pid(proc.pid)
        self.procs.append(proc)
        return proc

    def run(self, node: Any, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` in ``node`` to completion; kill it by pid if it overruns ``timeout``."""
        proc = self.popen(node, argv, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop_proc(proc, grace=2.0)
            raise BenchError(f"{' '.join(argv[:3])}... on {node.name} overran {timeout:.0f}s") from None
        finally:
            if proc in self.procs:
                self.procs.remove(proc)
        return proc.returncode, out, err

    def _prepare(self) -> None:
        s = self.spec
        self.settings.log(f"*** testbed up ({len(s.backends)} backends); starting backends and sinks")
        remember = self.lab.testbed.remember_pid
        for spec_b, node in zip(s.backends, self.lab.backends, strict=True):
            node.start_backend(self.lab.run_dir, spec_b.port, remember)
            node.start_daemon(
                "sink",
                [PY, "-m", "bench.topo_bench", "sink", "--port", str(SINK_PORT)],
                self.lab.run_dir,
                remember,
            )
        # Many short connections from one address: widen the port range and reuse TIME_WAIT ports.
        for c in s.clients:
            node = self.node(c.name)
            node.cmd("sysctl -qw net.ipv4.ip_local_port_range='1024 65000' net.ipv4.tcp_tw_reuse=1")
            node.cmd("sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535")
        for b in s.backends:
            self.node(b.name).cmd("sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535")

    # -- static phase -------------------------------------------------------------------------------
    def _static_neighbours(self, add: bool) -> None:
        dfs = self.spec.dfs[0]
        gw_mac = {p.segment: (p.ipaddr, p.mac) for p in dfs.ports}
        hosts = [*self.spec.clients, *self.spec.backends]
        for h in hosts:
            node = self.node(h.name)
            ip, mac = gw_mac[h.segment]
            intf = node.defaultIntf().name
            targets = [ip] + ([CEILING_VIP] if h.segment == self.spec.clients[0].segment else [])
            for t in targets:
                if add:
                    node.cmd(f"ip neigh replace {t} lladdr {mac} dev {intf} nud permanent")
                else:
                    node.cmd(f"ip neigh del {t} dev {intf} 2>/dev/null")

    def install_static_path(self) -> None:
        """Turn the DFS switch into the static path of the ceiling (no controller attached)."""
        dfs = self.spec.dfs[0]
        by_seg = {p.segment: p for p in dfs.ports}
        cli_seg = self.spec.clients[0].segment
        srv_seg = self.spec.backends[0].segment
        clients = [(c.ipaddr, self.node(c.name).MAC()) for c in self.spec.clients]
        backends = [(b.ipaddr, self.node(b.name).MAC()) for b in self.spec.backends]
        groups, flows = static_path_rules(
            by_seg[cli_seg].port,
            by_seg[srv_seg].port,
            by_seg[cli_seg].mac,
            by_seg[srv_seg].mac,
            clients,
            backends,
            CEILING_VIP,
            [self.spec.clients[0].ipaddr],
        )
        self.clear_switch()
        for g in groups:
            self._ofctl("add-group", g)
        for f in flows:
            self._ofctl("add-flow", f)
        self._static_neighbours(add=True)

    def clear_switch(self) -> None:
        """Remove every flow and group from the DFS switch."""
        self._ofctl("del-flows")
        self._ofctl("del-groups")

    def remove_static_path(self) -> None:
        """Undo :meth:`install_static_path` so the DFS finds an empty switch and fresh ARP caches."""
        self.clear_switch()
        self._static_neighbours(add=False)

    def _ofctl(self, command: str, *args: str) -> None:
        bridge = self.spec.dfs[0].switch
        res = _sh(["ovs-ofctl", "-O", "OpenFlow13", command, bridge, *args])
        if res.returncode != 0:
            raise BenchError(f"ovs-ofctl {command} {bridge} {' '.join(args)}: {res.stderr.strip()}")

    def start_haproxy(self) -> subprocess.Popen[Any]:
        """HAProxy on the HAProxy node, in the foreground (-db), balancing every backend."""
        node = self.node("hap1")
        ip = next(c.ipaddr for c in self.spec.clients if c.name == "hap1")
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(haproxy_config(ip, 80, [(b.name, b.ipaddr, b.port) for b in self.spec.backends]))
        rc, out, err = self.run(node, ["haproxy", "-c", "-f", str(cfg)], timeout=15)
        if rc != 0:
            raise BenchError(f"haproxy refused its configuration: {out}{err}")
        with open(self.tmp / "haproxy.log", "wb") as log:  # the child keeps its own copy of the fd
            proc = self.popen(node, ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"haproxy exited ({proc.returncode}): {(self.tmp / 'haproxy.log').read_text()[-800:]}"
                )
            if f"{ip}:80" in node.cmd("ss -ltnH"):
                return proc
            time.sleep(0.1)
        raise BenchError("haproxy did not listen within 10s")

    def stop_proc(self, proc: subprocess.Popen[Any]) -> None:
        """Stop one of our processes by pid."""
        self._stop_proc(proc)
        if proc in self.procs:
            self.procs.remove(proc)

    # -- load-balancer phase ------------------------------------------------------------------------
    def start_lb(self) -> str | None:
        """Start the CS and DFS daemons; return None, or why the load balancer is unavailable."""
        from nodes.daemon import DaemonError

        try:
            for name in [c.name for c in self.spec.cs] + [d.name for d in self.spec.dfs]:
                self.lab.start_daemon(name)
            self.lab.wait_ready(timeout=30)
        except (DaemonError, TimeoutError, OSError, KeyError, subprocess.SubprocessError) as exc:
            return short_reason(exc)
        return None

    def vip_problem(self, vip: str, port: int, timeout: float = 20.0) -> str | None:
        """None once ``vip``:``port`` answers HTTP 200 from the first client, else why not."""
        client = self.node(self.spec.clients[0].name)
        url = f"http://{vip}:{port}/"
        deadline = time.monotonic() + timeout
        status, body = 0, ""
        while time.monotonic() < deadline:
            status, body = client.http_get(url, 2.0)
            if status == 200:
                return None
            time.sleep(0.5)
        last = body.strip().splitlines()[-1][:200] if body.strip() else "no answer"
        return f"VIP {vip}:{port} did not answer within {timeout:.0f}s (last: status {status}, {last})"

    def lb_pids(self) -> dict[str, int | None]:
        """The pids of the CS and DFS daemons (None when not running)."""
        pids: dict[str, int | None] = {"cs": None, "dfs": None}
        for key, name in (("cs", self.spec.cs[0].name), ("dfs", self.spec.dfs[0].name)):
            daemons = getattr(self.node(name), "daemons", [])
            pids[key] = daemons[-1].pid if daemons and daemons[-1].running() else None
        return pids

    def dfs_status(self) -> Any:
        """The first DFS's status document, or None when it cannot be read."""
        try:
            return self.lab.dfs.status()
        except Exception:  # the daemon may be gone; the caller reports None
            return None

    def cs_status(self) -> Any:
        """The CS's status document, or None when it cannot be read."""
        try:
            return self.lab.cs.status()
        except Exception:
            return None

    # -- measurements -------------------------------------------------------------------------------
    def wrk(self, node: Any, url: str, close: bool, duration: float, connections: int) -> dict[str, Any]:
        """One wrk run from ``node``: new connections per request (close) or keep-alive."""
        argv = [
            "wrk",
            f"-t{self.settings.threads}",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            "--timeout",
            "5s",
        ]
        if close:
            argv += ["-H", "Connection: close"]
        rc, out, err = self.run(node, [*argv, url], timeout=duration + 30)
        if rc != 0:
            raise BenchError(f"wrk exited {rc}: {err.strip()[-500:]}")
        return parse_wrk(out)

    def bulk(self, node: Any, url: str) -> dict[str, Any]:
        """One large HTTP download with curl; Mbit/s of body received."""
        size = self.settings.bulk_bytes
        rc, out, err = self.run(
            node,
            [
                "curl",
                "-sS",
                "--max-time",
                "120",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{time_total}",
                f"{url}bytes/{size}",
            ],
            timeout=130,
        )
        try:
            got, seconds = out.split()
            got_b, secs = int(got), float(seconds)
        except ValueError:
            raise BenchError(f"curl bulk gave {out!r} {err.strip()!r}") from None
        if rc != 0 or got_b != size:
            raise BenchError(f"curl bulk: exit {rc}, {got_b} of {size} bytes: {err.strip()[-300:]}")
        return {"bytes": got_b, "seconds": secs, "mbit_s": round(got_b * 8 / secs / 1e6, 1)}

    def probe(self, node: Any, host: str, port: int) -> dict[str, Any]:
        """Connect-latency probe (sequential new connections) from ``node``."""
        count = self.settings.probe_count
        rc, out, err = self.run(
            node,
            [
                PY,
                "-m",
                "bench.topo_bench",
                "probe",
                "--host",
                host,
                "--port",
                str(port),
                "--count",
                str(count),
                "--deadline",
                "30",
            ],
            timeout=45,
        )
        if rc != 0:
            raise BenchError(f"probe exited {rc}: {err.strip()[-500:]}")
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def check_path(self, node: Any, url: str) -> None:
        """Fail early, with the reason, when ``url`` does not answer from ``node``."""
        status, body = node.http_get(url, 3.0)
        if status != 200:
            raise BenchError(f"{url} does not answer from {node.name}: {status} {body.strip()[-200:]}")


# ============================================================================ scenarios


@dataclass(frozen=True)
class Target:
    """Where a scenario sends its load, and from which client."""

    name: str
    client: str
    host: str
    port: int = 80

    @property
    def url(self) -> str:
        """The base URL (with a trailing slash)."""
        return f"http://{self.host}:{self.port}/"


def targets(spec: Any) -> dict[str, Target]:
    """The target of each scenario in the benchmark testbed."""
    vips = {vs["vs_class"]: vs for vs in spec.virtual_servers if int(vs.get("port", 0)) == 80}
    c1, c2 = spec.clients[0].name, spec.clients[1].name
    hap = next(c.ipaddr for c in spec.clients if c.name == "hap1")
    return {
        "ceiling": Target("ceiling", c1, CEILING_VIP),
        "direct1": Target("direct1", c2, spec.backends[0].ipaddr),
        "haproxy": Target("haproxy", c1, hap),
        "cs_assist": Target("cs_assist", c1, vips["cs_assist"]["vip"]),
        "dfs_assist": Target("dfs_assist", c1, vips["dfs_assist"]["vip"]),
    }


def measure_round(
    bed: BenchTestbed,
    target: Target,
    acc: dict[str, Any],
    pids: dict[str, int | None],
    dfs_status: Callable[[], Any] | None = None,
) -> None:
    """One repetition of every measurement for one scenario, accumulated into ``acc``.

    With ``dfs_status``, the DFS's counters are read just before and after the new-connection run,
    so the packets it saw can be divided by the connections made in that window.
    """
    s = bed.settings
    node = bed.node(target.client)
    # The HAProxy process only matters in its own scenario; a 0% elsewhere would read as a figure.
    watch = {k: p for k, p in pids.items() if k != "haproxy" or target.name == "haproxy"}
    watch["vswitchd"] = vswitchd_pid()

    def timed(run: Callable[[], dict[str, Any]], key: str) -> dict[str, Any]:
        ticks = {k: proc_cpu_ticks(p) for k, p in watch.items()}
        t0 = time.monotonic()
        result = run()
        elapsed = time.monotonic() - t0
        for k, p in watch.items():
            acc.setdefault(key, {}).setdefault(k, []).append(
                cpu_percent(ticks[k], proc_cpu_ticks(p), elapsed)
            )
        return result

    before = dfs_status() if dfs_status else None
    bridge = bed.spec.dfs[0].switch
    baseline = switch_flow_counts(bridge)["openflow_flows"] if dfs_status else None
    close = timed(lambda: bed.wrk(node, target.url, True, s.duration, s.close_connections), "cpu_newconn_pct")
    if dfs_status is not None:
        after = dfs_status()
        made = (close["requests"] or 0) + close["errors"].get("connect", 0)
        acc.setdefault("dfs_windows", []).append(
            dfs_flow_costs(before, after, made) if before is not None and after is not None else None
        )
    acc.setdefault("newconn", []).append(close)
    if dfs_status is not None:
        # Thousands of closed flows leave the switch and the DFS over the next seconds; measuring
        # keep-alive traffic meanwhile would charge that teardown to the offloaded flows.
        _wait_flows_drain(bed, below=1, timeout=20.0)
        _wait_switch_settled(bridge, baseline, timeout=20.0)
    keep = timed(
        lambda: bed.wrk(node, target.url, False, s.duration, s.keepalive_connections), "cpu_keepalive_pct"
    )
    acc.setdefault("keepalive", []).append(keep)
    if dfs_status is not None:
        _wait_flows_drain(bed, below=1, timeout=20.0)
        _wait_switch_settled(bridge, baseline, timeout=20.0)
    acc.setdefault("bulk", []).append(bed.bulk(node, target.url))
    acc.setdefault("probe", []).append(bed.probe(node, target.host, target.port))


def combine_dfs_windows(windows: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Per-flow DFS costs over every new-connection window of a scenario."""
    good = [w for w in windows if w is not None]
    if not good:
        return {"status": "unavailable: the DFS status could not be read"}
    conns = sum(w["connections"] for w in good)
    pins = sum(w["packet_ins"] for w in good)
    offl = sum(w["flows_offloaded"] for w in good)
    return {
        "status": "ok",
        "connections": conns,
        "packet_ins": pins,
        "flows_offloaded": offl,
        "packet_ins_per_flow": round(pins / conns, 3) if conns else None,
        "offloaded_per_flow": round(offl / conns, 3) if conns else None,
        "counter_deltas_last_window": good[-1]["counter_deltas"],
    }


def finish_scenario(target: Target, acc: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repetitions of one scenario."""
    newconn, keep, bulk, probe = acc["newconn"], acc["keepalive"], acc["bulk"], acc["probe"]

    def errors(runs: list[dict[str, Any]]) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in runs:
            for k, v in r["errors"].items():
                total[k] = total.get(k, 0) + v
        return total

    result: dict[str, Any] = {
        "status": "ok",
        "client": target.client,
        "target": f"{target.host}:{target.port}",
        "path": PATHS[target.name],
        "new_conn_per_s": summary(r["req_per_s"] for r in newconn),
        "keepalive_req_per_s": summary(r["req_per_s"] for r in keep),
        "bulk_mbit_s": summary(r["mbit_s"] for r in bulk),
        "keepalive_latency_ms": {p: summary(r["latency_ms"].get(p) for r in keep) for p in ("p50", "p99")},
        "newconn_latency_ms": {p: summary(r["latency_ms"].get(p) for r in newconn) for p in ("p50", "p99")},
        "connect_ms": {p: summary(r.get(f"connect_{p}_ms") for r in probe) for p in ("p50", "p99")},
        "request_ms": {p: summary(r.get(f"request_{p}_ms") for r in probe) for p in ("p50", "p99")},
        "errors": {
            "newconn": errors(newconn),
            "keepalive": errors(keep),
            "probe": errors([{"errors": r["failures"]} for r in probe]),
        },
        "cpu_newconn_pct": {k: summary(v) for k, v in acc.get("cpu_newconn_pct", {}).items()},
        "cpu_keepalive_pct": {k: summary(v) for k, v in acc.get("cpu_keepalive_pct", {}).items()},
    }
    if not any(r["req_per_s"] for r in newconn + keep):
        result["status"] = "failed: no request succeeded"
    return result


def run_scenarios(
    bed: BenchTestbed, names: list[str], pids: dict[str, int | None], dfs_window: bool
) -> dict[str, dict[str, Any]]:
    """Measure ``names`` round-robin (repetition by repetition, so drift spreads evenly)."""
    tgs = targets(bed.spec)
    results: dict[str, dict[str, Any]] = {}
    accs: dict[str, dict[str, Any]] = {}
    live = []
    for name in names:
        try:
            bed.check_path(bed.node(tgs[name].client), tgs[name].url)
            live.append(name)
            accs[name] = {}
        except BenchError as exc:
            results[name] = {"status": f"failed: {exc}", "path": PATHS[name]}
    for rep in range(bed.settings.repetitions):
        for name in list(live):
            bed.settings.log(f"    {name}: repetition {rep + 1}/{bed.settings.repetitions}")
            try:
                measure_round(bed, tgs[name], accs[name], pids, bed.dfs_status if dfs_window else None)
            except (BenchError, ValueError, KeyError) as exc:
                results[name] = {"status": f"failed: {exc}", "path": PATHS[name]}
                live.remove(name)
    for name in live:
        results[name] = finish_scenario(tgs[name], accs[name])
        if dfs_window:
            results[name]["dfs"] = combine_dfs_windows(accs[name].get("dfs_windows", []))
    return results


# ============================================================================ scaling


class Holder:
    """The connection holder on a client: asks for a level, waits for its report line."""

    def __init__(self, bed: BenchTestbed, node: Any, host: str, port: int, deadline: float) -> None:
        self.bed = bed
        self.proc = bed.popen(
            node,
            [
                PY,
                "-m",
                "bench.topo_bench",
                "hold",
                "--host",
                host,
                "--port",
                str(port),
                "--level-deadline",
                str(deadline),
            ],
            stdin=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        line = self.next_line(15)
        if not line.startswith("READY"):
            raise BenchError(f"holder did not start: {line!r}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def next_line(self, timeout: float) -> str:
        """The holder's next output line, or a BenchError after ``timeout``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"holder silent for {timeout:.0f}s") from None
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise BenchError(f"holder exited: {err[-500:]}")
        return line.strip()

    def ask(self, count: int) -> None:
        """Ask the holder to hold ``count`` connections in all."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> dict[str, Any]:
        """The holder's report on the last :meth:`ask`."""
        return json.loads(self.next_line(timeout))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close every held connection and stop the holder (by pid if it does not exit)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.bed.stop_proc(self.proc)


def holders_needed(max_level: int, margin: int = 200) -> int:
    """Holder processes needed for ``max_level`` connections under this process's hard fd limit.

    The hard limit cannot be raised without CAP_SYS_RESOURCE, which containers often lack, so large
    levels are spread over several processes instead.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_process = 1_000_000 if hard == resource.RLIM_INFINITY else max(1000, hard - margin)
    return max(1, -(-max_level // per_process))


class HolderGroup:
    """Several holder processes on one client, asked for a total that they share evenly."""

    def __init__(
        self, bed: BenchTestbed, node: Any, host: str, port: int, deadline: float, count: int
    ) -> None:
        self.members: list[Holder] = []
        try:
            for _ in range(count):
                self.members.append(Holder(bed, node, host, port, deadline))
        except BaseException:
            self.close()
            raise

    def level(self, total: int, timeout: float) -> dict[str, Any]:
        """Hold ``total`` connections across the members; one merged report."""
        n = len(self.members)
        for i, member in enumerate(self.members):
            member.ask(total // n + (1 if i < total % n else 0))
        reports = [member.answer(timeout) for member in self.members]
        failures: dict[str, int] = {}
        for r in reports:
            for kind, count in (r.get("failures") or {}).items():
                failures[kind] = failures.get(kind, 0) + int(count)
        return {
            "target": total,
            "held": sum(int(r.get("held", 0)) for r in reports),
            "failures": failures,
            "seconds": max(float(r.get("seconds", 0)) for r in reports),
            "processes": n,
        }

    def close(self) -> None:
        """Close every member."""
        for member in self.members:
            member.close()


def _sample(bed: BenchTestbed, pids: dict[str, int | None]) -> dict[str, Any]:
    vs = vswitchd_pid()
    counts = switch_flow_counts(bed.spec.dfs[0].switch)
    dfs = bed.dfs_status() or {}
    cs = bed.cs_status() or {}
    cs_flows = cs.get("flows") if isinstance(cs, dict) else None
    return {
        "cs_flows_active": cs_flows.get("active") if isinstance(cs_flows, dict) else None,
        "rss_cs_kb": proc_rss_kb(pids["cs"]),
        "rss_dfs_kb": proc_rss_kb(pids["dfs"]),
        "rss_vswitchd_kb": proc_rss_kb(vs),
        **counts,
        "dfs_flows_active": dfs.get("flows_active") if isinstance(dfs, dict) else None,
    }


def _per_flow(now: int | None, base: int | None, flows: int) -> float | None:
    if now is None or base is None or flows <= 0:
        return None
    return round((now - base) * 1024 / flows, 1)


def run_scaling(bed: BenchTestbed, pids: dict[str, int | None]) -> dict[str, Any]:
    """New-connection rate, CPU and memory as held flows grow, for each class's hold VIP."""
    s = bed.settings
    tgs = targets(bed.spec)
    out: dict[str, Any] = {"levels": list(s.scaling_levels)}
    holds = {vs["vs_class"]: vs for vs in bed.spec.virtual_servers if int(vs.get("port", 0)) == SINK_PORT}
    holder_client = bed.node(bed.spec.clients[1].name)
    pids = {**pids, "vswitchd": vswitchd_pid()}
    for cls in LB_SCENARIOS:
        vs = holds.get(cls)
        if vs is None:
            out[cls] = {"status": f"unavailable: the testbed has no {cls} VIP on port {SINK_PORT}"}
            continue
        problem = bed.vip_problem(vs["vip"], SINK_PORT)
        if problem:
            out[cls] = {"status": f"unavailable: {problem}"}
            continue
        s.log(f"*** scaling {cls}: holding flows through {vs['vip']}:{SINK_PORT}")
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        base = _sample(bed, pids)
        holder: HolderGroup | None = None
        try:
            holder = HolderGroup(
                bed,
                holder_client,
                vs["vip"],
                SINK_PORT,
                s.level_deadline,
                holders_needed(max(s.scaling_levels)),
            )
            for level in s.scaling_levels:
                report = holder.level(level, s.level_deadline + 30)
                held = int(report.get("held", 0))
                row: dict[str, Any] = {
                    "target": level,
                    "held": held,
                    "reached": held >= level,
                    "open_seconds": report.get("seconds"),
                    "failures": report.get("failures"),
                }
                time.sleep(1.0)  # let the last flows settle into the switch before sampling it
                idle_ticks = {k: proc_cpu_ticks(p) for k, p in pids.items()}
                t0 = time.monotonic()
                time.sleep(2.0)
                idle_s = time.monotonic() - t0
                row["cpu_idle_pct"] = {
                    k: cpu_percent(idle_ticks[k], proc_cpu_ticks(p), idle_s) for k, p in pids.items()
                }
                row.update(_sample(bed, pids))
                row["cs_bytes_per_flow"] = _per_flow(row["rss_cs_kb"], base["rss_cs_kb"], held)
                row["dfs_bytes_per_flow"] = _per_flow(row["rss_dfs_kb"], base["rss_dfs_kb"], held)
                row["switch_bytes_per_flow"] = _per_flow(
                    row["rss_vswitchd_kb"], base["rss_vswitchd_kb"], held
                )
                ticks = {k: proc_cpu_ticks(p) for k, p in pids.items()}
                t0 = time.monotonic()
                try:
                    w = bed.wrk(
                        bed.node(tgs[cls].client), tgs[cls].url, True, s.duration, s.close_connections
                    )
                    row["new_conn_per_s"] = w["req_per_s"]
                    row["newconn_errors"] = w["errors"]
                except (BenchError, ValueError) as exc:
                    row["new_conn_per_s"] = None
                    row["newconn_error"] = str(exc)[:300]
                elapsed = time.monotonic() - t0
                row["cpu_newconn_pct"] = {
                    k: cpu_percent(ticks[k], proc_cpu_ticks(p), elapsed) for k, p in pids.items()
                }
                rows.append(row)
                s.log(f"    {cls}: {held}/{level} held, {row['new_conn_per_s']} new conn/s")
                if not row["reached"]:
                    rest = [lv for lv in s.scaling_levels if lv > level]
                    notes.append(
                        f"level {level} not reached ({held} held within {s.level_deadline:.0f}s: "
                        f"{report.get('failures')}); skipped {rest or 'no higher level'}"
                    )
                    break
            out[cls] = {"status": "ok", "baseline": base, "rows": rows, "notes": notes}
        except (BenchError, ValueError) as exc:
            out[cls] = {"status": f"failed: {exc}", "baseline": base, "rows": rows, "notes": notes}
        finally:
            if holder is not None:
                holder.close()
        _wait_flows_drain(bed)
    return out


def _wait_switch_settled(bridge: str, baseline: int | None, timeout: float) -> None:
    """Wait (bounded) until the per-flow entries of a run have left the switch.

    DFS_ASSIST flows are learned by the switch itself, so the DFS's own flow count does not see
    them; the switch's entry count does.
    """
    if baseline is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = switch_flow_counts(bridge)["openflow_flows"]
        if now is None or now <= baseline:
            return
        time.sleep(0.5)


def _wait_flows_drain(bed: BenchTestbed, below: int = 1000, timeout: float = 30.0) -> None:
    """Give closed flows time to leave the DFS (bounded); the next measurement starts either way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = bed.dfs_status()
        if not isinstance(st, dict) or int(st.get("flows_active", 0) or 0) < below:
            return
        time.sleep(0.5)


# ============================================================================ the whole topology run


def run_topology(settings: Settings, config: Path = BENCH_TOML) -> dict[str, Any]:
    """Bring up the benchmark testbed, measure every scenario, tear it all down; return the figures."""
    if os.geteuid() != 0:
        return {"status": "unavailable: needs root (network namespaces and Open vSwitch)"}
    from topo.spec import SpecError, load_spec

    try:
        spec = load_spec(config)
    except SpecError as exc:
        return {"status": f"unavailable: {exc}"}
    doc: dict[str, Any] = {
        "status": "ok",
        "testbed": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "paths": PATHS,
        "scenarios": {},
        "settings": {
            "repetitions": settings.repetitions,
            "duration_s": settings.duration,
            "wrk_threads": settings.threads,
            "close_connections": settings.close_connections,
            "keepalive_connections": settings.keepalive_connections,
            "bulk_bytes": settings.bulk_bytes,
            "probe_count": settings.probe_count,
            "ovs_other_config": dict(spec.ovs_other_config),
        },
    }
    doc["notes"] = backend_notes()
    wanted = [n for n in ALL_SCENARIOS if n in settings.scenarios]
    started = time.monotonic()
    with BenchTestbed(spec, settings) as bed:
        static = [n for n in STATIC_SCENARIOS if n in wanted]
        if static:
            settings.log(f"*** static phase: {', '.join(static)}")
            bed.install_static_path()
            hap = None
            if "haproxy" in static:
                try:
                    hap = bed.start_haproxy()
                except BenchError as exc:
                    doc["scenarios"]["haproxy"] = {"status": f"unavailable: {exc}", "path": PATHS["haproxy"]}
                    static.remove("haproxy")
            pids: dict[str, int | None] = {"haproxy": hap.pid} if hap else {}
            doc["scenarios"].update(run_scenarios(bed, static, pids, dfs_window=False))
            if hap is not None:
                bed.stop_proc(hap)
            bed.remove_static_path()
        lb = [n for n in LB_SCENARIOS if n in wanted]
        if lb or (settings.scaling and wanted):
            settings.log("*** load-balancer phase: starting the CS and DFS daemons")
            bed.clear_switch()
            reason = bed.start_lb()
            if reason:
                settings.log(f"    load balancer unavailable: {reason}")
                for name in lb:
                    doc["scenarios"][name] = {"status": f"unavailable: {reason}", "path": PATHS[name]}
                doc["scaling"] = {"status": f"unavailable: {reason}"}
            else:
                pids = bed.lb_pids()
                tgs = targets(spec)
                ready = []
                for name in lb:
                    problem = bed.vip_problem(tgs[name].host, tgs[name].port)
                    if problem:
                        settings.log(f"    {name} unavailable: {problem}")
                        doc["scenarios"][name] = {"status": f"unavailable: {problem}", "path": PATHS[name]}
                    else:
                        ready.append(name)
                doc["scenarios"].update(run_scenarios(bed, ready, pids, dfs_window=True))
                if settings.scaling:
                    doc["scaling"] = run_scaling(bed, pids)
                problems = bed.lab.log_problems()
                doc["daemon_log_problems"] = problems[:50]
        if not settings.scaling:
            doc.setdefault("scaling", {"status": "skipped: quick mode" if settings.quick else "skipped"})
        doc["run_dir"] = str(bed.lab.run_dir)
    doc["leftovers"] = bed.lab.testbed.leftovers()
    doc["seconds"] = round(time.monotonic() - started, 1)
    derive(doc)
    return doc


def backend_notes() -> list[str]:
    """Known properties of the HTTP backend that bound what the figures can show."""
    from nodes.backend import BackendHandler

    if getattr(BackendHandler, "disable_nagle_algorithm", False):
        return []
    return [
        "the HTTP backend (nodes/backend.py) sends headers and body in separate writes with Nagle's "
        "algorithm on, so on keep-alive connections each response waits for the client's delayed ACK "
        "(~40 ms): keep-alive req/s and latency are bounded by that, on every path alike"
    ]


METRICS = (
    ("new_conn_per_s", "new conn/s"),
    ("keepalive_req_per_s", "keep-alive req/s"),
    ("bulk_mbit_s", "bulk Mbit/s"),
)

TARGETS = (
    ("cs_assist", "keepalive_req_per_s", 0.9, "offloaded keep-alive req/s (CS_ASSIST) >= 0.9 x ceiling"),
    ("dfs_assist", "keepalive_req_per_s", 0.9, "offloaded keep-alive req/s (DFS_ASSIST) >= 0.9 x ceiling"),
    ("cs_assist", "bulk_mbit_s", 0.9, "offloaded throughput (CS_ASSIST) >= 0.9 x ceiling"),
    ("dfs_assist", "bulk_mbit_s", 0.9, "offloaded throughput (DFS_ASSIST) >= 0.9 x ceiling"),
    ("dfs_assist", "new_conn_per_s", 0.8, "DFS_ASSIST new conn/s >= 0.8 x ceiling"),
)


def _median(doc: dict[str, Any], scenario: str, metric: str) -> float | None:
    sc = doc.get("scenarios", {}).get(scenario, {})
    value = sc.get(metric, {})
    return value.get("median") if isinstance(value, dict) else None


def derive(doc: dict[str, Any]) -> None:
    """Add ratios to the ceiling, flow setup latency and the target verdicts to a topology document."""
    ratios: dict[str, dict[str, float | None]] = {}
    ceiling_connect = (
        doc.get("scenarios", {}).get("ceiling", {}).get("connect_ms", {}).get("p50", {}) or {}
    ).get("median")
    for name, sc in doc.get("scenarios", {}).items():
        if sc.get("status") != "ok":
            continue
        ratios[name] = {m: ratio(_median(doc, name, m), _median(doc, "ceiling", m)) for m, _ in METRICS}
        connect = sc.get("connect_ms", {}).get("p50", {}).get("median")
        if connect is not None and ceiling_connect is not None:
            sc["flow_setup_ms"] = round(connect - ceiling_connect, 3)
    doc["ratios"] = ratios
    verdicts = []
    for scenario, metric, goal, label in TARGETS:
        r = ratios.get(scenario, {}).get(metric)
        verdicts.append({"target": label, "ratio": r, "goal": goal, "met": None if r is None else r >= goal})
    cs = _median(doc, "cs_assist", "new_conn_per_s")
    hp = _median(doc, "haproxy", "new_conn_per_s")
    verdicts.append(
        {
            "target": "CS_ASSIST new conn/s above HAProxy's",
            "ratio": ratio(cs, hp),
            "goal": 1.0,
            "met": None if cs is None or hp is None else cs > hp,
        }
    )
    doc["targets"] = verdicts


# ============================================================================ command line


def main(argv: list[str] | None = None) -> int:
    """The in-namespace tools, or the whole topology benchmark (``run``)."""
    ap = argparse.ArgumentParser(prog="python -m bench.topo_bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sink", help="hold connections, answer each request with a tiny response")
    p.add_argument("--port", type=int, default=SINK_PORT)
    p = sub.add_parser("hold", help="hold N connections open; counts are read from stdin, one per line")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=SINK_PORT)
    p.add_argument("--parallel", type=int, default=256, help="connections being opened at once")
    p.add_argument("--timeout", type=float, default=5.0, help="per-connection timeout, seconds")
    p.add_argument(
        "--level-deadline", type=float, default=90.0, help="give up on a level after this many seconds"
    )
    p = sub.add_parser("probe", help="time the handshake of sequential new connections")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--deadline", type=float, default=30.0)
    p = sub.add_parser("run", help="the whole topology benchmark")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, help="write the results document here")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}")
    p.add_argument("--repetitions", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--no-scaling", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "sink":
        return sink_main(args)
    if args.command == "hold":
        if args.parallel < 1 or args.timeout <= 0 or args.level_deadline <= 0:
            ap.error("--parallel, --timeout and --level-deadline must be positive")
        return hold_main(args)
    if args.command == "probe":
        if args.count < 1 or args.timeout <= 0:
            ap.error("--count and --timeout must be positive")
        return probe_main(args)
    settings = Settings.for_mode(
        args.quick,
        repetitions=args.repetitions,
        duration=args.duration,
        scenarios=parse_scenarios(args.scenarios) if args.scenarios else None,
    )
    if args.no_scaling:
        settings.scaling = False
    doc = run_topology(settings)
    text = json.dumps(doc, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0 if doc.get("status") == "ok" else 1


def parse_levels(text: str) -> tuple[int, ...]:
    """A comma-separated list of held-flow counts, increasing, each in 1..200000."""
    try:
        levels = tuple(int(n) for n in text.split(",") if n.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or any(not 1 <= n <= 200_000 for n in levels) or list(levels) != sorted(set(levels)):
        raise argparse.ArgumentTypeError(f"levels must increase, each in 1..200000: {text!r}")
    return levels


def parse_scenarios(text: str) -> tuple[str, ...]:
    """A comma-separated scenario list, checked against the known scenarios."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(ALL_SCENARIOS)}"
        )
    return names


if __name__ == "__main__":
    sys.exit(main())
