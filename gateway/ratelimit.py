"""Token bucket: the rate limit for everything a client controls."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; time is passed in (sans-io)."""

    __slots__ = ("_stamp", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        # A clock stepping backwards must not hand out free tokens later.
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if available; False means over the limit (nothing spent)."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
