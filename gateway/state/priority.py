"""Who gets which update when a player's bandwidth is limited.

Two pieces, used together by :class:`gateway.state.sync.SyncEngine`:

:class:`ByteBudget`
    A token bucket in bytes: it fills at ``bytes_per_second`` up to
    ``burst`` bytes and is debited with the bytes actually queued for the
    player (the plugin reports the size of each event it queued).  A tick may
    overdraw it by one record; the debt is paid back by later ticks, so the
    long-run rate stays within the budget.

:class:`PriorityAccumulator`
    Per (player, entity), a number that grows every tick the entity has an
    unsent change, by a weight that falls with distance and depends on the
    entity's kind; it is reset when the change is sent.  Each tick the
    pending entities are taken in decreasing accumulated priority while the
    budget is positive.

**Nothing starves.**  A pending entity's priority grows without bound while
the ones sent are reset to zero, so after finitely many ticks it is the
highest.  The highest is always sent on a tick whose budget is positive
(overdraw allowed), and the budget becomes positive again after at most
``debt / bytes_per_second`` seconds.  tests/test_state_priority.py checks
this with many entities against a tiny budget.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

__all__ = ["ByteBudget", "PriorityAccumulator", "distance_weight"]


class ByteBudget:
    """A per-player token bucket in bytes."""

    __slots__ = ("burst", "bytes_per_second", "spent", "tokens")

    def __init__(self, bytes_per_second: float, burst: float | None = None) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        self.bytes_per_second = float(bytes_per_second)
        # Default: a quarter of a second of traffic (at least a full-ish packet).
        self.burst = float(burst) if burst is not None else max(
            self.bytes_per_second / 4, 1200.0)
        self.tokens = self.burst
        self.spent = 0  # bytes charged since creation (statistics)

    def set_rate(self, bytes_per_second: float, burst: float | None = None) -> None:
        self.bytes_per_second = float(bytes_per_second)
        self.burst = float(burst) if burst is not None else max(
            self.bytes_per_second / 4, 1200.0)
        self.tokens = min(self.tokens, self.burst)

    def refill(self, dt: float) -> None:
        tokens = self.tokens + self.bytes_per_second * dt
        self.tokens = tokens if tokens < self.burst else self.burst

    def charge(self, size: int) -> None:
        """Debit bytes actually queued (may go negative: a debt)."""
        self.tokens -= size
        self.spent += size

    @property
    def available(self) -> bool:
        return self.tokens > 0


def distance_weight(cells: int) -> float:
    """Weight of an entity ``cells`` grid cells away (Chebyshev): 1, 1/2, 1/3, ..."""
    return 1.0 / (1 + cells)


class PriorityAccumulator:
    """Accumulated priority of each pending entity for one player."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[Hashable, float] = {}

    def add(self, entity: Hashable, weight: float) -> float:
        value = self.values.get(entity, 0.0) + weight
        self.values[entity] = value
        return value

    def reset(self, entity: Hashable) -> None:
        self.values.pop(entity, None)

    def forget(self, entities: Iterable[Hashable]) -> None:
        for entity in entities:
            self.values.pop(entity, None)

    def order(self, pending: Iterable[Hashable]) -> list[Hashable]:
        """``pending`` by decreasing accumulated priority (ties: stable)."""
        values = self.values
        return sorted(pending, key=lambda e: -values.get(e, 0.0))
