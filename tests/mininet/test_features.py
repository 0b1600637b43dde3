"""End to end through real HTTP clients and the VIPs: every load-balancer feature on one testbed.

The testbed (configs/features.toml) has one VIP per feature. Each test drives curl or the Python
client in a client namespace, through the DFS switch, to real HTTP backends that answer with
their own name; it then checks what the clients saw and what the CS and DFS counted.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from topo.lab import Lab, wait_for

pytestmark = pytest.mark.mininet
TESTBED = Path(__file__).resolve().parent / "configs" / "features.toml"
PY = sys.executable


@pytest.fixture(scope="module")
def lab(module_lab: Lab) -> Lab:
    """The features testbed, up for the whole module."""
    return module_lab


def fetch(lab: Lab, url: str, client: int = 0, timeout: float = 4.0) -> tuple[int, str]:
    """One GET with curl from a client: (HTTP status or 0, body)."""
    return lab.client(client).http_get(url, timeout=timeout)


def served(lab: Lab, url: str, n: int, client: int = 0) -> Counter[str]:
    """Issue ``n`` GETs (a new connection each); count the backends that answered."""
    out: Counter[str] = Counter()
    for _ in range(n):
        status, body = fetch(lab, url, client)
        out[body.strip() if status == 200 else f"failed:{status}"] += 1
    return out


def vs_row(lab: Lab, name: str) -> dict[str, Any]:
    """The CS's statistics row for virtual server ``name``."""
    return next(v for v in lab.cs.status()["virtual_servers"] if v["name"] == name)


def server_rows(lab: Lab, vs: str) -> dict[str, dict[str, Any]]:
    """The CS's rows for the real servers of ``vs``, by server name."""
    rows = lab.cs.status("/servers")
    rows = rows.get("servers", rows) if isinstance(rows, dict) else rows
    return {r["server"]: r for r in rows if r.get("vs") == vs}


def cs_counter(lab: Lab, name: str) -> int:
    """One of the CS's global counters."""
    return int(lab.cs.status()["counters"].get(name, 0))


def refused_quickly(lab: Lab, url: str, client: int = 0) -> float:
    """Seconds until curl gave up on ``url``; asserts the connection was refused, not served or hung."""
    t0 = time.monotonic()
    status, body = fetch(lab, url, client, timeout=5)
    took = time.monotonic() - t0
    assert status == 0, f"{url} was served ({status}): {body!r}"
    assert took < 3.0, f"{url} hung for {took:.1f}s instead of being refused"
    return took


@contextmanager
def long_download(lab: Lab, url: str, client: int = 1, seconds: float = 20.0) -> Iterator[dict[str, Any]]:
    """A slow download through ``url`` that holds one connection open; yields where its headers go."""
    node = lab.client(client)
    size = int(seconds * 20_000)
    headers = lab.run_dir / f"long-{time.monotonic_ns()}.hdr"
    argv = ["curl", "-s", "--limit-rate", "20k", "--max-time", f"{seconds + 5:g}", "-o", "/dev/null"]
    proc = node.popen([*argv, "-D", str(headers), f"{url}bytes/{size}"])
    info: dict[str, Any] = {"proc": proc, "headers": headers}
    try:
        wait_for(f"the download from {url} to start", lambda: "X-Backend" in _read(headers), timeout=5)
        info["backend"] = next(
            line.split(":", 1)[1].strip()
            for line in _read(headers).splitlines()
            if line.startswith("X-Backend")
        )
        yield info
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def wait_idle(lab: Lab, vs: str, timeout: float = 10.0) -> None:
    """Wait until the CS has no active flow on ``vs`` (the DFS reported every DELETE)."""
    wait_for(f"{vs} to have no active flows", lambda: vs_row(lab, vs)["active"] == 0, timeout)


# ---------------------------------------------------------------------------------------- algorithms


def test_round_robin_spreads_evenly(lab: Lab) -> None:
    """Nine new connections: each of the three backends serves three."""
    assert served(lab, "http://10.0.0.100/", 9) == Counter(web1=3, web2=3, web3=3)


def test_weighted_round_robin_with_port_translation(lab: Lab) -> None:
    """VIP port 8080 is translated to the backends' port 80; weights 3:1 give 6 and 2 of 8."""
    assert served(lab, "http://10.0.0.100:8080/", 8) == Counter(web1=6, web2=2)


def test_least_connections_avoids_the_busy_server(lab: Lab) -> None:
    """One long connection on a server: every new flow goes to the other (round robin would alternate)."""
    wait_idle(lab, "lc")
    with long_download(lab, "http://10.0.0.101/") as busy:
        other = {"web1", "web2"} - {busy["backend"]}
        got = Counter()
        for _ in range(3):
            got.update(served(lab, "http://10.0.0.101/", 1, client=0))
            wait_for("the short flow to end", lambda: vs_row(lab, "lc")["active"] == 1, timeout=10)
        assert got == Counter({other.pop(): 3})


def test_source_hash_keeps_each_client_on_one_server(lab: Lab) -> None:
    """Source-IP hashing: all of a client's connections land on the same backend."""
    for client in (0, 1):
        got = served(lab, "http://10.0.0.102/", 5, client)
        assert len(got) == 1 and next(iter(got)).startswith("web"), got


def test_maglev_spreads_flows_over_every_server(lab: Lab) -> None:
    """Maglev hashes the 5-tuple: 30 connections from varying source ports reach all three backends."""
    out = lab.client(0).cmd(f"{PY} -m nodes.httpclient http://10.0.0.103/ --requests 30 --mode close")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] == 30, summary
    assert set(summary["by_backend"]) == {"web1", "web2", "web3"}, summary


def test_source_ip_persistence_overrides_round_robin(lab: Lab) -> None:
    """Round robin with source-IP persistence: each client sticks to its first server."""
    for client in (0, 1):
        got = served(lab, "http://10.0.0.104/", 4, client)
        assert len(got) == 1 and next(iter(got)).startswith("web"), got
    assert cs_counter(lab, "persistence_hit") >= 6


# ---------------------------------------------------------------------------------------- refusals


def test_connection_limit_refuses_with_connlimit(lab: Lab) -> None:
    """Two connections fill the VS's limit of two; a third is refused at once and counted."""
    wait_idle(lab, "limited")
    before = vs_row(lab, "limited")["errors"].get("connlimit", 0)
    with (
        long_download(lab, "http://10.0.0.105/", client=1),
        long_download(lab, "http://10.0.0.105/", client=1),
    ):
        wait_for("two active flows", lambda: vs_row(lab, "limited")["active"] == 2, timeout=5)
        refused_quickly(lab, "http://10.0.0.105/")
    assert vs_row(lab, "limited")["errors"].get("connlimit", 0) == before + 1
    wait_idle(lab, "limited")
    assert fetch(lab, "http://10.0.0.105/") == (200, "web1")


def test_maintenance_refuses_with_notavail(lab: Lab) -> None:
    """A VS in maintenance refuses every new flow with NOTAVAIL (a TCP RST, not a hang)."""
    before = vs_row(lab, "maint")["errors"].get("notavail", 0)
    refused_quickly(lab, "http://10.0.0.106/")
    assert vs_row(lab, "maint")["errors"].get("notavail", 0) == before + 1


def test_port_that_is_no_virtual_server_is_refused(lab: Lab) -> None:
    """A VIP address on a port no VS serves is refused at once."""
    refused_quickly(lab, "http://10.0.0.100:8081/")


# ---------------------------------------------------------------------------------------- health, drain


def test_failed_health_check_takes_server_out_and_back(lab: Lab) -> None:
    """web2 failing /health stops getting new flows; when it recovers it serves again."""
    web2 = lab.node("web2")
    web2.set_healthy(False)
    try:
        wait_for("web2 down", lambda: server_rows(lab, "health")["web2"]["health"] == "down", timeout=10)
        got = served(lab, "http://10.0.0.107/", 6)
        assert got == Counter(web1=3, web3=3)
    finally:
        web2.set_healthy(True)
    wait_for("web2 up", lambda: server_rows(lab, "health")["web2"]["health"] == "up", timeout=10)
    assert "web2" in served(lab, "http://10.0.0.107/", 6)


def test_draining_server_finishes_old_flows_but_gets_no_new_ones(lab: Lab) -> None:
    """Drain d1 while it serves a long download: the download completes, new flows all go to d2."""
    wait_idle(lab, "drain")
    with long_download(lab, "http://10.0.0.108/", seconds=4) as old:
        drained = "d1" if old["backend"] == "web1" else "d2"
        keep = {"d1": "web2", "d2": "web1"}[drained]
        lab.cs.post(f"/drain/drain/{drained}")
        try:
            assert served(lab, "http://10.0.0.108/", 4) == Counter({keep: 4})
            assert old["proc"].wait(timeout=15) == 0, "the drained server's existing download was cut"
        finally:
            lab.cs.post(f"/undrain/drain/{drained}")


# ---------------------------------------------------------------------------------------- VS flags


def test_noarp_vip_is_not_advertised_but_works_with_a_static_neighbour(lab: Lab) -> None:
    """NOARP_MODE: ARP for the VIP goes unanswered; with a static neighbour entry the VIP serves."""
    c = lab.client(1)
    intf = c.defaultIntf().name
    c.cmd(f"ip neigh del 10.0.0.109 dev {intf} 2>/dev/null")
    assert "0 received" in c.cmd(f"arping -c 2 -w 2 -I {intf} 10.0.0.109 2>&1") or "Received 0" in c.cmd(
        f"arping -c 1 -w 1 -I {intf} 10.0.0.109 2>&1"
    )
    assert fetch(lab, "http://10.0.0.109/", client=1, timeout=2)[0] == 0
    mac = lab.spec.dfs[0].ports[0].mac
    c.cmd(f"ip neigh replace 10.0.0.109 lladdr {mac} dev {intf} nud permanent")
    try:
        assert fetch(lab, "http://10.0.0.109/", client=1) == (200, "web1")
    finally:
        c.cmd(f"ip neigh del 10.0.0.109 dev {intf}")


def test_wildcard_port_catches_every_port(lab: Lab) -> None:
    """WILDCARD_PORT: any port of the VIP reaches the pool (translated to port 80)."""
    for port in (81, 4321, 60000):
        assert fetch(lab, f"http://10.0.0.110:{port}/") == (200, "web2")


def test_wildcard_address_catches_unknown_addresses(lab: Lab) -> None:
    """WILDCARD_ADDR: port 8000 of any address that is no other VS reaches the pool."""
    for addr in ("10.0.77.7", "192.0.2.10"):
        assert fetch(lab, f"http://{addr}:8000/") == (200, "web3")


def test_route_by_dst_ip_and_port_translation(lab: Lab) -> None:
    """ROUTE_BY_DST_IP: the DFS finds the next hop itself; TRANSLATE_PORT maps 80 and 8888 to 8080."""
    assert fetch(lab, "http://10.0.0.111/") == (200, "web4")
    assert fetch(lab, "http://10.0.0.111:8888/") == (200, "web4")


def test_dfs_assist_needs_no_query_and_the_cs_still_learns_the_flows(lab: Lab) -> None:
    """DFS_ASSIST: the switch picks servers itself (no QUERY); the CS still gets DELETE for each flow."""
    queries = cs_counter(lab, "rx_query")
    ended = vs_row(lab, "dfsa")["total"]
    out = lab.client(0).cmd(f"{PY} -m nodes.httpclient http://10.0.0.112/ --requests 24 --mode close")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] == 24, summary
    assert len(summary["by_backend"]) >= 2, summary
    assert cs_counter(lab, "rx_query") == queries
    wait_for(
        "the CS to learn of the DFS_ASSIST flows",
        lambda: vs_row(lab, "dfsa")["total"] >= ended + 24,
        timeout=15,
    )


# ---------------------------------------------------------------------------------------- flow end


def test_idle_timeout_delete_counters_equal_the_bytes_exchanged(lab: Lab) -> None:
    """One keep-alive connection, then idle: DELETE's counters equal what the client sent and received."""
    wait_idle(lab, "rr")
    c = lab.client(0)
    c.count_traffic("10.0.0.100", 80)
    before = vs_row(lab, "rr")
    dfs_before = lab.dfs.status()["counters"]
    out = c.cmd(f"{PY} -m nodes.httpclient http://10.0.0.100/ --requests 5 --mode keepalive")
    assert json.loads(out.strip().splitlines()[-1])["ok"] == 5
    wait_idle(lab, "rr", timeout=15)
    after = vs_row(lab, "rr")
    dfs_after = lab.dfs.status()["counters"]
    # Only the opening SYN reached the DFS process; every later packet stayed in the switch.
    grew = {k: dfs_after.get(k, 0) - dfs_before.get(k, 0) for k in ("flows_offloaded", "held_packets")}
    assert grew == {"flows_offloaded": 1, "held_packets": 1}
    assert dfs_after.get("packet_ins_after_offload", 0) == dfs_before.get("packet_ins_after_offload", 0)
    packet_ins = dfs_after["packet_ins"] - dfs_before["packet_ins"]
    arp = sum(dfs_after.get(k, 0) - dfs_before.get(k, 0) for k in ("arp_requests", "arp_replies"))
    assert packet_ins <= 1 + arp, (packet_ins, arp)
    wire = c.counted()
    sent_pkts, sent_bytes = wire["sent"]
    recv_pkts, recv_bytes = wire["received"]
    assert after["total"] == before["total"] + 1
    # The switch counts Ethernet frames: 14 octets of header more per packet than IP.
    assert after["inbound_pkts"] - before["inbound_pkts"] == sent_pkts
    assert after["inbound_bytes"] - before["inbound_bytes"] == sent_bytes + 14 * sent_pkts
    assert after["outbound_pkts"] - before["outbound_pkts"] == recv_pkts
    assert after["outbound_bytes"] - before["outbound_bytes"] == recv_bytes + 14 * recv_pkts


def test_reap_of_a_live_connection_gets_connalive_and_keeps_it(lab: Lab) -> None:
    """A connection busier than the CS's idle timer: REAP is answered CONNALIVE and the flow survives."""
    alive = cs_counter(lab, "stats_connalive")
    reaps = cs_counter(lab, "reap_sent")
    script = lab.run_dir / "steady.py"
    script.write_text(
        "import http.client, time\n"
        "c = http.client.HTTPConnection('10.0.0.100', 80, timeout=3)\n"
        "ok = 0\n"
        "for i in range(20):  # 8 s of traffic on one connection, twice the CS's idle timer\n"
        "    c.request('GET', '/'); r = c.getresponse(); r.read(); ok += r.status == 200; time.sleep(0.4)\n"
        "print(ok)\n"
    )
    out = lab.client(1).cmd(f"{PY} {script}")
    assert out.strip().splitlines()[-1] == "20", out
    assert cs_counter(lab, "reap_sent") > reaps
    assert cs_counter(lab, "stats_connalive") > alive
