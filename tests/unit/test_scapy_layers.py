"""Scapy layers against golden bytes written by hand from PROTOCOL.md offsets, and against slbproto."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from slbproto import csmb, ssmb
from slbtools.scapy_layers import (
    CSMB,
    SSMB,
    CSMBHello,
    CSMBHelloAuth,
    CSMBPoolEntry,
    CSMBStatus,
    CSMBVsDef,
    CSMBVsList,
    SSMBAppQuery,
    SSMBEndflow,
    SSMBFlow,
)

pytestmark = pytest.mark.unit


def golden(text: str) -> bytes:
    """Hex with spaces, newlines and ``#`` comments, as written in the tables below."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return bytes.fromhex("".join(lines))


FLOW_FIELDS = dict(
    orig_src_ipaddr="10.0.0.1",
    orig_dst_ipaddr="192.168.1.10",
    orig_src_port=40000,
    orig_dst_port=80,
    tos=0x10,
    proto=6,
    flags=0x03,
    tcp_flags=0x02,
    new_dst_ipaddr="10.1.0.5",
    new_dst_port=8080,
    next_hop_ipaddr="10.1.0.254",
    svr_seq_offset=0x11111111,
    svr_ack_offset=0x22222222,
    client_seq_offset=0x33333333,
    client_ack_offset=0x44444444,
    flow_id=0x80000001,
)

# Offsets 8..55 of a flow message with FLOW_FIELDS.
FLOW_BODY_HEX = """
0a000001 c0a8010a   # 8 orig_src_ipaddr, 12 orig_dst_ipaddr
9c40 0050           # 16 orig_src_port 40000, 18 orig_dst_port 80
10 06 03 02         # 20 tos, 21 proto, 22 flags OUTBOUND|ADD_TCP_OFFSET, 23 tcp_flags SYN
0a010005 1f90 0000  # 24 new_dst_ipaddr, 28 new_dst_port 8080, 30 pad
0a0100fe            # 32 next_hop_ipaddr
11111111 22222222   # 36 svr_seq_offset, 40 svr_ack_offset
33333333 44444444   # 44 client_seq_offset, 48 client_ack_offset
80000001            # 52 flow_id
"""

TUPLE_FIELDS = {k: FLOW_FIELDS[k] for k in list(FLOW_FIELDS)[:8]}
ENDFLOW_FIELDS = dict(
    TUPLE_FIELDS,
    inbound_bytes=0x0102030405060708,
    outbound_bytes=2,
    inbound_pkts=3,
    outbound_pkts=0xFFFFFFFFFFFFFFFF,
    flow_id=9,
)
ENDFLOW_BODY_HEX = """
0a000001 c0a8010a 9c40 0050 10 06 03 02  # 8..23 as the flow message
0102030405060708                         # 24 inbound_bytes
0000000000000002                         # 32 outbound_bytes
0000000000000003                         # 40 inbound_pkts
ffffffffffffffff                         # 48 outbound_pkts
00000009                                 # 56 flow_id
"""


@pytest.mark.parametrize(("code", "name"), [(1, "QUERY"), (3, "REPLY"), (5, "REAP"), (7, "NEWFLOW")])
def test_flow_message_matches_golden_bytes(code: int, name: str) -> None:
    pkt = SSMB(serial_global=0x0102, serial_bytype=0x0304, msg_type=name, error=0) / SSMBFlow(**FLOW_FIELDS)
    expected = golden(f"0102 0304 {code:02x} 01 0000" + FLOW_BODY_HEX)
    assert len(expected) == 56
    assert bytes(pkt) == expected


def test_flow_message_dissects_back_to_fields() -> None:
    pkt = SSMB(golden("0102 0304 03 01 0003" + FLOW_BODY_HEX))
    assert pkt.sprintf("%SSMB.msg_type% %SSMB.error%") == "REPLY CONNLIMIT"
    body = pkt[SSMBFlow]
    for field, value in FLOW_FIELDS.items():
        assert body.getfieldval(field) == value, field
    assert body.sprintf("%flags%") == "OUTBOUND+ADD_TCP_OFFSET"
    assert body.sprintf("%tcp_flags%") == "S"
    assert body.sprintf("%proto%") == "tcp"
    assert not body.payload


def test_header_defaults_to_query_for_flow_body_and_delete_for_endflow() -> None:
    assert SSMB(bytes(SSMB() / SSMBFlow())).msg_type == 1
    assert SSMB(bytes(SSMB() / SSMBEndflow())).msg_type == 4
    assert SSMB(bytes(SSMB() / SSMBAppQuery())).msg_type == 2


def test_app_query_computes_app_data_len() -> None:
    fields = {k: v for k, v in FLOW_FIELDS.items() if not k.endswith("_offset")}
    pkt = SSMB(serial_global=5, serial_bytype=1) / SSMBAppQuery(app_data=b"JSESSIONID=abc", **fields)
    expected = (
        golden(
            "0005 0001 02 01 0000"
            + FLOW_BODY_HEX.split("11111111")[0]  # offsets 8..35 through next_hop_ipaddr
            + """
        80000001        # 36 flow_id
        0000 000e       # 40 pad, 42 app_data_len 14
        """
        )
        + b"JSESSIONID=abc"
    )
    assert len(expected) == 44 + 14
    assert bytes(pkt) == expected
    back = SSMB(expected)[SSMBAppQuery]
    assert back.app_data_len == 14
    assert back.app_data == b"JSESSIONID=abc"
    assert back.flow_id == 0x80000001


@pytest.mark.parametrize(("code", "name"), [(4, "DELETE"), (6, "STATS")])
def test_endflow_message_matches_golden_bytes(code: int, name: str) -> None:
    pkt = SSMB(serial_global=0xFFFF, serial_bytype=2, msg_type=name) / SSMBEndflow(**ENDFLOW_FIELDS)
    expected = golden(f"ffff 0002 {code:02x} 01 0000" + ENDFLOW_BODY_HEX)
    assert len(expected) == 60
    assert bytes(pkt) == expected
    back = SSMB(expected)[SSMBEndflow]
    for field, value in ENDFLOW_FIELDS.items():
        assert back.getfieldval(field) == value, field


def test_reset_is_header_alone() -> None:
    assert bytes(SSMB(serial_global=7, serial_bytype=1)) == golden("0007 0001 08 01 0000")
    back = SSMB(golden("0007 0001 08 01 0000"))
    assert back.sprintf("%msg_type%") == "RESET"
    assert not back.payload


def test_batched_datagram_sets_count_in_every_header_and_dissects_each_message() -> None:
    pkt = (
        SSMB(serial_global=1, msg_type="REAP")
        / SSMBFlow(flow_id=1)
        / SSMB(serial_global=2, msg_type="STATS")
        / SSMBEndflow(flow_id=2)
        / SSMB(serial_global=3, msg_type="RESET")
        / SSMB(serial_global=4, msg_type="REAP")
        / SSMBFlow(flow_id=4)
    )
    raw = bytes(pkt)
    assert len(raw) == 56 + 60 + 8 + 56
    assert [raw[5], raw[56 + 5], raw[116 + 5], raw[124 + 5]] == [4, 4, 4, 4]
    back = SSMB(raw)
    headers = []
    layer = back
    while layer:
        if isinstance(layer, SSMB):
            headers.append((layer.serial_global, layer.sprintf("%msg_type%"), layer.count))
        layer = layer.payload
    assert headers == [(1, "REAP", 4), (2, "STATS", 4), (3, "RESET", 4), (4, "REAP", 4)]
    bodies = [back.getlayer(SSMBFlow, nb=1), back[SSMBEndflow], back.getlayer(SSMBFlow, nb=2)]
    assert [m.flow_id for m in bodies] == [1, 2, 4]


def test_explicit_count_is_kept() -> None:
    assert bytes(SSMB(count=9))[5] == 9


def test_ssmb_rides_on_udp_7700_either_direction() -> None:
    to_cs = IP(bytes(IP(dst="127.0.0.1") / UDP(sport=40000, dport=7700) / SSMB() / SSMBFlow(flow_id=3)))
    assert to_cs[SSMBFlow].flow_id == 3
    from_cs = IP(bytes(IP() / UDP(sport=7700, dport=40000) / SSMB(msg_type="RESET")))
    assert from_cs[SSMB].msg_type == 8
    elsewhere = IP(bytes(IP() / UDP(sport=1, dport=2) / Raw(bytes(SSMB()))))
    assert SSMB not in elsewhere


VSDEF_HEX = """
00000203        # flags TRANSLATE_ADDR|TRANSLATE_PORT|COOKIE_PROXY
c0a80164        # virt_ipaddr 192.168.1.100
0050 01 06      # virt_port 80, vs_class CS_ASSIST, proto tcp
0000 000a       # pad, app_data_len 10
4a53455353494f4e4944 0000  # app_data "JSESSIONID", padded to a multiple of 4
"""
VSDEF_FIELDS = dict(
    flags="TRANSLATE_ADDR+TRANSLATE_PORT+COOKIE_PROXY",
    virt_ipaddr="192.168.1.100",
    virt_port=80,
    vs_class="CS_ASSIST",
    proto=6,
    app_data=b"JSESSIONID",
)


@pytest.mark.parametrize(("code", "name"), [(1, "ADD_VS"), (2, "DELETE_VS"), (3, "QUERY_VS")])
def test_vs_definition_messages_match_golden_bytes(code: int, name: str) -> None:
    pkt = CSMB(serial_global=0x10, serial_bytype=0x20, msg_type=name) / CSMBVsDef(**VSDEF_FIELDS)
    expected = golden(f"0010 0020 00000028 {code:02x} 00 0000" + VSDEF_HEX)
    assert len(expected) == 12 + 16 + 12 == 0x28
    assert bytes(pkt) == expected
    back = CSMB(expected)
    assert back.sprintf("%msg_type%") == name
    vs = back[CSMBVsDef]
    assert vs.sprintf("%flags%") == "TRANSLATE_ADDR+TRANSLATE_PORT+COOKIE_PROXY"
    assert vs.sprintf("%vs_class%") == "CS_ASSIST"
    assert (vs.virt_ipaddr, vs.virt_port, vs.app_data_len, vs.app_data) == (
        "192.168.1.100",
        80,
        10,
        b"JSESSIONID",
    )


def test_query_vs_without_filter_is_header_alone() -> None:
    assert bytes(CSMB(msg_type="QUERY_VS")) == golden("0000 0000 0000000c 03 00 0000")
    assert not CSMB(golden("0000 0000 0000000c 03 00 0000")).payload


def test_dfs_assist_pool_in_app_data() -> None:
    pool = b"".join(
        bytes(e)
        for e in (
            CSMBPoolEntry(ipaddr="10.1.0.1", port=80, weight=3),
            CSMBPoolEntry(ipaddr="10.1.0.2", port=8080, weight=1),
        )
    )
    pkt = CSMB() / CSMBVsDef(vs_class="DFS_ASSIST", virt_ipaddr="10.0.0.100", virt_port=80, app_data=pool)
    expected = golden(
        """
        0000 0000 0000002c 01 00 0000   # header, msg_length 12+16+16
        00000000 0a000064 0050 02 06 0000 0010
        0a010001 0050 0003               # 10.1.0.1:80 weight 3
        0a010002 1f90 0001               # 10.1.0.2:8080 weight 1
        """
    )
    assert bytes(pkt) == expected
    app_data = CSMB(expected)[CSMBVsDef].app_data
    parsed = [CSMBPoolEntry(app_data[i : i + 8]) for i in range(0, len(app_data), 8)]
    assert [(e.ipaddr, e.port, e.weight) for e in parsed] == [("10.1.0.1", 80, 3), ("10.1.0.2", 8080, 1)]


def test_vs_list_packs_definitions_to_msg_length() -> None:
    pkt = CSMB(msg_type="VS_LIST") / CSMBVsList(
        servers=[
            CSMBVsDef(**VSDEF_FIELDS),
            CSMBVsDef(
                flags="WILDCARD_PORT",
                virt_ipaddr="10.0.0.1",
                vs_class="DFS_ASSIST",
                proto=17,
                app_data=b"abc",
            ),
        ]
    )
    second = golden(
        """
        00000020 0a000001 0000 02 11 0000 0003  # WILDCARD_PORT, udp
        616263 00                                # "abc" + 1 pad octet
        """
    )
    expected = golden("0000 0000 0000003c 04 00 0000" + VSDEF_HEX) + second
    assert len(expected) == 0x3C
    assert bytes(pkt) == expected
    servers = CSMB(expected)[CSMBVsList].servers
    assert [(s.virt_ipaddr, s.app_data, s.sprintf("%vs_class%")) for s in servers] == [
        ("192.168.1.100", b"JSESSIONID", "CS_ASSIST"),
        ("10.0.0.1", b"abc", "DFS_ASSIST"),
    ]


def test_empty_vs_list() -> None:
    raw = golden("0000 0000 0000000c 04 00 0000")
    assert bytes(CSMB(msg_type="VS_LIST") / CSMBVsList()) == raw
    assert CSMB(raw)[CSMBVsList].servers == []


def test_hello_matches_golden_bytes() -> None:
    pkt = CSMB(serial_global=1, serial_bytype=1) / CSMBHello(
        ssmb_active_ipaddr="10.0.0.254",
        ssmb_standby_ipaddr="10.0.0.253",
        flags="REDUNDANT+APP_PROXY",
        vers_major=1,
        vers_minor=0,
        ssmb_port=7700,
    )
    expected = golden(
        """
        0001 0001 0000001c 07 00 0000
        0a0000fe 0a0000fd   # ssmb_active_ipaddr, ssmb_standby_ipaddr
        00000088            # flags REDUNDANT|APP_PROXY
        01 00 1e14          # vers 1.0, ssmb_port 7700
        """
    )
    assert bytes(pkt) == expected
    hello = CSMB(expected)[CSMBHello]
    assert hello.sprintf("%flags%") == "REDUNDANT+APP_PROXY"
    assert (hello.ssmb_active_ipaddr, hello.ssmb_standby_ipaddr, hello.ssmb_port) == (
        "10.0.0.254",
        "10.0.0.253",
        7700,
    )
    assert CSMBHelloAuth not in CSMB(expected)


def test_hello_with_auth_data() -> None:
    pkt = CSMB() / CSMBHello(ssmb_active_ipaddr="10.0.0.1") / CSMBHelloAuth(auth_data=bytes(range(32)))
    raw = bytes(pkt)
    assert len(raw) == 12 + 16 + 2 + 32
    assert raw[4:8] == (62).to_bytes(4, "big")
    assert raw[28:30] == (32).to_bytes(2, "big")
    assert CSMB(raw)[CSMBHelloAuth].auth_data == bytes(range(32))


def test_status_reset_ack() -> None:
    assert bytes(CSMB(serial_global=2, msg_type="STATUS") / CSMBStatus(status=0xDEADBEEF)) == golden(
        "0002 0000 00000010 06 00 0000 deadbeef"
    )
    assert CSMB(golden("0002 0000 00000010 06 00 0000 deadbeef"))[CSMBStatus].status == 0xDEADBEEF
    assert bytes(CSMB(msg_type="RESET")) == golden("0000 0000 0000000c 05 00 0000")
    ack = CSMB(golden("0000 0000 0000000c 08 00 0002"))
    assert ack.sprintf("%msg_type% %error%") == "ACK VERS_OBSOLETE"


def test_several_csmb_messages_in_one_payload_each_get_their_own_length() -> None:
    stream = CSMB(msg_type="RESET") / CSMB(serial_global=1) / CSMBVsDef(**VSDEF_FIELDS) / CSMB(msg_type="ACK")
    raw = bytes(stream)
    assert raw[4:8] == (12).to_bytes(4, "big")
    assert raw[12 + 4 : 12 + 8] == (0x28).to_bytes(4, "big")
    assert raw[52 + 4 : 52 + 8] == (12).to_bytes(4, "big")
    back = CSMB(raw)
    kinds = []
    layer = back
    while layer:
        if isinstance(layer, CSMB):
            kinds.append(layer.sprintf("%msg_type%"))
        layer = layer.payload
    assert kinds == ["RESET", "ADD_VS", "ACK"]
    assert back[CSMBVsDef].app_data == b"JSESSIONID"


def test_csmb_rides_on_tcp_7701_and_reassembles_when_split() -> None:
    msg = bytes(CSMB() / CSMBVsDef(**VSDEF_FIELDS))
    seg = IP(bytes(IP() / TCP(sport=7701, dport=50000) / Raw(msg)))
    assert seg[CSMBVsDef].virt_port == 80
    assert CSMB.tcp_reassemble(msg[:20], {}, None) is None
    assert CSMB.tcp_reassemble(msg + msg[:3], {}, None) is None
    whole = CSMB.tcp_reassemble(msg + msg, {}, None)
    assert whole is not None and whole.getlayer(CSMB, nb=2) is not None


def test_malformed_csmb_length_does_not_raise() -> None:
    raw = golden("0000 0000 00000004 08 00 0000") + golden("0000 0000 0000000c 05 00 0000")
    back = CSMB(raw)
    assert back.msg_length == 4
    assert back.getlayer(CSMB, nb=2).msg_type == 5


# Cross-check with the project's own codec: same bytes for every message type.


def test_scapy_matches_slbproto_for_every_ssmb_type() -> None:
    flow = {k: v for k, v in FLOW_FIELDS.items()}
    app = {k: v for k, v in FLOW_FIELDS.items() if not k.endswith("_offset")}
    cases = [
        (ssmb.Query(serial_global=1, serial_bytype=1, **flow), SSMB(msg_type="QUERY") / SSMBFlow(**flow)),
        (
            ssmb.Reply(serial_global=2, serial_bytype=1, error=2, **flow),
            SSMB(msg_type="REPLY", error=2) / SSMBFlow(**flow),
        ),
        (ssmb.Reap(serial_global=3, serial_bytype=1, **flow), SSMB(msg_type="REAP") / SSMBFlow(**flow)),
        (ssmb.NewFlow(serial_global=4, serial_bytype=1, **flow), SSMB(msg_type="NEWFLOW") / SSMBFlow(**flow)),
        (
            ssmb.AppQuery(serial_global=5, serial_bytype=1, app_data=b"cookie", **app),
            SSMB(msg_type="APP_QUERY") / SSMBAppQuery(app_data=b"cookie", **app),
        ),
        (
            ssmb.Delete(serial_global=6, serial_bytype=1, **ENDFLOW_FIELDS),
            SSMB(msg_type="DELETE") / SSMBEndflow(**ENDFLOW_FIELDS),
        ),
        (
            ssmb.Stats(serial_global=7, serial_bytype=1, error=4, **ENDFLOW_FIELDS),
            SSMB(msg_type="STATS", error=4) / SSMBEndflow(**ENDFLOW_FIELDS),
        ),
        (ssmb.Reset(serial_global=8, serial_bytype=1), SSMB(msg_type="RESET")),
    ]
    for message, pkt in cases:
        pkt.serial_global = message.serial_global
        pkt.serial_bytype = message.serial_bytype
        assert ssmb.encode_datagram([message]) == bytes(pkt), type(message).__name__
        assert ssmb.decode_datagram(bytes(pkt)) == [message]
    batch = [m for m, _ in cases if type(m).__name__ in ("Reap", "Stats", "Reset")]
    scapy_batch = (
        SSMB(msg_type="REAP", serial_global=3, serial_bytype=1)
        / SSMBFlow(**flow)
        / SSMB(msg_type="STATS", serial_global=7, serial_bytype=1, error=4)
        / SSMBEndflow(**ENDFLOW_FIELDS)
        / SSMB(msg_type="RESET", serial_global=8, serial_bytype=1)
    )
    assert ssmb.encode_datagram(batch) == bytes(scapy_batch)


def test_scapy_matches_slbproto_for_every_csmb_type() -> None:
    vs = csmb.VirtualServer(
        flags=0x203, virt_ipaddr="192.168.1.100", virt_port=80, vs_class=1, proto=6, app_data=b"JSESSIONID"
    )
    vs2 = csmb.VirtualServer(
        flags=0x20, virt_ipaddr="10.0.0.1", virt_port=0, vs_class=2, proto=17, app_data=b"abc"
    )
    scapy_vs = CSMBVsDef(**VSDEF_FIELDS)
    scapy_vs2 = CSMBVsDef(flags=0x20, virt_ipaddr="10.0.0.1", vs_class=2, proto=17, app_data=b"abc")
    cases = [
        (csmb.AddVs(vs), CSMB(msg_type="ADD_VS") / scapy_vs),
        (csmb.DeleteVs(vs), CSMB(msg_type="DELETE_VS") / scapy_vs),
        (csmb.QueryVs(vs), CSMB(msg_type="QUERY_VS") / scapy_vs),
        (csmb.QueryVs(), CSMB(msg_type="QUERY_VS")),
        (csmb.VsList((vs, vs2)), CSMB(msg_type="VS_LIST") / CSMBVsList(servers=[scapy_vs, scapy_vs2])),
        (csmb.VsList(()), CSMB(msg_type="VS_LIST") / CSMBVsList()),
        (csmb.Reset(), CSMB(msg_type="RESET")),
        (csmb.Status(7), CSMB(msg_type="STATUS") / CSMBStatus(status=7)),
        (
            csmb.Hello("10.0.0.254", "10.0.0.253", 0x88, 1, 0, 7700),
            CSMB(msg_type="HELLO")
            / CSMBHello(
                ssmb_active_ipaddr="10.0.0.254", ssmb_standby_ipaddr="10.0.0.253", flags=0x88, ssmb_port=7700
            ),
        ),
        (
            csmb.Hello("10.0.0.1", "0.0.0.0", 0x80, 1, 0, 7700, auth_data=b"\x01" * 32),
            CSMB(msg_type="HELLO")
            / CSMBHello(ssmb_active_ipaddr="10.0.0.1", flags=0x80)
            / CSMBHelloAuth(auth_data=b"\x01" * 32),
        ),
        (csmb.Ack(), CSMB(msg_type="ACK")),
    ]
    for message, pkt in cases:
        assert csmb.encode_message(message) == bytes(pkt), message
        assert csmb.decode_message(bytes(pkt)) == message


# Property: for any field values, scapy and slbproto agree on the bytes, both ways.

ipv4s = st.builds(lambda n: ".".join(str((n >> s) & 0xFF) for s in (24, 16, 8, 0)), st.integers(0, 2**32 - 1))
u8s, u16s, u32s, u64s = (st.integers(0, 2**bits - 1) for bits in (8, 16, 32, 64))
flow_tuples = st.fixed_dictionaries(
    {
        "orig_src_ipaddr": ipv4s,
        "orig_dst_ipaddr": ipv4s,
        "orig_src_port": u16s,
        "orig_dst_port": u16s,
        "tos": u8s,
        "proto": st.sampled_from([6, 17]),
        "flags": st.integers(0, 3),
        "tcp_flags": u8s,
    }
)
serials = st.fixed_dictionaries({"serial_global": u16s, "serial_bytype": u16s})


@settings(max_examples=150, deadline=None)
@given(
    tuple_fields=flow_tuples,
    serial=serials,
    new_dst=ipv4s,
    new_port=u16s,
    hop=ipv4s,
    offsets=st.lists(u32s, min_size=4, max_size=4),
    flow_id=u32s,
    kind=st.sampled_from(["Query", "Reply", "Reap", "NewFlow"]),
    error=st.integers(0, 4),
)
def test_any_flow_message_agrees_with_slbproto(  # type: ignore[no-untyped-def]
    tuple_fields, serial, new_dst, new_port, hop, offsets, flow_id, kind, error
) -> None:
    body = dict(
        tuple_fields,
        new_dst_ipaddr=new_dst,
        new_dst_port=new_port,
        next_hop_ipaddr=hop,
        svr_seq_offset=offsets[0],
        svr_ack_offset=offsets[1],
        client_seq_offset=offsets[2],
        client_ack_offset=offsets[3],
        flow_id=flow_id,
    )
    message = getattr(ssmb, kind)(error=error, **serial, **body)
    pkt = SSMB(msg_type=int(message.MSG_TYPE), error=error, **serial) / SSMBFlow(**body)
    assert bytes(pkt) == ssmb.encode_datagram([message])
    assert ssmb.decode_datagram(bytes(pkt)) == [message]
    back = SSMB(bytes(pkt))[SSMBFlow]
    assert {k: back.getfieldval(k) for k in body} == body


@settings(max_examples=150, deadline=None)
@given(
    tuple_fields=flow_tuples,
    serial=serials,
    counters=st.lists(u64s, min_size=4, max_size=4),
    flow_id=u32s,
    app_data=st.binary(max_size=300),
)
def test_any_endflow_and_app_query_agree_with_slbproto(  # type: ignore[no-untyped-def]
    tuple_fields, serial, counters, flow_id, app_data
) -> None:
    names = ("inbound_bytes", "outbound_bytes", "inbound_pkts", "outbound_pkts")
    end = dict(tuple_fields, flow_id=flow_id, **dict(zip(names, counters, strict=True)))
    stats = ssmb.Stats(**serial, **end)
    assert bytes(SSMB(msg_type="STATS", **serial) / SSMBEndflow(**end)) == ssmb.encode_datagram([stats])
    app = dict(tuple_fields, flow_id=flow_id, app_data=app_data)
    query = ssmb.AppQuery(**serial, **app)
    raw = bytes(SSMB(msg_type="APP_QUERY", **serial) / SSMBAppQuery(**app))
    assert raw == ssmb.encode_datagram([query])
    assert SSMB(raw)[SSMBAppQuery].app_data == app_data


virtual_servers = st.builds(
    dict,
    flags=st.integers(0, 0xFFF),
    virt_ipaddr=ipv4s,
    virt_port=u16s,
    vs_class=st.just(1),
    proto=st.sampled_from([6, 17]),
    app_data=st.binary(max_size=64),
)


@settings(max_examples=150, deadline=None)
@given(servers=st.lists(virtual_servers, max_size=5), serial=serials)
def test_any_vs_list_agrees_with_slbproto(servers, serial) -> None:  # type: ignore[no-untyped-def]
    message = csmb.VsList(tuple(csmb.VirtualServer(**vs) for vs in servers), **serial)
    pkt = CSMB(msg_type="VS_LIST", **serial) / CSMBVsList(servers=[CSMBVsDef(**vs) for vs in servers])
    assert bytes(pkt) == csmb.encode_message(message)
    back = CSMB(bytes(pkt))[CSMBVsList].servers
    assert [(s.virt_ipaddr, s.virt_port, s.app_data) for s in back] == [
        (vs["virt_ipaddr"], vs["virt_port"], vs["app_data"]) for vs in servers
    ]
