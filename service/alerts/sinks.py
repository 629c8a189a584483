"""Outbound paths for alerts and dead letters, each with its own bounded queue.

A sink's ``offer`` never blocks detection. What happens when a queue is full is part of
each sink's contract:

- alert changes are never dropped: past the queue's bound, the newest state of each
  ``(kind, subject)`` is kept aside (coalesced) and delivered after the queue drains, which
  is all a retained alert topic needs; each coalesced change is counted;
- dead letters past the bound are dropped and counted (``fleetwatch_sink_overflow``); the
  decode error itself was already counted by reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from service.alerts.metrics import FleetMetrics
from service.records import AlertRecord, DeadLetter

log = logging.getLogger(__name__)

Item = AlertRecord | DeadLetter


class Sink(Protocol):
    """Where alert changes and dead letters go."""

    name: str

    def offer(self, item: Item) -> None: ...


class MemorySink:
    """Keeps everything in memory (replay, tests)."""

    name = "memory"

    def __init__(self) -> None:
        self.alerts: list[AlertRecord] = []
        self.deadletters: list[DeadLetter] = []

    def offer(self, item: Item) -> None:
        if isinstance(item, AlertRecord):
            self.alerts.append(item)
        else:
            self.deadletters.append(item)


class QueuedSink:
    """A sink that hands items to an async ``deliver`` coroutine from a bounded queue.

    Run :meth:`run` as a task; :meth:`flush` waits until everything offered so far has been
    delivered.
    """

    def __init__(
        self,
        name: str,
        deliver: Callable[[Item], Awaitable[None]],
        metrics: FleetMetrics,
        capacity: int = 10_000,
    ) -> None:
        self.name = name
        self._deliver = deliver
        self._metrics = metrics
        self._capacity = capacity
        self._queue: deque[Item] = deque()
        self._coalesced: dict[tuple[str, str], AlertRecord] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._queue) + len(self._coalesced)

    def offer(self, item: Item) -> None:
        if len(self._queue) >= self._capacity:
            self._metrics.sink_overflow.labels(sink=self.name).inc()
            if isinstance(item, AlertRecord):
                self._coalesced[item.key] = item
            else:
                log.warning("sink %s is full: dead letter for %s dropped", self.name, item.topic)
                return
        else:
            self._queue.append(item)
        self._idle.clear()
        self._wakeup.set()
        self._metrics.sink_queue_depth.labels(sink=self.name).set(len(self))

    def pending(self) -> list[Item]:
        """What is waiting to be delivered, oldest first (for checkpoints)."""
        return [*self._queue, *self._coalesced.values()]

    def _next(self) -> Item | None:
        if self._queue:
            return self._queue.popleft()
        if self._coalesced:
            key = next(iter(self._coalesced))
            return self._coalesced.pop(key)
        return None

    async def run(self) -> None:
        """Deliver items until cancelled."""
        while True:
            item = self._next()
            if item is None:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._deliver(item)
                self._metrics.sink_published.labels(sink=self.name).inc()
            except Exception:
                log.exception("sink %s failed to deliver; will retry", self.name)
                if isinstance(item, AlertRecord):
                    self._coalesced.setdefault(item.key, item)
                await asyncio.sleep(1.0)
            self._metrics.sink_queue_depth.labels(sink=self.name).set(len(self))

    async def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty; ``False`` if ``timeout`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
