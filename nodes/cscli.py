"""``cs``: the Control Segment's command line, a client of the daemon's local HTTP status endpoint.

::

    cs [--url http://127.0.0.1:7780] [--json] status
    cs flows [--limit N]
    cs servers
    cs vs
    cs drain SERVER        # SERVER or VS/SERVER
    cs undrain SERVER
    cs reload

Exit status: 0 on success, 1 when the daemon refused the request (e.g. a reload whose configuration
is invalid, an unknown server), 2 when the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:7780"
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2


class Unreachable(Exception):
    """The daemon did not answer."""


class Refused(Exception):
    """The daemon answered with an error."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("error") if isinstance(body, dict) else None
        super().__init__(message or f"HTTP {status}")


def request(base: str, path: str, method: str = "GET", timeout: float = 5.0) -> Any:
    """Call the status endpoint and return its decoded JSON."""
    url = base.rstrip("/") + path
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            body = None
        raise Refused(exc.code, body) from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the CS daemon at {base}: {reason}") from exc
    except ValueError as exc:
        raise Unreachable(f"{base} answered something that is not JSON: {exc}") from exc


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Render rows as an aligned text table with the given (key, heading) columns."""
    cells = [[heading for _, heading in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else str(row.get(key)) for key, _ in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _bytes(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def render_status(data: dict[str, Any]) -> str:
    """Human view of ``/status``."""
    lines = [
        f"config:        {data.get('config')}",
        f"uptime:        {data.get('uptime')} s",
        f"virtual srvs:  {len(data.get('virtual_servers') or [])}",
        f"flows:         {(data.get('flows') or {}).get('active')} / {(data.get('flows') or {}).get('max')}",
        f"persistence:   {data.get('persistence_records')} records",
        f"DFS sessions:  {', '.join(data.get('dfs') or []) or 'none'}",
    ]
    listen = data.get("listen")
    if isinstance(listen, dict):
        lines.append("listening:     " + ", ".join(f"{k}={v}" for k, v in listen.items()))
    counters = data.get("counters") or {}
    if counters:
        lines.append("counters:")
        width = max(len(k) for k in counters)
        lines.extend(f"  {k.ljust(width)}  {v}" for k, v in counters.items())
    return "\n".join(lines)


def render_servers(rows: list[dict[str, Any]]) -> str:
    """Human view of ``/servers``."""
    for r in rows:
        r["addr"] = f"{r['address']}:{r['port']}" if r.get("port") else r.get("address")
        r["in"] = _bytes(r.get("inbound_bytes"))
        r["out"] = _bytes(r.get("outbound_bytes"))
    return table(
        rows,
        [
            ("vs", "VS"),
            ("server", "SERVER"),
            ("addr", "ADDRESS"),
            ("weight", "WEIGHT"),
            ("state", "STATE"),
            ("health_detail", "LAST CHECK"),
            ("active", "ACTIVE"),
            ("total", "TOTAL"),
            ("in", "IN"),
            ("out", "OUT"),
        ],
    )


def render_vs(rows: list[dict[str, Any]]) -> str:
    """Human view of ``/vs``."""
    for r in rows:
        r["addr"] = f"{r['protocol']} {r['vip']}:{r['port']}"
        r["errs"] = ",".join(f"{k}={v}" for k, v in sorted((r.get("errors") or {}).items())) or "-"
        r["mode"] = "maintenance" if r.get("maintenance") else "serving"
    return table(
        rows,
        [
            ("name", "VS"),
            ("addr", "ADDRESS"),
            ("class", "CLASS"),
            ("method", "METHOD"),
            ("mode", "MODE"),
            ("eligible", "UP"),
            ("servers", "SERVERS"),
            ("active", "ACTIVE"),
            ("total", "TOTAL"),
            ("errs", "ERRORS"),
        ],
    )


def render_flows(rows: list[dict[str, Any]]) -> str:
    """Human view of ``/flows``."""
    return table(
        rows,
        [
            ("dfs", "DFS"),
            ("flow_id", "FLOW"),
            ("vs", "VS"),
            ("client", "CLIENT"),
            ("vip", "VIP"),
            ("server", "SERVER"),
            ("reaping", "REAPING"),
            ("inbound_bytes", "IN BYTES"),
            ("outbound_bytes", "OUT BYTES"),
        ],
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``cs`` argument parser."""
    p = argparse.ArgumentParser(prog="cs", description="Inspect and steer a running Control Segment daemon.")
    p.add_argument(
        "--url", default=DEFAULT_URL, help=f"status endpoint of the daemon (default {DEFAULT_URL})"
    )
    p.add_argument("--json", action="store_true", help="print the daemon's JSON instead of a table")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="summary and counters")
    flows = sub.add_parser("flows", help="the flow table")
    flows.add_argument("--limit", type=int, default=100)
    sub.add_parser("servers", help="real servers with health and statistics")
    sub.add_parser("vs", help="virtual servers with statistics")
    for name, text in (
        ("drain", "stop sending new flows to SERVER (VS/SERVER for one VS)"),
        ("undrain", "let SERVER take new flows again"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("server")
    sub.add_parser("reload", help="re-read the configuration file")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    base = args.url
    try:
        if args.command == "status":
            data = request(base, "/status", timeout=args.timeout)
            text = render_status(data)
        elif args.command == "flows":
            data = request(base, f"/flows?limit={max(0, args.limit)}", timeout=args.timeout)
            text = render_flows(list(data))
        elif args.command == "servers":
            data = request(base, "/servers", timeout=args.timeout)
            text = render_servers(list(data))
        elif args.command == "vs":
            data = request(base, "/vs", timeout=args.timeout)
            text = render_vs(list(data))
        elif args.command in ("drain", "undrain"):
            quoted = urllib.parse.quote(args.server, safe="")
            data = request(base, f"/{args.command}/{quoted}", method="POST", timeout=args.timeout)
            text = f"{args.command}ed: {', '.join(data.get('servers', []))}"
        else:
            data = request(base, "/reload", method="POST", timeout=args.timeout)
            changes = data.get("changes", [])
            text = f"reloaded {data.get('config')}: {len(changes)} change(s)"
            text += "".join(f"\n  {c['kind']} {c['name']}" for c in changes)
    except Unreachable as exc:
        print(f"cs: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        if args.json and exc.body is not None:
            print(json.dumps(exc.body, indent=2))
        print(f"cs: {args.command} refused: {exc}", file=sys.stderr)
        problems = exc.body.get("problems", []) if isinstance(exc.body, dict) else []
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
