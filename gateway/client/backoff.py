"""Reconnection policy: exponential backoff with full jitter.

Pure policy, no reactor and no I/O: the client asks how long to wait before
its next attempt and whether it may try again at all.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): the
delay before attempt ``n`` (0 = the first retry after a loss) is drawn
uniformly from ``[0, min(cap, base * 2**n)]``.  Clients dropped together by
the same incident then spread their retries over the whole window instead
of stampeding the server in synchronised waves, and the first retry after a
blip is quick (at most ``base``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Backoff", "ReconnectPolicy", "Uniform"]

# 2**64 * base overflows nothing and is far past any sane cap.
_MAX_EXPONENT = 64


class Uniform(Protocol):
    """The part of :class:`random.Random` the policy needs (inject one in tests)."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class ReconnectPolicy:
    """When and how often a client reconnects after losing its connection.

    ``base`` and ``cap`` are seconds; ``max_attempts`` is the number of
    consecutive failed attempts after which the client gives up
    (``None``: never).  A successful connection resets the count.
    """

    base: float = 0.1
    cap: float = 10.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0:
            raise ValueError("base and cap must be positive")
        if self.cap < self.base:
            raise ValueError("cap must be at least base")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None for no limit)")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before attempt ``attempt`` (0-based)."""
        if attempt < 0:
            raise ValueError("attempt is 0-based")
        return min(self.cap, self.base * float(1 << min(attempt, _MAX_EXPONENT)))

    def delay(self, attempt: int, rng: Uniform | None = None) -> float:
        """Full jitter: ``uniform(0, min(cap, base * 2**attempt))``."""
        return float((rng or _random).uniform(0.0, self.ceiling(attempt)))

    def exhausted(self, failures: int) -> bool:
        """True when ``failures`` consecutive failed attempts reach the limit."""
        return self.max_attempts is not None and failures >= self.max_attempts


_random = random.Random()


class Backoff:
    """The running count of one reconnection cycle under a :class:`ReconnectPolicy`."""

    __slots__ = ("failures", "policy", "rng")

    def __init__(self, policy: ReconnectPolicy, rng: Uniform | None = None) -> None:
        self.policy = policy
        self.rng: Uniform = rng or _random
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next attempt (it does not count as a failure by itself)."""
        return self.policy.delay(self.failures, self.rng)

    def failed(self) -> bool:
        """Count a failed attempt; False when the policy says to give up."""
        self.failures += 1
        return not self.policy.exhausted(self.failures)

    def reset(self) -> None:
        self.failures = 0

    def spread(self, window: float) -> float:
        """A uniformly random point in ``[0, window]`` (server-requested reconnect spread)."""
        return float(self.rng.uniform(0.0, max(0.0, window)))
