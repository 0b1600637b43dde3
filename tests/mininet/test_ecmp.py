"""Two DFS nodes behind a Linux ECMP router (L4 hashing), sharing one CS, both serving one VIP."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from topo.lab import Lab

pytestmark = pytest.mark.mininet
TESTBED = Path(__file__).resolve().parents[2] / "topo" / "configs" / "ecmp.toml"
PY = sys.executable


def test_both_dfs_nodes_serve_the_vip(module_lab: Lab) -> None:
    """Connections from two clients spread over both DFSs; every request is served; the CS knows both DFSs."""
    lab = module_lab
    results = Counter()
    for i in (0, 1):
        out = lab.client(i).cmd(f"{PY} -m nodes.httpclient http://10.0.100.10/ --requests 20 --mode close")
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["ok"] == 20, summary
        results.update(summary["by_backend"])
    assert sum(results.values()) == 40
    offloaded = {d.name: d.status()["counters"].get("flows_offloaded", 0) for d in lab.dfs_nodes}
    assert all(n > 0 for n in offloaded.values()), offloaded
    assert sum(offloaded.values()) == 40, offloaded
    assert len(lab.cs.status()["dfs"]) == 2
