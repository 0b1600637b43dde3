"""`make bench`: every benchmark in one run, one results file, one report.

    python -m bench.run [--quick] [--out DIR]

What runs, in order:

1. the component benchmarks that exist (``bench.bench_proto``, ``bench.bench_cs``,
   ``bench.bench_dfs``), each as a subprocess with a timeout, each asked for ``--json PATH``
   (and ``--quick`` in quick mode); a missing one is reported as missing, a failing one as
   failed with its exit status and the end of its output;
2. the QUERY rate a CS sustains as the number of DFS peers grows, when ``bench.bench_cs``
   offers ``--dfs-peers N`` (full mode: 1, 2, 4, 8 peers; quick mode: 1 and 2);
3. the topology benchmark (:mod:`bench.topo_bench`): ceiling, HAProxy, CS_ASSIST, DFS_ASSIST
   side by side, plus the scaling curves in full mode.

Results go to ``DIR/latest.json`` (default ``bench/results``), with the machine they were taken
on; ``DIR/REPORT.md`` and PNG plots are rendered from it, and a summary table is printed.
Quick mode (CI) runs every piece briefly and only checks that each produced numbers: the exit
status is 1 when a piece that exists produced none.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, topo_bench

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
COMPONENTS = ("bench_proto", "bench_cs", "bench_dfs")
PEER_COUNTS_FULL = (1, 2, 4, 8)
PEER_COUNTS_QUICK = (1, 2)


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout keeps only the summary."""
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- machine


def _first_line(argv: list[str]) -> str | None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else None


def default_port_type() -> str:
    """The OVS port type the testbeds use on this machine (see nodes.net)."""
    from nodes.net import default_port_type as probe

    return probe()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, kernel, OVS and tool versions."""
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_mb": mem_kb // 1024 if mem_kb else None,
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "ovs": _first_line(["ovs-vswitchd", "--version"]),
        "switch_ports": default_port_type(),
        "haproxy": _first_line(["haproxy", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "curl": _first_line(["curl", "--version"]),
        "hostname": platform.node(),
        "note": "load generators, switch, daemons and backends share these cores",
    }


# ------------------------------------------------------------------------------------- components


def run_module(module: str, args: list[str], timeout: float, log_path: Path) -> dict[str, Any]:
    """Run ``python -m bench.<module> ARGS --json TMP`` with a timeout; return its status and JSON."""
    with tempfile.TemporaryDirectory(prefix="slb-bench-") as tmp:
        out_json = Path(tmp) / f"{module}.json"
        argv = [sys.executable, "-m", f"bench.{module}", *args, "--json", str(out_json)]
        env = dict(
            os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)
        )
        started = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop(proc)
                return {
                    "status": f"failed: timed out after {timeout:.0f}s",
                    "log": str(log_path),
                    "seconds": round(time.monotonic() - started, 1),
                    "argv": argv[1:-2],
                }
        seconds = round(time.monotonic() - started, 1)
        tail = log_path.read_text(errors="replace")[-1500:]
        result: dict[str, Any] = {"seconds": seconds, "log": str(log_path), "argv": argv[1:-2]}
        if rc != 0:
            last = [line for line in tail.splitlines() if line.strip()]
            result["status"] = f"failed: exit status {rc}: {last[-1][:300] if last else 'no output'}"
            result["output_tail"] = tail
            return result
        try:
            result["data"] = json.loads(out_json.read_text())
        except (OSError, ValueError) as exc:
            result["status"] = f"failed: exit 0 but no JSON results at --json PATH ({exc})"
            result["output_tail"] = tail
            return result
        result["status"] = "ok" if has_numbers(result["data"]) else "failed: its JSON holds no numbers"
        return result


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate a benchmark subprocess (and its process group, which we created), then kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=grace)


def has_numbers(doc: Any) -> bool:
    """Whether a results document holds at least one number."""
    return bool(topo_bench.flatten_numbers(doc)) or (
        isinstance(doc, list) and any(has_numbers(d) for d in doc)
    )


def run_components(quick: bool, out: Path) -> dict[str, Any]:
    """Each component benchmark that exists, in turn; missing and failed ones say so."""
    results: dict[str, Any] = {}
    timeout = 90.0 if quick else 900.0
    for name in COMPONENTS:
        if not (ROOT / "bench" / f"{name}.py").exists():
            results[name] = {"status": f"missing: bench/{name}.py does not exist"}
            log(f"*** {name}: missing")
            continue
        log(f"*** {name}: running (timeout {timeout:.0f}s)")
        results[name] = run_module(name, ["--quick"] if quick else [], timeout, out / "logs" / f"{name}.log")
        log(f"    {name}: {results[name]['status']} ({results[name].get('seconds')}s)")
    return results


def _help_text(module: str) -> str:
    try:
        res = subprocess.run(
            [sys.executable, "-m", f"bench.{module}", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout + res.stderr


QUERY_RATE_KEYS = re.compile(r"(quer(y|ies)|repl(y|ies)).*(per_s|rate|_s$)|qps", re.IGNORECASE)


PREFERRED_QUERY_KEYS = ("udp.cs.per_second", "udp.per_second", "queries_per_s")


def pick_query_rate(doc: Any) -> tuple[str, float] | None:
    """The QUERY-rate figure of a bench_cs document: a known key, else the first that names a query rate."""
    flat = topo_bench.flatten_numbers(doc)
    for key in PREFERRED_QUERY_KEYS:
        if key in flat:
            return key, flat[key]
    for key, value in flat.items():
        if QUERY_RATE_KEYS.search(key.rsplit(".", 1)[-1]) or QUERY_RATE_KEYS.search(key):
            return key, value
    return None


def run_query_scaling(quick: bool, out: Path, components: dict[str, Any]) -> dict[str, Any]:
    """QUERY rate a CS sustains against N simulated DFS peers, through bench_cs's own UDP driver."""
    if not (ROOT / "bench" / "bench_cs.py").exists():
        return {"status": "unavailable: bench/bench_cs.py does not exist"}
    if not components.get("bench_cs", {}).get("status", "").startswith("ok"):
        return {"status": "unavailable: bench_cs itself did not produce results"}
    if "--dfs-peers" not in _help_text("bench_cs"):
        return {"status": "unavailable: bench_cs has no --dfs-peers option"}
    rows = []
    timeout = 90.0 if quick else 600.0
    for peers in PEER_COUNTS_QUICK if quick else PEER_COUNTS_FULL:
        log(f"*** bench_cs with {peers} DFS peers")
        res = run_module(
            "bench_cs",
            [*(["--quick"] if quick else []), "--dfs-peers", str(peers)],
            timeout,
            out / "logs" / f"bench_cs-peers{peers}.log",
        )
        picked = pick_query_rate(res.get("data")) if res["status"] == "ok" else None
        rows.append(
            {
                "dfs_peers": peers,
                "status": res["status"],
                "metric": picked[0] if picked else None,
                "queries_per_s": picked[1] if picked else None,
                "data": res.get("data"),
            }
        )
    return {"status": "ok", "rows": rows}


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, write latest.json and the report, print the summary."""
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="CI smoke run: 1 repetition of 2 s runs, no scaling curves"
    )
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})"
    )
    ap.add_argument(
        "--scenarios",
        type=topo_bench.parse_scenarios,
        help=f"topology scenarios to run (default all: {','.join(topo_bench.ALL_SCENARIOS)})",
    )
    ap.add_argument("--repetitions", type=int, help="repetitions per measurement (default: 3, quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per load run (default: 8, quick 2)")
    ap.add_argument("--no-components", action="store_true", help="skip bench_proto/bench_cs/bench_dfs")
    ap.add_argument("--no-topology", action="store_true", help="skip the topology benchmark")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling curves (full mode)")
    ap.add_argument(
        "--scaling-levels",
        type=topo_bench.parse_levels,
        help="held-flow levels of the scaling curves (default 1000,10000,50000)",
    )
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 also when a piece is missing or unavailable (default: only when one failed)",
    )
    args = ap.parse_args(argv)
    if args.repetitions is not None and not 1 <= args.repetitions <= 50:
        ap.error("--repetitions must be in 1..50")
    if args.duration is not None and not 0.5 <= args.duration <= 300:
        ap.error("--duration must be in 0.5..300 seconds")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    doc: dict[str, Any] = {
        "schema": 1,
        "mode": "quick" if args.quick else "full",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
    }
    if args.no_components:
        doc["components"] = {name: {"status": "skipped: --no-components"} for name in COMPONENTS}
        doc["query_scaling"] = {"status": "skipped: --no-components"}
    else:
        doc["components"] = run_components(args.quick, out)
        doc["query_scaling"] = run_query_scaling(args.quick, out, doc["components"])
    if args.no_topology:
        doc["topology"] = {"status": "skipped: --no-topology"}
    else:
        settings = topo_bench.Settings.for_mode(
            args.quick,
            repetitions=args.repetitions,
            duration=args.duration,
            scenarios=args.scenarios,
            log=log,
        )
        if args.no_scaling:
            settings.scaling = False
        if args.scaling_levels:
            settings.scaling_levels = args.scaling_levels
        try:
            doc["topology"] = topo_bench.run_topology(settings)
        except Exception as exc:  # the testbed is torn down by then; the rest of the report still counts
            doc["topology"] = {"status": f"failed: {type(exc).__name__}: {exc}"[:600]}
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    doc["seconds"] = round(time.monotonic() - started, 1)
    doc["problems"] = problems(doc, args.strict)
    (out / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    written = report.render(doc, out)
    print(report.summary_text(doc))
    print(f"\nresults: {out / 'latest.json'}; report: {', '.join(str(p.name) for p in written)} in {out}")
    return 1 if doc["problems"] else 0


def problems(doc: dict[str, Any], strict: bool = False) -> list[str]:
    """Pieces that failed to produce numbers; with ``strict``, also missing and unavailable ones."""
    bad = ("failed", "missing", "unavailable") if strict else ("failed",)
    found = []
    for name, res in doc.get("components", {}).items():
        if str(res.get("status", "")).startswith(bad):
            found.append(f"{name}: {res['status']}")
    topo = doc.get("topology", {})
    if str(topo.get("status", "")).startswith(bad):
        found.append(f"topology: {topo['status']}")
    for name, sc in topo.get("scenarios", {}).items():
        if str(sc.get("status", "")).startswith(bad):
            found.append(f"{name}: {sc['status']}")
    return found


if __name__ == "__main__":
    sys.exit(main())
