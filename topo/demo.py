"""`make demo`: the default testbed, real HTTP through its VIP, and a report of what happened.

What it does, in order:

1. brings up the default topology (``topo/configs/default.toml``): 1 CS, 1 DFS with its Open
   vSwitch switch, 3 HTTP backends, 2 clients, all real processes in network namespaces;
2. drives HTTP clients through each VIP: curl (a new connection per request) from one client,
   the Python client from the other, with new connections and with keep-alive connections;
3. waits for the flows to end, so the DFS reports DELETE with the switch's own counters;
4. prints the report: requests per backend, flows offloaded, QUERY/REPLY counts, DELETE
   counters next to what the clients counted on the wire, the switch's flow table;
5. tears everything down and says what to try next.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from topo.lab import Lab, wait_for
from topo.run import DEFAULT, http_vips
from topo.spec import SpecError, load_spec

PY = sys.executable


def heading(text: str) -> None:
    """Print a section heading."""
    print(f"\n=== {text}")


def table(rows: list[list[Any]], header: list[str]) -> None:
    """Print rows as an aligned text table."""
    cols = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    for i, r in enumerate(cols):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def counter(doc: Any, *path: str, default: Any = 0) -> Any:
    """Dig a value out of a nested status document, or ``default``."""
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return default
        doc = doc[key]
    return doc


def drive(lab: Lab, requests: int) -> dict[str, Any]:
    """Push HTTP through every VIP from every client; return the clients' own accounting."""
    results: dict[str, Any] = {}
    for name, vip, port in http_vips(lab):
        url = f"http://{vip}:{port}/"
        per_vip: dict[str, Any] = {"by_backend": Counter(), "ok": 0, "failed": 0, "runs": []}
        c1, c2 = lab.client(0), lab.client(min(1, len(lab.spec.clients) - 1))
        for c in {c1.name: c1, c2.name: c2}.values():
            c.count_traffic(vip, port)
        for _ in range(requests):  # curl: a new TCP connection per request
            status, body = c1.http_get(url)
            if status == 200:
                per_vip["by_backend"][body.strip()] += 1
                per_vip["ok"] += 1
            else:
                per_vip["failed"] += 1
        per_vip["runs"].append({"client": c1.name, "tool": "curl", "mode": "close", "requests": requests})
        for mode, conns in (("close", 1), ("keepalive", 3)):
            out = c2.cmd(
                f"{PY} -m nodes.httpclient {url} --requests {requests} --mode {mode} --connections {conns}"
            )
            summary = json.loads(out.strip().splitlines()[-1])
            per_vip["by_backend"].update(summary["by_backend"])
            per_vip["ok"] += summary["ok"]
            per_vip["failed"] += summary["requests"] - summary["ok"]
            per_vip["runs"].append(
                {
                    "client": c2.name,
                    "tool": "python",
                    "mode": mode,
                    "requests": requests,
                    "connections": conns,
                    "p50_ms": summary["p50_ms"],
                    "p99_ms": summary["p99_ms"],
                }
            )
        per_vip["wire"] = {c.name: c.counted() for c in {c1.name: c1, c2.name: c2}.values()}
        results[name] = per_vip
    return results


def report(lab: Lab, results: dict[str, Any], flow_tables: dict[str, str], started: float) -> bool:
    """Print what happened; return True when every request succeeded and the counters agree."""
    ok = True
    heading("Requests per backend (each backend answers with its own name)")
    rows = []
    for name, r in results.items():
        spread = " ".join(f"{b}={n}" for b, n in sorted(r["by_backend"].items()))
        rows.append([name, r["ok"], r["failed"], spread])
        ok &= r["failed"] == 0
    table(rows, ["VIP", "ok", "failed", "served by"])

    cs_status = lab.cs.status()
    cs_counters = counter(cs_status, "counters", default={})
    heading("Control Segment: one decision per flow")
    rows = [
        [
            cs_counters.get("rx_query", 0),
            cs_counters.get("reply_ok", 0),
            sum(v for k, v in cs_counters.items() if k.startswith("reply_") and k != "reply_ok"),
            cs_counters.get("rx_delete", 0),
            counter(cs_status, "flows", "active"),
        ]
    ]
    table(rows, ["QUERY received", "REPLY ok", "REPLY refused", "DELETE received", "flows active now"])
    for dfs in lab.dfs_nodes:
        st = dfs.status()
        c = counter(st, "counters", default={})
        heading(f"Data Flow Segment {dfs.name}: the switch forwards, the DFS sees first packets only")
        flows = c.get("flows_offloaded", 0)
        per_flow = f"{c.get('packet_ins', 0) / flows:.2f}" if flows else "-"
        table(
            [
                [
                    c.get("queries_sent", 0),
                    c.get("query_retransmits", 0),
                    flows,
                    c.get("held_packets", 0),
                    c.get("packet_ins", 0),
                    per_flow,
                    c.get("flows_ended", 0),
                ]
            ],
            [
                "QUERY sent",
                "retransmits",
                "flows offloaded",
                "packets held",
                "packet-ins",
                "per flow",
                "DELETE sent",
            ],
        )
        print(
            "  (packet-ins include ARP; every other packet of every flow was forwarded by Open vSwitch alone)"
        )

    heading("DELETE counters (switch) against what the clients counted on the wire")
    rows = []
    for name, r in results.items():
        sent = sum(w.get("sent", (0, 0))[0] for w in r["wire"].values())
        recv = sum(w.get("received", (0, 0))[0] for w in r["wire"].values())
        sent_b = sum(w.get("sent", (0, 0))[1] for w in r["wire"].values())
        recv_b = sum(w.get("received", (0, 0))[1] for w in r["wire"].values())
        vs = next((v for v in counter(cs_status, "virtual_servers", default=[]) if v.get("name") == name), {})
        exact = (
            vs.get("inbound_pkts"),
            vs.get("inbound_bytes"),
            vs.get("outbound_pkts"),
            vs.get("outbound_bytes"),
        ) == (
            sent,
            sent_b + 14 * sent,
            recv,
            recv_b + 14 * recv,
        )
        rows.append(
            [
                name,
                "yes" if exact else "NO",
                f"{sent} pkts / {sent_b} B",
                f"{recv} pkts / {recv_b} B",
                f"{vs.get('inbound_pkts', '?')} pkts / {vs.get('inbound_bytes', '?')} B",
                f"{vs.get('outbound_pkts', '?')} pkts / {vs.get('outbound_bytes', '?')} B",
            ]
        )
    table(
        rows,
        ["VIP", "equal", "clients sent (IP)", "clients received (IP)", "DELETE inbound", "DELETE outbound"],
    )
    print("  (the switch counts Ethernet frames: its bytes = IP bytes + 14 per packet)")

    for dfs in lab.dfs_nodes:
        heading(f"Switch {dfs.switch_name}: OpenFlow table right after the traffic (ovs-ofctl dump-flows)")
        print(flow_tables.get(dfs.name, "")[:6000])

    problems = lab.log_problems()
    heading("Daemon logs")
    print("  no exceptions, no OpenFlow errors" if not problems else "\n".join(f"  {p}" for p in problems))
    ok &= not problems
    print(f"\n  demo took {time.monotonic() - started:.1f}s; logs and configs in {lab.run_dir}")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when every request succeeded and nothing went wrong."""
    ap = argparse.ArgumentParser(description="The testbed demo: real HTTP through the VIPs, then a report")
    ap.add_argument(
        "config", nargs="?", default=str(DEFAULT), help="testbed file (default: the default testbed)"
    )
    ap.add_argument("--requests", type=int, default=20, help="requests per client and mode (default 20)")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.config)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    from nodes.net import default_port_type

    print(f"*** bringing up {spec.name}: {spec.description}")
    print(f"*** Open vSwitch userspace datapath, {default_port_type()} switch ports")
    with Lab(spec) as lab:
        print(f"*** up in {time.monotonic() - started:.1f}s; driving HTTP through the VIPs")
        results = drive(lab, args.requests)
        flow_tables = {d.name: d.dump_flows() for d in lab.dfs_nodes}
        idle = max(int(counter(d.timeouts, "idle", default=30)) for d in spec.dfs)
        print(f"*** waiting for the flows to end (FIN, or idle timeout {idle}s) so the DFS reports DELETE")
        total = sum(r["ok"] + r["failed"] for r in results.values())
        wait_for(
            "the CS to see every flow end",
            lambda: counter(lab.cs.status(), "flows", "active", default=None) == 0,
            timeout=idle + 15,
        ) if total else None
        ok = report(lab, results, flow_tables, started)
    print(
        "\nTry next (after `source .venv/bin/activate`):\n"
        "  slb-topo topo/configs/default.toml --cli     # the same testbed, interactive: vs, flows, stats\n"
        "  slb-topo topo/configs/multi-vip.toml         # several VIPs, algorithms, a DFS_ASSIST VIP\n"
        "  slb-topo topo/configs/ecmp.toml              # two DFS nodes behind an ECMP router\n"
        "  slb-topo topo/configs/pair.toml --cli        # active/standby CS pair: `stop cs1`, then `stats`\n"
        "  cp topo/configs/default.toml my.toml        # change the pool, then: slb-topo my.toml\n"
        "  make bench                                   # offload vs direct path vs HAProxy"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
