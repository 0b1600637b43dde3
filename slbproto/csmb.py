"""CSMB: the configuration message bus carried on a TCP stream.

Every message starts with the 12-octet header whose ``msg_length`` (header included) delimits
it. :func:`encode_message` / :func:`decode_message` handle one complete message;
:class:`StreamDecoder` cuts a byte stream into messages, tolerating partial reads and several
messages per read.

Error policy: CSMB is the reliable configuration channel, so a message that cannot be decoded
means the peers' configuration may already differ. Any :class:`ProtocolError` therefore puts the
:class:`StreamDecoder` into a failed state, and the owner must close the connection; the
reconnect runs HELLO, RESET and ADD_VS again and resynchronises both sides. After a
:class:`~slbproto.errors.FramingError` (a lying ``msg_length``) resynchronising in place is
impossible anyway.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar, Final

from slbproto.constants import (
    CSMB_HEADER_LEN,
    MAX_APP_DATA_LEN,
    MAX_CSMB_LENGTH,
    CsmbError,
    CsmbType,
    VsClass,
    VsFlag,
)
from slbproto.errors import (
    AppDataOverrun,
    AppDataTooLong,
    BadFieldValue,
    BadLength,
    LengthTooLarge,
    ProtocolError,
    StreamFailed,
    TrailingBytes,
    TruncatedMessage,
    UnknownMessageType,
    UsageError,
    VsListOverrun,
)
from slbproto.layout import (
    Field,
    Layout,
    Registry,
    Role,
    Tail,
    compile_function,
    construct_lines,
    format_value,
    ipv4,
    ipv4_unpack_expr,
    pad,
    u8,
    u16,
    u32,
)

BytesLike = bytes | bytearray | memoryview

MAX_AUTH_DATA_LEN: Final = 1024
POOL_ENTRY_LEN: Final = 8

HEADER_FIELDS: Final = (
    u16("serial_global", "sender's serial over all CSMB messages on this connection; wraps"),
    u16("serial_bytype", "sender's serial for this msg_type on this connection; wraps"),
    u32(
        "msg_length",
        "octets of the whole message, header included",
        range(CSMB_HEADER_LEN, MAX_CSMB_LENGTH + 1),
        Role.LENGTH,
    ),
    u8("msg_type", "message type", CsmbType, Role.CONST),
    pad(1),
    u16("error", "error code", CsmbError),
)

HEADER_LAYOUT: Final = Layout(
    "CSMB header", HEADER_FIELDS, "Starts every CSMB message.", expected_size=CSMB_HEADER_LEN
)

VS_LAYOUT: Final = Layout(
    "Virtual server definition",
    (
        u32("flags", "virtual server flags", VsFlag),
        ipv4("virt_ipaddr", "virtual IP address"),
        u16("virt_port", "virtual TCP/UDP port"),
        u8(
            "vs_class",
            "0 = unspecified (DELETE_VS and QUERY_VS filter only), 1 CS_ASSIST, 2 DFS_ASSIST",
            range(0, 3),
        ),
        u8("proto", "IP protocol (6 TCP, 17 UDP)"),
        pad(2),
        u16("app_data_len", "octets of app_data", range(0, MAX_APP_DATA_LEN + 1), Role.LENGTH),
    ),
    "Body of ADD_VS and DELETE_VS, optional body of QUERY_VS, repeated in VS_LIST. "
    "16 + app_data_len octets, zero-padded to a multiple of 4.",
    tail=Tail(
        "app_data",
        "app_data_len",
        MAX_APP_DATA_LEN,
        "cookie name (COOKIE_PROXY) or the pool (DFS_ASSIST), then zero padding to 4",
        align=4,
    ),
    expected_size=16,
)

POOL_ENTRY_LAYOUT: Final = Layout(
    "Pool entry",
    (
        ipv4("ipaddr", "real server address"),
        u16("port", "real server port"),
        u16("weight", "relative weight (0 = drain: no new flows)"),
    ),
    "app_data of a DFS_ASSIST virtual server: one entry per real server.",
    expected_size=POOL_ENTRY_LEN,
)

HELLO_LAYOUT: Final = Layout(
    "HELLO",
    (
        *HEADER_FIELDS,
        ipv4("ssmb_active_ipaddr", "sender's own SSMB address (the active CS when sent by a CS)"),
        ipv4("ssmb_standby_ipaddr", "standby CS SSMB address, 0.0.0.0 if none (CS only)"),
        u32("flags", "capabilities: REDUNDANT, APP_PROXY", VsFlag),
        u8("vers_major", "protocol major version"),
        u8("vers_minor", "protocol minor version"),
        u16("ssmb_port", "sender's SSMB UDP port"),
    ),
    "Version, capabilities and SSMB endpoint; optionally followed by authentication.",
    expected_size=28,
)

HELLO_AUTH_LAYOUT: Final = Layout(
    "HELLO authentication (optional)",
    (u16("auth_data_len", "octets of auth_data", range(0, MAX_AUTH_DATA_LEN + 1), Role.LENGTH),),
    "Present when msg_length > 28: HMAC data, see Authentication.",
    tail=Tail(
        "auth_data",
        "auth_data_len",
        MAX_AUTH_DATA_LEN,
        "nonce (16) followed by HMAC-SHA256 (32)",
        optional=True,
    ),
    expected_size=2,
)

STATUS_LAYOUT: Final = Layout(
    "STATUS",
    (*HEADER_FIELDS, u32("status", "status word (project use: 0 = healthy)")),
    "House keeping.",
    expected_size=16,
)

_HEADER: Final = HEADER_LAYOUT.struct
_VS: Final = VS_LAYOUT.struct
_HELLO_BODY_LEN: Final = HELLO_LAYOUT.size - CSMB_HEADER_LEN
_STATUS_BODY: Final = struct.Struct(">I")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
assert _STATUS_BODY.size == STATUS_LAYOUT.size - CSMB_HEADER_LEN


def _repr(obj: object, layouts: Sequence[Layout]) -> str:
    specs = {f.name: f for layout in layouts for f in layout.fields}
    parts = []
    for dc_field in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, dc_field.name)
        spec = specs.get(dc_field.name)
        parts.append(f"{dc_field.name}={format_value(spec, value) if spec else repr(value)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True, repr=False)
class VirtualServer:
    """One virtual server definition (ADD_VS, DELETE_VS, QUERY_VS filter, VS_LIST entry)."""

    flags: int
    virt_ipaddr: str
    virt_port: int
    vs_class: int
    proto: int
    app_data: bytes = b""

    def __repr__(self) -> str:
        return _repr(self, (VS_LAYOUT,))

    @property
    def key(self) -> tuple[str, int, int]:
        """(virt_ipaddr, virt_port, proto): what identifies a virtual server."""
        return (self.virt_ipaddr, self.virt_port, self.proto)


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """A real server of a DFS_ASSIST virtual server."""

    ipaddr: str
    port: int
    weight: int = 1


def encode_pool(entries: Iterable[PoolEntry]) -> bytes:
    """app_data for a DFS_ASSIST virtual server."""
    return b"".join(
        POOL_ENTRY_LAYOUT.encode({"ipaddr": e.ipaddr, "port": e.port, "weight": e.weight}) for e in entries
    )


def decode_pool(data: BytesLike) -> tuple[PoolEntry, ...]:
    """Pool entries from DFS_ASSIST app_data; ProtocolError if not a whole number of entries."""
    if len(data) % POOL_ENTRY_LEN:
        raise BadFieldValue("app_data", len(data), "a multiple of 8 octets (pool entries)")
    out = []
    for off in range(0, len(data), POOL_ENTRY_LEN):
        v = POOL_ENTRY_LAYOUT.decode(data, off)
        out.append(PoolEntry(v["ipaddr"], v["port"], v["weight"]))
    return tuple(out)


class CsmbMessage:
    """Base of every CSMB message class."""

    __slots__ = ()
    MSG_TYPE: ClassVar[CsmbType]
    LAYOUTS: ClassVar[tuple[Layout, ...]]
    serial_global: int
    serial_bytype: int
    error: int

    def __repr__(self) -> str:
        return _repr(self, self.LAYOUTS)


@dataclass(frozen=True, slots=True, repr=False)
class AddVs(CsmbMessage):
    """CS -> DFS: add or modify a virtual server."""

    vs: VirtualServer
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.ADD_VS
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (HEADER_LAYOUT, VS_LAYOUT)


@dataclass(frozen=True, slots=True, repr=False)
class DeleteVs(CsmbMessage):
    """CS -> DFS: delete a virtual server (only its address, port and proto matter)."""

    vs: VirtualServer
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.DELETE_VS
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (HEADER_LAYOUT, VS_LAYOUT)


@dataclass(frozen=True, slots=True, repr=False)
class QueryVs(CsmbMessage):
    """Ask for the configured virtual servers; vs is an optional filter."""

    vs: VirtualServer | None = None
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.QUERY_VS
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (HEADER_LAYOUT, VS_LAYOUT)


@dataclass(frozen=True, slots=True, repr=False)
class VsList(CsmbMessage):
    """The configured virtual servers."""

    servers: tuple[VirtualServer, ...] = ()
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.VS_LIST
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (HEADER_LAYOUT, VS_LAYOUT)


@dataclass(frozen=True, slots=True, repr=False)
class Reset(CsmbMessage):
    """Delete all virtual servers."""

    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.RESET
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (HEADER_LAYOUT,)


@dataclass(frozen=True, slots=True, repr=False)
class Status(CsmbMessage):
    """House keeping: a 32-bit status word."""

    status: int
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.STATUS
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (STATUS_LAYOUT,)


@dataclass(frozen=True, slots=True, repr=False)
class Hello(CsmbMessage):
    """Version, capabilities and the sender's SSMB endpoint; answered by ACK."""

    ssmb_active_ipaddr: str
    ssmb_standby_ipaddr: str
    flags: int
    vers_major: int
    vers_minor: int
    ssmb_port: int
    auth_data: bytes | None = None
    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.HELLO
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (HELLO_LAYOUT, HELLO_AUTH_LAYOUT)

    @property
    def version(self) -> tuple[int, int]:
        """(vers_major, vers_minor)."""
        return (self.vers_major, self.vers_minor)


@dataclass(frozen=True, slots=True, repr=False)
class Ack(CsmbMessage):
    """Answer to HELLO (and RESET); error carries the result."""

    serial_global: int = 0
    serial_bytype: int = 0
    error: int = 0

    MSG_TYPE: ClassVar[CsmbType] = CsmbType.ACK
    LAYOUTS: ClassVar[tuple[Layout, ...]] = (HEADER_LAYOUT,)


AnyCsmbMessage = AddVs | DeleteVs | QueryVs | VsList | Reset | Status | Hello | Ack

REGISTRY: Final[Registry[CsmbMessage]] = Registry("CSMB")
for _cls in (AddVs, DeleteVs, QueryVs, VsList, Reset, Status, Hello, Ack):
    REGISTRY.register(int(_cls.MSG_TYPE), _cls)
assert {code for code, _ in REGISTRY} == {int(t) for t in CsmbType}


# --- encoding -------------------------------------------------------------------------------


def encode_vs(vs: VirtualServer) -> bytes:
    """One virtual server definition, zero-padded to a multiple of 4 octets."""
    if not isinstance(vs, VirtualServer):
        raise UsageError(f"expected VirtualServer, got {type(vs).__name__}")
    data = vs.app_data
    if not isinstance(data, bytes):
        raise UsageError("VirtualServer.app_data must be bytes")
    if len(data) > MAX_APP_DATA_LEN:
        raise UsageError(f"VirtualServer.app_data is {len(data)} octets, max {MAX_APP_DATA_LEN}")
    fixed = VS_LAYOUT.encode(
        {
            "flags": vs.flags,
            "virt_ipaddr": vs.virt_ipaddr,
            "virt_port": vs.virt_port,
            "vs_class": vs.vs_class,
            "proto": vs.proto,
            "app_data_len": len(data),
        },
        "VirtualServer",
    )
    return fixed + data + b"\0" * (-len(data) % 4)


def _require_class(vs: VirtualServer, where: str) -> None:
    if not isinstance(vs, VirtualServer):
        raise UsageError(f"{where}: expected VirtualServer, got {type(vs).__name__}")
    if vs.vs_class not in (VsClass.CS_ASSIST, VsClass.DFS_ASSIST):
        raise UsageError(f"{where}: vs_class must be CS_ASSIST or DFS_ASSIST, not {vs.vs_class}")


def _encode_body(msg: CsmbMessage) -> bytes:
    if isinstance(msg, AddVs):
        _require_class(msg.vs, "AddVs")
        return encode_vs(msg.vs)
    if isinstance(msg, DeleteVs):
        return encode_vs(msg.vs)
    if isinstance(msg, QueryVs):
        return b"" if msg.vs is None else encode_vs(msg.vs)
    if isinstance(msg, VsList):
        for vs in msg.servers:
            _require_class(vs, "VsList")
        return b"".join(encode_vs(vs) for vs in msg.servers)
    if isinstance(msg, (Reset, Ack)):
        return b""
    if isinstance(msg, Status):
        return _encode_fixed(msg, STATUS_LAYOUT)[CSMB_HEADER_LEN:]
    if isinstance(msg, Hello):
        body = _encode_fixed(msg, HELLO_LAYOUT)[CSMB_HEADER_LEN:]
        if msg.auth_data is None:
            return body
        if not isinstance(msg.auth_data, bytes) or len(msg.auth_data) > MAX_AUTH_DATA_LEN:
            raise UsageError(f"Hello.auth_data must be bytes of at most {MAX_AUTH_DATA_LEN} octets")
        return body + _U16.pack(len(msg.auth_data)) + msg.auth_data
    raise UsageError(f"not a CSMB message: {msg!r}")


def _encode_fixed(msg: CsmbMessage, layout: Layout) -> bytes:
    """Pack a message whose layout is the header plus fixed fields (length filled in later)."""
    values: dict[str, object] = {f.name: getattr(msg, f.name) for f in layout.fields if f.role is Role.VALUE}
    values.update(msg_length=layout.size, msg_type=int(msg.MSG_TYPE))
    return layout.encode(values, type(msg).__name__)


def _header_values(msg: CsmbMessage) -> dict[str, object]:
    return {"serial_global": msg.serial_global, "serial_bytype": msg.serial_bytype, "error": msg.error}


def _encode_reference(msg: CsmbMessage) -> bytes:
    """encode_message, field by field: the authority the generated encoders defer to."""
    body = _encode_body(msg)
    length = CSMB_HEADER_LEN + len(body)
    if length > MAX_CSMB_LENGTH:
        raise UsageError(f"{type(msg).__name__} would be {length} octets, max {MAX_CSMB_LENGTH}")
    header = HEADER_LAYOUT.encode(
        {**_header_values(msg), "msg_length": length, "msg_type": int(msg.MSG_TYPE)},
        type(msg).__name__,
    )
    return header + body


# --- decoding -------------------------------------------------------------------------------


def decode_vs(buf: BytesLike, off: int, end: int) -> tuple[VirtualServer, int]:
    """The VS definition at off (within end); returns it and the offset after its padding."""
    if end - off < VS_LAYOUT.size:
        raise VsListOverrun(f"VS definition needs {VS_LAYOUT.size} octets, {end - off} left", offset=off)
    v = VS_LAYOUT.decode(buf, off)
    n = v["app_data_len"]
    if n > MAX_APP_DATA_LEN:
        raise AppDataTooLong(f"app_data_len={n} > {MAX_APP_DATA_LEN}", offset=off + 14)
    data_end = off + VS_LAYOUT.size + n
    stop = data_end + (-n % 4)
    if stop > end:
        raise VsListOverrun(
            f"VS definition with app_data_len={n} needs {stop - off} octets, {end - off} left",
            offset=off + 14,
        )
    vs = VirtualServer(
        v["flags"],
        v["virt_ipaddr"],
        v["virt_port"],
        v["vs_class"],
        v["proto"],
        bytes(buf[off + VS_LAYOUT.size : data_end]),
    )
    return vs, stop


def _classified(vs: VirtualServer, off: int) -> VirtualServer:
    if vs.vs_class == 0:
        raise BadFieldValue("vs_class", 0, "CS_ASSIST=1, DFS_ASSIST=2", offset=off + 10)
    return vs


def _decode_body(msg_type: int, buf: BytesLike, off: int, end: int, header: dict[str, int]) -> CsmbMessage:
    body_len = end - off
    if msg_type in (CsmbType.ADD_VS, CsmbType.DELETE_VS) or (msg_type == CsmbType.QUERY_VS and body_len):
        vs, stop = decode_vs(buf, off, end)
        if stop != end:
            raise BadLength(f"{end - stop} octets after the VS definition", offset=stop)
        if msg_type == CsmbType.ADD_VS:
            return AddVs(_classified(vs, off), **header)
        if msg_type == CsmbType.DELETE_VS:
            return DeleteVs(vs, **header)
        return QueryVs(vs, **header)
    if msg_type == CsmbType.QUERY_VS:
        return QueryVs(None, **header)
    if msg_type == CsmbType.VS_LIST:
        servers = []
        while off < end:
            vs, next_off = decode_vs(buf, off, end)
            servers.append(_classified(vs, off))
            off = next_off
        return VsList(tuple(servers), **header)
    if msg_type in (CsmbType.RESET, CsmbType.ACK):
        if body_len:
            raise BadLength(f"{CsmbType(msg_type).name} has no body, got {body_len} octets", offset=off)
        return Reset(**header) if msg_type == CsmbType.RESET else Ack(**header)
    if msg_type == CsmbType.STATUS:
        if body_len != _STATUS_BODY.size:
            raise BadLength(f"STATUS body is 4 octets, got {body_len}", offset=off)
        (status,) = _STATUS_BODY.unpack_from(buf, off)
        return Status(status, **header)
    # HELLO
    if body_len < _HELLO_BODY_LEN:
        raise BadLength(f"HELLO body is at least 16 octets, got {body_len}", offset=off)
    v = HELLO_LAYOUT.decode(buf, off - CSMB_HEADER_LEN)
    auth: bytes | None = None
    auth_off = off + _HELLO_BODY_LEN
    if body_len > _HELLO_BODY_LEN:
        if body_len < _HELLO_BODY_LEN + 2:
            raise BadLength("HELLO has 1 octet where auth_data_len (2) belongs", offset=auth_off)
        (auth_len,) = _U16.unpack_from(buf, auth_off)
        if auth_len > MAX_AUTH_DATA_LEN:
            raise AppDataTooLong(f"auth_data_len={auth_len} > {MAX_AUTH_DATA_LEN}", offset=auth_off)
        if auth_off + 2 + auth_len != end:
            raise AppDataOverrun(
                f"auth_data_len={auth_len} but {end - auth_off - 2} octets follow",
                offset=auth_off,
            )
        auth = bytes(buf[auth_off + 2 : end])
    return Hello(
        v["ssmb_active_ipaddr"],
        v["ssmb_standby_ipaddr"],
        v["flags"],
        v["vers_major"],
        v["vers_minor"],
        v["ssmb_port"],
        auth,
        **header,
    )


def decode_message(data: BytesLike) -> CsmbMessage:
    """One complete CSMB message (exactly msg_length octets); ProtocolError otherwise."""
    end = len(data)
    if end < CSMB_HEADER_LEN:
        raise TruncatedMessage(f"{end} octets, the CSMB header alone is {CSMB_HEADER_LEN}")
    length = _check_length(data, 0)
    if length > end:
        raise TruncatedMessage(f"msg_length={length} but only {end} octets")
    if length < end:
        raise TrailingBytes(f"{end - length} octets after msg_length={length}", offset=length)
    return _decode_framed(data, 0, end)


def _check_length(buf: BytesLike, off: int) -> int:
    (length,) = _U32.unpack_from(buf, off + 4)
    if length < CSMB_HEADER_LEN:
        raise BadLength(f"msg_length={length} < {CSMB_HEADER_LEN}", offset=off + 4)
    if length > MAX_CSMB_LENGTH:
        raise LengthTooLarge(f"msg_length={length} > {MAX_CSMB_LENGTH}", offset=off + 4)
    return int(length)


def _decode_reference(buf: BytesLike, off: int, end: int) -> CsmbMessage:
    """The framed message buf[off:end], field by field: the authority the generated decoders defer to."""
    sg, sb, _length, msg_type, error = _HEADER.unpack_from(buf, off)
    if REGISTRY.get(msg_type) is None:
        raise UnknownMessageType(f"CSMB msg_type {msg_type}", offset=off + 8)
    if error not in _CSMB_ERRORS:
        raise BadFieldValue("error", error, HEADER_FIELDS[-1].allowed_text(), offset=off + 10)
    header = {"serial_global": sg, "serial_bytype": sb, "error": error}
    return _decode_body(msg_type, buf, off + CSMB_HEADER_LEN, end, header)


_CSMB_ERRORS: Final = frozenset(int(e) for e in CsmbError)


# --- generated fast path -----------------------------------------------------------------------
#
# encode_message and the decoders run code generated at import time from the layouts above: one
# Struct.pack or unpack_from over header and fixed body together, the checks of all fields folded
# into one condition, objects built by slot stores (see layout.mutable_twin). Whenever that code
# meets anything unusual (a value out of range, an unexpected length or type) it hands the same
# input to the reference implementation above, which is authoritative: it raises the precise
# error or, for rare valid input such as a VirtualServer subclass, returns the result itself.
# ``slbproto.layout.generated_source(cls)`` shows the generated code.

_WITH_VS: Final = Layout("CSMB header and VS definition", HEADER_FIELDS + VS_LAYOUT.fields)
_WITH_AUTH: Final = Layout("HELLO with authentication", HELLO_LAYOUT.fields + HELLO_AUTH_LAYOUT.fields)
_PADDING: Final = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by len(app_data) & 3
_FAILURES: Final = (struct.error, OSError, TypeError, ValueError, AttributeError)
_SLOW_DECODE: Final = "return _slow(buf, off, end)"
_VS_SIZE: Final = VS_LAYOUT.size
_HEADER_LOCALS: Final = {"serial_global": "serial_global", "serial_bytype": "serial_bytype", "error": "error"}


def _namespace() -> dict[str, object]:
    ns: dict[str, object] = {}
    for layout in (_WITH_VS, _WITH_AUTH, STATUS_LAYOUT):
        ns.update(layout.namespace())
    ns.update(
        _H=HEADER_LAYOUT.struct,
        _V=VS_LAYOUT.struct,
        _WV=_WITH_VS.struct,
        _HELLO=HELLO_LAYOUT.struct,
        _WA=_WITH_AUTH.struct,
        _STATUS=STATUS_LAYOUT.struct,
        _U16=_U16,
        _PADDING=_PADDING,
        _FAILURES=_FAILURES,
        _VirtualServer=VirtualServer,
    )
    return ns


def _pack(layout: Layout, struct_name: str, given: dict[str, str], obj: str = "m") -> str:
    """``struct_name.pack(...)`` of layout: values from ``given`` or else attributes of obj."""
    return f"{struct_name}.pack({layout.pack_args(lambda f: given.get(f.name, f'{obj}.{f.name}'))})"


def _attr(obj: str) -> Callable[[Field], str]:
    return lambda f: f"{obj}.{f.name}"


def _vs_check_lines(indent: str, classified: bool) -> list[str]:
    """Check vs (a VirtualServer) and bind data/n to its app_data and length."""
    bad = VS_LAYOUT.bad_condition(_attr("vs"))
    extra = " or not vs.vs_class" if classified else ""
    return [
        f"{indent}if type(vs) is not _VirtualServer:",
        f"{indent}    raise TypeError",
        f"{indent}data = vs.app_data",
        f"{indent}n = len(data)",
        f"{indent}if type(data) is not bytes or n > {MAX_APP_DATA_LEN} or {bad}{extra}:",
        f"{indent}    raise ValueError",
    ]


def _header_given(cls: type[CsmbMessage], length: str) -> dict[str, str]:
    return {"msg_length": length, "msg_type": str(int(cls.MSG_TYPE))}


def _encoder_body(cls: type[CsmbMessage]) -> list[str]:
    """Statements (indented for a try block) returning the wire form of m, an instance of cls."""
    i = "        "
    header_bad = HEADER_LAYOUT.bad_condition(_attr("m"))
    lines = [f"{i}if {header_bad}:", f"{i}    raise ValueError"]
    header_only = f"{i}return {_pack(HEADER_LAYOUT, '_H', _header_given(cls, str(CSMB_HEADER_LEN)))}"
    with_vs = {
        **_header_given(cls, f"{_WITH_VS.size} + n + (-n & 3)"),
        **{name: f"m.{name}" for name in _HEADER_LOCALS},
        "app_data_len": "n",
    }
    vs_pack = f"{i}return {_pack(_WITH_VS, '_WV', with_vs, 'vs')} + data + _PADDING[n & 3]"
    if cls in (Reset, Ack):
        return [*lines, header_only]
    if cls is Status:
        return [
            *lines,
            f"{i}return {_pack(STATUS_LAYOUT, '_STATUS', _header_given(cls, str(STATUS_LAYOUT.size)))}",
        ]
    if cls in (AddVs, DeleteVs):
        return [*lines, f"{i}vs = m.vs", *_vs_check_lines(i, cls is AddVs), vs_pack]
    if cls is QueryVs:
        return [
            *lines,
            f"{i}vs = m.vs",
            f"{i}if vs is None:",
            "    " + header_only,
            *_vs_check_lines(i, False),
            vs_pack,
        ]
    if cls is VsList:
        return [
            *lines,
            f"{i}body = b''.join([_vs_part(vs) for vs in m.servers])",
            f"{i}length = {CSMB_HEADER_LEN} + len(body)",
            f"{i}if length > {MAX_CSMB_LENGTH}:",
            f"{i}    raise ValueError",
            f"{i}return {_pack(HEADER_LAYOUT, '_H', _header_given(cls, 'length'))} + body",
        ]
    assert cls is Hello
    hello_bad = HELLO_LAYOUT.bad_condition(_attr("m"))
    with_auth = {**_header_given(cls, f"{_WITH_AUTH.size} + n"), "auth_data_len": "n"}
    return [
        f"{i}if {hello_bad}:",
        f"{i}    raise ValueError",
        f"{i}auth = m.auth_data",
        f"{i}if auth is None:",
        f"{i}    return {_pack(HELLO_LAYOUT, '_HELLO', _header_given(cls, str(HELLO_LAYOUT.size)))}",
        f"{i}n = len(auth)",
        f"{i}if type(auth) is not bytes or n > {MAX_AUTH_DATA_LEN}:",
        f"{i}    raise ValueError",
        f"{i}return {_pack(_WITH_AUTH, '_WA', with_auth)} + auth",
    ]


def _generate_encoder(cls: type[CsmbMessage], ns: dict[str, object]) -> Callable[[CsmbMessage], bytes]:
    name = f"encode_{cls.__name__}"
    lines = [
        f"def {name}(m):",
        "    try:",
        *_encoder_body(cls),
        "    except _FAILURES:",
        "        return _slow(m)",
    ]
    return compile_function("\n".join(lines) + "\n", {**ns, "_slow": _encode_reference}, name, cls)


def _generate_vs_part(ns: dict[str, object]) -> Callable[[VirtualServer], bytes]:
    """One classified VS definition of a VS_LIST (its errors propagate to encode_VsList)."""
    lines = [
        "def _vs_part(vs):",
        *_vs_check_lines("    ", True),
        f"    return {_pack(VS_LAYOUT, '_V', {'app_data_len': 'n'}, 'vs')} + data + _PADDING[n & 3]",
    ]
    return compile_function("\n".join(lines) + "\n", dict(ns), "_vs_part", VirtualServer)


def _local(f: Field) -> str:
    return f.name


def _vs_lines(
    unpack: list[str], start: str, indent: str, ns: dict[str, object], last: bool, classified: bool
) -> list[str]:
    """After ``unpack`` bound the VS fields, check the definition starting at ``start`` and build vs.

    Sets stop to the offset after its padding, which must be end when it is the ``last`` part.
    """
    bad = " or not vs_class" if classified else ""
    lines = [
        *unpack,
        f"{indent}data_end = {start} + {_VS_SIZE} + app_data_len",
        f"{indent}stop = data_end + (-app_data_len & 3)",
        f"{indent}if app_data_len > {MAX_APP_DATA_LEN} or stop {'!=' if last else '>'} end{bad}:",
        f"{indent}    {_SLOW_DECODE}",
    ]
    values = {
        f.name: ipv4_unpack_expr(f.name) if f.ipv4 else f.name
        for f in VS_LAYOUT.value_fields()
        if f.role is Role.VALUE
    }
    values["app_data"] = f"bytes(buf[{start} + {_VS_SIZE}:data_end])"
    return lines + construct_lines(VirtualServer, "vs", values, indent, ns)


def _decoder_body(cls: type[CsmbMessage], ns: dict[str, object]) -> list[str]:
    """Statements decoding buf[off:end] (msg_length already checked) into cls, result in o."""
    i = "    "
    header = HEADER_LAYOUT.unpack_lines(_local, "_H", "buf", "off", i, _SLOW_DECODE)
    given = _HEADER_LOCALS

    def build(extra: dict[str, str], indent: str = i) -> list[str]:
        return construct_lines(cls, "o", {**extra, **given}, indent, ns)

    def exact(size: int) -> list[str]:
        return [f"{i}if end - off != {size}:", f"{i}    {_SLOW_DECODE}"]

    if cls in (Reset, Ack):
        return exact(CSMB_HEADER_LEN) + header + build({})
    if cls is Status:
        fixed = STATUS_LAYOUT.unpack_lines(_local, "_STATUS", "buf", "off", i, _SLOW_DECODE)
        return exact(STATUS_LAYOUT.size) + fixed + build({"status": "status"})
    if cls in (AddVs, DeleteVs, QueryVs):
        lines = [f"{i}if end - off < {_WITH_VS.size}:", f"{i}    {_SLOW_DECODE}"]
        if cls is QueryVs:
            inner = i + "    "
            lines = [
                f"{i}if end - off == {CSMB_HEADER_LEN}:",
                *HEADER_LAYOUT.unpack_lines(_local, "_H", "buf", "off", inner, _SLOW_DECODE),
                *build({"vs": "None"}, inner),
                f"{inner}return o",
                *lines,
            ]
        unpack = _WITH_VS.unpack_lines(_local, "_WV", "buf", "off", i, _SLOW_DECODE)
        lines += _vs_lines(unpack, f"off + {CSMB_HEADER_LEN}", i, ns, True, cls is AddVs)
        return lines + build({"vs": "vs"})
    if cls is VsList:
        return [
            *header,
            "    servers = []",
            f"    p = off + {CSMB_HEADER_LEN}",
            "    while p < end:",
            f"        if end - p < {_VS_SIZE}:",
            f"            {_SLOW_DECODE}",
            *_vs_lines(
                VS_LAYOUT.unpack_lines(_local, "_V", "buf", "p", "        ", _SLOW_DECODE),
                "p",
                "        ",
                ns,
                False,
                True,
            ),
            "        servers.append(vs)",
            "        p = stop",
            *build({"servers": "tuple(servers)"}),
        ]
    assert cls is Hello
    hello = {
        f.name: ipv4_unpack_expr(f.name) if f.ipv4 else f.name
        for f in HELLO_LAYOUT.value_fields()
        if f.role is Role.VALUE and f.name not in given
    }
    auth_off = f"off + {HELLO_LAYOUT.size}"
    return [
        f"{i}size = end - off",
        f"{i}if size < {HELLO_LAYOUT.size}:",
        f"{i}    {_SLOW_DECODE}",
        *HELLO_LAYOUT.unpack_lines(_local, "_HELLO", "buf", "off", i, _SLOW_DECODE),
        f"{i}if size == {HELLO_LAYOUT.size}:",
        f"{i}    auth = None",
        "    else:",
        f"{i}    if size < {_WITH_AUTH.size}:",
        f"{i}        {_SLOW_DECODE}",
        f"{i}    (n,) = _U16.unpack_from(buf, {auth_off})",
        f"{i}    if n > {MAX_AUTH_DATA_LEN} or n != size - {_WITH_AUTH.size}:",
        f"{i}        {_SLOW_DECODE}",
        f"{i}    auth = bytes(buf[off + {_WITH_AUTH.size}:end])",
        *build({**hello, "auth_data": "auth"}),
    ]


def _generate_decoder(
    cls: type[CsmbMessage], ns: dict[str, object]
) -> Callable[[BytesLike, int, int], CsmbMessage]:
    name = f"decode_{cls.__name__}"
    ns = {**ns, "_slow": _decode_reference}
    lines = [f"def {name}(buf, off, end):", *_decoder_body(cls, ns), "    return o"]
    return compile_function("\n".join(lines) + "\n", ns, name, cls)


_NS: Final = _namespace()
_NS["_vs_part"] = _generate_vs_part(_NS)
_ENCODERS: Final = {cls: _generate_encoder(cls, _NS) for _, cls in REGISTRY}
_DECODERS: Final = {code: _generate_decoder(cls, _NS) for code, cls in REGISTRY}


def encode_message(msg: CsmbMessage) -> bytes:
    """The complete wire form of one CSMB message; UsageError if a field is out of range."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        return _encode_reference(msg)  # a subclass, or not a message: the reference decides
    return encoder(msg)


def _decode_framed(buf: BytesLike, off: int, end: int) -> CsmbMessage:
    """The message buf[off:end] whose msg_length the caller has checked."""
    decoder = _DECODERS.get(buf[off + 8])
    if decoder is None:
        return _decode_reference(buf, off, end)  # raises UnknownMessageType
    return decoder(buf, off, end)


class StreamDecoder:
    """Cuts a CSMB byte stream into messages.

    ``feed`` buffers whatever arrived and returns every message now complete. On the first
    ProtocolError the decoder fails permanently: ``failed`` holds the error, the messages of
    that ``feed`` call are not returned, and every later ``feed`` raises StreamFailed. The
    owner must close the connection (see the module docstring).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.failed: ProtocolError | None = None
        self.messages = 0

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a complete message."""
        return len(self._buf)

    def feed(self, data: BytesLike) -> list[CsmbMessage]:
        """Add received octets; return the messages they complete, in order."""
        if self.failed is not None:
            raise StreamFailed(f"decoder already failed ({self.failed.code})") from self.failed
        buf = self._buf
        buf += data
        out: list[CsmbMessage] = []
        off = 0
        size = len(buf)
        unpack_length = _U32.unpack_from
        decoders = _DECODERS
        try:
            while size - off >= CSMB_HEADER_LEN:
                (length,) = unpack_length(buf, off + 4)
                if not CSMB_HEADER_LEN <= length <= MAX_CSMB_LENGTH:
                    _check_length(buf, off)  # raises the precise framing error
                end = off + length
                if end > size:
                    break
                decoder = decoders.get(buf[off + 8])
                out.append(decoder(buf, off, end) if decoder else _decode_reference(buf, off, end))
                off = end
        except ProtocolError as exc:
            self.failed = exc
            self._buf = bytearray()
            raise
        del buf[:off]
        self.messages += len(out)
        return out


__all__ = [
    "HEADER_LAYOUT",
    "HELLO_AUTH_LAYOUT",
    "HELLO_LAYOUT",
    "POOL_ENTRY_LAYOUT",
    "REGISTRY",
    "STATUS_LAYOUT",
    "VS_LAYOUT",
    "Ack",
    "AddVs",
    "AnyCsmbMessage",
    "CsmbMessage",
    "DeleteVs",
    "Hello",
    "PoolEntry",
    "QueryVs",
    "Reset",
    "Status",
    "StreamDecoder",
    "VirtualServer",
    "VsList",
    "decode_message",
    "decode_pool",
    "decode_vs",
    "encode_message",
    "encode_pool",
    "encode_vs",
]
