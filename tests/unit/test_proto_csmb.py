"""CSMB codec and stream framing: golden layouts, round trips, lying lengths."""

from __future__ import annotations

import pytest

from slbproto import csmb, errors
from slbproto.constants import MAX_CSMB_LENGTH, CsmbError, CsmbType, VsClass, VsFlag
from slbproto.csmb import (
    Ack,
    AddVs,
    DeleteVs,
    Hello,
    PoolEntry,
    QueryVs,
    Reset,
    Status,
    StreamDecoder,
    VirtualServer,
    VsList,
    decode_message,
    decode_pool,
    encode_message,
    encode_pool,
)

pytestmark = pytest.mark.unit


def h(text: str) -> bytes:
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


COOKIE_VS = VirtualServer(
    VsFlag.TRANSLATE_ADDR | VsFlag.COOKIE_PROXY, "10.0.0.100", 80, VsClass.CS_ASSIST, 6, b"SID"
)

VS_WIRE = """
00000201   # 0  flags TRANSLATE_ADDR|COOKIE_PROXY
0a000064   # 4  virt_ipaddr
0050       # 8  virt_port
01         # 10 vs_class
06         # 11 proto
0000       # 12 pad
0003       # 14 app_data_len
534944     # 16 app_data
00         # padding to a multiple of 4
"""


def test_add_vs_golden() -> None:
    wire = h(
        """
        0001 0002      # serial_global, serial_bytype
        00000020       # msg_length 32 = 12 + 20
        01 00 0000     # msg_type ADD_VS, pad, error
        """
        + VS_WIRE
    )
    msg = AddVs(COOKIE_VS, serial_global=1, serial_bytype=2)
    assert encode_message(msg) == wire
    assert decode_message(wire) == msg


def test_hello_golden_without_and_with_auth() -> None:
    plain = h(
        """
        0000 0000 0000001c 07 00 0000   # header, msg_length 28
        0a000001                        # 12 ssmb_active_ipaddr
        0a000002                        # 16 ssmb_standby_ipaddr
        00000088                        # 20 flags APP_PROXY|REDUNDANT
        01 00                           # 24 vers_major, vers_minor
        1e14                            # 26 ssmb_port 7700
        """
    )
    msg = Hello("10.0.0.1", "10.0.0.2", VsFlag.APP_PROXY | VsFlag.REDUNDANT, 1, 0, 7700)
    assert encode_message(msg) == plain
    assert decode_message(plain) == msg
    signed = h(
        """
        0000 0000 00000021 07 00 0000 0a000001 0a000002 00000088 01 00 1e14
        0003                            # 28 auth_data_len
        aabbcc                          # 30 auth_data
        """
    )
    with_auth = Hello("10.0.0.1", "10.0.0.2", 0x88, 1, 0, 7700, auth_data=b"\xaa\xbb\xcc")
    assert encode_message(with_auth) == signed
    assert decode_message(signed) == with_auth


def test_status_ack_reset_golden() -> None:
    assert encode_message(Status(0xDEADBEEF, serial_global=3)) == h("0003 0000 00000010 06 00 0000 deadbeef")
    assert encode_message(Ack(error=CsmbError.VERS_OBSOLETE)) == h("0000 0000 0000000c 08 00 0002")
    assert encode_message(Reset()) == h("0000 0000 0000000c 05 00 0000")


def test_query_vs_and_vs_list_golden() -> None:
    assert encode_message(QueryVs()) == h("0000 0000 0000000c 03 00 0000")
    one = h(VS_WIRE)
    assert encode_message(VsList((COOKIE_VS, COOKIE_VS))) == h("0000 0000 00000034 04 00 0000") + one + one
    assert encode_message(DeleteVs(COOKIE_VS))[8] == CsmbType.DELETE_VS


def test_pool_golden() -> None:
    wire = h("0a000101 0050 0003  0a000102 1f90 0000")
    pool = (PoolEntry("10.0.1.1", 80, 3), PoolEntry("10.0.1.2", 8080, 0))
    assert encode_pool(pool) == wire
    assert decode_pool(wire) == pool
    with pytest.raises(errors.BadFieldValue):
        decode_pool(wire[:-1])


def test_layout_sizes() -> None:
    assert csmb.HEADER_LAYOUT.size == 12
    assert csmb.VS_LAYOUT.size == 16
    assert csmb.HELLO_LAYOUT.size == 28
    assert csmb.STATUS_LAYOUT.size == 16
    assert csmb.HELLO_LAYOUT.offsets["ssmb_port"] == 26
    assert [code for code, _ in csmb.REGISTRY] == [int(t) for t in CsmbType]


ALL_MESSAGES = [
    AddVs(COOKIE_VS),
    AddVs(
        VirtualServer(0, "10.0.0.5", 443, VsClass.DFS_ASSIST, 6, encode_pool([PoolEntry("10.0.1.1", 443)]))
    ),
    DeleteVs(VirtualServer(0, "10.0.0.5", 443, 0, 6)),
    QueryVs(),
    QueryVs(COOKIE_VS),
    VsList(),
    VsList((COOKIE_VS,) * 3),
    Reset(serial_global=65535, serial_bytype=65535),
    Status(7),
    Hello("10.0.0.1", "0.0.0.0", VsFlag.APP_PROXY, 1, 0, 7700),
    Hello("10.0.0.1", "0.0.0.0", 0, 2, 9, 1, auth_data=b""),
    Ack(error=CsmbError.NOT_SUPPORTED),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: csmb.CsmbMessage) -> None:
    assert decode_message(encode_message(msg)) == msg


def test_vs_padding_for_every_remainder() -> None:
    for n in range(9):
        vs = VirtualServer(0, "1.2.3.4", 1, 1, 6, b"z" * n)
        wire = encode_message(AddVs(vs))
        assert len(wire) % 4 == 0
        assert len(wire) == 12 + 16 + n + (-n % 4)
        assert decode_message(wire) == AddVs(vs)


def test_stream_decoder_any_chunking() -> None:
    wire = b"".join(encode_message(m) for m in ALL_MESSAGES)
    for step in (1, 2, 3, 5, 11, 12, 13, 64, len(wire)):
        decoder = StreamDecoder()
        out: list[csmb.CsmbMessage] = []
        for i in range(0, len(wire), step):
            out += decoder.feed(wire[i : i + step])
        assert out == ALL_MESSAGES, step
        assert decoder.buffered == 0
        assert decoder.messages == len(ALL_MESSAGES)


def test_stream_decoder_keeps_partial_message() -> None:
    wire = encode_message(AddVs(COOKIE_VS))
    decoder = StreamDecoder()
    assert decoder.feed(wire + wire[:5]) == [AddVs(COOKIE_VS)]
    assert decoder.buffered == 5
    assert decoder.feed(wire[5:]) == [AddVs(COOKIE_VS)]


def with_length(wire: bytes, length: int) -> bytes:
    return wire[:4] + length.to_bytes(4, "big") + wire[8:]


RESET_WIRE = encode_message(Reset())
ADD_WIRE = encode_message(AddVs(COOKIE_VS))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (with_length(RESET_WIRE, 11), errors.BadLength),
        (with_length(RESET_WIRE, 0), errors.BadLength),
        (with_length(RESET_WIRE, MAX_CSMB_LENGTH + 1), errors.LengthTooLarge),
        (with_length(RESET_WIRE, 0xFFFFFFFF), errors.LengthTooLarge),
        (with_length(RESET_WIRE + b"\0" * 4, 16), errors.BadLength),  # RESET has no body
        (with_length(ADD_WIRE[:-4], len(ADD_WIRE) - 4), errors.VsListOverrun),  # padding cut
        (with_length(ADD_WIRE[:20], 20), errors.VsListOverrun),  # header of VS cut
        (ADD_WIRE[:26] + (8193).to_bytes(2, "big") + ADD_WIRE[28:], errors.AppDataTooLong),
        (ADD_WIRE[:26] + (9).to_bytes(2, "big") + ADD_WIRE[28:], errors.VsListOverrun),
        (RESET_WIRE[:8] + b"\x09" + RESET_WIRE[9:], errors.UnknownMessageType),
        (RESET_WIRE[:10] + b"\x00\x06", errors.BadFieldValue),  # undefined error
        (ADD_WIRE[:22] + b"\x03" + ADD_WIRE[23:], errors.BadFieldValue),  # vs_class 3
        (ADD_WIRE[:22] + b"\x00" + ADD_WIRE[23:], errors.BadFieldValue),  # ADD_VS needs a class
        (ADD_WIRE[:12] + b"\x00\x00\x10\x00" + ADD_WIRE[16:], errors.BadFieldValue),  # flag bit 12
        (with_length(encode_message(Status(1))[:15], 15), errors.BadLength),
        (with_length(encode_message(Hello("1.1.1.1", "0.0.0.0", 0, 1, 0, 1))[:27], 27), errors.BadLength),
        (with_length(encode_message(Hello("1.1.1.1", "0.0.0.0", 0, 1, 0, 1)) + b"\0", 29), errors.BadLength),
        (
            with_length(encode_message(Hello("1.1.1.1", "0.0.0.0", 0, 1, 0, 1)) + b"\0\x05\0", 31),
            errors.AppDataOverrun,
        ),
    ],
    ids=[
        "length-11",
        "length-0",
        "length-1MiB+1",
        "length-max",
        "reset-with-body",
        "vs-padding-cut",
        "vs-header-cut",
        "vs-app-data-8193",
        "vs-app-data-overrun",
        "unknown-type",
        "bad-error",
        "bad-vs-class",
        "add-vs-class-0",
        "bad-vs-flag",
        "status-short",
        "hello-short",
        "hello-1-octet-auth",
        "hello-auth-overrun",
    ],
)
def test_lying_input_fails_stream_with_typed_error(data: bytes, error: type[errors.ProtocolError]) -> None:
    good = encode_message(Status(1))
    decoder = StreamDecoder()
    with pytest.raises(error) as info:
        decoder.feed(good + data + good)
    assert info.value.code == error.code
    assert decoder.failed is info.value
    assert decoder.buffered == 0
    assert decoder.messages == 0  # the messages of a failing feed are not delivered
    with pytest.raises(errors.StreamFailed):
        decoder.feed(good)


def test_framing_errors_are_detected_from_the_header_alone() -> None:
    """A lying length is refused as soon as 12 octets arrived, without waiting for a megabyte."""
    decoder = StreamDecoder()
    with pytest.raises(errors.LengthTooLarge):
        decoder.feed(with_length(RESET_WIRE, MAX_CSMB_LENGTH + 1))
    assert isinstance(decoder.failed, errors.FramingError)


def test_decode_message_length_must_match() -> None:
    with pytest.raises(errors.TruncatedMessage):
        decode_message(RESET_WIRE[:11])
    with pytest.raises(errors.TruncatedMessage):
        decode_message(ADD_WIRE[:-1])
    with pytest.raises(errors.TrailingBytes):
        decode_message(ADD_WIRE + b"\0")


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (AddVs(VirtualServer(0, "1.2.3", 80, 1, 6)), "virt_ipaddr"),
        (AddVs(VirtualServer(1 << 12, "1.2.3.4", 80, 1, 6)), "flags"),
        (AddVs(VirtualServer(0, "1.2.3.4", 80, 0, 6)), "vs_class"),
        (AddVs(VirtualServer(0, "1.2.3.4", 80, 3, 6)), "vs_class"),
        (AddVs(VirtualServer(0, "1.2.3.4", 80, 1, 6, b"x" * 8193)), "app_data"),
        (VsList((VirtualServer(0, "1.2.3.4", 80, 0, 6),)), "vs_class"),
        (Status(-1), "status"),
        (Hello("1.1.1.1", "0.0.0.0", 0, 256, 0, 1), "vers_major"),
        (Hello("1.1.1.1", "0.0.0.0", 0, 1, 0, 1, auth_data=b"x" * 1025), "auth_data"),
        (Ack(error=99), "error"),
        (Reset(serial_bytype=70000), "serial_bytype"),
    ],
)
def test_encode_out_of_range_is_usage_error(msg: csmb.CsmbMessage, needle: str) -> None:
    with pytest.raises(errors.UsageError, match=needle):
        encode_message(msg)


def test_vs_list_too_large_is_usage_error() -> None:
    big = VirtualServer(0, "1.2.3.4", 80, 1, 6, b"x" * 8192)
    with pytest.raises(errors.UsageError, match="max"):
        encode_message(VsList((big,) * 130))


def test_repr_symbolic() -> None:
    assert "flags=TRANSLATE_ADDR|COOKIE_PROXY" in repr(COOKIE_VS)
    assert "error=VERS_NEW" in repr(Ack(error=CsmbError.VERS_NEW))
