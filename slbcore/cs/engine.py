"""The Control Segment's decision engine: SSMB messages in, SSMB messages out, time passed in.

:class:`ControlSegment` holds the configuration, the live state of every virtual server and real server
(health, drain, statistics), the flow table and the persistence records. The daemon (``nodes/csd.py``)
decodes datagrams, calls :meth:`ControlSegment.handle` with the sender's address and the current time,
and sends what comes back; it calls :meth:`ControlSegment.tick` periodically to run idle timers.

Flow life cycle
    QUERY -> REPLY (error 0) creates a flow keyed by (DFS endpoint, flow_id). A QUERY whose key is already
    in the table with the same 5-tuple is a retransmission: the stored REPLY is sent again and nothing is
    counted twice; refusals are remembered briefly (``REFUSAL_MEMORY`` seconds) for the same reason. DELETE
    removes a flow. When a flow has been idle for ``flow_idle_timeout`` the CS sends REAP (low priority,
    batched by the sender) to the DFS's announced SSMB endpoint; STATS with CONNALIVE means the DFS still
    sees traffic: the statistics are added and the idle timer restarts; plain STATS removes the flow. An
    unanswered REAP is re-sent every ``reap_response_timeout`` up to ``reap_retries`` times, then the flow
    is dropped. RESET from a DFS clears that DFS's flows and is acknowledged on its CSMB session.

Statistics in DELETE/STATS are the DFS's running totals for the flow; the CS adds only the growth since
the previous report of the same flow, so a CONNALIVE answer repeated on every REAP is not double counted.

DFS_ASSIST connections
    The switch picks their server itself, so no QUERY precedes them and the CS holds no flow for them.
    When one ends, the DFS sends DELETE with a flow_id it chose then, the client's 5-tuple towards the
    virtual IP and the final counters; the endflow message names no real server. A DELETE (or plain
    STATS) that matches no flow of this CS but whose destination is a DFS_ASSIST virtual server (wildcards
    as in QUERY) from an endpoint that has announced itself as a DFS counts one ended flow in that virtual
    server's ``total`` and ``dfs_assist_flows`` and adds its counters to the virtual server's statistics;
    nothing is stored per flow. The same message for any other destination is counted and ignored.

NEWFLOW
    Sent only for a virtual server whose ``persistence.prepare_ports`` is not empty: when the CS accepts a
    flow of a client that has a persistence record, it tells the same DFS, once per record and port, to
    prepare the related flow ``client:* -> vip:port`` (orig_src_port 0 means any source port) towards the
    same real server, with a CS-chosen flow_id that has the top bit set. The prepared flow is tracked and
    reaped like any other.

APP_QUERY
    Decided like QUERY: this CS configures no application-data balancing (cookie, HTTP, TLS session), so
    app_data is not consulted.

Identity of a DFS
    A DFS is identified by the SSMB endpoint it announced in HELLO (``register_dfs``). A datagram from an
    unannounced endpoint whose address belongs to exactly one announced DFS is attributed to that DFS
    (it may query from another socket); otherwise the source endpoint itself is the identity. REPLY always
    goes back to the source of the QUERY.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from slbcore.cs.balance import Candidate, FlowTuple, Selector, make_selector
from slbcore.cs.config import (
    FLAG_ROUTE_BY_DST_IP,
    FLAG_TRANSLATE_ADDR,
    FLAG_TRANSLATE_PORT,
    FLAG_WILDCARD_ADDR,
    FLAG_WILDCARD_PORT,
    CsConfig,
    CsSettings,
    HealthCheckConfig,
    Method,
    RealServerConfig,
    VirtualServerConfig,
    VsKey,
)
from slbcore.cs.flows import Endpoint, Flow, FlowKey, FlowTable
from slbcore.cs.health import HealthMachine, HealthState
from slbcore.cs.persistence import PersistenceTable
from slbcore.cs.ratelimit import TokenBucket
from slbproto import csmb, ssmb
from slbproto.constants import NEWFLOW_ID_BIT, SsmbError, VsClass

__all__ = [
    "REFUSAL_MEMORY",
    "ControlSegment",
    "HealthTarget",
    "ResetAck",
    "ServerRuntime",
    "SsmbOut",
    "VsChange",
    "VsRuntime",
]

# How long a refused QUERY's answer is remembered for retransmissions of the same flow.
REFUSAL_MEMORY = 5.0
MAX_REMEMBERED_REFUSALS = 65536
MAX_DFS_BUCKETS = 4096
ZERO_IP = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class SsmbOut:
    """An SSMB message to send to ``dest`` (the sender stamps serials and batches low priority)."""

    dest: Endpoint
    message: Any


@dataclass(frozen=True, slots=True)
class ResetAck:
    """A DFS's SSMB RESET was applied: acknowledge it with ACK on that DFS's CSMB session."""

    dfs: Endpoint


Outgoing = SsmbOut | ResetAck


@dataclass(frozen=True, slots=True)
class VsChange:
    """A virtual server definition to announce to every DFS (ADD_VS) or withdraw (DELETE_VS)."""

    kind: str  # "add" or "delete"
    name: str
    definition: csmb.VirtualServer


@dataclass(frozen=True, slots=True)
class HealthTarget:
    """One probe the health prober must run."""

    vs: str
    server: str
    address: str
    port: int
    check: HealthCheckConfig


@dataclass(slots=True)
class ServerStats:
    """Counters of one real server."""

    active: int = 0
    total: int = 0
    inbound_bytes: int = 0
    outbound_bytes: int = 0
    inbound_pkts: int = 0
    outbound_pkts: int = 0
    reaped_unanswered: int = 0


@dataclass(slots=True)
class ServerRuntime:
    """Live state of one real server of one virtual server."""

    config: RealServerConfig
    health: HealthMachine | None
    stats: ServerStats = field(default_factory=ServerStats)
    admin_drain: bool | None = None  # set by drain/undrain, survives reloads; None: use config
    retired: bool = False  # removed from the pool by a reload; kept until its flows end

    @property
    def draining(self) -> bool:
        """True when the server takes no new flows but keeps its existing ones."""
        return self.admin_drain if self.admin_drain is not None else self.config.drain

    @property
    def healthy(self) -> bool:
        """Health as far as probes go (always True without a health check)."""
        return self.health is None or self.health.up

    @property
    def eligible(self) -> bool:
        """May take new flows."""
        return (
            not self.retired
            and not self.config.disabled
            and not self.draining
            and self.healthy
            and self.config.weight > 0
        )

    @property
    def state(self) -> str:
        """One word for tables: retired, disabled, down, draining or up."""
        if self.retired:
            return "retired"
        if self.config.disabled:
            return "disabled"
        if not self.healthy:
            return "down"
        if self.draining:
            return "draining"
        return "up"


@dataclass(slots=True)
class VsStats:
    """Counters of one virtual server."""

    active: int = 0
    total: int = 0
    inbound_bytes: int = 0
    outbound_bytes: int = 0
    inbound_pkts: int = 0
    outbound_pkts: int = 0
    dfs_assist_flows: int = 0  # ended connections the switch balanced itself (part of total)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class VsRuntime:
    """Live state of one virtual server."""

    config: VirtualServerConfig
    selector: Selector
    servers: dict[str, ServerRuntime]
    stats: VsStats = field(default_factory=VsStats)
    _eligible: list[ServerRuntime] | None = None
    _candidates: list[Candidate] | None = None

    def invalidate(self) -> None:
        """Eligibility of some server changed (health, drain, pool): rebuild the candidate list lazily."""
        self._eligible = None
        self._candidates = None

    def candidates(self) -> list[Candidate]:
        """Eligible servers in configuration order, as the selectors see them.

        The list is cached until :meth:`invalidate`; only least connections needs live flow counts, so
        for it the (cheap) Candidate objects are rebuilt from the cached eligible servers on each call.
        """
        eligible = self._eligible
        if eligible is None:
            eligible = self._eligible = [s for s in self.servers.values() if s.eligible]
            self._candidates = None
        if self.config.method is Method.LEAST_CONNECTIONS:
            return [Candidate(s.config.name, s.config.weight, s.stats.active) for s in eligible]
        if self._candidates is None:
            self._candidates = [Candidate(s.config.name, s.config.weight) for s in eligible]
        return self._candidates

    def definition(self) -> csmb.VirtualServer:
        """The CSMB virtual server definition (with the pool for DFS_ASSIST)."""
        cfg = self.config
        app_data = b""
        if cfg.vs_class == VsClass.DFS_ASSIST:
            entries = [
                csmb.PoolEntry(s.config.address, s.config.port, s.config.weight)
                for s in self.servers.values()
                if s.eligible
            ]
            app_data = csmb.encode_pool(entries)
        return csmb.VirtualServer(
            flags=cfg.flags,
            virt_ipaddr=cfg.vip,
            virt_port=cfg.port,
            vs_class=cfg.vs_class,
            proto=cfg.proto,
            app_data=app_data,
        )


@dataclass(slots=True)
class _Refusal:
    reply: Any
    tuple_: tuple[str, int, str, int, int]
    expires: float


def _reports_flow(flow: Flow, msg: Any) -> bool:
    """Whether an endflow message is about ``flow`` (orig_src_port 0 in a prepared flow means any)."""
    return bool(
        flow.client_ip == msg.orig_src_ipaddr
        and (not flow.client_port or flow.client_port == msg.orig_src_port)
        and flow.vip == msg.orig_dst_ipaddr
        and flow.proto == msg.proto
    )


def _flow_tuple(msg: Any) -> tuple[str, int, str, int, int]:
    return (msg.orig_src_ipaddr, msg.orig_src_port, msg.orig_dst_ipaddr, msg.orig_dst_port, msg.proto)


#: The host part of the key of a replicated flow whose DFS is not known yet.
UNOWNED = "unowned"


def _unowned_key(msg: Any) -> FlowKey:
    """Key of a flow replicated from a REPLY copy: flow ids are per DFS, so the client tuple goes in too."""
    client = f"{UNOWNED}:{msg.proto}:{msg.orig_src_ipaddr}:{msg.orig_dst_ipaddr}:{msg.orig_dst_port}"
    return ((client, msg.orig_src_port), msg.flow_id)


def _new_flow(key: FlowKey, vs: str, server: str, reply: Any, now: float, persistent: bool = False) -> Flow:
    """A flow entry for an accepted REPLY (whose original tuple is the flow's)."""
    return Flow(
        key=key,
        vs=vs,
        server=server,
        client_ip=reply.orig_src_ipaddr,
        client_port=reply.orig_src_port,
        vip=reply.orig_dst_ipaddr,
        vport=reply.orig_dst_port,
        proto=reply.proto,
        created=now,
        last_activity=now,
        reply=reply,
        persistent=persistent,
    )


def _is_unowned(flow: Flow) -> bool:
    return flow.dfs[0].startswith(UNOWNED)


class ControlSegment:
    """All CS state and the per-message decisions."""

    def __init__(self, config: CsConfig, now: float = 0.0) -> None:
        self.config = config
        self.settings: CsSettings = config.settings
        self.started = now
        self.counters: Counter[str] = Counter()
        self.flows = FlowTable(config.settings.max_flows)
        self.persistence = PersistenceTable(config.settings.max_persistence)
        self.vs: dict[str, VsRuntime] = {}
        self._by_key: dict[VsKey, VsRuntime] = {}
        self._dfs: dict[Endpoint, float] = {}  # announced SSMB endpoint -> registration time
        self._dfs_sessions: Counter[Endpoint] = Counter()
        self._known_dfs: set[Endpoint] = set()  # every DFS ever registered with this process
        self._buckets: OrderedDict[Endpoint, TokenBucket] = OrderedDict()
        self._refusals: OrderedDict[FlowKey, _Refusal] = OrderedDict()
        self._prepared: set[tuple[str, str, Endpoint, int]] = set()
        self._next_newflow_id = 0
        #: "active" decides flows; "standby" replicates the active's flows from state-shared copies.
        self.role = config.settings.role
        self._install(config, now)

    # ------------------------------------------------------------------ configuration

    def _build_vs(self, cfg: VirtualServerConfig, old: VsRuntime | None) -> VsRuntime:
        same_method = (
            old is not None
            and old.config.method is cfg.method
            and old.config.maglev_table_size == cfg.maglev_table_size
        )
        selector = (
            old.selector
            if same_method and old is not None
            else make_selector(cfg.method, cfg.maglev_table_size)
        )
        servers: dict[str, ServerRuntime] = {}
        for rs in cfg.real_servers:
            prev = old.servers.get(rs.name) if old is not None else None
            if prev is not None and (prev.config.address, prev.config.port) == (rs.address, rs.port):
                health = prev.health
                if cfg.health_check is None:
                    health = None
                elif health is None:
                    health = _new_health(cfg.health_check)
                else:
                    health.rise, health.fall = cfg.health_check.rise, cfg.health_check.fall
                servers[rs.name] = ServerRuntime(rs, health, prev.stats, prev.admin_drain)
            else:
                if prev is not None and prev.stats.active > 0:
                    # Same name, new address: the old incarnation keeps its flows under a private name.
                    private = f"{rs.name}~{prev.config.address}:{prev.config.port}"
                    servers[private] = dataclasses.replace(prev, retired=True)
                    for flow in self.flows:
                        if flow.vs == cfg.name and flow.server == rs.name:
                            flow.server = private
                health = _new_health(cfg.health_check) if cfg.health_check is not None else None
                servers[rs.name] = ServerRuntime(rs, health)
        if old is not None:
            for name, prev in old.servers.items():
                if name not in servers and prev.stats.active > 0:
                    prev.retired = True
                    servers[name] = prev
        rt = VsRuntime(cfg, selector, servers, old.stats if old is not None else VsStats())
        return rt

    def _install(self, config: CsConfig, now: float) -> list[VsChange]:
        old_vs = self.vs
        new_vs: dict[str, VsRuntime] = {}
        changes: list[VsChange] = []
        for cfg in config.virtual_servers:
            old = old_vs.get(cfg.name)
            if old is not None and old.config.key != cfg.key:
                old = None  # a new wire identity is a different virtual server
            new_vs[cfg.name] = self._build_vs(cfg, old)
        for name, old in old_vs.items():
            new = new_vs.get(name)
            if new is None or new.config.key != old.config.key:
                changes.append(VsChange("delete", name, old.definition()))
                self._drop_vs_flows(name, now)
        for name, new in new_vs.items():
            old = old_vs.get(name)
            if old is None or old.config.key != new.config.key or old.definition() != new.definition():
                changes.append(VsChange("add", name, new.definition()))
            if old is not None and old.config.persistence is not None and new.config.persistence is None:
                self.persistence.forget_vs(name)
        self.config = config
        self.settings = config.settings
        self.vs = new_vs
        self._by_key = {rt.config.key: rt for rt in new_vs.values()}
        self.flows.max_flows = config.settings.max_flows
        self.persistence.max_records = config.settings.max_persistence
        for bucket in self._buckets.values():
            bucket.rate, bucket.burst = config.settings.query_rate, float(config.settings.query_burst)
        return changes

    def reload(self, config: CsConfig, now: float) -> list[VsChange]:
        """Apply a new validated configuration; return the ADD_VS/DELETE_VS to announce (deletes first)."""
        changes = self._install(config, now)
        self.counters["reloads"] += 1
        return sorted(changes, key=lambda c: c.kind != "delete")

    def definitions(self) -> list[csmb.VirtualServer]:
        """Every virtual server definition, in configuration order (for ADD_VS after RESET and VS_LIST)."""
        return [rt.definition() for rt in self.vs.values()]

    def _drop_vs_flows(self, name: str, now: float) -> None:
        for flow in self.flows:
            if flow.vs == name:
                self._end_flow(flow, now)
                self.counters["flows_dropped_by_reload"] += 1
        self.persistence.forget_vs(name)

    # ------------------------------------------------------------------ DFS registry

    def register_dfs(self, endpoint: Endpoint, now: float) -> list[SsmbOut]:
        """A DFS announced its SSMB endpoint in HELLO; return the SSMB RESET to send it, if any.

        A DFS this process has never seen may hold flows decided by an earlier CS that nobody will reap,
        so it is told to RESET its flows, unless a standby CS is configured (the flows are then shared
        state and survive a takeover).
        """
        if self.role == "standby":
            # A DFS only turns to the standby when it lost the active CS: take over.
            self.role = "active"
            self.counters["takeovers"] += 1
        self._dfs[endpoint] = now
        self._dfs_sessions[endpoint] += 1
        first = endpoint not in self._known_dfs
        self._known_dfs.add(endpoint)
        if first and self.settings.standby is None and not self.flows.keys_for_dfs(endpoint):
            self.counters["reset_sent"] += 1
            return [SsmbOut(endpoint, ssmb.Reset())]
        return []

    def unregister_dfs(self, endpoint: Endpoint) -> None:
        """The DFS's CSMB session ended; its flows stay until reaped (it may reconnect)."""
        self._dfs_sessions[endpoint] -= 1
        if self._dfs_sessions[endpoint] <= 0:
            # A reconnect may have registered the same endpoint before the old session closed.
            del self._dfs_sessions[endpoint]
            self._dfs.pop(endpoint, None)

    @property
    def dfs_endpoints(self) -> list[Endpoint]:
        """Announced SSMB endpoints of the connected DFSs."""
        return list(self._dfs)

    def _identity(self, sender: Endpoint) -> Endpoint:
        if sender in self._dfs:
            return sender
        same_host = [ep for ep in self._dfs if ep[0] == sender[0]]
        return same_host[0] if len(same_host) == 1 else sender

    # ------------------------------------------------------------------ SSMB input

    def handle(self, message: Any, sender: Endpoint, now: float) -> list[Outgoing]:
        """Process one decoded SSMB message from ``sender``; return what to send."""
        if isinstance(message, ssmb.Query):
            self.counters["rx_query"] += 1
            return self._on_query(message, sender, now)
        if isinstance(message, ssmb.AppQuery):
            self.counters["rx_app_query"] += 1
            return self._on_query(message, sender, now)
        if isinstance(message, ssmb.Delete):
            self.counters["rx_delete"] += 1
            self._on_end(message, sender, now, alive=False)
            return []
        if isinstance(message, ssmb.Stats):
            self.counters["rx_stats"] += 1
            self._on_end(message, sender, now, alive=message.error == SsmbError.CONNALIVE)
            return []
        if isinstance(message, ssmb.Reset):
            self.counters["rx_reset"] += 1
            dfs = self._identity(sender)
            for key in self.flows.keys_for_dfs(dfs):
                flow = self.flows.get(key)
                if flow is not None:
                    self._end_flow(flow, now)
            # A standby sees the DFS's state-shared copy; the active acknowledges it.
            return [ResetAck(dfs)] if self.role == "active" else []
        if self.role == "standby" and isinstance(message, ssmb.Reply):
            if sender[0] != self.settings.standby:
                # Only the active CS of the pair decides flows; anybody else's REPLY is not state.
                self.counters["shared_reply_not_from_active"] += 1
                return []
            self.counters["rx_shared_reply"] += 1
            self._replicate_reply(message, now)
            return []
        if self.role == "standby" and isinstance(message, ssmb.NewFlow):
            self.counters["rx_shared_newflow_ignored"] += 1
            return []
        # REPLY, REAP, NEWFLOW are CS-to-DFS only.
        self.counters["rx_unexpected_type"] += 1
        return []

    # ------------------------------------------------------------------ state sharing (standby)

    def _replicate_reply(self, r: Any, now: float) -> None:
        """Record a flow the active CS accepted, from its state-shared REPLY copy.

        The copy does not say which DFS asked, so the flow is filed under its flow_id and client
        tuple (:func:`_unowned_key`) until a DELETE or STATS from its DFS names the owner.
        """
        if r.error != SsmbError.OK:
            self.counters["shared_refusals"] += 1
            return
        rt = self.match_vs(r.orig_dst_ipaddr, r.orig_dst_port, r.proto)
        if rt is None:
            self.counters["shared_reply_unknown_vs"] += 1
            return
        key = _unowned_key(r)
        if key in self.flows:
            self.counters["shared_reply_duplicate"] += 1
            return
        if self.flows.full:
            self.counters["flow_table_full"] += 1
            return
        server = self._server_of_reply(rt, r)
        persistent = False
        if server is not None and rt.config.persistence is not None:
            # The same record the active made: after a takeover the client keeps its server.
            persistence = rt.config.persistence
            bound = self.persistence.bind(
                rt.config.name, r.orig_src_ipaddr, server.config.name, persistence.timeout, now
            )
            persistent = bound is not None
        flow = _new_flow(
            key, rt.config.name, server.config.name if server is not None else "", r, now, persistent
        )
        self.flows.add(flow, now + self.settings.flow_idle_timeout)
        if server is not None:
            self._count_new_flow(rt, server)
        else:
            rt.stats.active += 1
            rt.stats.total += 1
            self.counters["shared_reply_unknown_server"] += 1
        self.counters["shared_flows"] += 1

    @staticmethod
    def _server_of_reply(rt: VsRuntime, r: Any) -> ServerRuntime | None:
        """The real server a REPLY sent the flow to: its new address, else its next hop."""
        for server in rt.servers.values():
            rs = server.config
            if r.new_dst_ipaddr != ZERO_IP:
                port_ok = not r.new_dst_port or (rs.port or r.orig_dst_port) == r.new_dst_port
                if rs.address == r.new_dst_ipaddr and port_ok:
                    return server
            elif r.next_hop_ipaddr != ZERO_IP and (rs.next_hop or rs.address) == r.next_hop_ipaddr:
                return server
        return None

    def _claim(self, flow: Flow, dfs: Endpoint, now: float) -> Flow:
        """File a replicated flow under the DFS that reported on it."""
        self.flows.remove(flow.key)
        flow.key = (dfs, flow.flow_id)
        flow.extra.pop("not_at", None)
        self.flows.add(flow, flow.deadline if flow.deadline > now else now)
        self.counters["shared_flows_claimed"] += 1
        return flow

    def handle_all(self, messages: Iterable[Any], sender: Endpoint, now: float) -> list[Outgoing]:
        """Process every message of one datagram."""
        out: list[Outgoing] = []
        for message in messages:
            out.extend(self.handle(message, sender, now))
        return out

    def _bucket(self, dfs: Endpoint) -> TokenBucket:
        bucket = self._buckets.get(dfs)
        if bucket is None:
            if len(self._buckets) >= MAX_DFS_BUCKETS:
                self._buckets.popitem(last=False)  # spoofed sources must not grow this map without bound
            bucket = TokenBucket(self.settings.query_rate, float(self.settings.query_burst))
            self._buckets[dfs] = bucket
        else:
            self._buckets.move_to_end(dfs)
        return bucket

    def match_vs(self, ip: str, port: int, proto: int) -> VsRuntime | None:
        """The virtual server for a destination: exact, then wildcard port, wildcard address, both."""
        rt = self._by_key.get((ip, port, proto))
        if rt is not None:
            return rt
        best: VsRuntime | None = None
        best_rank = 99
        for cand in self.vs.values():
            cfg = cand.config
            if cfg.proto != proto:
                continue
            wa = bool(cfg.flags & FLAG_WILDCARD_ADDR)
            wp = bool(cfg.flags & FLAG_WILDCARD_PORT)
            if (wa or cfg.vip == ip) and (wp or cfg.port == port):
                rank = (2 if wa else 0) + (1 if wp else 0)
                if rank < best_rank:
                    best, best_rank = cand, rank
        return best

    def _on_query(self, q: Any, sender: Endpoint, now: float) -> list[Outgoing]:
        dfs = self._identity(sender)
        key: FlowKey = (dfs, q.flow_id)
        tuple_ = _flow_tuple(q)
        existing = self.flows.get(key)
        if existing is not None and existing.reply is not None and _flow_tuple(existing.reply) == tuple_:
            self.counters["duplicate_query"] += 1
            return [SsmbOut(sender, existing.reply)]
        refusal = self._refusals.get(key)
        if refusal is not None:
            if refusal.expires > now and refusal.tuple_ == tuple_:
                self.counters["duplicate_query"] += 1
                return [SsmbOut(sender, refusal.reply)]
            del self._refusals[key]
        if not self._bucket(dfs).take(now):
            self.counters["query_rate_dropped"] += 1
            return []
        if existing is not None:
            # The DFS reused a flow_id whose DELETE we never received: the old flow is over.
            self.counters["flow_id_reused"] += 1
            self._end_flow(existing, now)

        rt = self.match_vs(q.orig_dst_ipaddr, q.orig_dst_port, q.proto)
        if rt is None:
            self.counters["unknown_vs"] += 1
            return self._refuse(q, sender, key, SsmbError.UNKNOWN, None, now)
        cfg = rt.config
        if cfg.maintenance:
            return self._refuse(q, sender, key, SsmbError.NOTAVAIL, rt, now, "maintenance")
        if cfg.connection_limit and rt.stats.active >= cfg.connection_limit:
            return self._refuse(q, sender, key, SsmbError.CONNLIMIT, rt, now, "connection_limit")
        if self.flows.full:
            self.counters["flow_table_full"] += 1
            return self._refuse(q, sender, key, SsmbError.CONNLIMIT, rt, now, "flow_table_full")

        server, persistent = self._choose(rt, q, now)
        if server is None:
            return self._refuse(q, sender, key, SsmbError.NOTAVAIL, rt, now, "no_server")

        reply = self._reply(q, rt, server)
        flow = _new_flow(key, cfg.name, server.config.name, reply, now, persistent)
        self.flows.add(flow, now + self.settings.flow_idle_timeout)
        self._count_new_flow(rt, server)
        self.counters["reply_ok"] += 1
        out: list[Outgoing] = [SsmbOut(sender, reply)]
        if persistent and cfg.persistence is not None and cfg.persistence.prepare_ports:
            out.extend(self._prepare_related(rt, server, q, dfs, now))
        return out

    def _count_new_flow(self, rt: VsRuntime, server: ServerRuntime) -> None:
        rt.stats.active += 1
        rt.stats.total += 1
        server.stats.active += 1
        server.stats.total += 1

    def _choose(self, rt: VsRuntime, q: Any, now: float) -> tuple[ServerRuntime | None, bool]:
        cfg = rt.config
        if cfg.persistence is not None:
            rec = self.persistence.get(cfg.name, q.orig_src_ipaddr, now)
            if rec is not None:
                bound = rt.servers.get(rec.server)
                if bound is not None and bound.eligible:
                    self.counters["persistence_hit"] += 1
                    self.persistence.bind(
                        cfg.name, q.orig_src_ipaddr, bound.config.name, cfg.persistence.timeout, now
                    )
                    return bound, True
                self.counters["persistence_rebound"] += 1
        pick = rt.selector.choose(
            rt.candidates(),
            FlowTuple(q.orig_src_ipaddr, q.orig_src_port, q.orig_dst_ipaddr, q.orig_dst_port, q.proto),
        )
        if pick is None:
            return None, False
        server = rt.servers[pick.name]
        persistent = False
        if cfg.persistence is not None:
            bound_rec = self.persistence.bind(
                cfg.name, q.orig_src_ipaddr, server.config.name, cfg.persistence.timeout, now
            )
            persistent = bound_rec is not None
            if not persistent:
                self.counters["persistence_table_full"] += 1
        return server, persistent

    def _reply(self, q: Any, rt: VsRuntime, server: ServerRuntime) -> Any:
        cfg = rt.config
        rs = server.config
        new_ip = rs.address if cfg.flags & FLAG_TRANSLATE_ADDR else ZERO_IP
        new_port = (rs.port or q.orig_dst_port) if cfg.flags & FLAG_TRANSLATE_PORT else 0
        next_hop = ZERO_IP if cfg.flags & FLAG_ROUTE_BY_DST_IP else (rs.next_hop or rs.address)
        return ssmb.Reply(
            orig_src_ipaddr=q.orig_src_ipaddr,
            orig_dst_ipaddr=q.orig_dst_ipaddr,
            orig_src_port=q.orig_src_port,
            orig_dst_port=q.orig_dst_port,
            tos=q.tos,
            proto=q.proto,
            flags=q.flags & 0x01,  # keep OUTBOUND; ADD_TCP_OFFSET only when the CS proxied the handshake
            tcp_flags=q.tcp_flags,
            new_dst_ipaddr=new_ip,
            new_dst_port=new_port,
            next_hop_ipaddr=next_hop,
            svr_seq_offset=0,
            svr_ack_offset=0,
            client_seq_offset=0,
            client_ack_offset=0,
            flow_id=q.flow_id,
            error=SsmbError.OK,
        )

    def _refuse(
        self,
        q: Any,
        sender: Endpoint,
        key: FlowKey,
        error: SsmbError,
        rt: VsRuntime | None,
        now: float,
        reason: str = "",
    ) -> list[Outgoing]:
        reply = ssmb.Reply(
            orig_src_ipaddr=q.orig_src_ipaddr,
            orig_dst_ipaddr=q.orig_dst_ipaddr,
            orig_src_port=q.orig_src_port,
            orig_dst_port=q.orig_dst_port,
            tos=q.tos,
            proto=q.proto,
            flags=q.flags & 0x01,
            tcp_flags=q.tcp_flags,
            new_dst_ipaddr=ZERO_IP,
            new_dst_port=0,
            next_hop_ipaddr=ZERO_IP,
            svr_seq_offset=0,
            svr_ack_offset=0,
            client_seq_offset=0,
            client_ack_offset=0,
            flow_id=q.flow_id,
            error=error,
        )
        name = error.name.lower()
        self.counters[f"reply_{name}"] += 1
        if reason:
            self.counters[f"refused_{reason}"] += 1
        if rt is not None:
            rt.stats.errors[name] += 1
        self._refusals[key] = _Refusal(reply, _flow_tuple(q), now + REFUSAL_MEMORY)
        self._refusals.move_to_end(key)
        while len(self._refusals) > MAX_REMEMBERED_REFUSALS:
            self._refusals.popitem(last=False)
        return [SsmbOut(sender, reply)]

    def _prepare_related(
        self, rt: VsRuntime, server: ServerRuntime, q: Any, dfs: Endpoint, now: float
    ) -> list[Outgoing]:
        cfg = rt.config
        assert cfg.persistence is not None
        out: list[Outgoing] = []
        for port in cfg.persistence.prepare_ports:
            mark = (cfg.name, q.orig_src_ipaddr, dfs, port)
            if mark in self._prepared or self.flows.full:
                continue
            self._prepared.add(mark)
            self._next_newflow_id = (self._next_newflow_id + 1) & 0x7FFF_FFFF
            flow_id = NEWFLOW_ID_BIT | self._next_newflow_id
            rs = server.config
            msg = ssmb.NewFlow(
                orig_src_ipaddr=q.orig_src_ipaddr,
                orig_dst_ipaddr=q.orig_dst_ipaddr,
                orig_src_port=0,
                orig_dst_port=port,
                tos=q.tos,
                proto=q.proto,
                flags=0,
                tcp_flags=0,
                new_dst_ipaddr=rs.address if cfg.flags & FLAG_TRANSLATE_ADDR else ZERO_IP,
                new_dst_port=port if cfg.flags & FLAG_TRANSLATE_PORT else 0,
                next_hop_ipaddr=ZERO_IP if cfg.flags & FLAG_ROUTE_BY_DST_IP else (rs.next_hop or rs.address),
                svr_seq_offset=0,
                svr_ack_offset=0,
                client_seq_offset=0,
                client_ack_offset=0,
                flow_id=flow_id,
            )
            flow = Flow(
                key=(dfs, flow_id),
                vs=cfg.name,
                server=rs.name,
                client_ip=q.orig_src_ipaddr,
                client_port=0,
                vip=q.orig_dst_ipaddr,
                vport=port,
                proto=q.proto,
                created=now,
                last_activity=now,
                reply=msg,
                persistent=False,
                extra={"prepared": True},
            )
            self.flows.add(flow, now + self.settings.flow_idle_timeout)
            self._count_new_flow(rt, server)
            self.counters["newflow_sent"] += 1
            out.append(SsmbOut(dfs, msg))
        return out

    def _on_end(self, msg: Any, sender: Endpoint, now: float, alive: bool) -> None:
        kind = "stats" if isinstance(msg, ssmb.Stats) else "delete"
        dfs = self._identity(sender)
        flow = self.flows.get((dfs, msg.flow_id))
        if flow is None:
            shared = self.flows.get(_unowned_key(msg))
            if shared is not None and kind == "stats" and msg.error == SsmbError.UNKNOWN:
                self._not_at(shared, dfs, now)
                return
            if shared is not None:
                flow = self._claim(shared, dfs, now)
        if flow is None or not _reports_flow(flow, msg):
            # Not a flow this CS decided (or a stale one under the same id): a DFS_ASSIST connection,
            # whose server the switch chose, reports its end under an id the DFS picked on the spot.
            rt = self.match_vs(msg.orig_dst_ipaddr, msg.orig_dst_port, msg.proto)
            if rt is not None and rt.config.vs_class == VsClass.DFS_ASSIST:
                self._on_dfs_assist_end(rt, msg, dfs, alive)
            else:
                self.counters[f"{kind}_unknown_flow" if flow is None else f"{kind}_flow_mismatch"] += 1
            return
        self._account(flow, msg)
        if alive:
            self.counters["stats_connalive"] += 1
            flow.last_activity = now
            flow.reap_tries = 0
            self.flows.schedule(flow, now + self.settings.flow_idle_timeout)
            return
        self._end_flow(flow, now)

    def _not_at(self, flow: Flow, dfs: Endpoint, now: float) -> None:
        """A DFS answered a REAP for a replicated flow with UNKNOWN: gone once no connected DFS has it."""
        not_at: set[Endpoint] = flow.extra.setdefault("not_at", set())
        not_at.add(dfs)
        self.counters["shared_flow_not_at_dfs"] += 1
        if self._dfs and not_at >= set(self._dfs):
            self.counters["shared_flows_gone"] += 1
            self._end_flow(flow, now)

    def _on_dfs_assist_end(self, rt: VsRuntime, msg: Any, dfs: Endpoint, alive: bool) -> None:
        """Count one ended DFS_ASSIST connection into its virtual server, keeping no per-flow state.

        The endflow message names no real server, so only the virtual server's statistics grow. Its
        counters are the connection's final totals, added whole. A CONNALIVE STATS says the connection
        goes on and carries running totals that its DELETE repeats, so it adds nothing. Reports from an
        endpoint that never announced itself as a DFS are not counted: with no flow to check them against,
        anybody could inflate the statistics.
        """
        if dfs not in self._known_dfs:
            self.counters["dfs_assist_unknown_sender"] += 1
            return
        if alive:
            self.counters["dfs_assist_connalive_ignored"] += 1
            return
        self.counters["dfs_assist_flows"] += 1
        st = rt.stats
        st.total += 1
        st.dfs_assist_flows += 1
        _add_counters(st, _counters(msg).values())

    def _account(self, flow: Flow, msg: Any) -> None:
        deltas = []
        for name in COUNTER_FIELDS:
            new = int(getattr(msg, name))
            old = int(getattr(flow, name))
            # Running totals only grow; a smaller value means the DFS restarted its count.
            deltas.append(new - old if new >= old else new)
            setattr(flow, name, new)
        rt = self.vs.get(flow.vs)
        targets: list[Any] = []
        if rt is not None:
            targets.append(rt.stats)
            server = rt.servers.get(flow.server)
            if server is not None:
                targets.append(server.stats)
        for t in targets:
            _add_counters(t, deltas)

    def _end_flow(self, flow: Flow, now: float) -> None:
        if self.flows.remove(flow.key) is None:
            return
        self.counters["flows_ended"] += 1
        rt = self.vs.get(flow.vs)
        if rt is None:
            return
        rt.stats.active = max(0, rt.stats.active - 1)
        server = rt.servers.get(flow.server)
        if server is not None:
            server.stats.active = max(0, server.stats.active - 1)
            if server.retired and server.stats.active == 0:
                del rt.servers[flow.server]
                rt.invalidate()
        if flow.persistent:
            self.persistence.release(flow.vs, flow.client_ip, now)
            if self.persistence.get(flow.vs, flow.client_ip, now) is None:
                self._forget_prepared(flow.vs, flow.client_ip)

    def _forget_prepared(self, vs: str, client: str) -> None:
        if self._prepared:
            self._prepared = {m for m in self._prepared if not (m[0] == vs and m[1] == client)}

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> list[Outgoing]:
        """Run expired idle timers (REAP, re-REAP, drop) and expire persistence and refusal memory."""
        out: list[Outgoing] = []
        for flow in self.flows.due(now):
            if self.role == "standby":
                # The active reaps; its DFSs' STATS copies keep this table in step.
                self.flows.schedule(flow, now + self.settings.flow_idle_timeout)
                continue
            if flow.reap_tries >= self.settings.reap_retries:
                self.counters["reap_unanswered"] += 1
                rt = self.vs.get(flow.vs)
                if rt is not None and flow.server in rt.servers:
                    rt.servers[flow.server].stats.reaped_unanswered += 1
                self._end_flow(flow, now)
                continue
            flow.reap_tries += 1
            self.counters["reap_sent"] += 1
            self.flows.schedule(flow, now + self.settings.reap_response_timeout)
            if _is_unowned(flow):
                # Replicated before its DFS reported on it: ask every DFS; the owner answers.
                out.extend(SsmbOut(dfs, self._reap(flow)) for dfs in self._dfs)
                continue
            # flow.dfs is the DFS's announced SSMB endpoint whenever the DFS is registered (see _identity).
            out.append(SsmbOut(flow.dfs, self._reap(flow)))
        if self.persistence.expire(now) and self._prepared:
            live = {(k[0], k[1]) for k, _ in self.persistence.items()}
            self._prepared = {m for m in self._prepared if (m[0], m[1]) in live}
        while self._refusals:
            key, refusal = next(iter(self._refusals.items()))
            if refusal.expires > now:
                break
            del self._refusals[key]
        return out

    def _reap(self, flow: Flow) -> Any:
        r = flow.reply
        return ssmb.Reap(
            orig_src_ipaddr=flow.client_ip,
            orig_dst_ipaddr=flow.vip,
            orig_src_port=flow.client_port,
            orig_dst_port=flow.vport,
            tos=r.tos if r is not None else 0,
            proto=flow.proto,
            flags=r.flags if r is not None else 0,
            tcp_flags=0,
            new_dst_ipaddr=r.new_dst_ipaddr if r is not None else ZERO_IP,
            new_dst_port=r.new_dst_port if r is not None else 0,
            next_hop_ipaddr=r.next_hop_ipaddr if r is not None else ZERO_IP,
            svr_seq_offset=0,
            svr_ack_offset=0,
            client_seq_offset=0,
            client_ack_offset=0,
            flow_id=flow.flow_id,
        )

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work (a hint for the daemon's sleep)."""
        return self.flows.next_deadline()

    # ------------------------------------------------------------------ health and administration

    def health_targets(self) -> list[HealthTarget]:
        """Every (virtual server, real server) pair with a health check and a port to probe."""
        out = []
        for rt in self.vs.values():
            hc = rt.config.health_check
            if hc is None:
                continue
            for s in rt.servers.values():
                port = s.config.port or rt.config.port
                if s.retired or s.config.disabled or port == 0:
                    continue
                out.append(HealthTarget(rt.config.name, s.config.name, s.config.address, port, hc))
        return out

    def health_result(self, vs: str, server: str, ok: bool, now: float, detail: str = "") -> list[VsChange]:
        """Feed one probe result; return the ADD_VS to announce when a DFS_ASSIST pool changed."""
        rt = self.vs.get(vs)
        s = rt.servers.get(server) if rt is not None else None
        if rt is None or s is None or s.health is None:
            self.counters["health_result_unknown_target"] += 1
            return []
        self.counters["health_checks"] += 1
        if not ok:
            self.counters["health_checks_failed"] += 1
        if not s.health.record(ok, now, detail):
            return []
        rt.invalidate()
        self.counters["health_up" if s.health.state is HealthState.UP else "health_down"] += 1
        if s.health.state is HealthState.DOWN and rt.config.persistence is not None:
            self.persistence.forget_server(vs, server)
        return self._pool_changed(rt)

    def set_drain(self, ref: str, drain: bool) -> tuple[list[str], list[VsChange]]:
        """Drain or undrain real servers named ``ref`` (``server`` in every VS, or ``vs/server``).

        Returns the ``vs/server`` names affected and the ADD_VS to announce for changed DFS_ASSIST pools.
        """
        vs_name, _, server_name = ref.rpartition("/")
        matched: list[str] = []
        changes: list[VsChange] = []
        for rt in self.vs.values():
            if vs_name and rt.config.name != vs_name:
                continue
            s = rt.servers.get(server_name)
            if s is None or s.retired:
                continue
            before = s.eligible
            s.admin_drain = drain
            rt.invalidate()
            matched.append(f"{rt.config.name}/{server_name}")
            if s.eligible != before:
                changes.extend(self._pool_changed(rt))
        return matched, changes

    def _pool_changed(self, rt: VsRuntime) -> list[VsChange]:
        if rt.config.vs_class != VsClass.DFS_ASSIST:
            return []
        return [VsChange("add", rt.config.name, rt.definition())]

    def clear_flows(self, now: float) -> int:
        """Forget every flow (an operator's RESET); return how many."""
        flows = list(self.flows)
        for flow in flows:
            self._end_flow(flow, now)
        return len(flows)

    # ------------------------------------------------------------------ views (JSON-ready)

    def status(self, now: float) -> dict[str, Any]:
        """Summary for ``/status``."""
        return {
            "uptime": round(now - self.started, 3),
            "role": self.role,
            "config": self.config.source,
            "virtual_servers": self.vs_rows(),
            "flows": {"active": len(self.flows), "max": self.flows.max_flows},
            "persistence_records": len(self.persistence),
            "dfs": [f"{ip}:{port}" for ip, port in self._dfs],
            "counters": dict(sorted(self.counters.items())),
        }

    def flow_rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` flows for ``/flows``."""
        rows: list[dict[str, Any]] = []
        for flow in self.flows:
            if len(rows) >= limit:
                break
            rows.append(
                {
                    "dfs": f"{flow.dfs[0]}:{flow.dfs[1]}",
                    "flow_id": flow.flow_id,
                    "vs": flow.vs,
                    "server": flow.server,
                    "client": f"{flow.client_ip}:{flow.client_port}",
                    "vip": f"{flow.vip}:{flow.vport}",
                    "proto": flow.proto,
                    "created": flow.created,
                    "last_activity": flow.last_activity,
                    "reaping": flow.reaping,
                    **_counters(flow),
                }
            )
        return rows

    def server_rows(self) -> list[dict[str, Any]]:
        """Every real server for ``/servers``."""
        rows = []
        for rt in self.vs.values():
            for name, s in rt.servers.items():
                st = s.stats
                rows.append(
                    {
                        "vs": rt.config.name,
                        "server": name,
                        "address": s.config.address,
                        "port": s.config.port,
                        "weight": s.config.weight,
                        "state": s.state,
                        "health": None if s.health is None else s.health.state.value,
                        "health_detail": None if s.health is None else s.health.last_detail,
                        "draining": s.draining,
                        "active": st.active,
                        "total": st.total,
                        **_counters(st),
                        "reaped_unanswered": st.reaped_unanswered,
                    }
                )
        return rows

    def vs_rows(self) -> list[dict[str, Any]]:
        """Every virtual server for ``/vs``."""
        rows = []
        for rt in self.vs.values():
            cfg, st = rt.config, rt.stats
            rows.append(
                {
                    "name": cfg.name,
                    "vip": cfg.vip,
                    "port": cfg.port,
                    "protocol": cfg.protocol_name,
                    "class": "dfs_assist" if cfg.vs_class == VsClass.DFS_ASSIST else "cs_assist",
                    "method": cfg.method.value,
                    "flags": cfg.flags,
                    "maintenance": cfg.maintenance,
                    "connection_limit": cfg.connection_limit,
                    "servers": len([s for s in rt.servers.values() if not s.retired]),
                    "eligible": len(rt.candidates()),
                    "active": st.active,
                    "total": st.total,
                    **_counters(st),
                    "dfs_assist_flows": st.dfs_assist_flows,
                    "errors": dict(st.errors),
                }
            )
        return rows


#: The per-direction byte and packet counters a flow, a real server and a virtual server all keep.
COUNTER_FIELDS = ("inbound_bytes", "outbound_bytes", "inbound_pkts", "outbound_pkts")


def _counters(obj: Any) -> dict[str, int]:
    """The four counters of ``obj`` for a status row."""
    return {name: int(getattr(obj, name)) for name in COUNTER_FIELDS}


def _add_counters(obj: Any, amounts: Iterable[int]) -> None:
    """Add ``amounts`` (in :data:`COUNTER_FIELDS` order) to the counters of ``obj``."""
    for name, amount in zip(COUNTER_FIELDS, amounts, strict=True):
        setattr(obj, name, getattr(obj, name) + amount)


def _new_health(hc: HealthCheckConfig) -> HealthMachine:
    state = HealthState.UP if hc.initial_state == "up" else HealthState.DOWN
    return HealthMachine(rise=hc.rise, fall=hc.fall, state=state)
