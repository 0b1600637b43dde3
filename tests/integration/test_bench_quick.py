"""`make bench` in quick mode produces numbers: the static-path scenarios always, every other piece
either numbers or a stated reason; the report renders from the results; nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report, topo_bench

ROOT = Path(__file__).resolve().parents[2]
STATIC = ("ceiling", "direct1", "haproxy")
RATES = ("new_conn_per_s", "keepalive_req_per_s", "bulk_mbit_s")

WRK_SAMPLE = """Running 2s test @ http://10.0.0.99:80/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.31ms    2.14ms  28.02ms   78.51%
    Req/Sec     1.21k   102.33     1.40k    70.00%
  Latency Distribution
     50%    5.98ms
     75%    7.10ms
     90%    8.77ms
     99%    1.20s
  4843 requests in 2.01s, 0.95MB read
  Socket errors: connect 0, read 4843, write 0, timeout 0
  Non-2xx or 3xx responses: 3
Requests/sec:   2409.45
Transfer/sec:    484.07KB
"""


def _bench(tmp_path: Path, *args: str, timeout: float = 540) -> tuple[subprocess.CompletedProcess[str], Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )
    results = tmp_path / "latest.json"
    assert results.exists(), f"no results file; stderr:\n{proc.stderr[-3000:]}"
    return proc, json.loads(results.read_text())


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _assert_has_numbers(name: str, sc: dict[str, Any]) -> None:
    assert sc["status"] == "ok", f"{name}: {sc['status']}"
    for metric in RATES:
        assert _positive(sc[metric]["median"]), f"{name}: {metric} = {sc[metric]}"
        assert len(sc[metric]["runs"]) == 1  # quick mode: one repetition
    for pct in ("p50", "p99"):
        assert _positive(sc["keepalive_latency_ms"][pct]["median"]), f"{name}: latency {pct}"
        assert _positive(sc["connect_ms"][pct]["median"]), f"{name}: connect {pct}"


@pytest.mark.integration
@pytest.mark.needs_root
@pytest.mark.slow
@pytest.mark.timeout(600)  # may first wait for another testbed to finish (the testbed lock)
def test_static_scenarios_produce_numbers(tmp_path: Path, no_leftovers: None) -> None:
    """Ceiling, direct and HAProxy need no load-balancer daemon: each must produce every figure."""
    proc, doc = _bench(tmp_path, "--no-components", "--scenarios", ",".join(STATIC))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    topo = doc["topology"]
    assert topo["status"] == "ok"
    for name in STATIC:
        _assert_has_numbers(name, topo["scenarios"][name])
    assert topo["ratios"]["ceiling"] == {m: 1.0 for m in RATES}
    for name in ("direct1", "haproxy"):
        assert all(_positive(topo["ratios"][name][m]) for m in RATES), topo["ratios"][name]
    machine = doc["machine"]
    assert machine["cores"] and machine["kernel"] and "Open vSwitch" in (machine["ovs"] or "")
    md = (tmp_path / "REPORT.md").read_text()
    assert "\n| ceiling (static switch path) | " in md
    assert topo["settings"]["ovs_other_config"] == {}  # bench.toml leaves OVS at its defaults
    assert "other_config" not in md
    assert (tmp_path / "ratios.png").stat().st_size > 1000
    assert "== benchmark summary" in proc.stdout and "haproxy" in proc.stdout
    assert not [
        x for x in topo["leftovers"] if "bench" in x or x.split()[-1] in ("dfs1sw", "clients", "servers")
    ]


@pytest.mark.integration
@pytest.mark.needs_root
@pytest.mark.slow
@pytest.mark.timeout(600)  # may first wait for another testbed to finish (the testbed lock)
def test_every_piece_reports_numbers_or_a_reason(tmp_path: Path, no_leftovers: None) -> None:
    """The whole quick run: components that exist produce numbers, LB scenarios numbers or a reason."""
    proc, doc = _bench(tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    for name, comp in doc["components"].items():
        if (ROOT / "bench" / f"{name}.py").exists():
            assert comp["status"] == "ok", f"{name}: {comp['status']}\n{comp.get('output_tail', '')}"
            assert topo_bench.flatten_numbers(comp["data"]), name
        else:
            assert comp["status"].startswith("missing: ")
    scenarios = doc["topology"]["scenarios"]
    for name in STATIC:
        _assert_has_numbers(name, scenarios[name])
    for name in topo_bench.LB_SCENARIOS:
        sc = scenarios[name]
        if sc["status"] == "ok":
            _assert_has_numbers(name, sc)
            assert sc["dfs"]["status"] == "ok" and sc["dfs"]["connections"] > 0, sc["dfs"]
        else:
            assert sc["status"].startswith("unavailable: ") and len(sc["status"]) > len("unavailable: ") + 5
    assert doc["topology"]["scaling"]["status"].startswith(("skipped", "unavailable"))
    assert (tmp_path / "REPORT.md").exists()
    assert proc.returncode == (1 if doc["problems"] else 0)


@pytest.mark.integration
def test_report_renders_from_a_results_document(tmp_path: Path) -> None:
    """A results document with every section renders to REPORT.md, plots and a summary table."""
    wrk = topo_bench.parse_wrk(WRK_SAMPLE)
    assert wrk["req_per_s"] == 2409.45 and wrk["requests"] == 4843
    assert wrk["latency_ms"] == {"p50": 5.98, "p75": 7.1, "p90": 8.77, "p99": 1200.0}
    assert wrk["errors"] == {"connect": 0, "read": 4843, "write": 0, "timeout": 0, "non_2xx": 3}
    with pytest.raises(ValueError, match="Requests/sec"):
        topo_bench.parse_wrk("unable to connect to 10.0.0.99:80 Connection refused\n")

    def scenario(rate: float, connect_ms: float) -> dict[str, Any]:
        s = topo_bench.summary
        return {
            "status": "ok",
            "new_conn_per_s": s([rate]),
            "keepalive_req_per_s": s([rate * 3]),
            "bulk_mbit_s": s([rate / 4]),
            "keepalive_latency_ms": {"p50": s([1.0]), "p99": s([4.0])},
            "connect_ms": {"p50": s([connect_ms]), "p99": s([connect_ms * 3])},
            "errors": {},
            "cpu_newconn_pct": {"cs": s([40.0])},
        }

    topo: dict[str, Any] = {
        "status": "ok",
        "paths": topo_bench.PATHS,
        "settings": {"repetitions": 1, "duration_s": 2.0, "ovs_other_config": {"max-idle": "300"}},
        "scenarios": {
            "ceiling": scenario(2000, 0.25),
            "haproxy": scenario(1500, 0.5),
            "cs_assist": scenario(1000, 1.75),
            "dfs_assist": {"status": "unavailable: dfs1/dfsd exited"},
        },
        "scaling": {
            "cs_assist": {
                "status": "ok",
                "rows": [
                    {
                        "target": 1000,
                        "held": 1000,
                        "new_conn_per_s": 900,
                        "cpu_newconn_pct": {"cs": 50, "dfs": 30},
                    },
                    {
                        "target": 10000,
                        "held": 8000,
                        "new_conn_per_s": 700,
                        "cpu_newconn_pct": {"cs": 60, "dfs": 35},
                    },
                ],
                "notes": ["level 10000 not reached"],
            }
        },
    }
    topo["scenarios"]["cs_assist"]["dfs"] = topo_bench.dfs_flow_costs(
        {"counters": {"packet_ins": 10, "flows_offloaded": 5}},
        {"counters": {"packet_ins": 40, "flows_offloaded": 15}},
        10,
    )
    topo_bench.derive(topo)
    assert topo["ratios"]["cs_assist"]["new_conn_per_s"] == 0.5
    assert topo["scenarios"]["cs_assist"]["flow_setup_ms"] == 1.5
    assert topo["scenarios"]["cs_assist"]["dfs"]["packet_ins_per_flow"] == 3.0
    verdicts = {t["target"]: t["met"] for t in topo["targets"]}
    assert verdicts["CS_ASSIST new conn/s above HAProxy's"] is False
    assert verdicts["DFS_ASSIST new conn/s >= 0.8 x ceiling"] is None
    doc = {
        "mode": "quick",
        "seconds": 10,
        "machine": {"cores": 2},
        "topology": topo,
        "components": {"bench_cs": {"status": "missing: bench/bench_cs.py does not exist"}},
        "query_scaling": {
            "status": "ok",
            "rows": [{"dfs_peers": 1, "status": "ok", "queries_per_s": 5e4, "metric": "queries_per_s"}],
        },
    }
    written = report.render(doc, tmp_path)
    assert {p.name for p in written} == {
        "REPORT.md",
        "ratios.png",
        "latency.png",
        "scaling.png",
        "query_scaling.png",
    }
    md = (tmp_path / "REPORT.md").read_text()
    assert "unavailable: dfs1/dfsd exited" in md and "level 10000 not reached" in md and "**missed**" in md
    assert "Open vSwitch other_config for the whole run (every path alike): `max-idle=300`." in md
    text = report.summary_text(doc)
    assert "cs_assist" in text and "0.50" in text and "MISSED" in text
