"""dfs: query a running dfsd's status endpoint.

dfs [--url URL] status [--json]
dfs [--url URL] flows [--json]

The default URL is the daemon's default status endpoint, http://127.0.0.1:7790.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from slbcore.dfs.config import DEFAULT_STATUS_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_STATUS_PORT}"


def fetch(url: str, path: str, timeout: float = 5.0) -> Any:
    """GET url+path and decode the JSON body."""
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout) as resp:
        return json.loads(resp.read())


def render_status(st: dict[str, Any]) -> str:
    """Human-readable status."""
    lines = [
        f"DFS {st['name']} (epoch {st['epoch']})",
        f"  switch connected: {st['switch_connected']}   CS connected: {st['cs_connected']}",
        f"  virtual servers: {st['virtual_servers']}   flows: {st['flows_active']} offloaded, "
        f"{st['flows_pending']} pending   held packets: {st['held_packets']}",
        f"  neighbours: {st.get('neighbours', 0)}   routed destinations: {st.get('routed_destinations', 0)}",
    ]
    if st.get("kernel_routes"):
        kr = st["kernel_routes"]
        lines.append(f"  kernel routes: {kr.get('routes', 0)} (read {kr.get('reads', 0)} times)")
    if st.get("counters"):
        lines.append("  counters:")
        lines += [f"    {k:<28} {v}" for k, v in st["counters"].items()]
    if st.get("errors"):
        lines.append("  errors:")
        lines += [f"    {k:<28} {v}" for k, v in st["errors"].items()]
    return "\n".join(lines)


def render_flows(rows: list[dict[str, Any]]) -> str:
    """One line per flow."""
    out = [f"{'id':>10} {'state':<10} {'proto':>5} {'client':<22} {'vip':<22} server"]
    for r in rows:
        out.append(
            f"{r['flow_id']:>10} {r['state']:<10} {r['proto']:>5} {r['client']:<22} {r['vip']:<22} "
            f"{r.get('server', '-')}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dfs`` command."""
    ap = argparse.ArgumentParser(prog="dfs", description="Inspect a running DFS daemon")
    ap.add_argument("--url", default=DEFAULT_URL, help=f"status endpoint (default {DEFAULT_URL})")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("status", "flows"):
        p = sub.add_parser(name)
        p.add_argument("--json", action="store_true", help="print raw JSON")
    args = ap.parse_args(argv)
    try:
        body = fetch(args.url, "/" + args.cmd)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"dfs: cannot read {args.url}/{args.cmd}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
    else:
        print(render_status(body) if args.cmd == "status" else render_flows(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
