"""os-ken app: feeds switch events into the DFS engine and sends what it returns.

All engine calls go through :class:`DfsRuntime`, which serialises them under one lock (os-ken
handlers, the bus threads and the timer thread all call in) and delivers the engine's output:
OpenFlow to the connected datapath, SSMB and CSMB messages to the daemon's senders.

Three choices keep new-flow setup cheap:

* the OpenFlow messages of one event (typically the two flow-mods and the packet-out releasing
  the held packet) are serialised together and leave as one buffer: one socket write, not one
  queue hand-off to os-ken's send thread per message;
* on a switch connection the daemon accepted itself (an :class:`OpenFlowStream`) that buffer
  is written at once by the thread that handled the event, without any hand-off, unless the
  socket is full (then a writer thread sends it, in order, so no caller ever blocks);
* the switch's messages are handled in the connection's own receive thread (the handlers are
  registered with os-ken's OpenFlow service, not as observers): a packet-in reaches the engine
  without a trip through the application's event queue and thread, and every message of one
  switch connection is seen in order. Only the connection-closed event still comes that way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
    set_ev_handler,
)
from os_ken.ofproto import ofproto_v1_3

from slbcore.dfs.engine import DfsEngine, FlowEntryStats, Output, SsmbOut

LOG = logging.getLogger("dfs.controller")


class OpenFlowStream(socket.socket):
    """A switch connection the DFS writes to from any thread without ever blocking.

    :meth:`write_nowait` writes at once when the socket has room (the common case: no hand-off
    to another thread) and otherwise appends to an ordered backlog that a writer thread drains.
    A write never blocks its caller: the threads that write also read the switch's messages
    (or wait for the lock of one that does), and OVS stops reading from a controller that leaves
    100 of its messages unread, so a blocking write could wait on itself. ``sendall`` (os-ken's
    send thread: HELLO, echo requests) goes through the same backlog, so whole messages never
    interleave. A backlog beyond :attr:`MAX_BACKLOG` bytes means the switch stopped reading; the
    write fails and the caller closes the connection. os-ken turns on TCP_NODELAY for every
    connection; a unix stream has no Nagle delay, so TCP-level options are ignored there.
    """

    MAX_BACKLOG = 32 << 20

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition()
        self._backlog = bytearray()
        self._flushing = False
        self._closing = False
        self._error: OSError | None = None
        self._writer = threading.Thread(target=self._flush_loop, name="openflow-writer", daemon=True)
        self._writer.start()

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        """Set a socket option (TCP options are ignored on a unix stream)."""
        if level == socket.IPPROTO_TCP and self.family == socket.AF_UNIX:
            return
        super().setsockopt(level, option, value, *rest)

    def _try_send(self, data: memoryview) -> int:
        try:
            if self.gettimeout() is None:
                return super().send(data, socket.MSG_DONTWAIT)
            # A socket with a timeout has a non-blocking descriptor; os.write skips the
            # wait-until-writable that socket.send does first.
            return os.write(self.fileno(), data)
        except BlockingIOError:
            return 0

    def write_nowait(self, data: bytes) -> None:
        """Queue ``data`` after everything written before it; raises ``OSError`` if the stream failed."""
        view = memoryview(data)
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._closing:
                raise BrokenPipeError("the switch connection is closed")
            if not self._backlog and not self._flushing:
                view = view[self._try_send(view) :]
                if not view:
                    return
            if len(self._backlog) + len(view) > self.MAX_BACKLOG:
                self._error = BlockingIOError("the switch has not read its OpenFlow messages")
                raise self._error
            self._backlog += view
            self._cond.notify_all()

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Write all of ``data`` in order with every other write; waits until it left."""
        self.write_nowait(bytes(data))
        deadline = None if self.gettimeout() is None else time.monotonic() + (self.gettimeout() or 0)
        with self._cond:
            while (self._backlog or self._flushing) and self._error is None and not self._closing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("timed out writing to the switch")
                self._cond.wait(left)
            if self._error is not None:
                raise self._error

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._closing:
                    self._cond.wait()
                if not self._backlog:
                    return
                chunk = bytes(self._backlog)
                self._backlog.clear()
                self._flushing = True
            try:
                super().sendall(chunk)
            except OSError as exc:
                with self._cond:
                    self._error = exc
                    self._flushing = False
                    self._backlog.clear()
                    self._cond.notify_all()
                with contextlib.suppress(OSError):
                    self.shutdown(socket.SHUT_RDWR)
                return
            with self._cond:
                self._flushing = False
                self._cond.notify_all()

    def close(self) -> None:
        """Close the connection and stop the writer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        super().close()


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
        if out.openflow:
            self._send_openflow(out.openflow)
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

    def _send_openflow(self, msgs: list[Any]) -> None:
        """Serialise the messages of one event and queue them as one write."""
        dp = self.datapath
        if dp is None:
            self.counters["openflow_dropped_no_switch"] += len(msgs)
            return
        bufs: list[bytes] = []
        stats_cls = dp.ofproto_parser.OFPFlowStatsRequest
        for msg in msgs:
            msg.datapath = dp
            try:
                if msg.xid is None:
                    dp.set_xid(msg)
                msg.serialize()
            except Exception:
                LOG.exception("serialising %s failed", type(msg).__name__)
                self.counters["openflow_send_failed"] += 1
                continue
            bufs.append(bytes(msg.buf))
            if isinstance(msg, stats_cls):
                self._stats_requests[msg.xid] = (msg.cookie, msg.cookie_mask)
        if not bufs:
            return
        data = b"".join(bufs)
        sock = getattr(dp, "socket", None)
        if isinstance(sock, OpenFlowStream):
            sent = self._write(sock, data)
        else:
            try:
                sent = dp.send(data)
            except Exception:
                LOG.exception("sending %d OpenFlow messages failed", len(bufs))
                sent = False
        if sent:
            self.counters["openflow_sent"] += len(bufs)
        else:
            self.counters["openflow_send_failed"] += len(bufs)

    def _write(self, sock: OpenFlowStream, data: bytes) -> bool:
        try:
            sock.write_nowait(data)
            return True
        except OSError as exc:
            # The stream failed or the switch stopped reading: close it, so os-ken reports the
            # switch gone and the switch reconnects.
            LOG.warning("OpenFlow write failed (%s); closing the switch connection", exc)
            self.counters["openflow_write_errors"] += 1
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False

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


# The runtime attaches a switch as soon as its features arrive, while os-ken still waits for the
# port description (CONFIG); what the DFS sent then (the audit's flow-stats request, say) may be
# answered before os-ken moves the connection to MAIN, so both states deliver.
ATTACHED = [CONFIG_DISPATCHER, MAIN_DISPATCHER]


def _guarded(handler: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    # These handlers run in the switch connection's receive thread, where an exception would
    # close the connection: a malformed message must cost that message only.
    @functools.wraps(handler)
    def run(self: Any, ev: Any) -> None:
        try:
            handler(self, ev)
        except Exception:
            LOG.exception("handling %s failed", type(ev).__name__)
            self.rt.counters["handler_exceptions"] += 1

    return run


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

    def start(self) -> None:
        """Register the switch-message handlers with os-ken's OpenFlow service (see module doc)."""
        super().start()
        brick = app_manager.lookup_service_brick("ofp_event")
        if brick is None:
            raise RuntimeError("os-ken's OpenFlow service (ofp_event) is not loaded")
        for handler in (self._features, self._packet_in, self._flow_removed, self._flow_stats, self._error):
            for ev_cls in handler.callers:
                brick.register_handler(ev_cls, handler)

    @set_ev_handler(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)  # type: ignore[untyped-decorator]
    @_guarded
    def _features(self, ev: Any) -> None:
        dp = ev.msg.datapath
        LOG.info("switch %016x connected", dp.id)
        self.rt.attach(dp)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)  # type: ignore[untyped-decorator]
    def _dead(self, ev: Any) -> None:
        LOG.info("switch connection closed")
        self.rt.detach(ev.datapath)

    @set_ev_handler(ofp_event.EventOFPPacketIn, ATTACHED)  # type: ignore[untyped-decorator]
    @_guarded
    def _packet_in(self, ev: Any) -> None:
        msg = ev.msg
        in_port = msg.match.get("in_port", 0)
        data = bytes(msg.data)
        self.rt.run(lambda e, now: e.packet_in(in_port, data, now))

    @set_ev_handler(ofp_event.EventOFPFlowRemoved, ATTACHED)  # type: ignore[untyped-decorator]
    @_guarded
    def _flow_removed(self, ev: Any) -> None:
        msg = ev.msg
        entry, reason = _entry(msg), msg.reason
        self.rt.run(lambda e, now: e.flow_removed(entry, reason, now))

    @set_ev_handler(ofp_event.EventOFPFlowStatsReply, ATTACHED)  # type: ignore[untyped-decorator]
    @_guarded
    def _flow_stats(self, ev: Any) -> None:
        msg = ev.msg
        more = bool(msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE)
        self.rt.stats_part(msg.xid, [_entry(s) for s in msg.body], more)

    @set_ev_handler(ofp_event.EventOFPErrorMsg, ATTACHED)  # type: ignore[untyped-decorator]
    @_guarded
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        LOG.warning("OpenFlow error type=%d code=%d", msg.type, msg.code)
        err_type, code, data = msg.type, msg.code, bytes(msg.data or b"")
        self.rt.run(lambda e, now: e.openflow_error(err_type, code, data, now))
