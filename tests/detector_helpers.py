"""Detectors for tests: one that keeps every reading it is given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.records import MessageKind, Reading


class Recorder:
    """A detector that keeps the readings it is given and raises nothing."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Reading] = []

    def process(self, batch: Sequence[Reading]) -> list[Any]:
        self.seen.extend(batch)
        return []

    def tick(self, now: float) -> list[Any]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def telemetry(self, device: str | None = None) -> list[Reading]:
        return [r for r in self.seen if r.kind is MessageKind.TELEMETRY
                and (device is None or r.device_id == device)]  # fmt: skip

    def of_kind(self, kind: MessageKind) -> list[Reading]:
        return [r for r in self.seen if r.kind is kind]
