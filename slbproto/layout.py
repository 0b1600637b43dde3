"""Declarative message layouts: one table of fields per message, everything else derived.

A :class:`Layout` is an ordered tuple of :class:`Field` rows (name, struct code, meaning, allowed
values). From it come the precompiled :class:`struct.Struct`, the byte offsets, the range checks
used by pack (raising :class:`~slbproto.errors.UsageError`) and unpack (raising
:class:`~slbproto.errors.ProtocolError`), the source fragments from which :mod:`slbproto.ssmb`
and :mod:`slbproto.csmb` generate their straight-line pack/unpack functions, and the tables and
bit diagrams of ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import enum
import functools
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from slbproto.errors import BadFieldValue, UsageError

_WIDTH = {"B": 1, "H": 2, "I": 4, "Q": 8}


class Role(enum.Enum):
    """How a field's value is obtained when packing."""

    VALUE = "value"  # an attribute of the message object
    CONST = "const"  # fixed by the message class (msg_type)
    COUNT = "count"  # supplied by the framing (SSMB count)
    LENGTH = "length"  # computed from variable data (app_data_len, msg_length)
    PAD = "pad"  # zero on send, ignored on receive


Allowed = range | type[enum.IntEnum] | type[enum.IntFlag] | None


@dataclass(frozen=True, slots=True)
class Field:
    """One row of a message table."""

    name: str
    code: str  # struct code: B/H/I/Q for integers, 4s for IPv4, nx for padding
    meaning: str
    role: Role = Role.VALUE
    ipv4: bool = False
    allowed: Allowed = None

    @property
    def size(self) -> int:
        """Width in octets."""
        if self.ipv4:
            return 4
        if self.role is Role.PAD:
            return int(self.code[:-1] or 1)
        return _WIDTH[self.code]

    @property
    def max_value(self) -> int:
        """Largest value the field's width can hold."""
        return (1 << (8 * self.size)) - 1

    @property
    def has_value(self) -> bool:
        """True when struct produces/consumes a value for this field."""
        return self.role is not Role.PAD

    def allowed_text(self) -> str:
        """Human-readable allowed range, for docs and error messages."""
        if self.role is Role.PAD:
            return "0 on send; ignored on receive"
        if self.ipv4:
            return "IPv4 address"
        allowed = self.allowed
        if allowed is None:
            return f"0..{self.max_value}"
        if isinstance(allowed, range):
            return f"{allowed.start}..{allowed.stop - 1}"
        if issubclass(allowed, enum.IntFlag):
            return f"{allowed.__name__} bits (mask 0x{_flag_mask(allowed):x})"
        names = ", ".join(f"{m.name}={m.value}" for m in allowed)
        return f"{allowed.__name__}: {names}"

    def bad_expr(self, var: str) -> str | None:
        """Python expression, true when ``var`` is outside the allowed set; None if width suffices."""
        allowed = self.allowed
        if allowed is None or self.ipv4 or self.role is Role.PAD:
            return None
        if isinstance(allowed, range):
            if allowed.start == 0 and allowed.stop - 1 >= self.max_value:
                return None
            return f"not ({allowed.start} <= {var} <= {allowed.stop - 1})"
        if issubclass(allowed, enum.IntFlag):
            return f"{var} & {_flag_mask(allowed) ^ self.max_value}"
        return f"{var} not in {self.ok_name}"

    @property
    def ok_name(self) -> str:
        """Name of the frozenset of allowed values in generated code."""
        return f"_ok_{self.name}"

    def problem(self, value: object) -> str | None:
        """Slow, precise validation for a packed value: a description of what is wrong, or None."""
        if self.ipv4:
            if not isinstance(value, str):
                return f"{self.name} must be a dotted-quad str, got {type(value).__name__}"
            try:
                socket.inet_pton(socket.AF_INET, value)
            except OSError:
                return f"{self.name}={value!r} is not a dotted-quad IPv4 address"
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{self.name} must be an int, got {type(value).__name__}"
        if not 0 <= value <= self.max_value:
            return f"{self.name}={value} does not fit in {self.size} octet(s)"
        if not self.permits(value):
            return f"{self.name}={value} not in {self.allowed_text()}"
        return None

    def permits(self, value: int) -> bool:
        """True when an in-width integer is inside the allowed set."""
        allowed = self.allowed
        if allowed is None:
            return True
        if isinstance(allowed, range):
            return value in allowed
        if issubclass(allowed, enum.IntFlag):
            return not value & ~_flag_mask(allowed)
        return value in _enum_values(allowed)

    def namespace(self) -> dict[str, object]:
        """Names the generated checks refer to."""
        allowed = self.allowed
        if allowed is not None and not isinstance(allowed, range) and not issubclass(allowed, enum.IntFlag):
            return {self.ok_name: frozenset(int(m) for m in allowed)}
        return {}


@functools.cache
def _enum_values(cls: type[enum.IntEnum]) -> frozenset[int]:
    return frozenset(int(m) for m in cls)


@functools.cache
def _flag_mask(flags: type[enum.IntFlag]) -> int:
    mask = 0
    for member in flags:
        mask |= int(member)
    return mask


def u8(name: str, meaning: str, allowed: Allowed = None, role: Role = Role.VALUE) -> Field:
    """An unsigned 8-bit field."""
    return Field(name, "B", meaning, role, allowed=allowed)


def u16(name: str, meaning: str, allowed: Allowed = None, role: Role = Role.VALUE) -> Field:
    """An unsigned 16-bit field."""
    return Field(name, "H", meaning, role, allowed=allowed)


def u32(name: str, meaning: str, allowed: Allowed = None, role: Role = Role.VALUE) -> Field:
    """An unsigned 32-bit field."""
    return Field(name, "I", meaning, role, allowed=allowed)


def u64(name: str, meaning: str) -> Field:
    """An unsigned 64-bit field."""
    return Field(name, "Q", meaning)


def ipv4(name: str, meaning: str) -> Field:
    """A 4-octet IPv4 address, a dotted-quad str in Python."""
    return Field(name, "4s", meaning, ipv4=True)


def pad(octets: int, name: str = "pad") -> Field:
    """Zero padding."""
    return Field(name, f"{octets}x", "padding", Role.PAD)


@dataclass(frozen=True, slots=True)
class Tail:
    """Variable-length octets following the fixed part, sized by a LENGTH field."""

    attr: str
    length_field: str
    max_len: int
    meaning: str
    align: int = 1  # the whole (fixed part + data) is zero-padded to a multiple of this
    optional: bool = False  # the length field and data may be absent (HELLO auth)


@dataclass(frozen=True)
class Layout:
    """The table of one message (or of a sub-structure such as a VS definition)."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""
    tail: Tail | None = None
    expected_size: int | None = None
    struct: struct.Struct = field(init=False)
    offsets: dict[str, int] = field(init=False)
    _value_fields: tuple[Field, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields if f.role is not Role.PAD]
        if len(names) != len(set(names)):
            raise UsageError(f"{self.name}: duplicate field names")
        codes = "".join(f.code for f in self.fields)
        object.__setattr__(self, "struct", struct.Struct(">" + codes))
        offsets: dict[str, int] = {}
        off = 0
        for f in self.fields:
            offsets.setdefault(f.name, off)
            off += f.size
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "_value_fields", tuple(f for f in self.fields if f.has_value))
        # The import-time size guard: a table that disagrees with the spec never loads.
        assert off == self.struct.size, (self.name, off, self.struct.size)
        if self.expected_size is not None:
            assert self.struct.size == self.expected_size, (
                f"{self.name}: {self.struct.size} octets, spec says {self.expected_size}"
            )

    @property
    def size(self) -> int:
        """Octets of the fixed part."""
        return self.struct.size

    def rows(self) -> Iterator[tuple[int, Field]]:
        """(offset, field) for every field including padding."""
        off = 0
        for f in self.fields:
            yield off, f
            off += f.size

    def value_fields(self) -> tuple[Field, ...]:
        """Fields that struct packs a value for, in struct order."""
        return self._value_fields

    def namespace(self) -> dict[str, object]:
        """Everything generated code for this layout refers to."""
        ns: dict[str, object] = {
            "_ip_octets": _IP_OCTETS,
            "_ip_encode": ipv4_octets,
            "_ip_text": _IP_TEXT,
            "_ip_decode": ipv4_text,
        }
        for f in self.fields:
            ns.update(f.namespace())
        return ns

    def pack_args(self, expr: Callable[[Field], str]) -> str:
        """Comma-separated struct.pack arguments; ``expr(field)`` gives the Python value."""
        out = []
        for f in self.value_fields():
            e = expr(f)
            out.append(ipv4_pack_expr(e) if f.ipv4 else e)
        return ", ".join(out)

    def bad_condition(self, var: Callable[[Field], str | None]) -> str | None:
        """One generated condition, true when any VALUE field is outside its allowed set.

        ``var(field)`` is the expression holding the field's value (None to skip the field);
        fields whose width already bounds them add nothing. None when nothing needs checking.
        """
        conditions = []
        for f in self.value_fields():
            expr = var(f) if f.role is Role.VALUE else None
            bad = f.bad_expr(expr) if expr is not None else None
            if bad is not None:
                conditions.append(f"({bad})")
        return " or ".join(conditions) or None

    def unpack_lines(
        self, var: Callable[[Field], str], struct_name: str, buf: str, off: str, indent: str, on_bad: str
    ) -> list[str]:
        """Generated lines unpacking this layout at ``buf[off:]`` into the variables ``var(field)``.

        Then, when any VALUE field is outside its allowed set, the statement ``on_bad`` runs.
        ``struct_name`` names this layout's Struct in the generated namespace.
        """
        targets = ", ".join(var(f) for f in self.value_fields())
        lines = [f"{indent}({targets},) = {struct_name}.unpack_from({buf}, {off})"]
        bad = self.bad_condition(var)
        if bad is not None:
            lines += [f"{indent}if {bad}:", f"{indent}    {on_bad}"]
        return lines

    def encode(self, values: dict[str, Any], label: str | None = None) -> bytes:
        """Pack a dict of field values (IPv4 as str); UsageError naming a bad field."""
        try:
            args = [
                socket.inet_pton(socket.AF_INET, values[f.name]) if f.ipv4 else values[f.name]
                for f in self.value_fields()
            ]
            for f in self.value_fields():
                if f.allowed is not None and f.role is Role.VALUE and not f.permits(values[f.name]):
                    raise ValueError(f.name)
            return self.struct.pack(*args)
        except (struct.error, OSError, TypeError, ValueError) as exc:
            for f in self.value_fields():
                problem = f.problem(values[f.name])
                if problem is not None:
                    raise UsageError(f"{label or self.name}: {problem}") from None
            raise UsageError(f"{label or self.name}: cannot pack {values!r}") from exc

    def decode(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        """Unpack the fixed part at offset into a dict; BadFieldValue for an out-of-range VALUE.

        The caller has checked that ``self.size`` octets are available.
        """
        values = self.struct.unpack_from(buf, offset)
        out: dict[str, Any] = {}
        for f, value in zip(self.value_fields(), values, strict=True):
            if f.ipv4:
                out[f.name] = socket.inet_ntoa(value)
            else:
                # LENGTH/COUNT/CONST fields are checked by the framing, with specific errors.
                if f.role is Role.VALUE and not f.permits(value):
                    raise BadFieldValue(f.name, value, f.allowed_text(), offset=offset + self.offsets[f.name])
                out[f.name] = value
        return out

    def validate(self, values: dict[str, Any], label: str | None = None) -> None:
        """Raise UsageError naming the first VALUE field whose value cannot be packed."""
        for f in self.fields:
            if f.role is Role.VALUE:
                problem = f.problem(values[f.name])
                if problem is not None:
                    raise UsageError(f"{label or self.name}: {problem}")


M = TypeVar("M")


class Registry(Generic[M]):
    """Maps type codes to message classes and refuses a code registered twice."""

    def __init__(self, bus: str) -> None:
        self.bus = bus
        self._by_code: dict[int, type[M]] = {}

    def register(self, code: int, cls: type[M]) -> None:
        """Add cls under code; a duplicate code is a programming error."""
        if code in self._by_code:
            other = self._by_code[code].__name__
            raise UsageError(f"{self.bus}: type code {code} already registered to {other}")
        self._by_code[code] = cls

    def get(self, code: int) -> type[M] | None:
        """The class registered for code, or None."""
        return self._by_code.get(code)

    def __iter__(self) -> Iterator[tuple[int, type[M]]]:
        return iter(sorted(self._by_code.items()))

    def __len__(self) -> int:
        return len(self._by_code)


# --- IPv4 conversion ---------------------------------------------------------------------------
#
# inet_ntoa goes through the C library's printf and costs about as much as unpacking a whole
# message, so both directions keep a small memo. Every message of a flow (QUERY, REPLY, STATS,
# DELETE) repeats the same few addresses, so nearly every lookup hits. The memos are bounded
# by emptying them when full: O(1), no per-hit bookkeeping, and a miss costs one conversion.

IPV4_MEMO_SIZE: Final = 4096
_IP_OCTETS: Final[dict[str, bytes]] = {}
_IP_TEXT: Final[dict[bytes, str]] = {}


def ipv4_octets(text: str) -> bytes:
    """The 4 octets of a strict dotted-quad str; TypeError or OSError (inet_pton's) otherwise."""
    if type(text) is not str:
        raise TypeError(f"IPv4 address must be a str, got {type(text).__name__}")
    # inet_pton, unlike inet_aton, refuses "1", "1.2.3", "0x1.2.3.4" and leading zeros.
    octets = socket.inet_pton(socket.AF_INET, text)
    if len(_IP_OCTETS) >= IPV4_MEMO_SIZE:
        _IP_OCTETS.clear()
    _IP_OCTETS[text] = octets
    return octets


def ipv4_text(octets: bytes) -> str:
    """The dotted-quad str of 4 octets."""
    text = socket.inet_ntoa(octets)
    if len(_IP_TEXT) >= IPV4_MEMO_SIZE:
        _IP_TEXT.clear()
    _IP_TEXT[octets] = text
    return text


def clear_ipv4_memo() -> None:
    """Forget every memoised IPv4 conversion (benchmarks of first-seen addresses use this)."""
    _IP_OCTETS.clear()
    _IP_TEXT.clear()


def ipv4_pack_expr(expr: str) -> str:
    """Generated expression turning the str ``expr`` into 4 octets (``expr`` is a name or attribute).

    A non-str key misses the memo (only str keys are stored) and ipv4_octets refuses it; an
    unhashable one makes ``dict.get`` raise TypeError. Four octets are never falsy.
    """
    return f"(_ip_octets.get({expr}) or _ip_encode({expr}))"


def ipv4_unpack_expr(var: str) -> str:
    """Generated expression turning the 4 octets in ``var`` into a dotted-quad str."""
    return f"(_ip_text.get({var}) or _ip_decode({var}))"


# --- generated code ------------------------------------------------------------------------------


def slot_names(cls: type) -> tuple[str, ...]:
    """Every slot of cls, base classes first."""
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        names.extend(klass.__dict__.get("__slots__", ()))
    return tuple(names)


@functools.cache
def mutable_twin(cls: type) -> type:
    """A class with exactly cls's slot layout but without its frozen ``__setattr__``.

    Generated decoders fill a twin instance with plain slot stores and then assign
    ``__class__ = cls`` (CPython allows it between classes whose slots match), which yields a
    genuine frozen instance several times faster than the dataclass ``__init__``, whose
    ``object.__setattr__`` per field dominates decoding otherwise.
    """
    slotted = next(c for c in cls.__mro__ if c.__dict__.get("__slots__"))
    return type(f"_{cls.__name__}Builder", slotted.__bases__, {"__slots__": slotted.__dict__["__slots__"]})


def construct_lines(
    cls: type, var: str, values: dict[str, str], indent: str, namespace: dict[str, object]
) -> list[str]:
    """Generated lines binding ``var`` to a new cls instance whose slots hold ``values``' expressions.

    Every slot must be given (an unset slot would raise AttributeError when read); the names the
    lines use are added to ``namespace``.
    """
    assert set(values) == set(slot_names(cls)), (cls, sorted(values))
    name = cls.__name__
    namespace.update({f"_B_{name}": mutable_twin(cls), f"_C_{name}": cls, "_new": object.__new__})
    lines = [f"{indent}{var} = _new(_B_{name})"]
    lines += [f"{indent}{var}.{attr} = {expr}" for attr, expr in values.items()]
    lines.append(f"{indent}{var}.__class__ = _C_{name}")
    return lines


_SOURCES: dict[object, list[str]] = {}


def compile_function(
    source: str, namespace: dict[str, object], name: str, owner: object = None
) -> Callable[..., Any]:
    """Compile generated source and return the function called ``name``.

    The source is kept under ``owner`` (a message class) for :func:`generated_source`.
    """
    code = compile(source, f"<slbproto generated {name}>", "exec")
    exec(code, namespace)
    fn = namespace[name]
    assert callable(fn)
    if owner is not None:
        _SOURCES.setdefault(owner, []).append(source)
    return fn


def generated_source(owner: object) -> str:
    """The Python source generated for a message class (or VirtualServer), for inspection."""
    try:
        return "\n".join(_SOURCES[owner])
    except KeyError:
        raise UsageError(f"no generated code for {owner!r}") from None


def format_value(f: Field, value: object) -> str:
    """repr of a field value, symbolic for enums and flags."""
    allowed = f.allowed
    if isinstance(value, int) and not isinstance(value, bool) and allowed is not None:
        if isinstance(allowed, range):
            return repr(int(value))
        if issubclass(allowed, enum.IntFlag):
            if value == 0:
                return "0"
            known = [m.name for m in allowed if m.name and value & int(m)]
            rest = value & ~_flag_mask(allowed)
            if rest:
                known.append(hex(rest))
            return "|".join(known)
        try:
            return allowed(value).name
        except ValueError:
            return repr(int(value))
    return repr(value)
