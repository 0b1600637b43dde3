"""OpenFlow 1.3 messages the DFS sends: cookies, priorities and one builder per kind of entry.

Every entry the DFS installs carries a 64-bit cookie laid out as::

    63      56 55      48 47            32 31                      0
    +---------+----------+----------------+-------------------------+
    | TAG 0xD5|   kind   |     epoch      |  flow_id / VS index     |
    +---------+----------+----------------+-------------------------+

``TAG`` keeps the DFS's entries apart from anyone else's; ``kind`` says what the entry is (bit
0x10 marks per-flow entries, so one masked delete removes every flow and nothing else); ``epoch``
names the DFS incarnation that installed it, so after a switch reconnect the DFS can tell its own
live entries from stale ones. Builders take a ``dp`` with ``ofproto``/``ofproto_parser``
attributes (a connected datapath, or :data:`OF13` for pure code); the I/O shim re-targets the
message to the live datapath before it sends it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from os_ken.lib.pack_utils import msg_pack_into
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from slbcore.dfs.packets import IPPROTO_TCP, IPPROTO_UDP

OF13: Any = SimpleNamespace(ofproto=ofproto_v1_3, ofproto_parser=ofproto_v1_3_parser, id=0)
"""A stand-in datapath for building messages without a switch."""

TAG = 0xD5
KIND_PER_FLOW = 0x10
KIND_INFRA = 0x01
KIND_DISPATCH = 0x02
KIND_ROUTE = 0x03
KIND_POOL = 0x04
KIND_FWD = 0x11
KIND_REV = 0x12
KIND_LEARN_FWD = 0x15
KIND_LEARN_REV = 0x16

POOL_TABLE = 1  # one entry per DFS_ASSIST pool member; the pool group's buckets resubmit to it

PRIO_MISS = 0
PRIO_IP_MISS = 1
PRIO_NOT_ROUTED = 50
PRIO_ARP = 100
PRIO_ROUTE = 500
PRIO_VS_BASE = 1000
PRIO_OWN_ADDR = 1500
PRIO_OWN_ICMP = 1501
PRIO_FLOW_ANY_PORT = 1999
PRIO_FLOW = 2000

FLOW_REM_SEND = 1  # NX_LEARN_F_SEND_FLOW_REM
NX_IN_PORT = 0xFFF8  # Nicira actions number ports the OpenFlow 1.0 way: "keep the in_port"

MASK_ALL = 0xFFFFFFFFFFFFFFFF
MASK_TAG = 0xFF << 56
MASK_PER_FLOW = MASK_TAG | (KIND_PER_FLOW << 48)
MASK_FLOW = MASK_TAG | (0xFC << 48) | (0xFFFF << 32) | 0xFFFFFFFF  # both directions of one flow
MASK_KIND = MASK_TAG | (0xFF << 48)


def make_cookie(kind: int, epoch: int, ident: int) -> int:
    """Compose a cookie from its kind, epoch and flow id (or VS index)."""
    return (TAG << 56) | ((kind & 0xFF) << 48) | ((epoch & 0xFFFF) << 32) | (ident & 0xFFFFFFFF)


@dataclass(frozen=True)
class CookieParts:
    """A decoded DFS cookie."""

    kind: int
    epoch: int
    ident: int


def split_cookie(cookie: int) -> CookieParts | None:
    """Decode a cookie, or None when it is not one of the DFS's."""
    if cookie >> 56 != TAG:
        return None
    return CookieParts((cookie >> 48) & 0xFF, (cookie >> 32) & 0xFFFF, cookie & 0xFFFFFFFF)


@dataclass(frozen=True)
class FiveTuple:
    """A transport flow as the switch sees it, in one direction."""

    proto: int
    src: str
    dst: str
    sport: int
    dport: int

    def reversed(self) -> FiveTuple:
        """The same flow seen from the other end."""
        return FiveTuple(self.proto, self.dst, self.src, self.dport, self.sport)


def _l4_names(proto: int) -> tuple[str, str]:
    if proto == IPPROTO_TCP:
        return "tcp_src", "tcp_dst"
    if proto == IPPROTO_UDP:
        return "udp_src", "udp_dst"
    raise ValueError(f"no ports for IP protocol {proto}")


_L4_OXM = {
    IPPROTO_TCP: (ofproto_v1_3.OXM_OF_TCP_SRC, ofproto_v1_3.OXM_OF_TCP_DST),
    IPPROTO_UDP: (ofproto_v1_3.OXM_OF_UDP_SRC, ofproto_v1_3.OXM_OF_UDP_DST),
}
_MATCH_HEAD = struct.Struct("!HHIHIBI4sI4s")


class FiveTupleMatch(ofproto_v1_3_parser.OFPMatch):  # type: ignore[misc]
    """An ``OFPMatch`` on one direction of a flow that builds and serialises itself directly.

    os-ken's generic OXM path converts every address text -> bytes -> text -> bytes through
    netaddr, which costs more than the rest of setting up a flow; this one packs the five
    fields with one ``struct`` call. It is the same match, field for field and byte for byte.
    """

    def __init__(self, ft: FiveTuple) -> None:
        sname, dname = _l4_names(ft.proto)
        fields: list[tuple[str, Any]] = [
            ("eth_type", 0x0800),
            ("ip_proto", ft.proto),
            ("ipv4_src", ft.src),
            ("ipv4_dst", ft.dst),
        ]
        if ft.sport:
            fields.append((sname, ft.sport))
        if ft.dport:
            fields.append((dname, ft.dport))
        # Values are already in os-ken's user form (int, dotted quad), in OXM field order.
        super().__init__(_ordered_fields=fields)
        self.five_tuple = ft

    def serialize(self, buf: bytearray, offset: int) -> int:
        """Write the match at ``offset``; returns its padded length."""
        ft = self.five_tuple
        src_oxm, dst_oxm = _L4_OXM[ft.proto]
        ports = b""
        if ft.sport:
            ports += struct.pack("!IH", src_oxm, ft.sport)
        if ft.dport:
            ports += struct.pack("!IH", dst_oxm, ft.dport)
        length = _MATCH_HEAD.size + len(ports)
        head = _MATCH_HEAD.pack(
            ofproto_v1_3.OFPMT_OXM,
            length,
            ofproto_v1_3.OXM_OF_ETH_TYPE,
            0x0800,
            ofproto_v1_3.OXM_OF_IP_PROTO,
            ft.proto,
            ofproto_v1_3.OXM_OF_IPV4_SRC,
            socket.inet_aton(ft.src),
            ofproto_v1_3.OXM_OF_IPV4_DST,
            socket.inet_aton(ft.dst),
        )
        pad = -length % 8
        msg_pack_into(f"!{length}s{pad}x", buf, offset, head + ports)
        self.length = length
        return length + pad


def match_five_tuple(dp: Any, ft: FiveTuple) -> Any:
    """A match on one direction of a flow; a port of 0 matches any port (a NEWFLOW for client:*)."""
    return FiveTupleMatch(ft)


def flow_priority(ft: FiveTuple) -> int:
    """Exact flows win over a pre-installed any-port flow of the same client."""
    return PRIO_FLOW if ft.sport and ft.dport else PRIO_FLOW_ANY_PORT


def five_tuple_from_match(fields: dict[str, Any]) -> FiveTuple | None:
    """The five-tuple an OFPMatch (as a dict of field -> value) holds (absent port: 0), or None."""
    proto = fields.get("ip_proto")
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return None
    sname, dname = _l4_names(proto)
    try:
        return FiveTuple(
            proto,
            str(fields["ipv4_src"]),
            str(fields["ipv4_dst"]),
            int(fields.get(sname, 0)),
            int(fields.get(dname, 0)),
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Rewrite:
    """What one direction of an offloaded flow does to a packet before it leaves."""

    set_src: str | None
    set_dst: str | None
    set_sport: int | None
    set_dport: int | None
    eth_src: str
    eth_dst: str
    out_port: int


def rewrite_actions(dp: Any, proto: int, rw: Rewrite, fin_idle: int = 0, fin_hard: int = 0) -> list[Any]:
    """Actions applying ``rw``: optional fin_timeout, header rewrites, MACs, output."""
    p = dp.ofproto_parser
    sname, dname = _l4_names(proto)
    acts: list[Any] = []
    if proto == IPPROTO_TCP and (fin_idle or fin_hard):
        # After a FIN or RST the entry's timeouts shrink, so closed connections leave the table
        # (and are reported to the CS) quickly instead of after the full idle timeout.
        acts.append(p.NXActionFinTimeout(fin_idle_timeout=fin_idle, fin_hard_timeout=fin_hard))
    if rw.set_src is not None:
        acts.append(p.OFPActionSetField(ipv4_src=rw.set_src))
    if rw.set_dst is not None:
        acts.append(p.OFPActionSetField(ipv4_dst=rw.set_dst))
    if rw.set_sport is not None:
        acts.append(p.OFPActionSetField(**{sname: rw.set_sport}))
    if rw.set_dport is not None:
        acts.append(p.OFPActionSetField(**{dname: rw.set_dport}))
    acts.append(p.OFPActionSetField(eth_src=rw.eth_src))
    acts.append(p.OFPActionSetField(eth_dst=rw.eth_dst))
    acts.append(p.OFPActionOutput(rw.out_port, 0))
    return acts


@functools.lru_cache(maxsize=4096)
def packed_rewrite_actions(
    proto: int, rw: Rewrite, fin_idle: int = 0, fin_hard: int = 0
) -> tuple[tuple[Any, ...], bytes]:
    """The actions applying ``rw`` and their wire encoding, serialised by os-ken once per rewrite.

    Every flow to one server (and every reverse flow to one client gateway) shares its rewrite,
    so the encoding is cached instead of being produced again for each flow.
    """
    actions = tuple(rewrite_actions(OF13, proto, rw, fin_idle, fin_hard))
    buf = bytearray()
    offset = 0
    for action in actions:
        action.serialize(buf, offset)
        offset += action.len
    return actions, bytes(buf[:offset])


class PackedApplyActions(ofproto_v1_3_parser.OFPInstructionActions):  # type: ignore[misc]
    """An apply-actions instruction whose actions come with their encoding (see above)."""

    def __init__(self, actions: tuple[Any, ...], packed: bytes) -> None:
        super().__init__(ofproto_v1_3.OFPIT_APPLY_ACTIONS, list(actions))
        self.packed = packed

    def serialize(self, buf: bytearray, offset: int) -> None:
        """Write the instruction at ``offset`` (sets ``len`` like os-ken does)."""
        body = ofproto_v1_3.OFP_INSTRUCTION_ACTIONS_SIZE + len(self.packed)
        pad = -body % 8
        self.len = body + pad
        msg_pack_into(
            f"{ofproto_v1_3.OFP_INSTRUCTION_ACTIONS_PACK_STR}{len(self.packed)}s{pad}x",
            buf,
            offset,
            self.type,
            self.len,
            self.packed,
        )


class PackedPacketOut(ofproto_v1_3_parser.OFPPacketOut):  # type: ignore[misc]
    """A packet-out whose actions come with their encoding (see :func:`packed_rewrite_actions`)."""

    def __init__(self, dp: Any, in_port: int, actions: tuple[Any, ...], packed: bytes, data: bytes) -> None:
        super().__init__(
            dp, buffer_id=ofproto_v1_3.OFP_NO_BUFFER, in_port=in_port, actions=list(actions), data=data
        )
        self.packed = packed

    def _serialize_body(self) -> None:
        self.actions_len = len(self.packed)
        msg_pack_into(f"{self.actions_len}s", self.buf, ofproto_v1_3.OFP_PACKET_OUT_SIZE, self.packed)
        self.buf += self.data
        msg_pack_into(
            ofproto_v1_3.OFP_PACKET_OUT_PACK_STR,
            self.buf,
            ofproto_v1_3.OFP_HEADER_SIZE,
            self.buffer_id,
            self.in_port,
            self.actions_len,
        )


def rewrite_packet_out(dp: Any, in_port: int, proto: int, rw: Rewrite, data: bytes) -> Any:
    """Send ``data`` (a packet from ``in_port``) out with ``rw`` applied, bypassing the table."""
    actions, packed = packed_rewrite_actions(proto, rw)
    return PackedPacketOut(dp, in_port, actions, packed, data)


def flow_entry(
    dp: Any, cookie: int, ft: FiveTuple, rw: Rewrite, idle: int, fin_idle: int = 0, fin_hard: int = 0
) -> Any:
    """The flow-mod for one direction of an offloaded flow."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    actions, packed = packed_rewrite_actions(ft.proto, rw, fin_idle, fin_hard)
    return p.OFPFlowMod(
        dp,
        cookie=cookie,
        command=ofp.OFPFC_ADD,
        idle_timeout=idle,
        hard_timeout=0,
        priority=flow_priority(ft),
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        flags=ofp.OFPFF_SEND_FLOW_REM,
        match=match_five_tuple(dp, ft),
        instructions=[PackedApplyActions(actions, packed)],
    )


def to_controller(dp: Any) -> list[Any]:
    """Apply-actions instruction sending the whole packet to the controller."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    return [
        p.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS, [p.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]
        )
    ]


# Scratch registers the opening-packet entries copy the client's address and port into; nothing
# reads them (the DFS_ASSIST pipeline uses reg0 and reg3).
REG_CLIENT_ADDR, REG_CLIENT_PORT = "reg6", "reg7"


def to_controller_per_flow(dp: Any, proto: int) -> list[Any]:
    """Like :func:`to_controller`, but the cached datapath megaflow is exact on the client.

    OVS caches the "to controller" datapath megaflow of a flow's first packet with only as much
    of the source address and port as its classifier had to look at (a few prefix bits), so the
    next connection's first packet can hit that megaflow. OVS's revalidator later credits the
    megaflow's packets to whatever entry its original packet now classifies to: the first flow's
    forward entry, which then counts another connection's SYN that the DFS counts as well.
    Copying the client's address and port into scratch registers makes OVS put both into the
    megaflow, so a connection's first packet is only ever cached for that connection.
    """
    ofp, p = dp.ofproto, dp.ofproto_parser
    sport = _l4_names(proto)[0]
    return [
        p.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS,
            [
                p.NXActionRegMove(src_field="ipv4_src", dst_field=REG_CLIENT_ADDR, n_bits=32),
                p.NXActionRegMove(src_field=sport, dst_field=REG_CLIENT_PORT, n_bits=16),
                p.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER),
            ],
        )
    ]


def add_entry(
    dp: Any, cookie: int, priority: int, match: Any, instructions: list[Any], table_id: int = 0
) -> Any:
    """A permanent flow-mod (no timeouts)."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    return p.OFPFlowMod(
        dp,
        table_id=table_id,
        cookie=cookie,
        command=ofp.OFPFC_ADD,
        priority=priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=match,
        instructions=instructions,
    )


def base_entries(dp: Any, epoch: int, forward: bool = True) -> list[Any]:
    """Table-miss drop, ARP to the controller and, when routing, unknown IPv4 to the controller.

    Multicast and limited-broadcast destinations are never routed; they are dropped in the switch
    so they cost the DFS nothing.
    """
    p = dp.ofproto_parser
    msgs = [
        add_entry(dp, make_cookie(KIND_INFRA, epoch, 0), PRIO_MISS, p.OFPMatch(), []),
        add_entry(dp, make_cookie(KIND_INFRA, epoch, 5), PRIO_MISS, p.OFPMatch(), [], POOL_TABLE),
        add_entry(
            dp, make_cookie(KIND_INFRA, epoch, 1), PRIO_ARP, p.OFPMatch(eth_type=0x0806), to_controller(dp)
        ),
    ]
    if forward:
        msgs += [
            add_entry(
                dp,
                make_cookie(KIND_INFRA, epoch, 2),
                PRIO_IP_MISS,
                p.OFPMatch(eth_type=0x0800),
                to_controller(dp),
            ),
            add_entry(
                dp,
                make_cookie(KIND_INFRA, epoch, 3),
                PRIO_NOT_ROUTED,
                p.OFPMatch(eth_type=0x0800, ipv4_dst=("224.0.0.0", "240.0.0.0")),
                [],
            ),
            add_entry(
                dp,
                make_cookie(KIND_INFRA, epoch, 4),
                PRIO_NOT_ROUTED,
                p.OFPMatch(eth_type=0x0800, ipv4_dst="255.255.255.255"),
                [],
            ),
        ]
    else:
        msgs.append(delete_strict_match(dp, PRIO_IP_MISS, p.OFPMatch(eth_type=0x0800)))
    return msgs


def switch_config(dp: Any) -> list[Any]:
    """Ask for packets whose TTL expires at a ``dec_ttl`` (a router answers them).

    In OpenFlow 1.3 the asynchronous configuration decides which packet-in reasons a controller
    gets; OVS leaves OFPR_INVALID_TTL out by default.
    """
    ofp, p = dp.ofproto, dp.ofproto_parser
    reasons = (1 << ofp.OFPR_NO_MATCH) | (1 << ofp.OFPR_ACTION) | (1 << ofp.OFPR_INVALID_TTL)
    removed = (
        (1 << ofp.OFPRR_IDLE_TIMEOUT)
        | (1 << ofp.OFPRR_HARD_TIMEOUT)
        | (1 << ofp.OFPRR_DELETE)
        | (1 << ofp.OFPRR_GROUP_DELETE)
    )
    ports = (1 << ofp.OFPPR_ADD) | (1 << ofp.OFPPR_DELETE) | (1 << ofp.OFPPR_MODIFY)
    return [p.OFPSetAsync(dp, [reasons, 0], [ports, ports], [removed, 0])]


def own_address_entries(dp: Any, epoch: int, ipaddr: str, index: int) -> list[Any]:
    """IP to the DFS's own interface address: ICMP to the controller (ping), the rest dropped.

    These sit above every virtual server so a wildcard VS never claims the router's addresses.
    """
    p = dp.ofproto_parser
    return [
        add_entry(
            dp,
            make_cookie(KIND_INFRA, epoch, 0x100 + index),
            PRIO_OWN_ADDR,
            p.OFPMatch(eth_type=0x0800, ipv4_dst=ipaddr),
            [],
        ),
        add_entry(
            dp,
            make_cookie(KIND_INFRA, epoch, 0x200 + index),
            PRIO_OWN_ICMP,
            p.OFPMatch(eth_type=0x0800, ipv4_dst=ipaddr, ip_proto=1),
            to_controller(dp),
        ),
    ]


def delete_strict_match(dp: Any, priority: int, match: Any) -> Any:
    """Delete the one entry with exactly this priority and match, whatever its cookie."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    return p.OFPFlowMod(
        dp,
        table_id=0,
        command=ofp.OFPFC_DELETE_STRICT,
        priority=priority,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=match,
    )


def route_actions(dp: Any, eth_src: str, eth_dst: str, out_port: int) -> list[Any]:
    """What a router does to a packet it forwards: TTL down by one, new MACs, out the port."""
    p = dp.ofproto_parser
    return [
        p.OFPActionDecNwTtl(),
        p.OFPActionSetField(eth_src=eth_src),
        p.OFPActionSetField(eth_dst=eth_dst),
        p.OFPActionOutput(out_port, 0),
    ]


def route_entry(
    dp: Any, epoch: int, dst: str, actions: list[Any], idle: int, in_port: int | None = None
) -> Any:
    """A per-destination forwarding entry (the cookie's ident is the destination address).

    With ``in_port`` the entry only matches packets from that port (a route back out of the
    port the packet came in on must use OFPP_IN_PORT, which needs the in_port match).
    """
    ofp, p = dp.ofproto, dp.ofproto_parser
    kwargs: dict[str, Any] = {"eth_type": 0x0800, "ipv4_dst": dst}
    if in_port is not None:
        kwargs["in_port"] = in_port
    return p.OFPFlowMod(
        dp,
        cookie=make_cookie(KIND_ROUTE, epoch, _ip_int(dst)),
        command=ofp.OFPFC_ADD,
        idle_timeout=idle,
        priority=PRIO_ROUTE + (1 if in_port is not None else 0),
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=p.OFPMatch(**kwargs),
        instructions=[p.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)],
    )


def route_entries_delete(dp: Any, dst: str | None = None) -> Any:
    """Remove the forwarding entries for ``dst`` (every destination when None), any epoch."""
    if dst is None:
        return delete_by_cookie(dp, make_cookie(KIND_ROUTE, 0, 0), MASK_KIND)
    return delete_by_cookie(dp, make_cookie(KIND_ROUTE, 0, _ip_int(dst)), MASK_KIND | 0xFFFFFFFF)


def vs_priority(wild_addr: bool, wild_port: bool) -> int:
    """More specific virtual servers win: exact > any port > any address > both wild.

    Each level spans two priorities: a CS_ASSIST TCP virtual server puts its SYN entry one above
    its catch-all (:func:`vs_entries`), still below every more specific virtual server.
    """
    return PRIO_VS_BASE + 2 * ((0 if wild_addr else 2) + (0 if wild_port else 1))


# tcp_flags value/mask of a connection's opening segment: SYN set, ACK clear (ECN bits ignored).
TCP_OPENING = (0x002, 0x012)


def vs_match(
    dp: Any,
    proto: int,
    vip: str,
    vport: int,
    wild_addr: bool,
    wild_port: bool,
    tcp_flags: tuple[int, int] | None = None,
) -> Any:
    """The match selecting new flows to a virtual server (optionally by masked TCP flags)."""
    kwargs: dict[str, Any] = {"eth_type": 0x0800, "ip_proto": proto}
    if not wild_addr:
        kwargs["ipv4_dst"] = vip
    if not wild_port:
        kwargs[_l4_names(proto)[1]] = vport
    if tcp_flags is not None:
        kwargs["tcp_flags"] = tcp_flags  # the ONF OXM field OpenFlow 1.3 switches (OVS) support
    return dp.ofproto_parser.OFPMatch(**kwargs)


def vs_entries(
    dp: Any,
    epoch: int,
    index: int,
    proto: int,
    vip: str,
    vport: int,
    wild_addr: bool,
    wild_port: bool,
    group_id: int | None,
    cs_assist: bool,
) -> list[Any]:
    """Dispatch entries of a virtual server, all with its cookie (so one delete removes them).

    DFS_ASSIST: one entry to its pool group (to the controller, which refuses, while no member
    is reachable). CS_ASSIST UDP: one entry to the controller.
    CS_ASSIST TCP: the opening SYN of an unknown connection goes to the controller from its own
    entry, one priority above a catch-all that sends the rest there too. Matching ``tcp_flags``
    puts the flags into the datapath megaflow that OVS caches for the SYN, so the client's next
    segment (the handshake ACK) misses that cached "to controller" megaflow and is classified
    afresh, against the flow's entries the DFS installed before it released the SYN. Without it
    the ACK usually follows the SYN to the controller until OVS revalidates its cache. The
    entries that send a CS_ASSIST flow's first packet up also make that megaflow exact on the
    client's address and port (:func:`to_controller_per_flow`).
    """
    ofp, p = dp.ofproto, dp.ofproto_parser
    cookie = make_cookie(KIND_DISPATCH, epoch, index)
    priority = vs_priority(wild_addr, wild_port)
    match = vs_match(dp, proto, vip, vport, wild_addr, wild_port)
    if group_id is not None:
        inst = [p.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [p.OFPActionGroup(group_id)])]
        return [add_entry(dp, cookie, priority, match, inst)]
    if not cs_assist or proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return [add_entry(dp, cookie, priority, match, to_controller(dp))]
    if proto == IPPROTO_UDP:
        return [add_entry(dp, cookie, priority, match, to_controller_per_flow(dp, proto))]
    opening = vs_match(dp, proto, vip, vport, wild_addr, wild_port, tcp_flags=TCP_OPENING)
    return [
        add_entry(dp, cookie, priority + 1, opening, to_controller_per_flow(dp, proto)),
        add_entry(dp, cookie, priority, match, to_controller(dp)),
    ]


def vs_entry_delete(dp: Any, epoch: int, index: int) -> Any:
    """Remove a virtual server's dispatch entries (whatever epoch installed them)."""
    cookie = make_cookie(KIND_DISPATCH, 0, index)
    return delete_by_cookie(dp, cookie, MASK_TAG | (0xFF << 48) | 0xFFFFFFFF)


def delete_by_cookie(dp: Any, cookie: int, mask: int, match: Any = None) -> Any:
    """Delete every entry whose cookie matches under ``mask`` (and ``match``, if given)."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    return p.OFPFlowMod(
        dp,
        cookie=cookie,
        cookie_mask=mask,
        table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=match or p.OFPMatch(),
    )


def delete_strict(dp: Any, cookie: int, ft: FiveTuple) -> Any:
    """Delete exactly one per-flow entry."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    return p.OFPFlowMod(
        dp,
        cookie=cookie,
        cookie_mask=MASK_ALL,
        table_id=0,
        command=ofp.OFPFC_DELETE_STRICT,
        priority=flow_priority(ft),
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=match_five_tuple(dp, ft),
    )


def flow_stats_request(dp: Any, cookie: int, mask: int) -> Any:
    """Ask the switch for the counters of every entry whose cookie matches under ``mask``."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    return p.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask, p.OFPMatch())


def packet_out(dp: Any, in_port: int, data: bytes, out_port: int | None = None) -> Any:
    """Send ``data``: out of ``out_port``, or through the flow table when ``out_port`` is None."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    port = ofp.OFPP_TABLE if out_port is None else out_port
    in_p = in_port if in_port else ofp.OFPP_CONTROLLER
    return p.OFPPacketOut(
        dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_p, actions=[p.OFPActionOutput(port, 0)], data=data
    )


def _ip_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def _mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


@dataclass(frozen=True)
class PoolTarget:
    """A resolved DFS_ASSIST pool member: where its bucket rewrites to and sends."""

    ipaddr: str
    port: int
    weight: int
    eth_src: str
    eth_dst: str
    out_port: int


def learn_actions(
    dp: Any,
    epoch: int,
    index: int,
    proto: int,
    target: PoolTarget,
    translate_addr: bool,
    translate_port: bool,
    idle: int,
    fin_idle: int,
    fin_hard: int,
) -> list[Any]:
    """Learn actions installing a connection's forward and reverse entries from its first packet."""
    p = dp.ofproto_parser
    sname, dname = ("tcp_src_nxm", "tcp_dst_nxm") if proto == IPPROTO_TCP else ("udp_src_nxm", "udp_dst_nxm")
    match_spec, load_spec, output_spec = p.NXFlowSpecMatch, p.NXFlowSpecLoad, p.NXFlowSpecOutput
    common = [
        match_spec(src=0x0800, dst=("eth_type_nxm", 0), n_bits=16),
        match_spec(src=proto, dst=("ip_proto_nxm", 0), n_bits=8),
    ]
    fwd = [
        *common,
        match_spec(src=("ipv4_src_nxm", 0), dst=("ipv4_src_nxm", 0), n_bits=32),
        match_spec(src=("ipv4_dst_nxm", 0), dst=("ipv4_dst_nxm", 0), n_bits=32),
        match_spec(src=(sname, 0), dst=(sname, 0), n_bits=16),
        match_spec(src=(dname, 0), dst=(dname, 0), n_bits=16),
    ]
    if translate_addr:
        fwd.append(load_spec(src=_ip_int(target.ipaddr), dst=("ipv4_dst_nxm", 0), n_bits=32))
    if translate_port:
        fwd.append(load_spec(src=target.port, dst=(dname, 0), n_bits=16))
    fwd += [
        load_spec(src=_mac_int(target.eth_src), dst=("eth_src_nxm", 0), n_bits=48),
        load_spec(src=_mac_int(target.eth_dst), dst=("eth_dst_nxm", 0), n_bits=48),
        output_spec(src=("reg0", 0), n_bits=32),
    ]
    rev = list(common)
    if translate_addr:
        rev.append(match_spec(src=_ip_int(target.ipaddr), dst=("ipv4_src_nxm", 0), n_bits=32))
    else:
        rev.append(match_spec(src=("ipv4_dst_nxm", 0), dst=("ipv4_src_nxm", 0), n_bits=32))
    rev.append(match_spec(src=("ipv4_src_nxm", 0), dst=("ipv4_dst_nxm", 0), n_bits=32))
    if translate_port:
        rev.append(match_spec(src=target.port, dst=(sname, 0), n_bits=16))
    else:
        rev.append(match_spec(src=(dname, 0), dst=(sname, 0), n_bits=16))
    rev.append(match_spec(src=(sname, 0), dst=(dname, 0), n_bits=16))
    if translate_addr:
        rev.append(load_spec(src=("ipv4_dst_nxm", 0), dst=("ipv4_src_nxm", 0), n_bits=32))
    if translate_port:
        rev.append(load_spec(src=(dname, 0), dst=(sname, 0), n_bits=16))
    rev += [
        # the client-side MACs: our MAC is what the client addressed, its MAC is what it sent from
        load_spec(src=("eth_dst_nxm", 0), dst=("eth_src_nxm", 0), n_bits=48),
        load_spec(src=("eth_src_nxm", 0), dst=("eth_dst_nxm", 0), n_bits=48),
        output_spec(src=("in_port_nxm", 0), n_bits=16),
    ]
    tcp = proto == IPPROTO_TCP
    kw = {
        "idle_timeout": idle,
        "priority": PRIO_FLOW,
        "flags": FLOW_REM_SEND,
        "fin_idle_timeout": fin_idle if tcp else 0,
        "fin_hard_timeout": fin_hard if tcp else 0,
    }
    return [
        p.NXActionLearn(table_id=0, specs=fwd, cookie=make_cookie(KIND_LEARN_FWD, epoch, index), **kw),
        p.NXActionLearn(table_id=0, specs=rev, cookie=make_cookie(KIND_LEARN_REV, epoch, index), **kw),
    ]


def pool_tag(index: int, member: int) -> int:
    """The reg3 value (and cookie ident) naming member ``member`` of the pool of VS ``index``."""
    return ((index & 0xFFFF) << 16) | (member & 0xFFFF)


def pool_group(dp: Any, command: int, group_id: int, index: int, targets: list[PoolTarget]) -> Any:
    """A select group with one weighted bucket per reachable pool member.

    A bucket only tags the packet with its member (reg3) and resubmits it to :data:`POOL_TABLE`,
    where that member's entry (:func:`pool_member_entry`) does the work. OVS executes bucket
    actions as an action set, which silently drops ``learn``; a resubmitted table runs a
    normal action list. OVS 3.1 picks the bucket with ``dp_hash`` over a symmetric L4 hash of
    the five-tuple (its default for OpenFlow 1.3 select groups), so a connection's packets hash
    to the same member even before its learned entries exist.
    """
    ofp, p = dp.ofproto, dp.ofproto_parser
    buckets = [
        p.OFPBucket(
            weight=max(1, t.weight),
            watch_port=ofp.OFPP_ANY,
            watch_group=ofp.OFPG_ANY,
            actions=[
                p.OFPActionSetField(reg3=pool_tag(index, i)),
                p.NXActionResubmitTable(in_port=NX_IN_PORT, table_id=POOL_TABLE),
            ],
        )
        for i, t in enumerate(targets)
    ]
    return p.OFPGroupMod(dp, command=command, type_=ofp.OFPGT_SELECT, group_id=group_id, buckets=buckets)


def pool_member_entry(
    dp: Any,
    epoch: int,
    index: int,
    member: int,
    proto: int,
    target: PoolTarget,
    translate_addr: bool,
    translate_port: bool,
    idle: int,
    fin_idle: int,
    fin_hard: int,
) -> Any:
    """The POOL_TABLE entry of one member: learn the connection's two entries, DNAT, MACs, output."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    _, dname = _l4_names(proto)
    acts: list[Any] = [p.OFPActionSetField(reg0=target.out_port)]
    acts += learn_actions(
        dp, epoch, index, proto, target, translate_addr, translate_port, idle, fin_idle, fin_hard
    )
    if translate_addr:
        acts.append(p.OFPActionSetField(ipv4_dst=target.ipaddr))
    if translate_port:
        acts.append(p.OFPActionSetField(**{dname: target.port}))
    acts += [
        p.OFPActionSetField(eth_src=target.eth_src),
        p.OFPActionSetField(eth_dst=target.eth_dst),
        p.OFPActionOutput(target.out_port, 0),
    ]
    tag = pool_tag(index, member)
    return p.OFPFlowMod(
        dp,
        table_id=POOL_TABLE,
        cookie=make_cookie(KIND_POOL, epoch, tag),
        command=ofp.OFPFC_ADD,
        priority=PRIO_VS_BASE,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        # learn copies IP and port fields, so the match must carry their prerequisites
        match=p.OFPMatch(eth_type=0x0800, ip_proto=proto, reg3=tag),
        instructions=[p.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, acts)],
    )


def pool_members_delete(dp: Any, index: int, member: int | None = None) -> Any:
    """Remove one member's POOL_TABLE entry, or all of VS ``index``'s (any epoch)."""
    if member is None:
        return delete_by_cookie(dp, make_cookie(KIND_POOL, 0, pool_tag(index, 0)), MASK_KIND | 0xFFFF0000)
    return delete_by_cookie(dp, make_cookie(KIND_POOL, 0, pool_tag(index, member)), MASK_KIND | 0xFFFFFFFF)


def group_delete(dp: Any, group_id: int) -> Any:
    """Delete one group (OFPG_ALL deletes every group)."""
    ofp, p = dp.ofproto, dp.ofproto_parser
    return p.OFPGroupMod(dp, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_SELECT, group_id=group_id, buckets=[])
