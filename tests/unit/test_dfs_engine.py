"""DFS engine against a fake switch: where each direction's packets go and how they are rewritten."""

from __future__ import annotations

import itertools

import pytest

from slbcore.dfs import rules
from slbcore.dfs.config import parse_config
from slbcore.dfs.engine import DfsEngine, FlowEntryStats
from slbcore.dfs.packets import (
    ARP_REPLY,
    ARP_REQUEST,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    build_arp,
    build_tcp,
    build_udp,
    parse_frame,
)
from slbproto import csmb, ssmb
from slbproto.constants import NEWFLOW_ID_BIT, FlowFlag, SsmbError, VsClass, VsFlag
from tests.unit import fakeswitch
from tests.unit.fakeswitch import Rig

pytestmark = pytest.mark.unit

A1, A2 = "02:00:00:00:01:01", "02:00:00:00:02:01"
CLIENT_MAC, ROUTER_MAC, S20_MAC, S10_MAC = (
    "02:c0:00:00:00:50",
    "02:ee:00:00:02:fe",
    "02:5e:00:00:00:20",
    "02:5e:00:00:00:10",
)
CLIENT, VIP = "10.0.1.50", "10.0.9.100"
EPOCH = 7

CONFIG = {
    "dfs": {"name": "dfs1", "switch": "s1", "mgmt_ipaddr": "127.0.0.1"},
    "interface": [
        {"port": 1, "ipaddr": "10.0.1.1/24", "mac": A1, "name": "client"},
        {"port": 2, "ipaddr": "10.0.2.1/24", "mac": A2, "name": "server"},
    ],
    "route": [{"prefix": "10.0.3.0/24", "via": "10.0.2.254"}, {"prefix": "10.0.9.0/24", "via": "10.0.2.254"}],
    "timeouts": {"idle": 10, "fin_idle": 1, "query": 0.2, "query_retries": 2, "arp": 0.5, "arp_retries": 1},
    "limits": {"held_per_flow": 3, "max_flows": 100},
}


def make_rig(**limits: int) -> Rig:
    cfg = dict(CONFIG)
    if limits:
        cfg["limits"] = {**CONFIG["limits"], **limits}
    rig = Rig(DfsEngine(parse_config(cfg), EPOCH))
    rig.feed(rig.engine.switch_connected(0.0))
    rig.feed(rig.engine.csmb_connected(0.0))
    rig.feed(rig.engine.csmb_message(csmb.Hello("127.0.0.1", "0.0.0.0", 0, 1, 0, 7700), 0.0))
    rig.feed(rig.engine.csmb_message(csmb.Ack(), 0.0))
    rig.csmb.clear()
    return rig


def learn_neighbour(rig: Rig, port: int, ip: str, mac: str) -> None:
    rig.send(
        port, build_arp(ARP_REPLY, mac, ip, A1 if port == 1 else A2, "10.0.1.1" if port == 1 else "10.0.2.1")
    )


def add_vs(
    rig: Rig,
    flags: int,
    vip: str = VIP,
    port: int = 80,
    proto: int = 6,
    cls: int = VsClass.CS_ASSIST,
    app_data: bytes = b"",
) -> csmb.VirtualServer:
    vs = csmb.VirtualServer(flags, vip, port, cls, proto, app_data)
    rig.feed(rig.engine.csmb_message(csmb.AddVs(vs), rig.now))
    return vs


def client_tcp(
    flags: int,
    sport: int = 40000,
    dst: str = VIP,
    dport: int = 80,
    seq: int = 1000,
    ack: int = 0,
    payload: bytes = b"",
) -> bytes:
    return build_tcp(CLIENT_MAC, A1, CLIENT, dst, sport, dport, seq, ack, flags, payload)


def reply_for(q: ssmb.Query, **kw: object) -> ssmb.Reply:
    base = dict(
        orig_src_ipaddr=q.orig_src_ipaddr,
        orig_dst_ipaddr=q.orig_dst_ipaddr,
        orig_src_port=q.orig_src_port,
        orig_dst_port=q.orig_dst_port,
        proto=q.proto,
        flow_id=q.flow_id,
    )
    base.update(kw)
    return ssmb.Reply(**base)  # type: ignore[arg-type]


def neighbours(rig: Rig) -> None:
    learn_neighbour(rig, 1, CLIENT, CLIENT_MAC)
    learn_neighbour(rig, 2, "10.0.2.254", ROUTER_MAC)
    learn_neighbour(rig, 2, "10.0.2.20", S20_MAC)
    learn_neighbour(rig, 2, "10.0.2.10", S10_MAC)
    rig.wire.clear()


def setup_flow(rig: Rig, **reply: object) -> tuple[ssmb.Query, list]:
    """Client SYN -> QUERY -> REPLY; return the QUERY and what went on the wire."""
    rig.send(1, client_tcp(TCP_SYN))
    (q,) = rig.take_ssmb()
    assert isinstance(q, ssmb.Query)
    before = len(rig.wire)
    rig.feed(rig.engine.ssmb_message(reply_for(q, **reply), rig.now))
    return q, rig.wire[before:]


FLAG_COMBOS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize(("taddr", "tport", "by_dst"), FLAG_COMBOS)
def test_cs_assist_rewrites_both_directions(taddr: bool, tport: bool, by_dst: bool) -> None:
    rig = make_rig()
    neighbours(rig)
    flags = (
        (VsFlag.TRANSLATE_ADDR if taddr else 0)
        | (VsFlag.TRANSLATE_PORT if tport else 0)
        | (VsFlag.ROUTE_BY_DST_IP if by_dst else 0)
    )
    add_vs(rig, flags)
    q, released = setup_flow(rig, new_dst_ipaddr="10.0.3.10", new_dst_port=8080, next_hop_ipaddr="10.0.2.20")
    server_ip = "10.0.3.10" if taddr else VIP
    server_port = 8080 if tport else 80
    next_mac = ROUTER_MAC if by_dst else S20_MAC
    assert q.orig_src_ipaddr == CLIENT and q.orig_dst_ipaddr == VIP and q.tcp_flags == TCP_SYN
    # the held SYN is released through the same rewriting
    assert len(released) == 1 and released[0].port == 2
    syn = released[0].packet
    assert (syn["ipv4_dst"], syn["tcp_dst"], syn["eth_src"], syn["eth_dst"]) == (
        server_ip,
        server_port,
        A2,
        next_mac,
    )
    assert (syn["ipv4_src"], syn["tcp_src"]) == (CLIENT, 40000)
    packet_ins = rig.engine.counters["packet_ins"]
    (fwd,) = rig.send(1, client_tcp(TCP_ACK, seq=1001, ack=5001))
    assert fwd.port == 2
    assert (fwd.packet["ipv4_dst"], fwd.packet["tcp_dst"], fwd.packet["eth_dst"]) == (
        server_ip,
        server_port,
        next_mac,
    )
    (back,) = rig.send(
        2, build_tcp(S20_MAC, A2, server_ip, CLIENT, server_port, 40000, 5000, 1001, TCP_SYN | TCP_ACK)
    )
    assert back.port == 1
    b = back.packet
    assert (b["ipv4_src"], b["tcp_src"], b["ipv4_dst"], b["tcp_dst"]) == (VIP, 80, CLIENT, 40000)
    assert (b["eth_src"], b["eth_dst"]) == (A1, CLIENT_MAC)
    assert rig.engine.counters["packet_ins"] == packet_ins, "offloaded packets must not reach the DFS"
    assert rig.engine.counters["flows_offloaded"] == 1


def test_untranslated_entries_do_not_rewrite_addresses() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, 0)
    _, _released = setup_flow(rig, new_dst_ipaddr="10.0.3.10", new_dst_port=8080, next_hop_ipaddr="10.0.2.20")
    fwd_entries = rig.switch.find(rules.make_cookie(rules.KIND_FWD, EPOCH, 1))
    keys = {a.key for a in fwd_entries[0].actions if hasattr(a, "key")}
    assert keys == {"eth_src", "eth_dst"}


@pytest.mark.parametrize(
    ("flags", "dst", "dport"),
    [
        (VsFlag.WILDCARD_PORT, VIP, 443),
        (VsFlag.WILDCARD_ADDR, "10.0.9.77", 80),
        (VsFlag.WILDCARD_ADDR | VsFlag.WILDCARD_PORT, "10.0.9.77", 25),
    ],
)
def test_wildcard_virtual_servers_claim_flows_and_reverse_to_original(
    flags: int, dst: str, dport: int
) -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, flags | VsFlag.TRANSLATE_ADDR)
    rig.send(1, client_tcp(TCP_SYN, dst=dst, dport=dport))
    (q,) = rig.take_ssmb()
    assert (q.orig_dst_ipaddr, q.orig_dst_port) == (dst, dport)
    rig.feed(
        rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10"), 0)
    )
    (back,) = rig.send(2, build_tcp(S10_MAC, A2, "10.0.2.10", CLIENT, dport, 40000, 1, 1, TCP_ACK))
    assert (back.packet["ipv4_src"], back.packet["tcp_src"]) == (dst, dport)


def test_exact_virtual_server_wins_over_wildcard() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.WILDCARD_ADDR | VsFlag.WILDCARD_PORT)
    add_vs(rig, VsFlag.TRANSLATE_PORT)
    _, released = setup_flow(rig, new_dst_port=8080, next_hop_ipaddr="10.0.2.20")
    assert released[0].packet["tcp_dst"] == 8080  # the exact VS's TRANSLATE_PORT applied
    prios = sorted(
        e.priority
        for e in rig.switch.find(rules.make_cookie(rules.KIND_DISPATCH, 0, 0), rules.MASK_TAG | (0xFF << 48))
    )
    # each CS_ASSIST TCP virtual server: its catch-all, and its opening-SYN entry one above
    wild, exact = rules.vs_priority(True, True), rules.vs_priority(False, False)
    assert prios == [wild, wild + 1, exact, exact + 1]
    assert exact > wild + 1


@pytest.mark.parametrize("noarp", [False, True])
def test_arp_for_vip_unless_noarp(noarp: bool) -> None:
    rig = make_rig()
    add_vs(rig, VsFlag.NOARP_MODE if noarp else 0, vip="10.0.1.100")
    rig.wire.clear()
    out = rig.send(1, build_arp(ARP_REQUEST, CLIENT_MAC, CLIENT, "00:00:00:00:00:00", "10.0.1.100"))
    if noarp:
        assert out == []
    else:
        (ev,) = out
        arp = parse_frame(ev.packet["_data"]).arp
        assert ev.port == 1 and arp is not None
        assert (arp.op, arp.sha, arp.spa, arp.tha, arp.tpa) == (
            ARP_REPLY,
            A1,
            "10.0.1.100",
            CLIENT_MAC,
            CLIENT,
        )
    # its own interface address is always answered
    (ev,) = rig.send(1, build_arp(ARP_REQUEST, CLIENT_MAC, CLIENT, "00:00:00:00:00:00", "10.0.1.1"))
    assert parse_frame(ev.packet["_data"]).arp.spa == "10.0.1.1"  # type: ignore[union-attr]


@pytest.mark.parametrize("error", [SsmbError.NOTAVAIL, SsmbError.CONNLIMIT, SsmbError.UNKNOWN])
def test_error_reply_resets_the_client(error: SsmbError) -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    _, out = setup_flow(rig, error=error)
    (rst,) = out
    assert rst.port == 1
    frame = parse_frame(rst.packet["_data"])
    ip = frame.ip
    assert ip is not None and frame.eth_dst == CLIENT_MAC and frame.eth_src == A1
    assert (ip.src, ip.sport, ip.dst, ip.dport) == (VIP, 80, CLIENT, 40000)
    assert ip.tcp_flags == TCP_RST | TCP_ACK and ip.tcp_ack == 1001 and ip.tcp_seq == 0
    assert rig.engine.errors[f"reply_{error.name.lower()}"] == 1
    assert not rig.switch.find(rules.make_cookie(rules.KIND_PER_FLOW, 0, 0), rules.MASK_PER_FLOW)
    assert not rig.engine.pending and rig.engine.held_total == 0


@pytest.mark.parametrize(("error", "code"), [(SsmbError.UNKNOWN, 3), (SsmbError.NOTAVAIL, 13)])
def test_error_reply_for_udp_sends_icmp_unreachable(error: SsmbError, code: int) -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR, port=53, proto=17)
    rig.send(1, build_udp(CLIENT_MAC, A1, CLIENT, VIP, 5353, 53, b"query"))
    (q,) = rig.take_ssmb()
    rig.feed(rig.engine.ssmb_message(reply_for(q, error=error), 0))
    (icmp,) = rig.wire
    ip = parse_frame(icmp.packet["_data"]).ip
    assert ip is not None and ip.proto == 1 and (ip.src, ip.dst) == (VIP, CLIENT)
    assert ip.payload[0] == 3 and ip.payload[1] == code


def test_duplicate_and_unsolicited_replies_are_counted() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    q, _ = setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    entries = len(rig.switch.entries)
    rig.feed(rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.2.20"), 0))
    rig.feed(rig.engine.ssmb_message(reply_for(q, flow_id=999), 0))
    assert rig.engine.errors["duplicate_reply"] == 1 and rig.engine.errors["unsolicited_reply"] == 1
    assert len(rig.switch.entries) == entries


def test_reply_for_other_five_tuple_is_ignored() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    rig.send(1, client_tcp(TCP_SYN))
    (q,) = rig.take_ssmb()
    rig.feed(rig.engine.ssmb_message(reply_for(q, orig_src_port=1, new_dst_ipaddr="10.0.2.10"), 0))
    assert rig.engine.errors["reply_mismatch"] == 1 and q.flow_id in rig.engine.pending


def test_query_retransmitted_then_fails_closed() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    rig.send(1, client_tcp(TCP_SYN))
    sent = rig.take_ssmb()
    for t in (0.25, 0.5, 0.75):
        rig.advance(t)
        sent += rig.take_ssmb()
    assert len(sent) == 3 and {m.flow_id for m in sent} == {sent[0].flow_id}
    assert rig.engine.counters["query_retransmits"] == 2
    rst = parse_frame(rig.wire[-1].packet["_data"]).ip
    assert rst is not None and rst.tcp_flags & TCP_RST
    assert rig.engine.errors["query_timeout"] == 1 and not rig.engine.pending


def test_no_cs_fails_closed_at_once() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    rig.feed(rig.engine.csmb_disconnected(0))
    (rst,) = rig.send(1, client_tcp(TCP_SYN))
    assert parse_frame(rst.packet["_data"]).ip.tcp_flags & TCP_RST  # type: ignore[union-attr]
    assert rig.engine.errors["cs_unavailable"] == 1 and rig.take_ssmb() == []


def test_held_packets_are_bounded_and_counted() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    for i in range(5):
        rig.send(1, client_tcp(TCP_SYN if i == 0 else TCP_ACK, seq=1000 + i))
    assert rig.engine.held_total == 3 and rig.engine.errors["held_dropped"] == 2
    (q,) = rig.take_ssmb()
    rig.feed(
        rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10"), 0)
    )
    assert [e.port for e in rig.wire] == [2, 2, 2] and rig.engine.held_total == 0


def test_flow_limit_refuses_new_flows_and_keeps_existing() -> None:
    rig = make_rig(max_flows=1)
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    rig.wire.clear()
    (rst,) = rig.send(1, client_tcp(TCP_SYN, sport=40001))
    assert rst.port == 1 and rig.engine.errors["flow_limit"] == 1
    (fwd,) = rig.send(1, client_tcp(TCP_ACK, seq=1001))
    assert fwd.port == 2


def test_next_hop_resolved_by_arp_before_install() -> None:
    rig = make_rig()
    learn_neighbour(rig, 1, CLIENT, CLIENT_MAC)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    rig.wire.clear()
    _, out = setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    (req,) = out
    arp = parse_frame(req.packet["_data"]).arp
    assert (
        req.port == 2
        and arp is not None
        and (arp.op, arp.tpa, arp.spa, arp.sha) == (ARP_REQUEST, "10.0.2.10", "10.0.2.1", A2)
    )
    assert not rig.switch.find(rules.make_cookie(rules.KIND_PER_FLOW, 0, 0), rules.MASK_PER_FLOW)
    (syn,) = rig.send(2, build_arp(ARP_REPLY, S10_MAC, "10.0.2.10", A2, "10.0.2.1"))
    assert syn.port == 2 and syn.packet["eth_dst"] == S10_MAC and syn.packet["ipv4_dst"] == "10.0.2.10"


def test_unresolved_next_hop_fails_closed() -> None:
    rig = make_rig()
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    for t in (0.6, 1.2, 1.8):
        rig.advance(t)
    assert rig.engine.errors["next_hop_unresolved"] == 1
    assert rig.engine.counters["arp_requests"] == 2


def test_idle_flow_reports_delete_with_both_directions() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    syn = client_tcp(TCP_SYN)
    rig.send(1, syn)
    (q,) = rig.take_ssmb()
    rig.feed(
        rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10"), 0)
    )
    sizes_in, sizes_out = [len(syn)], []
    for i in range(3):
        data = client_tcp(TCP_ACK, seq=1001 + i, payload=b"x" * (100 * i))
        rig.send(1, data)
        sizes_in.append(len(data))
    for i in range(2):
        data = build_tcp(S10_MAC, A2, "10.0.2.10", CLIENT, 80, 40000, 1, 1, TCP_ACK, b"y" * (300 + i))
        rig.send(2, data)
        sizes_out.append(len(data))
    rig.advance(10.0)
    (msg,) = rig.take_ssmb()
    assert isinstance(msg, ssmb.Delete) and msg.flow_id == q.flow_id
    assert (msg.inbound_pkts, msg.inbound_bytes) == (len(sizes_in), sum(sizes_in))
    assert (msg.outbound_pkts, msg.outbound_bytes) == (len(sizes_out), sum(sizes_out))
    assert (msg.orig_src_ipaddr, msg.orig_dst_ipaddr, msg.orig_src_port, msg.orig_dst_port) == (
        CLIENT,
        VIP,
        40000,
        80,
    )
    assert not rig.engine.flows


def test_one_idle_direction_takes_the_other_out() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    rig.advance(5.0)
    rig.send(2, build_tcp(S10_MAC, A2, "10.0.2.10", CLIENT, 80, 40000, 1, 1, TCP_ACK))
    rig.advance(10.0)  # forward entry idles out, reverse was used at t=5
    (msg,) = rig.take_ssmb()
    assert isinstance(msg, ssmb.Delete) and msg.inbound_pkts == 1 and msg.outbound_pkts == 1
    assert not rig.switch.find(rules.make_cookie(rules.KIND_PER_FLOW, 0, 0), rules.MASK_PER_FLOW)


def test_lost_partner_removal_still_reports_the_flow() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    q, _ = setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    (flow,) = rig.engine.flows.values()
    fwd = FlowEntryStats(flow.fwd_cookie, {}, 3, 300)
    out = rig.engine.flow_removed(fwd, 0, 1.0)  # idle timeout; the partner delete is lost
    assert len(out.openflow) == 1 and list(rig.engine.closing) == [q.flow_id]
    rig.feed(rig.engine.tick(1.0 + rig.engine.cfg.timeouts.partner / 2))
    assert not rig.take_ssmb()
    rig.feed(rig.engine.tick(1.0 + rig.engine.cfg.timeouts.partner))
    (msg,) = rig.take_ssmb()
    # the entry's 3 packets and the held SYN the DFS released itself
    assert isinstance(msg, ssmb.Delete) and msg.flow_id == q.flow_id and msg.inbound_pkts == 4
    assert rig.engine.errors["partner_removal_timeout"] == 1
    assert not rig.engine.flows and not rig.engine.closing


def test_fin_shortens_the_idle_timeout() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    rig.send(1, client_tcp(TCP_FIN | TCP_ACK, seq=1001))
    rig.send(2, build_tcp(S10_MAC, A2, "10.0.2.10", CLIENT, 80, 40000, 1, 1002, TCP_FIN | TCP_ACK))
    rig.advance(1.0)
    (msg,) = rig.take_ssmb()
    assert isinstance(msg, ssmb.Delete)


def test_reap_with_and_without_connalive() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    q, _ = setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    rig.send(1, client_tcp(TCP_ACK, seq=1001))
    reap = ssmb.Reap(
        orig_src_ipaddr=CLIENT, orig_dst_ipaddr=VIP, orig_src_port=40000, orig_dst_port=80, flow_id=q.flow_id
    )
    rig.feed(rig.engine.ssmb_message(reap, 1.0))
    (alive,) = rig.take_ssmb()
    assert isinstance(alive, ssmb.Stats) and alive.error == SsmbError.CONNALIVE
    assert alive.inbound_pkts == 2  # the released SYN and the ACK
    assert rig.switch.find(rules.make_cookie(rules.KIND_FWD, EPOCH, q.flow_id))
    rig.feed(rig.engine.ssmb_message(reap, 2.0))
    (done,) = rig.take_ssmb()
    # running totals: the final STATS repeats the totals, it does not report a zero delta
    assert isinstance(done, ssmb.Stats) and done.error == SsmbError.OK
    assert (done.inbound_pkts, done.inbound_bytes) == (alive.inbound_pkts, alive.inbound_bytes)
    assert not rig.switch.find(rules.make_cookie(rules.KIND_PER_FLOW, 0, 0), rules.MASK_PER_FLOW)
    assert q.flow_id not in rig.engine.flows and rig.take_ssmb() == []  # no DELETE after a reap


def test_reap_of_unknown_flow_answers_unknown() -> None:
    rig = make_rig()
    rig.feed(
        rig.engine.ssmb_message(
            ssmb.Reap(
                orig_src_ipaddr=CLIENT, orig_dst_ipaddr=VIP, orig_src_port=1, orig_dst_port=80, flow_id=42
            ),
            0,
        )
    )
    (st,) = rig.take_ssmb()
    assert isinstance(st, ssmb.Stats) and st.error == SsmbError.UNKNOWN and st.flow_id == 42


def test_newflow_preinstalls_so_first_packet_never_reaches_dfs() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    nf = ssmb.NewFlow(
        orig_src_ipaddr=CLIENT,
        orig_dst_ipaddr=VIP,
        orig_src_port=40000,
        orig_dst_port=80,
        new_dst_ipaddr="10.0.2.10",
        next_hop_ipaddr="10.0.2.10",
        flow_id=NEWFLOW_ID_BIT | 5,
    )
    rig.feed(rig.engine.ssmb_message(nf, 0))
    before = rig.engine.counters["packet_ins"]
    (fwd,) = rig.send(1, client_tcp(TCP_SYN))
    assert fwd.port == 2 and fwd.packet["ipv4_dst"] == "10.0.2.10"
    assert rig.engine.counters["packet_ins"] == before
    rig.feed(rig.engine.ssmb_message(nf, 0))
    assert rig.engine.errors["newflow_duplicate"] == 1


def test_tcp_offset_replies_are_refused() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    _, out = setup_flow(rig, new_dst_ipaddr="10.0.2.10", flags=FlowFlag.ADD_TCP_OFFSET, svr_seq_offset=5)
    assert rig.engine.errors["tcp_offset_unsupported"] == 1 and out[0].port == 1


def test_ssmb_reset_deletes_flows_and_acks() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    rig.feed(rig.engine.ssmb_message(ssmb.Reset(), 1.0))
    assert not rig.switch.find(rules.make_cookie(rules.KIND_PER_FLOW, 0, 0), rules.MASK_PER_FLOW)
    assert rig.switch.find(rules.make_cookie(rules.KIND_DISPATCH, 0, 0), rules.MASK_TAG | (0xFF << 48))
    assert [type(m) for m in rig.csmb] == [csmb.Ack] and not rig.engine.flows
    assert rig.take_ssmb() == []  # deletions we asked for are not reported as flow ends


def test_csmb_connect_and_cs_hello_restart_the_cs_ssmb_serials() -> None:
    engine = DfsEngine(parse_config(CONFIG), EPOCH)
    assert engine.csmb_connected(0.0).ssmb_forget == [("127.0.0.1", 7700)]
    # The CS names another SSMB endpoint in its HELLO: that is the one whose serials restart.
    out = engine.csmb_message(csmb.Hello("10.255.0.9", "0.0.0.0", 0, 1, 0, 7711), 0.0)
    assert out.ssmb_forget == [("10.255.0.9", 7711)] and engine.cs_ssmb == ("10.255.0.9", 7711)
    assert [type(m) for m in out.csmb] == [csmb.Ack] and out.csmb[0].error == 0
    # A HELLO we refuse changes nothing.
    refused = engine.csmb_message(csmb.Hello("10.255.0.8", "0.0.0.0", 0, 2, 0, 7700), 0.0)
    assert refused.ssmb_forget == [] and engine.cs_ssmb == ("10.255.0.9", 7711)
    # Nothing else asks to forget, and extend() carries the request along.
    assert engine.csmb_message(csmb.Ack(), 0.0).ssmb_forget == []
    assert engine.csmb_disconnected(0.0).ssmb_forget == []
    assert engine.csmb_connected(1.0).extend(engine.tick(1.0)).ssmb_forget == [("10.255.0.9", 7711)]


def _dispatch_hit(rig: Rig, data: bytes) -> int:
    """Priority of the entry the fake switch picks for a client frame."""
    pkt = rig.switch._norm(fakeswitch.frame_fields(data))
    pkt["in_port"] = 1
    entry = rig.switch.lookup(pkt)
    assert entry is not None
    return entry.priority


def test_only_an_opening_syn_of_an_unknown_tcp_connection_is_queried() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    prio = rules.vs_priority(False, False)
    # the opening SYN (ECN bits or not) has its own entry; other segments hit the catch-all,
    # so OVS's cached megaflow for a SYN never covers the handshake ACK that follows it
    for flags in (TCP_SYN, TCP_SYN | 0xC0):
        assert _dispatch_hit(rig, client_tcp(flags)) == prio + 1
    for flags in (TCP_ACK, TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST):
        assert _dispatch_hit(rig, client_tcp(flags)) == prio
    (rst,) = rig.send(1, client_tcp(TCP_ACK, seq=1001, ack=77))
    f = parse_frame(rst.packet["_data"])
    assert rst.port == 1 and f.ip is not None and f.ip.tcp_flags == TCP_RST and f.ip.tcp_seq == 77
    assert rig.send(1, client_tcp(TCP_RST, seq=1001)) == []  # never a RST for a RST
    assert rig.engine.counters["unknown_segment_refused"] == 2 and rig.take_ssmb() == []
    assert not rig.engine.pending and rig.engine.errors.total() == 0
    # an opening SYN with ECN bits is a new connection like any other
    rig.send(1, client_tcp(TCP_SYN | 0xC0, sport=40001))
    (q,) = rig.take_ssmb()
    assert isinstance(q, ssmb.Query) and q.orig_src_port == 40001


def test_segments_of_a_pending_or_offloaded_connection_are_not_refused() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    rig.send(1, client_tcp(TCP_SYN))
    (q,) = rig.take_ssmb()
    assert rig.send(1, client_tcp(TCP_ACK, seq=1001)) == []  # held with the SYN, not refused
    rig.feed(rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.2.10"), rig.now))
    assert [e.packet["tcp_flags"] for e in rig.wire if e.port == 2] == [TCP_SYN, TCP_ACK]
    # a segment that overtook the entries (the fake switch has none to overtake: fed directly)
    out = rig.engine.packet_in(1, client_tcp(TCP_ACK, seq=1002), rig.now)
    assert len(out.openflow) == 1 and rig.engine.counters["packet_ins_after_offload"] == 1
    assert rig.engine.counters["unknown_segment_refused"] == 0


def test_udp_virtual_server_keeps_one_dispatch_entry() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR, port=53, proto=17)
    (entry,) = rig.switch.find(rules.make_cookie(rules.KIND_DISPATCH, 0, 0), rules.MASK_KIND)
    assert "tcp_flags" not in entry.match
    rig.send(1, build_udp(CLIENT_MAC, A1, CLIENT, VIP, 5353, 53, b"q"))
    (q,) = rig.take_ssmb()
    assert isinstance(q, ssmb.Query) and q.proto == 17


def test_changing_a_virtual_server_class_replaces_its_dispatch_entries() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    dispatch = rules.make_cookie(rules.KIND_DISPATCH, 0, 0)
    assert len(rig.switch.find(dispatch, rules.MASK_KIND)) == 2
    pool = csmb.encode_pool([csmb.PoolEntry("10.0.2.10", 80, 1)])
    add_vs(rig, VsFlag.TRANSLATE_ADDR, cls=VsClass.DFS_ASSIST, app_data=pool)
    (entry,) = rig.switch.find(dispatch, rules.MASK_KIND)
    assert "tcp_flags" not in entry.match and rig.switch.groups
    (out,) = rig.send(1, client_tcp(TCP_SYN))  # the pool answers in the switch, no QUERY
    assert out.port == 2 and rig.take_ssmb() == []
    add_vs(rig, VsFlag.TRANSLATE_ADDR)  # back to CS_ASSIST: group and member entries go
    assert len(rig.switch.find(dispatch, rules.MASK_KIND)) == 2 and not rig.switch.groups
    assert not rig.switch.find(rules.make_cookie(rules.KIND_POOL, 0, 0), rules.MASK_KIND)
    rig.send(1, client_tcp(TCP_SYN, sport=40001))
    assert [type(m) for m in rig.take_ssmb()] == [ssmb.Query]


def test_switch_reconnect_rewrites_dispatch_entries_and_drops_stale_ones() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    # an earlier incarnation's dispatch entry: another epoch, a VS index we do not use
    stale = rules.vs_entries(rules.OF13, EPOCH + 1, 99, 6, "10.0.9.200", 80, False, False, None, True)
    rig.switch.apply(stale)
    rig.feed(rig.engine.switch_disconnected(1.0))
    rig.feed(rig.engine.switch_connected(1.0))
    entries = rig.switch.find(rules.make_cookie(rules.KIND_DISPATCH, 0, 0), rules.MASK_KIND)
    assert len(entries) == 2 and all((e.cookie >> 32) & 0xFFFF == EPOCH for e in entries)


def test_switch_reconnect_keeps_flows_adopts_old_epoch_and_drops_strays() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    q, _ = setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    # a stray of this epoch and a flow left by an older DFS incarnation
    stray = rules.flow_entry(
        rules.OF13,
        rules.make_cookie(rules.KIND_FWD, EPOCH, 77),
        rules.FiveTuple(6, "10.0.1.51", VIP, 1, 80),
        rules.Rewrite(None, None, None, None, A2, S10_MAC, 2),
        10,
    )
    old = rules.FiveTuple(6, "10.0.1.52", VIP, 2, 80)
    old_rw = rules.Rewrite(None, "10.0.2.10", None, None, A2, S10_MAC, 2)
    rig.switch.apply(
        [
            stray,
            rules.flow_entry(rules.OF13, rules.make_cookie(rules.KIND_FWD, 3, 9), old, old_rw, 10),
            rules.flow_entry(
                rules.OF13,
                rules.make_cookie(rules.KIND_REV, 3, 9),
                rules.FiveTuple(6, "10.0.2.10", "10.0.1.52", 80, 2),
                old_rw,
                10,
            ),
        ]
    )
    rig.feed(rig.engine.switch_disconnected(1.0))
    rig.feed(rig.engine.switch_connected(1.0))
    c = rig.engine.counters
    assert (c["audit_kept"], c["audit_adopted"], c["audit_deleted"]) == (1, 1, 1)
    assert not rig.switch.find(rules.make_cookie(rules.KIND_FWD, EPOCH, 77))
    (fwd,) = rig.send(1, client_tcp(TCP_ACK, seq=1001))
    assert fwd.port == 2
    rig.advance(20.0)
    ids = sorted(m.flow_id for m in rig.take_ssmb() if isinstance(m, ssmb.Delete))
    assert ids == sorted([q.flow_id, 9])


def test_table_full_error_drops_the_flow_and_backs_off() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    q, _ = setup_flow(rig, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10")
    fm = rig.switch.find(rules.make_cookie(rules.KIND_FWD, EPOCH, q.flow_id))[0]
    data = bytes(8) + fm.cookie.to_bytes(8, "big") + bytes(48)
    rig.feed(rig.engine.openflow_error(5, 1, data, 0.1))
    assert q.flow_id not in rig.engine.flows and rig.engine.errors["table_full"] == 0
    rig.now = 0.2
    rig.send(1, client_tcp(TCP_SYN, sport=40001))
    assert rig.engine.errors["table_full"] == 1 and rig.engine.errors["install_failed"] == 1


def test_dfs_assist_pool_balances_in_the_switch() -> None:
    rig = make_rig()
    neighbours(rig)
    pool = csmb.encode_pool([csmb.PoolEntry("10.0.2.10", 8080, 1), csmb.PoolEntry("10.0.2.20", 8080, 3)])
    add_vs(rig, VsFlag.TRANSLATE_ADDR | VsFlag.TRANSLATE_PORT, cls=VsClass.DFS_ASSIST, app_data=pool)
    before = rig.engine.counters["packet_ins"]
    chosen: dict[int, str] = {}
    for sport in range(41000, 41040):
        (out,) = rig.send(1, client_tcp(TCP_SYN, sport=sport))
        assert out.port == 2 and out.packet["tcp_dst"] == 8080
        assert (out.packet["ipv4_dst"], out.packet["eth_dst"]) in {
            ("10.0.2.10", S10_MAC),
            ("10.0.2.20", S20_MAC),
        }
        chosen[sport] = out.packet["ipv4_dst"]
    assert set(chosen.values()) == {"10.0.2.10", "10.0.2.20"}
    for sport, server in list(chosen.items())[:10]:
        (again,) = rig.send(1, client_tcp(TCP_ACK, sport=sport, seq=1001))
        assert again.packet["ipv4_dst"] == server
        smac = S10_MAC if server == "10.0.2.10" else S20_MAC
        (back,) = rig.send(2, build_tcp(smac, A2, server, CLIENT, 8080, sport, 1, 1001, TCP_ACK))
        b = back.packet
        assert back.port == 1 and (b["ipv4_src"], b["tcp_src"], b["eth_src"], b["eth_dst"]) == (
            VIP,
            80,
            A1,
            CLIENT_MAC,
        )
    assert rig.engine.counters["packet_ins"] == before
    rig.advance(10.0)
    deletes = [m for m in rig.take_ssmb() if isinstance(m, ssmb.Delete)]
    assert len(deletes) == 40
    replied = [d for d in deletes if d.orig_src_port < 41010]
    assert all(d.inbound_pkts == 1 and d.outbound_pkts == 1 for d in replied)
    assert all(d.orig_dst_ipaddr == VIP and d.orig_dst_port == 80 for d in deletes)
    assert len({d.flow_id for d in deletes}) == 40


def test_dfs_assist_unreachable_pool_refuses() -> None:
    rig = make_rig()
    pool = csmb.encode_pool([csmb.PoolEntry("10.0.2.10", 80, 1)])
    add_vs(rig, VsFlag.TRANSLATE_ADDR, cls=VsClass.DFS_ASSIST, app_data=pool)
    learn_neighbour(rig, 1, CLIENT, CLIENT_MAC)
    rig.wire.clear()
    (rst,) = rig.send(1, client_tcp(TCP_SYN))
    assert rst.port == 1 and rig.engine.errors["pool_unreachable"] == 1
    rig.send(2, build_arp(ARP_REPLY, S10_MAC, "10.0.2.10", A2, "10.0.2.1"))
    (ok,) = rig.send(1, client_tcp(TCP_SYN, sport=40001))
    assert ok.port == 2 and ok.packet["eth_dst"] == S10_MAC


def test_csmb_query_delete_and_version() -> None:
    rig = make_rig()
    vs = add_vs(rig, VsFlag.TRANSLATE_ADDR)
    add_vs(rig, 0, vip="10.0.9.101")
    rig.feed(rig.engine.csmb_message(csmb.QueryVs(), 0))
    rig.feed(rig.engine.csmb_message(csmb.QueryVs(vs), 0))
    full, filtered = rig.csmb
    assert len(full.servers) == 2 and filtered.servers == (vs,)
    rig.feed(rig.engine.csmb_message(csmb.DeleteVs(vs), 0))
    assert len(rig.engine.vservers) == 1
    # the one left: its opening-SYN entry and its catch-all
    assert (
        len(rig.switch.find(rules.make_cookie(rules.KIND_DISPATCH, 0, 0), rules.MASK_TAG | (0xFF << 48))) == 2
    )
    rig.csmb.clear()
    rig.feed(rig.engine.csmb_message(csmb.Hello("127.0.0.1", "0.0.0.0", 0, 2, 0, 7700), 0))
    assert rig.csmb[0].error == 1  # VERS_NEW
    rig.feed(rig.engine.csmb_message(csmb.Reset(), 0))
    assert not rig.engine.vservers


def test_bad_packets_are_counted_not_raised() -> None:
    rig = make_rig()
    rig.feed(rig.engine.packet_in(1, b"\x00" * 5, 0))
    rig.feed(rig.engine.packet_in(1, b"\x00" * 12 + b"\x86\xdd" + b"\x00" * 40, 0))
    assert rig.engine.errors["bad_packet.short_ethernet"] == 1
    assert rig.engine.errors["bad_packet.unsupported_ethertype"] == 1


@pytest.mark.parametrize("proto", [6, 17])
def test_first_packet_entry_makes_the_cached_megaflow_exact_on_the_client(proto: int) -> None:
    """OVS credits a cached "to controller" megaflow to whatever entry its first packet later
    hits; a megaflow shared by two connections would count one's SYN in the other's DELETE.
    Reading the client's address and port (a register move) makes OVS cache them exactly."""
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR, port=80 if proto == 6 else 53, proto=proto)
    dispatch = rig.switch.find(rules.make_cookie(rules.KIND_DISPATCH, 0, 0), rules.MASK_KIND)
    first = max(dispatch, key=lambda e: e.priority)
    sport = "tcp_src" if proto == 6 else "udp_src"
    read = {
        (a.src_field, a.n_bits)
        for a in first.actions
        if isinstance(a, rules.OF13.ofproto_parser.NXActionRegMove)
    }
    assert read == {("ipv4_src", 32), (sport, 16)}
    # the other entries (the TCP catch-all refuses unknown segments) stay wide
    assert all(not any(hasattr(a, "src_field") for a in e.actions) for e in dispatch if e is not first)
    pkt = client_tcp(TCP_SYN) if proto == 6 else build_udp(CLIENT_MAC, A1, CLIENT, VIP, 5353, 53, b"q")
    rig.send(1, pkt)
    (q,) = rig.take_ssmb()
    assert isinstance(q, ssmb.Query) and q.orig_src_ipaddr == CLIENT and q.proto == proto
