"""What the power detector keeps per device: its numbers unboxed in one array (the open
bucket, its own and short baselines, the step count, the latest novelty, its recent
points), its fleet baselines, drain model, novelty scorer and metadata."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from typing import Any

from detectors.anomaly import NoveltyScorer, ScorerConfig
from detectors.battery import Chemistry
from detectors.power.drain import _Drain
from detectors.power.stats import _Fleet

# a device's hourly points are few: the novelty grid is set after two days of them
NOVELTY = ScorerConfig(warmup=48, rest=24)

# a device's numbers, unboxed in ``_Device.f``: the open bucket (its index, nan before the
# first reading; the sum and count of its values), the own and short baselines (mean, mean
# absolute deviation, points), the points in a row beyond the step threshold, the latest
# novelty score and its bucket; then its recent points, oldest first
(_BUCKET, _ACC_SUM, _ACC_N, _OWN_MEAN, _OWN_MAD, _OWN_N, _SHORT_MEAN, _SHORT_MAD, _SHORT_N,
 _PENDING, _NOVEL, _NOVEL_AT, _RING) = range(13)  # fmt: skip
_FRESH = array("d", [math.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -(10.0**9)])


class _Device:
    """A device's state: its numbers in one array (see ``_RING``), the rest by reference.

    While the device's novelty scorer is not yet made (its first ``NOVELTY.warmup`` points),
    the array keeps every point: they are the scorer's warm-up values; afterwards, the last
    ``history``.
    """

    __slots__ = ("chemistry", "drain", "f", "flag", "fleets", "history", "meta", "model",
                 "novelty", "site", "source", "zone")  # fmt: skip

    def __init__(self, history: int) -> None:
        self.f = array("d", _FRESH)
        self.flag: str | None = None  # the shape currently alerted
        self.history = history
        self.drain: _Drain | None = None  # for devices that report no power
        self.novelty: NoveltyScorer | None = None  # made once the warm-up points are in
        self.fleets: _Fleet | tuple[_Fleet, ...] = ()  # the fleet baselines it was judged on
        self.source = "power_mw"
        self.model: str | None = None
        self.site: str | None = None
        self.zone: str | None = None
        self.meta: Mapping[str, str] | None = None  # the metadata last followed (read-only)
        self.chemistry: Chemistry | None = None  # its battery's, while the metadata stays

    @property
    def bucket(self) -> int | None:
        b = self.f[_BUCKET]
        return None if b != b else int(b)

    @property
    def recent(self) -> array[float]:
        """The last ``history`` points, oldest first."""
        return self.f[max(_RING, len(self.f) - self.history) :]

    def in_fleet(self, fleet: _Fleet) -> bool:
        fleets = self.fleets
        return fleets is fleet or (type(fleets) is tuple and fleet in fleets)

    def join(self, fleet: _Fleet) -> None:
        fleets = self.fleets
        if fleets == ():
            self.fleets = fleet
        elif type(fleets) is tuple:
            self.fleets = (*fleets, fleet)
        else:
            self.fleets = (fleets, fleet)  # type: ignore[assignment]
        fleet.members += 1

    def fleet_list(self) -> tuple[_Fleet, ...]:
        fleets = self.fleets
        return fleets if type(fleets) is tuple else (fleets,)  # type: ignore[return-value]

    def novelty_state(self) -> dict[str, Any]:
        if self.novelty is not None:
            return self.novelty.state_dict()
        return NoveltyScorer.warming(self.f[_RING:], NOVELTY).state_dict()
