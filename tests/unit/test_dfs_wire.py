"""The DFS's fast-path OpenFlow encodings are byte for byte what os-ken's generic classes produce."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slbcore.dfs import rules
from slbcore.dfs.packets import IPPROTO_TCP, IPPROTO_UDP
from slbcore.dfs.rules import FiveTuple, Rewrite

pytestmark = pytest.mark.unit

OF13 = rules.OF13
P = OF13.ofproto_parser

ipv4 = st.ip_addresses(v=4).map(str)
port = st.integers(0, 65535)
mac = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
five_tuples = st.builds(FiveTuple, st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]), ipv4, ipv4, port, port)
rewrites = st.builds(
    Rewrite,
    st.none() | ipv4,
    st.none() | ipv4,
    st.none() | st.integers(1, 65535),
    st.none() | st.integers(1, 65535),
    mac,
    mac,
    st.integers(1, 0xFFFFFF00),
)


def wire(msg: Any) -> bytes:
    msg.set_xid(7)
    msg.serialize()
    return bytes(msg.buf)


def generic_match(ft: FiveTuple) -> Any:
    sname, dname = ("tcp_src", "tcp_dst") if ft.proto == IPPROTO_TCP else ("udp_src", "udp_dst")
    kwargs: dict[str, Any] = {
        "eth_type": 0x0800,
        "ip_proto": ft.proto,
        "ipv4_src": ft.src,
        "ipv4_dst": ft.dst,
    }
    if ft.sport:
        kwargs[sname] = ft.sport
    if ft.dport:
        kwargs[dname] = ft.dport
    return P.OFPMatch(**kwargs)


@given(five_tuples)
def test_match_encodes_and_reads_like_os_kens(ft: FiveTuple) -> None:
    fast, generic = rules.match_five_tuple(OF13, ft), generic_match(ft)
    a, b = bytearray(), bytearray()
    assert fast.serialize(a, 0) == generic.serialize(b, 0)
    assert a == b
    assert dict(fast.items()) == dict(generic.items())
    assert fast.length == generic.length


@given(five_tuples, rewrites, st.integers(0, 3), st.integers(0, 3), st.integers(0, 600))
def test_flow_entry_encodes_like_os_kens(
    ft: FiveTuple, rw: Rewrite, fin_idle: int, fin_hard: int, idle: int
) -> None:
    fast = rules.flow_entry(OF13, 0x1234, ft, rw, idle, fin_idle, fin_hard)
    ofp = OF13.ofproto
    generic = P.OFPFlowMod(
        OF13,
        cookie=0x1234,
        command=ofp.OFPFC_ADD,
        idle_timeout=idle,
        hard_timeout=0,
        priority=rules.flow_priority(ft),
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        flags=ofp.OFPFF_SEND_FLOW_REM,
        match=generic_match(ft),
        instructions=[
            P.OFPInstructionActions(
                ofp.OFPIT_APPLY_ACTIONS, rules.rewrite_actions(OF13, ft.proto, rw, fin_idle, fin_hard)
            )
        ],
    )
    expected = wire(generic)
    assert wire(fast) == expected
    # The cached encoding must not change when it is used again.
    assert wire(rules.flow_entry(OF13, 0x1234, ft, rw, idle, fin_idle, fin_hard)) == expected


@given(
    st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]), rewrites, st.integers(1, 0xFFFFFF00), st.binary(max_size=300)
)
def test_packet_out_encodes_like_os_kens(proto: int, rw: Rewrite, in_port: int, data: bytes) -> None:
    fast = rules.rewrite_packet_out(OF13, in_port, proto, rw, data)
    generic = P.OFPPacketOut(
        OF13,
        buffer_id=OF13.ofproto.OFP_NO_BUFFER,
        in_port=in_port,
        actions=rules.rewrite_actions(OF13, proto, rw),
        data=data,
    )
    assert wire(fast) == wire(generic)
    assert [type(a) for a in fast.actions] == [type(a) for a in generic.actions]
