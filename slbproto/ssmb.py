"""SSMB: the per-flow state-sharing message bus carried in UDP datagrams.

Each message type is a frozen, slotted dataclass whose wire layout is one :class:`Layout`
table below. The pack and unpack functions are generated from those tables at import time as
straight-line code over one precompiled :class:`struct.Struct` per layout, so the hot path has
no per-field loop.

A datagram holds ``count`` messages back to back; every header repeats the same count.
:func:`decode_datagram` either returns all of them or raises a :class:`ProtocolError`
subclass: a datagram is accepted or dropped whole, never partially.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

from slbproto.constants import (
    MAX_APP_DATA_LEN,
    MAX_SSMB_COUNT,
    SSMB_HEADER_LEN,
    FlowFlag,
    SsmbError,
    SsmbType,
)
from slbproto.errors import (
    AppDataOverrun,
    AppDataTooLong,
    BadCount,
    BadFieldValue,
    CountMismatch,
    ProtocolError,
    TrailingBytes,
    TruncatedMessage,
    UnknownMessageType,
    UsageError,
)
from slbproto.layout import (
    Field,
    Layout,
    Registry,
    Role,
    Tail,
    compile_function,
    format_value,
    ipv4,
    ipv4_unpack_expr,
    pad,
    u8,
    u16,
    u32,
    u64,
)

BytesLike = bytes | bytearray | memoryview

HEADER_FIELDS: Final = (
    u16("serial_global", "sender's serial over all SSMB messages to this receiver; wraps"),
    u16("serial_bytype", "sender's serial for this msg_type to this receiver; wraps"),
    u8("msg_type", "message type", SsmbType, Role.CONST),
    u8(
        "count",
        "messages in this datagram (1 when not batched); equal in every header",
        range(1, MAX_SSMB_COUNT + 1),
        Role.COUNT,
    ),
    u16("error", "error code", SsmbError),
)

_FLOW_ID: Final = u32("flow_id", "flow id chosen by the DFS; NEWFLOW ids have the top bit set")

_FLOW_KEY: Final = (
    ipv4("orig_src_ipaddr", "original source address"),
    ipv4("orig_dst_ipaddr", "original destination address"),
    u16("orig_src_port", "original TCP/UDP source port"),
    u16("orig_dst_port", "original TCP/UDP destination port"),
    u8("tos", "IP type of service"),
    u8("proto", "IP protocol (6 TCP, 17 UDP)"),
    u8("flags", "flow flags", FlowFlag),
    u8("tcp_flags", "TCP flags of the packet that triggered the message"),
)

_FLOW_TARGET: Final = (
    ipv4("new_dst_ipaddr", "translated destination address"),
    u16("new_dst_port", "translated destination port"),
    pad(2),
    ipv4("next_hop_ipaddr", "next hop for the flow"),
)

HEADER_LAYOUT: Final = Layout(
    "SSMB header", HEADER_FIELDS, "Starts every SSMB message.", expected_size=SSMB_HEADER_LEN
)

FLOW_LAYOUT: Final = Layout(
    "Flow message",
    HEADER_FIELDS
    + _FLOW_KEY
    + _FLOW_TARGET
    + (
        u32("svr_seq_offset", "added to server->client sequence numbers (ADD_TCP_OFFSET)"),
        u32("svr_ack_offset", "added to server->client acknowledgement numbers"),
        u32("client_seq_offset", "added to client->server sequence numbers"),
        u32("client_ack_offset", "added to client->server acknowledgement numbers"),
        _FLOW_ID,
    ),
    "QUERY, REPLY, REAP, NEWFLOW.",
    expected_size=56,
)

APP_QUERY_LAYOUT: Final = Layout(
    "Application proxy query",
    HEADER_FIELDS
    + _FLOW_KEY
    + _FLOW_TARGET
    + (
        _FLOW_ID,
        pad(2),
        u16("app_data_len", "octets of app_data", range(0, MAX_APP_DATA_LEN + 1), Role.LENGTH),
    ),
    "APP_QUERY: the flow message through next_hop_ipaddr, then flow_id and app_data.",
    tail=Tail(
        "app_data",
        "app_data_len",
        MAX_APP_DATA_LEN,
        "cookie value, HTTP request head, SSL/TLS session id or first client bytes",
    ),
    expected_size=44,
)

ENDFLOW_LAYOUT: Final = Layout(
    "Endflow message",
    HEADER_FIELDS
    + _FLOW_KEY
    + (
        u64("inbound_bytes", "client->server octets seen by the DFS"),
        u64("outbound_bytes", "server->client octets seen by the DFS"),
        u64("inbound_pkts", "client->server packets"),
        u64("outbound_pkts", "server->client packets"),
        _FLOW_ID,
    ),
    "DELETE, STATS.",
    expected_size=60,
)

RESET_LAYOUT: Final = Layout(
    "Reset", HEADER_FIELDS, "RESET: the header alone.", expected_size=SSMB_HEADER_LEN
)


class SsmbMessage:
    """Base of every SSMB message class."""

    __slots__ = ()
    MSG_TYPE: ClassVar[SsmbType]
    LAYOUT: ClassVar[Layout]
    serial_global: int
    serial_bytype: int
    error: int

    def __repr__(self) -> str:
        by_name = {f.name: f for f in self.LAYOUT.fields}
        parts = []
        for dc_field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, dc_field.name)
            spec = by_name.get(dc_field.name)
            parts.append(f"{dc_field.name}={format_value(spec, value) if spec else repr(value)}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True, repr=False)
class _FlowMessage(SsmbMessage):
    orig_src_ipaddr: str
    orig_dst_ipaddr: str
    orig_src_port: int
    orig_dst_port: int
    tos: int = 0
    proto: int = 6
    flags: int = 0
    tcp_flags: int = 0
    new_dst_ipaddr: str = "0.0.0.0"
    new_dst_port: int = 0
    next_hop_ipaddr: str = "0.0.0.0"
    svr_seq_offset: int = 0
    svr_ack_offset: int = 0
    client_seq_offset: int = 0
    client_ack_offset: int = 0
    flow_id: int = 0
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    LAYOUT: ClassVar[Layout] = FLOW_LAYOUT


@dataclass(frozen=True, slots=True, repr=False)
class Query(_FlowMessage):
    """DFS -> CS: how should this new flow be handled?"""

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.QUERY


@dataclass(frozen=True, slots=True, repr=False)
class Reply(_FlowMessage):
    """CS -> DFS: instructions for the flow named by flow_id."""

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.REPLY


@dataclass(frozen=True, slots=True, repr=False)
class Reap(_FlowMessage):
    """CS -> DFS: delete this flow (its timer expired at the CS)."""

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.REAP


@dataclass(frozen=True, slots=True, repr=False)
class NewFlow(_FlowMessage):
    """CS -> DFS: prepare to handle a flow the CS set up."""

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.NEWFLOW


@dataclass(frozen=True, slots=True, repr=False)
class AppQuery(SsmbMessage):
    """DFS -> CS: QUERY carrying application data (cookie, HTTP head, session id, raw bytes)."""

    orig_src_ipaddr: str
    orig_dst_ipaddr: str
    orig_src_port: int
    orig_dst_port: int
    tos: int = 0
    proto: int = 6
    flags: int = 0
    tcp_flags: int = 0
    new_dst_ipaddr: str = "0.0.0.0"
    new_dst_port: int = 0
    next_hop_ipaddr: str = "0.0.0.0"
    flow_id: int = 0
    app_data: bytes = b""
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.APP_QUERY
    LAYOUT: ClassVar[Layout] = APP_QUERY_LAYOUT


@dataclass(frozen=True, slots=True, repr=False)
class _EndflowMessage(SsmbMessage):
    orig_src_ipaddr: str
    orig_dst_ipaddr: str
    orig_src_port: int
    orig_dst_port: int
    tos: int = 0
    proto: int = 6
    flags: int = 0
    tcp_flags: int = 0
    inbound_bytes: int = 0
    outbound_bytes: int = 0
    inbound_pkts: int = 0
    outbound_pkts: int = 0
    flow_id: int = 0
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    LAYOUT: ClassVar[Layout] = ENDFLOW_LAYOUT


@dataclass(frozen=True, slots=True, repr=False)
class Delete(_EndflowMessage):
    """DFS -> CS: the flow ended at the DFS; final counters."""

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.DELETE


@dataclass(frozen=True, slots=True, repr=False)
class Stats(_EndflowMessage):
    """DFS -> CS: counters answering REAP (error CONNALIVE: the flow is still alive)."""

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.STATS


@dataclass(frozen=True, slots=True, repr=False)
class Reset(SsmbMessage):
    """Either side: delete all flows."""

    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[SsmbType] = SsmbType.RESET
    LAYOUT: ClassVar[Layout] = RESET_LAYOUT


AnySsmbMessage = Query | AppQuery | Reply | Delete | Reap | Stats | NewFlow | Reset

REGISTRY: Final[Registry[SsmbMessage]] = Registry("SSMB")

# Generated per class: pack(msg, count, serial_global, serial_bytype) -> bytes and
# unpack(buf, offset, end) -> (msg, next_offset).
PackFn = Callable[[Any, int, int, int], bytes]
UnpackFn = Callable[[BytesLike, int, int], tuple[SsmbMessage, int]]
_PACKERS: dict[type[SsmbMessage], PackFn] = {}
_UNPACKERS: dict[int, tuple[int, UnpackFn]] = {}


def _explain_pack_failure(cls: type[SsmbMessage], msg: Any, count: int, sg: int, sb: int) -> None:
    """Turn a failed pack into a UsageError naming the offending field."""
    layout = cls.LAYOUT
    if not isinstance(msg, cls):
        raise UsageError(f"expected {cls.__name__}, got {type(msg).__name__}")
    for name, value in (("count", count), ("serial_global", sg), ("serial_bytype", sb)):
        spec = next(f for f in layout.fields if f.name == name)
        problem = spec.problem(value)
        if problem is not None:
            raise UsageError(f"{cls.__name__}: {problem}")
    values = {f.name: getattr(msg, f.name) for f in layout.fields if f.role is Role.VALUE}
    layout.validate(values, cls.__name__)
    if layout.tail is not None:
        data = getattr(msg, layout.tail.attr)
        if not isinstance(data, bytes):
            raise UsageError(f"{cls.__name__}: {layout.tail.attr} must be bytes")
        if len(data) > layout.tail.max_len:
            raise UsageError(
                f"{cls.__name__}: {layout.tail.attr} is {len(data)} octets, max {layout.tail.max_len}"
            )
    raise UsageError(f"{cls.__name__}: cannot pack {msg!r}")


def _generate(cls: type[SsmbMessage]) -> tuple[PackFn, UnpackFn]:
    """Generate straight-line pack and unpack functions for one message class."""
    layout = cls.LAYOUT
    tail = layout.tail
    name = cls.__name__
    ns = layout.namespace()
    # A mutable twin with the same slot layout (CPython allows __class__ assignment between
    # classes whose slots match); see the end of the generated unpack.
    slotted = next(c for c in cls.__mro__ if c.__dict__.get("__slots__"))
    builder = type(f"_{name}Builder", (SsmbMessage,), {"__slots__": slotted.__dict__["__slots__"]})
    ns.update(
        _S=layout.struct,
        _C=cls,
        _B=builder,
        _new=object.__new__,
        _setattr=object.__setattr__,
        _fields=layout.fields,
        _explain=_explain_pack_failure,
        _Bad=BadFieldValue,
        _TooLong=AppDataTooLong,
        _Overrun=AppDataOverrun,
        _struct_error=struct.error,
    )

    def pack_expr(f: Field) -> str:
        if f.role is Role.CONST:
            return str(int(cls.MSG_TYPE))
        if f.role is Role.COUNT:
            return "count"
        if f.role is Role.LENGTH:
            return "n"
        if f.name == "serial_global":
            return "sg"
        if f.name == "serial_bytype":
            return "sb"
        return f"m.{f.name}"

    def checked_var(f: Field) -> str | None:
        return f"m.{f.name}" if f.role is Role.VALUE else None

    bad = layout.bad_condition(checked_var)
    src = [f"def pack_{name}(m, count, sg, sb):", "    try:"]
    if bad is not None:
        src += [f"        if {bad}:", "            raise ValueError"]
    if tail is None:
        src.append(f"        return _S.pack({layout.pack_args(pack_expr)})")
    else:
        src += [
            f"        data = m.{tail.attr}",
            "        n = len(data)",
            f"        if n > {tail.max_len} or type(data) is not bytes:",
            "            raise ValueError",
            f"        return _S.pack({layout.pack_args(pack_expr)}) + data",
        ]
    src += [
        "    except (_struct_error, OSError, TypeError, ValueError, AttributeError) as exc:",
        "        _explain(_C, m, count, sg, sb)",
        "        raise AssertionError('unreachable') from exc",
    ]
    pack_fn = compile_function("\n".join(src) + "\n", dict(ns), f"pack_{name}", cls)

    variables = {f.name: f"v_{f.name}" for f in layout.value_fields()}
    offset_of = dict(layout.offsets)
    index_of = {f.name: i for i, f in enumerate(layout.fields)}

    def unpack_var(f: Field) -> str | None:
        return variables[f.name] if f.role is Role.VALUE else None

    raise_fmt = "raise _Bad(_fields[{f}].name, {v}, _fields[{f}].allowed_text(), offset=off + %s)"
    lines = [
        f"def unpack_{name}(buf, off, end):",
        f"    ({', '.join(variables.values())},) = _S.unpack_from(buf, off)",
    ]
    for f in layout.fields:
        bad = f.bad_expr(variables.get(f.name, "")) if f.role is Role.VALUE else None
        if bad is not None:
            lines.append(f"    if {bad}:")
            lines.append(
                "        " + raise_fmt.format(f=index_of[f.name], v=variables[f.name]) % offset_of[f.name]
            )
    lines.append("    o = _new(_B)")
    for f in layout.value_fields():
        if f.role is not Role.VALUE:
            continue
        value = ipv4_unpack_expr(variables[f.name]) if f.ipv4 else variables[f.name]
        lines.append(f"    o.{f.name} = {value}")
    if tail is None:
        lines.append(f"    stop = off + {layout.size}")
    else:
        n = variables[tail.length_field]
        lines += [
            f"    if {n} > {tail.max_len}:",
            f"        raise _TooLong('{tail.length_field}={{}} > {tail.max_len}'.format({n}),"
            f" offset=off + {offset_of[tail.length_field]})",
            f"    stop = off + {layout.size} + {n}",
            "    if stop > end:",
            f"        raise _Overrun('{tail.length_field}={{}} but only {{}} octets follow'"
            f".format({n}, end - off - {layout.size}), offset=off + {offset_of[tail.length_field]})",
            f"    o.{tail.attr} = bytes(buf[off + {layout.size}:stop])",
        ]
    # Builder instances take plain slot stores; switching __class__ afterwards yields a
    # genuine frozen instance far faster than the dataclass __init__'s object.__setattr__ calls.
    lines += ["    _setattr(o, '__class__', _C)", "    return o, stop"]
    unpack_fn = compile_function("\n".join(lines) + "\n", dict(ns), f"unpack_{name}", cls)
    return pack_fn, unpack_fn


def _register(cls: type[SsmbMessage]) -> None:
    REGISTRY.register(int(cls.MSG_TYPE), cls)
    pack_fn, unpack_fn = _generate(cls)
    _PACKERS[cls] = pack_fn
    _UNPACKERS[int(cls.MSG_TYPE)] = (cls.LAYOUT.size, unpack_fn)


for _cls in (Query, AppQuery, Reply, Delete, Reap, Stats, NewFlow, Reset):
    _register(_cls)
assert {code for code, _ in REGISTRY} == {int(t) for t in SsmbType}


def message_size(msg: SsmbMessage) -> int:
    """Octets msg occupies on the wire."""
    if isinstance(msg, AppQuery):
        return APP_QUERY_LAYOUT.size + len(msg.app_data)
    return msg.LAYOUT.size


def encode_with_serials(msg: SsmbMessage, count: int, serial_global: int, serial_bytype: int) -> bytes:
    """Pack one message with the given datagram count and serials (overriding the message's)."""
    try:
        pack_fn = _PACKERS[type(msg)]
    except KeyError:
        raise UsageError(f"not an SSMB message: {msg!r}") from None
    return pack_fn(msg, count, serial_global, serial_bytype)


def encode_datagram(messages: Sequence[SsmbMessage]) -> bytes:
    """One datagram holding messages back to back, each header carrying count=len(messages)."""
    n = len(messages)
    if not 1 <= n <= MAX_SSMB_COUNT:
        raise UsageError(f"a datagram holds 1..{MAX_SSMB_COUNT} messages, not {n}")
    try:
        if n == 1:
            m = messages[0]
            return _PACKERS[type(m)](m, 1, m.serial_global, m.serial_bytype)
        return b"".join([_PACKERS[type(m)](m, n, m.serial_global, m.serial_bytype) for m in messages])
    except KeyError:
        raise UsageError("encode_datagram takes SSMB message objects only") from None


def decode_datagram(data: BytesLike) -> list[SsmbMessage]:
    """All messages of one datagram, or ProtocolError; never a partial result."""
    end = len(data)
    if end < SSMB_HEADER_LEN:
        raise TruncatedMessage(f"datagram of {end} octets is shorter than the 8-octet header")
    count = data[5]
    if count == 1:
        # The common unbatched datagram: one lookup, no loop.
        entry = _UNPACKERS.get(data[4])
        if entry is not None and entry[0] <= end:
            msg, stop = entry[1](data, 0, end)
            if stop != end:
                raise TrailingBytes(f"{end - stop} octets after 1 message(s)", offset=stop)
            return [msg]
    elif count == 0:
        raise BadCount("count is 0", offset=5)
    out: list[SsmbMessage] = []
    off = 0
    unpackers = _UNPACKERS
    for index in range(count):
        if off + SSMB_HEADER_LEN > end:
            raise TruncatedMessage(f"datagram ends after {index} of {count} messages", offset=off)
        msg_type = data[off + 4]
        entry = unpackers.get(msg_type)
        if entry is None:
            raise UnknownMessageType(f"SSMB msg_type {msg_type}", offset=off + 4)
        if data[off + 5] != count:
            raise CountMismatch(
                f"message {index} says count {data[off + 5]}, first says {count}", offset=off + 5
            )
        size, unpack = entry
        if off + size > end:
            raise TruncatedMessage(
                f"{SsmbType(msg_type).name} needs {size} octets, {end - off} left", offset=off
            )
        msg, off = unpack(data, off, end)
        out.append(msg)
    if off != end:
        raise TrailingBytes(f"{end - off} octets after {count} message(s)", offset=off)
    return out


def decode_one(data: BytesLike) -> SsmbMessage:
    """The single message of a datagram; ProtocolError if it holds more or fewer."""
    messages = decode_datagram(data)
    if len(messages) != 1:
        raise BadCount(f"expected one message, datagram holds {len(messages)}")
    return messages[0]


__all__ = [
    "APP_QUERY_LAYOUT",
    "ENDFLOW_LAYOUT",
    "FLOW_LAYOUT",
    "HEADER_LAYOUT",
    "REGISTRY",
    "RESET_LAYOUT",
    "AnySsmbMessage",
    "AppQuery",
    "Delete",
    "NewFlow",
    "ProtocolError",
    "Query",
    "Reap",
    "Reply",
    "Reset",
    "SsmbMessage",
    "Stats",
    "decode_datagram",
    "decode_one",
    "encode_datagram",
    "encode_with_serials",
    "message_size",
]
