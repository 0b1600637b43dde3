"""Pure SSMB bookkeeping: serials, duplicate and gap detection, batching, retransmission.

Nothing here owns a socket or reads a clock: every call takes ``now`` (seconds, any monotonic
origin) and returns the datagrams to send as ``(bytes, address)`` pairs. The asyncio shim in
:mod:`slbproto.transport` feeds these objects; tests drive them with plain numbers.

Choices made here where the protocol is silent (also in ``docs/PROTOCOL.md``):

- Serials are counted per destination: ``serial_global`` numbers the messages this sender sent
  to *that* receiver, so a receiver (and a standby CS that only gets state-shared copies) sees a
  gapless sequence and its gap counter means "lost datagrams".
- A retransmitted QUERY gets fresh serials (the receiver would otherwise drop it as a duplicate
  of a copy it did receive when only the REPLY was lost); it keeps its flow_id, and the CS
  answers a QUERY for a flow_id it has already decided by repeating its REPLY.
- Duplicate detection keeps, per sender, the highest serial and a bitmap of the last ``window``
  serials (wrap-aware, RFC 1982 style). A serial older than the window is taken as a sender
  restart: the sender's state is reset and the message accepted (counted as ``restart``).
  A sender that restarts its serials is otherwise seen through its new HELLO on the CSMB; call
  :meth:`SsmbReceiver.forget` then.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

from slbproto.constants import (
    DEFAULT_BATCH_DELAY,
    DEFAULT_QUERY_INTERVAL,
    DEFAULT_QUERY_TRIES,
    DEFAULT_SSMB_MTU_PAYLOAD,
    MAX_SSMB_COUNT,
    SERIAL_MODULUS,
    SSMB_SEMANTICS,
    SsmbSemantics,
    SsmbType,
)
from slbproto.csmb import CsmbMessage
from slbproto.errors import ProtocolError, UsageError
from slbproto.ssmb import (
    FLOW_LAYOUT,
    BytesLike,
    SsmbMessage,
    decode_datagram,
    encode_with_serials,
)

Address = tuple[str, int]
Datagram = tuple[bytes, Address]

_SERIAL_MASK: Final = SERIAL_MODULUS - 1
_HALF: Final = SERIAL_MODULUS // 2

M = TypeVar("M", bound=SsmbMessage | CsmbMessage)


class SerialCounter:
    """The global and per-type 16-bit serials of one sender towards one receiver."""

    def __init__(self, start: int = 0) -> None:
        if not 0 <= start <= _SERIAL_MASK:
            raise UsageError(f"serial start {start} outside 0..{_SERIAL_MASK}")
        self._start = start
        self._global = start
        self._by_type: dict[int, int] = {}

    def next(self, msg_type: int) -> tuple[int, int]:
        """(serial_global, serial_bytype) for the next message of msg_type; both wrap."""
        g = self._global
        self._global = (g + 1) & _SERIAL_MASK
        t = self._by_type.get(msg_type, self._start)
        self._by_type[msg_type] = (t + 1) & _SERIAL_MASK
        return g, t

    def peek(self, msg_type: int) -> tuple[int, int]:
        """The serials next(msg_type) would return, without consuming them."""
        return self._global, self._by_type.get(msg_type, self._start)

    def stamp(self, msg: M) -> M:
        """A copy of msg carrying the next serials."""
        g, t = self.next(int(msg.MSG_TYPE))
        return cast(M, dataclasses.replace(cast(Any, msg), serial_global=g, serial_bytype=t))


@dataclasses.dataclass(slots=True)
class _SenderWindow:
    highest: int
    seen: int  # bit i set: serial (highest - i) was received
    last_seen: float


class SsmbReceiver:
    """Decodes datagrams, drops duplicates, counts gaps and errors; never raises on bad bytes.

    ``counters`` maps a stable key to a count: ``datagrams``, ``messages`` (accepted),
    ``dropped`` (whole datagrams rejected), ``duplicate``, ``gap`` (serials skipped),
    ``late`` (arrived after a later serial), ``restart``, ``evicted``, and one key per
    :class:`ProtocolError` code (``truncated``, ``unknown_type``, ...). A rejected datagram
    changes nothing but the counters.
    """

    def __init__(self, *, window: int = 1024, max_senders: int = 4096) -> None:
        if not 1 <= window < _HALF:
            raise UsageError(f"window must be 1..{_HALF - 1}")
        if max_senders < 1:
            raise UsageError("max_senders must be positive")
        self.window = window
        self.max_senders = max_senders
        self._full = (1 << window) - 1
        self._senders: dict[Address, _SenderWindow] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("datagrams", "messages", "dropped", "duplicate", "gap", "late", "restart", "evicted"),
            0,
        )
        self.last_error: ProtocolError | None = None

    def receive(self, data: BytesLike, sender: Address, now: float) -> list[SsmbMessage]:
        """Messages of one datagram that are new from this sender; [] if it was bad."""
        counters = self.counters
        counters["datagrams"] += 1
        try:
            messages = decode_datagram(data)
        except ProtocolError as exc:
            counters["dropped"] += 1
            counters[exc.code] = counters.get(exc.code, 0) + 1
            self.last_error = exc
            return []
        accepted = [m for m in messages if self._accept(sender, m.serial_global, now)]
        counters["messages"] += len(accepted)
        return accepted

    def forget(self, sender: Address) -> None:
        """Drop the duplicate-detection state of sender (it restarted, e.g. re-sent HELLO)."""
        self._senders.pop(sender, None)

    @property
    def lost_estimate(self) -> int:
        """Serials skipped and never seen since (gap minus late arrivals)."""
        return self.counters["gap"] - self.counters["late"]

    def sender_state(self, sender: Address) -> tuple[int, int] | None:
        """(highest serial, seen bitmap) for sender, or None; for tests and diagnostics."""
        window = self._senders.get(sender)
        return None if window is None else (window.highest, window.seen)

    def _accept(self, sender: Address, serial: int, now: float) -> bool:
        state = self._senders.get(sender)
        if state is None:
            if len(self._senders) >= self.max_senders:
                oldest = min(self._senders, key=lambda a: self._senders[a].last_seen)
                del self._senders[oldest]
                self.counters["evicted"] += 1
            self._senders[sender] = _SenderWindow(serial, 1, now)
            return True
        state.last_seen = now
        ahead = (serial - state.highest) & _SERIAL_MASK
        if ahead == 0:
            self.counters["duplicate"] += 1
            return False
        if ahead < _HALF:
            if ahead > 1:
                self.counters["gap"] += ahead - 1
            state.seen = ((state.seen << ahead) | 1) & self._full if ahead < self.window else 1
            state.highest = serial
            return True
        age = (state.highest - serial) & _SERIAL_MASK
        if age >= self.window:
            self.counters["restart"] += 1
            state.highest, state.seen = serial, 1
            return True
        bit = 1 << age
        if state.seen & bit:
            self.counters["duplicate"] += 1
            return False
        state.seen |= bit
        self.counters["late"] += 1
        return True


@dataclasses.dataclass(slots=True)
class _Batch:
    deadline: float
    items: list[bytes]  # each encoded with count 1; the count octet is set on emit
    size: int = 0


_SMALLEST_BATCHED: Final = FLOW_LAYOUT.size  # REAP (56) is smaller than STATS (60)


class SsmbSender:
    """Assigns serials, batches low-priority messages per destination, copies to a standby.

    ``send`` returns what must go out now; batched types (REAP, STATS) wait until their
    destination's batch is full (one MTU, 255 messages) or ``batch_delay`` has passed since the
    batch's first message. Drive ``poll(now)`` no later than ``next_deadline()``.
    """

    def __init__(
        self,
        *,
        mtu_payload: int = DEFAULT_SSMB_MTU_PAYLOAD,
        batch_delay: float = DEFAULT_BATCH_DELAY,
        standby: Address | None = None,
        semantics: Mapping[SsmbType, SsmbSemantics] = SSMB_SEMANTICS,
    ) -> None:
        if mtu_payload < _SMALLEST_BATCHED:
            raise UsageError(f"mtu_payload must be at least {_SMALLEST_BATCHED}")
        if batch_delay < 0:
            raise UsageError("batch_delay must not be negative")
        self.mtu_payload = mtu_payload
        self.batch_delay = batch_delay
        self.standby = standby
        self._batched = frozenset(int(t) for t, s in semantics.items() if s.batched)
        self._shared = frozenset(int(t) for t, s in semantics.items() if s.state_shared)
        self._serials: dict[Address, SerialCounter] = {}
        self._batches: dict[Address, _Batch] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("messages", "datagrams", "batched", "standby_copies"), 0
        )

    def serials(self, dest: Address) -> SerialCounter:
        """The serial counter towards dest (created on first use)."""
        counter = self._serials.get(dest)
        if counter is None:
            counter = self._serials[dest] = SerialCounter()
        return counter

    def send(self, msg: SsmbMessage, dest: Address, now: float) -> list[Datagram]:
        """Queue or encode msg for dest (and the standby if state-shared); datagrams due now."""
        out: list[Datagram] = []
        self._send_one(msg, dest, now, out)
        standby = self.standby
        if standby is not None and standby != dest and int(msg.MSG_TYPE) in self._shared:
            self.counters["standby_copies"] += 1
            self._send_one(msg, standby, now, out)
        return out

    def _send_one(self, msg: SsmbMessage, dest: Address, now: float, out: list[Datagram]) -> None:
        msg_type = int(msg.MSG_TYPE)
        counter = self.serials(dest)
        sg, sb = counter.peek(msg_type)
        # Encoding first validates: a bad message fails its own send() and consumes no serial.
        single = encode_with_serials(msg, 1, sg, sb)
        counter.next(msg_type)
        self.counters["messages"] += 1
        if msg_type not in self._batched:
            if dest in self._batches:
                # Emit the waiting batch first so the receiver sees serials in order.
                out.append(self._emit(dest))
            out.append((single, dest))
            self.counters["datagrams"] += 1
            return
        size = len(single)
        batch = self._batches.get(dest)
        if batch is not None and (batch.size + size > self.mtu_payload or len(batch.items) >= MAX_SSMB_COUNT):
            out.append(self._emit(dest))
            batch = None
        if batch is None:
            batch = self._batches[dest] = _Batch(now + self.batch_delay, [])
        batch.items.append(single)
        batch.size += size
        self.counters["batched"] += 1
        if (
            batch.size + _SMALLEST_BATCHED > self.mtu_payload
            or len(batch.items) >= MAX_SSMB_COUNT
            or self.batch_delay == 0
        ):
            out.append(self._emit(dest))

    def _emit(self, dest: Address) -> Datagram:
        batch = self._batches.pop(dest)
        count = len(batch.items)
        count_octet = bytes((count,))
        # Every message carries the datagram's count (octet 5 of each header).
        data = b"".join([m[:5] + count_octet + m[6:] for m in batch.items])
        self.counters["datagrams"] += 1
        return data, dest

    def poll(self, now: float) -> list[Datagram]:
        """Batches whose delay has expired."""
        due = [dest for dest, batch in self._batches.items() if batch.deadline <= now]
        return [self._emit(dest) for dest in due]

    def next_deadline(self) -> float | None:
        """When poll() next has something to do, or None."""
        if not self._batches:
            return None
        return min(batch.deadline for batch in self._batches.values())

    def flush(self) -> list[Datagram]:
        """Every waiting batch, now (before shutdown)."""
        return [self._emit(dest) for dest in list(self._batches)]

    def restamp(self, datagram: bytes, dest: Address) -> bytes:
        """A single-message datagram with fresh serials towards dest (for retransmission)."""
        if len(datagram) < 8 or datagram[5] != 1:
            raise UsageError("restamp takes a datagram holding exactly one message")
        sg, sb = self.serials(dest).next(datagram[4])
        return sg.to_bytes(2, "big") + sb.to_bytes(2, "big") + datagram[4:]


@dataclasses.dataclass(slots=True)
class _Pending:
    datagram: bytes
    dest: Address
    sent: int
    due: float
    generation: int


class QueryRetransmitter:
    """Resends unanswered QUERY/APP_QUERY datagrams a bounded number of times.

    ``track`` is called right after the first send. ``poll(now)`` returns the datagrams to send
    again and the flow ids given up after ``tries`` sends (the DFS then fails the flow closed).
    """

    def __init__(
        self,
        *,
        tries: int = DEFAULT_QUERY_TRIES,
        interval: float = DEFAULT_QUERY_INTERVAL,
        restamp: Callable[[bytes, Address], bytes] | None = None,
        max_pending: int = 65536,
    ) -> None:
        if tries < 1:
            raise UsageError("tries must be at least 1")
        if interval <= 0:
            raise UsageError("interval must be positive")
        self.tries = tries
        self.interval = interval
        self.max_pending = max_pending
        self.restamp = restamp
        self._pending: dict[int, _Pending] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._generation = 0
        self.counters: dict[str, int] = dict.fromkeys(
            ("tracked", "answered", "resent", "given_up", "unexpected_answer"), 0
        )

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, flow_id: int, datagram: bytes, dest: Address, now: float) -> None:
        """Start waiting for the answer to a QUERY just sent (replaces an earlier one)."""
        if flow_id not in self._pending and len(self._pending) >= self.max_pending:
            raise UsageError(f"more than {self.max_pending} queries pending")
        self._generation += 1
        due = now + self.interval
        self._pending[flow_id] = _Pending(datagram, dest, 1, due, self._generation)
        heapq.heappush(self._heap, (due, self._generation, flow_id))
        self.counters["tracked"] += 1

    def answered(self, flow_id: int) -> bool:
        """Stop retransmitting flow_id; False if it was not pending (late or unknown REPLY)."""
        if self._pending.pop(flow_id, None) is None:
            self.counters["unexpected_answer"] += 1
            return False
        self.counters["answered"] += 1
        return True

    def poll(self, now: float) -> tuple[list[Datagram], list[int]]:
        """(datagrams to resend, flow ids given up) as of now."""
        resends: list[Datagram] = []
        given_up: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, generation, flow_id = heapq.heappop(heap)
            entry = self._pending.get(flow_id)
            if entry is None or entry.generation != generation:
                continue
            if entry.sent >= self.tries:
                del self._pending[flow_id]
                given_up.append(flow_id)
                self.counters["given_up"] += 1
                continue
            if self.restamp is not None:
                entry.datagram = self.restamp(entry.datagram, entry.dest)
            entry.sent += 1
            self._generation += 1
            entry.generation = self._generation
            entry.due = now + self.interval
            heapq.heappush(heap, (entry.due, entry.generation, flow_id))
            resends.append((entry.datagram, entry.dest))
            self.counters["resent"] += 1
        return resends, given_up

    def next_deadline(self) -> float | None:
        """When poll() next has something to do, or None."""
        while self._heap:
            due, generation, flow_id = self._heap[0]
            entry = self._pending.get(flow_id)
            if entry is not None and entry.generation == generation:
                return due
            heapq.heappop(self._heap)
        return None
