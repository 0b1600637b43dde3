"""Configuration changes and restarts under traffic, on the default testbed."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from topo.lab import Lab, wait_for

pytestmark = pytest.mark.mininet
TESTBED = Path(__file__).resolve().parents[2] / "topo" / "configs" / "default.toml"
PY = sys.executable


@pytest.fixture(scope="module")
def lab(module_lab: Lab) -> Lab:
    """The default testbed, up for the whole module."""
    return module_lab


def dfs_vs_count(lab: Lab) -> int:
    """How many virtual servers the DFS holds."""
    return int(lab.dfs.status()["virtual_servers"])


def test_reload_adds_and_removes_a_vip_while_traffic_runs(lab: Lab) -> None:
    """A reload adds VIP .120 (it serves at once), another removes it; traffic on .100 never fails."""
    background = lab.client(1).popen(
        [
            PY,
            "-m",
            "nodes.httpclient",
            "http://10.0.0.100/",
            "--requests",
            "150",
            "--mode",
            "close",
            "--deadline",
            "60",
        ],
        stdout=-1,
    )
    base = lab.spec.cs_config(lab.spec.cs[0])
    extra = copy.deepcopy(base["virtual_server"][0])
    extra.update(name="extra", vip="10.0.0.120", health_check={"type": "tcp", "interval": 1.0})
    extra["real_server"] = extra["real_server"][:1]
    grown = {**base, "virtual_server": [*base["virtual_server"], extra]}
    try:
        lab.cs.rewrite_config(grown)
        lab.cs.post("/reload")
        wait_for("the DFS to receive the new VIP", lambda: dfs_vs_count(lab) == 2, timeout=10)
        assert lab.client(0).http_get("http://10.0.0.120/") == (200, "web1")

        lab.cs.rewrite_config(base)
        lab.cs.post("/reload")
        wait_for("the DFS to drop the VIP", lambda: dfs_vs_count(lab) == 1, timeout=10)
        status, _ = lab.client(0).http_get("http://10.0.0.120/", timeout=2)
        assert status == 0
    finally:
        out, _ = background.communicate(timeout=90)
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["ok"] == summary["requests"] == 150, summary


def test_bad_reload_keeps_the_old_configuration(lab: Lab) -> None:
    """A reload of a broken file is refused with the key named, and the VIP keeps serving."""
    lab.cs.config_path.write_text('[cs]\nflow_idle_timeout = "soon"\n')
    try:
        out = lab.cs.cli("reload")
        assert "flow_idle_timeout" in out, out
        assert lab.client(0).http_get("http://10.0.0.100/")[0] == 200
        assert dfs_vs_count(lab) == 1
    finally:
        lab.cs.rewrite_config(lab.spec.cs_config(lab.spec.cs[0]))


def test_cs_restart_resets_the_dfs_and_service_resumes(lab: Lab) -> None:
    """A new CS process sends RESET: the DFS drops every flow, then serves again with the CS's VIPs."""
    curl = ["curl", "-s", "--limit-rate", "20k", "--max-time", "30", "-o", "/dev/null"]
    with_long = lab.client(1).popen([*curl, "http://10.0.0.100/bytes/600000"])
    try:
        wait_for("a flow in the DFS", lambda: lab.dfs.status()["flows_active"] >= 1, timeout=5)
        resets = lab.dfs.status()["counters"].get("flow_resets", 0)
        cs = lab.cs
        cs.stop_daemons()
        cs.daemons.clear()
        lab.start_daemon(cs.name)
        wait_for(
            "the DFS to be reset", lambda: lab.dfs.status()["counters"].get("flow_resets", 0) > resets, 15
        )
        wait_for("the DFS to drop its flows", lambda: lab.dfs.status()["flows_active"] == 0, timeout=10)
        lab.wait_ready()
        assert lab.client(0).http_get("http://10.0.0.100/")[0] == 200
    finally:
        with_long.terminate()
        with_long.wait(timeout=5)
