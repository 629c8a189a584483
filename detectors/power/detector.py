"""The power detector (:class:`PowerDetector`): readings into hourly points, each judged
against the device's own and its fleet's baselines and then learned; the fleet summaries
exchanged with the other parts of a split fleet; checkpoints as plain data."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from detectors.anomaly import NoveltyScorer
from detectors.battery import CHEMISTRIES, Chemistry, chemistry_name
from detectors.power.config import PowerConfig
from detectors.power.device import (
    _ACC_N,
    _ACC_SUM,
    _BUCKET,
    _NOVEL,
    _NOVEL_AT,
    _OWN_MAD,
    _OWN_MEAN,
    _OWN_N,
    _PENDING,
    _RING,
    _SHORT_MAD,
    _SHORT_MEAN,
    _SHORT_N,
    NOVELTY,
    _Device,
)
from detectors.power.drain import _Drain, _drain_from_state, _drain_state
from detectors.power.stats import FleetKey, FleetSummary, _add, _alpha, _Fleet, _rising, _Stats
from service.records import Reading, Severity, Signal, iso_utc


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
