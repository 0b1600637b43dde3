"""The CS flow table: one entry per flow the CS decided, with an idle timer each.

A flow is created when the CS answers a QUERY with a REPLY that accepts it, refreshed by STATS with
CONNALIVE (the DFS still sees traffic), and removed by DELETE, by plain STATS answering a REAP, by RESET,
or after the DFS failed to answer ``reap_retries`` REAPs. Timers live in one heap ordered by deadline with
lazy deletion: changing a deadline pushes a new entry and the stale one is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Endpoint", "Flow", "FlowKey", "FlowTable"]

Endpoint = tuple[str, int]
FlowKey = tuple[Endpoint, int]  # (DFS SSMB endpoint, flow_id)


@dataclass(slots=True, eq=False)
class Flow:
    """One decided flow."""

    key: FlowKey
    vs: str
    server: str
    client_ip: str
    client_port: int
    vip: str
    vport: int
    proto: int
    created: float
    last_activity: float
    reply: Any = None  # the REPLY sent, re-sent verbatim for a duplicate QUERY
    persistent: bool = False
    deadline: float = 0.0
    reap_tries: int = 0
    inbound_bytes: int = 0
    outbound_bytes: int = 0
    inbound_pkts: int = 0
    outbound_pkts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dfs(self) -> Endpoint:
        """The SSMB endpoint of the DFS that owns the flow."""
        return self.key[0]

    @property
    def flow_id(self) -> int:
        """The DFS-chosen flow identifier."""
        return self.key[1]

    @property
    def reaping(self) -> bool:
        """True while a REAP is outstanding."""
        return self.reap_tries > 0


class FlowTable:
    """Bounded map FlowKey -> Flow plus a deadline heap."""

    def __init__(self, max_flows: int) -> None:
        self.max_flows = max_flows
        self._flows: dict[FlowKey, Flow] = {}
        self._heap: list[tuple[float, int, FlowKey]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    @property
    def full(self) -> bool:
        """True when no new flow may be added."""
        return len(self._flows) >= self.max_flows

    def get(self, key: FlowKey) -> Flow | None:
        """The flow with this key, if any."""
        return self._flows.get(key)

    def add(self, flow: Flow, deadline: float) -> bool:
        """Insert a flow with its first deadline; False (nothing changed) when the table is full."""
        if flow.key not in self._flows and self.full:
            return False
        self._flows[flow.key] = flow
        self.schedule(flow, deadline)
        return True

    def schedule(self, flow: Flow, deadline: float) -> None:
        """Set the flow's next deadline."""
        flow.deadline = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, flow.key))
        if len(self._heap) > 4 * len(self._flows) + 1024:
            self._heap = [(f.deadline, i, f.key) for i, f in enumerate(self._flows.values())]
            heapq.heapify(self._heap)
            self._seq = len(self._heap)

    def remove(self, key: FlowKey) -> Flow | None:
        """Remove and return a flow; its heap entry goes stale."""
        return self._flows.pop(key, None)

    def due(self, now: float, limit: int = 1_000_000) -> list[Flow]:
        """Flows whose deadline has passed (each once), at most ``limit``."""
        out: list[Flow] = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            deadline, _, key = heapq.heappop(self._heap)
            flow = self._flows.get(key)
            if flow is not None and flow.deadline == deadline:
                out.append(flow)
        return out

    def next_deadline(self) -> float | None:
        """The earliest pending deadline (possibly stale), for sleeping until it."""
        return self._heap[0][0] if self._heap else None

    def keys_for_dfs(self, dfs: Endpoint) -> list[FlowKey]:
        """Every flow key owned by one DFS."""
        return [k for k in self._flows if k[0] == dfs]

    def clear(self) -> list[Flow]:
        """Remove everything; return what was removed."""
        flows = list(self._flows.values())
        self._flows.clear()
        self._heap.clear()
        return flows
