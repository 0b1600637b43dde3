"""A fake OpenFlow 1.3 switch: one flow table, groups and learn, enough to check what the DFS programs.

Feed it the messages the DFS returns (:meth:`FakeSwitch.apply`), then ask where a packet goes
(:meth:`FakeSwitch.send`). Packets are dicts of OXM field names (``eth_src``, ``ipv4_dst``,
``tcp_dst``...); results come back the same way, with addresses as strings. It models what the
DFS relies on: priorities, exact and masked matches, cookies with masks, set-field / output /
group / controller actions, select groups with weighted hashing, the Nicira ``learn``, ``move`` and
``fin_timeout`` actions, idle timeouts, flow-removed with counters, and flow-stats requests.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from slbcore.dfs.packets import parse_frame

IP_FIELDS = {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"}
MAC_FIELDS = {"eth_src", "eth_dst", "arp_sha", "arp_tha"}
NXM_TO_OXM = {
    "in_port_nxm": "in_port",
    "eth_dst_nxm": "eth_dst",
    "eth_src_nxm": "eth_src",
    "eth_type_nxm": "eth_type",
    "ip_proto_nxm": "ip_proto",
    "ipv4_src_nxm": "ipv4_src",
    "ipv4_dst_nxm": "ipv4_dst",
    "tcp_src_nxm": "tcp_src",
    "tcp_dst_nxm": "tcp_dst",
    "udp_src_nxm": "udp_src",
    "udp_dst_nxm": "udp_dst",
}
PREREQS = {
    "ipv4_src": ("eth_type", 0x0800),
    "ipv4_dst": ("eth_type", 0x0800),
    "tcp_src": ("ip_proto", 6),
    "tcp_dst": ("ip_proto", 6),
    "udp_src": ("ip_proto", 17),
    "udp_dst": ("ip_proto", 17),
    "tcp_flags": ("ip_proto", 6),
}


def to_int(name: str, value: Any) -> int:
    """A field value (string address or int) as an int."""
    if name in IP_FIELDS and isinstance(value, str):
        return int(ipaddress.IPv4Address(value))
    if name in MAC_FIELDS and isinstance(value, str):
        return int(value.replace(":", ""), 16)
    return int(value)


def to_user(name: str, value: int) -> Any:
    """An int field value back in the form OFPMatch uses."""
    if name in IP_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if name in MAC_FIELDS:
        raw = f"{value:012x}"
        return ":".join(raw[i : i + 2] for i in range(0, 12, 2))
    return value


def frame_fields(data: bytes) -> dict[str, Any]:
    """Parse a frame the DFS sent into the packet dict this switch works on."""
    frame = parse_frame(data)
    pkt: dict[str, Any] = {"eth_src": frame.eth_src, "eth_dst": frame.eth_dst, "eth_type": frame.eth_type}
    if frame.arp is not None:
        a = frame.arp
        pkt.update(arp_op=a.op, arp_sha=a.sha, arp_spa=a.spa, arp_tha=a.tha, arp_tpa=a.tpa)
    if frame.ip is not None:
        ip = frame.ip
        pkt.update(ipv4_src=ip.src, ipv4_dst=ip.dst, ip_proto=ip.proto, ip_ttl=ip.ttl)
        if ip.proto == 6:
            pkt.update(tcp_src=ip.sport, tcp_dst=ip.dport, tcp_flags=ip.tcp_flags)
        elif ip.proto == 17:
            pkt.update(udp_src=ip.sport, udp_dst=ip.dport)
    pkt["_size"] = len(data)
    pkt["_data"] = data
    return pkt


@dataclass
class Entry:
    """One flow entry."""

    priority: int
    match: dict[str, tuple[int, int | None]]
    actions: list[Any]
    cookie: int
    idle_timeout: int
    hard_timeout: int
    flags: int
    installed: float
    last_used: float
    packet_count: int = 0
    byte_count: int = 0
    table_id: int = 0

    def matches(self, pkt: dict[str, Any]) -> bool:
        """Whether the packet (int-valued fields) matches this entry."""
        for name, (value, mask) in self.match.items():
            have = pkt.get(name)
            if have is None:
                return False
            if mask is None:
                if have != value:
                    return False
            elif have & mask != value & mask:
                return False
        return True

    def match_dict(self) -> dict[str, Any]:
        """The match as field -> user value (masked fields as (value, mask))."""
        return {
            k: to_user(k, v) if m is None else (to_user(k, v), to_user(k, m))
            for k, (v, m) in self.match.items()
        }


@dataclass
class Event:
    """Something the switch did: output a packet, send a packet-in, or remove an entry."""

    kind: str
    port: int = 0
    packet: dict[str, Any] = field(default_factory=dict)
    entry: Entry | None = None
    reason: int = 0
    cookie: int = 0


class FakeSwitch:
    """One table, groups, learn, timeouts; no ports beyond numbers."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.groups: dict[int, tuple[int, list[Any]]] = {}
        self.now = 0.0
        self.events: list[Event] = []
        self.stats_replies: list[tuple[Any, list[Entry]]] = []
        self.errors: list[str] = []
        self.config: list[Any] = []

    # -------------------------------------------------------------- messages from the controller

    def apply(self, msgs: list[Any]) -> list[Event]:
        """Apply OpenFlow messages in order; return what they made the switch do."""
        events: list[Event] = []
        for msg in msgs:
            msg.xid = 0
            msg.serialize()  # every message the DFS emits must be encodable
            if isinstance(msg, parser.OFPFlowMod):
                events += self._flow_mod(msg)
            elif isinstance(msg, parser.OFPGroupMod):
                self._group_mod(msg)
            elif isinstance(msg, parser.OFPPacketOut):
                pkt = self._norm(frame_fields(msg.data))
                pkt["in_port"] = msg.in_port
                events += self._run_actions(pkt, msg.actions, None)
            elif isinstance(msg, parser.OFPSetConfig | parser.OFPSetAsync):
                self.config.append(msg)
            elif isinstance(msg, parser.OFPFlowStatsRequest):
                chosen = [
                    e for e in self.entries if (e.cookie & msg.cookie_mask) == (msg.cookie & msg.cookie_mask)
                ]
                self.stats_replies.append((msg, chosen))
            else:
                raise AssertionError(f"fake switch cannot apply {type(msg).__name__}")
        self.events += events
        return events

    @staticmethod
    def _match(match: Any) -> dict[str, tuple[int, int | None]]:
        out: dict[str, tuple[int, int | None]] = {}
        for name, value in match.items():
            if isinstance(value, tuple):
                out[name] = (to_int(name, value[0]), to_int(name, value[1]))
            else:
                out[name] = (to_int(name, value), None)
        for name in list(out):
            need = PREREQS.get(name)
            if need and out.get(need[0], (None, None))[0] != need[1]:
                raise AssertionError(f"match on {name} without prerequisite {need[0]}={need[1]:#x}")
        return out

    def _flow_mod(self, fm: Any) -> list[Event]:
        match = self._match(fm.match)
        if fm.command == ofp.OFPFC_ADD:
            actions: list[Any] = []
            for inst in fm.instructions:
                assert inst.type == ofp.OFPIT_APPLY_ACTIONS, "only apply-actions instructions are modelled"
                actions += inst.actions
            self._add(
                Entry(
                    fm.priority,
                    match,
                    actions,
                    fm.cookie,
                    fm.idle_timeout,
                    fm.hard_timeout,
                    fm.flags,
                    self.now,
                    self.now,
                    table_id=fm.table_id,
                )
            )
            return []
        if fm.command in (ofp.OFPFC_DELETE, ofp.OFPFC_DELETE_STRICT):
            strict = fm.command == ofp.OFPFC_DELETE_STRICT
            gone = []
            for e in self.entries:
                if (e.cookie & fm.cookie_mask) != (fm.cookie & fm.cookie_mask):
                    continue
                if fm.table_id != ofp.OFPTT_ALL and e.table_id != fm.table_id:
                    continue
                if strict:
                    if e.priority != fm.priority or e.match != match:
                        continue
                elif any(e.match.get(k) != v for k, v in match.items()):
                    continue
                gone.append(e)
            return [self._remove(e, ofp.OFPRR_DELETE) for e in gone if e in self.entries]
        raise AssertionError(f"flow-mod command {fm.command} not modelled")

    def _add(self, entry: Entry) -> None:
        for i, e in enumerate(self.entries):
            if e.table_id == entry.table_id and e.priority == entry.priority and e.match == entry.match:
                self.entries[i] = entry
                return
        self.entries.append(entry)

    def _remove(self, e: Entry, reason: int) -> Event:
        self.entries.remove(e)
        if e.flags & ofp.OFPFF_SEND_FLOW_REM:
            return Event("flow_removed", entry=e, reason=reason, cookie=e.cookie)
        return Event("silently_removed", entry=e, reason=reason, cookie=e.cookie)

    def _group_mod(self, gm: Any) -> None:
        if gm.command == ofp.OFPGC_DELETE:
            ids = list(self.groups) if gm.group_id == ofp.OFPG_ALL else [gm.group_id]
            for gid in ids:
                self.groups.pop(gid, None)
                for e in [
                    e
                    for e in self.entries
                    if any(isinstance(a, parser.OFPActionGroup) and a.group_id == gid for a in e.actions)
                ]:
                    self.entries.remove(e)
            return
        if gm.command == ofp.OFPGC_ADD:
            if gm.group_id in self.groups:
                self.errors.append(f"group {gm.group_id} exists")
                return
        elif gm.command == ofp.OFPGC_MODIFY and gm.group_id not in self.groups:
            self.errors.append(f"group {gm.group_id} unknown")
            return
        self.groups[gm.group_id] = (gm.type, list(gm.buckets))

    # -------------------------------------------------------------- packets

    @staticmethod
    def _norm(pkt: dict[str, Any]) -> dict[str, Any]:
        return {k: (v if k.startswith("_") else to_int(k, v)) for k, v in pkt.items()}

    @staticmethod
    def _user(pkt: dict[str, Any]) -> dict[str, Any]:
        return {k: (v if k.startswith("_") else to_user(k, v)) for k, v in pkt.items()}

    def lookup(self, pkt: dict[str, Any], table_id: int = 0) -> Entry | None:
        """The highest-priority entry of table ``table_id`` matching an int-valued packet."""
        best: Entry | None = None
        for e in self.entries:
            if e.table_id != table_id:
                continue
            if e.matches(pkt) and (best is None or e.priority > best.priority):
                best = e
        return best

    def send(self, in_port: int, pkt: dict[str, Any], size: int = 100) -> list[Event]:
        """A packet arrives on ``in_port``: run it through the table."""
        p = self._norm(dict(pkt))
        p["in_port"] = in_port
        p.setdefault("_size", size)
        events = self._table(p, 0)
        self.events += events
        return events

    def _table(self, pkt: dict[str, Any], table_id: int) -> list[Event]:
        entry = self.lookup(pkt, table_id)
        if entry is None:
            return []
        entry.packet_count += 1
        entry.byte_count += pkt["_size"]
        entry.last_used = self.now
        return self._run_actions(pkt, entry.actions, entry)

    def _run_actions(self, pkt: dict[str, Any], actions: list[Any], entry: Entry | None) -> list[Event]:
        events: list[Event] = []
        for a in actions:
            if isinstance(a, parser.OFPActionSetField):
                pkt[a.key] = to_int(a.key, a.value)
            elif isinstance(a, parser.OFPActionOutput):
                if a.port == ofp.OFPP_CONTROLLER:
                    events.append(
                        Event(
                            "packet_in",
                            port=pkt["in_port"],
                            packet=self._user(pkt),
                            cookie=entry.cookie if entry else 0,
                        )
                    )
                elif a.port == ofp.OFPP_TABLE:
                    events += self.send(pkt["in_port"], self._user(pkt), pkt["_size"])
                elif a.port == ofp.OFPP_IN_PORT:
                    events.append(Event("output", port=pkt["in_port"], packet=self._user(pkt)))
                else:
                    events.append(Event("output", port=a.port, packet=self._user(pkt)))
            elif isinstance(a, parser.OFPActionDecNwTtl):
                if pkt.get("ip_ttl", 0) <= 1:
                    return events  # OVS drops it (a controller may ask to see it as invalid_ttl)
                pkt["ip_ttl"] -= 1
            elif isinstance(a, parser.OFPActionGroup):
                events += self._group(pkt, a.group_id)
            elif isinstance(a, parser.NXActionLearn):
                self._learn(pkt, a)
            elif isinstance(a, parser.NXActionRegMove):
                mask = (1 << a.n_bits) - 1
                bits = (pkt.get(a.src_field, 0) >> a.src_ofs) & mask
                pkt[a.dst_field] = (pkt.get(a.dst_field, 0) & ~(mask << a.dst_ofs)) | (bits << a.dst_ofs)
            elif isinstance(a, parser.NXActionResubmitTable):
                events += self._table(pkt, a.table_id)
            elif isinstance(a, parser.NXActionFinTimeout):
                if entry is not None and pkt.get("tcp_flags", 0) & 0x05:
                    entry.idle_timeout = a.fin_idle_timeout or entry.idle_timeout
                    entry.hard_timeout = a.fin_hard_timeout or entry.hard_timeout
            else:
                raise AssertionError(f"action {type(a).__name__} not modelled")
        return events

    def _group(self, pkt: dict[str, Any], group_id: int) -> list[Event]:
        gtype, buckets = self.groups[group_id]
        assert gtype == ofp.OFPGT_SELECT
        if not buckets:
            return []
        sport = pkt.get("tcp_src", pkt.get("udp_src", 0))
        dport = pkt.get("tcp_dst", pkt.get("udp_dst", 0))
        key = f"{pkt.get('ip_proto')}/{pkt.get('ipv4_src')}/{pkt.get('ipv4_dst')}/{sport}/{dport}".encode()
        h = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
        slot = h % sum(b.weight for b in buckets)
        for b in buckets:
            if slot < b.weight:
                # OVS runs bucket actions as an action set: a learn there is silently dropped
                assert not any(isinstance(a, parser.NXActionLearn) for a in b.actions), "learn in a bucket"
                return self._run_actions(dict(pkt), b.actions, None)
            slot -= b.weight
        raise AssertionError("unreachable")

    def _learn(self, pkt: dict[str, Any], learn: Any) -> None:
        match: dict[str, tuple[int, int | None]] = {}
        actions: list[Any] = []
        for spec in learn.specs:
            src = spec.src
            value = pkt[NXM_TO_OXM.get(src[0], src[0])] if isinstance(src, tuple) else src
            if isinstance(spec, parser.NXFlowSpecMatch):
                match[NXM_TO_OXM[spec.dst[0]]] = (value, None)
            elif isinstance(spec, parser.NXFlowSpecLoad):
                name = NXM_TO_OXM[spec.dst[0]]
                actions.append(parser.OFPActionSetField(**{name: to_user(name, value)}))
            elif isinstance(spec, parser.NXFlowSpecOutput):
                actions.append(parser.OFPActionOutput(value, 0))
        if learn.fin_idle_timeout or learn.fin_hard_timeout:
            actions.insert(
                0,
                parser.NXActionFinTimeout(
                    fin_idle_timeout=learn.fin_idle_timeout, fin_hard_timeout=learn.fin_hard_timeout
                ),
            )
        flags = ofp.OFPFF_SEND_FLOW_REM if learn.flags & 1 else 0
        existing = next(
            (
                e
                for e in self.entries
                if e.table_id == learn.table_id and e.priority == learn.priority and e.match == match
            ),
            None,
        )
        entry = Entry(
            learn.priority,
            match,
            actions,
            learn.cookie,
            learn.idle_timeout,
            learn.hard_timeout,
            flags,
            self.now,
            self.now,
            table_id=learn.table_id,
        )
        if existing is not None:
            entry.packet_count, entry.byte_count = existing.packet_count, existing.byte_count
        self._add(entry)

    # -------------------------------------------------------------- time

    def advance(self, now: float) -> list[Event]:
        """Move the clock to ``now`` and expire idle/hard timeouts."""
        self.now = now
        events = []
        for e in list(self.entries):
            if e.idle_timeout and now - e.last_used >= e.idle_timeout:
                events.append(self._remove(e, ofp.OFPRR_IDLE_TIMEOUT))
            elif e.hard_timeout and now - e.installed >= e.hard_timeout:
                events.append(self._remove(e, ofp.OFPRR_HARD_TIMEOUT))
        self.events += events
        return events

    def find(self, cookie: int, mask: int = 0xFFFFFFFFFFFFFFFF) -> list[Entry]:
        """Entries whose cookie matches under ``mask``."""
        return [e for e in self.entries if (e.cookie & mask) == (cookie & mask)]


class Rig:
    """A DFS engine wired to a fake switch: engine output goes to the switch, switch events back."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.switch = FakeSwitch()
        self.now = 0.0
        self.ssmb: list[Any] = []
        self.csmb: list[Any] = []
        self.wire: list[Event] = []

    def feed(self, out: Any) -> None:
        """Deliver an engine Output: OpenFlow to the switch (and its events back), bus messages to lists."""
        self.ssmb += out.ssmb
        self.csmb += out.csmb
        events = self.switch.apply(out.openflow)
        self._events(events)
        for msg, chosen in self.switch.stats_replies:
            from slbcore.dfs.engine import FlowEntryStats

            stats = [
                FlowEntryStats(e.cookie, e.match_dict(), e.packet_count, e.byte_count, e.priority)
                for e in chosen
            ]
            self.switch.stats_replies = []
            self.feed(self.engine.flow_stats_reply(msg.cookie, msg.cookie_mask, stats, self.now))

    def _events(self, events: list[Event]) -> None:
        from slbcore.dfs.engine import FlowEntryStats

        for ev in events:
            if ev.kind == "packet_in":
                self.feed(self.engine.packet_in(ev.port, ev.packet["_data"], self.now))
            elif ev.kind == "flow_removed":
                assert ev.entry is not None
                e = ev.entry
                st = FlowEntryStats(e.cookie, e.match_dict(), e.packet_count, e.byte_count, e.priority)
                self.feed(self.engine.flow_removed(st, ev.reason, self.now))
            elif ev.kind == "output":
                self.wire.append(ev)

    def send(self, in_port: int, data: bytes) -> list[Event]:
        """A frame arrives at the switch; return the frames it put on the wire because of it."""
        before = len(self.wire)
        self._events(self.switch.send(in_port, frame_fields(data), len(data)))
        return self.wire[before:]

    def advance(self, now: float) -> None:
        """Move both clocks to ``now``: switch timeouts first, then engine timers."""
        self.now = now
        self._events(self.switch.advance(now))
        self.feed(self.engine.tick(now))

    def take_ssmb(self) -> list[Any]:
        """SSMB messages sent since the last call."""
        msgs, self.ssmb = [m.message for m in self.ssmb], []
        return msgs
