"""The contract every detector follows.

A detector is pure, synchronous logic over readings: no I/O, no asyncio, no wall clock.
Its time comes from the readings it is given and from ``tick(now)``, where ``now`` is passed
in, so the same detector runs live, over a recorded file, and in tests, unchanged.

- ``process(batch)`` judges a micro-batch of readings (score first, then learn) and
  returns the signals it raises or clears.
- ``tick(now)`` returns what only silence reveals (a device that stopped reporting).
- ``state_dict()`` / ``load_state(state)`` save and restore learned state as plain,
  JSON-serialisable data (checkpoints).

Signals are edge-triggered by convention: a detector reports ``firing=True`` when a
condition starts or worsens and ``firing=False`` once it stops; the alert lifecycle keeps
one alert per ``(kind, subject)`` and tolerates repeats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from service.records import Reading, Signal


@runtime_checkable
class Detector(Protocol):
    """What the pipeline needs from a detector."""

    name: str

    def process(self, batch: Sequence[Reading]) -> list[Signal]: ...

    def tick(self, now: float) -> list[Signal]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


def reject_unknown(data: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    """Refuse settings a detector does not have, naming them.

    >>> reject_unknown({"step_z": 6, "stepz": 6}, {"step_z"}, "power")
    Traceback (most recent call last):
    ...
    ValueError: unknown power settings: stepz
    """
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {what} settings: {', '.join(sorted(unknown))}")
