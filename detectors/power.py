"""Power-consumption anomalies: a device whose draw says its hardware is failing.

Readings are averaged per device into hourly points of its power draw (``power_mw``, or
``current_a`` times ``voltage_v``) and, for devices that report no power at all, of its
battery discharge rate (percent or volts per day between hourly points: a rising discharge
rate is a power anomaly too). Each point is judged before it is learned, against two
references:

- the device's **own baseline**: an exponentially weighted mean and mean absolute deviation
  with a long half-life (``baseline_half_life_h``), frozen while the device is flagged;
- its **fleet baseline**: the same statistics over every device of its model and operating
  mode (``mode`` metadata when reported), so a device that was bad from the start is seen.

Shapes, told apart:

- ``spike``: one point far out (``spike_z`` deviations) that the next point does not
  confirm (reported only as evidence, never alerted: spikes are everyday);
- ``step``: a sudden change confirmed by ``step_points`` consecutive points beyond
  ``step_z`` (a short circuit, a stuck relay, a radio that stopped sleeping);
- ``creep``: a slow rise: the short-term mean (``short_half_life_h``) drifted more than
  ``creep_fraction`` above the long baseline with a monotone trend over ``trend_points``;
- ``fleet_outlier``: the device's own level is ``fleet_ratio`` times its model's.

A ``power_anomaly`` signal carries the shape, the level, both baselines and the excess, and
clears when the level is back within half the threshold.

>>> from service.model import Reading
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
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from service.model import Reading, Severity, Signal, iso_utc


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
    trend_points: int = 24
    fleet_ratio: float = 1.6
    fleet_min_devices: int = 5
    min_scale_fraction: float = 0.02

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PowerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown power settings: {', '.join(sorted(unknown))}")
        return cls(**dict(data))


class _Stats:
    """Exponentially weighted mean and mean absolute deviation."""

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


class _Device:
    __slots__ = (
        "acc_n", "acc_sum", "bucket", "flag", "last_level", "model", "own", "pending", "recent",
        "short", "site", "source", "zone",
    )  # fmt: skip

    def __init__(self) -> None:
        self.bucket: int | None = None
        self.acc_sum = 0.0
        self.acc_n = 0
        self.own = _Stats()
        self.short = _Stats()
        self.pending = 0  # consecutive points beyond the step threshold
        self.flag: str | None = None  # the shape currently alerted
        self.recent: deque[float] = deque(maxlen=48)
        self.last_level: tuple[float, float] | None = None  # battery (t, level) for drain
        self.source = "power_mw"
        self.model: str | None = None
        self.site: str | None = None
        self.zone: str | None = None


def _alpha(half_life_points: float) -> float:
    return float(1.0 - 0.5 ** (1.0 / max(1.0, half_life_points)))


class PowerDetector:
    """Spikes, steps, creep and fleet outliers in a device's power draw or drain rate."""

    name = "power"
    STATE_VERSION = 1

    def __init__(self, config: PowerConfig | None = None) -> None:
        self.config = config or PowerConfig()
        self._devices: dict[str, _Device] = {}
        self._fleet: dict[tuple[str | None, str | None, str], _Stats] = {}
        self._fleet_devices: dict[tuple[str | None, str | None, str], set[str]] = {}
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
            level = None
            if value is None:
                level = metrics.get("battery_pct", metrics.get("battery_v"))
                if level is None or reading.late:
                    continue
                source = "drain_per_day"
            device = self._devices.get(reading.device_id)
            if device is None:
                device = self._devices[reading.device_id] = _Device()
            meta = reading.meta
            device.model = meta.get("model", device.model)
            device.site = meta.get("site", device.site)
            device.zone = meta.get("zone", device.zone)
            mode = meta.get("mode")
            index = int(reading.ts // bucket_s)
            if device.bucket is not None and index > device.bucket and device.acc_n:
                point = device.acc_sum / device.acc_n
                signal = self._judge(reading.device_id, device, point, device.bucket, mode)
                if signal is not None:
                    signals.append(signal)
                device.acc_sum, device.acc_n = 0.0, 0
            if device.bucket is None or index > device.bucket:
                device.bucket = index
            if source == "drain_per_day":
                assert level is not None
                previous = device.last_level
                device.last_level = (reading.ts, level)
                if previous is None or reading.ts - previous[0] < bucket_s / 2:
                    if previous is not None:
                        device.last_level = previous
                    continue
                value = (previous[1] - level) / (reading.ts - previous[0]) * 86_400.0
                if value < 0:
                    continue  # charging or a new battery: not a drain
            device.source = source
            device.acc_sum += value  # type: ignore[operator]
            device.acc_n += 1
        return signals

    def _judge(
        self, device_id: str, device: _Device, point: float, bucket: int, mode: str | None
    ) -> Signal | None:
        config = self.config
        at = (bucket + 1) * config.bucket_s
        key = (device.model, mode, device.source)
        fleet = self._fleet.setdefault(key, _Stats())
        members = self._fleet_devices.setdefault(key, set())
        members.add(device_id)
        own = device.own
        floor = config.min_scale_fraction * abs(own.mean) if own.n else 0.0
        scale = max(own.mad * 1.4826, floor, 1e-9)
        z = (point - own.mean) / scale if own.n >= config.warmup_points else 0.0
        device.recent.append(point)
        shape: str | None = None
        if own.n >= config.warmup_points:
            if abs(z) >= config.step_z:
                device.pending += 1
                if device.pending >= config.step_points:
                    shape = "step"
            else:
                device.pending = 0
            if shape is None and device.short.n >= config.trend_points:
                excess = (device.short.mean - own.mean) / max(abs(own.mean), 1e-9)
                if excess >= config.creep_fraction and _rising(device.recent, config.trend_points):
                    shape = "creep"
        if (
            shape is None
            and len(members) >= config.fleet_min_devices
            and own.n >= config.warmup_points
            and fleet.mean > 0
            and own.mean >= config.fleet_ratio * fleet.mean
        ):
            shape = "fleet_outlier"
        signal = None
        if shape is not None and device.flag is None:
            device.flag = shape
            signal = self._signal(device_id, device, True, at, shape, point, z, fleet)
        elif device.flag is not None and shape is None:
            back = abs(z) < config.step_z / 2 and (
                device.short.mean - own.mean
            ) < config.creep_fraction / 2 * max(abs(own.mean), 1e-9)
            if device.flag == "fleet_outlier":
                back = own.mean < (1 + (config.fleet_ratio - 1) / 2) * fleet.mean
            if back:
                device.flag = None
                signal = self._signal(device_id, device, False, at, "normal", point, z, fleet)
        # learn after judging; the own baseline stays frozen while the device is flagged
        if (device.flag is None or device.flag == "fleet_outlier") and (
            device.pending == 0 or own.n < config.warmup_points
        ):
            own.add(point, self._long)
        device.short.add(point, self._fast)
        if device.flag is None:
            fleet.add(point, self._long)
        return signal

    def _signal(self, device_id: str, device: _Device, firing: bool, at: float, shape: str,
                point: float, z: float, fleet: _Stats) -> Signal:  # fmt: skip
        unit = "mW" if device.source == "power_mw" else "%/day (drain)"
        if not firing:
            return Signal(kind="power_anomaly", subject=device_id, firing=False, at=at,
                          summary=f"{device_id}: power draw back to its baseline",
                          site=device.site, zone=device.zone)  # fmt: skip
        baseline = device.own.mean
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
                      "z": round(z, 2), "model_baseline": round(fleet.mean, 4),
                      "since": iso_utc(at)},
            action=("Inspect the device: a sudden rise means a short, a stuck actuator or a "
                    "radio that no longer sleeps; a slow one, a leak or failing component. "
                    "Its battery will run out early."),
            site=device.site, zone=device.zone,
        )  # fmt: skip

    def tick(self, now: float) -> list[Signal]:
        return []

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        def stats(s: _Stats) -> list[float]:
            return [s.mean, s.mad, s.n]

        return {
            "version": self.STATE_VERSION,
            "fleet": [
                [list(k), stats(s), sorted(self._fleet_devices.get(k, ()))]
                for k, s in self._fleet.items()
            ],
            "devices": {
                i: [
                    d.bucket,
                    d.acc_sum,
                    d.acc_n,
                    stats(d.own),
                    stats(d.short),
                    d.pending,
                    d.flag,
                    list(d.recent),
                    list(d.last_level) if d.last_level else None,
                    d.source,
                    d.model,
                    d.site,
                    d.zone,
                ]
                for i, d in self._devices.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"power state format {state.get('version')} is not 1")

        def stats(row: list[float]) -> _Stats:
            s = _Stats()
            s.mean, s.mad, s.n = float(row[0]), float(row[1]), int(row[2])
            return s

        self._fleet, self._fleet_devices = {}, {}
        for key, row, members in state["fleet"]:
            k = (key[0], key[1], key[2])
            self._fleet[k] = stats(row)
            self._fleet_devices[k] = set(members)
        self._devices = {}
        for device_id, row in state["devices"].items():
            (bucket, acc_sum, acc_n, own, short, pending, flag, recent, last_level, source,
             model, site, zone) = row  # fmt: skip
            d = _Device()
            d.bucket, d.acc_sum, d.acc_n = bucket, float(acc_sum), int(acc_n)
            d.own, d.short, d.pending, d.flag = stats(own), stats(short), int(pending), flag
            d.recent.extend(float(x) for x in recent)
            d.last_level = (float(last_level[0]), float(last_level[1])) if last_level else None
            d.source, d.model, d.site, d.zone = source, model, site, zone
            self._devices[device_id] = d


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
