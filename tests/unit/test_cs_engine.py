"""CS decision engine: QUERY/REPLY, error codes, limits, persistence, reaping, duplicates, reload."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from slbcore.cs.config import CsConfig, parse_config_text
from slbcore.cs.engine import ControlSegment, ResetAck, SsmbOut
from slbproto import csmb, ssmb
from slbproto.constants import NEWFLOW_ID_BIT, SsmbError, VsClass

pytestmark = pytest.mark.unit

DFS = ("192.0.2.10", 7700)
DFS2 = ("192.0.2.11", 7700)

BASE = """
[cs]
flow_idle_timeout = 10
reap_response_timeout = 2
reap_retries = 2
{cs_extra}

[[virtual_server]]
name = "web"
vip = "10.0.0.100"
port = 80
flags = ["translate_addr", "translate_port"]
method = "{method}"
{vs_extra}

[[virtual_server.real_server]]
name = "a"
address = "10.0.1.1"
port = 8080
weight = {wa}
next_hop = "10.0.9.1"

[[virtual_server.real_server]]
name = "b"
address = "10.0.1.2"
weight = {wb}
"""


def config(
    method: str = "round_robin",
    cs_extra: str = "query_rate = 0",
    vs_extra: str = "",
    wa: int = 1,
    wb: int = 1,
    tail: str = "",
) -> CsConfig:
    return parse_config_text(
        BASE.format(method=method, cs_extra=cs_extra, vs_extra=vs_extra, wa=wa, wb=wb) + tail, "test.toml"
    )


def query(
    flow_id: int,
    src: str = "198.51.100.1",
    sport: int = 40000,
    dst: str = "10.0.0.100",
    dport: int = 80,
    proto: int = 6,
) -> ssmb.Query:
    return ssmb.Query(
        orig_src_ipaddr=src,
        orig_dst_ipaddr=dst,
        orig_src_port=sport,
        orig_dst_port=dport,
        proto=proto,
        flow_id=flow_id,
    )


def endflow(
    cls: Any, flow_id: int, src: str = "198.51.100.1", sport: int = 40000, error: int = 0, **counts: int
) -> Any:
    return cls(
        orig_src_ipaddr=src,
        orig_dst_ipaddr="10.0.0.100",
        orig_src_port=sport,
        orig_dst_port=80,
        flow_id=flow_id,
        error=error,
        **counts,
    )


def one_reply(out: list[Any]) -> ssmb.Reply:
    replies = [o.message for o in out if isinstance(o, SsmbOut) and isinstance(o.message, ssmb.Reply)]
    assert len(replies) == 1, out
    return replies[0]


def test_reply_fields_translate_and_next_hop() -> None:
    cs = ControlSegment(config())
    out = cs.handle(query(1), DFS, 0.0)
    assert out[0].dest == DFS
    r = one_reply(out)
    assert r.error == SsmbError.OK and r.flow_id == 1
    assert (r.new_dst_ipaddr, r.new_dst_port, r.next_hop_ipaddr) == ("10.0.1.1", 8080, "10.0.9.1")
    r2 = one_reply(cs.handle(query(2, sport=40001), DFS, 0.0))
    # server b has no port (keep the client's) and no next hop (its own address)
    assert (r2.new_dst_ipaddr, r2.new_dst_port, r2.next_hop_ipaddr) == ("10.0.1.2", 80, "10.0.1.2")
    assert (r2.orig_src_ipaddr, r2.orig_src_port, r2.orig_dst_ipaddr, r2.orig_dst_port) == (
        "198.51.100.1",
        40001,
        "10.0.0.100",
        80,
    )
    assert len(cs.flows) == 2


def test_no_translation_and_route_by_dst_ip() -> None:
    cfg = parse_config_text(
        BASE.format(method="round_robin", cs_extra="query_rate = 0", vs_extra="", wa=1, wb=1).replace(
            'flags = ["translate_addr", "translate_port"]', 'flags = ["route_by_dst_ip"]'
        )
    )
    r = one_reply(ControlSegment(cfg).handle(query(1), DFS, 0.0))
    assert (r.new_dst_ipaddr, r.new_dst_port, r.next_hop_ipaddr) == ("0.0.0.0", 0, "0.0.0.0")


def test_unknown_vs() -> None:
    cs = ControlSegment(config())
    r = one_reply(cs.handle(query(1, dst="10.0.0.99"), DFS, 0.0))
    assert r.error == SsmbError.UNKNOWN and r.new_dst_ipaddr == "0.0.0.0"
    assert cs.counters["unknown_vs"] == 1 and len(cs.flows) == 0
    assert one_reply(cs.handle(query(2, dport=81), DFS, 0.0)).error == SsmbError.UNKNOWN
    assert one_reply(cs.handle(query(3, proto=17), DFS, 0.0)).error == SsmbError.UNKNOWN


def test_wildcards_match_in_order() -> None:
    tail = """
[[virtual_server]]
name = "anyport"
vip = "10.0.0.100"
flags = ["wildcard_port", "translate_addr"]
[[virtual_server.real_server]]
name = "p"
address = "10.0.2.1"

[[virtual_server]]
name = "anyaddr"
port = 80
flags = ["wildcard_addr", "translate_addr"]
[[virtual_server.real_server]]
name = "q"
address = "10.0.3.1"
"""
    cs = ControlSegment(config(tail=tail))
    assert one_reply(cs.handle(query(1), DFS, 0.0)).new_dst_ipaddr in ("10.0.1.1", "10.0.1.2")
    assert one_reply(cs.handle(query(2, dport=443), DFS, 0.0)).new_dst_ipaddr == "10.0.2.1"
    assert one_reply(cs.handle(query(3, dst="10.0.0.7"), DFS, 0.0)).new_dst_ipaddr == "10.0.3.1"
    assert one_reply(cs.handle(query(4, dst="10.0.0.7", dport=22), DFS, 0.0)).error == SsmbError.UNKNOWN


def test_maintenance_gives_notavail() -> None:
    cs = ControlSegment(config(vs_extra="maintenance = true"))
    assert one_reply(cs.handle(query(1), DFS, 0.0)).error == SsmbError.NOTAVAIL
    assert cs.vs["web"].stats.errors["notavail"] == 1 and cs.counters["refused_maintenance"] == 1


def test_no_healthy_server_gives_notavail() -> None:
    cs = ControlSegment(config(vs_extra='health_check = { type = "tcp", rise = 1, fall = 1 }'))
    cs.health_result("web", "a", False, 1.0)
    cs.health_result("web", "b", False, 1.0)
    assert one_reply(cs.handle(query(1), DFS, 2.0)).error == SsmbError.NOTAVAIL
    cs.health_result("web", "b", True, 3.0)
    assert one_reply(cs.handle(query(2), DFS, 4.0)).new_dst_ipaddr == "10.0.1.2"


def test_connection_limit() -> None:
    cs = ControlSegment(config(vs_extra="connection_limit = 2"))
    assert one_reply(cs.handle(query(1, sport=1), DFS, 0.0)).error == SsmbError.OK
    assert one_reply(cs.handle(query(2, sport=2), DFS, 0.0)).error == SsmbError.OK
    assert one_reply(cs.handle(query(3, sport=3), DFS, 0.0)).error == SsmbError.CONNLIMIT
    cs.handle(endflow(ssmb.Delete, 1, sport=1), DFS, 1.0)
    assert one_reply(cs.handle(query(4, sport=4), DFS, 1.0)).error == SsmbError.OK
    assert cs.vs["web"].stats.errors["connlimit"] == 1


def test_flow_table_bound() -> None:
    cs = ControlSegment(config(cs_extra="query_rate = 0\nmax_flows = 3"))
    errors = [one_reply(cs.handle(query(i, sport=i), DFS, 0.0)).error for i in range(5)]
    assert errors == [0, 0, 0, SsmbError.CONNLIMIT, SsmbError.CONNLIMIT]
    assert cs.counters["flow_table_full"] == 2 and len(cs.flows) == 3


def test_duplicate_query_same_reply_no_double_count() -> None:
    cs = ControlSegment(config())
    first = one_reply(cs.handle(query(7), DFS, 0.0))
    again = one_reply(cs.handle(query(7), DFS, 0.1))
    assert again == first
    assert cs.vs["web"].stats.total == 1 and cs.vs["web"].stats.active == 1
    assert cs.counters["duplicate_query"] == 1
    # the same flow_id from another DFS is another flow
    cs.handle(query(7), DFS2, 0.2)
    assert cs.vs["web"].stats.total == 2


def test_duplicate_refusal_same_answer_counted_once() -> None:
    cs = ControlSegment(config())
    cs.handle(query(1, dst="10.9.9.9"), DFS, 0.0)
    cs.handle(query(1, dst="10.9.9.9"), DFS, 0.5)
    assert cs.counters["unknown_vs"] == 1 and cs.counters["duplicate_query"] == 1


def test_flow_id_reuse_replaces_old_flow() -> None:
    cs = ControlSegment(config())
    cs.handle(query(5, sport=1), DFS, 0.0)
    cs.handle(query(5, sport=2), DFS, 1.0)
    assert cs.counters["flow_id_reused"] == 1
    assert len(cs.flows) == 1 and cs.vs["web"].stats.active == 1 and cs.vs["web"].stats.total == 2


def test_query_rate_limit_per_dfs() -> None:
    cs = ControlSegment(config(cs_extra="query_rate = 10\nquery_burst = 3"))
    answered = sum(1 for i in range(10) if cs.handle(query(i, sport=i), DFS, 0.0))
    assert answered == 3 and cs.counters["query_rate_dropped"] == 7
    assert cs.handle(query(100, sport=100), DFS2, 0.0), "another DFS has its own bucket"
    assert cs.handle(query(101, sport=101), DFS, 0.2)


def test_delete_accounts_and_removes() -> None:
    cs = ControlSegment(config())
    r = one_reply(cs.handle(query(1), DFS, 0.0))
    cs.handle(
        endflow(ssmb.Delete, 1, inbound_bytes=100, outbound_bytes=2000, inbound_pkts=3, outbound_pkts=4),
        DFS,
        1.0,
    )
    assert len(cs.flows) == 0
    web = cs.vs["web"]
    assert (web.stats.active, web.stats.total, web.stats.inbound_bytes, web.stats.outbound_pkts) == (
        0,
        1,
        100,
        4,
    )
    server = "a" if r.new_dst_ipaddr == "10.0.1.1" else "b"
    assert web.servers[server].stats.outbound_bytes == 2000 and web.servers[server].stats.active == 0


def test_stats_and_delete_for_unknown_flows_counted_no_leak() -> None:
    cs = ControlSegment(config())
    for i in range(100):
        assert cs.handle(endflow(ssmb.Delete, i), DFS, 0.0) == []
        assert cs.handle(endflow(ssmb.Stats, i), DFS, 0.0) == []
    assert cs.counters["delete_unknown_flow"] == 100 and cs.counters["stats_unknown_flow"] == 100
    assert len(cs.flows) == 0 and cs.vs["web"].stats.inbound_bytes == 0
    cs.handle(query(1), DFS, 0.0)
    cs.handle(endflow(ssmb.Delete, 1, src="203.0.113.9"), DFS, 0.0)
    assert cs.counters["delete_flow_mismatch"] == 1 and len(cs.flows) == 1


def test_reap_connalive_then_plain_stats() -> None:
    cs = ControlSegment(config())
    cs.handle(query(1), DFS, 0.0)
    assert cs.tick(9.9) == []
    out = cs.tick(10.0)
    assert len(out) == 1 and isinstance(out[0].message, ssmb.Reap) and out[0].dest == DFS
    reap = out[0].message
    assert reap.flow_id == 1 and reap.orig_src_port == 40000 and reap.new_dst_ipaddr == "10.0.1.1"
    cs.handle(endflow(ssmb.Stats, 1, error=SsmbError.CONNALIVE, inbound_bytes=500, inbound_pkts=5), DFS, 10.5)
    assert len(cs.flows) == 1 and cs.counters["stats_connalive"] == 1
    assert cs.tick(20.0) == [], "CONNALIVE restarted the idle timer"
    out = cs.tick(20.5)
    assert [type(o.message) for o in out] == [ssmb.Reap]
    # running totals: only the growth is added
    cs.handle(endflow(ssmb.Stats, 1, inbound_bytes=800, inbound_pkts=8), DFS, 21.0)
    assert len(cs.flows) == 0
    assert cs.vs["web"].stats.inbound_bytes == 800 and cs.vs["web"].stats.inbound_pkts == 8
    assert cs.vs["web"].stats.active == 0


def test_unanswered_reap_retried_then_dropped() -> None:
    cs = ControlSegment(config())
    cs.handle(query(1), DFS, 0.0)
    assert len(cs.tick(10.0)) == 1
    assert cs.tick(11.9) == []
    assert len(cs.tick(12.0)) == 1  # second try
    assert cs.tick(14.0) == [] and len(cs.flows) == 0
    assert cs.counters["reap_unanswered"] == 1 and cs.counters["reap_sent"] == 2
    assert cs.vs["web"].stats.active == 0


def test_reap_batch_many_flows() -> None:
    cs = ControlSegment(config())
    for i in range(50):
        cs.handle(query(i, sport=i), DFS, 0.0)
    out = cs.tick(10.0)
    assert len(out) == 50 and {o.message.flow_id for o in out} == set(range(50))


def test_reset_from_dfs_clears_only_its_flows() -> None:
    cs = ControlSegment(config())
    cs.handle(query(1), DFS, 0.0)
    cs.handle(query(1), DFS2, 0.0)
    out = cs.handle(ssmb.Reset(), DFS, 1.0)
    assert out == [ResetAck(DFS)]
    assert len(cs.flows) == 1 and cs.vs["web"].stats.active == 1


def test_persistence_sticks_and_times_out() -> None:
    cs = ControlSegment(config(vs_extra="persistence = { timeout = 30 }"))
    first = one_reply(cs.handle(query(1, sport=1), DFS, 0.0)).new_dst_ipaddr
    for i in range(2, 8):
        assert one_reply(cs.handle(query(i, sport=i), DFS, 0.0)).new_dst_ipaddr == first
    other = one_reply(cs.handle(query(50, src="198.51.100.2"), DFS, 0.0)).new_dst_ipaddr
    assert other != first  # round robin continues for new clients
    for i in range(1, 8):
        cs.handle(endflow(ssmb.Delete, i, sport=i), DFS, 1.0)
    assert one_reply(cs.handle(query(9, sport=9), DFS, 30.0)).new_dst_ipaddr == first
    cs.handle(endflow(ssmb.Delete, 9, sport=9), DFS, 31.0)
    cs.tick(61.0)
    assert cs.persistence.get("web", "198.51.100.1", 61.0) is None
    assert cs.counters["persistence_hit"] == 7


def test_persistence_rebinds_when_server_down() -> None:
    cs = ControlSegment(
        config(vs_extra='persistence = { timeout = 30 }\nhealth_check = { type = "tcp", fall = 1 }')
    )
    first = one_reply(cs.handle(query(1, sport=1), DFS, 0.0))
    name = "a" if first.new_dst_ipaddr == "10.0.1.1" else "b"
    cs.health_result("web", name, False, 1.0)
    second = one_reply(cs.handle(query(2, sport=2), DFS, 2.0))
    assert second.new_dst_ipaddr != first.new_dst_ipaddr


def test_newflow_prepares_related_port_once() -> None:
    cs = ControlSegment(config(vs_extra="persistence = { timeout = 30, prepare_ports = [20] }"))
    out = cs.handle(query(1, sport=1), DFS, 0.0)
    newflows = [o for o in out if isinstance(o.message, ssmb.NewFlow)]
    assert len(newflows) == 1
    nf = newflows[0].message
    assert nf.flow_id & NEWFLOW_ID_BIT and nf.orig_dst_port == 20 and nf.orig_src_port == 0
    assert nf.new_dst_ipaddr == one_reply(out).new_dst_ipaddr
    out2 = cs.handle(query(2, sport=2), DFS, 0.0)
    assert not [o for o in out2 if isinstance(o.message, ssmb.NewFlow)]
    # the DFS may report on the prepared flow like any other
    cs.handle(endflow(ssmb.Delete, nf.flow_id, sport=0), DFS, 1.0)
    assert cs.counters["delete_unknown_flow"] == 0


def test_drain_no_new_flows_existing_finish() -> None:
    cs = ControlSegment(config())
    r1 = one_reply(cs.handle(query(1, sport=1), DFS, 0.0))
    assert r1.new_dst_ipaddr == "10.0.1.1"
    matched, _ = cs.set_drain("a", True)
    assert matched == ["web/a"]
    picks = Counter(one_reply(cs.handle(query(i, sport=i), DFS, 0.0)).new_dst_ipaddr for i in range(2, 12))
    assert picks == Counter({"10.0.1.2": 10})
    assert cs.vs["web"].servers["a"].stats.active == 1  # existing flow kept
    cs.handle(endflow(ssmb.Delete, 1, sport=1), DFS, 1.0)
    assert cs.vs["web"].servers["a"].stats.active == 0
    cs.set_drain("web/a", False)
    picks = Counter(one_reply(cs.handle(query(i, sport=i), DFS, 2.0)).new_dst_ipaddr for i in range(20, 30))
    assert picks["10.0.1.1"] > 0
    assert cs.set_drain("nosuch", True)[0] == []


def test_disabled_server_gets_nothing() -> None:
    cfg = parse_config_text(
        BASE.format(method="round_robin", cs_extra="query_rate = 0", vs_extra="", wa=1, wb=1)
        + "disabled = true\n"
    )
    cs = ControlSegment(cfg)
    assert {one_reply(cs.handle(query(i, sport=i), DFS, 0.0)).new_dst_ipaddr for i in range(6)} == {
        "10.0.1.1"
    }


@pytest.mark.parametrize(
    ("method", "wa", "wb", "expect_a"),
    [
        ("round_robin", 1, 3, 0.5),
        ("weighted_round_robin", 1, 3, 0.25),
        ("least_connections", 1, 3, 0.25),
        ("source_hash", 1, 3, 0.25),
        ("maglev", 1, 3, 0.25),
    ],
)
def test_distribution_through_engine(method: str, wa: int, wb: int, expect_a: float) -> None:
    cs = ControlSegment(config(method=method, wa=wa, wb=wb))
    n = 2000
    picks = Counter(
        one_reply(
            cs.handle(query(i, src=f"198.51.{i // 250}.{i % 250}", sport=1000 + i), DFS, 0.0)
        ).new_dst_ipaddr
        for i in range(n)
    )
    share = picks["10.0.1.1"] / n
    assert abs(share - expect_a) < 0.05, (method, picks)


def test_health_transitions_and_targets() -> None:
    cs = ControlSegment(config(vs_extra='health_check = { type = "http", path = "/h", rise = 2, fall = 2 }'))
    targets = {(t.server, t.address, t.port) for t in cs.health_targets()}
    assert targets == {("a", "10.0.1.1", 8080), ("b", "10.0.1.2", 80)}
    assert cs.health_result("web", "a", False, 1.0) == []
    cs.health_result("web", "a", False, 2.0)
    assert cs.vs["web"].servers["a"].state == "down" and cs.counters["health_down"] == 1
    cs.health_result("web", "a", True, 3.0)
    assert cs.vs["web"].servers["a"].state == "down"
    cs.health_result("web", "a", True, 4.0)
    assert cs.vs["web"].servers["a"].state == "up" and cs.counters["health_up"] == 1
    cs.health_result("web", "zzz", True, 5.0)
    assert cs.counters["health_result_unknown_target"] == 1


def test_dfs_assist_definition_carries_pool_and_health_updates_it() -> None:
    tail = """
[[virtual_server]]
name = "dns"
vip = "10.0.0.53"
port = 53
protocol = "udp"
vs_class = "dfs_assist"
health_check = { type = "tcp", fall = 1, rise = 1 }
[[virtual_server.real_server]]
name = "d1"
address = "10.0.2.1"
weight = 2
[[virtual_server.real_server]]
name = "d2"
address = "10.0.2.2"
port = 5353
"""
    cs = ControlSegment(config(tail=tail))
    dns = cs.vs["dns"].definition()
    assert dns.vs_class == VsClass.DFS_ASSIST and dns.proto == 17
    pool = csmb.decode_pool(dns.app_data)
    assert [(p.ipaddr, p.port, p.weight) for p in pool] == [("10.0.2.1", 0, 2), ("10.0.2.2", 5353, 1)]
    changes = cs.health_result("dns", "d1", False, 1.0)
    assert len(changes) == 1 and changes[0].kind == "add"
    assert [p.ipaddr for p in csmb.decode_pool(changes[0].definition.app_data)] == ["10.0.2.2"]
    assert cs.health_result("web", "a", False, 1.0) == []  # not a health-checked VS: nothing to re-announce


def test_reload_diff_and_state_carry_over() -> None:
    cs = ControlSegment(config())
    cs.handle(query(1), DFS, 0.0)
    cs.set_drain("b", True)
    new = config(
        wa=5,
        tail='\n[[virtual_server]]\nname = "new"\nvip = "10.0.0.101"\nport = 80\n'
        '[[virtual_server.real_server]]\nname = "n"\naddress = "10.0.5.1"\n',
    )
    changes = cs.reload(new, 1.0)
    assert [(c.kind, c.name) for c in changes] == [("add", "new")], (
        "a weight change is not visible on the wire for CS_ASSIST"
    )
    assert cs.vs["web"].stats.active == 1 and len(cs.flows) == 1
    assert cs.vs["web"].servers["b"].draining, "operator drain survives reload"
    changes = cs.reload(config(), 2.0)
    assert [(c.kind, c.name) for c in changes] == [("delete", "new")]


def test_reload_removes_vs_and_its_flows() -> None:
    cs = ControlSegment(
        config(
            tail='\n[[virtual_server]]\nname = "x"\nvip = "10.0.0.102"\nport = 80\n'
            '[[virtual_server.real_server]]\nname = "n"\naddress = "10.0.5.1"\n'
        )
    )
    cs.handle(query(1, dst="10.0.0.102"), DFS, 0.0)
    cs.handle(query(2), DFS, 0.0)
    changes = cs.reload(config(), 1.0)
    assert [(c.kind, c.name) for c in changes] == [("delete", "x")]
    assert len(cs.flows) == 1 and cs.counters["flows_dropped_by_reload"] == 1


def test_reload_server_removed_keeps_flows_until_end() -> None:
    cs = ControlSegment(config())
    r = one_reply(cs.handle(query(1), DFS, 0.0))
    assert r.new_dst_ipaddr == "10.0.1.1"
    only_b = parse_config_text(
        BASE.format(method="round_robin", cs_extra="query_rate = 0", vs_extra="", wa=1, wb=1).split(
            "[[virtual_server.real_server]]"
        )[0]
        + '[[virtual_server.real_server]]\nname = "b"\naddress = "10.0.1.2"\n'
    )
    cs.reload(only_b, 1.0)
    assert cs.vs["web"].servers["a"].state == "retired"
    assert {one_reply(cs.handle(query(i, sport=i), DFS, 1.0)).new_dst_ipaddr for i in range(2, 6)} == {
        "10.0.1.2"
    }
    cs.handle(endflow(ssmb.Delete, 1), DFS, 2.0)
    assert "a" not in cs.vs["web"].servers


def test_register_dfs_sends_reset_first_time_only() -> None:
    cs = ControlSegment(config())
    out = cs.register_dfs(DFS, 0.0)
    assert len(out) == 1 and isinstance(out[0].message, ssmb.Reset) and out[0].dest == DFS
    cs.unregister_dfs(DFS)
    assert cs.register_dfs(DFS, 1.0) == []


def test_queries_from_other_port_of_registered_dfs_share_identity() -> None:
    cs = ControlSegment(config())
    cs.register_dfs(DFS, 0.0)
    cs.handle(query(1), ("192.0.2.10", 40001), 0.0)
    out = cs.tick(10.0)
    assert out[0].dest == DFS
    cs.handle(endflow(ssmb.Stats, 1), DFS, 10.1)
    assert len(cs.flows) == 0


def test_unexpected_types_counted() -> None:
    cs = ControlSegment(config())
    r = one_reply(cs.handle(query(1), DFS, 0.0))
    assert cs.handle(r, DFS, 0.0) == []
    assert cs.counters["rx_unexpected_type"] == 1


def test_views_are_json_ready() -> None:
    import json

    cs = ControlSegment(config())
    cs.handle(query(1), DFS, 0.0)
    for view in (cs.status(1.0), cs.flow_rows(), cs.server_rows(), cs.vs_rows()):
        json.dumps(view)
    assert cs.flow_rows()[0]["vs"] == "web"


DFS_ASSIST_TAIL = """
[[virtual_server]]
name = "dns"
vip = "10.0.0.53"
port = 53
protocol = "udp"
vs_class = "dfs_assist"
[[virtual_server.real_server]]
name = "d1"
address = "10.0.2.1"
[[virtual_server.real_server]]
name = "d2"
address = "10.0.2.2"

[[virtual_server]]
name = "any"
vip = "10.0.0.60"
port = 0
flags = ["translate_addr", "wildcard_port"]
vs_class = "dfs_assist"
[[virtual_server.real_server]]
name = "e1"
address = "10.0.3.1"
"""


def assist_end(
    cls: Any, flow_id: int, dst: str = "10.0.0.53", dport: int = 53, proto: int = 17, **kw: int
) -> Any:
    return cls(
        orig_src_ipaddr="198.51.100.1",
        orig_dst_ipaddr=dst,
        orig_src_port=kw.pop("sport", 40000),
        orig_dst_port=dport,
        proto=proto,
        flow_id=flow_id,
        **kw,
    )


def test_dfs_assist_end_counts_into_vs_without_flow_state() -> None:
    cs = ControlSegment(config(tail=DFS_ASSIST_TAIL))
    cs.register_dfs(DFS, 0.0)
    for i in range(1, 201):
        msg = assist_end(
            ssmb.Delete,
            i,
            sport=10000 + i,
            inbound_bytes=100,
            outbound_bytes=1000,
            inbound_pkts=2,
            outbound_pkts=3,
        )
        assert cs.handle(msg, DFS, float(i)) == []
    dns = cs.vs["dns"].stats
    assert (dns.total, dns.active, dns.dfs_assist_flows) == (200, 0, 200)
    assert (dns.inbound_bytes, dns.outbound_bytes, dns.inbound_pkts, dns.outbound_pkts) == (
        20_000,
        200_000,
        400,
        600,
    )
    assert cs.counters["dfs_assist_flows"] == 200
    assert cs.counters["delete_unknown_flow"] == 0
    assert len(cs.flows) == 0 and len(cs.persistence) == 0 and cs.tick(1000.0) == []
    assert all(s.stats.total == 0 for s in cs.vs["dns"].servers.values()), "the DELETE names no server"
    row = next(r for r in cs.vs_rows() if r["name"] == "dns")
    assert (row["total"], row["dfs_assist_flows"], row["inbound_bytes"]) == (200, 200, 20_000)


def test_dfs_assist_stats_plain_counts_connalive_does_not() -> None:
    cs = ControlSegment(config(tail=DFS_ASSIST_TAIL))
    cs.register_dfs(DFS, 0.0)
    cs.handle(assist_end(ssmb.Stats, 5, error=SsmbError.CONNALIVE, inbound_bytes=70), DFS, 1.0)
    dns = cs.vs["dns"].stats
    assert (dns.total, dns.inbound_bytes) == (0, 0), "running totals of a live connection add nothing yet"
    assert cs.counters["dfs_assist_connalive_ignored"] == 1
    cs.handle(assist_end(ssmb.Stats, 5, inbound_bytes=90), DFS, 2.0)
    assert (dns.total, dns.inbound_bytes) == (1, 90)
    assert len(cs.flows) == 0


def test_dfs_assist_end_wildcard_port_and_identity_by_host() -> None:
    cs = ControlSegment(config(tail=DFS_ASSIST_TAIL))
    cs.register_dfs(DFS, 0.0)
    cs.handle(assist_end(ssmb.Delete, 1, dst="10.0.0.60", dport=4321, proto=6, inbound_pkts=1), DFS, 1.0)
    # another socket of the same announced DFS host is the same DFS
    cs.handle(assist_end(ssmb.Delete, 2, dst="10.0.0.60", dport=80, proto=6), ("192.0.2.10", 40001), 1.0)
    assert cs.vs["any"].stats.total == 2 and cs.vs["any"].stats.inbound_pkts == 1
    # wrong protocol for the wildcard VS: not a DFS_ASSIST destination
    cs.handle(assist_end(ssmb.Delete, 3, dst="10.0.0.60", dport=80, proto=17), DFS, 1.0)
    assert cs.vs["any"].stats.total == 2 and cs.counters["delete_unknown_flow"] == 1


def test_dfs_assist_end_from_unannounced_sender_is_not_counted() -> None:
    cs = ControlSegment(config(tail=DFS_ASSIST_TAIL))
    cs.handle(assist_end(ssmb.Delete, 1, inbound_bytes=10**9), ("203.0.113.66", 9999), 1.0)
    assert cs.vs["dns"].stats.total == 0 and cs.vs["dns"].stats.inbound_bytes == 0
    assert cs.counters["dfs_assist_unknown_sender"] == 1
    # a DFS whose CSMB session is down (it may reconnect) is still known
    cs.register_dfs(DFS, 2.0)
    cs.unregister_dfs(DFS)
    cs.handle(assist_end(ssmb.Delete, 2), DFS, 3.0)
    assert cs.vs["dns"].stats.total == 1


def test_unknown_flows_for_cs_assist_stay_ignored_with_dfs_assist_configured() -> None:
    cs = ControlSegment(config(tail=DFS_ASSIST_TAIL))
    cs.register_dfs(DFS, 0.0)
    cs.handle(endflow(ssmb.Delete, 42, inbound_bytes=500), DFS, 1.0)
    cs.handle(endflow(ssmb.Stats, 43, inbound_bytes=500), DFS, 1.0)
    web = cs.vs["web"].stats
    assert (web.total, web.inbound_bytes, web.dfs_assist_flows) == (0, 0, 0)
    assert cs.counters["delete_unknown_flow"] == 1 and cs.counters["stats_unknown_flow"] == 1
    assert cs.counters["dfs_assist_flows"] == 0


def test_dfs_assist_end_reusing_a_stale_cs_flow_id_leaves_that_flow() -> None:
    cs = ControlSegment(config(tail=DFS_ASSIST_TAIL))
    cs.register_dfs(DFS, 0.0)
    cs.handle(query(7), DFS, 0.0)
    cs.handle(assist_end(ssmb.Delete, 7, outbound_bytes=64), DFS, 1.0)
    assert len(cs.flows) == 1 and cs.vs["web"].stats.active == 1
    assert cs.vs["dns"].stats.total == 1 and cs.vs["dns"].stats.outbound_bytes == 64
    assert cs.counters["delete_flow_mismatch"] == 0


# ---------------------------------------------------------------- active/standby pair

ACTIVE_CS = ("192.0.2.1", 7700)  # the standby's `standby` names it


def pair(vs_extra: str = "") -> tuple[ControlSegment, ControlSegment]:
    """An active CS and its standby with the same virtual servers."""
    active = ControlSegment(config(cs_extra='query_rate = 0\nstandby = "192.0.2.2"', vs_extra=vs_extra))
    standby_cs = 'query_rate = 0\nstandby = "192.0.2.1"\nrole = "standby"'
    standby = ControlSegment(config(cs_extra=standby_cs, vs_extra=vs_extra))
    return active, standby


def server_active(cs: ControlSegment, name: str) -> int:
    return int(cs.vs["web"].servers[name].stats.active)


def test_standby_replicates_flows_from_reply_copies_and_answers_nothing() -> None:
    """REPLY copies build the standby's flow table and statistics; the DFS's DELETE copy ends the flow."""
    active, standby = pair()
    replies = [one_reply(active.handle(query(i, sport=40000 + i), DFS, 0.0)) for i in (1, 2, 3)]
    refused = dataclasses.replace(replies[0], flow_id=9, error=SsmbError.NOTAVAIL)
    for r in [*replies, replies[0], refused]:
        assert standby.handle(r, ACTIVE_CS, 0.5) == []
    assert standby.handle(dataclasses.replace(replies[0], flow_id=7), DFS, 0.5) == []  # not the active
    assert standby.counters["shared_reply_not_from_active"] == 1
    assert standby.role == "standby" and len(standby.flows) == 3
    assert standby.counters["shared_reply_duplicate"] == 1 and standby.counters["shared_refusals"] == 1
    # Same server per flow as the active decided (round robin: a, b, a).
    assert (server_active(standby, "a"), server_active(standby, "b")) == (2, 1)
    assert standby.vs["web"].stats.total == 3

    # Flow ids are the DFS's own: another DFS's flow 1 is a different flow.
    other = one_reply(active.handle(query(1, src="198.51.100.77"), DFS2, 0.0))
    standby.handle(other, ACTIVE_CS, 0.5)
    assert len(standby.flows) == 4 and server_active(standby, "b") == 2

    # The DFS's DELETE copy (its own address) ends the matching flow and counts its bytes.
    out = standby.handle(endflow(ssmb.Delete, 2, sport=40002, inbound_bytes=500, inbound_pkts=5), DFS, 1.0)
    assert out == [] and len(standby.flows) == 3
    assert server_active(standby, "b") == 1 and standby.vs["web"].servers["b"].stats.inbound_bytes == 500
    assert standby.counters["shared_flows_claimed"] == 1
    assert standby.counters["delete_unknown_flow"] == 0


def test_standby_keeps_flows_alive_from_stats_copies_and_never_reaps() -> None:
    """The active reaps; the standby only follows the DFS's STATS copies, and sends no REAP itself."""
    active, standby = pair()
    standby.handle(one_reply(active.handle(query(1), DFS, 0.0)), ACTIVE_CS, 0.0)
    standby.handle(one_reply(active.handle(query(2, sport=40002), DFS, 0.0)), ACTIVE_CS, 0.0)
    assert standby.tick(30.0) == [] and len(standby.flows) == 2
    alive = endflow(ssmb.Stats, 1, error=SsmbError.CONNALIVE, inbound_bytes=100)
    standby.handle(alive, DFS, 31.0)
    standby.handle(endflow(ssmb.Stats, 2, sport=40002, inbound_bytes=7), DFS, 31.0)  # plain STATS: over
    assert [f.flow_id for f in standby.flows] == [1]
    assert standby.flows.get((DFS, 1)) is not None  # now filed under its DFS
    assert standby.tick(100.0) == []


def test_takeover_when_a_dfs_connects_without_reset_then_reaps_every_flow() -> None:
    """A DFS turning to the standby makes it active: no RESET (the flows are shared), REAPs resume."""
    active, standby = pair()
    standby.handle(one_reply(active.handle(query(1), DFS, 0.0)), ACTIVE_CS, 0.0)
    standby.handle(one_reply(active.handle(query(2, sport=40002), DFS, 0.0)), ACTIVE_CS, 0.0)
    standby.handle(endflow(ssmb.Stats, 2, sport=40002, error=SsmbError.CONNALIVE), DFS, 1.0)  # owner known
    assert standby.register_dfs(DFS, 2.0) == []  # no SSMB RESET
    assert standby.role == "active" and standby.counters["takeovers"] == 1
    assert standby.status(2.0)["role"] == "active"
    # New flows are decided here now.
    assert one_reply(standby.handle(query(3, sport=40003), DFS, 2.0)).error == SsmbError.OK
    reaps = [o for o in standby.tick(20.0) if isinstance(o.message, ssmb.Reap)]
    assert sorted((o.dest, o.message.flow_id) for o in reaps) == [(DFS, 1), (DFS, 2), (DFS, 3)]


def test_replicated_flow_without_owner_is_reaped_at_every_dfs_until_one_has_it() -> None:
    """Two DFSs: a REAP goes to both; UNKNOWN from one is not the end, the owner's answer claims it."""
    active, standby = pair()
    standby.handle(one_reply(active.handle(query(1), DFS, 0.0)), ACTIVE_CS, 0.0)
    standby.handle(one_reply(active.handle(query(2, sport=40002), DFS, 0.0)), ACTIVE_CS, 0.0)
    standby.register_dfs(DFS, 1.0)
    standby.register_dfs(DFS2, 1.0)
    reaps = [o for o in standby.tick(20.0) if isinstance(o.message, ssmb.Reap)]
    assert sorted((o.dest, o.message.flow_id) for o in reaps) == [(DFS, 1), (DFS, 2), (DFS2, 1), (DFS2, 2)]
    standby.handle(endflow(ssmb.Stats, 1, error=SsmbError.UNKNOWN), DFS2, 20.1)
    assert len(standby.flows) == 2  # DFS may still have it
    standby.handle(endflow(ssmb.Stats, 1, error=SsmbError.CONNALIVE), DFS, 20.1)
    assert standby.flows.get((DFS, 1)) is not None
    # Flow 2 is at neither DFS: gone once both said so.
    standby.handle(endflow(ssmb.Stats, 2, sport=40002, error=SsmbError.UNKNOWN), DFS2, 20.2)
    standby.handle(endflow(ssmb.Stats, 2, sport=40002, error=SsmbError.UNKNOWN), DFS, 20.2)
    assert [f.flow_id for f in standby.flows] == [1]
    assert standby.counters["shared_flows_gone"] == 1
    assert standby.vs["web"].stats.active == 1


def test_standby_rebuilds_persistence_so_clients_keep_their_server_after_takeover() -> None:
    """Each REPLY copy of a persistent VS binds the client as the active did; it survives the takeover."""
    active, standby = pair(vs_extra="persistence = { timeout = 30 }")
    x = one_reply(active.handle(query(1, src="198.51.100.1"), DFS, 0.0))
    y = one_reply(active.handle(query(2, src="198.51.100.2"), DFS, 0.0))
    assert (x.new_dst_ipaddr, y.new_dst_ipaddr) == ("10.0.1.1", "10.0.1.2")
    for r in (x, y):
        standby.handle(r, ACTIVE_CS, 0.1)
    # Both flows end before the takeover: the records outlive them (timeout 30 s).
    standby.handle(endflow(ssmb.Delete, 1, src="198.51.100.1"), DFS, 1.0)
    standby.handle(endflow(ssmb.Delete, 2, src="198.51.100.2"), DFS, 1.0)
    assert len(standby.flows) == 0
    standby.register_dfs(DFS, 2.0)
    # Round robin alone would give y's client server a first; persistence keeps it on b.
    again = one_reply(standby.handle(query(3, src="198.51.100.2", sport=41000), DFS, 3.0))
    assert again.new_dst_ipaddr == "10.0.1.2" and standby.counters["persistence_hit"] == 1
