"""A ring of recent world states, for rollback and lag compensation.

Each sync tick the engine pushes the world as it was sent: entity id ->
version tuple (gateway.state.codec).  Versions are shared with the engine, so
a tick costs one dict, not a copy of every entity.  ``depth`` ticks are
kept; :meth:`StateRing.at` answers "what did the world look like at tick t"
(the newest stored tick at or before ``t``), and :meth:`positions_at`
materialises dead-reckoned positions there, which is what a hit test
rewinding to the shooter's view needs.

:func:`classify_input` is the late-input rule built on it: an input made
for a tick still in the ring is applied (the provider may rewind to that
tick), one older than the ring is rejected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from gateway.state.codec import Version
from gateway.state.quantize import extrapolate

__all__ = ["ACCEPT", "REJECT_LATE", "StateRing", "classify_input"]

ACCEPT = "accept"
REJECT_LATE = "late"


class StateRing:
    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError("ring depth must be at least 1")
        self.depth = depth
        self._ticks: deque[int] = deque()
        self._states: deque[Mapping[int, Version]] = deque()

    def __len__(self) -> int:
        return len(self._ticks)

    @property
    def oldest(self) -> int | None:
        return self._ticks[0] if self._ticks else None

    @property
    def newest(self) -> int | None:
        return self._ticks[-1] if self._ticks else None

    def push(self, tick: int, states: Mapping[int, Version]) -> None:
        if self._ticks and tick <= self._ticks[-1]:
            raise ValueError(f"tick {tick} is not after {self._ticks[-1]}")
        self._ticks.append(tick)
        self._states.append(states)
        while len(self._ticks) > self.depth:
            self._ticks.popleft()
            self._states.popleft()

    def at(self, tick: int) -> Mapping[int, Version] | None:
        """The world at the newest stored tick <= ``tick`` (None: older than the ring)."""
        ticks = self._ticks
        if not ticks or tick < ticks[0]:
            return None
        # Ticks are increasing and usually contiguous: index directly, then correct.
        i = min(len(ticks) - 1, tick - ticks[0])
        while ticks[i] > tick:
            i -= 1
        return self._states[i]

    def positions_at(self, tick: int, hz: int) -> dict[int, tuple[int, int, int]] | None:
        """Quantised positions of every entity at ``tick`` (dead-reckoned from its version)."""
        world = self.at(tick)
        if world is None:
            return None
        out = {}
        for eid, s in world.items():
            n = tick - s[0]
            out[eid] = (extrapolate(s[2], s[5], n, hz), extrapolate(s[3], s[6], n, hz),
                        extrapolate(s[4], s[7], n, hz))
        return out


def classify_input(input_tick: int, ring: StateRing) -> str:
    """ACCEPT an input made for a tick the ring still holds (or a future one), else REJECT_LATE."""
    oldest = ring.oldest
    if oldest is None or input_tick >= oldest:
        return ACCEPT
    return REJECT_LATE
