"""The DFS as an IPv4 router on real OVS, and the pyroute2 reader of a namespace's routes.

Traffic that is for no virtual server is routed: ping of the router's own addresses is
answered, ping and TCP to the server's real address go through with the TTL lowered by one
and cost one packet-in per destination, an address with no route gets ICMP net-unreachable,
an expiring TTL gets ICMP time-exceeded; the VIP still goes to the CS.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable

import pytest

from nodes.dfsd import read_kernel_routes
from nodes.ovsbed import ns, ovs_problem, sh
from slbcore.dfs.config import Route, RouteTable, parse_config
from tests.integration.test_dfs_ovs import (
    NS_C,
    SERVER,
    TAG,
    VIP,
    BedSpec,
    DfsBed,
    curl,
    make_bed,
)

pytestmark = [pytest.mark.integration, pytest.mark.needs_root]

__all__ = ["make_bed"]  # the fixture, imported for pytest


def ping(dst: str, *extra: str) -> tuple[int, str]:
    res = sh_rc("ip", "netns", "exec", NS_C, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", *extra, dst)
    return res


def sh_rc(*args: str) -> tuple[int, str]:
    import subprocess

    res = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.slow
def test_traffic_for_no_virtual_server_is_routed(make_bed: Callable[[BedSpec], DfsBed]) -> None:
    bed = make_bed(BedSpec(web=True, extra_toml="[routing]\nkernel_routes = true\nkernel_refresh = 1.0"))
    rc, out = ping("10.0.2.1")
    assert rc == 0 and "2 received" in out, out
    rc, out = ping(SERVER)
    assert rc == 0 and "2 received" in out, out
    assert re.search(r"ttl=63\b", out), out  # one router hop
    st0 = bed.status()
    res = curl(f"http://{SERVER}:8080/")
    assert res.returncode == 0 and "Directory listing" in res.stdout, bed.diagnostics()
    st1 = bed.status()
    # both directions' destinations were installed by the ping: TCP costs the DFS nothing
    assert st1["counters"]["packet_ins"] == st0["counters"]["packet_ins"], bed.diagnostics()
    assert not bed.cs.queries
    rc, out = ping("192.0.2.1")
    assert rc != 0 and "Destination Net Unreachable" in out and "From 10.0.1.1" in out, out
    rc, out = ping(SERVER, "-t", "1")
    assert rc != 0 and "Time to live exceeded" in out and "From 10.0.1.1" in out, out
    res = curl(f"http://{VIP}/")
    assert res.returncode == 0 and "Directory listing" in res.stdout
    st = bed.status()
    c = st["counters"]
    assert c["icmp_echo_replies"] == 2 and c["no_route_drops"] >= 1 and c["ttl_exceeded"] >= 1
    assert c["routes_installed"] >= 2 and len(bed.cs.queries) == 1
    assert st["kernel_routes"]["reads"] >= 1 and st["kernel_routes"]["read_errors"] == 0
    assert not st["errors"], st["errors"]


def test_kernel_routes_are_read_from_a_namespace() -> None:
    problem = ovs_problem()
    if problem:
        pytest.skip(problem)
    name = f"dfsrt{TAG}"
    sh("ip", "netns", "add", name)
    try:
        ns(name, "ip", "link", "add", "r0", "type", "veth", "peer", "name", "r1")
        ns(name, "ip", "addr", "add", "10.0.2.1/24", "dev", "r0")
        ns(name, "ip", "link", "set", "r0", "up")
        ns(name, "ip", "link", "set", "r1", "up")
        ns(name, "ip", "route", "add", "10.0.7.0/24", "via", "10.0.2.20")
        ns(name, "ip", "route", "add", "10.0.8.0/24", "dev", "r0")  # no gateway: not usable
        ns(name, "ip", "route", "add", "blackhole", "10.0.6.0/24")
        routes = read_kernel_routes(254, netns=name)
    finally:
        sh("ip", "netns", "del", name, check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/var/run/netns/{name}")
    assert routes == (Route("10.0.7.0/24", "10.0.2.20"),)
    cfg = parse_config(
        {
            "dfs": {"name": "d", "switch": "s"},
            "interface": [{"port": 2, "ipaddr": "10.0.2.1/24", "mac": "02:00:00:00:02:01"}],
        }
    )
    hop = RouteTable(cfg.interfaces, cfg.routes, routes).lookup("10.0.7.9")
    assert hop is not None and (hop.next_hop, hop.interface.port) == ("10.0.2.20", 2)
    assert name not in sh("ip", "netns", "list")
