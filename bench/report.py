"""Turn a benchmark results document (``latest.json``) into ``REPORT.md``, PNG plots and a summary table.

    python -m bench.report [bench/results/latest.json] [--out DIR]

Everything is derived from the JSON, so a report can be re-rendered from an old results file.
Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCENARIO_ORDER = ("ceiling", "direct1", "haproxy", "cs_assist", "dfs_assist")
LABELS = {
    "ceiling": "ceiling (static switch path)",
    "direct1": "direct, one backend",
    "haproxy": "HAProxy",
    "cs_assist": "LB CS_ASSIST",
    "dfs_assist": "LB DFS_ASSIST",
}
COMPONENT_FIGURES = 16
METRICS = (
    ("new_conn_per_s", "new conn/s"),
    ("keepalive_req_per_s", "keep-alive req/s"),
    ("bulk_mbit_s", "bulk Mbit/s"),
)


def _med(sc: dict[str, Any], *path: str) -> float | None:
    node: Any = sc
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    if isinstance(node, dict):
        node = node.get("median")
    return node if isinstance(node, int | float) and not isinstance(node, bool) else None


def fmt(value: Any, digits: int = 0) -> str:
    """A number for a table: thousands separators, ``-`` when missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _scenarios(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = doc.get("topology", {}).get("scenarios", {})
    return [(n, found[n]) for n in SCENARIO_ORDER if n in found] + [
        (n, s) for n, s in found.items() if n not in SCENARIO_ORDER
    ]


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def scenario_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per scenario: rates with their ratio to the ceiling, latencies, flow setup."""
    ratios = doc.get("topology", {}).get("ratios", {})
    rows = []
    for name, sc in _scenarios(doc):
        if sc.get("status") != "ok":
            rows.append([LABELS.get(name, name), str(sc.get("status", "?"))[:120], *["-"] * 7])
            continue
        r = ratios.get(name, {})
        rows.append(
            [
                LABELS.get(name, name),
                f"{fmt(_med(sc, 'new_conn_per_s'))} ({_ratio(r.get('new_conn_per_s'))})",
                f"{fmt(_med(sc, 'keepalive_req_per_s'))} ({_ratio(r.get('keepalive_req_per_s'))})",
                f"{fmt(_med(sc, 'bulk_mbit_s'))} ({_ratio(r.get('bulk_mbit_s'))})",
                fmt(_med(sc, "keepalive_latency_ms", "p50"), 2),
                fmt(_med(sc, "keepalive_latency_ms", "p99"), 2),
                fmt(_med(sc, "connect_ms", "p50"), 3),
                fmt(_med(sc, "connect_ms", "p99"), 3),
                fmt(sc.get("flow_setup_ms"), 3),
            ]
        )
    return rows


SCENARIO_HEADER = [
    "scenario",
    "new conn/s (x ceiling)",
    "keep-alive req/s (x ceiling)",
    "bulk Mbit/s (x ceiling)",
    "p50 ms",
    "p99 ms",
    "connect p50 ms",
    "connect p99 ms",
    "flow setup ms",
]


def summary_text(doc: dict[str, Any]) -> str:
    """The plain-text summary printed at the end of a run."""
    topo = doc.get("topology", {})
    lines = [f"== benchmark summary ({doc.get('mode', '?')} mode, {fmt(doc.get('seconds'), 0)} s)"]
    m = doc.get("machine", {})
    lines.append(f"   {m.get('cpu_model')}, {m.get('cores')} cores, kernel {m.get('kernel')}, {m.get('ovs')}")
    header = ["scenario", "new conn/s", "x", "keep-alive/s", "x", "bulk Mbit/s", "x", "p99 ms", "setup ms"]
    rows = []
    ratios = topo.get("ratios", {})
    for name, sc in _scenarios(doc):
        if sc.get("status") != "ok":
            rows.append([name, str(sc.get("status"))[:90]])
            continue
        r = ratios.get(name, {})
        rows.append(
            [
                name,
                fmt(_med(sc, "new_conn_per_s")),
                _ratio(r.get("new_conn_per_s")),
                fmt(_med(sc, "keepalive_req_per_s")),
                _ratio(r.get("keepalive_req_per_s")),
                fmt(_med(sc, "bulk_mbit_s")),
                _ratio(r.get("bulk_mbit_s")),
                fmt(_med(sc, "keepalive_latency_ms", "p99"), 2),
                fmt(sc.get("flow_setup_ms"), 3),
            ]
        )
    full = [header, *(r for r in rows if len(r) == len(header))]
    widths = [max(len(str(r[i])) for r in full) for i in range(len(header))]
    lines.append("   " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        if len(r) == 2:
            lines.append(f"   {r[0].ljust(widths[0])}  {r[1]}")
        else:
            lines.append(
                "   "
                + "  ".join(
                    c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
    if topo.get("status") != "ok":
        lines.append(f"   topology: {topo.get('status')}")
    for t in topo.get("targets", []):
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t.get("met")]
        lines.append(f"   target {verdict:6} {t['target']} (ratio {_ratio(t.get('ratio'))})")
    for name, comp in doc.get("components", {}).items():
        lines.append(f"   {name}: {comp.get('status')}")
    qs = doc.get("query_scaling", {})
    lines.append(f"   query scaling: {qs.get('status')}")
    sc = topo.get("scaling", {})
    if "status" in sc or not sc:
        lines.append(f"   scaling curves: {sc.get('status', '-')}")
    else:
        for cls in ("cs_assist", "dfs_assist"):
            data = sc.get(cls, {})
            reached = [r["held"] for r in data.get("rows", [])]
            lines.append(f"   scaling {cls}: {data.get('status', '-')}; held flows reached: {reached or '-'}")
    for p in doc.get("problems", []):
        lines.append(f"   PROBLEM {p}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(doc: dict[str, Any], path: Path) -> bool:
    """Grouped bars: each scenario's rates as a ratio to the ceiling, with the target lines."""
    ratios = doc.get("topology", {}).get("ratios", {})
    names = [n for n, _ in _scenarios(doc) if n in ratios]
    if not names:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(METRICS)
    for i, (key, label) in enumerate(METRICS):
        xs = [j + (i - (len(METRICS) - 1) / 2) * width for j in range(len(names))]
        ys = [ratios[n].get(key) or 0.0 for n in names]
        bars = ax.bar(xs, ys, width, label=label)
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.9, color="tab:green", linestyle="--", linewidth=0.8, label="0.9 target (offloaded)")
    ax.axhline(0.8, color="tab:red", linestyle=":", linewidth=0.8, label="0.8 target (DFS_ASSIST new conn)")
    ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], rotation=12, fontsize=8)
    ax.set_ylabel("ratio to the ceiling (same run)")
    ax.set_title("Throughput relative to the ceiling")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_latency(doc: dict[str, Any], path: Path) -> bool:
    """Bars of keep-alive p50/p99 latency and connect (handshake) p50/p99 per scenario."""
    names = [(n, sc) for n, sc in _scenarios(doc) if sc.get("status") == "ok"]
    if not names:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    series = (
        (ax1, "keepalive_latency_ms", "request latency under keep-alive load (wrk)"),
        (ax2, "connect_ms", "TCP handshake, unloaded (includes flow setup)"),
    )
    for ax, key, title in series:
        for i, pct in enumerate(("p50", "p99")):
            xs = [j + (i - 0.5) * 0.4 for j in range(len(names))]
            ax.bar(xs, [_med(sc, key, pct) or 0.0 for _, sc in names], 0.4, label=pct)
        ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n, _ in names], rotation=20, fontsize=7)
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scaling(doc: dict[str, Any], path: Path) -> bool:
    """New-connection rate and daemon CPU as held flows grow, per class."""
    scaling = doc.get("topology", {}).get("scaling", {})
    classes = [
        (c, scaling[c])
        for c in ("cs_assist", "dfs_assist")
        if isinstance(scaling.get(c), dict) and scaling[c].get("rows")
    ]
    if not classes:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for cls, data in classes:
        rows = data["rows"]
        held = [r["held"] for r in rows]
        ax1.plot(held, [r.get("new_conn_per_s") or 0 for r in rows], marker="o", label=LABELS[cls])
        for proc in ("cs", "dfs"):
            ax2.plot(
                held,
                [(r.get("cpu_newconn_pct") or {}).get(proc) or 0 for r in rows],
                marker="o",
                label=f"{LABELS[cls]}: {proc.upper()} CPU",
            )
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("established flows held open")
        ax.legend(fontsize=7)
    ax1.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax1.set_ylabel("new conn/s")
    ax1.set_title("new-connection rate vs held flows", fontsize=9)
    ax2.set_ylabel("% of one core, during the new-connection run")
    ax2.set_title("daemon CPU vs held flows", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_query_scaling(doc: dict[str, Any], path: Path) -> bool:
    """QUERY rate a CS sustains against the number of DFS peers."""
    rows = [r for r in doc.get("query_scaling", {}).get("rows", []) if r.get("queries_per_s") is not None]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["dfs_peers"] for r in rows], [r["queries_per_s"] for r in rows], marker="o")
    ax.set_xlabel("simulated DFS peers")
    ax.set_ylabel(rows[0].get("metric") or "QUERY/s")
    ax.set_title("CS QUERY rate vs DFS peers", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------- report


def _scaling_section(doc: dict[str, Any]) -> list[str]:
    scaling = doc.get("topology", {}).get("scaling", {})
    lines = ["## Scaling with established flows", ""]
    if not scaling or ("status" in scaling and not any(k in scaling for k in ("cs_assist", "dfs_assist"))):
        lines += [f"Not run: {scaling.get('status', 'no data')}.", ""]
        return lines
    lines += [
        "Flows are held open by an asyncio client on client2 through each class's port-9000 VIP "
        "(the backends run a sink there); at each level, client1 measures the new-connection rate "
        "through the port-80 VIP of the same class. Memory per flow is the RSS growth since before any "
        "flow was held, divided by the flows held; the switch figure is the growth of ovs-vswitchd "
        "(the whole userspace datapath).",
        "",
    ]
    for cls in ("cs_assist", "dfs_assist"):
        data = scaling.get(cls)
        if not isinstance(data, dict):
            continue
        lines += [f"### {LABELS[cls]}", ""]
        if data.get("status") != "ok":
            lines += [f"Status: {data.get('status')}", ""]
        rows = []
        for r in data.get("rows", []):
            cpu = r.get("cpu_newconn_pct") or {}
            idle = r.get("cpu_idle_pct") or {}
            rows.append(
                [
                    fmt(r.get("target")),
                    fmt(r.get("held")),
                    fmt(r.get("new_conn_per_s")),
                    " / ".join(fmt(cpu.get(k), 1) for k in ("cs", "dfs", "vswitchd")),
                    " / ".join(fmt(idle.get(k), 1) for k in ("cs", "dfs", "vswitchd")),
                    fmt(r.get("cs_bytes_per_flow")),
                    fmt(r.get("dfs_bytes_per_flow")),
                    fmt(r.get("switch_bytes_per_flow")),
                    fmt(r.get("openflow_flows")),
                    fmt(r.get("datapath_flows")),
                ]
            )
        if rows:
            lines += _table(
                [
                    "target",
                    "held",
                    "new conn/s",
                    "CPU% CS/DFS/OVS (load)",
                    "CPU% CS/DFS/OVS (idle)",
                    "CS B/flow",
                    "DFS B/flow",
                    "switch B/flow",
                    "OpenFlow entries",
                    "datapath flows",
                ],
                rows,
            )
            lines.append("")
        for note in data.get("notes", []):
            lines.append(f"- {note}")
        lines.append("")
    return lines


def _ovs_tuning(tuning: Any) -> str:
    """The sentence saying which OVS settings the testbed set for the run, if any."""
    if not tuning:
        return ""
    pairs = ", ".join(f"`{key}={value}`" for key, value in sorted(tuning.items()))
    return f" Open vSwitch other_config for the whole run (every path alike): {pairs}."


def render_markdown(doc: dict[str, Any], plots: list[str]) -> str:
    """The whole REPORT.md text."""
    m = doc.get("machine", {})
    topo = doc.get("topology", {})
    st = topo.get("settings", {})
    out = [
        "# Benchmark report",
        "",
        f"{doc.get('mode', '?')} mode, started {doc.get('started')}, {fmt(doc.get('seconds'))} s in all "
        f"(`{doc.get('command', 'python -m bench.run')}`).",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {fmt(m.get('memory_mb'))} MB, kernel "
        f"{m.get('kernel')}, {m.get('os')}; {m.get('ovs')} (userspace datapath, "
        f"{m.get('switch_ports', 'system')} ports); {m.get('haproxy')}; "
        f"{m.get('wrk')}. Load generators, the switch, the daemons and the backends all share these cores, "
        "so every figure is a whole-system figure.",
        "",
        "## Side by side",
        "",
    ]
    if topo.get("status") != "ok":
        out += [f"Topology benchmark: {topo.get('status')}", ""]
    if st:
        out += [
            f"Each figure is the median of {st.get('repetitions')} repetition(s) of "
            f"{fmt(st.get('duration_s'), 1)} s runs: wrk -t{st.get('wrk_threads')} with "
            f"{st.get('close_connections')} connections and `Connection: close` (new conn/s: one "
            f"connection per request) and {st.get('keepalive_connections')} keep-alive connections "
            "(req/s and latency under that load); bulk is one curl download of "
            f"{fmt((st.get('bulk_bytes') or 0) / 2**20)} MiB; connect latency is {st.get('probe_count')} "
            "sequential, unloaded handshakes. In parentheses: the ratio to the ceiling of the same run. "
            "Flow setup = connect p50 minus the ceiling's connect p50."
            + _ovs_tuning(st.get("ovs_other_config")),
            "",
        ]
    out += _table(SCENARIO_HEADER, scenario_rows(doc))
    out.append("")
    if "ratios.png" in plots:
        out += ["![ratios to the ceiling](ratios.png)", ""]
    if "latency.png" in plots:
        out += ["![latency](latency.png)", ""]
    out += ["## Targets (reported, not asserted)", ""]
    out += _table(
        ["target", "ratio", "verdict"],
        [
            [
                t["target"],
                _ratio(t.get("ratio")),
                {True: "met", False: "**missed**", None: "n/a"}[t.get("met")],
            ]
            for t in topo.get("targets", [])
        ],
    )
    out += ["", "## What the DFS process saw per flow", ""]
    dfs_rows = []
    for name, sc in _scenarios(doc):
        d = sc.get("dfs")
        if isinstance(d, dict) and d.get("status") == "ok":
            dfs_rows.append(
                [
                    LABELS.get(name, name),
                    fmt(d.get("connections")),
                    fmt(d.get("packet_ins")),
                    fmt(d.get("packet_ins_per_flow"), 3),
                    fmt(d.get("flows_offloaded")),
                    fmt(d.get("offloaded_per_flow"), 3),
                ]
            )
        elif isinstance(d, dict):
            dfs_rows.append([LABELS.get(name, name), str(d.get("status")), "-", "-", "-", "-"])
    if dfs_rows:
        out += [
            "Counted from the DFS status document over the new-connection runs (connections = completed "
            "plus refused).",
            "",
        ]
        out += _table(
            ["scenario", "connections", "packet-ins", "packet-ins/flow", "flows offloaded", "offloaded/flow"],
            dfs_rows,
        )
    else:
        out.append("No load-balancer scenario ran, so there are no DFS counters.")
    out += ["", "## CPU during the runs (% of one core)", ""]
    cpu_rows = []
    for name, sc in _scenarios(doc):
        if sc.get("status") != "ok":
            continue
        for phase in ("cpu_newconn_pct", "cpu_keepalive_pct"):
            cells = ", ".join(f"{k} {fmt(_med(v), 1)}" for k, v in sorted(sc.get(phase, {}).items()))
            cpu_rows.append([LABELS.get(name, name), phase.split("_")[1], cells or "-"])
    out += _table(["scenario", "run", "process CPU"], cpu_rows) if cpu_rows else ["-"]
    out += [""]
    out += _scaling_section(doc)
    if "scaling.png" in plots:
        out += ["![scaling](scaling.png)", ""]
    out += ["## CS QUERY rate against the number of DFS peers", ""]
    qs = doc.get("query_scaling", {})
    if qs.get("rows"):
        out += _table(
            ["DFS peers", "status", "QUERY/s", "figure"],
            [
                [
                    str(r["dfs_peers"]),
                    str(r["status"])[:80],
                    fmt(r.get("queries_per_s")),
                    str(r.get("metric")),
                ]
                for r in qs["rows"]
            ],
        )
        out.append("")
        if "query_scaling.png" in plots:
            out += ["![query scaling](query_scaling.png)", ""]
    else:
        out += [f"{qs.get('status', 'not run')}", ""]
    out += ["## Component benchmarks", ""]
    comp_rows = []
    for name, comp in doc.get("components", {}).items():
        nums = len(_flat(comp.get("data")))
        comp_rows.append([name, str(comp.get("status"))[:150], fmt(comp.get("seconds"), 1), fmt(nums)])
    out += _table(["benchmark", "status", "seconds", "figures"], comp_rows)
    for name, comp in doc.get("components", {}).items():
        flat = figures(comp.get("data"))
        if not flat:
            continue
        headline = {k: v for k, v in flat.items() if HEADLINE_RE.search(k)} or flat
        shown = list(headline.items())[:COMPONENT_FIGURES]
        out += ["", f"### {name}", ""]
        out += _table(["figure", "value"], [[k, fmt(v, 3 if abs(v) < 100 else 0)] for k, v in shown])
        if len(flat) > len(shown):
            out.append(f"\n({len(flat) - len(shown)} more figures in `latest.json`.)")
    out += ["", "Their full figures are in `latest.json` under `components`.", ""]
    out += ["## Paths measured", ""]
    for name, text in topo.get("paths", {}).items():
        out.append(f"- **{name}**: {text}")
    out.append("")
    notes = _notes(doc)
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


HEADLINE_RE = re.compile(r"per_s(econd)?$|ratio|_us$|_ms$")
LABEL_KEYS = ("bus", "message", "name", "method", "kind", "case")


def figures(doc: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves by dotted path; list items are named by their label fields, not their index."""
    found: dict[str, float] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.update(figures(value, f"{prefix}{key}."))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            label = "/".join(
                str(item[k]) for k in LABEL_KEYS if isinstance(item, dict) and isinstance(item.get(k), str)
            ) or str(i)
            found.update(figures(item, f"{prefix}{label}."))
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        found[prefix.rstrip(".")] = float(doc)
    return found


def _flat(doc: Any) -> dict[str, float]:
    from bench.topo_bench import flatten_numbers

    return flatten_numbers(doc)


def _notes(doc: dict[str, Any]) -> list[str]:
    topo = doc.get("topology", {})
    notes = list(topo.get("notes", []))
    notes.append(
        "wrk counts each server-side close of a `Connection: close` response as a socket read "
        "error; those are expected in the new-connection runs and are not failures."
    )
    for name, sc in _scenarios(doc):
        errs = sc.get("errors", {})
        bad = {k: v for k, v in errs.get("newconn", {}).items() if k != "read" and v}
        bad.update({f"keep-alive {k}": v for k, v in errs.get("keepalive", {}).items() if v})
        bad.update({f"probe {k}": v for k, v in errs.get("probe", {}).items() if v})
        if bad:
            notes.append(f"{name}: errors during the runs: {bad}")
    if topo.get("daemon_log_problems"):
        notes.append(
            f"daemon logs show {len(topo['daemon_log_problems'])} problem line(s), e.g. "
            f"{topo['daemon_log_problems'][0][:200]}"
        )
    if topo.get("leftovers"):
        notes.append(f"left behind after teardown: {topo['leftovers']}")
    for p in doc.get("problems", []):
        notes.append(f"problem: {p}")
    return notes


def render(doc: dict[str, Any], out: Path) -> list[Path]:
    """Write REPORT.md and the plots into ``out``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plots: list[str] = []
    for name, fn in (
        ("ratios.png", plot_ratios),
        ("latency.png", plot_latency),
        ("scaling.png", plot_scaling),
        ("query_scaling.png", plot_query_scaling),
    ):
        target = out / name
        if fn(doc, target):
            plots.append(name)
            written.append(target)
        else:
            target.unlink(missing_ok=True)  # a stale plot from an earlier run would mislead
    md = out / "REPORT.md"
    md.write_text(render_markdown(doc, plots))
    return [md, *written]


def main(argv: list[str] | None = None) -> int:
    """Re-render the report of a results file."""
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    ap.add_argument(
        "results", nargs="?", type=Path, default=Path(__file__).parent / "results" / "latest.json"
    )
    ap.add_argument(
        "--out", type=Path, help="where to write REPORT.md and plots (default: next to the results)"
    )
    args = ap.parse_args(argv)
    try:
        doc = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict):
        print(f"error: {args.results} is not a results document", file=sys.stderr)
        return 2
    written = render(doc, args.out or args.results.parent)
    print(summary_text(doc))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
