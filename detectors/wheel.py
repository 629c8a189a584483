"""A timing wheel: keys waiting for numbered time slots, visited in slot order.

Detectors use it for deadlines that move often and are checked rarely: a key is pushed into
the slot of its deadline each time the deadline is set, and entries a later push made stale
are skipped by the caller when their slot comes up (no search to remove them).

>>> wheel = SlotWheel()
>>> wheel.push("d1", 3); wheel.push("d2", 1); wheel.push("d3", 3)
>>> [(slot, keys) for slot, keys in wheel.pop_through(2)]
[(1, ['d2'])]
>>> [(slot, keys) for slot, keys in wheel.pop_through(5)], wheel.latest()
([(3, ['d1', 'd3'])], None)
"""

from __future__ import annotations

from collections.abc import Iterator
from heapq import heappop, heappush


class SlotWheel:
    """Keys by slot number, with a heap of the occupied slots."""

    __slots__ = ("_buckets", "_slots")

    def __init__(self) -> None:
        self._buckets: dict[int, list[str]] = {}
        self._slots: list[int] = []

    def push(self, key: str, slot: int) -> None:
        """Make ``key`` wait for ``slot`` (a key may wait in several slots)."""
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._buckets[slot] = [key]
            heappush(self._slots, slot)
        else:
            bucket.append(key)

    def pop_through(self, current: int) -> Iterator[tuple[int, list[str]]]:
        """Take the slots numbered up to ``current``, earliest first, with their keys.

        Keys pushed meanwhile into later slots wait there; pushes into slots already taken
        come up again in this same pass.
        """
        buckets, slots = self._buckets, self._slots
        while slots and slots[0] <= current:
            slot = heappop(slots)
            yield slot, buckets.pop(slot)

    def latest(self) -> int | None:
        """The highest occupied slot, or ``None`` when nothing waits."""
        return max(self._slots, default=None)
