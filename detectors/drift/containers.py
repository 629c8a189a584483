"""Compact containers for the drift detector's per-sensor state.

Floats are kept unboxed in ``array('d')`` buffers: a window of ``n`` readings costs ``8 n``
bytes instead of a deque of float objects. A *ring* is a bare ``array('d')`` plus the index
of its oldest value (kept by its owner, so a window costs no object of its own): it grows
(exactly, with no room to spare) until it holds ``capacity`` values, then overwrites the
oldest.

>>> ring = FloatRing(3)
>>> for v in (1.0, 2.0, 3.0, 4.0):
...     ring.append(v)
>>> len(ring), ring.ordered()
(3, [2.0, 3.0, 4.0])
>>> sorted(ring.values())
[2.0, 3.0, 4.0]
>>> buf, head = array("d"), 0
>>> for v in (1.0, 2.0, 3.0, 4.0, 5.0):
...     buf, head = ring_push(buf, head, 3, v)
>>> ring_ordered(buf, head), len(buf), head
([3.0, 4.0, 5.0], 3, 2)
>>> buf, head = array("d"), 0
>>> for t in range(4):  # a ring of pairs: capacity and values count floats
...     buf, head = ring_push(buf, head, 4, float(t), 10.0 * t)
>>> ring_ordered(buf, head)
[2.0, 20.0, 3.0, 30.0]
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any


def ring_push(
    buf: array[float], head: int, capacity: int, *values: float
) -> tuple[array[float], int]:
    """Append ``values`` to the ring ``(buf, head)`` of ``capacity`` floats (a multiple of
    ``len(values)``); return the ring after it (while it grows, a new exact-size ``buf``: meant
    for rings appended to now and then, such as one sample every few hours)."""
    if len(buf) < capacity:
        return buf + array("d", values), 0
    for value in values:
        buf[head] = value
        head += 1
    return buf, 0 if head >= capacity else head


def ring_ordered(buf: array[float], head: int) -> list[float]:
    """The values of the ring ``(buf, head)``, oldest first."""
    if head == 0:
        return buf.tolist()
    return buf[head:].tolist() + buf[:head].tolist()


class FloatRing:
    """The last ``capacity`` floats appended, oldest first (a bounded deque of floats)."""

    __slots__ = ("buf", "capacity", "head")

    def __init__(self, capacity: int, items: Iterable[float] = ()) -> None:
        self.capacity = capacity
        self.buf = array("d")
        self.head = 0  # once full: the index of the oldest value
        for item in items:
            self.append(float(item))

    def append(self, value: float) -> None:
        buf = self.buf
        if len(buf) < self.capacity:
            buf.append(value)
            if len(buf) == self.capacity:
                self.buf = array("d", buf)  # full: no room kept for growth
        else:
            head = self.head
            buf[head] = value
            head += 1
            self.head = 0 if head == self.capacity else head

    def __len__(self) -> int:
        return len(self.buf)

    def values(self) -> array[float]:
        """The values in no particular order (for order-free statistics such as a median)."""
        return self.buf

    def ordered(self) -> list[float]:
        """The values, oldest first."""
        buf, head = self.buf, self.head
        if head == 0:
            return buf.tolist()
        return buf[head:].tolist() + buf[:head].tolist()


class Bucket:
    """One open time bucket of a peer group: each sensor's latest ``(ts, value)`` in it, in
    the order the sensors first reported in the bucket (``data`` holds the pairs flat).

    >>> b = Bucket(7)
    >>> b.put("s1", 10.0, 1.5); b.put("s2", 11.0, 2.5); b.put("s1", 12.0, 1.75)
    >>> list(zip(b.sensors, b.ts, b.values))
    [('s1', 12.0, 1.75), ('s2', 11.0, 2.5)]
    """

    __slots__ = ("data", "index", "sensors")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sensors: list[Any] = []
        self.data = array("d")  # ts, value of the first sensor, then of the second, ...

    @property
    def ts(self) -> array[float]:
        """The entries' times (a copy)."""
        return self.data[0::2]

    @property
    def values(self) -> array[float]:
        """The entries' values (a copy)."""
        return self.data[1::2]

    def add(self, sensor: Any, ts: float, value: float) -> None:
        """Append an entry for a sensor known not to be in the bucket yet."""
        self.sensors.append(sensor)
        self.data.append(ts)
        self.data.append(value)

    def set(self, position: int, ts: float, value: float) -> None:
        """Keep the newer of the entry at ``position`` and ``(ts, value)``."""
        data = self.data
        if ts >= data[2 * position]:
            data[2 * position] = ts
            data[2 * position + 1] = value

    def put(self, sensor: Any, ts: float, value: float) -> None:
        """Add or update the entry of ``sensor`` (found by identity)."""
        for position, known in enumerate(self.sensors):
            if known is sensor:
                self.set(position, ts, value)
                return
        self.add(sensor, ts, value)

    def position(self, sensor: Any) -> int:
        """Where ``sensor`` is in the bucket, ``-1`` if it is not."""
        for position, known in enumerate(self.sensors):
            if known is sensor:
                return position
        return -1
