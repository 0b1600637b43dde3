"""An active/standby CS pair: the standby replicates the flow table and takes over without a RESET."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from topo.lab import Lab, wait_for

pytestmark = pytest.mark.mininet
TESTBED = Path(__file__).resolve().parents[2] / "topo" / "configs" / "pair.toml"
SIZE = 400_000  # 20 s at 20 kB/s: the download outlives the takeover


@pytest.fixture(scope="module")
def lab(module_lab: Lab) -> Lab:
    """The pair testbed, up for the whole module."""
    return module_lab


def counters(node: Any) -> dict[str, int]:
    return dict(node.status()["counters"])


def client_flows(node: Any, port: int) -> list[dict[str, Any]]:
    """The CS's flows from client1 whose client port is ``port``."""
    return [f for f in node.status("/flows") if f.get("client") == f"10.0.0.11:{port}"]


def test_standby_takes_over_with_the_flow_table(lab: Lab) -> None:
    """Kill the active CS mid-download: the DFS turns to the standby, which knows the running flow,
    decides new flows, is not reset, and accounts the old flow's DELETE with the switch's counters."""
    cs1, cs2 = lab.cs_nodes
    assert (cs1.status()["role"], cs2.status()["role"]) == ("active", "standby")
    assert lab.cs is cs1

    # Short flows first: the standby sees each REPLY copy, then the DFS's DELETE copy.
    for _ in range(4):
        assert lab.client(1).http_get("http://10.0.0.100/")[0] == 200
    wait_for(
        "the standby to replicate 4 flows and see them end",
        lambda: min(counters(cs2).get(k, 0) for k in ("shared_flows", "shared_flows_claimed")) >= 4,
        timeout=40,  # the DFS removes a finished flow's entries after its FIN timeout
    )

    headers = lab.run_dir / "pair-long.hdr"
    curl = ["curl", "-s", "--limit-rate", "20k", "--max-time", "40", "-o", "/dev/null", "-D", str(headers)]
    download = lab.client(0).popen([*curl, "-w", "%{size_download}", f"http://10.0.0.100/bytes/{SIZE}"])
    try:
        wait_for("the download to start", lambda: headers.exists() and "X-Backend" in headers.read_text(), 5)
        port = next(
            int(f["client"].rsplit(":", 1)[1])
            for f in cs1.status("/flows")
            if f["client"].startswith("10.0.0.11:")
        )
        wait_for("the standby to hold the download's flow", lambda: client_flows(cs2, port), timeout=5)
        resets = lab.dfs.status()["counters"].get("flow_resets", 0)
        before = counters(cs2)

        cs1.stop_daemons()  # the active CS is gone
        wait_for("the standby to take over", lambda: cs2.status()["role"] == "active", timeout=20)
        assert lab.cs is cs2
        served = lambda: lab.client(1).http_get("http://10.0.0.100/")[0] == 200  # noqa: E731
        wait_for("a new flow through the standby", served, timeout=20)
        assert counters(cs2)["reply_ok"] > before.get("reply_ok", 0)
        assert counters(cs2).get("takeovers") == 1
        assert "taking over as the active CS" in cs2.log_text()
        assert client_flows(cs2, port), "the standby forgot the running flow"

        out, _ = download.communicate(timeout=40)
        assert download.returncode == 0 and out.decode().strip() == str(SIZE), out
    finally:
        if download.poll() is None:
            download.terminate()
            download.wait(timeout=5)

    # The DFS was never reset, and the download's DELETE reached the new active CS and matched its flow.
    assert lab.dfs.status()["counters"].get("flow_resets", 0) == resets
    wait_for("the download's DELETE at the standby", lambda: not client_flows(cs2, port), timeout=40)
    after = counters(cs2)
    assert after.get("delete_unknown_flow", 0) == before.get("delete_unknown_flow", 0)
    assert after.get("delete_flow_mismatch", 0) == 0
    vs = {v["name"]: v for v in cs2.status("/vs")}["web"]
    assert vs["outbound_bytes"] >= SIZE, vs  # server->client bytes of the download, from the switch
