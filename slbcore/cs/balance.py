"""Server selection methods.

A selector is given the *eligible* servers of a pool (healthy, not draining, not disabled, weight > 0) in
configuration order and the flow being decided, and returns one of them. Selectors keep only what the
method itself needs between calls (the round robin position, the Maglev table), so they stay valid when
the eligible set changes: a server that leaves the set is simply no longer offered.

- ``round_robin``: each eligible server in turn, weights ignored.
- ``weighted_round_robin``: smooth weighted round robin (the nginx algorithm): over any window of
  ``sum(weights)`` picks every server is chosen exactly ``weight`` times, interleaved rather than in bursts.
- ``least_connections``: fewest active flows per unit of weight; ties go round robin.
- ``source_hash``: weighted rendezvous (highest random weight) hashing of the client address, so a client
  keeps its server while the set is unchanged, and a server leaving moves only that server's clients.
- ``maglev``: Maglev consistent hashing (Eisenbud et al., NSDI 2016) of the flow's 5-tuple into a lookup
  table of prime size; removing a server moves its own flows and only a small fraction of the others.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from slbcore.cs.config import Method

__all__ = [
    "Candidate",
    "FlowTuple",
    "LeastConnections",
    "MaglevSelector",
    "MaglevTable",
    "RoundRobin",
    "Selector",
    "SmoothWeightedRoundRobin",
    "SourceHash",
    "make_selector",
]


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible real server as the selectors see it."""

    name: str
    weight: int
    active: int = 0


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """The client side of the flow being decided."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    proto: int


class Selector(Protocol):
    """Chooses one of the eligible candidates for a flow."""

    def choose(self, candidates: Sequence[Candidate], flow: FlowTuple) -> Candidate | None:
        """Return the chosen candidate, or None when there is none."""
        ...


def _hash64(data: bytes, salt: bytes = b"") -> int:
    # blake2b is stable across runs and platforms, unlike hash(); a standby CS must agree with the active one.
    return int.from_bytes(
        hashlib.blake2b(data, digest_size=8, person=salt[:16].ljust(16, b"\0")).digest(), "big"
    )


class RoundRobin:
    """Plain round robin over the eligible servers."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[Candidate], flow: FlowTuple) -> Candidate | None:
        """Pick the next server in turn."""
        if not candidates:
            return None
        pick = candidates[self._next % len(candidates)]
        self._next = (self._next + 1) % (1 << 30)
        return pick


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def choose(self, candidates: Sequence[Candidate], flow: FlowTuple) -> Candidate | None:
        """Raise every server's credit by its weight, pick the highest, charge it the total."""
        if not candidates:
            return None
        names = {c.name for c in candidates}
        if len(self._current) != len(names) or any(n not in names for n in self._current):
            # A server that left takes its credit with it; survivors keep theirs so the sequence stays smooth.
            self._current = {n: v for n, v in self._current.items() if n in names}
        total = 0
        best: Candidate | None = None
        best_value = 0
        for c in candidates:
            value = self._current.get(c.name, 0) + c.weight
            self._current[c.name] = value
            total += c.weight
            if best is None or value > best_value:
                best, best_value = c, value
        assert best is not None
        self._current[best.name] -= total
        return best


class LeastConnections:
    """Weighted least connections with round-robin tie breaking."""

    def __init__(self) -> None:
        self._rotation = 0

    def choose(self, candidates: Sequence[Candidate], flow: FlowTuple) -> Candidate | None:
        """Pick the server with the fewest active flows per unit of weight."""
        if not candidates:
            return None
        n = len(candidates)
        start = self._rotation % n
        self._rotation = (self._rotation + 1) % (1 << 30)
        best: Candidate | None = None
        for i in range(n):
            c = candidates[(start + i) % n]
            # Compare active_a/weight_a < active_b/weight_b without floats.
            if best is None or c.active * best.weight < best.active * c.weight:
                best = c
        return best


class SourceHash:
    """Weighted rendezvous hashing on the client address."""

    def choose(self, candidates: Sequence[Candidate], flow: FlowTuple) -> Candidate | None:
        """Pick the server with the highest weighted score for this client."""
        best: Candidate | None = None
        best_score = -math.inf
        key = flow.src_ip.encode()
        for c in candidates:
            h = _hash64(key + b"|" + c.name.encode(), b"srchash")
            # Map to (0, 1) exclusive, then the weighted HRW score -w/ln(u) (Schindelhauer & Schomaker).
            u = (h + 0.5) / 18446744073709551616.0
            score = -c.weight / math.log(u)
            if score > best_score:
                best, best_score = c, score
        return best


class MaglevTable:
    """A Maglev lookup table for a fixed set of (name, weight) backends."""

    def __init__(self, backends: Sequence[tuple[str, int]], size: int = 65537) -> None:
        if size < 1:
            raise ValueError("table size must be positive")
        self.size = size
        self.backends = tuple(backends)
        self.entries: list[int] = self._populate() if self.backends else []

    def _populate(self) -> list[int]:
        m = self.size
        n = len(self.backends)
        offsets: list[int] = []
        skips: list[int] = []
        for name, _weight in self.backends:
            raw = name.encode()
            offsets.append(_hash64(raw, b"maglev-offset") % m)
            skips.append(_hash64(raw, b"maglev-skip") % (m - 1) + 1 if m > 1 else 1)
        nexts = [0] * n
        entry = [-1] * m
        weights = [max(0, w) for _, w in self.backends]
        max_weight = max(weights) if weights else 0
        if max_weight == 0:
            return []
        filled = 0
        # Weighted population: in each round, backend i takes a turn with credit weight/max_weight.
        credit = [0.0] * n
        while True:
            for i in range(n):
                credit[i] += weights[i] / max_weight
                while credit[i] >= 1.0:
                    credit[i] -= 1.0
                    off, skip, j = offsets[i], skips[i], nexts[i]
                    c = (off + j * skip) % m
                    while entry[c] >= 0:
                        j += 1
                        c = (off + j * skip) % m
                    entry[c] = i
                    nexts[i] = j + 1
                    filled += 1
                    if filled == m:
                        return entry

    def lookup(self, key: bytes) -> str | None:
        """The backend name owning ``key``."""
        if not self.entries:
            return None
        return self.backends[self.entries[_hash64(key, b"maglev-key") % self.size]][0]


class MaglevSelector:
    """Maglev hashing of the flow 5-tuple; the table is rebuilt only when the eligible set changes."""

    def __init__(self, table_size: int = 65537) -> None:
        self.table_size = table_size
        self._table: MaglevTable | None = None
        self._last_candidates: Sequence[Candidate] | None = None
        self._by_name: dict[str, Candidate] = {}
        self.rebuilds = 0

    def choose(self, candidates: Sequence[Candidate], flow: FlowTuple) -> Candidate | None:
        """Look the flow up in the table for the current eligible set."""
        if not candidates:
            return None
        if candidates is not self._last_candidates:
            # Callers usually pass the same cached list object until the eligible set changes.
            backends = tuple(sorted((c.name, c.weight) for c in candidates))
            if self._table is None or self._table.backends != backends:
                self._table = MaglevTable(backends, self.table_size)
                self.rebuilds += 1
            self._last_candidates = candidates
            self._by_name = {c.name: c for c in candidates}
        assert self._table is not None
        key = struct.pack(
            "!4s4sHHB",
            _ip_bytes(flow.src_ip),
            _ip_bytes(flow.dst_ip),
            flow.src_port,
            flow.dst_port,
            flow.proto,
        )
        name = self._table.lookup(key)
        return self._by_name.get(name) if name is not None else None


def _ip_bytes(ip: str) -> bytes:
    try:
        return bytes(int(part) for part in ip.split("."))
    except ValueError:
        return ip.encode()


def make_selector(method: Method, maglev_table_size: int = 65537) -> Selector:
    """A fresh selector for ``method``."""
    if method is Method.ROUND_ROBIN:
        return RoundRobin()
    if method is Method.WEIGHTED_ROUND_ROBIN:
        return SmoothWeightedRoundRobin()
    if method is Method.LEAST_CONNECTIONS:
        return LeastConnections()
    if method is Method.SOURCE_HASH:
        return SourceHash()
    if method is Method.MAGLEV:
        return MaglevSelector(maglev_table_size)
    raise ValueError(f"unknown method {method!r}")
