"""The running statistics behind the baselines: an exponentially weighted mean and mean
absolute deviation (as an object for a fleet baseline, packed in an array for a device's
own), the smoothing for a half-life, the trend test of a creep, and the keys and exchange
format of the fleet baselines."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

FleetKey = tuple[str | None, str | None, str]
"""A fleet baseline's key: model, operating mode, source (``power_mw`` or ``drain_per_day``)."""

FleetSummary = dict[FleetKey, tuple[int, float, float]]
"""Per fleet key: devices judged against it, the weight of its baseline (devices that fed
it recently) and the weight times the baseline."""


class _Stats:
    """Exponentially weighted mean and mean absolute deviation (a model's fleet baseline)."""

    __slots__ = ("mad", "mean", "n")

    def __init__(self) -> None:
        self.mean = 0.0
        self.mad = 0.0
        self.n = 0

    def add(self, value: float, alpha: float) -> None:
        if self.n == 0:
            self.mean = value
        else:
            weight = max(alpha, 1.0 / (self.n + 1))
            self.mad += weight * (abs(value - self.mean) - self.mad)
            self.mean += weight * (value - self.mean)
        self.n += 1


class _Fleet(_Stats):
    """A fleet baseline and how many devices have been judged against it.

    Which devices those are is kept on the devices (``_Device.fleets``); ``extra`` holds
    members loaded from a checkpoint that have no device.
    """

    __slots__ = ("extra", "members")

    def __init__(self) -> None:
        super().__init__()
        self.members = 0
        self.extra: set[str] | None = None


def _add(f: array[float], at: int, value: float, alpha: float) -> None:
    """:meth:`_Stats.add` on the (mean, mad, n) kept at ``f[at:at + 3]``."""
    n = f[at + 2]
    if n == 0:
        f[at] = value
    else:
        mean = f[at]
        weight = max(alpha, 1.0 / (n + 1))
        f[at + 1] += weight * (abs(value - mean) - f[at + 1])
        f[at] = mean + weight * (value - mean)
    f[at + 2] = n + 1


def _alpha(half_life_points: float) -> float:
    return float(1.0 - 0.5 ** (1.0 / max(1.0, half_life_points)))


def _rising(values: Sequence[float], points: int) -> bool:
    """Whether the last ``points`` values trend up: Kendall-style share of rising pairs."""
    tail = list(values)[-points:]
    if len(tail) < points:
        return False
    up = down = 0
    for i in range(0, len(tail) - 1, 2):
        for j in range(i + 1, len(tail), 3):
            if tail[j] > tail[i]:
                up += 1
            elif tail[j] < tail[i]:
                down += 1
    return up + down > 0 and (up - down) / (up + down) > 0.5
