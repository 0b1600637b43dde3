"""Token bucket rate limiting with time passed in."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; ``rate`` 0 means unlimited."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float | None = None
    allowed: int = 0
    dropped: int = 0

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if available; count the outcome."""
        if self.rate <= 0:
            self.allowed += 1
            return True
        if self.stamp is None or self.tokens < 0:
            self.tokens = self.burst
        elif now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        # A clock that steps backwards must not mint tokens nor freeze the bucket forever.
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            self.allowed += 1
            return True
        self.dropped += 1
        return False
