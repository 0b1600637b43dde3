"""Thin asyncio shims for both buses; the only module of ``slbproto`` that does I/O.

- :class:`SsmbEndpoint` is a UDP :class:`asyncio.DatagramProtocol` around
  :class:`~slbproto.peer.SsmbReceiver` / :class:`~slbproto.peer.SsmbSender` (and optionally a
  :class:`~slbproto.peer.QueryRetransmitter`), with one timer driving their ``poll``.
- :class:`CsmbConnection` is a TCP :class:`asyncio.Protocol` around
  :class:`~slbproto.csmb.StreamDecoder`; it stamps serials on what it sends, can run the HELLO
  negotiation, and closes the connection on any protocol error (after answering
  ACK(BAD_MESSAGE)), because a CSMB stream cannot be resynchronised.

Callbacks receive decoded messages. An exception raised by a callback is logged and counted,
never allowed to close the socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from slbproto.constants import CsmbError
from slbproto.csmb import Ack, CsmbMessage, Hello, StreamDecoder, encode_message
from slbproto.errors import ProtocolError
from slbproto.hello import HelloNegotiator, HelloState
from slbproto.peer import Address, Datagram, QueryRetransmitter, SerialCounter, SsmbReceiver, SsmbSender
from slbproto.ssmb import AppQuery, Query, Reply, SsmbMessage

log = logging.getLogger(__name__)

SsmbHandler = Callable[[SsmbMessage, Address], None]
CsmbHandler = Callable[["CsmbConnection", CsmbMessage], None]


class SsmbEndpoint(asyncio.DatagramProtocol):
    """One UDP socket speaking SSMB: decodes, de-duplicates, batches, retransmits QUERY."""

    def __init__(
        self,
        on_message: SsmbHandler,
        *,
        receiver: SsmbReceiver | None = None,
        sender: SsmbSender | None = None,
        retransmitter: QueryRetransmitter | None = None,
        on_given_up: Callable[[int], None] | None = None,
    ) -> None:
        self.on_message = on_message
        self.receiver = receiver or SsmbReceiver()
        self.sender = sender or SsmbSender()
        self.retransmitter = retransmitter
        if retransmitter is not None and retransmitter.restamp is None:
            # Resent QUERYs need fresh serials or the CS drops them as duplicates.
            retransmitter.restamp = self.sender.restamp
        self.on_given_up = on_given_up
        self.transport: asyncio.DatagramTransport | None = None
        self.counters: dict[str, int] = dict.fromkeys(("callback_error", "socket_error", "sent"), 0)
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def local_address(self) -> Address:
        """(host, port) this endpoint is bound to."""
        assert self.transport is not None, "endpoint not connected"
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # The selector loop's UDP transport does not subclass DatagramTransport, so cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Decode, drop duplicates and garbage (counted in receiver.counters), deliver the rest."""
        sender: Address = (str(addr[0]), int(addr[1]))
        for msg in self.receiver.receive(data, sender, self._loop.time()):
            if self.retransmitter is not None and isinstance(msg, Reply):
                self.retransmitter.answered(msg.flow_id)
            try:
                self.on_message(msg, sender)
            except Exception:
                self.counters["callback_error"] += 1
                log.exception("SSMB handler failed on %r from %s", msg, sender)
        self._reschedule()

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (port unreachable) and the like: count, keep the socket."""
        self.counters["socket_error"] += 1
        log.debug("SSMB socket error: %s", exc)

    def send(self, msg: SsmbMessage, dest: Address) -> None:
        """Send msg to dest now or in its batch; QUERY/APP_QUERY are tracked for retransmission."""
        now = self._loop.time()
        datagrams = self.sender.send(msg, dest, now)
        if self.retransmitter is not None and isinstance(msg, (Query, AppQuery)):
            for data, to in datagrams:
                if to == dest and data[4] == msg.MSG_TYPE:
                    self.retransmitter.track(msg.flow_id, data, dest, now)
        self._write(datagrams)
        self._reschedule()

    def flush(self) -> None:
        """Send every waiting batch now."""
        self._write(self.sender.flush())

    def close(self) -> None:
        """Flush batches, stop the timer and close the socket."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _write(self, datagrams: list[Datagram]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data, dest in datagrams:
            transport.sendto(data, dest)
            self.counters["sent"] += 1

    def _deadline(self) -> float | None:
        deadlines = [self.sender.next_deadline()]
        if self.retransmitter is not None:
            deadlines.append(self.retransmitter.next_deadline())
        pending = [d for d in deadlines if d is not None]
        return min(pending) if pending else None

    def _reschedule(self) -> None:
        deadline = self._deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() <= deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self.transport is not None and not self.transport.is_closing():
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        self._write(self.sender.poll(now))
        if self.retransmitter is not None:
            resends, given_up = self.retransmitter.poll(now)
            self._write(resends)
            for flow_id in given_up:
                if self.on_given_up is not None:
                    try:
                        self.on_given_up(flow_id)
                    except Exception:
                        self.counters["callback_error"] += 1
                        log.exception("SSMB give-up handler failed for flow %d", flow_id)
        self._reschedule()


async def open_ssmb_endpoint(local_addr: Address, on_message: SsmbHandler, **kwargs: Any) -> SsmbEndpoint:
    """Bind a UDP socket at local_addr (port 0: ephemeral) and return its SsmbEndpoint."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: SsmbEndpoint(on_message, **kwargs), local_addr=local_addr
    )
    return protocol


class CsmbConnection(asyncio.Protocol):
    """One CSMB TCP connection.

    With a ``negotiator``, the connection runs HELLO itself: it sends our HELLO on connect when
    ``initiate`` is true (the DFS), or right after accepting the peer's HELLO (the CS); HELLO
    messages and the ACK answering ours are consumed here, and ``on_established`` fires once.
    Every other message goes to ``on_message``.
    """

    def __init__(
        self,
        on_message: CsmbHandler,
        *,
        negotiator: HelloNegotiator | None = None,
        initiate: bool = False,
        on_established: Callable[[CsmbConnection], None] | None = None,
        on_close: Callable[[CsmbConnection, BaseException | None], None] | None = None,
    ) -> None:
        self.on_message = on_message
        self.negotiator = negotiator
        self.initiate = initiate
        self.on_established = on_established
        self.on_close = on_close
        self.decoder = StreamDecoder()
        self.serials = SerialCounter()
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None
        self.close_reason: BaseException | None = None
        self.counters: dict[str, int] = dict.fromkeys(("received", "sent", "callback_error"), 0)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._established_fired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the initiator sends its HELLO."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        if self.negotiator is not None and self.initiate:
            self.send(self.negotiator.start())

    def data_received(self, data: bytes) -> None:
        """Decode and dispatch; a protocol error answers ACK(BAD_MESSAGE) and closes."""
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            self.counters[exc.code] = self.counters.get(exc.code, 0) + 1
            log.warning("CSMB from %s: %s; closing", self.peer, exc)
            self.send(Ack(error=CsmbError.BAD_MESSAGE))
            self.close(exc)
            return
        for msg in messages:
            self.counters["received"] += 1
            if self.transport is None or self.transport.is_closing():
                return
            if not self._negotiate(msg):
                self._deliver(msg)

    def _negotiate(self, msg: CsmbMessage) -> bool:
        """Run HELLO if configured; True when msg was consumed."""
        negotiator = self.negotiator
        if negotiator is None:
            return False
        if isinstance(msg, Hello):
            replies = negotiator.on_hello(msg)
            for reply in replies:
                self.send(reply)
            if replies and replies[0].error == CsmbError.AUTH_FAILED:
                self.close(negotiator.last_rejection)
                return True
            if negotiator.peer_hello is msg and negotiator.state is HelloState.IDLE:
                self.send(negotiator.start())
        elif isinstance(msg, Ack) and negotiator.expecting_ack:
            for retry in negotiator.on_ack(msg):
                self.send(retry)
            if negotiator.failed:
                log.warning("CSMB HELLO with %s failed: %s", self.peer, negotiator.failure_reason)
                self.close(ConnectionError(negotiator.failure_reason))
                return True
        else:
            return False
        if negotiator.established and not self._established_fired:
            self._established_fired = True
            if self.on_established is not None:
                try:
                    self.on_established(self)
                except Exception:
                    self.counters["callback_error"] += 1
                    log.exception("CSMB on_established failed")
        return True

    def _deliver(self, msg: CsmbMessage) -> None:
        try:
            self.on_message(self, msg)
        except Exception:
            self.counters["callback_error"] += 1
            log.exception("CSMB handler failed on %r from %s", msg, self.peer)

    def send(self, msg: CsmbMessage) -> None:
        """Stamp serials (and authenticate our HELLO) and write msg."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        stamped = self.serials.stamp(msg)
        if isinstance(stamped, Hello) and self.negotiator is not None:
            stamped = self.negotiator.seal(stamped)
        transport.write(encode_message(stamped))
        self.counters["sent"] += 1

    def close(self, reason: BaseException | None = None) -> None:
        """Close the connection (after writing what is buffered)."""
        if reason is not None and self.close_reason is None:
            self.close_reason = reason
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve ``closed`` and tell the owner."""
        reason = self.close_reason or exc
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            try:
                self.on_close(self, reason)
            except Exception:
                log.exception("CSMB on_close failed")


async def open_csmb_connection(host: str, port: int, factory: Callable[[], CsmbConnection]) -> CsmbConnection:
    """Connect to a CSMB listener; factory builds the protocol object."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(factory, host, port)
    return protocol


async def start_csmb_server(host: str, port: int, factory: Callable[[], CsmbConnection]) -> asyncio.Server:
    """Listen for CSMB connections (port 0: ephemeral); one factory() per connection."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host, port)
