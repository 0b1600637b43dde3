"""Type codes, error values, flag bits, limits and per-type semantics of both buses.

The numeric assignments are this project's (the original figures that held them are lost);
they are normative in ``docs/PROTOCOL.md``, which is generated from this module and
:mod:`slbproto.ssmb` / :mod:`slbproto.csmb`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

DEFAULT_SSMB_PORT: Final = 7700
DEFAULT_CSMB_PORT: Final = 7701
PROTOCOL_VERSION: Final = (1, 0)

MAX_APP_DATA_LEN: Final = 8192
MAX_CSMB_LENGTH: Final = 1 << 20
SSMB_HEADER_LEN: Final = 8
CSMB_HEADER_LEN: Final = 12
MAX_SSMB_COUNT: Final = 255
SERIAL_MODULUS: Final = 1 << 16

# 1500-octet Ethernet MTU minus 20 (IPv4) and 8 (UDP).
DEFAULT_SSMB_MTU_PAYLOAD: Final = 1472
DEFAULT_BATCH_DELAY: Final = 0.010
DEFAULT_QUERY_TRIES: Final = 3
DEFAULT_QUERY_INTERVAL: Final = 0.2

# NEWFLOW is CS-initiated; its flow ids have the top bit set so they never collide with the
# ids a DFS picks for its own pending flows.
NEWFLOW_ID_BIT: Final = 0x8000_0000


class SsmbType(enum.IntEnum):
    """msg_type of the state-sharing (per-flow, UDP) bus."""

    QUERY = 1
    APP_QUERY = 2
    REPLY = 3
    DELETE = 4
    REAP = 5
    STATS = 6
    NEWFLOW = 7
    RESET = 8


class SsmbError(enum.IntEnum):
    """error field of SSMB messages."""

    OK = 0
    UNKNOWN = 1
    NOTAVAIL = 2
    CONNLIMIT = 3
    CONNALIVE = 4


class FlowFlag(enum.IntFlag):
    """flags octet of SSMB flow messages."""

    OUTBOUND = 0x01
    ADD_TCP_OFFSET = 0x02


class CsmbType(enum.IntEnum):
    """msg_type of the configuration (TCP) bus."""

    ADD_VS = 1
    DELETE_VS = 2
    QUERY_VS = 3
    VS_LIST = 4
    RESET = 5
    STATUS = 6
    HELLO = 7
    ACK = 8


class CsmbError(enum.IntEnum):
    """error field of CSMB messages; 3 and up are this project's additions."""

    OK = 0
    VERS_NEW = 1
    VERS_OBSOLETE = 2
    AUTH_FAILED = 3
    BAD_MESSAGE = 4
    NOT_SUPPORTED = 5


class VsFlag(enum.IntFlag):
    """flags word of a virtual server definition and of HELLO (bit n = 1 << n)."""

    TRANSLATE_ADDR = 1 << 0
    TRANSLATE_PORT = 1 << 1
    ROUTE_BY_DST_IP = 1 << 2
    REDUNDANT = 1 << 3
    WILDCARD_ADDR = 1 << 4
    WILDCARD_PORT = 1 << 5
    NOARP_MODE = 1 << 6
    APP_PROXY = 1 << 7
    SSL_PROXY = 1 << 8
    COOKIE_PROXY = 1 << 9
    HTTP_PROXY = 1 << 10
    RAW_PROXY = 1 << 11


class VsClass(enum.IntEnum):
    """vs_class of a virtual server definition."""

    CS_ASSIST = 1
    DFS_ASSIST = 2


class Priority(enum.Enum):
    """SSMB send priority (table I)."""

    HIGH = "H"
    LOW = "L"


class Sender(enum.Enum):
    """Which segment sends a message type."""

    CS = "CS"
    DFS = "DFS"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class SsmbSemantics:
    """One row of table I: who sends a type, how urgently, and what follows it."""

    msg_type: SsmbType
    sender: Sender
    priority: Priority
    batched: bool
    state_shared: bool
    response: str | None
    explanation: str


@dataclass(frozen=True, slots=True)
class CsmbSemantics:
    """One row of table IV."""

    msg_type: CsmbType
    sender: Sender
    response: str | None
    explanation: str


def _ssmb_rows(*rows: SsmbSemantics) -> Mapping[SsmbType, SsmbSemantics]:
    table = {row.msg_type: row for row in rows}
    assert set(table) == set(SsmbType), "table I must cover every SSMB type exactly once"
    return MappingProxyType(table)


_S, _H, _L = Sender, Priority.HIGH, Priority.LOW

SSMB_SEMANTICS: Final = _ssmb_rows(
    SsmbSemantics(
        SsmbType.QUERY, _S.DFS, _H, False, False, "REPLY", "DFS asks the CS how to handle a new flow."
    ),
    SsmbSemantics(
        SsmbType.APP_QUERY,
        _S.DFS,
        _H,
        False,
        False,
        "REPLY",
        "QUERY for a virtual server balanced on application data.",
    ),
    SsmbSemantics(SsmbType.REPLY, _S.CS, _H, False, True, None, "CS instructions for the new flow."),
    SsmbSemantics(
        SsmbType.DELETE,
        _S.DFS,
        _H,
        False,
        True,
        None,
        "DFS deleted a flow (inactivity, timer, TCP close or reset).",
    ),
    SsmbSemantics(
        SsmbType.REAP,
        _S.CS,
        _L,
        True,
        False,
        "STATS",
        "CS asks the DFS to delete a flow whose timer expired.",
    ),
    SsmbSemantics(SsmbType.STATS, _S.DFS, _L, True, True, None, "DFS flow statistics, answering REAP."),
    SsmbSemantics(
        SsmbType.NEWFLOW, _S.CS, _L, False, True, None, "CS tells the DFS to prepare for a new flow."
    ),
    SsmbSemantics(SsmbType.RESET, _S.BOTH, _L, False, True, "ACK (CSMB)", "Delete all flows."),
)


def _csmb_rows(*rows: CsmbSemantics) -> Mapping[CsmbType, CsmbSemantics]:
    table = {row.msg_type: row for row in rows}
    assert set(table) == set(CsmbType), "table IV must cover every CSMB type exactly once"
    return MappingProxyType(table)


CSMB_SEMANTICS: Final = _csmb_rows(
    CsmbSemantics(CsmbType.ADD_VS, _S.CS, None, "Add or modify a virtual server."),
    CsmbSemantics(CsmbType.DELETE_VS, _S.CS, None, "Delete a virtual server; an unknown one is ignored."),
    CsmbSemantics(
        CsmbType.QUERY_VS, _S.BOTH, "VS_LIST", "Ask for the configured virtual servers (optionally filtered)."
    ),
    CsmbSemantics(CsmbType.VS_LIST, _S.BOTH, None, "List of configured virtual servers."),
    CsmbSemantics(
        CsmbType.RESET, _S.BOTH, None, "Delete all virtual servers (the CS sends it when it initialises)."
    ),
    CsmbSemantics(CsmbType.STATUS, _S.BOTH, "STATUS", "House keeping: a 32-bit status word."),
    CsmbSemantics(CsmbType.HELLO, _S.BOTH, "ACK", "Announce version, capabilities and SSMB endpoint."),
    CsmbSemantics(CsmbType.ACK, _S.BOTH, None, "Result of a HELLO (or RESET) in error."),
)

SSMB_ERROR_MEANING: Final = MappingProxyType(
    {
        SsmbError.OK: "Success.",
        SsmbError.UNKNOWN: "The CS does not know how to handle the flow in the query.",
        SsmbError.NOTAVAIL: "REPLY: virtual server not available (port denied or maintenance); flow denied.",
        SsmbError.CONNLIMIT: "REPLY: the virtual server's connection limit would be exceeded; flow denied.",
        SsmbError.CONNALIVE: "STATS answering REAP: the connection is still alive and must not be reaped.",
    }
)

CSMB_ERROR_MEANING: Final = MappingProxyType(
    {
        CsmbError.OK: "Success.",
        CsmbError.VERS_NEW: "HELLO version not yet supported; retry with a lower version.",
        CsmbError.VERS_OBSOLETE: "HELLO version no longer supported; retry with a higher version.",
        CsmbError.AUTH_FAILED: "(project) HELLO authentication failed; the connection is closed.",
        CsmbError.BAD_MESSAGE: "(project) the last message was malformed; the connection is closed.",
        CsmbError.NOT_SUPPORTED: "(project) the request is well formed but not supported by this segment.",
    }
)

FLOW_FLAG_MEANING: Final = MappingProxyType(
    {
        FlowFlag.OUTBOUND: "Message concerns an outbound flow (else inbound, the common case).",
        FlowFlag.ADD_TCP_OFFSET: "Add the seq/ack offsets to the flow's TCP headers (CS did the handshake).",
    }
)

VS_FLAG_MEANING: Final = MappingProxyType(
    {
        VsFlag.TRANSLATE_ADDR: "CS always supplies a new destination address; else the DFS keeps it.",
        VsFlag.TRANSLATE_PORT: "CS always supplies a new destination port; else the DFS keeps it.",
        VsFlag.ROUTE_BY_DST_IP: "DFS routes on the destination address; else it uses next_hop_ipaddr.",
        VsFlag.REDUNDANT: "(HELLO) two CSs; state-shared messages are copied to ssmb_standby_ipaddr.",
        VsFlag.WILDCARD_ADDR: "virt_ipaddr ignored: catch traffic for any otherwise unmatched address.",
        VsFlag.WILDCARD_PORT: "virt_port ignored: catch any otherwise unmatched port of the address.",
        VsFlag.NOARP_MODE: "Accept packets for the address but do not answer ARP for it.",
        VsFlag.APP_PROXY: "(HELLO) sender can proxy the TCP handshake and extract application data.",
        VsFlag.SSL_PROXY: "Balance on the client's SSL/TLS session id.",
        VsFlag.COOKIE_PROXY: "Balance on an HTTP cookie; the cookie name is in app_data.",
        VsFlag.HTTP_PROXY: "Balance on the HTTP request head.",
        VsFlag.RAW_PROXY: "Balance on application data the DFS cannot parse; bridge client bytes to the CS.",
    }
)

VS_CLASS_MEANING: Final = MappingProxyType(
    {
        VsClass.CS_ASSIST: "The CS decides every flow (QUERY/REPLY per flow).",
        VsClass.DFS_ASSIST: "The DFS decides flows itself from the pool in app_data.",
    }
)
