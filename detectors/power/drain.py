"""The discharge-rate model of a device that reports no power: its hourly median battery
levels, the least-squares rate they show, and the model as plain data for checkpoints."""

from __future__ import annotations

import math
from array import array
from typing import Any


class _Drain:
    """Hourly median battery levels and the discharge rate they show.

    The rate is a least-squares slope over the points of the last ``window`` hours, kept as
    running sums so each hour costs the same whatever the window. The window starts at
    ``drain_window_h`` and widens (to ``drain_window_max_h``) while the slope's standard
    error is above ``drain_precision`` of the rate: a flat voltage curve needs days of
    levels to show a rate that a steep one shows in hours. Points are kept in two arrays
    (16 bytes a point).
    """

    __slots__ = ("bucket", "error", "levels", "origin", "sums", "times", "updates", "values",
                 "window")  # fmt: skip

    def __init__(self, window: float) -> None:
        self.bucket: int | None = None
        self.error = 0.0  # standard error of the latest rate, % per day
        self.levels: list[float] = []  # this hour's levels
        self.times = array("d")  # hours since ``origin``
        self.values = array("d")  # the hours' median levels
        self.origin: float | None = None
        self.sums = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # n, t, v, tt, tv, vv (over the points)
        self.updates = 0
        self.window = window

    @property
    def last_level(self) -> float | None:
        return self.values[-1] if self.values else None

    def reset(self) -> None:
        self.bucket = None
        self.levels.clear()
        del self.times[:]
        del self.values[:]
        self.origin = None
        self.sums = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]

    def add(self, hour: float, level: float) -> None:
        if self.origin is None:
            self.origin = hour
        t = hour - self.origin
        times, values = self.times, self.values
        times.append(t)
        values.append(level)
        s = self.sums
        s[0] += 1
        s[1] += t
        s[2] += level
        s[3] += t * t
        s[4] += t * level
        s[5] += level * level
        drop = 0
        while drop < len(times) and t - times[drop] > self.window:
            old_t, old_v = times[drop], values[drop]
            s[0] -= 1
            s[1] -= old_t
            s[2] -= old_v
            s[3] -= old_t * old_t
            s[4] -= old_t * old_v
            s[5] -= old_v * old_v
            drop += 1
        if drop:
            del times[:drop]
            del values[:drop]
        self.updates += 1
        if self.updates % 256 == 0:  # wipe out the rounding running sums gather
            self.resum()

    def resum(self) -> None:
        times, values = self.times, self.values
        self.sums = [
            float(len(times)),
            sum(times),
            sum(values),
            sum(t * t for t in times),
            sum(t * v for t, v in zip(times, values, strict=True)),
            sum(v * v for v in values),
        ]

    def rate_per_day(self, min_span_h: float) -> float | None:
        """Least-squares fall of the level, % per day, once ``min_span_h`` is covered."""
        times = self.times
        n = len(times)
        if n < 4 or times[-1] - times[0] < min_span_h:
            return None
        _, st, sv, stt, stv, svv = self.sums
        sxx = stt - st * st / n
        if sxx <= 0:
            return None
        sxy = stv - st * sv / n
        slope = sxy / sxx
        residual = max(0.0, svv - sv * sv / n - slope * sxy)
        self.error = math.sqrt(residual / max(1, n - 2) / sxx) * 24.0
        return -slope * 24.0


def _drain_state(drain: _Drain | None) -> list[Any] | None:
    """A drain as plain data: its points, and its running sums and update count as they
    stand (sums rebuilt from the points could differ in the last bits, and so could every
    rate computed from them)."""
    if drain is None:
        return None
    points = [[t, v] for t, v in zip(drain.times, drain.values, strict=True)]
    return [drain.bucket, list(drain.levels), points, drain.error,
            drain.origin, drain.window, list(drain.sums), drain.updates]  # fmt: skip


def _drain_from_state(row: list[Any] | None) -> _Drain | None:
    """The drain of :func:`_drain_state`; a row of format 2 (six fields) gets its sums
    summed afresh from its points."""
    if row is None:
        return None
    drain = _Drain(float(row[5]))
    drain.bucket = None if row[0] is None else int(row[0])
    drain.levels = [float(v) for v in row[1]]
    for t, v in row[2]:
        drain.times.append(float(t))
        drain.values.append(float(v))
    drain.error = float(row[3])
    drain.origin = None if row[4] is None else float(row[4])
    if len(row) > 7:
        drain.sums = [float(x) for x in row[6]]
        drain.updates = int(row[7])
    else:
        drain.resum()
    return drain
