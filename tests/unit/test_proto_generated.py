"""The generated codec paths agree with the reference implementation, and the IPv4 memo is safe."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slbproto import csmb, layout, ssmb
from slbproto.constants import CsmbError, VsClass, VsFlag
from slbproto.errors import ProtocolError, UsageError

pytestmark = pytest.mark.unit

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ip = st.tuples(u8, u8, u8, u8).map(lambda t: ".".join(map(str, t)))

# Values a caller might wrongly put in a field: out of range, wrong type, malformed address.
wrong_int = st.sampled_from([-1, 1 << 16, 1 << 32, 1 << 64, 1.5, "1", None, True])
wrong_ip = st.sampled_from(
    ["1", "1.2.3", "01.2.3.4", "1.2.3.256", "0x1.2.3.4", "", b"1.2.3.4", 16909060, None]
)


def maybe(good: st.SearchStrategy[object], bad: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly valid values, sometimes a wrong one."""
    return st.one_of(good, good, good, bad)


vs_any = st.builds(
    csmb.VirtualServer,
    flags=maybe(st.integers(0, 0xFFF), st.sampled_from([1 << 12, 1 << 31]) | wrong_int),
    virt_ipaddr=maybe(ip, wrong_ip),
    virt_port=maybe(u16, wrong_int),
    vs_class=maybe(st.sampled_from([0, *VsClass]), st.just(3) | wrong_int),
    proto=maybe(u8, wrong_int),
    app_data=maybe(st.binary(max_size=40), st.sampled_from(["text", bytearray(b"x"), b"x" * 8193])),
)
header_any = {
    "serial_global": maybe(u16, wrong_int),
    "serial_bytype": maybe(u16, wrong_int),
    "error": maybe(st.sampled_from(list(CsmbError)), st.just(99) | wrong_int),
}
csmb_any = st.one_of(
    st.builds(csmb.AddVs, vs=maybe(vs_any, st.sampled_from([None, "vs"])), **header_any),
    st.builds(csmb.DeleteVs, vs=vs_any, **header_any),
    st.builds(csmb.QueryVs, vs=st.none() | vs_any, **header_any),
    st.builds(csmb.VsList, servers=st.lists(vs_any, max_size=4).map(tuple), **header_any),
    st.builds(csmb.Reset, **header_any),
    st.builds(csmb.Ack, **header_any),
    st.builds(csmb.Status, status=maybe(u32, wrong_int), **header_any),
    st.builds(
        csmb.Hello,
        ssmb_active_ipaddr=maybe(ip, wrong_ip),
        ssmb_standby_ipaddr=maybe(ip, wrong_ip),
        flags=maybe(st.integers(0, 0xFFF).map(VsFlag), st.just(1 << 20) | wrong_int),
        vers_major=maybe(u8, wrong_int),
        vers_minor=maybe(u8, wrong_int),
        ssmb_port=maybe(u16, wrong_int),
        auth_data=st.none() | maybe(st.binary(max_size=40), st.sampled_from(["x", b"x" * 1025])),
        **header_any,
    ),
)


def outcome(fn: object, *args: object) -> tuple[str, object]:
    """What calling fn returns or raises, comparable between two implementations."""
    assert callable(fn)
    try:
        return ("ok", fn(*args))
    except (UsageError, ProtocolError) as exc:
        return (type(exc).__name__, str(exc))


@given(csmb_any)
def test_csmb_encoder_agrees_with_reference(msg: csmb.CsmbMessage) -> None:
    assert outcome(csmb.encode_message, msg) == outcome(csmb._encode_reference, msg)


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """A valid message with octets after the length field changed, cut or appended; length fixed up."""
    good = st.builds(
        csmb.AddVs,
        vs=st.builds(
            csmb.VirtualServer,
            flags=st.integers(0, 0xFFF),
            virt_ipaddr=ip,
            virt_port=u16,
            vs_class=st.sampled_from(list(VsClass)),
            proto=u8,
            app_data=st.binary(max_size=20),
        ),
    )
    msg = draw(csmb_any.filter(lambda m: outcome(csmb.encode_message, m)[0] == "ok") | good)
    data = bytearray(csmb.encode_message(msg))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(8, len(data) - 1))] = draw(u8)
    data = data[: draw(st.integers(12, len(data)))] + draw(st.binary(max_size=12))
    data[4:8] = len(data).to_bytes(4, "big")
    return bytes(data)


@given(framed_garbage())
def test_csmb_decoders_agree_with_reference(data: bytes) -> None:
    fast = outcome(csmb._decode_framed, data, 0, len(data))
    assert fast == outcome(csmb._decode_reference, data, 0, len(data))
    if fast[0] == "ok":
        assert outcome(csmb.StreamDecoder().feed, data) == ("ok", [fast[1]])


def test_decoded_csmb_objects_are_genuine_frozen_instances() -> None:
    vs = csmb.VirtualServer(VsFlag.TRANSLATE_ADDR, "10.0.0.1", 80, VsClass.CS_ASSIST, 6, b"abc")
    for msg in (csmb.AddVs(vs), csmb.VsList((vs, vs)), csmb.Hello("1.2.3.4", "0.0.0.0", 0, 1, 0, 7700)):
        decoded = csmb.decode_message(csmb.encode_message(msg))
        assert type(decoded) is type(msg)
        assert decoded == msg and hash(decoded) == hash(msg)
        assert not hasattr(decoded, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            decoded.error = 1  # type: ignore[misc]
    decoded_vs = csmb.decode_message(csmb.encode_message(csmb.AddVs(vs)))
    assert isinstance(decoded_vs, csmb.AddVs)
    assert type(decoded_vs.vs) is csmb.VirtualServer
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded_vs.vs.app_data = b""  # type: ignore[misc]


def test_virtual_server_subclass_is_left_to_the_reference_encoder() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, repr=False)
    class Tagged(csmb.VirtualServer):
        tag: str = "x"

    vs = Tagged(0, "10.0.0.1", 80, VsClass.CS_ASSIST, 6)
    plain = csmb.VirtualServer(0, "10.0.0.1", 80, VsClass.CS_ASSIST, 6)
    assert csmb.encode_message(csmb.AddVs(vs)) == csmb.encode_message(csmb.AddVs(plain))


def test_generated_source_is_inspectable() -> None:
    text = layout.generated_source(ssmb.Query)
    assert "def pack_Query(" in text and "def unpack_Query(" in text
    text = layout.generated_source(csmb.AddVs)
    assert "def encode_AddVs(" in text and "def decode_AddVs(" in text
    compile(layout.generated_source(csmb.Hello), "<check>", "exec")
    with pytest.raises(UsageError):
        layout.generated_source(int)


# --- the IPv4 memo ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["1", "1.2.3", "01.2.3.4", "1.2.3.256", " 1.2.3.4", "1.2.3.4 ", b"1.2.3.4", 1]
)
def test_memo_never_admits_a_malformed_address(bad: object) -> None:
    good = ssmb.Query("1.2.3.4", "1.2.3.4", 1, 2)
    ssmb.encode_datagram([good])  # memoises "1.2.3.4"
    for _ in range(2):  # the second attempt would hit a wrongly memoised entry
        with pytest.raises(UsageError, match="orig_src_ipaddr"):
            ssmb.encode_datagram([dataclasses.replace(good, orig_src_ipaddr=bad)])  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="virt_ipaddr"):
            csmb.encode_message(csmb.AddVs(csmb.VirtualServer(0, bad, 80, 1, 6)))  # type: ignore[arg-type]


def test_memo_is_bounded_and_stays_correct() -> None:
    layout.clear_ipv4_memo()
    count = layout.IPV4_MEMO_SIZE + 100
    addresses = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count)]
    for address in addresses:
        msg = ssmb.Query(address, "192.0.2.1", 1, 2)
        assert ssmb.decode_datagram(ssmb.encode_datagram([msg])) == [msg]
    assert len(layout._IP_OCTETS) <= layout.IPV4_MEMO_SIZE
    assert len(layout._IP_TEXT) <= layout.IPV4_MEMO_SIZE
    first = ssmb.Query(addresses[0], "192.0.2.1", 1, 2)
    assert ssmb.decode_datagram(ssmb.encode_datagram([first])) == [first]
