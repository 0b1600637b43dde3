"""os-ken app: feeds switch events into the DFS engine and sends what it returns.

All engine calls go through :class:`DfsRuntime`, which serialises them under one lock (os-ken
handlers, the bus threads and the timer thread all call in) and delivers the engine's output:
OpenFlow to the connected datapath, SSMB and CSMB messages to the daemon's senders.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from slbcore.dfs.engine import DfsEngine, FlowEntryStats, Output, SsmbOut

LOG = logging.getLogger("dfs.controller")


class DfsRuntime:
    """The engine, its lock, the live datapath and the senders for each bus."""

    def __init__(
        self,
        engine: DfsEngine,
        send_ssmb: Callable[[SsmbOut], None],
        send_csmb: Callable[[Any], None],
        clock: Callable[[], float] = time.monotonic,
        forget_ssmb: Callable[[tuple[str, int]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.send_ssmb = send_ssmb
        self.send_csmb = send_csmb
        self.forget_ssmb = forget_ssmb
        self.clock = clock
        self.lock = threading.RLock()
        self.datapath: Any = None
        self.counters: Counter[str] = Counter()
        self._stats_requests: dict[int, tuple[int, int]] = {}
        self._stats_parts: dict[int, list[FlowEntryStats]] = {}
        self._logged_errors: set[str] = set()

    def run(self, event: Callable[[DfsEngine, float], Output]) -> None:
        """Hand one event to the engine and send its output; never raises."""
        with self.lock:
            try:
                out = event(self.engine, self.clock())
            except Exception:  # a bug must cost one event, not the daemon
                LOG.exception("DFS engine failed on an event")
                self.counters["engine_exceptions"] += 1
                return
            if len(self.engine.errors) != len(self._logged_errors):
                self._log_new_errors()
            self._deliver(out)

    def _log_new_errors(self) -> None:
        # Every kind of bad input is logged the first time only; the counters tell how often.
        for kind in sorted(set(self.engine.errors) - self._logged_errors):
            self._logged_errors.add(kind)
            LOG.warning("DFS error %s (first occurrence; further ones are only counted)", kind)

    def _deliver(self, out: Output) -> None:
        # Before anything is sent: a reply to what we send may come from the restarted peer.
        for peer in out.ssmb_forget:
            if self.forget_ssmb is not None:
                self.forget_ssmb(peer)
                self.counters["ssmb_peers_forgotten"] += 1
        dp = self.datapath
        for msg in out.openflow:
            if dp is None:
                self.counters["openflow_dropped_no_switch"] += 1
                continue
            msg.datapath = dp
            try:
                if not dp.send_msg(msg):
                    self.counters["openflow_send_failed"] += 1
                    continue
            except Exception:
                LOG.exception("sending %s failed", type(msg).__name__)
                self.counters["openflow_send_failed"] += 1
                continue
            self.counters["openflow_sent"] += 1
            if isinstance(msg, dp.ofproto_parser.OFPFlowStatsRequest):
                self._stats_requests[msg.xid] = (msg.cookie, msg.cookie_mask)
        for s in out.ssmb:
            try:
                self.send_ssmb(s)
            except Exception:
                LOG.exception("SSMB send failed")
                self.counters["ssmb_send_failed"] += 1
        for m in out.csmb:
            try:
                self.send_csmb(m)
            except Exception:
                LOG.exception("CSMB send failed")
                self.counters["csmb_send_failed"] += 1

    def attach(self, dp: Any) -> None:
        """A switch completed its handshake."""
        with self.lock:
            if self.datapath is not None and self.datapath is not dp:
                self.counters["switch_replaced"] += 1
            self.datapath = dp
            self._stats_requests.clear()
            self._stats_parts.clear()
        self.run(lambda e, now: e.switch_connected(now))

    def detach(self, dp: Any) -> None:
        """A switch connection closed."""
        with self.lock:
            if dp is not self.datapath:
                return
            self.datapath = None
        self.run(lambda e, now: e.switch_disconnected(now))

    def stats_part(self, xid: int, entries: list[FlowEntryStats], more: bool) -> None:
        """One part of a multipart flow-stats reply; the engine sees the whole reply at once."""
        with self.lock:
            request = self._stats_requests.get(xid)
            if request is None:
                self.counters["stats_reply_unexpected"] += 1
                return
            self._stats_parts.setdefault(xid, []).extend(entries)
            if more:
                return
            del self._stats_requests[xid]
            parts = self._stats_parts.pop(xid)
        cookie, mask = request
        self.run(lambda e, now: e.flow_stats_reply(cookie, mask, parts, now))

    def snapshot(self, fn: Callable[[DfsEngine], Any]) -> Any:
        """Read engine state under the lock (for the status endpoint)."""
        with self.lock:
            return fn(self.engine)


def _entry(stats: Any) -> FlowEntryStats:
    return FlowEntryStats(
        stats.cookie, dict(stats.match.items()), stats.packet_count, stats.byte_count, stats.priority
    )


class DfsApp(app_manager.OSKenApp):  # type: ignore[misc]
    """The DFS's OpenFlow 1.3 controller application (one switch)."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    runtime: DfsRuntime | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if DfsApp.runtime is None:
            raise RuntimeError("DfsApp.runtime must be set before os-ken starts the app")
        self.rt: DfsRuntime = DfsApp.runtime

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)  # type: ignore[untyped-decorator]
    def _features(self, ev: Any) -> None:
        dp = ev.msg.datapath
        LOG.info("switch %016x connected", dp.id)
        self.rt.attach(dp)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)  # type: ignore[untyped-decorator]
    def _dead(self, ev: Any) -> None:
        LOG.info("switch connection closed")
        self.rt.detach(ev.datapath)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def _packet_in(self, ev: Any) -> None:
        msg = ev.msg
        in_port = msg.match.get("in_port", 0)
        data = bytes(msg.data)
        self.rt.run(lambda e, now: e.packet_in(in_port, data, now))

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def _flow_removed(self, ev: Any) -> None:
        msg = ev.msg
        entry, reason = _entry(msg), msg.reason
        self.rt.run(lambda e, now: e.flow_removed(entry, reason, now))

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def _flow_stats(self, ev: Any) -> None:
        msg = ev.msg
        more = bool(msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE)
        self.rt.stats_part(msg.xid, [_entry(s) for s in msg.body], more)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])  # type: ignore[untyped-decorator]
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        LOG.warning("OpenFlow error type=%d code=%d", msg.type, msg.code)
        err_type, code, data = msg.type, msg.code, bytes(msg.data or b"")
        self.rt.run(lambda e, now: e.openflow_error(err_type, code, data, now))
