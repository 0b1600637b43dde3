"""SSMB codec: golden layouts pinned to PROTOCOL.md offsets, round trips, bad input."""

from __future__ import annotations

import dataclasses

import pytest

from slbproto import errors, ssmb
from slbproto.constants import FlowFlag, SsmbError, SsmbType
from slbproto.layout import Registry
from slbproto.ssmb import (
    AppQuery,
    Delete,
    NewFlow,
    Query,
    Reap,
    Reply,
    Reset,
    Stats,
    decode_datagram,
    encode_datagram,
)

pytestmark = pytest.mark.unit


def h(text: str) -> bytes:
    """Hex with whitespace and '#' comments, so every field's octets are visible."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


FLOW_KW = dict(
    orig_src_ipaddr="10.1.2.3",
    orig_dst_ipaddr="192.168.0.10",
    orig_src_port=50000,
    orig_dst_port=80,
    tos=0x10,
    proto=6,
    flags=FlowFlag.OUTBOUND | FlowFlag.ADD_TCP_OFFSET,
    tcp_flags=0x02,
    new_dst_ipaddr="172.16.5.6",
    new_dst_port=8080,
    next_hop_ipaddr="10.0.0.254",
    svr_seq_offset=0x11111111,
    svr_ack_offset=0x22222222,
    client_seq_offset=0x33333333,
    client_ack_offset=0x44444444,
    flow_id=0xBEEF,
    serial_global=0x0102,
    serial_bytype=0x0304,
    error=SsmbError.CONNLIMIT,
)

FLOW_BODY = """
0a010203   # 8  orig_src_ipaddr
c0a8000a   # 12 orig_dst_ipaddr
c350       # 16 orig_src_port
0050       # 18 orig_dst_port
10         # 20 tos
06         # 21 proto
03         # 22 flags
02         # 23 tcp_flags
ac100506   # 24 new_dst_ipaddr
1f90       # 28 new_dst_port
0000       # 30 pad
0a0000fe   # 32 next_hop_ipaddr
11111111   # 36 svr_seq_offset
22222222   # 40 svr_ack_offset
33333333   # 44 client_seq_offset
44444444   # 48 client_ack_offset
0000beef   # 52 flow_id
"""


@pytest.mark.parametrize(
    ("cls", "code"),
    [(Query, "01"), (Reply, "03"), (Reap, "05"), (NewFlow, "07")],
)
def test_flow_message_golden(cls: type[ssmb.SsmbMessage], code: str) -> None:
    header = f"0102 0304 {code} 01 0003"  # serial_global, serial_bytype, msg_type, count, error
    wire = h(header + FLOW_BODY)
    assert len(wire) == 56
    msg = cls(**FLOW_KW)
    assert encode_datagram([msg]) == wire
    assert decode_datagram(wire) == [msg]


def test_app_query_golden() -> None:
    wire = h(
        """
        0007 0002 02 01 0000   # header: APP_QUERY, count 1
        0a010203 c0a8000a c350 0050 10 06 00 18
        00000000 0000 0000     # new_dst_ipaddr, new_dst_port, pad
        0a0000fe               # 32 next_hop_ipaddr
        00000102               # 36 flow_id
        0000                   # 40 pad
        0005                   # 42 app_data_len
        6162636465             # 44 app_data
        """
    )
    msg = AppQuery(
        "10.1.2.3",
        "192.168.0.10",
        50000,
        80,
        tos=0x10,
        proto=6,
        tcp_flags=0x18,
        next_hop_ipaddr="10.0.0.254",
        flow_id=0x102,
        app_data=b"abcde",
        serial_global=7,
        serial_bytype=2,
    )
    assert len(wire) == 44 + 5
    assert encode_datagram([msg]) == wire
    assert decode_datagram(wire) == [msg]


@pytest.mark.parametrize(("cls", "code"), [(Delete, "04"), (Stats, "06")])
def test_endflow_golden(cls: type[ssmb.SsmbMessage], code: str) -> None:
    wire = h(
        f"""
        ffff 0000 {code} 01 0004   # header, error CONNALIVE
        0a010203 c0a8000a c350 0050 00 11 01 00
        0000000000000064           # 24 inbound_bytes
        00000000000000c8           # 32 outbound_bytes
        0000000000000003           # 40 inbound_pkts
        ffffffffffffffff           # 48 outbound_pkts
        80000001                   # 56 flow_id
        """
    )
    assert len(wire) == 60
    msg = cls(  # type: ignore[call-arg]
        "10.1.2.3",
        "192.168.0.10",
        50000,
        80,
        0,
        17,
        FlowFlag.OUTBOUND,
        0,
        100,
        200,
        3,
        2**64 - 1,
        0x80000001,
        serial_global=0xFFFF,
        error=SsmbError.CONNALIVE,
    )
    assert encode_datagram([msg]) == wire
    assert decode_datagram(wire) == [msg]


def test_reset_golden() -> None:
    wire = h("0009 0001 08 01 0000")
    assert encode_datagram([Reset(serial_global=9, serial_bytype=1)]) == wire
    assert decode_datagram(wire) == [Reset(serial_global=9, serial_bytype=1)]


def test_batch_golden_repeats_count_in_every_header() -> None:
    wire = h("0001 0000 08 02 00000002 0001 08 02 0000")
    msgs = [Reset(serial_global=1), Reset(serial_global=2, serial_bytype=1)]
    assert encode_datagram(msgs) == wire
    assert decode_datagram(wire) == msgs


def test_layout_sizes_and_offsets_match_spec() -> None:
    assert ssmb.HEADER_LAYOUT.size == 8
    assert ssmb.FLOW_LAYOUT.size == 56
    assert ssmb.ENDFLOW_LAYOUT.size == 60
    assert ssmb.APP_QUERY_LAYOUT.size == 44
    offsets = ssmb.FLOW_LAYOUT.offsets
    assert (offsets["next_hop_ipaddr"], offsets["flow_id"], offsets["new_dst_port"]) == (32, 52, 28)
    aq = ssmb.APP_QUERY_LAYOUT.offsets
    assert (aq["flow_id"], aq["app_data_len"]) == (36, 42)
    assert ssmb.ENDFLOW_LAYOUT.offsets["inbound_bytes"] == 24


def test_every_type_registered_once() -> None:
    assert [code for code, _ in ssmb.REGISTRY] == [int(t) for t in SsmbType]
    for code, cls in ssmb.REGISTRY:
        assert code == cls.MSG_TYPE


def test_registry_refuses_duplicate_code() -> None:
    registry: Registry[object] = Registry("test")
    registry.register(1, int)
    with pytest.raises(errors.UsageError, match="already registered"):
        registry.register(1, str)


def test_mixed_batch_round_trip() -> None:
    msgs = [
        Reap("1.1.1.1", "2.2.2.2", 1, 2, flow_id=5, serial_global=1),
        AppQuery("1.1.1.1", "2.2.2.2", 1, 2, app_data=b"x" * 7, serial_global=2),
        Stats("3.3.3.3", "4.4.4.4", 5, 6, inbound_pkts=9, serial_global=3),
        Reset(serial_global=4),
    ]
    assert decode_datagram(encode_datagram(msgs)) == msgs


def test_decoded_messages_are_real_frozen_instances() -> None:
    msg = decode_datagram(encode_datagram([Query("1.2.3.4", "5.6.7.8", 1, 2)]))[0]
    assert type(msg) is Query
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.flow_id = 3  # type: ignore[misc]
    assert hash(msg) == hash(Query("1.2.3.4", "5.6.7.8", 1, 2))
    assert not hasattr(msg, "__dict__")


def test_repr_is_symbolic() -> None:
    text = repr(Reply("1.2.3.4", "5.6.7.8", 1, 2, flags=3, error=SsmbError.NOTAVAIL))
    assert "flags=OUTBOUND|ADD_TCP_OFFSET" in text
    assert "error=NOTAVAIL" in text
    assert text.startswith("Reply(orig_src_ipaddr='1.2.3.4'")


# --- bad input from the peer -------------------------------------------------------------

QUERY_WIRE = encode_datagram([Query("10.0.0.1", "10.0.0.2", 1000, 80, flow_id=1)])


def mutate(data: bytes, offset: int, replacement: bytes) -> bytes:
    return data[:offset] + replacement + data[offset + len(replacement) :]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", errors.TruncatedMessage),
        (QUERY_WIRE[:7], errors.TruncatedMessage),
        (QUERY_WIRE[:55], errors.TruncatedMessage),
        (QUERY_WIRE + b"\0", errors.TrailingBytes),
        (QUERY_WIRE + QUERY_WIRE, errors.TrailingBytes),  # two messages, both say count 1
        (mutate(QUERY_WIRE, 4, b"\x09"), errors.UnknownMessageType),
        (mutate(QUERY_WIRE, 4, b"\x00"), errors.UnknownMessageType),
        (mutate(QUERY_WIRE, 5, b"\x00"), errors.BadCount),
        (mutate(QUERY_WIRE, 5, b"\x02"), errors.TruncatedMessage),  # says 2, holds 1
        (mutate(QUERY_WIRE, 5, b"\x02") + QUERY_WIRE, errors.CountMismatch),
        (mutate(QUERY_WIRE, 6, b"\x00\x05"), errors.BadFieldValue),  # error 5 undefined
        (mutate(QUERY_WIRE, 22, b"\x04"), errors.BadFieldValue),  # undefined flag bit
    ],
    ids=[
        "empty",
        "short-header",
        "short-body",
        "trailing-octet",
        "two-count-1",
        "type-9",
        "type-0",
        "count-0",
        "count-2-holds-1",
        "count-mismatch",
        "bad-error",
        "bad-flag",
    ],
)
def test_bad_datagram_raises_specific_error(data: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error) as info:
        decode_datagram(data)
    assert info.value.code == error.code
    assert isinstance(info.value, errors.ProtocolError)


APP_WIRE = encode_datagram([AppQuery("10.0.0.1", "10.0.0.2", 1, 2, app_data=b"cookie")])


def test_app_data_len_beyond_datagram() -> None:
    with pytest.raises(errors.AppDataOverrun):
        decode_datagram(mutate(APP_WIRE, 42, b"\x00\x07"))


def test_app_data_len_over_maximum() -> None:
    data = mutate(APP_WIRE, 42, (8193).to_bytes(2, "big")) + b"\0" * 8193
    with pytest.raises(errors.AppDataTooLong):
        decode_datagram(data)


def test_app_data_at_maximum_is_fine() -> None:
    msg = AppQuery("10.0.0.1", "10.0.0.2", 1, 2, app_data=b"\xff" * 8192)
    assert decode_datagram(encode_datagram([msg])) == [msg]


def test_bad_field_error_names_field_and_offset() -> None:
    with pytest.raises(errors.BadFieldValue) as info:
        decode_datagram(mutate(QUERY_WIRE, 22, b"\x80"))
    assert info.value.field == "flags"
    assert info.value.offset == 22


# --- caller mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (Query("10.0.0", "1.1.1.1", 1, 2), "orig_src_ipaddr"),
        (Query("1.1.1.1", "01.1.1.1", 1, 2), "orig_dst_ipaddr"),
        (Query("1.1.1.1", "1.1.1.1", 65536, 2), "orig_src_port"),
        (Query("1.1.1.1", "1.1.1.1", 1, -1), "orig_dst_port"),
        (Query("1.1.1.1", "1.1.1.1", 1, 2, flags=4), "flags"),
        (Query("1.1.1.1", "1.1.1.1", 1, 2, error=5), "error"),
        (Query("1.1.1.1", "1.1.1.1", 1, 2, serial_global=1 << 16), "serial_global"),
        (Query("1.1.1.1", "1.1.1.1", 1, 2, flow_id=1 << 32), "flow_id"),
        (Query("1.1.1.1", "1.1.1.1", 1, 2, tos=1.5), "tos"),  # type: ignore[arg-type]
        (Stats("1.1.1.1", "1.1.1.1", 1, 2, inbound_bytes=1 << 64), "inbound_bytes"),
        (AppQuery("1.1.1.1", "1.1.1.1", 1, 2, app_data=b"x" * 8193), "app_data"),
        (AppQuery("1.1.1.1", "1.1.1.1", 1, 2, app_data="text"), "app_data"),  # type: ignore[arg-type]
        (Reset(error=7), "error"),
    ],
)
def test_pack_out_of_range_is_usage_error(msg: ssmb.SsmbMessage, needle: str) -> None:
    with pytest.raises(errors.UsageError, match=needle):
        encode_datagram([msg])


def test_encode_datagram_bounds() -> None:
    with pytest.raises(errors.UsageError):
        encode_datagram([])
    with pytest.raises(errors.UsageError):
        encode_datagram([Reset()] * 256)
    with pytest.raises(errors.UsageError):
        encode_datagram(["not a message"])  # type: ignore[list-item]
    assert len(decode_datagram(encode_datagram([Reset()] * 255))) == 255
