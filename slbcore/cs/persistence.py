"""Source-IP persistence records.

A record ties (virtual server, client address) to a real server. It lives while the client has flows on
that virtual server and ``timeout`` seconds after the last one ended or started, whichever is later
(the LVS persistence-template rule), so a client that keeps a connection open for hours keeps its server.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

__all__ = ["PersistenceRecord", "PersistenceTable"]

PersistKey = tuple[str, str]  # (virtual server name, client ip)


@dataclass(slots=True)
class PersistenceRecord:
    """One client's binding to a real server."""

    server: str
    timeout: float
    last_touch: float
    active: int = 0

    def expired(self, now: float) -> bool:
        """True once no flow is active and the timeout has passed since the last touch."""
        return self.active <= 0 and now >= self.last_touch + self.timeout


class PersistenceTable:
    """Bounded map of persistence records with lazy expiry."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._records: dict[PersistKey, PersistenceRecord] = {}
        self._heap: list[tuple[float, str, str]] = []
        self.refused_full = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, vs: str, client: str, now: float) -> PersistenceRecord | None:
        """The live record for this client, if any (an expired one is removed)."""
        rec = self._records.get((vs, client))
        if rec is not None and rec.expired(now):
            del self._records[(vs, client)]
            self.expired += 1
            return None
        return rec

    def bind(self, vs: str, client: str, server: str, timeout: float, now: float) -> PersistenceRecord | None:
        """Record (or refresh) a binding and count one more active flow; None when the table is full."""
        rec = self.get(vs, client, now)
        if rec is None:
            if len(self._records) >= self.max_records:
                self.refused_full += 1
                return None
            rec = PersistenceRecord(server=server, timeout=timeout, last_touch=now)
            self._records[(vs, client)] = rec
        rec.server = server
        rec.timeout = timeout
        rec.last_touch = now
        rec.active += 1
        return rec

    def release(self, vs: str, client: str, now: float) -> None:
        """One flow of this client ended: start the timeout once none is left."""
        rec = self._records.get((vs, client))
        if rec is None:
            return
        rec.active = max(0, rec.active - 1)
        rec.last_touch = max(rec.last_touch, now)
        if rec.active == 0:
            heapq.heappush(self._heap, (now + rec.timeout, vs, client))
            if len(self._heap) > 4 * self.max_records + 1024:
                # Stale entries pile up under heavy churn; rebuild from the live records to stay bounded.
                self._heap = [
                    (r.last_touch + r.timeout, k[0], k[1]) for k, r in self._records.items() if r.active == 0
                ]
                heapq.heapify(self._heap)

    def expire(self, now: float) -> int:
        """Drop records whose timeout has passed; return how many."""
        dropped = 0
        while self._heap and self._heap[0][0] <= now:
            _, vs, client = heapq.heappop(self._heap)
            rec = self._records.get((vs, client))
            if rec is not None and rec.expired(now):
                del self._records[(vs, client)]
                dropped += 1
        self.expired += dropped
        return dropped

    def forget_vs(self, vs: str) -> None:
        """Drop every record of a virtual server (it was deleted or its pool replaced)."""
        for key in [k for k in self._records if k[0] == vs]:
            del self._records[key]

    def forget_server(self, vs: str, server: str) -> None:
        """Drop the records bound to a server that left the pool."""
        for key in [k for k, r in self._records.items() if k[0] == vs and r.server == server]:
            del self._records[key]

    def clear(self) -> None:
        """Drop everything."""
        self._records.clear()
        self._heap.clear()

    def items(self) -> list[tuple[PersistKey, PersistenceRecord]]:
        """A snapshot of the records."""
        return list(self._records.items())
