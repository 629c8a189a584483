"""Recorded messages put back in receive-time order before they are replayed.

A replay runs on recorded time: each message's ``received_at`` moves the pipeline's clock.
A recording merged from several captures, or one with a line whose clock was off, is not
in order, and one line minutes ahead of its neighbours would move the clock past them: every
device would look silent, every gateway down. :class:`ReorderWindow` holds messages for a
window of recorded time and lets them out oldest first, so anything up to the window out
of place is replayed where it belongs. What it moved is counted; a message further behind
than the window (the clock has already passed it) is replayed at once, as a late delivery
would be live, and counted apart.

>>> from service.records import RawMessage
>>> msgs = [RawMessage("t", b"", ts) for ts in (0.0, 60.0, 600.0, 120.0, 180.0, 900.0, 5.0)]
>>> window = ReorderWindow(window_s=300.0)
>>> [m.received_at for m in window.order(msgs)]
[0.0, 60.0, 120.0, 180.0, 600.0, 5.0, 900.0]
>>> window.reordered, window.too_late
(1, 1)
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator

from service.records import RawMessage

DEFAULT_WINDOW_S = 900.0
"""Recorded seconds a message may be out of place and still be replayed in order."""

DEFAULT_MAX_HELD = 1_000_000
"""Messages held at most; past it the oldest is let out early (bounds memory)."""


class ReorderWindow:
    """Lets messages out in ``received_at`` order within ``window_s`` of recorded time.

    ``reordered`` counts messages replayed at another place than they were read (a message
    read after them was let out first); ``too_late`` counts messages read when the replay's
    clock had already passed them by more than the window, which are let out at once.
    Messages with the same ``received_at`` keep the order they were read in.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, max_held: int = DEFAULT_MAX_HELD):
        if window_s < 0 or max_held < 1:
            raise ValueError("window_s must be >= 0 and max_held >= 1")
        self.window_s = window_s
        self.max_held = max_held
        self.reordered = 0
        self.too_late = 0

    def order(self, messages: Iterable[RawMessage]) -> Iterator[RawMessage]:
        """``messages`` in receive-time order within the window (a generator).

        Messages read in order wait in a queue (constant time each); only those read out of
        order go to a heap, and the two are merged as they are let out.
        """
        in_order: deque[tuple[float, int, RawMessage]] = deque()
        out_of_order: list[tuple[float, int, RawMessage]] = []
        newest = -float("inf")  # newest receive time read
        released_to = -float("inf")  # receive time of the newest message let out
        latest_index = -1  # read position of the latest-read message let out
        window, max_held = self.window_s, self.max_held
        push, pop = heapq.heappush, heapq.heappop
        append, popleft = in_order.append, in_order.popleft
        for index, message in enumerate(messages):
            received = message.received_at
            if received < released_to:
                self.too_late += 1
                yield message
                continue
            if received >= newest:
                append((received, index, message))
                newest = received
            else:
                push(out_of_order, (received, index, message))
            horizon = newest - window
            while True:
                if out_of_order and (not in_order or out_of_order[0] < in_order[0]):
                    head = out_of_order[0]
                    if head[0] > horizon and len(in_order) + len(out_of_order) <= max_held:
                        break
                    pop(out_of_order)
                elif in_order:
                    head = in_order[0]
                    if head[0] > horizon and len(in_order) + len(out_of_order) <= max_held:
                        break
                    popleft()
                else:
                    break
                released_to, read_at, out = head
                if read_at < latest_index:
                    self.reordered += 1
                else:
                    latest_index = read_at
                yield out
        while in_order or out_of_order:
            if out_of_order and (not in_order or out_of_order[0] < in_order[0]):
                released_to, read_at, out = pop(out_of_order)
            else:
                released_to, read_at, out = popleft()
            if read_at < latest_index:
                self.reordered += 1
            else:
                latest_index = read_at
            yield out
