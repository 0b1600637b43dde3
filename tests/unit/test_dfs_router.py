"""The DFS as an IPv4 router for traffic that is for no virtual server, and its route sources."""

from __future__ import annotations

import struct

import pytest

from slbcore.dfs import rules
from slbcore.dfs.config import Route, RouteTable, parse_config
from slbcore.dfs.engine import DfsEngine
from slbcore.dfs.packets import (
    ARP_REPLY,
    ARP_REQUEST,
    ICMP_ECHO_REQUEST,
    IPPROTO_ICMP,
    TCP_ACK,
    TCP_SYN,
    _ethernet,
    _ipv4_header,
    build_arp,
    build_tcp,
    checksum,
    parse_frame,
)
from slbproto import csmb, ssmb
from slbproto.constants import NEWFLOW_ID_BIT, SsmbError, VsFlag
from tests.unit.fakeswitch import Rig
from tests.unit.test_dfs_engine import (
    A1,
    A2,
    CLIENT,
    CLIENT_MAC,
    CONFIG,
    EPOCH,
    ROUTER_MAC,
    S10_MAC,
    S20_MAC,
    VIP,
    add_vs,
    client_tcp,
    learn_neighbour,
    make_rig,
    neighbours,
    reply_for,
)

pytestmark = pytest.mark.unit


def ping(dst: str, ttl: int = 64, ident: int = 7, seq: int = 1) -> bytes:
    icmp = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq) + b"ping-data"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = bytearray(_ipv4_header(CLIENT, dst, IPPROTO_ICMP, len(icmp), ttl=ttl))
    return _ethernet(CLIENT_MAC, A1, 0x0800, bytes(ip) + icmp)


def test_traffic_for_no_virtual_server_is_routed_with_one_packet_in() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    before = rig.engine.counters["packet_ins"]
    (out,) = rig.send(1, client_tcp(TCP_SYN, dst="10.0.2.10", dport=22))
    p = out.packet
    assert out.port == 2
    assert (p["eth_src"], p["eth_dst"], p["ipv4_dst"], p["tcp_dst"], p["ip_ttl"]) == (
        A2,
        S10_MAC,
        "10.0.2.10",
        22,
        63,
    )
    (again,) = rig.send(1, client_tcp(TCP_ACK, dst="10.0.2.10", dport=22, sport=40001))
    assert again.port == 2 and again.packet["ip_ttl"] == 63
    (back,) = rig.send(2, build_tcp(S10_MAC, A2, "10.0.2.10", CLIENT, 22, 40000, 1, 1001, TCP_SYN | TCP_ACK))
    assert back.port == 1 and (back.packet["eth_src"], back.packet["eth_dst"]) == (A1, CLIENT_MAC)
    # one packet-in per destination: the SYN and the server's answer; the rest stays in the switch
    assert rig.engine.counters["packet_ins"] - before == 2
    assert rig.engine.counters["routes_installed"] == 2
    assert not rig.engine.errors and not rig.engine.flows
    # the VIP is still a virtual server, not routed
    rig.send(1, client_tcp(TCP_SYN, sport=40009))
    assert isinstance(rig.take_ssmb()[0], ssmb.Query)


def test_static_route_uses_the_gateway_mac() -> None:
    rig = make_rig()
    neighbours(rig)
    (out,) = rig.send(1, client_tcp(TCP_SYN, dst="10.0.3.77", dport=443))
    assert out.port == 2 and out.packet["eth_dst"] == ROUTER_MAC and out.packet["ipv4_dst"] == "10.0.3.77"


def test_routed_packets_wait_for_arp_then_go() -> None:
    rig = make_rig()
    learn_neighbour(rig, 1, CLIENT, CLIENT_MAC)
    rig.wire.clear()
    (arp,) = rig.send(1, client_tcp(TCP_SYN, dst="10.0.2.20", dport=22))
    assert arp.port == 2 and arp.packet["arp_op"] == ARP_REQUEST and arp.packet["arp_tpa"] == "10.0.2.20"
    assert rig.send(1, client_tcp(TCP_SYN, dst="10.0.2.20", dport=22, seq=5)) == []  # held, ARP pending
    released = rig.send(2, build_arp(ARP_REPLY, S20_MAC, "10.0.2.20", A2, "10.0.2.1"))
    assert [(e.port, e.packet["eth_dst"], e.packet["ip_ttl"]) for e in released] == [(2, S20_MAC, 63)] * 2
    assert rig.engine.held_total == 0


def test_unresolvable_next_hop_drops_held_packets() -> None:
    rig = make_rig()
    learn_neighbour(rig, 1, CLIENT, CLIENT_MAC)
    rig.send(1, client_tcp(TCP_SYN, dst="10.0.2.99", dport=22))
    for t in (0.6, 1.2, 1.8):
        rig.advance(t)
    assert rig.engine.counters["route_unresolved_drops"] == 1 and rig.engine.held_total == 0


def test_no_route_answers_net_unreachable_and_drops_in_the_switch() -> None:
    rig = make_rig()
    neighbours(rig)
    before = rig.engine.counters["packet_ins"]
    (icmp,) = rig.send(1, client_tcp(TCP_SYN, dst="192.0.2.1", dport=80))
    frame = parse_frame(icmp.packet["_data"])
    assert icmp.port == 1 and frame.ip is not None
    assert (frame.ip.src, frame.ip.dst, frame.ip.payload[0], frame.ip.payload[1]) == (
        "10.0.1.1",
        CLIENT,
        3,
        0,
    )
    assert rig.send(1, client_tcp(TCP_SYN, dst="192.0.2.1", dport=80, sport=40001)) == []
    assert rig.engine.counters["no_route_drops"] == 1
    assert rig.engine.counters["packet_ins"] - before == 1


def test_expiring_ttl_gets_time_exceeded() -> None:
    rig = make_rig()
    neighbours(rig)
    (err,) = rig.send(1, ping("10.0.2.10", ttl=1))
    frame = parse_frame(err.packet["_data"])
    assert frame.ip is not None and (frame.ip.src, frame.ip.payload[0]) == ("10.0.1.1", 11)
    assert rig.engine.counters["ttl_exceeded"] == 1


def test_ping_to_own_address_is_answered_and_ping_through_is_routed() -> None:
    rig = make_rig()
    neighbours(rig)
    (reply,) = rig.send(1, ping("10.0.2.1", ident=9, seq=3))
    frame = parse_frame(reply.packet["_data"])
    ip = frame.ip
    assert reply.port == 1 and frame.eth_dst == CLIENT_MAC and ip is not None
    assert (ip.src, ip.dst, ip.payload[0]) == ("10.0.2.1", CLIENT, 0)
    assert struct.unpack("!HH", ip.payload[4:8]) == (9, 3) and ip.payload[8:] == b"ping-data"
    assert checksum(ip.payload) == 0
    (through,) = rig.send(1, ping("10.0.2.20"))
    assert through.port == 2 and through.packet["eth_dst"] == S20_MAC


def test_a_wildcard_vs_never_claims_the_router_address() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.WILDCARD_ADDR | VsFlag.WILDCARD_PORT)
    assert rig.send(1, client_tcp(TCP_SYN, dst="10.0.1.1", dport=22)) == []
    assert rig.take_ssmb() == []


def test_forwarding_off_drops_with_a_counter() -> None:
    cfg = parse_config({**CONFIG, "routing": {"forward": False}})
    rig = Rig(DfsEngine(cfg, EPOCH))
    rig.feed(rig.engine.switch_connected(0.0))
    neighbours(rig)
    assert rig.send(1, client_tcp(TCP_SYN, dst="10.0.2.10", dport=22)) == []
    assert rig.engine.counters["packet_ins"] == 4  # only the ARP of the neighbours


def test_neighbour_moving_repoints_routed_destinations() -> None:
    rig = make_rig()
    neighbours(rig)
    rig.send(1, client_tcp(TCP_SYN, dst="10.0.3.77", dport=443))
    learn_neighbour(rig, 2, "10.0.2.254", "02:ee:00:00:02:ff")
    (out,) = rig.send(1, client_tcp(TCP_ACK, dst="10.0.3.77", dport=443))
    assert out.packet["eth_dst"] == "02:ee:00:00:02:ff"


def test_kernel_routes_through_the_lookup_function() -> None:
    cfg = parse_config(CONFIG)
    table = RouteTable(cfg.interfaces, cfg.routes, (Route("10.0.7.0/24", "10.0.2.20"),))
    rig = Rig(DfsEngine(cfg, EPOCH, route_lookup=table.lookup))
    rig.feed(rig.engine.switch_connected(0.0))
    rig.feed(rig.engine.csmb_connected(0.0))
    rig.feed(rig.engine.csmb_message(csmb.Ack(), 0.0))
    neighbours(rig)
    (out,) = rig.send(1, client_tcp(TCP_SYN, dst="10.0.7.5", dport=22))
    assert out.packet["eth_dst"] == S20_MAC
    # ROUTE_BY_DST_IP resolves the server through the same table
    add_vs(rig, VsFlag.TRANSLATE_ADDR | VsFlag.ROUTE_BY_DST_IP)
    rig.send(1, client_tcp(TCP_SYN, sport=41000))
    (q,) = rig.take_ssmb()
    before = len(rig.wire)
    rig.feed(rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.7.9", next_hop_ipaddr="10.0.2.10"), 0))
    (syn,) = rig.wire[before:]
    assert syn.packet["ipv4_dst"] == "10.0.7.9" and syn.packet["eth_dst"] == S20_MAC


def test_route_table_change_removes_forwarding_entries() -> None:
    rig = make_rig()
    neighbours(rig)
    rig.send(1, client_tcp(TCP_SYN, dst="10.0.3.77", dport=443))
    route_cookie = rules.make_cookie(rules.KIND_ROUTE, 0, 0)
    assert rig.switch.find(route_cookie, rules.MASK_KIND)
    rig.feed(rig.engine.routes_changed(1.0))
    assert not rig.switch.find(route_cookie, rules.MASK_KIND) and not rig.engine.routed


def test_route_table_precedence() -> None:
    cfg = parse_config(CONFIG)
    table = RouteTable(
        cfg.interfaces,
        (Route("10.0.3.0/24", "10.0.2.254"),),
        (
            Route("10.0.3.0/24", "10.0.2.20"),
            Route("10.0.3.128/25", "10.0.2.20"),
            Route("0.0.0.0/0", "10.0.2.10"),
            Route("10.0.8.0/24", "172.16.0.1"),
        ),
    )
    r = table.lookup("10.0.3.5")
    assert r is not None and r.next_hop == "10.0.2.254"  # static beats kernel on equal prefix
    r = table.lookup("10.0.3.200")
    assert r is not None and r.next_hop == "10.0.2.20"  # longer prefix wins
    r = table.lookup("10.0.1.9")
    assert r is not None and (r.next_hop, r.interface.port) == ("10.0.1.9", 1)  # connected
    r = table.lookup("10.0.8.1")
    assert r is not None and r.next_hop == "10.0.2.10"  # gateway off-link: route ignored, default used
    assert RouteTable(cfg.interfaces, ()).lookup("198.51.100.1") is None


def test_stats_and_delete_carry_running_totals() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    rig.send(1, client_tcp(TCP_SYN))
    (q,) = rig.take_ssmb()
    rig.feed(
        rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10"), 0)
    )
    reap = ssmb.Reap(
        orig_src_ipaddr=CLIENT, orig_dst_ipaddr=VIP, orig_src_port=40000, orig_dst_port=80, flow_id=q.flow_id
    )
    totals = []
    for t in (1.0, 2.0, 3.0):
        rig.now = t
        rig.send(1, client_tcp(TCP_ACK, seq=1001))
        rig.feed(rig.engine.ssmb_message(reap, t))
        (st,) = rig.take_ssmb()
        assert st.error == SsmbError.CONNALIVE
        totals.append(st.inbound_pkts)
    assert totals == [2, 3, 4]
    rig.send(2, build_tcp(S10_MAC, A2, "10.0.2.10", CLIENT, 80, 40000, 1, 1, TCP_ACK))
    rig.advance(20.0)
    (delete,) = rig.take_ssmb()
    assert isinstance(delete, ssmb.Delete) and (delete.inbound_pkts, delete.outbound_pkts) == (4, 1)


def test_reap_without_switch_answer_repeats_the_last_totals() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    rig.send(1, client_tcp(TCP_SYN))
    (q,) = rig.take_ssmb()
    rig.feed(
        rig.engine.ssmb_message(reply_for(q, new_dst_ipaddr="10.0.2.10", next_hop_ipaddr="10.0.2.10"), 0)
    )
    reap = ssmb.Reap(
        orig_src_ipaddr=CLIENT, orig_dst_ipaddr=VIP, orig_src_port=40000, orig_dst_port=80, flow_id=q.flow_id
    )
    rig.send(1, client_tcp(TCP_ACK, seq=1001))
    rig.feed(rig.engine.ssmb_message(reap, 1.0))
    (first,) = rig.take_ssmb()
    # the switch never answers the next stats request: the CONNALIVE keeps the totals
    lost = rig.engine.ssmb_message(reap, 2.0)
    assert len(lost.openflow) == 1 and not lost.ssmb  # the stats request, never delivered
    rig.feed(rig.engine.tick(5.0))
    (second,) = rig.take_ssmb()
    assert second.error == SsmbError.CONNALIVE and second.inbound_pkts == first.inbound_pkts == 2


def test_newflow_for_any_client_port_covers_every_connection() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    nf = ssmb.NewFlow(
        orig_src_ipaddr=CLIENT,
        orig_dst_ipaddr=VIP,
        orig_src_port=0,
        orig_dst_port=80,
        new_dst_ipaddr="10.0.2.10",
        next_hop_ipaddr="10.0.2.10",
        flow_id=NEWFLOW_ID_BIT | 9,
    )
    rig.feed(rig.engine.ssmb_message(nf, 0))
    before = rig.engine.counters["packet_ins"]
    for sport in (40000, 40001):
        (fwd,) = rig.send(1, client_tcp(TCP_SYN, sport=sport))
        assert fwd.port == 2 and fwd.packet["ipv4_dst"] == "10.0.2.10" and fwd.packet["tcp_src"] == sport
        (back,) = rig.send(2, build_tcp(S10_MAC, A2, "10.0.2.10", CLIENT, 80, sport, 1, 1, TCP_SYN | TCP_ACK))
        assert back.port == 1 and back.packet["ipv4_src"] == VIP
    assert rig.engine.counters["packet_ins"] == before
    fwd_entry = rig.switch.find(rules.make_cookie(rules.KIND_FWD, EPOCH, NEWFLOW_ID_BIT | 9))[0]
    assert fwd_entry.priority == rules.PRIO_FLOW_ANY_PORT and "tcp_src" not in fwd_entry.match
    rig.advance(20.0)
    (delete,) = rig.take_ssmb()
    assert isinstance(delete, ssmb.Delete) and delete.orig_src_port == 0 and delete.inbound_pkts == 2


def test_unexpected_bus_messages_are_counted() -> None:
    rig = make_rig()
    addrs = dict(orig_src_ipaddr=CLIENT, orig_dst_ipaddr=VIP, orig_src_port=1, orig_dst_port=80, flow_id=1)
    rig.feed(rig.engine.ssmb_message(ssmb.Query(**addrs), 0))  # type: ignore[arg-type]
    rig.feed(rig.engine.ssmb_message(ssmb.Delete(**addrs), 0))  # type: ignore[arg-type]
    rig.feed(rig.engine.csmb_message(csmb.VsList(servers=()), 0))
    rig.feed(rig.engine.csmb_message(csmb.Status(status=1), 0))
    errors = rig.engine.errors
    assert errors["ssmb_unexpected.Query"] == 1 and errors["ssmb_unexpected.Delete"] == 1
    assert errors["csmb_unexpected.VsList"] == 1 and errors["csmb_unexpected.Status"] == 1
    assert rig.take_ssmb() == [] and rig.csmb == []


def test_unparseable_packets_of_every_kind_are_counted() -> None:
    rig = make_rig()
    good = client_tcp(TCP_SYN)
    bad_frames = {
        "short_ethernet": good[:10],
        "short_arp": build_arp(ARP_REQUEST, CLIENT_MAC, CLIENT, "00:00:00:00:00:00", "10.0.1.1")[:30],
        "short_ipv4": good[: 14 + 12],
        "bad_ipv4": good[:14] + bytes([0x65]) + good[15:],
        "short_tcp": _ethernet(CLIENT_MAC, A1, 0x0800, _ipv4_header(CLIENT, VIP, 6, 8) + bytes(8)),
    }
    for data in bad_frames.values():
        rig.feed(rig.engine.packet_in(1, data, 0))
    for code in bad_frames:
        assert rig.engine.errors[f"bad_packet.{code}"] >= 1, code
    assert rig.engine.counters["packet_ins"] == len(bad_frames)


def test_vip_on_a_port_no_vs_serves_is_closed_and_answers_ping() -> None:
    rig = make_rig()
    neighbours(rig)
    add_vs(rig, VsFlag.TRANSLATE_ADDR)
    (rst,) = rig.send(1, client_tcp(TCP_SYN, dport=8081))
    assert rst.port == 1 and rst.packet["tcp_flags"] & 0x04 and rst.packet["ipv4_src"] == VIP
    (reply,) = rig.send(1, ping(VIP))
    frame = parse_frame(reply.packet["_data"])
    assert frame.ip is not None and (frame.ip.src, frame.ip.payload[0]) == (VIP, 0)
    assert rig.engine.counters["vip_port_closed"] == 1 and rig.take_ssmb() == []
    assert not rig.engine.routed  # a VIP is never routed
