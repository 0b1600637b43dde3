"""Health state of real servers: a rise/fall state machine fed with probe results.

The prober (``nodes/health.py``) owns sockets and clocks; this module only counts. A server goes DOWN after
``fall`` consecutive failed probes and comes back UP after ``rise`` consecutive successes. A result that
agrees with the current state resets the opposite counter, so one flapping probe never changes state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["HealthMachine", "HealthState"]


class HealthState(StrEnum):
    """Health of a real server as seen by its probes."""

    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class HealthMachine:
    """Rise/fall counter for one real server."""

    rise: int = 2
    fall: int = 3
    state: HealthState = HealthState.UP
    successes: int = 0
    failures: int = 0
    checks: int = 0
    transitions: int = 0
    last_change: float = 0.0
    last_detail: str = ""

    def record(self, ok: bool, now: float, detail: str = "") -> bool:
        """Count one probe result; return True when the state changed."""
        self.checks += 1
        self.last_detail = detail
        if ok:
            self.successes += 1
            self.failures = 0
            if self.state is HealthState.DOWN and self.successes >= self.rise:
                return self._change(HealthState.UP, now)
        else:
            self.failures += 1
            self.successes = 0
            if self.state is HealthState.UP and self.failures >= self.fall:
                return self._change(HealthState.DOWN, now)
        return False

    def _change(self, state: HealthState, now: float) -> bool:
        self.state = state
        self.successes = 0
        self.failures = 0
        self.transitions += 1
        self.last_change = now
        return True

    @property
    def up(self) -> bool:
        """True while the server may take new flows as far as health goes."""
        return self.state is HealthState.UP
