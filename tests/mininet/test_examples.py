"""Every runnable example has its own test: the demo, and slb-topo on shipped and user-edited testbeds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mininet, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a project command as a user would, from the repository root."""
    return subprocess.run(
        [PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_demo_serves_every_request_and_reports(no_leftovers: None) -> None:
    """`make demo`'s program: all requests succeed, the report has its sections, nothing is left."""
    out = run(["-m", "topo.demo", "--requests", "6"])
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    text = out.stdout
    for section in (
        "Requests per backend",
        "Control Segment",
        "Data Flow Segment",
        "DELETE counters",
        "OpenFlow table",
        "Try next",
    ):
        assert section in text, f"missing {section!r}:\n{text[-3000:]}"
    served = re.search(r"^\s+web\s+(\d+)\s+0\s+(.*)$", text, re.M)
    assert served and int(served.group(1)) == 18, text[-3000:]
    assert {"web1", "web2", "web3"} <= set(re.findall(r"(web\d)=", served.group(2)))
    # The switch's per-flow counters, summed over DELETEs, equal what the clients put on the wire.
    assert re.search(r"^\s+web\s+yes\s", text, re.M), text[-3000:]


def test_user_copies_the_default_testbed_and_changes_the_pool(tmp_path: Path, no_leftovers: None) -> None:
    """A copied default.toml with web3 taken out of the pool runs; only web1 and web2 answer."""
    text = (ROOT / "topo/configs/default.toml").read_text()
    pool_web3 = '[[virtual_server.real_server]]\nname = "web3"\naddress = "10.0.1.13"\nport = 80\n'
    assert pool_web3 in text
    mine = tmp_path / "mine.toml"
    mine.write_text(text.replace(pool_web3, ""))
    out = run(["-m", "topo.run", str(mine)])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    answers = re.findall(r"from client\d: (.*)$", out.stdout, re.M)
    assert answers and all(set(a.split()) == {"web1", "web2"} for a in answers), out.stdout


def test_multi_vip_testbed_smoke(no_leftovers: None) -> None:
    """slb-topo on the multi-VIP testbed: every VIP answers from every client."""
    out = run(["-m", "topo.run", "topo/configs/multi-vip.toml"])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "FAILED" not in out.stdout


def test_bad_testbed_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """A broken testbed file: exit 2 with the key named, no traceback, no network built."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (ROOT / "topo/configs/default.toml").read_text().replace('subnet = "10.0.1.0/24"', 'subnet = "x"')
    )
    out = run(["-m", "topo.run", str(bad)], timeout=30)
    assert out.returncode == 2
    assert "segment[1].subnet" in out.stderr and "Traceback" not in out.stderr


def test_cli_has_vs_flows_and_stats(no_leftovers: None) -> None:
    """The Mininet CLI of slb-topo answers vs, stats and flows, and Mininet's own commands still work."""
    lines = ["vs", "stats", "client1 curl -s 10.0.0.100", "flows"]
    lines += ["stop cs1", "start cs1", "start cs1", "stop web1", "exit"]
    commands = "\n".join(lines) + "\n"
    out = subprocess.run(
        [PY, "-m", "topo.run", "--cli"], cwd=ROOT, input=commands, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert '"vip": "10.0.0.100"' in out.stdout  # vs
    assert '"switch_connected": true' in out.stdout  # stats
    # Mininet prints node commands' output through its logger, on stderr.
    assert re.search(r"^web[123]\s*$", out.stderr, re.M)  # curl through the VIP from client1
    assert "--- dfs1sw (dfs1)" in out.stdout and "nw_dst=10.0.0.100" in out.stdout  # flows
    said = re.findall(r"cs1: (daemon stopped|daemon started|already running)", out.stdout)
    assert said == ["daemon stopped", "daemon started", "already running"]  # stop, start, start again
    assert "usage: stop|start NODE, NODE one of: cs1 dfs1" in out.stdout
