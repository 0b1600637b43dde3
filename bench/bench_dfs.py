"""Data Flow Segment benchmark: what offloading a flow costs, measured on a real OVS bridge.

::

    python -m bench.bench_dfs [--quick] [--json PATH] [--connections N]

Two client/server namespace pairs, both on userspace OVS bridges:

* through the DFS: client -> VIP on a ``fail_mode=secure`` OpenFlow 1.3 bridge run by ``dfsd``,
  with a fast scripted CS on loopback that answers every QUERY at once (so the numbers are the
  DFS's and the switch's, not a CS's decision time);
* direct: client -> server on a plain standalone bridge (``NORMAL`` forwarding), the baseline.

Measured:

1. ``setup_latency_ms``: SYN sent to SYN-ACK received at the client (the time ``connect()``
   takes), one connection at a time. Through the DFS that includes the packet-in, the QUERY and
   REPLY, the two flow-mods and the release of the held SYN. The report gives p50/p90/p99 of both
   paths and their ratio.
2. ``new_flows_per_s``: short connections (connect, close) from several client threads, bounded
   by a count and a time budget; every one through the DFS is a new offloaded flow.
3. ``packet_ins_per_flow``: the DFS's packet-ins divided by the flows it offloaded during the
   runs; about 1 means that after its first packet a flow costs the DFS nothing.

Every loop is bounded by a count and a deadline. ``--quick`` takes about 15 s (CI). Needs root
and Open vSwitch; without them it prints why and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodes.ovsbed import CLIENT_SIDE, SERVER_SIDE, DfsdHandle, OvsBed, ovs_problem, sh  # noqa: E402
from slbproto import csmb  # noqa: E402
from slbproto.constants import VsClass, VsFlag  # noqa: E402
from slbtools.scripted_cs import ScriptedCs  # noqa: E402

TAG = f"{os.getpid() % 100000}"
BR_DFS, BR_DIRECT = f"bdfs{TAG}", f"bdir{TAG}"
NS = {"c": f"bdc{TAG}", "s": f"bds{TAG}", "dc": f"bddc{TAG}", "ds": f"bdds{TAG}"}
VIP, SERVER, PORT = "10.0.9.100", "10.0.2.10", 9000
DIRECT_SERVER = "10.1.0.2"
STARTUP_DEADLINE = 30.0
VS = csmb.VirtualServer(int(VsFlag.TRANSLATE_ADDR), VIP, PORT, VsClass.CS_ASSIST, 6)
# Many short connections from one client address: reuse TIME_WAIT ports, use a wide range.
SYSCTLS = ("net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000")

# Runs in a server namespace: accept and close, as fast as it can.
ACCEPTOR = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(4096)
print("LISTENING", flush=True)
while True:
    c, _ = srv.accept()
    c.close()
"""

# Runs in a client namespace. "latency": N sequential connects, each timed. "rate": T threads
# connect+close until N are done or the budget is spent. Prints one JSON line.
CLIENT = r"""
import json, socket, sys, threading, time
mode, host, port, n, threads, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), float(sys.argv[6])
deadline = time.monotonic() + budget
def one():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.settimeout(5)
    t0 = time.perf_counter()
    try:
        s.connect((host, port))
        return time.perf_counter() - t0
    except OSError:
        return None
    finally:
        s.close()
if mode == "latency":
    times, failed = [], 0
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        dt = one()
        if dt is None:
            failed += 1
        else:
            times.append(dt)
    print(json.dumps({"times": times, "failed": failed}))
else:
    lock = threading.Lock()
    state = {"left": n, "ok": 0, "failed": 0}
    def worker():
        while time.monotonic() < deadline:
            with lock:
                if state["left"] <= 0:
                    return
                state["left"] -= 1
            ok = one() is not None
            with lock:
                state["ok" if ok else "failed"] += 1
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps({"ok": state["ok"], "failed": state["failed"], "elapsed": time.perf_counter() - t0}))
"""


def log(msg: str) -> None:
    """Progress to stderr; stdout keeps the table."""
    print(msg, file=sys.stderr, flush=True)


class Testbed:
    """Both bridges, four namespaces, the CS, dfsd and the two acceptors; ``close`` undoes all."""

    def __init__(self, tmp: Path) -> None:
        self.bed = OvsBed(tmp)
        self.cs: ScriptedCs
        self.dfsd: DfsdHandle

    def _acceptor(self, ns: str) -> None:
        proc = self.bed.popen(
            ns,
            [sys.executable, "-c", ACCEPTOR, str(PORT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "LISTENING" not in line:
            raise RuntimeError(f"acceptor in {ns} did not start")

    def start(self) -> None:
        """Build everything; on failure the caller's ``close`` removes what was built."""
        bed = self.bed
        bed.add_bridge(BR_DFS, secure=True)
        bed.add_host(
            NS["c"], BR_DFS, CLIENT_SIDE.port, ["10.0.1.50/24"], gateway=CLIENT_SIDE, sysctls=SYSCTLS
        )
        bed.add_host(
            NS["s"], BR_DFS, SERVER_SIDE.port, [f"{SERVER}/24"], gateway=SERVER_SIDE, sysctls=SYSCTLS
        )
        bed.add_bridge(BR_DIRECT, secure=False)
        bed.add_host(NS["dc"], BR_DIRECT, 1, ["10.1.0.1/24"], sysctls=SYSCTLS)
        bed.add_host(NS["ds"], BR_DIRECT, 2, [f"{DIRECT_SERVER}/24"], sysctls=SYSCTLS)
        # counters only: the rate runs would otherwise keep every QUERY and DELETE
        self.cs = ScriptedCs([VS], {PORT: (SERVER, PORT)}, record=False)
        bed.defer(self.cs.close)
        self.dfsd = bed.start_dfsd(
            BR_DFS,
            name="dfs-bench",
            cs_csmb_port=self.cs.csmb_port,
            cs_ssmb_port=self.cs.ssmb_port,
            vservers=1,
            timeouts="idle = 10\nfin_idle = 1",
            args=("--log-level", "WARNING"),
            deadline=STARTUP_DEADLINE,
        )
        self._acceptor(NS["s"])
        self._acceptor(NS["ds"])

    def status(self) -> dict[str, Any]:
        """The DFS's ``/status`` document."""
        return self.dfsd.status()  # type: ignore[no-any-return]

    def client(self, ns: str, mode: str, host: str, n: int, threads: int, budget: float) -> dict[str, Any]:
        """Run the CLIENT script in namespace ``ns``; its JSON result."""
        out = sh(
            "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT,
            mode, host, str(PORT), str(n), str(threads), str(budget),
            timeout=budget + 30,
        )  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop every process and remove every bridge, namespace and veth this bed made."""
        self.bed.close()


def latency_summary(times: list[float], failed: int) -> dict[str, Any]:
    """p50/p90/p99/mean in milliseconds."""
    if not times:
        return {"n": 0, "failed": failed}
    ms = sorted(t * 1000 for t in times)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3)

    return {
        "n": len(ms),
        "failed": failed,
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "mean": round(statistics.fmean(ms), 3),
    }


def run(quick: bool, connections: int | None) -> dict[str, Any]:
    """Build the testbed, run the three measurements, tear everything down."""
    n_lat = 100 if quick else 500
    n_rate = connections or (600 if quick else 3000)
    threads = 4
    budget = 5.0 if quick else 30.0
    with tempfile.TemporaryDirectory(prefix="bench-dfs-") as tmpdir:
        bed = Testbed(Path(tmpdir))
        try:
            log("bench_dfs: building the testbed")
            bed.start()
            # warm-up: the DFS learns the server's MAC, both paths fill their caches
            bed.client(NS["c"], "latency", VIP, 3, 1, budget)
            bed.client(NS["dc"], "latency", DIRECT_SERVER, 3, 1, budget)
            st0 = bed.status()
            log(f"bench_dfs: setup latency, {n_lat} sequential connections per path")
            dfs_lat = bed.client(NS["c"], "latency", VIP, n_lat, 1, budget)
            direct_lat = bed.client(NS["dc"], "latency", DIRECT_SERVER, n_lat, 1, budget)
            log(f"bench_dfs: new flows per second, {n_rate} connections, {threads} threads")
            dfs_rate = bed.client(NS["c"], "rate", VIP, n_rate, threads, budget)
            direct_rate = bed.client(NS["dc"], "rate", DIRECT_SERVER, n_rate, threads, budget)
            st1 = bed.status()
        finally:
            bed.close()
    c0, c1 = st0["counters"], st1["counters"]
    flows = c1.get("flows_offloaded", 0) - c0.get("flows_offloaded", 0)
    packet_ins = c1.get("packet_ins", 0) - c0.get("packet_ins", 0)
    late = c1.get("packet_ins_after_offload", 0) - c0.get("packet_ins_after_offload", 0)
    lat_dfs = latency_summary(dfs_lat["times"], dfs_lat["failed"])
    lat_direct = latency_summary(direct_lat["times"], direct_lat["failed"])
    rate_dfs = dfs_rate["ok"] / dfs_rate["elapsed"] if dfs_rate["elapsed"] else 0.0
    rate_direct = direct_rate["ok"] / direct_rate["elapsed"] if direct_rate["elapsed"] else 0.0
    return {
        "benchmark": "bench_dfs",
        "quick": quick,
        "setup_latency_ms": {
            "dfs": lat_dfs,
            "direct": lat_direct,
            "ratio_p50": round(lat_dfs["p50"] / lat_direct["p50"], 2)
            if lat_dfs.get("p50") and lat_direct.get("p50")
            else None,
        },
        "new_flows_per_s": {
            "dfs": round(rate_dfs, 1),
            "direct": round(rate_direct, 1),
            "ratio": round(rate_direct / rate_dfs, 2) if rate_dfs else None,
            "dfs_connections": dfs_rate,
            "direct_connections": direct_rate,
            "threads": threads,
        },
        "packet_ins_per_flow": round(packet_ins / flows, 3) if flows else None,
        "late_packet_ins_per_flow": round(late / flows, 3) if flows else None,
        "flows_offloaded": flows,
        "packet_ins": packet_ins,
        "dfs_errors": st1.get("errors", {}),
    }


def table(res: dict[str, Any]) -> str:
    """The human-readable summary."""
    lat, rate = res["setup_latency_ms"], res["new_flows_per_s"]
    d, b = lat["dfs"], lat["direct"]
    rows = [
        f"{'metric':<34} {'through DFS':>14} {'direct':>12} {'ratio':>8}",
        f"{'setup latency p50 (ms)':<34} {d.get('p50', '-'):>14} {b.get('p50', '-'):>12} "
        f"{lat['ratio_p50'] or '-':>8}",
        f"{'setup latency p90 (ms)':<34} {d.get('p90', '-'):>14} {b.get('p90', '-'):>12}",
        f"{'setup latency p99 (ms)':<34} {d.get('p99', '-'):>14} {b.get('p99', '-'):>12}",
        f"{'new flows per second':<34} {rate['dfs']:>14} {rate['direct']:>12} {rate['ratio'] or '-':>8}",
        f"{'packet-ins per offloaded flow':<34} {res['packet_ins_per_flow']!s:>14}",
        f"{'  of which overtook the entries':<34} {res['late_packet_ins_per_flow']!s:>14}",
        f"{'flows offloaded':<34} {res['flows_offloaded']:>14}",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the DFS benchmark; print a table, optionally write JSON."""
    ap = argparse.ArgumentParser(prog="bench_dfs", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run for CI (about 15 s)")
    ap.add_argument("--json", dest="json_path", help="also write the results here")
    ap.add_argument("--connections", type=int, default=None, help="connections for the rate run")
    args = ap.parse_args(argv)
    why = ovs_problem()
    if why:
        print(f"bench_dfs: cannot run: {why}", file=sys.stderr)
        return 2
    res = run(args.quick, args.connections)
    print(table(res))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res, indent=2) + "\n")
    ok = bool(res["flows_offloaded"]) and res["setup_latency_ms"]["dfs"].get("n", 0) > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
