"""Control Segment benchmark: pure decisions per second, and QUERY->REPLY round trips over loopback UDP.

::

    python bench/bench_cs.py [--quick] [--json PATH] [--seconds S]
    python bench/bench_cs.py --dfs-peers 1,2,4,8 [--window W] [--quick] [--json PATH] [--seconds S]

1. ``decisions``: :meth:`ControlSegment.handle` on QUERY messages for each selection method, no I/O.
2. ``udp``: one client keeps one QUERY outstanding against the real daemon (``nodes.csd``, started here on
   127.0.0.1 with ephemeral ports) and times each REPLY; the same client against a plain UDP echo server
   in its own process gives the ceiling of this machine's loopback + Python socket path. The report gives
   both rates, their ratio, and p50/p99 latency.

With ``--dfs-peers N[,N...]`` only the scaling curve runs (the decisions are the same at every level):
for each level a fresh daemon is started and N simulated DFS peers drive it, each with its own UDP socket
and its own CSMB session (HELLO both ways, then the ACK of the SSMB RESET a new DFS gets, as a real DFS
does), each keeping ``--window`` QUERYs outstanding (default 1) for the time budget. The same N peers
then drive the echo server, so each level reports the daemon's aggregate QUERY->REPLY rate
(``dfs_peers.<N>.udp.cs.per_second``), the echo ceiling with the same concurrency
(``dfs_peers.<N>.udp.echo.per_second``) and their ratio; with one level its document is also the
top-level ``udp`` (what ``bench.run`` reads, one level per call).

The daemon's real servers are all on 127.0.0.1 and have no health check, so nothing is probed.
Every loop is bounded by a message count and a wall-clock budget. ``--quick`` takes about 5 s (CI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from slbcore.cs.config import Method, parse_config_text  # noqa: E402
from slbcore.cs.engine import ControlSegment  # noqa: E402
from slbproto import csmb, ssmb  # noqa: E402
from slbproto.constants import CsmbError, SsmbType  # noqa: E402
from slbproto.peer import SerialCounter  # noqa: E402

SERVERS = 16
STARTUP_DEADLINE = 20.0
HANDSHAKE_DEADLINE = 10.0
# An outstanding QUERY unanswered this long is counted lost and replaced by a new one.
LOSS_TIMEOUT = 1.0
MAX_PEERS = 256
# Load that runs before each measured window and is not counted (first flows, cold caches).
WARMUP = 0.25
MAX_WINDOW = 64


def bench_config(method: str, status_port: int = 0) -> str:
    """A CS configuration with one VS of SERVERS real servers on 127.0.0.1 (no health check: never probed)."""
    servers = "".join(
        f'[[virtual_server.real_server]]\nname = "s{i}"\naddress = "127.0.0.1"\nport = {20001 + i}\n'
        f"weight = {1 + i % 3}\n"
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


@contextlib.contextmanager
def running_csd(tmp: Path, env: dict[str, str]) -> Iterator[dict[str, int]]:
    """The real daemon on 127.0.0.1 with ephemeral ports; yields its csmb/ssmb/status ports."""
    cfg = tmp / "cs.toml"
    cfg.write_text(bench_config("maglev"))
    log = tmp / "csd.log"
    log.unlink(missing_ok=True)
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
    try:
        m = _wait_line(csd, r"READY csmb=\S+:(\d+) ssmb=127\.0\.0\.1:(\d+) status=\S+:(\d+)", log)
        yield {"csmb": int(m.group(1)), "ssmb": int(m.group(2)), "status": int(m.group(3))}
    finally:
        _stop_process(csd)


@contextlib.contextmanager
def running_echo(env: dict[str, str]) -> Iterator[int]:
    """The plain UDP echo server in its own process; yields its port."""
    echo = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-echo"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )
    port = 0
    try:
        port = int(_wait_line(echo, r"READY echo=(\d+)").group(1))
        yield port
    finally:
        if port:
            with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"quit", ("127.0.0.1", port))
        _stop_process(echo)


def _stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _bench_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _ratio(cs: dict[str, Any], echo: dict[str, Any]) -> float | None:
    return round(cs["per_second"] / echo["per_second"], 3) if echo["per_second"] else None


def bench_udp(seconds: float, max_messages: int) -> dict[str, Any]:
    """Round trips against the daemon and against a plain echo server."""
    env = _bench_env()
    with tempfile.TemporaryDirectory(prefix="bench-cs-") as tmp:
        with running_csd(Path(tmp), env) as ports:
            serials = SerialCounter()
            cs_result = _round_trips(
                ("127.0.0.1", ports["ssmb"]),
                lambda i: ssmb.encode_datagram([serials.stamp(_query(i))]),
                seconds,
                max_messages,
            )
        with running_echo(env) as echo_port:
            sample = ssmb.encode_datagram([_query(0)])
            echo_result = _round_trips(("127.0.0.1", echo_port), lambda i: sample, seconds, max_messages)
    return {"cs": cs_result, "echo": echo_result, "ratio_cs_to_echo": _ratio(cs_result, echo_result)}


# ------------------------------------------------------------------------------ many DFS peers

# Offsets in an encoded single-QUERY datagram (PROTOCOL.md, flow message). The driver patches a
# template instead of encoding each QUERY: on a 2-core machine the generator shares the CPU with the
# daemon, and encoding costs about as much as the two system calls. The template is checked against
# slbproto's decoder before use (``QueryTemplate.check``).
_OFF_SERIAL_GLOBAL = 0
_OFF_SERIAL_BYTYPE = 2
_OFF_MSG_TYPE = 4
_OFF_ERROR = 6
_OFF_SRC_IP = 8
_OFF_SRC_PORT = 16
_OFF_FLOW_ID = 52
_FLOW_MESSAGE_LEN = 56


class QueryTemplate:
    """QUERY datagrams for flow ``i`` of one peer, serials stamped, without going through the encoder."""

    def __init__(self) -> None:
        self.base = bytes(ssmb.encode_datagram([_query(0)]))
        if len(self.base) != _FLOW_MESSAGE_LEN:
            raise RuntimeError(f"QUERY datagram is {len(self.base)} octets, expected {_FLOW_MESSAGE_LEN}")

    def make(self, serials: SerialCounter, flow_id: int, client: int) -> bytes:
        """The datagram for one new flow: fresh serials, a client address/port from ``client``."""
        buf = bytearray(self.base)
        g, t = serials.next(SsmbType.QUERY)
        struct.pack_into("!HH", buf, _OFF_SERIAL_GLOBAL, g, t)
        buf[_OFF_SRC_IP : _OFF_SRC_IP + 4] = bytes((198, 51, (client >> 8) & 255, client & 255))
        struct.pack_into("!H", buf, _OFF_SRC_PORT, 1024 + client % 60000)
        struct.pack_into("!I", buf, _OFF_FLOW_ID, flow_id)
        return bytes(buf)

    def check(self) -> None:
        """Raise unless a patched datagram decodes to the QUERY it is meant to be."""
        serials = SerialCounter(start=4660)
        data = self.make(serials, 0x01020304, 777)
        (msg,) = ssmb.decode_datagram(data)
        if not isinstance(msg, ssmb.Query):
            raise RuntimeError(f"QUERY template decodes to {type(msg).__name__}")
        want = (4660, 4660, "198.51.3.9", 1024 + 777, 0x01020304)
        got = (msg.serial_global, msg.serial_bytype, msg.orig_src_ipaddr, msg.orig_src_port, msg.flow_id)
        if got != want:
            raise RuntimeError(f"QUERY template is wrong: decoded {got}, expected {want}")


def reply_flow_id(data: bytes, want_type: int) -> int | None:
    """The flow_id of a single-message datagram of ``want_type`` with error OK, else None."""
    if len(data) != _FLOW_MESSAGE_LEN or data[_OFF_MSG_TYPE] != want_type:
        return None
    if struct.unpack_from("!H", data, _OFF_ERROR)[0] != 0:
        return None
    return int(struct.unpack_from("!I", data, _OFF_FLOW_ID)[0])


@dataclass(slots=True)
class Peer:
    """One simulated DFS: a UDP socket, its serials and outstanding QUERYs, and (for the CS) its CSMB."""

    index: int
    udp: socket.socket
    tcp: socket.socket | None = None
    serials: SerialCounter = field(default_factory=SerialCounter)
    outstanding: dict[int, float] = field(default_factory=dict)  # flow_id -> send time
    next_flow: int = 1
    answered: int = 0
    lost: int = 0
    other: int = 0

    @property
    def endpoint(self) -> tuple[str, int]:
        """The SSMB endpoint this peer announces and queries from."""
        addr = self.udp.getsockname()
        return str(addr[0]), int(addr[1])

    def close(self) -> None:
        """Close both sockets."""
        for sock in (self.udp, self.tcp):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


def _new_peers(n: int) -> list[Peer]:
    peers: list[Peer] = []
    try:
        for i in range(n):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peers.append(Peer(i, udp))
            udp.bind(("127.0.0.1", 0))
            udp.setblocking(False)
    except OSError:
        for p in peers:
            p.close()
        raise
    return peers


def _read_csmb(tcp: socket.socket, decoder: csmb.StreamDecoder, inbox: list[Any], deadline: float) -> None:
    """Read from the CSMB stream into inbox until something arrives or the deadline passes."""
    tcp.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        data = tcp.recv(65536)
    except TimeoutError:
        return
    if not data:
        raise RuntimeError("the CS closed the CSMB connection during HELLO")
    inbox.extend(decoder.feed(data))


def _await_csmb(
    tcp: socket.socket, decoder: csmb.StreamDecoder, inbox: list[Any], kind: type, deadline: float
) -> Any:
    while True:
        for i, msg in enumerate(inbox):
            if isinstance(msg, kind):
                return inbox.pop(i)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no CSMB {kind.__name__} from the CS within {HANDSHAKE_DEADLINE}s")
        _read_csmb(tcp, decoder, inbox, deadline)


def handshake(peer: Peer, csmb_port: int) -> None:
    """Play a DFS's CSMB start: HELLO, ACK of the CS's HELLO, then ACK of the SSMB RESET of first contact."""
    deadline = time.monotonic() + HANDSHAKE_DEADLINE
    tcp = socket.create_connection(("127.0.0.1", csmb_port), timeout=HANDSHAKE_DEADLINE)
    peer.tcp = tcp
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    serials = SerialCounter()
    decoder = csmb.StreamDecoder()
    inbox: list[Any] = []
    ip, port = peer.endpoint
    tcp.sendall(csmb.encode_message(serials.stamp(csmb.Hello(ip, "0.0.0.0", 0, 1, 0, port))))
    ack = _await_csmb(tcp, decoder, inbox, csmb.Ack, deadline)
    if ack.error != CsmbError.OK:
        raise RuntimeError(f"the CS refused HELLO: error {ack.error}")
    _await_csmb(tcp, decoder, inbox, csmb.Hello, deadline)
    tcp.sendall(csmb.encode_message(serials.stamp(csmb.Ack())))
    _await_csmb(tcp, decoder, inbox, csmb.AddVs, deadline)
    while True:
        try:
            data = peer.udp.recv(65536)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError("no SSMB RESET from the CS on first contact") from None
            time.sleep(0.002)
            continue
        if any(isinstance(m, ssmb.Reset) for m in ssmb.decode_datagram(data)):
            break
    tcp.sendall(csmb.encode_message(serials.stamp(csmb.Ack())))


def drive(
    peers: list[Peer],
    dest: tuple[str, int],
    want_type: int,
    window: int,
    seconds: float,
    max_messages: int,
    template: QueryTemplate,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """Each peer keeps ``window`` QUERYs outstanding against ``dest``; aggregate results over ``seconds``.

    The first ``warmup`` seconds run the same load but are not counted. An answer counts when it is a
    single ``want_type`` message (REPLY from the CS, the QUERY itself from the echo server) for one of
    the peer's outstanding flow_ids. QUERYs still outstanding at the end are neither answered nor lost.
    """
    sel = selectors.DefaultSelector()
    latencies: list[float] = []
    sent = 0
    client = 0

    def send_one(p: Peer, now: float) -> None:
        nonlocal sent, client
        fid = p.next_flow
        p.next_flow = fid + 1 if fid + 1 < 0x7FFF_FFFF else 1
        client += 1
        data = template.make(p.serials, fid, client)
        # A full socket buffer drops the QUERY like the network would: the sweep counts it lost.
        with contextlib.suppress(BlockingIOError):
            p.udp.sendto(data, dest)
        p.outstanding[fid] = now
        sent += 1

    start = time.perf_counter()
    measured = start + warmup
    deadline = measured + seconds
    next_sweep = start + LOSS_TIMEOUT / 4
    try:
        for p in peers:
            p.outstanding.clear()
            sel.register(p.udp, selectors.EVENT_READ, p)
            for _ in range(window):
                send_one(p, start)
        while sent < max_messages:
            now = time.perf_counter()
            if now >= deadline:
                break
            for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                p = key.data
                for _ in range(window * 4):  # bounded drain per wake-up, fair to the other peers
                    try:
                        data = p.udp.recv(65536)
                    except BlockingIOError:
                        break
                    t = time.perf_counter()
                    fid = reply_flow_id(data, want_type)
                    t0 = p.outstanding.pop(fid, None) if fid is not None else None
                    if t0 is None:
                        p.other += 1  # a late answer to a QUERY already counted lost, or another type
                        continue
                    if t >= measured:
                        latencies.append(t - t0)
                        p.answered += 1
                    if t < deadline and sent < max_messages:
                        send_one(p, t)
            now = time.perf_counter()
            if now >= next_sweep:
                next_sweep = now + LOSS_TIMEOUT / 4
                for p in peers:
                    expired = [fid for fid, t0 in p.outstanding.items() if now - t0 > LOSS_TIMEOUT]
                    for fid in expired:
                        del p.outstanding[fid]
                        p.lost += now >= measured
                        send_one(p, now)
    finally:
        for p in peers:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(p.udp)
        sel.close()
    elapsed = max(1e-9, time.perf_counter() - measured)
    result = _summary(latencies, sum(p.lost for p in peers), elapsed)
    rates = [p.answered / elapsed for p in peers]
    result["warmup_s"] = warmup
    result["sent"] = sent
    result["unmatched"] = sum(p.other for p in peers)
    result["per_peer_min"] = round(min(rates))
    result["per_peer_max"] = round(max(rates))
    return result


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def bench_level(
    peers_n: int,
    window: int,
    seconds: float,
    max_messages: int,
    tmp: Path,
    env: dict[str, str],
    echo_port: int,
) -> dict[str, Any]:
    """One point of the curve: a fresh daemon driven by ``peers_n`` DFS peers, then the echo ceiling."""
    template = QueryTemplate()
    template.check()
    warmup = min(WARMUP, seconds / 4)
    peers = _new_peers(peers_n)
    try:
        with running_csd(tmp, env) as ports:
            for p in peers:
                handshake(p, ports["csmb"])
            registered = len(_status(ports["status"]).get("dfs", []))
            if registered != peers_n:
                raise RuntimeError(f"{registered} DFS registered with the CS, expected {peers_n}")
            cs_result = drive(
                peers,
                ("127.0.0.1", ports["ssmb"]),
                SsmbType.REPLY,
                window,
                seconds,
                max_messages,
                template,
                warmup,
            )
            status = _status(ports["status"])
    finally:
        for p in peers:
            p.close()
    counters = status.get("counters", {})
    cs_result["daemon"] = {
        "rx_query": counters.get("rx_query", 0),
        "reply_ok": counters.get("reply_ok", 0),
        "ssmb_dropped": status.get("ssmb_receiver", {}).get("dropped", 0),
        "ssmb_duplicate": status.get("ssmb_receiver", {}).get("duplicate", 0),
        "dfs_registered": registered,
    }
    echo_peers = _new_peers(peers_n)
    try:
        echo_result = drive(
            echo_peers,
            ("127.0.0.1", echo_port),
            SsmbType.QUERY,
            window,
            seconds,
            max_messages,
            template,
            warmup,
        )
    finally:
        for p in echo_peers:
            p.close()
    return {
        "dfs_peers": peers_n,
        "window": window,
        "udp": {"cs": cs_result, "echo": echo_result, "ratio_cs_to_echo": _ratio(cs_result, echo_result)},
    }


def bench_dfs_peers(levels: list[int], window: int, seconds: float, max_messages: int) -> dict[str, Any]:
    """The QUERY->REPLY rate of one daemon as the number of DFS peers grows (fresh daemon per level)."""
    env = _bench_env()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cs-peers-") as tmp, running_echo(env) as echo_port:
        for n in levels:
            out[str(n)] = bench_level(n, window, seconds, max_messages, Path(tmp), env, echo_port)
    return out


def parse_levels(text: str) -> list[int]:
    """``1,2,4,8`` -> [1, 2, 4, 8] (each 1..MAX_PEERS, no repeats)."""
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not levels or any(not 1 <= n <= MAX_PEERS for n in levels) or len(set(levels)) != len(levels):
        raise argparse.ArgumentTypeError(f"peer counts must be distinct, each 1..{MAX_PEERS}: {text!r}")
    return levels


def _window(text: str) -> int:
    try:
        w = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= w <= MAX_WINDOW:
        raise argparse.ArgumentTypeError(f"window must be 1..{MAX_WINDOW}")
    return w


def _print_udp(udp: dict[str, Any]) -> None:
    for name in ("cs", "echo"):
        r = udp[name]
        line = f"  {name:5s} {r['per_second']:>8,d}/s  p50 {r['p50_us']} us  p99 {r['p99_us']} us"
        print(f"{line}  lost {r['lost']}")
    print(f"  CS / echo ratio: {udp['ratio_cs_to_echo']}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print (and optionally save) the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about 5 s in total (for CI)")
    p.add_argument("--seconds", type=float, default=None, help="budget per measurement")
    p.add_argument("--json", dest="json_path", help="also write the results here")
    p.add_argument(
        "--dfs-peers",
        type=parse_levels,
        metavar="N[,N...]",
        help="only the scaling curve: QUERY->REPLY rate with N simulated DFS peers, per level",
    )
    p.add_argument(
        "--window", type=_window, default=1, help="QUERYs each peer keeps outstanding (with --dfs-peers)"
    )
    p.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_echo:
        _echo_server()
        return 0
    if args.seconds is not None and not 0 < args.seconds <= 600:
        p.error("--seconds must be in (0, 600]")
    per_method = args.seconds if args.seconds is not None else (0.4 if args.quick else 3.0)
    per_udp = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    max_messages = 200_000 if args.quick else 2_000_000
    results: dict[str, Any] = {"quick": args.quick, "servers_per_vs": SERVERS}
    if args.dfs_peers:
        levels = bench_dfs_peers(args.dfs_peers, args.window, per_udp, max_messages)
        results["dfs_peers"] = levels
        if len(levels) == 1:
            results["udp"] = next(iter(levels.values()))["udp"]
        print(f"QUERY -> REPLY with N DFS peers, {args.window} outstanding each, on loopback:")
        for n, level in levels.items():
            udp = level["udp"]
            cs, echo = udp["cs"], udp["echo"]
            print(
                f"  {n:>3s} peers  CS {cs['per_second']:>8,d}/s  echo {echo['per_second']:>8,d}/s"
                f"  ratio {udp['ratio_cs_to_echo']}  p99 {cs['p99_us']} us  lost {cs['lost']}"
            )
    else:
        results["decisions"] = bench_decisions(per_method, max_messages)
        results["udp"] = bench_udp(per_udp, max_messages)
        print("pure decisions per second (QUERY -> REPLY, no I/O):")
        for method, r in results["decisions"].items():
            print(f"  {method:22s} {r['per_second']:>10,d}/s  ({r['decisions']} in {r['seconds']} s)")
        print("UDP round trips on loopback, one outstanding:")
        _print_udp(results["udp"])
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
