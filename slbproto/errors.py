"""The two kinds of failure: the peer sent garbage, or a caller built an impossible message.

Every :class:`ProtocolError` carries a short, stable ``code`` that receivers use as a counter
key, so operators can see *why* input was rejected without reading logs.
"""

from __future__ import annotations

from typing import ClassVar


class SlbProtoError(Exception):
    """Base class of every error raised by ``slbproto``."""


class UsageError(SlbProtoError, ValueError):
    """A caller asked for something impossible (out-of-range field, bad state transition)."""


class ProtocolError(SlbProtoError):
    """The peer sent bytes that do not form a valid message; ``code`` names the reason."""

    code: ClassVar[str] = "protocol_error"

    def __init__(self, detail: str, *, offset: int | None = None) -> None:
        self.detail = detail
        self.offset = offset
        where = f" at octet {offset}" if offset is not None else ""
        super().__init__(f"{self.code}: {detail}{where}")


class TruncatedMessage(ProtocolError):
    """Fewer octets than the header or message layout requires."""

    code = "truncated"


class TrailingBytes(ProtocolError):
    """Octets left over after the last message the framing announced."""

    code = "trailing_bytes"


class UnknownMessageType(ProtocolError):
    """A msg_type this protocol version does not define."""

    code = "unknown_type"


class BadCount(ProtocolError):
    """An SSMB count of zero, or a datagram holding a different number of messages."""

    code = "bad_count"


class CountMismatch(ProtocolError):
    """Headers of one SSMB datagram disagree about the count."""

    code = "count_mismatch"


class FramingError(ProtocolError):
    """A CSMB length that makes the rest of the stream impossible to delimit.

    After a framing error a TCP stream cannot be resynchronised; the connection must be closed.
    """

    code = "framing"


class BadLength(FramingError):
    """msg_length below the header size or inconsistent with the message body."""

    code = "bad_length"


class LengthTooLarge(FramingError):
    """msg_length above MAX_CSMB_LENGTH."""

    code = "length_too_large"


class AppDataTooLong(ProtocolError):
    """app_data_len above MAX_APP_DATA_LEN."""

    code = "app_data_too_long"


class AppDataOverrun(ProtocolError):
    """app_data_len points past the end of the received message."""

    code = "app_data_overrun"


class VsListOverrun(ProtocolError):
    """A virtual server definition runs past msg_length."""

    code = "vs_overrun"


class BadFieldValue(ProtocolError):
    """A field holds a value outside its allowed range (unknown enum value, undefined flag bit)."""

    code = "bad_field"

    def __init__(self, field: str, value: object, allowed: str, *, offset: int | None = None) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r} not in {allowed}", offset=offset)


class AuthenticationFailed(ProtocolError):
    """An authenticated message whose HMAC does not verify, or one that lacks it."""

    code = "auth_failed"


class UnsupportedVersion(ProtocolError):
    """A HELLO asking for a protocol version this segment does not speak."""

    code = "unsupported_version"


class StreamFailed(ProtocolError):
    """A CSMB stream decoder was fed again after it had already failed."""

    code = "stream_failed"
