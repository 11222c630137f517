"""Interest management: a spatial hash grid on the x/y plane.

Space is cut into square cells of ``cell_size``.  A viewer's *interest
area* is the set of cells whose centres lie within ``view_radius`` of the
centre of the viewer's cell (visibility is cell-granular: an entity may be
seen up to about one cell diagonal beyond the radius, never less than
``view_radius - cell diagonal`` away).

Work is proportional to what crosses cell borders, not to what exists:

* moving an entity inside its cell is one division and one comparison;
* an entity crossing a border is added to the viewers watching its new cell
  and removed from those watching only its old one (set differences of the
  two cells' watchers);
* a viewer crossing a border swaps the cells that left and entered its area.

Each viewer's visible set is maintained incrementally, and
:meth:`InterestGrid.take_changes` reports which viewers' sets changed since
it was last asked (with what entered and left), which is what the sync
engine turns into full records and removals.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable

__all__ = ["InterestGrid"]

Cell = tuple[int, int]


class InterestGrid:
    def __init__(self, cell_size: float, view_radius: float) -> None:
        if cell_size <= 0 or view_radius < 0:
            raise ValueError("cell_size must be > 0 and view_radius >= 0")
        self.cell_size = float(cell_size)
        self.view_radius = float(view_radius)
        reach = math.ceil(view_radius / cell_size) + 1
        limit = (view_radius / cell_size) ** 2
        #: Cell offsets making up an interest area (centres within the radius).
        self.offsets: tuple[Cell, ...] = tuple(
            (dx, dy)
            for dx in range(-reach, reach + 1)
            for dy in range(-reach, reach + 1)
            if dx * dx + dy * dy <= limit
        )
        self._inv = 1.0 / self.cell_size
        self._cell_of: dict[int, Cell] = {}  # entity -> cell
        self._cells: dict[Cell, set[int]] = {}  # cell -> entities
        self._watchers: dict[Cell, set[Hashable]] = {}  # cell -> viewers whose area holds it
        self._viewer_cell: dict[Hashable, Cell] = {}
        self._visible: dict[Hashable, set[int]] = {}
        self._entered: dict[Hashable, set[int]] = {}
        self._left: dict[Hashable, set[int]] = {}

    # ------------------------------------------------------------------ queries

    def cell(self, x: float, y: float) -> Cell:
        inv = self._inv
        return (math.floor(x * inv), math.floor(y * inv))

    def cell_of(self, entity: int) -> Cell | None:
        return self._cell_of.get(entity)

    def viewer_cell(self, viewer: Hashable) -> Cell | None:
        return self._viewer_cell.get(viewer)

    def visible(self, viewer: Hashable) -> set[int]:
        """The live visible set of ``viewer`` (do not modify it)."""
        return self._visible.get(viewer, _EMPTY)

    def entities(self) -> Iterable[int]:
        return self._cell_of.keys()

    def viewers(self) -> Iterable[Hashable]:
        return self._viewer_cell.keys()

    def take_changes(self) -> dict[Hashable, tuple[set[int], set[int]]]:
        """{viewer: (entered, left)}: the net change since the last call."""
        out = {}
        for viewer in set(self._entered) | set(self._left):
            entered = self._entered.pop(viewer, set())
            left = self._left.pop(viewer, set())
            if entered or left:
                out[viewer] = (entered, left)
        return out

    # ------------------------------------------------------------------ entities

    def move(self, entity: int, x: float, y: float) -> bool:
        """Place or move ``entity``; True when it changed cell (or was new)."""
        inv = self._inv
        cell = (math.floor(x * inv), math.floor(y * inv))
        old = self._cell_of.get(entity)
        if old == cell:
            return False
        self._cell_of[entity] = cell
        members = self._cells.get(cell)
        if members is None:
            members = self._cells[cell] = set()
        members.add(entity)
        new_watchers = self._watchers.get(cell, _EMPTY_V)
        if old is None:
            for viewer in new_watchers:
                self._see(viewer, entity)
            return True
        old_members = self._cells[old]
        old_members.discard(entity)
        if not old_members:
            del self._cells[old]
        old_watchers = self._watchers.get(old, _EMPTY_V)
        if old_watchers is new_watchers or old_watchers == new_watchers:
            return True
        for viewer in new_watchers - old_watchers:
            self._see(viewer, entity)
        for viewer in old_watchers - new_watchers:
            self._unsee(viewer, entity)
        return True

    def remove(self, entity: int) -> None:
        cell = self._cell_of.pop(entity, None)
        if cell is None:
            return
        members = self._cells[cell]
        members.discard(entity)
        if not members:
            del self._cells[cell]
        for viewer in self._watchers.get(cell, _EMPTY_V):
            self._unsee(viewer, entity)

    # ------------------------------------------------------------------ viewers

    def set_viewer(self, viewer: Hashable, x: float, y: float) -> bool:
        """Place or move a viewer's interest area; True when its cell changed."""
        inv = self._inv
        cell = (math.floor(x * inv), math.floor(y * inv))
        old = self._viewer_cell.get(viewer)
        if old == cell:
            return False
        self._viewer_cell[viewer] = cell
        self._visible.setdefault(viewer, set())
        new_area = {(cell[0] + dx, cell[1] + dy) for dx, dy in self.offsets}
        if old is None:
            old_area: set[Cell] = set()
        else:
            old_area = {(old[0] + dx, old[1] + dy) for dx, dy in self.offsets}
        for c in old_area - new_area:
            watchers = self._watchers[c]
            watchers.discard(viewer)
            if not watchers:
                del self._watchers[c]
            for entity in self._cells.get(c, ()):
                self._unsee(viewer, entity)
        for c in new_area - old_area:
            self._watchers.setdefault(c, set()).add(viewer)
            for entity in self._cells.get(c, ()):
                self._see(viewer, entity)
        return True

    def remove_viewer(self, viewer: Hashable) -> None:
        cell = self._viewer_cell.pop(viewer, None)
        self._visible.pop(viewer, None)
        self._entered.pop(viewer, None)
        self._left.pop(viewer, None)
        if cell is None:
            return
        for dx, dy in self.offsets:
            c = (cell[0] + dx, cell[1] + dy)
            watchers = self._watchers.get(c)
            if watchers is not None:
                watchers.discard(viewer)
                if not watchers:
                    del self._watchers[c]

    # ------------------------------------------------------------------ internals

    # Net changes since the last take_changes(): leaving after entering cancels out.

    def _see(self, viewer: Hashable, entity: int) -> None:
        self._visible[viewer].add(entity)
        left = self._left.get(viewer)
        if left is not None and entity in left:
            left.discard(entity)
        else:
            self._entered.setdefault(viewer, set()).add(entity)

    def _unsee(self, viewer: Hashable, entity: int) -> None:
        self._visible[viewer].discard(entity)
        entered = self._entered.get(viewer)
        if entered is not None and entity in entered:
            entered.discard(entity)
        else:
            self._left.setdefault(viewer, set()).add(entity)


_EMPTY: set[int] = set()
_EMPTY_V: set[Hashable] = set()
