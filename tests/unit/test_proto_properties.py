"""Property tests: generated messages round-trip; random bytes raise only ProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slbproto import csmb, ssmb
from slbproto.constants import MAX_APP_DATA_LEN, CsmbError, FlowFlag, SsmbError, VsClass, VsFlag
from slbproto.errors import ProtocolError
from slbproto.peer import SsmbReceiver

pytestmark = pytest.mark.unit

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
ip = st.tuples(u8, u8, u8, u8).map(lambda t: ".".join(map(str, t)))
header = {"serial_global": u16, "serial_bytype": u16, "error": st.sampled_from(list(SsmbError))}
flow_key = {
    "orig_src_ipaddr": ip,
    "orig_dst_ipaddr": ip,
    "orig_src_port": u16,
    "orig_dst_port": u16,
    "tos": u8,
    "proto": u8,
    "flags": st.integers(0, 3).map(FlowFlag),
    "tcp_flags": u8,
}
flow = {
    **flow_key,
    **header,
    "new_dst_ipaddr": ip,
    "new_dst_port": u16,
    "next_hop_ipaddr": ip,
    "svr_seq_offset": u32,
    "svr_ack_offset": u32,
    "client_seq_offset": u32,
    "client_ack_offset": u32,
    "flow_id": u32,
}
endflow = {
    **flow_key,
    **header,
    "inbound_bytes": u64,
    "outbound_bytes": u64,
    "inbound_pkts": u64,
    "outbound_pkts": u64,
    "flow_id": u32,
}
app_query = {
    **flow_key,
    **header,
    "new_dst_ipaddr": ip,
    "new_dst_port": u16,
    "next_hop_ipaddr": ip,
    "flow_id": u32,
    "app_data": st.binary(max_size=300),
}

ssmb_messages = st.one_of(
    *[st.builds(cls, **flow) for cls in (ssmb.Query, ssmb.Reply, ssmb.Reap, ssmb.NewFlow)],
    *[st.builds(cls, **endflow) for cls in (ssmb.Delete, ssmb.Stats)],
    st.builds(ssmb.AppQuery, **app_query),
    st.builds(ssmb.Reset, **header),
)

vs = st.builds(
    csmb.VirtualServer,
    flags=st.integers(0, 0xFFF),
    virt_ipaddr=ip,
    virt_port=u16,
    vs_class=st.sampled_from(list(VsClass)),
    proto=u8,
    app_data=st.binary(max_size=64),
)
csmb_header = {"serial_global": u16, "serial_bytype": u16, "error": st.sampled_from(list(CsmbError))}
csmb_messages = st.one_of(
    st.builds(csmb.AddVs, vs=vs, **csmb_header),
    st.builds(csmb.DeleteVs, vs=vs, **csmb_header),
    st.builds(csmb.QueryVs, vs=st.none() | vs, **csmb_header),
    st.builds(csmb.VsList, servers=st.lists(vs, max_size=5).map(tuple), **csmb_header),
    st.builds(csmb.Reset, **csmb_header),
    st.builds(csmb.Status, status=u32, **csmb_header),
    st.builds(
        csmb.Hello,
        ssmb_active_ipaddr=ip,
        ssmb_standby_ipaddr=ip,
        flags=st.integers(0, 0xFFF).map(VsFlag),
        vers_major=u8,
        vers_minor=u8,
        ssmb_port=u16,
        auth_data=st.none() | st.binary(max_size=80),
        **csmb_header,
    ),
    st.builds(csmb.Ack, **csmb_header),
)


@given(st.lists(ssmb_messages, min_size=1, max_size=20))
def test_ssmb_datagram_round_trip(messages: list[ssmb.SsmbMessage]) -> None:
    assert ssmb.decode_datagram(ssmb.encode_datagram(messages)) == messages


@given(csmb_messages)
def test_csmb_round_trip(msg: csmb.CsmbMessage) -> None:
    assert csmb.decode_message(csmb.encode_message(msg)) == msg


def mutations(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid encodings with octets flipped, cut or appended: closer to real garbage than noise."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(base))
        for _ in range(draw(st.integers(0, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(u8)
        cut = draw(st.integers(0, len(data)))
        tail: bytes = draw(st.binary(max_size=16))
        return bytes(data[:cut]) + tail

    return mutate()


ssmb_garbage = st.binary(max_size=200) | mutations(
    st.lists(ssmb_messages, min_size=1, max_size=4).map(ssmb.encode_datagram)
)
csmb_garbage = st.binary(max_size=200) | mutations(
    st.lists(csmb_messages, min_size=1, max_size=3).map(
        lambda ms: b"".join(csmb.encode_message(m) for m in ms)
    )
)


@given(ssmb_garbage)
def test_decode_datagram_raises_only_protocol_error(data: bytes) -> None:
    try:
        messages = ssmb.decode_datagram(data)
    except ProtocolError:
        return
    # Whatever decodes is a valid datagram: it re-encodes and decodes to the same messages
    # (octets may differ only in padding, which receivers ignore).
    assert ssmb.decode_datagram(ssmb.encode_datagram(messages)) == messages


@given(ssmb_garbage)
def test_receiver_never_raises(data: bytes) -> None:
    rx = SsmbReceiver()
    rx.receive(data, ("192.0.2.1", 1), 0.0)
    assert rx.counters["datagrams"] == 1


@given(csmb_garbage)
def test_decode_message_raises_only_protocol_error(data: bytes) -> None:
    try:
        msg = csmb.decode_message(data)
    except ProtocolError:
        return
    assert csmb.decode_message(csmb.encode_message(msg)) == msg


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(csmb_garbage, st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_stream_decoder_random_chunking_raises_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = csmb.StreamDecoder()
    pos = 0
    for size in [*cuts, len(data)]:
        chunk, pos = data[pos : pos + size], pos + size
        try:
            decoder.feed(chunk)
        except ProtocolError:
            assert decoder.failed is not None
            return
    assert decoder.failed is None
    assert decoder.buffered <= len(data)


@given(st.lists(csmb_messages, min_size=1, max_size=6), st.lists(st.integers(1, 50), max_size=40))
def test_stream_decoder_reassembles_any_split(messages: list[csmb.CsmbMessage], cuts: list[int]) -> None:
    wire = b"".join(csmb.encode_message(m) for m in messages)
    decoder = csmb.StreamDecoder()
    out: list[csmb.CsmbMessage] = []
    pos = 0
    for size in cuts:
        out += decoder.feed(wire[pos : pos + size])
        pos += size
    out += decoder.feed(wire[pos:])
    assert out == messages


def test_app_data_limit_is_the_constant() -> None:
    assert ssmb.APP_QUERY_LAYOUT.tail is not None
    assert ssmb.APP_QUERY_LAYOUT.tail.max_len == MAX_APP_DATA_LEN
