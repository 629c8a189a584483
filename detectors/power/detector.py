"""Power-consumption anomalies: a device whose draw says its hardware is failing.

Readings are averaged per device into hourly points of its power draw (``power_mw``, or
``current_a`` times ``voltage_v``) and, for devices that report no power at all, of its
battery discharge rate: a rising discharge rate is a power anomaly too. The discharge rate
is the least-squares slope, in percent of charge per day, of the hourly median battery level
over the last ``drain_window_h`` hours (widened up to ``drain_window_max_h`` while the
slope's standard error exceeds ``drain_precision`` of the rate; a rate that imprecise is
neither judged nor learned); the level is ``battery_pct`` or ``battery_v`` read
through the device's chemistry curve (``model_chemistry``, the ``battery_chemistry`` meta
key, else ``default_chemistry``), corrected for the cold, so the rate is as steady as the
draw is whatever the chemistry. A charging device (``power_source`` in
``charging_sources``) or a new battery starts the rate afresh. Each point is judged before
it is learned, against two references:

- the device's **own baseline**: an exponentially weighted mean and mean absolute deviation
  with a long half-life (``baseline_half_life_h``), frozen while the device is flagged;
- its **fleet baseline**: the same statistics over every device of its model and operating
  mode (``mode`` metadata when reported), so a device that was bad from the start is seen.

Shapes, told apart:

- ``spike``: one point far out (``spike_z`` deviations) that the next point does not
  confirm (reported only as evidence, never alerted: spikes are everyday);
- ``step``: a sudden rise confirmed by ``step_points`` consecutive points above
  ``step_z`` (a short circuit, a stuck relay, a radio that stopped sleeping);
- ``creep``: a slow rise: the short-term mean (``short_half_life_h``) drifted more than
  ``creep_fraction`` above the long baseline with a monotone trend over ``trend_points``
  (for a discharge rate, ``drain_creep_fraction`` and also ``creep_z`` standard errors of
  the rate's own fit: a rate read off a voltage curve wanders as the level crosses the
  curve's bends);
- ``fleet_outlier``: the device's own level is ``fleet_ratio`` times its model's (power
  draw only: a discharge rate in percent depends on the battery's capacity and the duty
  cycle it was set up with, so drain rates are judged against the device's own past).

When the fleet is split over several detectors (worker processes, see
:mod:`service.runtime.fleet_facts`), a model's baseline and its number of devices are combined with
what the others gave at the last exchange (:meth:`PowerDetector.fleet_summary`,
:meth:`PowerDetector.apply_fleet_summary`): the devices are added up, and the baselines
averaged, each weighted by the devices that fed it over the last ``baseline_half_life_h``
(each gives one point a bucket, so the weights are the parts' shares of the model's
points). One detector's baseline forgets a little with every point of the model, wherever it
comes from; a part sees only its share of them, so it forgets as much per point of its own
as one detector does over the points of the whole model that arrive meanwhile. The combined
baseline then follows one detector's closely (on a simulated fleet split in two: within
0.2 % for half the judgements, 1 % for nine in ten) but not to the last digit, as
one detector's depends on the order in which the points of different parts arrive:
``fleet_outlier`` decisions agree unless a level is that close to the threshold.

A ``power_anomaly`` signal carries the shape, the level, both baselines, the excess and the
point's novelty score from a :class:`detectors.anomaly.NoveltyScorer` run over the device's
points (how far outside anything the device has shown), and clears when the level is back
within half the threshold.

>>> from service.records import Reading
>>> det = PowerDetector()
>>> signals = []
>>> for h in range(24 * 8):
...     draw = 100.0 + (h % 3) + (100.0 if h >= 24 * 7 else 0.0)  # doubles on day 8
...     signals += det.process([Reading("d1", h * 3600.0, h * 3600.0, {"power_mw": draw})])
>>> [(s.kind, s.evidence["shape"]) for s in signals if s.firing]
[('power_anomaly', 'step')]
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from detectors.anomaly import NoveltyScorer, ScorerConfig
from detectors.base import reject_unknown
from detectors.battery import CHEMISTRIES, Chemistry, chemistry_name, power_source_settings
from service.records import Reading, Severity, Signal, iso_utc

# a device's hourly points are few: the novelty grid is set after two days of them
NOVELTY = ScorerConfig(warmup=48, rest=24)

# a device's numbers, unboxed in ``_Device.f``: the open bucket (its index, nan before the
# first reading; the sum and count of its values), the own and short baselines (mean, mean
# absolute deviation, points), the points in a row beyond the step threshold, the latest
# novelty score and its bucket; then its recent points, oldest first
(_BUCKET, _ACC_SUM, _ACC_N, _OWN_MEAN, _OWN_MAD, _OWN_N, _SHORT_MEAN, _SHORT_MAD, _SHORT_N,
 _PENDING, _NOVEL, _NOVEL_AT, _RING) = range(13)  # fmt: skip
_FRESH = array("d", [math.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -(10.0**9)])


@dataclass(frozen=True, slots=True)
class PowerConfig:
    bucket_s: float = 3_600.0
    baseline_half_life_h: float = 24.0 * 7
    short_half_life_h: float = 12.0
    warmup_points: int = 24
    step_z: float = 6.0
    step_points: int = 3
    spike_z: float = 8.0
    creep_fraction: float = 0.2
    drain_creep_fraction: float = 0.2
    creep_z: float = 3.0
    trend_points: int = 24
    fleet_ratio: float = 1.6
    fleet_min_devices: int = 5
    min_scale_fraction: float = 0.02
    drain_window_h: float = 72.0
    drain_window_max_h: float = 336.0
    drain_precision: float = 0.25
    swap_jump_pct: float = 20.0
    default_chemistry: str = "li_ion"
    model_chemistry: Mapping[str, str] = field(default_factory=dict)
    charging_sources: tuple[str, ...] = ("mains", "charging")
    reference_temp_c: float = 20.0

    def __post_init__(self) -> None:
        for name in (self.default_chemistry, *self.model_chemistry.values()):
            if name not in CHEMISTRIES:
                raise ValueError(f"unknown chemistry {name!r} (known: {', '.join(CHEMISTRIES)})")
        if self.drain_window_h < 4 * self.bucket_s / 3600.0:
            raise ValueError("drain_window_h must hold at least four points")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PowerConfig:
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "power")
        values = dict(data)
        power_source_settings(values)
        return cls(**values)


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


def _alpha(half_life_points: float) -> float:
    return float(1.0 - 0.5 ** (1.0 / max(1.0, half_life_points)))


class PowerDetector:
    """Spikes, steps, creep and fleet outliers in a device's power draw or drain rate."""

    name = "power"
    STATE_VERSION = 3

    def __init__(self, config: PowerConfig | None = None) -> None:
        self.config = config or PowerConfig()
        self._devices: dict[str, _Device] = {}
        self._fleet: dict[FleetKey, _Fleet] = {}
        # per fleet key, the other parts of a split fleet (members, weight, weighted sum of
        # their baselines) and this detector's own weight, as of the last exchange (not
        # saved: the next exchange brings them back)
        self._others: dict[FleetKey, tuple[int, float, float]] = {}
        self._own_weight: dict[FleetKey, float] = {}
        # per fleet key, the baseline's smoothing per point of this detector's: faster than
        # one detector's, as its points are a share of the fleet's
        self._fleet_alpha: dict[FleetKey, float] = {}
        # the weights of the fleet keys and the tick clock when they were counted
        self._weights_cache: tuple[float, dict[FleetKey, float]] | None = None
        self._clock = -math.inf
        hours = self.config.bucket_s / 3600.0
        self._long = _alpha(self.config.baseline_half_life_h / hours)
        self._fast = _alpha(self.config.short_half_life_h / hours)

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        bucket_s = self.config.bucket_s
        for reading in batch:
            metrics = reading.metrics
            value = metrics.get("power_mw")
            source = "power_mw"
            if value is None and "current_a" in metrics and "voltage_v" in metrics:
                value = metrics["current_a"] * metrics["voltage_v"] * 1000.0
            if value is None:
                if reading.late or ("battery_pct" not in metrics and "battery_v" not in metrics):
                    continue
                source = "drain_per_day"
            device = self._devices.get(reading.device_id)
            if device is None:
                device = self._devices[reading.device_id] = _Device(self.config.trend_points)
            meta = reading.meta
            if meta is not device.meta:  # the same (immutable) metadata needs no second look
                device.meta = meta
                device.chemistry = None
                device.model = meta.get("model", device.model)
                device.site = meta.get("site", device.site)
                device.zone = meta.get("zone", device.zone)
            if value is None:
                value = self._drain_point(device, reading)
                if value is None:
                    continue
            index = reading.ts // bucket_s
            f = device.f
            bucket = f[_BUCKET]
            if index > bucket and f[_ACC_N]:  # False while bucket is nan
                point = f[_ACC_SUM] / f[_ACC_N]
                mode = meta.get("mode")
                signal = self._judge(reading.device_id, device, point, int(bucket), mode)
                if signal is not None:
                    signals.append(signal)
                f[_ACC_SUM] = f[_ACC_N] = 0.0
            if not index <= bucket:  # also for a nan bucket
                f[_BUCKET] = index
            device.source = source
            f[_ACC_SUM] += value
            f[_ACC_N] += 1
        return signals

    def _chemistry(self, device: _Device, meta: Mapping[str, str]) -> Chemistry:
        config = self.config
        return CHEMISTRIES[chemistry_name(device.model, meta, config.model_chemistry,
                                          CHEMISTRIES, config.default_chemistry)]  # fmt: skip

    def _drain_point(self, device: _Device, reading: Reading) -> float | None:
        """The device's current discharge rate (% per day), once an hour; else None."""
        config = self.config
        drain = device.drain
        if drain is None:
            drain = device.drain = _Drain(config.drain_window_h)
        metrics, meta = reading.metrics, reading.meta
        if meta.get("power_source") in config.charging_sources:
            drain.reset()  # charging: nothing is depleting
            return None
        level = metrics.get("battery_pct")
        if level is None:
            chemistry = device.chemistry
            if chemistry is None:
                chemistry = device.chemistry = self._chemistry(device, meta)
            volts = metrics["battery_v"]
            temperature = metrics.get("temperature_c")
            if temperature is not None:
                volts += chemistry.temp_coef_v_per_c * max(
                    0.0, config.reference_temp_c - temperature
                )
            level = chemistry.level(volts)
        hour = int(reading.ts // config.bucket_s)
        rate: float | None = None
        if drain.bucket is not None and hour > drain.bucket and drain.levels:
            median = sorted(drain.levels)[len(drain.levels) // 2]
            previous = drain.last_level
            point_hour = drain.bucket * config.bucket_s / 3600.0
            if previous is not None and median - previous >= config.swap_jump_pct:
                drain.reset()  # a new battery: its rate starts afresh
            drain.add(point_hour, median)
            drain.levels.clear()
            rate = drain.rate_per_day(0.75 * config.drain_window_h)
            if rate is not None and drain.error > config.drain_precision * abs(rate):
                # too imprecise to judge or learn from: widen the window (up to its maximum)
                # and wait for a rate the levels can vouch for
                drain.window = min(config.drain_window_max_h, drain.window * 1.25)
                rate = None
        if drain.bucket is None or hour > drain.bucket:
            drain.bucket = hour
        drain.levels.append(level)
        if rate is None or rate < 0:
            return None
        return rate

    def _judge(
        self, device_id: str, device: _Device, point: float, bucket: int, mode: str | None
    ) -> Signal | None:
        config = self.config
        at = (bucket + 1) * config.bucket_s
        key = (device.model, mode, device.source)
        fleet = self._fleet.get(key)
        if fleet is None:
            fleet = self._fleet[key] = _Fleet()
        if not device.in_fleet(fleet):
            if fleet.extra is not None and device_id in fleet.extra:
                fleet.extra.discard(device_id)  # loaded as a member: counted already
                fleet.members -= 1
            device.join(fleet)
        f = device.f
        own_mean, own_n = f[_OWN_MEAN], f[_OWN_N]
        floor = config.min_scale_fraction * abs(own_mean) if own_n else 0.0
        scale = max(f[_OWN_MAD] * 1.4826, floor, 1e-9)
        if device.drain is not None:
            # drain points are slopes over overlapping windows: their scatter understates
            # their noise, which the fit's standard error gives
            scale = max(scale, device.drain.error)
        z = (point - own_mean) / scale if own_n >= config.warmup_points else 0.0
        scorer = device.novelty
        if scorer is None:  # warm-up: the scorer's values are the points kept in ``f``
            if not math.isfinite(point):
                raise ValueError(f"cannot score {point!r}")
            novelty = 0.0
            f.append(point)
            if len(f) - _RING >= NOVELTY.warmup:
                device.novelty = NoveltyScorer.warming(f[_RING:], NOVELTY)
                extra = len(f) - _RING - device.history
                if extra > 0:
                    del f[_RING : _RING + extra]
        else:
            novelty = scorer.score(point)
            if len(f) - _RING >= device.history:
                del f[_RING]
            f.append(point)
        if novelty > 0.0:
            f[_NOVEL], f[_NOVEL_AT] = novelty, bucket
        elif bucket - f[_NOVEL_AT] <= config.trend_points:
            novelty = f[_NOVEL]  # the excursion's novelty, while it is recent
        fleet_mean, fleet_members = fleet.mean, fleet.members
        if self._others:
            other = self._others.get(key)
            if other is not None:
                fleet_mean, fleet_members = self._combined(key, fleet, other)
        shape: str | None = None
        short_mean = f[_SHORT_MEAN]
        if own_n >= config.warmup_points:
            if z >= config.step_z:  # a rise: less draw is not a failing part
                f[_PENDING] += 1
                if f[_PENDING] >= config.step_points:
                    shape = "step"
            else:
                f[_PENDING] = 0.0
            if shape is None and f[_SHORT_N] >= config.trend_points:
                excess = (short_mean - own_mean) / max(abs(own_mean), 1e-9)
                rise = short_mean - own_mean
                sure = device.drain is None or rise >= config.creep_z * device.drain.error
                if (
                    excess
                    >= (
                        config.creep_fraction
                        if device.drain is None
                        else config.drain_creep_fraction
                    )
                    and sure
                    and _rising(device.recent, config.trend_points)
                ):
                    shape = "creep"
        if (
            shape is None
            and fleet_members >= config.fleet_min_devices
            and own_n >= config.warmup_points
            and fleet_mean > 0
            and own_mean >= config.fleet_ratio * fleet_mean
            and device.source != "drain_per_day"
        ):
            shape = "fleet_outlier"
        signal = None
        if shape is not None and device.flag is None:
            device.flag = shape
            signal = self._signal(device_id, device, True, at, shape, point, z, fleet_mean, novelty)
        elif device.flag is not None and shape is None:
            back = abs(z) < config.step_z / 2 and (
                short_mean - own_mean
            ) < config.creep_fraction / 2 * max(abs(own_mean), 1e-9)
            if device.flag == "fleet_outlier":
                back = own_mean < (1 + (config.fleet_ratio - 1) / 2) * fleet_mean
            if back:
                device.flag = None
                signal = self._signal(
                    device_id, device, False, at, "normal", point, z, fleet_mean, novelty
                )
        # learn after judging; the own baseline stays frozen while the device is flagged
        if (device.flag is None or device.flag == "fleet_outlier") and (
            f[_PENDING] == 0 or own_n < config.warmup_points
        ):
            _add(f, _OWN_MEAN, point, self._long)
        _add(f, _SHORT_MEAN, point, self._fast)
        if device.flag is None:
            fleet.add(point, self._fleet_alpha.get(key, self._long) if self._others else self._long)
        return signal

    def _signal(self, device_id: str, device: _Device, firing: bool, at: float, shape: str,
                point: float, z: float, fleet_mean: float, novelty: float) -> Signal:  # fmt: skip
        unit = "mW" if device.source == "power_mw" else "%/day (drain)"
        if not firing:
            return Signal(kind="power_anomaly", subject=device_id, firing=False, at=at,
                          summary=f"{device_id}: power draw back to its baseline",
                          site=device.site, zone=device.zone)  # fmt: skip
        baseline = device.f[_OWN_MEAN]
        ratio = point / baseline if baseline else math.inf
        severity = Severity.CRITICAL if shape == "step" and ratio >= 2 else Severity.WARNING
        words = {
            "step": "jumped",
            "creep": "is creeping up",
            "fleet_outlier": "is far above its model's",
        }
        return Signal(
            kind="power_anomaly", subject=device_id, firing=True, at=at, severity=severity,
            summary=(f"{device_id}: power draw {words[shape]}: {point:.4g} {unit} against a "
                     f"baseline of {baseline:.4g} ({ratio:.2f}x)"),
            evidence={"shape": shape, "source": device.source, "level": round(point, 4),
                      "baseline": round(baseline, 4), "ratio": round(ratio, 3),
                      "z": round(z, 2), "model_baseline": round(fleet_mean, 4),
                      "novelty": round(novelty, 3),
                      "since": iso_utc(at)},
            action=("Inspect the device: a sudden rise means a short, a stuck actuator or a "
                    "radio that no longer sleeps; a slow one, a leak or failing component. "
                    "Its battery will run out early."),
            site=device.site, zone=device.zone,
        )  # fmt: skip

    def device_view(self, device_id: str) -> dict[str, Any] | None:
        """The device's power baseline and what it is judged on (plain data)."""
        device = self._devices.get(device_id)
        if device is None:
            return None
        return {
            "source": device.source,
            "baseline": round(device.f[_OWN_MEAN], 4),
            "recent": round(device.f[_SHORT_MEAN], 4),
            "points": int(device.f[_OWN_N]),
            "flagged": device.flag,
            "drain_error_pct_per_day": None if device.drain is None
            else round(device.drain.error, 4),
        }  # fmt: skip

    def tick(self, now: float) -> list[Signal]:
        self._clock = now
        return []

    # -- a fleet split over several detectors -------------------------------------------

    def _combined(
        self, key: FleetKey, fleet: _Fleet, other: tuple[int, float, float]
    ) -> tuple[float, int]:
        """The baseline and members of ``key`` over this detector and the others."""
        members, weight, weighted = other
        own = self._own_weight.get(key, 0.0) if fleet.n else 0.0
        total = own + weight
        if total <= 0.0:
            return fleet.mean, fleet.members + members
        return (own * fleet.mean + weighted) / total, fleet.members + members

    def _weights(self) -> dict[FleetKey, float]:
        """Per fleet key, the devices that fed its baseline (not flagged, with a point
        within ``baseline_half_life_h`` of the newest one): each gives a point a bucket.

        Counted again once the tick clock has moved ``bucket_s`` on (every time without
        ticks): they change slowly, and counting visits every device.
        """
        cached = self._weights_cache
        if cached is not None and 0.0 <= self._clock - cached[0] < self.config.bucket_s:
            return cached[1]
        weights = self._count_weights()
        self._weights_cache = (self._clock, weights)
        return weights

    def _count_weights(self) -> dict[FleetKey, float]:
        buckets = [d.f[_BUCKET] for d in self._devices.values()]
        newest = max((b for b in buckets if b == b), default=math.nan)
        if newest != newest:
            return {}
        since = newest - self.config.baseline_half_life_h * 3600.0 / self.config.bucket_s
        keys = {id(fleet): key for key, fleet in self._fleet.items()}
        weights: dict[FleetKey, float] = {}
        for device in self._devices.values():
            if device.flag is not None or device.fleets == () or not device.f[_BUCKET] >= since:
                continue
            key = None
            if device.meta is not None:
                key = (device.model, device.meta.get("mode"), device.source)
                fleet = self._fleet.get(key)
                if fleet is None or not device.in_fleet(fleet):
                    key = None
            if key is None:  # restored from a checkpoint: the baseline it joined last
                key = keys[id(device.fleet_list()[-1])]
            weights[key] = weights.get(key, 0.0) + 1.0
        return weights

    def fleet_summary(self) -> FleetSummary:
        """What this detector adds to the fleet baselines: per fleet key, its devices judged
        against it, the weight of its baseline and the weight times the baseline (its own
        devices only, not what it was given by the others)."""
        weights = self._weights()
        summary: FleetSummary = {}
        for key, fleet in self._fleet.items():
            weight = weights.get(key, 0.0) if fleet.n else 0.0
            summary[key] = (fleet.members, weight, weight * fleet.mean)
        return summary

    @staticmethod
    def merge_fleet_summaries(summaries: Sequence[Mapping[FleetKey, Any]]) -> FleetSummary:
        """Several detectors' summaries as one: members, weights and weighted sums added.

        >>> key = ("M", None, "power_mw")
        >>> PowerDetector.merge_fleet_summaries([{key: (3, 3.0, 300.0)}, {key: (4, 2.0, 260.0)}])
        {('M', None, 'power_mw'): (7, 5.0, 560.0)}
        """
        merged: FleetSummary = {}
        for summary in summaries:
            for key, (members, weight, weighted) in summary.items():
                old = merged.get(key, (0, 0.0, 0.0))
                merged[key] = (old[0] + members, old[1] + weight, old[2] + weighted)
        return merged

    def apply_fleet_summary(self, others: Mapping[FleetKey, Any]) -> None:
        """Take the other parts' baselines (replacing what the previous exchange gave);
        from now on each model's baseline is judged over this detector's and theirs."""
        self._others = {
            (key[0], key[1], key[2]): (int(members), float(weight), float(weighted))
            for key, (members, weight, weighted) in others.items()
        }
        self._own_weight = self._weights() if self._others else {}
        self._fleet_alpha = {}
        for key, (_, weight, _) in self._others.items():
            own = self._own_weight.get(key, 0.0)
            if own > 0.0 and weight > 0.0:
                # one detector's baseline decays by 1 - alpha per point of the whole fleet;
                # (own + weight) / own of them arrive for each point of this detector's
                self._fleet_alpha[key] = 1.0 - (1.0 - self._long) ** ((own + weight) / own)

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        def stats(s: _Stats) -> list[float]:
            return [s.mean, s.mad, s.n]

        def packed(f: array[float], at: int) -> list[float]:
            return [f[at], f[at + 1], int(f[at + 2])]

        members: dict[int, list[str]] = {id(s): list(s.extra or ()) for s in self._fleet.values()}
        for device_id, d in self._devices.items():
            if d.fleets != ():
                for s in d.fleet_list():
                    members[id(s)].append(device_id)
        return {
            "version": self.STATE_VERSION,
            "fleet": [[list(k), stats(s), sorted(members[id(s)])] for k, s in self._fleet.items()],
            "devices": {
                i: [
                    d.bucket,
                    d.f[_ACC_SUM],
                    int(d.f[_ACC_N]),
                    packed(d.f, _OWN_MEAN),
                    packed(d.f, _SHORT_MEAN),
                    int(d.f[_PENDING]),
                    d.flag,
                    list(d.recent),
                    _drain_state(d.drain),
                    d.novelty_state(),
                    [d.f[_NOVEL], int(d.f[_NOVEL_AT])],
                    d.source,
                    d.model,
                    d.site,
                    d.zone,
                ]
                for i, d in self._devices.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint of format 3, or of format 2 (whose drain rows lack the
        running sums: they are summed afresh from the points)."""
        if state.get("version") not in (2, self.STATE_VERSION):
            raise ValueError(f"power state format {state.get('version')} is not 2 or 3")

        def stats(row: list[float], s: _Stats) -> None:
            s.mean, s.mad, s.n = float(row[0]), float(row[1]), int(row[2])

        self._devices = {}
        self._weights_cache = None
        for device_id, row in state["devices"].items():
            (bucket, acc_sum, acc_n, own, short, pending, flag, recent, drain, novelty, novel,
             source, model, site, zone) = row  # fmt: skip
            d = _Device(self.config.trend_points)
            f = d.f
            f[_BUCKET] = math.nan if bucket is None else int(bucket)
            f[_ACC_SUM], f[_ACC_N], f[_PENDING] = float(acc_sum), int(acc_n), int(pending)
            f[_OWN_MEAN], f[_OWN_MAD], f[_OWN_N] = float(own[0]), float(own[1]), int(own[2])
            f[_SHORT_MEAN], f[_SHORT_MAD], f[_SHORT_N] = (float(short[0]), float(short[1]),
                                                         int(short[2]))  # fmt: skip
            d.flag = flag
            f[_NOVEL], f[_NOVEL_AT] = float(novel[0]), int(novel[1])
            points = [float(x) for x in recent[-d.history :]] if recent else []
            buffer = novelty["buffer"]
            if (
                buffer is not None
                and novelty["seen"] is None
                and [float(v) for v in novelty["grid"]] == [0.0, 1.0, 1.0]
                and int(novelty["index"]) == len(buffer)
                and not novelty["peaks"]
                and not novelty["cells"]
                and len(buffer) < NOVELTY.warmup
                and [float(x) for x in buffer[len(buffer) - len(points) :]] == points
                and len(points) == min(len(buffer), d.history)
            ):
                f.extend(float(x) for x in buffer)  # warm-up values, the recent points last
            else:
                d.novelty = NoveltyScorer.from_state(novelty, NOVELTY)
                f.extend(points)
            d.drain = _drain_from_state(drain)
            d.source, d.model, d.site, d.zone = source, model, site, zone
            self._devices[device_id] = d
        self._fleet = {}
        for key, row, members in state["fleet"]:
            k = (key[0], key[1], key[2])
            fleet = self._fleet[k] = _Fleet()
            stats(row, fleet)
            for member in set(members):
                device = self._devices.get(member)
                if device is None:
                    if fleet.extra is None:
                        fleet.extra = set()
                    fleet.extra.add(member)
                    fleet.members += 1
                elif not device.in_fleet(fleet):
                    device.join(fleet)


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
