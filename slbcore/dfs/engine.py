"""The DFS state machine: events in, OpenFlow messages and bus messages out.

:class:`DfsEngine` owns no socket and reads no clock. Every handler takes the event and ``now``
(seconds, monotonic) and returns an :class:`Output`: OpenFlow messages for the switch, SSMB
messages for the CS, CSMB messages for the configuration connection. The os-ken app and the
daemon feed events in under one lock and send whatever comes out.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from slbcore.dfs import rules
from slbcore.dfs.config import DfsConfig, Interface, RouteResult, RouteTable
from slbcore.dfs.packets import (
    ARP_REPLY,
    ARP_REQUEST,
    ICMP_ADMIN_PROHIBITED,
    ICMP_ECHO_REQUEST,
    ICMP_NET_UNREACH,
    ICMP_PORT_UNREACH,
    ICMP_TIME_EXCEEDED,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Frame,
    PacketError,
    build_arp,
    build_icmp_echo_reply,
    build_icmp_error,
    build_icmp_unreachable,
    build_rst_for,
    icmp_type_code,
    parse_frame,
)
from slbcore.dfs.rules import FiveTuple, PoolTarget, Rewrite
from slbproto import csmb, ssmb
from slbproto.constants import (
    NEWFLOW_ID_BIT,
    PROTOCOL_VERSION,
    CsmbError,
    FlowFlag,
    SsmbError,
    VsClass,
    VsFlag,
)
from slbproto.errors import ProtocolError

ZERO_IP = "0.0.0.0"
ZERO_MAC = "00:00:00:00:00:00"
OFPET_FLOW_MOD_FAILED = 5
OFPFMFC_TABLE_FULL = 1
OFPRR_DELETE = 2
REMOVED_REASONS = {0: "idle_timeout", 1: "hard_timeout", 2: "delete", 3: "group_delete"}
TABLE_FULL_BACKOFF = 1.0
REAP_STATS_TIMEOUT = 2.0
MAX_LEARNED_WAITING = 65536
NO_ROUTE_HOLD = 5  # seconds a "no route" destination is dropped in the switch before asking again


def _opens_connection(tcp_flags: int) -> bool:
    """Whether a TCP segment is a connection's opening SYN (SYN without ACK)."""
    value, mask = rules.TCP_OPENING
    return tcp_flags & mask == value


@dataclass
class SsmbOut:
    """An SSMB message and the (address, port) it goes to."""

    message: Any
    to: tuple[str, int]


@dataclass
class Output:
    """What one event made the DFS send."""

    openflow: list[Any] = field(default_factory=list)
    ssmb: list[SsmbOut] = field(default_factory=list)
    csmb: list[Any] = field(default_factory=list)
    # SSMB senders whose serials start over (a CS that connected or said HELLO): the daemon makes
    # its duplicate filter forget them *before* sending anything else of this output, so the
    # first low serials of a restarted CS (its RESET) are not dropped as old duplicates.
    ssmb_forget: list[tuple[str, int]] = field(default_factory=list)

    def extend(self, other: Output) -> Output:
        """Append ``other``'s messages to this output, in order."""
        self.openflow += other.openflow
        self.ssmb += other.ssmb
        self.csmb += other.csmb
        self.ssmb_forget += other.ssmb_forget
        return self


@dataclass(frozen=True)
class FlowEntryStats:
    """One flow entry as a stats reply or flow-removed reports it."""

    cookie: int
    match: dict[str, Any]
    packet_count: int
    byte_count: int
    priority: int = rules.PRIO_FLOW


@dataclass(frozen=True)
class VsKey:
    """Identity of a virtual server: wildcard parts are normalised to zero."""

    proto: int
    vip: str
    vport: int


@dataclass
class VsState:
    """A configured virtual server and the switch resources it uses."""

    vs: Any
    index: int
    pool: list[Any] = field(default_factory=list)
    targets: list[PoolTarget] = field(default_factory=list)

    @property
    def flags(self) -> VsFlag:
        """The VS flag word."""
        return VsFlag(self.vs.flags)

    @property
    def dfs_assist(self) -> bool:
        """Whether the switch picks servers itself."""
        return int(self.vs.vs_class) == VsClass.DFS_ASSIST


@dataclass
class ClientSide:
    """Where the client of a flow sits: our port/MAC toward it and its (or its router's) MAC."""

    port: int
    eth_src: str
    eth_dst: str


@dataclass
class Pending:
    """A flow waiting for its REPLY, or for ARP after the REPLY."""

    flow_id: int
    ft: FiveTuple
    vs_key: VsKey
    tos: int
    tcp_flags: int
    created: float
    client: ClientSide | None
    first_frame: Frame | None = None
    first_in_port: int = 0
    held: list[tuple[int, bytes]] = field(default_factory=list)
    state: str = "query"
    tries: int = 0
    next_at: float = 0.0
    reply: Any = None
    newflow: bool = False
    waiting_for: str = ""


@dataclass
class Flow:
    """An offloaded flow: its two entries and what has been reported of its counters."""

    flow_id: int
    epoch: int
    ft: FiveTuple
    server_ft: FiveTuple
    tos: int
    flags: int
    tcp_flags: int
    fwd_rewrite: Rewrite | None
    installed: float
    extra_in_pkts: int = 0
    extra_in_bytes: int = 0
    reported: tuple[int, int, int, int] = (0, 0, 0, 0)
    last_look_pkts: int = 0
    removed: dict[int, tuple[int, int]] = field(default_factory=dict)
    closing_deadline: float | None = None
    late_packet_ins: int = 0

    @property
    def fwd_cookie(self) -> int:
        """Cookie of the client-to-server entry."""
        return rules.make_cookie(rules.KIND_FWD, self.epoch, self.flow_id)

    @property
    def rev_cookie(self) -> int:
        """Cookie of the server-to-client entry."""
        return rules.make_cookie(rules.KIND_REV, self.epoch, self.flow_id)


@dataclass
class LearnedEnd:
    """Half-reported DFS_ASSIST connection: one learned entry is gone, waiting for the other."""

    client_ft: FiveTuple | None
    removed: dict[int, tuple[int, int]]
    deadline: float


@dataclass
class ArpWait:
    """An outstanding ARP request."""

    intf: Interface
    tries: int
    next_at: float


@dataclass
class RouteWait:
    """Packets to be routed once their next hop's MAC is known."""

    route: RouteResult
    packets: list[tuple[int, str, bytes]] = field(default_factory=list)


@dataclass
class ReapWait:
    """A REAP waiting for the switch's counters."""

    reap: Any
    deadline: float


class DfsEngine:
    """Pure DFS logic; see the package docstring for the data-plane model."""

    def __init__(
        self,
        config: DfsConfig,
        epoch: int,
        dp: Any = None,
        route_lookup: Callable[[str], RouteResult | None] | None = None,
    ) -> None:
        self.cfg = config
        self.route: Callable[[str], RouteResult | None] = (
            route_lookup if route_lookup is not None else RouteTable(config.interfaces, config.routes).lookup
        )
        self.epoch = epoch & 0xFFFF
        self.dp = dp if dp is not None else rules.OF13
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.switch_up = False
        self.csmb_up = False
        self.hello_acked = False
        self.cs_ssmb: tuple[str, int] = (config.cs_ipaddr, config.cs_ssmb_port)
        self.cs_standby: str = ZERO_IP
        self.redundant = False
        self.vservers: dict[VsKey, VsState] = {}
        self.neighbours: dict[str, tuple[str, int, float]] = {}
        self.arp_waits: dict[str, ArpWait] = {}
        self.pending: dict[int, Pending] = {}
        self.pending_by_ft: dict[FiveTuple, int] = {}
        self.flows: dict[int, Flow] = {}
        self.flows_by_ft: dict[FiveTuple, int] = {}
        self.flows_by_server_ft: dict[FiveTuple, int] = {}
        self.learned: dict[tuple[int, int, str, int], LearnedEnd] = {}
        # Flows waiting for their partner entry's removal; the timer scans only these, not
        # every offloaded flow.
        self.closing: dict[int, Flow] = {}
        self.reaps: dict[int, ReapWait] = {}
        self.routed: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.route_waits: dict[str, RouteWait] = {}
        self.held_total = 0
        self.table_full_until = 0.0
        self.audit_pending = False
        self._next_flow_id = 1
        self._next_vs_index = 1

    # ------------------------------------------------------------------ bookkeeping helpers

    def _error(self, kind: str) -> None:
        self.errors[kind] += 1

    @property
    def cs_ready(self) -> bool:
        """Whether the CS can be asked about new flows."""
        return self.csmb_up and self.hello_acked

    def _alloc_flow_id(self) -> int:
        for _ in range(1 << 16):
            fid = self._next_flow_id
            self._next_flow_id = fid + 1 if fid + 1 < NEWFLOW_ID_BIT else 1
            if fid not in self.flows and fid not in self.pending:
                return fid
        raise RuntimeError("flow id space exhausted")  # unreachable below max_flows

    def _ssmb(self, msg: Any, state_shared: bool = False) -> list[SsmbOut]:
        outs = [SsmbOut(msg, self.cs_ssmb)]
        if state_shared and self.redundant and self.cs_standby != ZERO_IP:
            outs.append(SsmbOut(msg, (self.cs_standby, self.cs_ssmb[1])))
        return outs

    def status(self) -> dict[str, Any]:
        """Counters and sizes for the status endpoint."""
        return {
            "name": self.cfg.name,
            "epoch": self.epoch,
            "switch_connected": self.switch_up,
            "cs_connected": self.cs_ready,
            "virtual_servers": len(self.vservers),
            "flows_active": len(self.flows),
            "flows_pending": len(self.pending),
            "held_packets": self.held_total,
            "neighbours": len(self.neighbours),
            "routed_destinations": len(self.routed),
            "counters": dict(sorted(self.counters.items())),
            "errors": dict(sorted(self.errors.items())),
        }

    def flow_table(self) -> list[dict[str, Any]]:
        """The offloaded and pending flows, for the status endpoint."""
        rows: list[dict[str, Any]] = []
        for f in self.flows.values():
            rows.append(
                {
                    "flow_id": f.flow_id,
                    "state": "offloaded",
                    "proto": f.ft.proto,
                    "client": f"{f.ft.src}:{f.ft.sport}",
                    "vip": f"{f.ft.dst}:{f.ft.dport}",
                    "server": f"{f.server_ft.src}:{f.server_ft.sport}",
                    "epoch": f.epoch,
                    "installed": f.installed,
                }
            )
        for p in self.pending.values():
            rows.append(
                {
                    "flow_id": p.flow_id,
                    "state": p.state,
                    "proto": p.ft.proto,
                    "client": f"{p.ft.src}:{p.ft.sport}",
                    "vip": f"{p.ft.dst}:{p.ft.dport}",
                    "held": len(p.held),
                    "created": p.created,
                }
            )
        return rows

    # ------------------------------------------------------------------ switch connection

    def switch_connected(self, now: float) -> Output:
        """The switch (re)connected: program the fixed entries and audit per-flow entries."""
        self.switch_up = True
        self.counters["switch_connects"] += 1
        dp, ofp = self.dp, self.dp.ofproto
        out = Output()
        # Groups are re-created from our own state; learned entries do not reference them.
        out.openflow.append(rules.group_delete(dp, ofp.OFPG_ALL))
        out.openflow.append(
            rules.delete_by_cookie(dp, rules.make_cookie(rules.KIND_POOL, 0, 0), rules.MASK_KIND)
        )
        out.openflow += rules.switch_config(dp)
        out.openflow += rules.base_entries(dp, self.epoch, self.cfg.routing.forward)
        if self.counters["switch_connects"] == 1:
            # Forwarding entries of an earlier incarnation may point at stale MACs; ours stay.
            out.openflow.append(rules.route_entries_delete(dp))
        for i, intf in enumerate(self.cfg.interfaces):
            out.openflow += rules.own_address_entries(dp, self.epoch, intf.ipaddr, i)
        # Dispatch entries are rewritten from our own state; an earlier incarnation's may have
        # another shape or belong to a virtual server that is gone, and overlapping entries of
        # equal priority would make the switch's choice arbitrary.
        out.openflow.append(
            rules.delete_by_cookie(dp, rules.make_cookie(rules.KIND_DISPATCH, 0, 0), rules.MASK_KIND)
        )
        for st in self.vservers.values():
            out.extend(self._program_vs(st, now, new_group=True))
        self.audit_pending = True
        out.openflow.append(
            rules.flow_stats_request(dp, rules.make_cookie(rules.KIND_PER_FLOW, 0, 0), rules.MASK_PER_FLOW)
        )
        return out

    def switch_disconnected(self, now: float) -> Output:
        """The switch went away; flows stay installed in it and are audited on reconnect."""
        self.switch_up = False
        self.counters["switch_disconnects"] += 1
        return Output()

    # ------------------------------------------------------------------ packet-in

    def packet_in(self, in_port: int, data: bytes, now: float) -> Output:
        """A packet the switch sent to the controller."""
        self.counters["packet_ins"] += 1
        try:
            frame = parse_frame(data)
        except PacketError as exc:
            self._error(f"bad_packet.{exc.code}")
            return Output()
        if frame.arp is not None:
            return self._arp_in(in_port, frame, now)
        ip = frame.ip
        assert ip is not None
        own = self.cfg.owns_address(ip.dst)
        if own is not None:
            return self._local(in_port, frame)
        if ip.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            if self._is_vip(ip.dst):
                return self._local(in_port, frame)
            return self._forward(in_port, frame, data, now)
        ft = FiveTuple(ip.proto, ip.src, ip.dst, ip.sport, ip.dport)
        fid = self.flows_by_ft.get(ft)
        if fid is not None:
            return self._late_packet(self.flows[fid], in_port, frame, data)
        fid = self.pending_by_ft.get(ft)
        if fid is not None:
            self._hold(self.pending[fid], in_port, data)
            return Output()
        st = self._find_vs(ft)
        if st is None:
            if self._is_vip(ip.dst):
                # The VIP is this load balancer's address: a port nobody serves is closed, and
                # the client hears so at once (RST / port unreachable), as from any host.
                self.counters["vip_port_closed"] += 1
                return self._reject(in_port, frame, SsmbError.UNKNOWN)
            return self._forward(in_port, frame, data, now)
        intf = self.cfg.interface_for_port(in_port)
        if intf is None:
            self._error("packet_in_unknown_port")
            return Output()
        if not st.dfs_assist and ip.proto == IPPROTO_TCP and not _opens_connection(ip.tcp_flags):
            # A segment of a connection nobody offloaded (its entries expired or were reset): as
            # a host with no such connection would, answer RST (never for a RST) instead of
            # asking the CS to place a connection the server does not know either.
            self.counters["unknown_segment_refused"] += 1
            return self._reject(in_port, frame, SsmbError.UNKNOWN)
        refusal = self._refusal(st, now)
        if refusal:
            self._error(refusal)
            return self._reject(in_port, frame, SsmbError.NOTAVAIL)
        fid = self._alloc_flow_id()
        p = Pending(
            fid,
            ft,
            self._key_of(st),
            ip.tos,
            ip.tcp_flags,
            now,
            ClientSide(in_port, intf.mac, frame.eth_src),
            frame,
            in_port,
        )
        self.pending[fid] = p
        self.pending_by_ft[ft] = fid
        self._hold(p, in_port, data)
        return self._send_query(p, now)

    def _refusal(self, st: VsState, now: float) -> str:
        if st.dfs_assist:
            return "pool_unreachable"
        if not self.cs_ready:
            return "cs_unavailable"
        if now < self.table_full_until:
            return "table_full"
        if len(self.flows) + len(self.pending) >= self.cfg.limits.max_flows:
            return "flow_limit"
        if len(self.pending) >= self.cfg.limits.max_pending:
            return "pending_limit"
        return ""

    def _hold(self, p: Pending, in_port: int, data: bytes) -> None:
        if len(p.held) >= self.cfg.limits.held_per_flow or self.held_total >= self.cfg.limits.held_total:
            self._error("held_dropped")
            return
        p.held.append((in_port, data))
        self.held_total += 1
        self.counters["held_packets"] += 1

    def _drop_pending(self, p: Pending) -> None:
        self.pending.pop(p.flow_id, None)
        if self.pending_by_ft.get(p.ft) == p.flow_id:
            del self.pending_by_ft[p.ft]
        self.held_total -= len(p.held)
        p.held.clear()

    def _send_query(self, p: Pending, now: float) -> Output:
        p.tries += 1
        p.next_at = now + self.cfg.timeouts.query
        if p.tries == 1:
            self.counters["queries_sent"] += 1
        else:
            self.counters["query_retransmits"] += 1
        q = ssmb.Query(
            orig_src_ipaddr=p.ft.src,
            orig_dst_ipaddr=p.ft.dst,
            orig_src_port=p.ft.sport,
            orig_dst_port=p.ft.dport,
            tos=p.tos,
            proto=p.ft.proto,
            tcp_flags=p.tcp_flags & 0xFF,
            flow_id=p.flow_id,
        )
        return Output(ssmb=self._ssmb(q))

    def _late_packet(self, f: Flow, in_port: int, frame: Frame, data: bytes) -> Output:
        # A packet that overtook its flow's entries: OVS's datapath cache still held the old
        # "to controller" megaflow. Its revalidator later credits that megaflow's packets to the
        # new forward entry, so unlike held packets these are not added to the flow's counts.
        # Sending it with explicit actions, not through the table, means a missing entry can
        # never loop a packet back to us.
        f.late_packet_ins += 1
        self.counters["packet_ins_after_offload"] += 1
        if f.fwd_rewrite is None:
            self._error("late_packet_unroutable")
            return Output()
        return Output(openflow=[self._release(in_port, data, f.ft.proto, f.fwd_rewrite)])

    def _release(self, in_port: int, data: bytes, proto: int, rw: Rewrite) -> Any:
        return rules.rewrite_packet_out(self.dp, in_port, proto, rw, data)

    def _reject(self, in_port: int, frame: Frame, error: int) -> Output:
        """Refuse a flow toward the client: TCP RST, or ICMP unreachable for UDP."""
        ip = frame.ip
        intf = self.cfg.interface_for_port(in_port)
        if ip is None or intf is None:
            return Output()
        if ip.proto == IPPROTO_TCP:
            if ip.tcp_flags & 0x04:
                return Output()  # never answer a RST with a RST
            data = build_rst_for(frame, intf.mac)
            self.counters["rst_sent"] += 1
        else:
            code = ICMP_PORT_UNREACH if error == SsmbError.UNKNOWN else ICMP_ADMIN_PROHIBITED
            data = build_icmp_unreachable(frame, intf.mac, code)
            self.counters["icmp_unreach_sent"] += 1
        return Output(openflow=[rules.packet_out(self.dp, 0, data, in_port)])

    def _fail_pending(self, p: Pending, reason: str, error: int = SsmbError.NOTAVAIL) -> Output:
        self._error(reason)
        self.counters["flows_refused"] += 1
        out = Output()
        if p.first_frame is not None:
            out.extend(self._reject(p.first_in_port, p.first_frame, error))
        self._drop_pending(p)
        return out

    # ------------------------------------------------------------------ router

    def _is_vip(self, ipaddr: str) -> bool:
        return any(
            st.vs.virt_ipaddr == ipaddr and not st.flags & VsFlag.WILDCARD_ADDR
            for st in self.vservers.values()
        )

    def _local(self, in_port: int, frame: Frame) -> Output:
        """IP addressed to the DFS itself or a VIP: answer ping, ignore the rest."""
        ip = frame.ip
        intf = self.cfg.interface_for_port(in_port)
        assert ip is not None
        if intf is None:
            self._error("packet_in_unknown_port")
            return Output()
        if ip.proto == IPPROTO_ICMP and icmp_type_code(ip) == (ICMP_ECHO_REQUEST, 0):
            self.counters["icmp_echo_replies"] += 1
            return Output(
                openflow=[rules.packet_out(self.dp, 0, build_icmp_echo_reply(frame, intf.mac), in_port)]
            )
        self.counters["local_ignored"] += 1
        return Output()

    def _forward(self, in_port: int, frame: Frame, data: bytes, now: float) -> Output:
        """Traffic for no virtual server: route it like an IPv4 router, or drop it with a counter."""
        ip = frame.ip
        assert ip is not None
        intf = self.cfg.interface_for_port(in_port)
        if intf is None:
            self._error("packet_in_unknown_port")
            return Output()
        if not self.cfg.routing.forward:
            self.counters["not_routed_drops"] += 1
            return Output()
        if frame.eth_dst != intf.mac:
            # Not sent to us as a router (flooded or misaddressed): a router ignores it.
            self.counters["not_for_router_drops"] += 1
            return Output()
        if ip.ttl <= 1:
            self.counters["ttl_exceeded"] += 1
            if ip.proto == IPPROTO_ICMP and self._is_icmp_error(ip):
                return Output()
            err = build_icmp_error(frame, intf.mac, ICMP_TIME_EXCEEDED, 0, intf.ipaddr)
            return Output(openflow=[rules.packet_out(self.dp, 0, err, in_port)])
        route = self.route(ip.dst)
        if route is None:
            self.counters["no_route_drops"] += 1
            # A short-lived drop entry keeps a flood toward an unrouted address off the controller.
            out = Output(openflow=[rules.route_entry(self.dp, self.epoch, ip.dst, [], NO_ROUTE_HOLD)])
            if not (ip.proto == IPPROTO_ICMP and self._is_icmp_error(ip)):
                err = build_icmp_unreachable(frame, intf.mac, ICMP_NET_UNREACH, intf.ipaddr)
                out.openflow.append(rules.packet_out(self.dp, 0, err, in_port))
            return out
        l2 = self._resolve(route.next_hop, now)
        if isinstance(l2, Output):
            if route.next_hop not in self.arp_waits:
                self.counters["route_unresolvable_drops"] += 1
                return l2
            wait = self.route_waits.setdefault(route.next_hop, RouteWait(route))
            if (
                len(wait.packets) >= self.cfg.limits.held_per_flow
                or self.held_total >= self.cfg.limits.held_total
            ):
                self.counters["route_held_dropped"] += 1
            else:
                wait.packets.append((in_port, ip.dst, data))
                self.held_total += 1
            return l2
        return self._route_install(in_port, ip.dst, route, l2, [data])

    @staticmethod
    def _is_icmp_error(ip: Any) -> bool:
        tc = icmp_type_code(ip)
        return tc is not None and tc[0] in (3, 4, 5, 11, 12)

    def _route_install(
        self, in_port: int, dst: str, route: RouteResult, l2: tuple[str, int], packets: list[bytes]
    ) -> Output:
        """Install the forwarding entry for ``dst`` and send ``packets`` the same way."""
        mac, port = l2
        intf = route.interface
        hairpin = port == in_port
        out_port = self.dp.ofproto.OFPP_IN_PORT if hairpin else port
        actions = rules.route_actions(self.dp, intf.mac, mac, out_port)
        out = Output(
            openflow=[
                rules.route_entry(
                    self.dp,
                    self.epoch,
                    dst,
                    actions,
                    self.cfg.routing.route_idle,
                    in_port if hairpin else None,
                )
            ]
        )
        self.counters["routes_installed"] += 1
        self.routed[dst] = (route.next_hop, in_port if hairpin else 0)
        self.routed.move_to_end(dst)
        while len(self.routed) > self.cfg.routing.max_routes:
            old, _ = self.routed.popitem(last=False)
            out.openflow.append(rules.route_entries_delete(self.dp, old))
        for data in packets:
            self.counters["packets_routed"] += 1
            out.openflow.append(
                self.dp.ofproto_parser.OFPPacketOut(
                    self.dp,
                    buffer_id=self.dp.ofproto.OFP_NO_BUFFER,
                    in_port=in_port,
                    actions=rules.route_actions(self.dp, intf.mac, mac, out_port),
                    data=data,
                )
            )
        return out

    def routes_changed(self, now: float) -> Output:
        """The route table changed (kernel routes re-read): forget every forwarding entry."""
        self.counters["route_table_changes"] += 1
        self.routed.clear()
        if not self.switch_up:
            return Output()
        return Output(openflow=[rules.route_entries_delete(self.dp)])

    # ------------------------------------------------------------------ ARP and neighbours

    def _arp_in(self, in_port: int, frame: Frame, now: float) -> Output:
        arp = frame.arp
        assert arp is not None
        intf = self.cfg.interface_for_port(in_port)
        if intf is None:
            self._error("arp_unknown_port")
            return Output()
        out = Output()
        if arp.spa != ZERO_IP and ipaddress.IPv4Address(arp.spa) in intf.network and arp.spa != intf.ipaddr:
            known = self.neighbours.get(arp.spa)
            self.neighbours[arp.spa] = (arp.sha, in_port, now)
            if known is None or known[:2] != (arp.sha, in_port):
                out.extend(self._neighbour_changed(arp.spa, now))
        if arp.op == ARP_REQUEST and self._answers_arp_for(arp.tpa, intf):
            self.counters["arp_replies"] += 1
            reply = build_arp(ARP_REPLY, intf.mac, arp.tpa, arp.sha, arp.spa)
            out.openflow.append(rules.packet_out(self.dp, 0, reply, in_port))
        return out

    def _answers_arp_for(self, ipaddr: str, intf: Interface) -> bool:
        if ipaddr == intf.ipaddr:
            return True
        for st in self.vservers.values():
            flags = st.flags
            if st.vs.virt_ipaddr == ipaddr and not flags & (VsFlag.NOARP_MODE | VsFlag.WILDCARD_ADDR):
                return True
        return False

    def _resolve(self, ipaddr: str, now: float) -> tuple[str, int] | Output:
        """The neighbour's (MAC, port), or the Output that starts resolving it."""
        known = self.neighbours.get(ipaddr)
        if known is not None:
            return known[0], known[1]
        if ipaddr in self.arp_waits:
            return Output()
        intf = self.cfg.connected(ipaddr)
        if intf is None:
            return Output()
        self.arp_waits[ipaddr] = ArpWait(intf, 1, now + self.cfg.timeouts.arp)
        return Output(openflow=[self._arp_request(intf, ipaddr)])

    def _arp_request(self, intf: Interface, ipaddr: str) -> Any:
        self.counters["arp_requests"] += 1
        data = build_arp(ARP_REQUEST, intf.mac, intf.ipaddr, ZERO_MAC, ipaddr)
        return rules.packet_out(self.dp, 0, data, intf.port)

    def _neighbour_changed(self, ipaddr: str, now: float) -> Output:
        self.arp_waits.pop(ipaddr, None)
        out = Output()
        l2 = self.neighbours[ipaddr][:2]
        wait = self.route_waits.pop(ipaddr, None)
        if wait is not None:
            self.held_total -= len(wait.packets)
            by_dst: dict[tuple[int, str], list[bytes]] = {}
            for in_port, dst, data in wait.packets:
                by_dst.setdefault((in_port, dst), []).append(data)
            for (in_port, dst), packets in by_dst.items():
                out.extend(self._route_install(in_port, dst, wait.route, l2, packets))
        for dst, (nh, in_port) in list(self.routed.items()):
            if nh == ipaddr and self.switch_up:
                # The next hop moved (new MAC or port): re-point its destinations.
                route = self.route(dst)
                if route is not None and route.next_hop == ipaddr:
                    out.extend(self._route_install(in_port or 0, dst, route, l2, []))
        for p in [p for p in self.pending.values() if p.state == "arp" and p.waiting_for == ipaddr]:
            out.extend(self._plan(p, now))
        for st in self.vservers.values():
            if st.dfs_assist and any(self._pool_next_hop(e) == ipaddr for e in st.pool):
                out.extend(self._program_vs(st, now))
        return out

    # ------------------------------------------------------------------ SSMB in

    def ssmb_message(self, msg: Any, now: float) -> Output:
        """A message from the CS on the SSMB."""
        if isinstance(msg, ssmb.Reply):
            return self._reply(msg, now)
        if isinstance(msg, ssmb.Reap):
            return self._reap(msg, now)
        if isinstance(msg, ssmb.NewFlow):
            return self._newflow(msg, now)
        if isinstance(msg, ssmb.Reset):
            return self._reset_flows(now)
        self._error(f"ssmb_unexpected.{type(msg).__name__}")
        return Output()

    def _reply(self, msg: Any, now: float) -> Output:
        self.counters["replies"] += 1
        p = self.pending.get(msg.flow_id)
        if p is None or p.state != "query" or p.newflow:
            self._error(
                "duplicate_reply" if p is not None or msg.flow_id in self.flows else "unsolicited_reply"
            )
            return Output()
        if (msg.orig_src_ipaddr, msg.orig_dst_ipaddr, msg.orig_src_port, msg.orig_dst_port, msg.proto) != (
            p.ft.src,
            p.ft.dst,
            p.ft.sport,
            p.ft.dport,
            p.ft.proto,
        ):
            self._error("reply_mismatch")
            return Output()
        if msg.error != SsmbError.OK:
            try:
                name = SsmbError(msg.error).name.lower()
            except ValueError:
                name = f"code{msg.error}"
            return self._fail_pending(p, f"reply_{name}", msg.error)
        p.reply = msg
        p.state = "plan"
        return self._plan(p, now)

    def _plan(self, p: Pending, now: float) -> Output:
        """Turn a REPLY (or NEWFLOW) into entries once every next hop is resolved."""
        st = self.vservers.get(p.vs_key)
        if st is None:
            return self._fail_pending(p, "vs_gone")
        msg, flags = p.reply, st.flags
        if msg.flags & FlowFlag.ADD_TCP_OFFSET and (
            msg.svr_seq_offset or msg.svr_ack_offset or msg.client_seq_offset or msg.client_ack_offset
        ):
            # OpenFlow cannot add to TCP sequence numbers; a flow needing it cannot be offloaded.
            return self._fail_pending(p, "tcp_offset_unsupported")
        new_dst = msg.new_dst_ipaddr if flags & VsFlag.TRANSLATE_ADDR else p.ft.dst
        new_port = msg.new_dst_port if flags & VsFlag.TRANSLATE_PORT else p.ft.dport
        if new_dst == ZERO_IP or new_port == 0:
            return self._fail_pending(p, "reply_without_target")
        route: RouteResult | None
        if flags & VsFlag.ROUTE_BY_DST_IP or msg.next_hop_ipaddr == ZERO_IP:
            route = self.route(new_dst)
        else:
            intf = self.cfg.connected(msg.next_hop_ipaddr)
            route = RouteResult(intf, msg.next_hop_ipaddr) if intf is not None else None
        if route is None:
            return self._fail_pending(p, "no_route")
        out = Output()
        server_l2 = self._resolve(route.next_hop, now)
        if isinstance(server_l2, Output):
            return self._await_arp(p, route.next_hop, server_l2, now)
        if p.client is None:
            back = self.route(p.ft.src)
            if back is None:
                return self._fail_pending(p, "no_route")
            client_l2 = self._resolve(back.next_hop, now)
            if isinstance(client_l2, Output):
                return self._await_arp(p, back.next_hop, client_l2, now)
            p.client = ClientSide(back.interface.port, back.interface.mac, client_l2[0])
        server_mac, server_port = server_l2
        fwd = Rewrite(
            None,
            new_dst if new_dst != p.ft.dst else None,
            None,
            new_port if new_port != p.ft.dport else None,
            route.interface.mac,
            server_mac,
            server_port,
        )
        server_ft = FiveTuple(p.ft.proto, new_dst, p.ft.src, new_port, p.ft.sport)
        rev = Rewrite(
            p.ft.dst if new_dst != p.ft.dst else None,
            None,
            p.ft.dport if new_port != p.ft.dport else None,
            None,
            p.client.eth_src,
            p.client.eth_dst,
            p.client.port,
        )
        return out.extend(self._install(p, server_ft, fwd, rev, now))

    def _await_arp(self, p: Pending, ipaddr: str, started: Output, now: float) -> Output:
        if ipaddr not in self.arp_waits:
            return self._fail_pending(p, "no_route")
        p.state = "arp"
        p.waiting_for = ipaddr
        return started

    def _install(self, p: Pending, server_ft: FiveTuple, fwd: Rewrite, rev: Rewrite, now: float) -> Output:
        if not self.switch_up:
            return self._fail_pending(p, "switch_down")
        if server_ft in self.flows_by_server_ft or p.ft in self.flows_by_ft:
            return self._fail_pending(p, "flow_collision")
        t = self.cfg.timeouts
        f = Flow(p.flow_id, self.epoch, p.ft, server_ft, p.tos, int(p.reply.flags), p.tcp_flags, fwd, now)
        # An any-port flow (NEWFLOW for client:*) is shared by many connections: one FIN must not
        # end it, so it keeps the plain idle timeout.
        fin_idle, fin_hard = (t.fin_idle, t.fin_hard) if p.ft.sport else (0, 0)
        out = Output(
            openflow=[
                rules.flow_entry(self.dp, f.fwd_cookie, p.ft, fwd, t.idle, fin_idle, fin_hard),
                rules.flow_entry(self.dp, f.rev_cookie, server_ft, rev, t.idle, fin_idle, fin_hard),
            ]
        )
        for in_port, data in p.held:
            out.openflow.append(self._release(in_port, data, p.ft.proto, fwd))
            f.extra_in_pkts += 1
            f.extra_in_bytes += len(data)
            self.counters["held_released"] += 1
        self._drop_pending(p)
        self.flows[f.flow_id] = f
        self.flows_by_ft[f.ft] = f.flow_id
        self.flows_by_server_ft[server_ft] = f.flow_id
        self.counters["flows_offloaded"] += 1
        return out

    def _newflow(self, msg: Any, now: float) -> Output:
        self.counters["newflows"] += 1
        if not msg.flow_id & NEWFLOW_ID_BIT:
            self._error("newflow_bad_id")
            return Output()
        ft = FiveTuple(
            msg.proto, msg.orig_src_ipaddr, msg.orig_dst_ipaddr, msg.orig_src_port, msg.orig_dst_port
        )
        if msg.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            self._error("newflow_bad_proto")
            return Output()
        if (
            msg.flow_id in self.flows
            or msg.flow_id in self.pending
            or ft in self.flows_by_ft
            or ft in self.pending_by_ft
        ):
            self._error("newflow_duplicate")
            return Output()
        st = self._find_vs(ft)
        if st is None:
            self._error("newflow_no_vs")
            return Output()
        p = Pending(
            msg.flow_id,
            ft,
            self._key_of(st),
            msg.tos,
            msg.tcp_flags,
            now,
            None,
            newflow=True,
            reply=msg,
            state="plan",
        )
        self.pending[p.flow_id] = p
        self.pending_by_ft[ft] = p.flow_id
        return self._plan(p, now)

    def _stats_msg(self, f: Flow, pkts_bytes: dict[int, tuple[int, int]], cls: Any, error: int = 0) -> Any:
        """STATS or DELETE carrying the flow's running totals (never smaller than sent before)."""
        fwd_p, fwd_b = pkts_bytes.get(rules.KIND_FWD, (0, 0))
        rev_p, rev_b = pkts_bytes.get(rules.KIND_REV, (0, 0))
        seen = (fwd_b + f.extra_in_bytes, rev_b, fwd_p + f.extra_in_pkts, rev_p)
        # A direction the switch did not report this time (lost entry, stats timeout) keeps the
        # total already sent, so totals only grow and the CS can take differences safely.
        total = tuple(max(a, b) for a, b in zip(seen, f.reported, strict=True))
        f.reported = (total[0], total[1], total[2], total[3])
        return cls(
            orig_src_ipaddr=f.ft.src,
            orig_dst_ipaddr=f.ft.dst,
            orig_src_port=f.ft.sport,
            orig_dst_port=f.ft.dport,
            tos=f.tos,
            proto=f.ft.proto,
            flags=f.flags & 0xFF,
            tcp_flags=f.tcp_flags & 0xFF,
            inbound_bytes=total[0],
            outbound_bytes=total[1],
            inbound_pkts=total[2],
            outbound_pkts=total[3],
            flow_id=f.flow_id,
            error=error,
        )

    def _reap(self, msg: Any, now: float) -> Output:
        self.counters["reaps"] += 1
        f = self.flows.get(msg.flow_id)
        if f is None:
            self._error("reap_unknown")
            stats = ssmb.Stats(
                orig_src_ipaddr=msg.orig_src_ipaddr,
                orig_dst_ipaddr=msg.orig_dst_ipaddr,
                orig_src_port=msg.orig_src_port,
                orig_dst_port=msg.orig_dst_port,
                tos=msg.tos,
                proto=msg.proto,
                flow_id=msg.flow_id,
                error=SsmbError.UNKNOWN,
            )
            return Output(ssmb=self._ssmb(stats, state_shared=True))
        if not self.switch_up:
            # Without the switch the DFS cannot tell whether the flow is idle; keep it.
            self._error("reap_switch_down")
            return Output(ssmb=self._ssmb(self._stats_msg(f, {}, ssmb.Stats, SsmbError.CONNALIVE), True))
        if f.flow_id in self.reaps:
            self.reaps[f.flow_id].reap = msg
            return Output()
        self.reaps[f.flow_id] = ReapWait(msg, now + REAP_STATS_TIMEOUT)
        return Output(openflow=[rules.flow_stats_request(self.dp, f.fwd_cookie, rules.MASK_FLOW)])

    def _reset_flows(self, now: float) -> Output:
        self.counters["flow_resets"] += 1
        out = Output(
            openflow=[
                rules.delete_by_cookie(
                    self.dp, rules.make_cookie(rules.KIND_PER_FLOW, 0, 0), rules.MASK_PER_FLOW
                )
            ]
        )
        for p in list(self.pending.values()):
            self._drop_pending(p)
        self.flows.clear()
        self.closing.clear()
        self.flows_by_ft.clear()
        self.flows_by_server_ft.clear()
        self.learned.clear()
        self.reaps.clear()
        out.csmb.append(csmb.Ack())
        return out

    # ------------------------------------------------------------------ switch events

    def flow_removed(self, entry: FlowEntryStats, reason: int, now: float) -> Output:
        """A flow entry left the switch (idle/hard timeout or delete)."""
        parts = rules.split_cookie(entry.cookie)
        if parts is None or not parts.kind & rules.KIND_PER_FLOW:
            return Output()
        self.counters["flow_removed"] += 1
        self.counters[f"flow_removed.{REMOVED_REASONS.get(reason, reason)}"] += 1
        if parts.kind in (rules.KIND_LEARN_FWD, rules.KIND_LEARN_REV):
            return self._learned_removed(parts.kind, parts.ident, entry, now)
        f = self.flows.get(parts.ident)
        if f is None or f.epoch != parts.epoch:
            if reason != OFPRR_DELETE:
                self._error("flow_removed_unknown")
            return Output()
        f.removed[parts.kind] = (entry.packet_count, entry.byte_count)
        if rules.KIND_FWD in f.removed and rules.KIND_REV in f.removed:
            return self._finish_flow(f)
        out = Output()
        if f.closing_deadline is None:
            # One direction went idle; take the other out too so the DELETE carries both counts.
            f.closing_deadline = now + self.cfg.timeouts.partner
            self.closing[f.flow_id] = f
            partner_kind = rules.KIND_REV if parts.kind == rules.KIND_FWD else rules.KIND_FWD
            cookie = f.rev_cookie if partner_kind == rules.KIND_REV else f.fwd_cookie
            ft = f.server_ft if partner_kind == rules.KIND_REV else f.ft
            out.openflow.append(rules.delete_strict(self.dp, cookie, ft))
        return out

    def _forget_flow(self, f: Flow) -> None:
        self.flows.pop(f.flow_id, None)
        self.closing.pop(f.flow_id, None)
        if self.flows_by_ft.get(f.ft) == f.flow_id:
            del self.flows_by_ft[f.ft]
        if self.flows_by_server_ft.get(f.server_ft) == f.flow_id:
            del self.flows_by_server_ft[f.server_ft]
        self.reaps.pop(f.flow_id, None)

    def _finish_flow(self, f: Flow) -> Output:
        self._forget_flow(f)
        self.counters["flows_ended"] += 1
        return Output(ssmb=self._ssmb(self._stats_msg(f, f.removed, ssmb.Delete), state_shared=True))

    def _learned_removed(self, kind: int, index: int, entry: FlowEntryStats, now: float) -> Output:
        seen = rules.five_tuple_from_match(entry.match)
        if seen is None:
            self._error("learned_removed_unparsable")
            return Output()
        client_ft = seen if kind == rules.KIND_LEARN_FWD else None
        client = (seen.src, seen.sport) if kind == rules.KIND_LEARN_FWD else (seen.dst, seen.dport)
        key = (index, seen.proto, client[0], client[1])
        end = self.learned.get(key)
        if end is None:
            if len(self.learned) >= MAX_LEARNED_WAITING:
                self._error("learned_backlog")
                return Output()
            end = LearnedEnd(client_ft, {}, now + self.cfg.timeouts.partner)
            self.learned[key] = end
            end.removed[kind] = (entry.packet_count, entry.byte_count)
            partner = rules.KIND_LEARN_REV if kind == rules.KIND_LEARN_FWD else rules.KIND_LEARN_FWD
            sname, dname = ("tcp_src", "tcp_dst") if seen.proto == IPPROTO_TCP else ("udp_src", "udp_dst")
            if partner == rules.KIND_LEARN_REV:
                match = self.dp.ofproto_parser.OFPMatch(
                    eth_type=0x0800, ip_proto=seen.proto, ipv4_dst=client[0], **{dname: client[1]}
                )
            else:
                match = self.dp.ofproto_parser.OFPMatch(
                    eth_type=0x0800, ip_proto=seen.proto, ipv4_src=client[0], **{sname: client[1]}
                )
            cookie = rules.make_cookie(partner, rules.split_cookie(entry.cookie).epoch, index)  # type: ignore[union-attr]
            return Output(openflow=[rules.delete_by_cookie(self.dp, cookie, rules.MASK_ALL, match)])
        end.removed[kind] = (entry.packet_count, entry.byte_count)
        if client_ft is not None:
            end.client_ft = client_ft
        return self._finish_learned(key, end)

    def _finish_learned(self, key: tuple[int, int, str, int], end: LearnedEnd) -> Output:
        self.learned.pop(key, None)
        index, proto, client_ip, client_port = key
        ft = end.client_ft
        if ft is None:
            st = next((s for s in self.vservers.values() if s.index == index), None)
            vip = st.vs.virt_ipaddr if st is not None else ZERO_IP
            vport = st.vs.virt_port if st is not None else 0
            ft = FiveTuple(proto, client_ip, vip, client_port, vport)
        fwd_p, fwd_b = end.removed.get(rules.KIND_LEARN_FWD, (0, 0))
        rev_p, rev_b = end.removed.get(rules.KIND_LEARN_REV, (0, 0))
        self.counters["dfs_assist_flows_ended"] += 1
        msg = ssmb.Delete(
            orig_src_ipaddr=ft.src,
            orig_dst_ipaddr=ft.dst,
            orig_src_port=ft.sport,
            orig_dst_port=ft.dport,
            proto=proto,
            inbound_bytes=fwd_b,
            outbound_bytes=rev_b,
            inbound_pkts=fwd_p,
            outbound_pkts=rev_p,
            flow_id=self._alloc_flow_id(),
        )
        return Output(ssmb=self._ssmb(msg, state_shared=True))

    def flow_stats_reply(
        self, cookie: int, mask: int, entries: Iterable[FlowEntryStats], now: float
    ) -> Output:
        """Answer to a flow-stats request the engine made (identified by its cookie and mask)."""
        entries = list(entries)
        if mask == rules.MASK_PER_FLOW:
            return self._audit(entries, now)
        parts = rules.split_cookie(cookie)
        if parts is None or mask != rules.MASK_FLOW:
            self._error("stats_reply_unexpected")
            return Output()
        wait = self.reaps.pop(parts.ident, None)
        f = self.flows.get(parts.ident)
        if wait is None or f is None:
            return Output()
        counts: dict[int, tuple[int, int]] = {}
        for e in entries:
            ep = rules.split_cookie(e.cookie)
            if ep is not None and ep.ident == f.flow_id:
                counts[ep.kind] = (e.packet_count, e.byte_count)
        total_pkts = sum(c[0] for c in counts.values())
        if total_pkts > f.last_look_pkts and counts:
            f.last_look_pkts = total_pkts
            self.counters["reap_connalive"] += 1
            return Output(ssmb=self._ssmb(self._stats_msg(f, counts, ssmb.Stats, SsmbError.CONNALIVE), True))
        self.counters["reaped"] += 1
        msg = self._stats_msg(f, counts, ssmb.Stats)
        self._forget_flow(f)
        return Output(
            openflow=[rules.delete_by_cookie(self.dp, f.fwd_cookie, rules.MASK_FLOW)],
            ssmb=self._ssmb(msg, state_shared=True),
        )

    def _audit(self, entries: list[FlowEntryStats], now: float) -> Output:
        """After a switch (re)connect: keep live entries, adopt an older epoch's, drop strays."""
        self.audit_pending = False
        out = Output()
        by_flow: dict[tuple[int, int], dict[int, FlowEntryStats]] = {}
        for e in entries:
            parts = rules.split_cookie(e.cookie)
            if parts is None or parts.kind not in (rules.KIND_FWD, rules.KIND_REV):
                continue
            by_flow.setdefault((parts.epoch, parts.ident), {})[parts.kind] = e
        seen: set[int] = set()
        for (epoch, ident), kinds in by_flow.items():
            f = self.flows.get(ident)
            if f is not None and f.epoch == epoch:
                seen.add(ident)
                self.counters["audit_kept"] += 1
                continue
            fwd, rev = kinds.get(rules.KIND_FWD), kinds.get(rules.KIND_REV)
            ft = rules.five_tuple_from_match(fwd.match) if fwd else None
            sft = rules.five_tuple_from_match(rev.match) if rev else None
            if (
                epoch != self.epoch
                and f is None
                and ft is not None
                and sft is not None
                and ft not in self.flows_by_ft
                and sft not in self.flows_by_server_ft
                and ident not in self.pending
            ):
                nf = Flow(ident, epoch, ft, sft, 0, 0, 0, None, now)
                self.flows[ident] = nf
                self.flows_by_ft[ft] = ident
                self.flows_by_server_ft[sft] = ident
                seen.add(ident)
                self.counters["audit_adopted"] += 1
                continue
            self.counters["audit_deleted"] += 1
            out.openflow.append(
                rules.delete_by_cookie(
                    self.dp, rules.make_cookie(rules.KIND_FWD, epoch, ident), rules.MASK_FLOW
                )
            )
        for f in [f for fid, f in self.flows.items() if fid not in seen]:
            # The switch lost these entries (it restarted): the flows are over.
            self.counters["audit_lost"] += 1
            out.extend(self._finish_flow(f))
        return out

    def openflow_error(self, err_type: int, code: int, data: bytes, now: float) -> Output:
        """An OFPT_ERROR from the switch; ``data`` holds (the start of) the failed request."""
        self._error(f"openflow_error.{err_type}.{code}")
        if err_type != OFPET_FLOW_MOD_FAILED or code != OFPFMFC_TABLE_FULL:
            return Output()
        self.table_full_until = now + TABLE_FULL_BACKOFF
        if len(data) < 16:
            return Output()
        parts = rules.split_cookie(int.from_bytes(data[8:16], "big"))
        if parts is None or parts.kind not in (rules.KIND_FWD, rules.KIND_REV):
            return Output()
        f = self.flows.get(parts.ident)
        if f is None:
            return Output()
        self._forget_flow(f)
        self._error("install_failed")
        return Output(openflow=[rules.delete_by_cookie(self.dp, f.fwd_cookie, rules.MASK_FLOW)])

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> Output:
        """Run every timer due at ``now``: QUERY retries, ARP retries, partner waits, REAP waits."""
        out = Output()
        t = self.cfg.timeouts
        for p in list(self.pending.values()):
            if p.state == "query" and now >= p.next_at:
                if p.tries > t.query_retries:
                    out.extend(self._fail_pending(p, "query_timeout"))
                elif not self.cs_ready:
                    out.extend(self._fail_pending(p, "cs_unavailable"))
                else:
                    out.extend(self._send_query(p, now))
        for ipaddr, w in list(self.arp_waits.items()):
            if now < w.next_at:
                continue
            if w.tries > t.arp_retries:
                del self.arp_waits[ipaddr]
                self._error("arp_timeout")
                for p in [p for p in self.pending.values() if p.state == "arp" and p.waiting_for == ipaddr]:
                    out.extend(self._fail_pending(p, "next_hop_unresolved"))
                rw = self.route_waits.pop(ipaddr, None)
                if rw is not None:
                    self.counters["route_unresolved_drops"] += len(rw.packets)
                    self.held_total -= len(rw.packets)
                continue
            w.tries += 1
            w.next_at = now + t.arp
            out.openflow.append(self._arp_request(w.intf, ipaddr))
        for f in [
            f for f in self.closing.values() if f.closing_deadline is not None and now >= f.closing_deadline
        ]:
            self._error("partner_removal_timeout")
            out.extend(self._finish_flow(f))
        for key, end in [(k, e) for k, e in self.learned.items() if now >= e.deadline]:
            out.extend(self._finish_learned(key, end))
        for fid in [k for k, rw in self.reaps.items() if now >= rw.deadline]:
            del self.reaps[fid]
            self._error("reap_stats_timeout")
            reaped = self.flows.get(fid)
            if reaped is not None:
                stats = self._stats_msg(reaped, {}, ssmb.Stats, SsmbError.CONNALIVE)
                out.ssmb += self._ssmb(stats, True)
        return out

    # ------------------------------------------------------------------ CSMB

    def csmb_connected(self, now: float) -> Output:
        """The CSMB connection to the CS is up: introduce ourselves."""
        self.csmb_up = True
        self.hello_acked = False
        self.counters["csmb_connects"] += 1
        hello = csmb.Hello(
            ssmb_active_ipaddr=self.cfg.mgmt_ipaddr,
            ssmb_standby_ipaddr=ZERO_IP,
            flags=0,
            vers_major=PROTOCOL_VERSION[0],
            vers_minor=PROTOCOL_VERSION[1],
            ssmb_port=self.cfg.ssmb_port,
        )
        # A new connection may be a new CS process whose SSMB serials start again from zero.
        return Output(csmb=[hello], ssmb_forget=[self.cs_ssmb])

    def csmb_disconnected(self, now: float) -> Output:
        """The CS went away: new CS_ASSIST flows fail closed until it is back."""
        self.csmb_up = False
        self.hello_acked = False
        self.counters["csmb_disconnects"] += 1
        return Output()

    def csmb_message(self, msg: Any, now: float) -> Output:
        """A configuration message from the CS."""
        self.counters["csmb_messages"] += 1
        if isinstance(msg, csmb.Hello):
            return self._hello(msg)
        if isinstance(msg, csmb.Ack):
            if msg.error == CsmbError.OK:
                self.hello_acked = True
            else:
                self._error(f"hello_rejected.{msg.error}")
            return Output()
        if isinstance(msg, csmb.Reset):
            out = Output()
            for key in list(self.vservers):
                out.extend(self._remove_vs(key))
            self.counters["vs_resets"] += 1
            return out
        if isinstance(msg, csmb.AddVs):
            return self._add_vs(msg.vs, now)
        if isinstance(msg, csmb.DeleteVs):
            key = self._key(msg.vs.proto, msg.vs.virt_ipaddr, msg.vs.virt_port, VsFlag(msg.vs.flags))
            return self._remove_vs(key) if key in self.vservers else Output()
        if isinstance(msg, csmb.QueryVs):
            servers = [
                st.vs
                for st in self.vservers.values()
                if msg.vs is None
                or (st.vs.virt_ipaddr, st.vs.virt_port, st.vs.proto)
                == (msg.vs.virt_ipaddr, msg.vs.virt_port, msg.vs.proto)
            ]
            return Output(csmb=[csmb.VsList(servers=tuple(servers))])
        self._error(f"csmb_unexpected.{type(msg).__name__}")
        return Output()

    def _hello(self, msg: Any) -> Output:
        version = (msg.vers_major, msg.vers_minor)
        if version[0] > PROTOCOL_VERSION[0]:
            self._error("hello_version_new")
            return Output(csmb=[csmb.Ack(error=CsmbError.VERS_NEW)])
        if version[0] < PROTOCOL_VERSION[0]:
            self._error("hello_version_obsolete")
            return Output(csmb=[csmb.Ack(error=CsmbError.VERS_OBSOLETE)])
        if msg.ssmb_active_ipaddr != ZERO_IP and msg.ssmb_port:
            self.cs_ssmb = (msg.ssmb_active_ipaddr, msg.ssmb_port)
        self.cs_standby = msg.ssmb_standby_ipaddr
        self.redundant = bool(msg.flags & VsFlag.REDUNDANT)
        self.counters["cs_hellos"] += 1
        # A HELLO restarts the peer's SSMB serials (slbproto.peer): forget what we saw from it.
        return Output(csmb=[csmb.Ack()], ssmb_forget=[self.cs_ssmb])

    # ------------------------------------------------------------------ virtual servers

    @staticmethod
    def _key(proto: int, vip: str, vport: int, flags: VsFlag) -> VsKey:
        return VsKey(
            proto,
            ZERO_IP if flags & VsFlag.WILDCARD_ADDR else vip,
            0 if flags & VsFlag.WILDCARD_PORT else vport,
        )

    def _key_of(self, st: VsState) -> VsKey:
        return self._key(st.vs.proto, st.vs.virt_ipaddr, st.vs.virt_port, st.flags)

    def _find_vs(self, ft: FiveTuple) -> VsState | None:
        for key in (
            VsKey(ft.proto, ft.dst, ft.dport),
            VsKey(ft.proto, ft.dst, 0),
            VsKey(ft.proto, ZERO_IP, ft.dport),
            VsKey(ft.proto, ZERO_IP, 0),
        ):
            st = self.vservers.get(key)
            if st is not None:
                return st
        return None

    def _add_vs(self, vs: Any, now: float) -> Output:
        if vs.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            self._error("vs_bad_proto")
            return Output()
        if int(vs.vs_class) not in (VsClass.CS_ASSIST, VsClass.DFS_ASSIST):
            self._error("vs_bad_class")
            return Output()
        pool: list[Any] = []
        if int(vs.vs_class) == VsClass.DFS_ASSIST:
            try:
                pool = list(csmb.decode_pool(vs.app_data))
            except ProtocolError as exc:
                self._error(f"vs_bad_pool.{exc.code}")
                return Output()
        key = self._key(vs.proto, vs.virt_ipaddr, vs.virt_port, VsFlag(vs.flags))
        st = self.vservers.get(key)
        new_group = st is None or not st.dfs_assist
        out = Output()
        if st is None:
            st = VsState(vs, self._alloc_vs_index())
            self.vservers[key] = st
            self.counters["vs_added"] += 1
        else:
            self.counters["vs_modified"] += 1
            if st.dfs_assist != (int(vs.vs_class) == VsClass.DFS_ASSIST) and self.switch_up:
                # The two classes dispatch with differently shaped entries: replace, not overlay.
                out.openflow.append(rules.vs_entry_delete(self.dp, self.epoch, st.index))
                if st.dfs_assist:
                    out.openflow.append(rules.group_delete(self.dp, st.index))
                    out.openflow.append(rules.pool_members_delete(self.dp, st.index))
        st.vs, st.pool = vs, pool
        if not st.dfs_assist:
            st.targets = []
        return out.extend(self._program_vs(st, now, new_group=new_group))

    def _alloc_vs_index(self) -> int:
        used = {st.index for st in self.vservers.values()}
        while self._next_vs_index in used:
            self._next_vs_index = self._next_vs_index % 0xFFFF + 1
        idx = self._next_vs_index
        self._next_vs_index = idx % 0xFFFF + 1
        return idx

    def _pool_next_hop(self, entry: Any) -> str | None:
        route = self.route(entry.ipaddr)
        return None if route is None else route.next_hop

    def _program_vs(self, st: VsState, now: float, new_group: bool = False) -> Output:
        """(Re)write a VS's dispatch entry and, for DFS_ASSIST, its select group."""
        out = Output()
        vs, flags = st.vs, st.flags
        group_id: int | None = None
        if st.dfs_assist:
            targets: list[PoolTarget] = []
            for e in st.pool:
                route = self.route(e.ipaddr)
                if route is None:
                    self._error("pool_member_no_route")
                    continue
                l2 = self._resolve(route.next_hop, now)
                if isinstance(l2, Output):
                    out.extend(l2)
                    continue
                if e.weight == 0:
                    continue
                targets.append(PoolTarget(e.ipaddr, e.port, e.weight, route.interface.mac, l2[0], l2[1]))
            if self.switch_up and targets:
                ofp = self.dp.ofproto
                t = self.cfg.timeouts
                # member entries first, so no bucket ever resubmits to a missing one
                for i, target in enumerate(targets):
                    out.openflow.append(
                        rules.pool_member_entry(
                            self.dp,
                            self.epoch,
                            st.index,
                            i,
                            vs.proto,
                            target,
                            bool(flags & VsFlag.TRANSLATE_ADDR),
                            bool(flags & VsFlag.TRANSLATE_PORT),
                            t.idle,
                            t.fin_idle,
                            t.fin_hard,
                        )
                    )
                if new_group or not st.targets:
                    out.openflow.append(rules.group_delete(self.dp, st.index))
                    command = ofp.OFPGC_ADD
                else:
                    command = ofp.OFPGC_MODIFY
                out.openflow.append(rules.pool_group(self.dp, command, st.index, st.index, targets))
                for gone in range(len(targets), len(st.targets)):
                    out.openflow.append(rules.pool_members_delete(self.dp, st.index, gone))
                group_id = st.index
            elif not targets and st.targets:
                out.openflow.append(rules.group_delete(self.dp, st.index))
                out.openflow.append(rules.pool_members_delete(self.dp, st.index))
            st.targets = targets
        if self.switch_up:
            out.openflow += rules.vs_entries(
                self.dp,
                self.epoch,
                st.index,
                vs.proto,
                vs.virt_ipaddr,
                vs.virt_port,
                bool(flags & VsFlag.WILDCARD_ADDR),
                bool(flags & VsFlag.WILDCARD_PORT),
                group_id,
                cs_assist=not st.dfs_assist,
            )
        return out

    def _remove_vs(self, key: VsKey) -> Output:
        st = self.vservers.pop(key)
        self.counters["vs_deleted"] += 1
        out = Output()
        if self.switch_up:
            out.openflow.append(rules.vs_entry_delete(self.dp, self.epoch, st.index))
            if st.dfs_assist:
                out.openflow.append(rules.group_delete(self.dp, st.index))
                out.openflow.append(rules.pool_members_delete(self.dp, st.index))
        for p in [p for p in self.pending.values() if p.vs_key == key]:
            out.extend(self._fail_pending(p, "vs_gone"))
        return out
