"""The CS side of one CSMB (TCP) conversation with a DFS, without the socket.

Sequence (PROTOCOL.md, "Who connects, and in what order")::

    DFS -> HELLO            CS -> ACK (or ACK VERS_NEW/VERS_OBSOLETE), then its own HELLO
    DFS -> ACK              CS -> RESET, ADD_VS x N   (session established; DFS registered)
                            CS -> SSMB RESET (UDP, a DFS never seen before)
    DFS -> ACK (of that SSMB RESET)
    ...                     CS -> ADD_VS / DELETE_VS as the configuration or a DFS_ASSIST pool changes
    DFS -> QUERY_VS         CS -> VS_LIST (all, or those matching the filter's address/port/proto)
    DFS -> STATUS           CS -> STATUS (0 healthy; bit 0 flow table full; bit 1 a VS has no server)
    DFS -> RESET            CS -> RESET, ADD_VS x N  (the DFS lost its VSs: bring it back in line)

Version negotiation is :class:`slbproto.hello.HelloNegotiator`'s. Two ways to drive it: the daemon hands
``session.negotiator`` to :class:`slbproto.transport.CsmbConnection`, which consumes HELLO/ACK, stamps
serials, seals HELLO when authenticating, and calls :meth:`DfsSession.mark_established`; or, without such a
connection, :meth:`DfsSession.on_message` runs HELLO/ACK itself. Either way the returned messages carry no
serials: whoever writes them to the stream stamps them.

The DFS acknowledges the SSMB RESET sent to it on first contact with an ACK on this stream; that ACK
is counted as ``reset_acked``. Any other ACK outside HELLO is counted as ``unexpected_ack``.

Anything the DFS should not send (ADD_VS, DELETE_VS) is answered with ACK NOT_SUPPORTED and counted;
configuration requests before the session is established are counted and ignored, and too many refused
HELLOs close the connection.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from slbcore.cs.engine import ControlSegment, SsmbOut, VsChange
from slbcore.cs.flows import Endpoint
from slbproto import csmb, ssmb
from slbproto.constants import CsmbError, VsFlag
from slbproto.hello import HelloNegotiator

__all__ = [
    "MAX_REFUSED_HELLOS",
    "STATUS_FLOW_TABLE_FULL",
    "STATUS_VS_UNAVAILABLE",
    "DfsSession",
    "SessionOutput",
    "SessionState",
]

MAX_REFUSED_HELLOS = 4
STATUS_FLOW_TABLE_FULL = 1 << 0
STATUS_VS_UNAVAILABLE = 1 << 1


class SessionState(enum.StrEnum):
    """Where the conversation is."""

    WAIT_HELLO = "wait_hello"  # connected, the DFS has not said HELLO yet
    WAIT_ACK = "wait_ack"  # we accepted its HELLO and sent ours
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(slots=True)
class SessionOutput:
    """What one input produced: CSMB messages for this DFS, SSMB messages, and whether to close."""

    csmb: list[Any] = field(default_factory=list)
    ssmb: list[SsmbOut] = field(default_factory=list)
    close: bool = False
    reason: str = ""


class DfsSession:
    """One DFS's CSMB session with the CS."""

    def __init__(
        self,
        cs: ControlSegment,
        peer: Endpoint,
        local_ssmb_ip: str,
        ssmb_port: int,
        standby_ip: str | None = None,
        auth_key: bytes | None = None,
    ) -> None:
        flags = VsFlag.APP_PROXY | (VsFlag.REDUNDANT if standby_ip else 0)
        self.cs = cs
        self.peer = peer
        self.negotiator = HelloNegotiator(
            ssmb_active_ipaddr=local_ssmb_ip,
            ssmb_port=ssmb_port,
            ssmb_standby_ipaddr=standby_ip or "0.0.0.0",
            flags=int(flags),
            auth_key=auth_key,
        )
        self.state = SessionState.WAIT_HELLO
        self.counters: Counter[str] = Counter()
        self.dfs_endpoint: Endpoint | None = None
        # SSMB RESETs sent to this DFS whose CSMB ACK has not arrived (an ACK then is expected).
        self.resets_awaiting_ack = 0

    # ------------------------------------------------------------------ output helpers

    def _count(self, msg: Any) -> Any:
        self.counters[f"tx_{type(msg).__name__.lower()}"] += 1
        return msg

    def _emit(self, out: SessionOutput, messages: list[Any]) -> None:
        out.csmb.extend(self._count(m) for m in messages)

    def _full_sync(self, out: SessionOutput) -> None:
        self._emit(out, [csmb.Reset(), *(csmb.AddVs(d) for d in self.cs.definitions())])

    # ------------------------------------------------------------------ input

    def on_message(self, msg: Any, now: float) -> SessionOutput:
        """Handle one decoded CSMB message from the DFS."""
        out = SessionOutput()
        if self.state is SessionState.CLOSED:
            return out
        self.counters[f"rx_{type(msg).__name__.lower()}"] += 1
        if isinstance(msg, csmb.Hello):
            self._on_hello(msg, now, out)
        elif isinstance(msg, csmb.Ack):
            self._on_ack(msg, now, out)
        elif self.state is not SessionState.ESTABLISHED:
            self.counters["before_established"] += 1
        elif isinstance(msg, csmb.QueryVs):
            servers = self.cs.definitions()
            if msg.vs is not None:
                servers = [d for d in servers if d.key == msg.vs.key]
            self._emit(out, [csmb.VsList(tuple(servers))])
        elif isinstance(msg, csmb.Status):
            self._emit(out, [csmb.Status(self.status_word())])
        elif isinstance(msg, csmb.Reset):
            self._full_sync(out)
        elif isinstance(msg, csmb.VsList):
            self.counters["unsolicited_vs_list"] += 1
        else:
            self.counters["not_supported"] += 1
            self._emit(out, [csmb.Ack(error=int(CsmbError.NOT_SUPPORTED))])
        return out

    def _on_hello(self, hello: Any, now: float, out: SessionOutput) -> None:
        replies = self.negotiator.on_hello(hello)
        self._emit(out, replies)
        if any(getattr(r, "error", 0) != CsmbError.OK for r in replies):
            self.counters["hello_refused"] += 1
            if self.counters["hello_refused"] >= MAX_REFUSED_HELLOS:
                self._close(out, "too many refused HELLOs")
            return
        endpoint = self.negotiator.peer_ssmb_endpoint
        if self.state is SessionState.WAIT_HELLO:
            self.state = SessionState.WAIT_ACK
            self._emit(out, [self.negotiator.start()])
        elif (
            self.state is SessionState.ESTABLISHED and endpoint is not None and endpoint != self.dfs_endpoint
        ):
            # A repeated HELLO that moves the DFS's SSMB endpoint: follow it.
            if self.dfs_endpoint is not None:
                self.cs.unregister_dfs(self.dfs_endpoint)
            self._register(now, out)

    def _on_ack(self, ack: Any, now: float, out: SessionOutput) -> None:
        if not self.negotiator.expecting_ack:
            if self.state is SessionState.ESTABLISHED and self.resets_awaiting_ack > 0:
                # The DFS answers an SSMB RESET with an ACK on this stream (PROTOCOL.md, table I).
                self.resets_awaiting_ack -= 1
                self.counters["reset_acked" if ack.error == CsmbError.OK else "reset_ack_error"] += 1
                return
            self.counters["unexpected_ack"] += 1
            return
        self._emit(out, self.negotiator.on_ack(ack))
        if self.negotiator.failed:
            self._close(out, self.negotiator.failure_reason or "HELLO refused")
            return
        if self.negotiator.established and self.state is not SessionState.ESTABLISHED:
            merged = self.mark_established(now)
            out.csmb.extend(merged.csmb)
            out.ssmb.extend(merged.ssmb)

    def mark_established(self, now: float) -> SessionOutput:
        """HELLO succeeded both ways: RESET, one ADD_VS per virtual server, and register the DFS."""
        out = SessionOutput()
        if self.state in (SessionState.ESTABLISHED, SessionState.CLOSED) or not self.negotiator.established:
            return out
        self.state = SessionState.ESTABLISHED
        self._full_sync(out)
        self._register(now, out)
        return out

    def _register(self, now: float, out: SessionOutput) -> None:
        endpoint = self.negotiator.peer_ssmb_endpoint
        if endpoint is None:
            return
        self.dfs_endpoint = endpoint
        sent = self.cs.register_dfs(endpoint, now)
        self.resets_awaiting_ack += sum(isinstance(o.message, ssmb.Reset) for o in sent)
        out.ssmb.extend(sent)

    def _close(self, out: SessionOutput, reason: str) -> None:
        out.close = True
        out.reason = reason
        self.closed()

    # ------------------------------------------------------------------ events from the CS

    def announce(self, changes: list[VsChange]) -> list[Any]:
        """ADD_VS/DELETE_VS for configuration changes; nothing before the session is established."""
        if self.state is not SessionState.ESTABLISHED:
            return []
        msgs = [csmb.AddVs(c.definition) if c.kind == "add" else csmb.DeleteVs(c.definition) for c in changes]
        return [self._count(m) for m in msgs]

    def reset_ack(self) -> list[Any]:
        """ACK answering the DFS's SSMB RESET."""
        if self.state is not SessionState.ESTABLISHED:
            return []
        return [self._count(csmb.Ack())]

    def status_word(self) -> int:
        """The STATUS word: 0 when healthy."""
        word = 0
        if self.cs.flows.full:
            word |= STATUS_FLOW_TABLE_FULL
        if any(not rt.config.maintenance and not rt.candidates() for rt in self.cs.vs.values()):
            word |= STATUS_VS_UNAVAILABLE
        return word

    def closed(self) -> None:
        """The connection is gone: the DFS is no longer reachable for REAP until it says HELLO again."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        if self.dfs_endpoint is not None:
            self.cs.unregister_dfs(self.dfs_endpoint)

    @property
    def established(self) -> bool:
        """True once HELLO/ACK both ways succeeded."""
        return self.state is SessionState.ESTABLISHED
