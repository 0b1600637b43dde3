"""Scapy layers for the two CS/DFS message buses.

Crafting and dissecting both buses from a Python prompt or a test::

    >>> from slbtools.scapy_layers import *
    >>> q = SSMB(serial_global=1) / SSMBFlow(orig_src_ipaddr="10.0.0.1", flow_id=7)
    >>> SSMB(bytes(q)).show()

SSMB (UDP, default port 7700): an 8-octet header ``SSMB`` followed by the body its
``msg_type`` selects: ``SSMBFlow`` (QUERY, REPLY, REAP, NEWFLOW), ``SSMBAppQuery``
(APP_QUERY), ``SSMBEndflow`` (DELETE, STATS) or nothing (RESET). A batched datagram is a
chain ``SSMB/body/SSMB/body/...``; ``count`` left unset is filled with the number of
messages in the chain.

CSMB (TCP, default port 7701): a 12-octet header ``CSMB`` (``msg_length`` computed when
unset) followed by ``CSMBVsDef`` (ADD_VS, DELETE_VS, optional for QUERY_VS),
``CSMBVsList`` (VS_LIST), ``CSMBHello`` (+ optional ``CSMBHelloAuth``), ``CSMBStatus``,
or nothing (RESET, ACK). Several messages in one TCP payload dissect as a chain.

The wire format is ``docs/PROTOCOL.md``; these layers are written from it independently
of ``slbproto`` so each can check the other.
"""

from __future__ import annotations

import struct
from typing import Any

from scapy.data import IP_PROTOS
from scapy.fields import (
    ByteEnumField,
    ByteField,
    FieldLenField,
    FlagsField,
    IntField,
    IPField,
    LongField,
    PacketListField,
    PadField,
    ShortEnumField,
    ShortField,
    StrLenField,
    XShortField,
)
from scapy.layers.inet import TCP, UDP
from scapy.packet import Packet, Raw, bind_bottom_up, bind_layers

__all__ = [
    "CSMB",
    "CSMB_ERRORS",
    "CSMB_HEADER_LEN",
    "CSMB_TYPES",
    "DEFAULT_CSMB_PORT",
    "DEFAULT_SSMB_PORT",
    "FLOW_FLAGS",
    "SSMB",
    "SSMB_ERRORS",
    "SSMB_HEADER_LEN",
    "SSMB_TYPES",
    "VS_CLASSES",
    "VS_FLAGS",
    "CSMBHello",
    "CSMBHelloAuth",
    "CSMBPoolEntry",
    "CSMBStatus",
    "CSMBVsDef",
    "CSMBVsList",
    "SSMBAppQuery",
    "SSMBEndflow",
    "SSMBFlow",
    "bind_ports",
]

DEFAULT_SSMB_PORT = 7700
DEFAULT_CSMB_PORT = 7701
SSMB_HEADER_LEN = 8
CSMB_HEADER_LEN = 12

SSMB_TYPES = {
    1: "QUERY",
    2: "APP_QUERY",
    3: "REPLY",
    4: "DELETE",
    5: "REAP",
    6: "STATS",
    7: "NEWFLOW",
    8: "RESET",
}
SSMB_ERRORS = {0: "OK", 1: "UNKNOWN", 2: "NOTAVAIL", 3: "CONNLIMIT", 4: "CONNALIVE"}
# Bit n of the flags octet is the n-th name.
FLOW_FLAGS = ["OUTBOUND", "ADD_TCP_OFFSET"]
TCP_FLAG_NAMES = "FSRPAUEC"

CSMB_TYPES = {
    1: "ADD_VS",
    2: "DELETE_VS",
    3: "QUERY_VS",
    4: "VS_LIST",
    5: "RESET",
    6: "STATUS",
    7: "HELLO",
    8: "ACK",
}
CSMB_ERRORS = {0: "OK", 1: "VERS_NEW", 2: "VERS_OBSOLETE"}
VS_FLAGS = [
    "TRANSLATE_ADDR",
    "TRANSLATE_PORT",
    "ROUTE_BY_DST_IP",
    "REDUNDANT",
    "WILDCARD_ADDR",
    "WILDCARD_PORT",
    "NOARP_MODE",
    "APP_PROXY",
    "SSL_PROXY",
    "COOKIE_PROXY",
    "HTTP_PROXY",
    "RAW_PROXY",
]
VS_CLASSES = {1: "CS_ASSIST", 2: "DFS_ASSIST"}

_FLOW_TYPES = (1, 3, 5, 7)
_ENDFLOW_TYPES = (4, 6)
_SSMB_APP_QUERY = 2
_SSMB_RESET = 8

_CSMB_VSDEF_TYPES = (1, 2, 3)
_CSMB_VS_LIST = 4
_CSMB_STATUS = 6
_CSMB_HELLO = 7


def _flow_tuple_fields() -> list[Any]:
    """Fields shared by every SSMB body: the original 5-tuple, tos, proto and flags."""
    return [
        IPField("orig_src_ipaddr", "0.0.0.0"),
        IPField("orig_dst_ipaddr", "0.0.0.0"),
        ShortField("orig_src_port", 0),
        ShortField("orig_dst_port", 0),
        ByteField("tos", 0),
        ByteEnumField("proto", 6, IP_PROTOS),
        FlagsField("flags", 0, 8, FLOW_FLAGS),
        FlagsField("tcp_flags", 0, 8, TCP_FLAG_NAMES),
    ]


def _ssmb_chain_head(pkt: Packet) -> Packet:
    """The first SSMB header of the datagram ``pkt`` belongs to."""
    head = pkt
    layer = pkt.underlayer
    while isinstance(layer, (SSMB, _SSMBBody)):
        if isinstance(layer, SSMB):
            head = layer
        layer = layer.underlayer
    return head


class SSMB(Packet):
    """SSMB header, 8 octets; ``count`` defaults to the messages in this chain."""

    name = "SSMB"
    fields_desc = [
        ShortField("serial_global", 0),
        ShortField("serial_bytype", 0),
        ByteEnumField("msg_type", _SSMB_RESET, SSMB_TYPES),
        ByteField("count", None),
        ShortEnumField("error", 0, SSMB_ERRORS),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        """Fill ``count`` with the number of SSMB headers in the datagram."""
        if self.count is None:
            head = _ssmb_chain_head(self)
            total = 0
            layer: Packet = head
            while layer:
                if isinstance(layer, SSMB):
                    total += 1
                layer = layer.payload
            pkt = pkt[:5] + struct.pack("!B", min(total, 0xFF)) + pkt[6:]
        return pkt + pay

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        """Pick the body by msg_type; after a RESET the next batched message follows."""
        if self.msg_type in _FLOW_TYPES:
            return SSMBFlow
        if self.msg_type in _ENDFLOW_TYPES:
            return SSMBEndflow
        if self.msg_type == _SSMB_APP_QUERY:
            return SSMBAppQuery
        if self.msg_type == _SSMB_RESET and len(payload) >= SSMB_HEADER_LEN:
            return SSMB
        return Raw

    def mysummary(self) -> str:
        """One-line summary used by ``summary()``."""
        return self.sprintf("SSMB %SSMB.msg_type% serial=%SSMB.serial_global% count=%SSMB.count%")


class _SSMBBody(Packet):
    """Common behaviour of SSMB bodies: what follows is the next batched message."""

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        """Bytes after a body are the next message of a batched datagram."""
        if len(payload) >= SSMB_HEADER_LEN:
            return SSMB
        return Raw


class SSMBFlow(_SSMBBody):
    """Flow message body (QUERY, REPLY, REAP, NEWFLOW), 48 octets after the header."""

    name = "SSMB flow"
    fields_desc = [
        *_flow_tuple_fields(),
        IPField("new_dst_ipaddr", "0.0.0.0"),
        ShortField("new_dst_port", 0),
        XShortField("pad", 0),
        IPField("next_hop_ipaddr", "0.0.0.0"),
        IntField("svr_seq_offset", 0),
        IntField("svr_ack_offset", 0),
        IntField("client_seq_offset", 0),
        IntField("client_ack_offset", 0),
        IntField("flow_id", 0),
    ]


class SSMBAppQuery(_SSMBBody):
    """Application proxy query body (APP_QUERY); ``app_data_len`` computed when unset."""

    name = "SSMB app query"
    fields_desc = [
        *_flow_tuple_fields(),
        IPField("new_dst_ipaddr", "0.0.0.0"),
        ShortField("new_dst_port", 0),
        XShortField("pad", 0),
        IPField("next_hop_ipaddr", "0.0.0.0"),
        IntField("flow_id", 0),
        XShortField("pad2", 0),
        FieldLenField("app_data_len", None, length_of="app_data", fmt="!H"),
        StrLenField("app_data", b"", length_from=lambda pkt: pkt.app_data_len),
    ]


class SSMBEndflow(_SSMBBody):
    """Endflow body (DELETE, STATS), 52 octets after the header."""

    name = "SSMB endflow"
    fields_desc = [
        *_flow_tuple_fields(),
        LongField("inbound_bytes", 0),
        LongField("outbound_bytes", 0),
        LongField("inbound_pkts", 0),
        LongField("outbound_pkts", 0),
        IntField("flow_id", 0),
    ]


class CSMB(Packet):
    """CSMB header, 12 octets; ``msg_length`` defaults to this header plus its body."""

    name = "CSMB"
    fields_desc = [
        ShortField("serial_global", 0),
        ShortField("serial_bytype", 0),
        IntField("msg_length", None),
        ByteEnumField("msg_type", 8, CSMB_TYPES),
        ByteField("pad", 0),
        ShortEnumField("error", 0, CSMB_ERRORS),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        """Fill ``msg_length``, counting only this message's body, not later messages."""
        if self.msg_length is None:
            body_len = len(pay)
            following = self.payload.getlayer(CSMB) if self.payload else None
            if following is not None:
                body_len -= len(bytes(following))
            pkt = pkt[:4] + struct.pack("!I", len(pkt) + body_len) + pkt[8:]
        return pkt + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        """The body ends at msg_length; the rest of the segment is the next message."""
        body_len = max((self.msg_length or 0) - CSMB_HEADER_LEN, 0)
        return s[:body_len], s[body_len:]

    def dissect(self, s: bytes) -> None:
        """Dissect one message, then any further messages of the same TCP payload."""
        s = self.pre_dissect(s)
        s = self.do_dissect(s)
        s = self.post_dissect(s)
        body, rest = self.extract_padding(s)
        self.do_dissect_payload(body)
        if not body and self.msg_type == _CSMB_VS_LIST:
            self.add_payload(CSMBVsList(b""))  # an empty list is still a list
        if rest:
            # A malformed length (< 12) must still make progress through the stream.
            nxt: Packet = CSMB(rest) if len(rest) >= CSMB_HEADER_LEN else Raw(rest)
            self.add_payload(nxt)

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        """Pick the body by msg_type."""
        if self.msg_type in _CSMB_VSDEF_TYPES:
            return CSMBVsDef
        if self.msg_type == _CSMB_VS_LIST:
            return CSMBVsList
        if self.msg_type == _CSMB_STATUS:
            return CSMBStatus
        if self.msg_type == _CSMB_HELLO:
            return CSMBHello
        return Raw

    def mysummary(self) -> str:
        """One-line summary used by ``summary()``."""
        return self.sprintf("CSMB %CSMB.msg_type% serial=%CSMB.serial_global% len=%CSMB.msg_length%")

    @classmethod
    def tcp_reassemble(cls, data: bytes, metadata: dict[str, Any], session: Any) -> Packet | None:
        """Hook for scapy's ``TCPSession``: wait until every message in ``data`` is whole."""
        offset = 0
        while offset < len(data):
            if len(data) - offset < CSMB_HEADER_LEN:
                return None
            (length,) = struct.unpack_from("!I", data, offset + 4)
            if length < CSMB_HEADER_LEN:
                return cls(data)  # malformed: waiting would never help
            if len(data) - offset < length:
                return None
            offset += length
        return cls(data)


class CSMBVsDef(Packet):
    """Virtual server definition, 16 + app_data_len octets padded to a multiple of 4."""

    name = "CSMB virtual server"
    fields_desc = [
        FlagsField("flags", 0, 32, VS_FLAGS),
        IPField("virt_ipaddr", "0.0.0.0"),
        ShortField("virt_port", 0),
        ByteEnumField("vs_class", 1, VS_CLASSES),
        ByteEnumField("proto", 6, IP_PROTOS),
        XShortField("pad", 0),
        FieldLenField("app_data_len", None, length_of="app_data", fmt="!H"),
        PadField(StrLenField("app_data", b"", length_from=lambda pkt: pkt.app_data_len), 4),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        """A definition has no payload; what follows is the next definition of a list."""
        return b"", s


class CSMBVsList(Packet):
    """VS_LIST body: zero or more virtual server definitions up to msg_length."""

    name = "CSMB VS list"
    fields_desc = [PacketListField("servers", [], CSMBVsDef)]


class CSMBPoolEntry(Packet):
    """One real server of a DFS_ASSIST pool, 8 octets, carried in a definition's app_data."""

    name = "CSMB pool entry"
    fields_desc = [IPField("ipaddr", "0.0.0.0"), ShortField("port", 0), ShortField("weight", 1)]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        """An entry has no payload; what follows is the next entry."""
        return b"", s


class CSMBHello(Packet):
    """HELLO body, 16 octets; an authenticated HELLO adds ``CSMBHelloAuth``."""

    name = "CSMB hello"
    fields_desc = [
        IPField("ssmb_active_ipaddr", "0.0.0.0"),
        IPField("ssmb_standby_ipaddr", "0.0.0.0"),
        FlagsField("flags", 0, 32, VS_FLAGS),
        ByteField("vers_major", 1),
        ByteField("vers_minor", 0),
        ShortField("ssmb_port", DEFAULT_SSMB_PORT),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        """Bytes after the fixed part are the optional authentication data."""
        return CSMBHelloAuth if payload else Raw


class CSMBHelloAuth(Packet):
    """Optional HELLO authentication: auth_data_len (computed when unset) and auth_data."""

    name = "CSMB hello auth"
    fields_desc = [
        FieldLenField("auth_data_len", None, length_of="auth_data", fmt="!H"),
        StrLenField("auth_data", b"", length_from=lambda pkt: pkt.auth_data_len),
    ]


class CSMBStatus(Packet):
    """STATUS body: status(4)."""

    name = "CSMB status"
    fields_desc = [IntField("status", 0)]


def bind_ports(ssmb_port: int = DEFAULT_SSMB_PORT, csmb_port: int = DEFAULT_CSMB_PORT) -> None:
    """Dissect UDP ``ssmb_port`` as SSMB and TCP ``csmb_port`` as CSMB (either direction)."""
    bind_layers(UDP, SSMB, sport=ssmb_port)
    bind_layers(UDP, SSMB, dport=ssmb_port)
    bind_layers(TCP, CSMB, sport=csmb_port)
    bind_layers(TCP, CSMB, dport=csmb_port)


# Building: the last binding of a body sets its header's default msg_type, so the most
# common type of each body is bound last (QUERY, DELETE, ADD_VS).
for _code in (7, 5, 3):
    bind_bottom_up(SSMB, SSMBFlow, msg_type=_code)
bind_layers(SSMB, SSMBFlow, msg_type=1)
bind_bottom_up(SSMB, SSMBEndflow, msg_type=6)
bind_layers(SSMB, SSMBEndflow, msg_type=4)
bind_layers(SSMB, SSMBAppQuery, msg_type=_SSMB_APP_QUERY)
for _code in (3, 2):
    bind_bottom_up(CSMB, CSMBVsDef, msg_type=_code)
bind_layers(CSMB, CSMBVsDef, msg_type=1)
bind_layers(CSMB, CSMBVsList, msg_type=_CSMB_VS_LIST)
bind_layers(CSMB, CSMBStatus, msg_type=_CSMB_STATUS)
bind_layers(CSMB, CSMBHello, msg_type=_CSMB_HELLO)
bind_layers(CSMBHello, CSMBHelloAuth)
bind_ports()
