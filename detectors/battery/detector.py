"""The battery depletion detector: readings in; per-device forecasts, ``battery_depletion``
alerts, the replacement plan and checkpoints out (see :mod:`detectors.battery`).
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from detectors.battery.chemistry import chemistry_name
from detectors.battery.config import _DAY, BatteryConfig
from detectors.battery.device_state import (
    _B_END,
    _B_START,
    _B_SUM,
    _B_TOP,
    _B_TSUM,
    _FLOATS,
    _FRESH,
    _LAST_TS,
    _NEG_INF,
    _OBS_LEVEL,
    _OBS_V,
    _TEMP,
    _Device,
)
from detectors.battery.forecast import BatteryForecast
from detectors.battery.report import _date, group_order, replacement_group
from service.records import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

KIND = "battery_depletion"
_WATCHED_KINDS = (MessageKind.TELEMETRY, MessageKind.BATCH)


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _float(x: Any, default: float) -> float:
    return default if x is None else float(x)


class BatteryDetector:
    """Forecasts battery depletion per device and raises ``battery_depletion`` alerts.

    Parameters
    ----------
    config
        The settings; defaults to :class:`BatteryConfig` ().
    """

    name = "battery"
    STATE_VERSION = 1

    def __init__(self, config: BatteryConfig | None = None) -> None:
        self.config = config or BatteryConfig()
        self._devices: dict[str, _Device] = {}

    # -- readings ---------------------------------------------------------------------------

    def _chemistry_of(self, meta: Mapping[str, str]) -> str:
        config = self.config
        return chemistry_name(meta.get("model"), meta, config.model_chemistry,
                              config.chemistries, config.default_chemistry)  # fmt: skip

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        config = self.config
        devices = self._devices
        chemistries = config.chemistries
        bucket_s = config.bucket_s
        charging_sources = config.charging_sources
        smoothing = config.temp_smoothing
        reference = config.reference_temp_c
        margin_v, margin_pct = config.sag_margin_v, config.sag_margin_pct
        for reading in batch:
            if reading.late or reading.kind not in _WATCHED_KINDS:
                continue
            metrics = reading.metrics
            value = metrics.get("battery_pct")
            from_pct = value is not None
            if value is None:
                value = metrics.get("battery_v")
                if value is None:
                    continue
            ts = reading.ts
            device = devices.get(reading.device_id)
            meta = reading.meta
            if device is None:
                device = devices[reading.device_id] = _Device(self._chemistry_of(meta))
                device.site, device.zone = meta.get("site"), meta.get("zone")
                device.model = meta.get("model")
            elif ts < device.f[_LAST_TS]:
                continue
            if meta is device.meta:  # the same (immutable) metadata: the same power source
                charging = device.charging
            else:
                device.meta = meta
                charging = meta.get("power_source") in charging_sources
            if charging != device.charging:
                device.charging = charging
                if charging:  # on external power: restart the estimate, nothing is depleting
                    if device.severity:
                        signals.append(self._cleared(reading.device_id, device, ts, "charging"))
                    device.reset_estimate()
                    device._reset_bucket()
            f = device.f
            temperature = metrics.get("temperature_c")
            if temperature is not None:
                old = f[_TEMP]
                f[_TEMP] = temperature if old != old else old + smoothing * (temperature - old)
            if from_pct:
                x = 0.0 if value < 0.0 else 100.0 if value > 100.0 else float(value)
                margin = margin_pct
            else:
                x = value
                temp = f[_TEMP]
                if temp < reference:  # False for nan
                    x += chemistries[device.chemistry].temp_coef_v_per_c * (reference - temp)
                margin = margin_v
            if charging:  # shown, not learned
                if from_pct:
                    f[_OBS_LEVEL], f[_OBS_V] = x, math.nan
                else:
                    f[_OBS_LEVEL] = chemistries[device.chemistry].level(x)
                    f[_OBS_V] = x
                f[_LAST_TS] = ts
                continue
            start = f[_B_START]
            if start == start and (ts >= start + bucket_s or from_pct != device.b_pct):
                signal = self._close_bucket(reading.device_id, device)
                if signal is not None:
                    signals.append(signal)
                start = math.nan
            if start != start:
                f[_B_START] = ts
                device.b_pct = from_pct
            f[_B_TSUM] += ts
            device.b_n += 1
            f[_B_END] = ts
            top = f[_B_TOP]
            if x > top + margin:  # the first value, or one clearly above a sagging start
                f[_B_TOP] = f[_B_SUM] = x
                device.b_cnt = 1
            elif x >= top - margin:  # within the margin of the top: kept (noise averages out)
                f[_B_SUM] += x
                device.b_cnt += 1
                if x > top:
                    f[_B_TOP] = x
            f[_LAST_TS] = ts
        return signals

    def _close_bucket(self, device_id: str, device: _Device) -> Signal | None:
        """Learn from the closed bucket's upper envelope and judge the forecast."""
        config = self.config
        meta = device.meta
        signal: Signal | None = None
        if meta is not None:
            device.site, device.zone = meta.get("site"), meta.get("zone")
            device.model = meta.get("model")
            chemistry = self._chemistry_of(meta)
            if chemistry != device.chemistry:  # a different battery: start afresh
                device.chemistry = chemistry
                device.reset_estimate()
                device._reset_bucket()
                return None
        level, volts = self._bucket_level(device)
        t_new = device.b_tsum / device.b_n / _DAY
        end = device.b_end
        device.b_start = device.b_end = math.nan
        device.b_tsum, device.b_n = 0.0, 0
        device.b_top, device.b_sum, device.b_cnt = _NEG_INF, 0.0, 0
        device.obs_level, device.obs_v = level, volts
        # running median of three bucket levels, one bucket late: a lone dip (or spike) that
        # the envelope let through never reaches the regression
        t = device.f1_t
        if t != t:  # the first bucket: it stands in for its missing predecessor
            device.f0_level = device.f1_level = level
            device.f1_t = t_new
            return None
        a, b = device.f0_level, device.f1_level
        y = max(min(a, b), min(max(a, b), level))
        device.f0_level, device.f1_level, device.f1_t = b, level, t_new
        if device.n == 0:
            self._learn(device, t, y, 1.0)
            return None
        predicted = self._predict(device, t)
        residual = y - predicted
        scale = max(device.scale if device.scale == device.scale else 0.0, config.min_scale_pct)
        if residual > config.swap_jump_pct and residual > config.swap_k * scale:
            # a step up that outlived the median filter: a new battery
            swaps = (*device.swaps, t * _DAY)
            if len(swaps) > config.swap_history:
                swaps = swaps[len(swaps) - config.swap_history :]
            device.swaps = swaps
            if device.severity:
                signal = self._cleared(device_id, device, end, "swap")
            device.reset_estimate()
            self._learn(device, t, y, 1.0)
            return signal
        weight = 1.0
        if device.n >= config.min_samples:
            if residual < -config.reject_k * scale and device.rejects < config.max_rejects:
                device.rejects += 1
                return None  # a sag or glitch: set aside
            if device.rejects < config.max_rejects and abs(residual) > config.huber_k * scale:
                weight = config.huber_k * scale / abs(residual)
            device.rejects = 0
        if device.n >= config.min_samples:
            # a change in usage: residuals that keep one sign. Old data is discounted at
            # once instead of waiting for the forgetting to wear it out.
            clipped = max(-4.0 * scale, min(4.0 * scale, residual))
            device.drift += config.change_alpha * (clipped - device.drift)
            if abs(device.drift) > config.change_k * scale:
                d = config.change_discount
                device.w *= d
                device.w2 *= d * d
                device.ctt *= d
                device.cty *= d
                device.cyy *= d
                device.drift = 0.0
        # robust scale: EW mean absolute one-step residual (x1.25 ~ sigma), clipped
        size = abs(residual)
        if device.scale == device.scale:
            size = min(size, 4.0 * scale)
            alpha = max(1.0 / device.n, 0.05)
            device.scale += alpha * (1.25 * size - device.scale)
        else:
            device.scale = 1.25 * size
        self._learn(device, t, y, weight)
        return self._judge(device_id, device)

    def _bucket_level(self, device: _Device) -> tuple[float, float]:
        """The open bucket's level (%) and voltage (nan for battery_pct)."""
        value = device.b_sum / device.b_cnt
        if device.b_pct:
            return value, math.nan
        return self.config.chemistries[device.chemistry].level(value), value

    def _learn(self, device: _Device, t: float, y: float, weight: float) -> None:
        """Add ``(t days, y %)`` to the forgetting regression (weighted Welford update)."""
        if device.n == 0:
            device.first_t = t
            device.w = weight
            device.w2 = weight * weight
            device.mt, device.my = t, y
            device.ctt = device.cty = device.cyy = 0.0
        else:
            decay = 0.5 ** (max(t - device.last_t, 0.0) * _DAY / self.config.half_life_s)
            w = device.w * decay + weight
            device.w2 = device.w2 * decay * decay + weight * weight
            dt = t - device.mt
            dy = y - device.my
            share = weight / w
            device.mt += share * dt
            device.my += share * dy
            device.ctt = device.ctt * decay + weight * dt * (t - device.mt)
            device.cty = device.cty * decay + weight * dt * (y - device.my)
            device.cyy = device.cyy * decay + weight * dy * (y - device.my)
            device.w = w
        device.n += 1
        device.last_t = t

    @staticmethod
    def _predict(device: _Device, t: float) -> float:
        if device.n >= 2 and device.ctt > 1e-12:
            return device.my + device.cty / device.ctt * (t - device.mt)
        return device.my

    # -- forecasts --------------------------------------------------------------------------

    def _forecast(self, device_id: str, device: _Device) -> BatteryForecast | None:
        config = self.config
        level_obs = device.obs_level
        if level_obs != level_obs and device.n == 0:
            if device.b_n == 0:
                return None
            level_obs, volts = self._bucket_level(device)  # only an open bucket so far
        else:
            volts = device.obs_v
        chemistry = config.chemistries[device.chemistry]
        at = device.last_ts
        curve_sigma = config.pct_sigma if volts != volts else chemistry.level_sigma(volts)
        level = level_obs
        rate: float | None = None
        rate_sigma: float | None = None
        rate_se: float | None = None
        tte = low = high = None
        ready = (
            not device.charging
            and device.n >= config.min_samples
            and (device.last_t - device.first_t) * _DAY >= config.min_history_s
            and device.ctt > 1e-12
        )
        level_sigma = curve_sigma
        if ready:
            slope = device.cty / device.ctt
            t = at / _DAY
            level = device.my + slope * (t - device.mt)
            w, w2 = device.w, device.w2
            n_eff = w * w / w2
            rss = max(device.cyy - slope * device.cty, 0.0)
            var = rss / w * n_eff / max(n_eff - 2.0, 1.0)
            var_slope = var * (w2 / w) / device.ctt
            var_level = var * w2 / (w * w) + (t - device.mt) ** 2 * var_slope
            level = min(max(level, 0.0), 100.0)
            level_sigma = math.sqrt(curve_sigma * curve_sigma + var_level)
            rate = -slope
            rel = math.hypot(config.rate_rel_sigma, curve_sigma / max(level, 10.0))
            rate_sigma = math.sqrt(var_slope + (rel * rate) ** 2)
            rate_se = math.sqrt(var_slope)
            if rate > config.min_rate_pct_per_day:
                usable = self._usable(device.temp)
                z = config.interval_z
                tte = level * usable / rate * _DAY
                low = max(level - z * level_sigma, 0.0) * usable / (rate + z * rate_sigma) * _DAY
                slow = rate - z * rate_sigma
                if slow > 1e-9:
                    high = min(level + z * level_sigma, 100.0) * usable / slow * _DAY
                    high = max(high, tte)
        return BatteryForecast(
            device_id=device_id,
            site=device.site,
            zone=device.zone,
            model=device.model,
            chemistry=device.chemistry,
            level_pct=level,
            level_sigma_pct=level_sigma,
            voltage=None if volts != volts else volts,
            rate_pct_per_day=rate,
            rate_sigma_pct_per_day=rate_sigma,
            rate_se_pct_per_day=rate_se,
            tte_s=tte,
            tte_low_s=low,
            tte_high_s=high,
            empty_at=None if tte is None else at + tte,
            last_ts=at,
            samples=device.n,
            charging=device.charging,
            swaps=tuple(device.swaps),
        )

    def _usable(self, temp: float) -> float:
        """Usable share of the remaining charge at ``temp`` °C (1 when unknown or warm)."""
        config = self.config
        if not temp < config.cold_start_c:
            return 1.0
        share = 1.0 - config.cold_capacity_per_c * (config.cold_start_c - temp)
        return max(share, config.cold_capacity_floor)

    def forecasts(self) -> list[BatteryForecast]:
        """The current forecast of every device with a battery level, by device id."""
        out: list[BatteryForecast] = []
        for device_id in sorted(self._devices):
            forecast = self._forecast(device_id, self._devices[device_id])
            if forecast is not None:
                out.append(forecast)
        return out

    def forecast(self, device_id: str) -> BatteryForecast | None:
        """The current forecast of one device (``None`` if unknown)."""
        device = self._devices.get(device_id)
        return None if device is None else self._forecast(device_id, device)

    def device_view(self, device_id: str) -> dict[str, Any] | None:
        """The device's battery forecast as plain data (the fleet view's device twin)."""
        forecast = self.forecast(device_id)
        return None if forecast is None else dataclasses.asdict(forecast)

    # -- alerts -----------------------------------------------------------------------------

    def _judge(self, device_id: str, device: _Device) -> Signal | None:
        config = self.config
        forecast = self._forecast(device_id, device)
        if forecast is None or forecast.rate_pct_per_day is None:
            return None
        # judged on a cautious time to empty: the rate at its lower confidence bound (the
        # regression's own error only), so a young, noisy estimate does not fire
        rate = forecast.rate_pct_per_day - config.interval_z * (forecast.rate_se_pct_per_day or 0.0)
        tte = math.inf
        if forecast.tte_s is not None and rate > config.min_rate_pct_per_day:
            tte = forecast.level_pct * self._usable(device.temp) / rate * _DAY
        # rising: charging (not a swap, not noise around a flat level)
        rising = forecast.rate_pct_per_day < -(
            config.min_rate_pct_per_day
            + config.interval_z * (forecast.rate_sigma_pct_per_day or 0.0)
        )
        low_level = forecast.level_pct <= config.critical_level_pct and not rising
        want = 0
        if low_level or tte < config.horizon_critical_s:
            want = Severity.CRITICAL.value
        elif tte < config.horizon_warning_s:
            want = Severity.WARNING.value
        active = device.severity
        if active:
            if want == 0 and (
                tte < config.horizon_warning_s * config.clear_hysteresis
                or (
                    forecast.level_pct <= config.critical_level_pct + config.level_hysteresis_pct
                    and not rising
                )
            ):
                want = active
            want = max(want, active) if want else 0
        if want == active:
            return None
        if want == 0:
            return self._cleared(device_id, device, forecast.last_ts, "forecast", forecast)
        device.severity = want
        return self._firing(forecast, Severity(want))

    def _firing(self, fc: BatteryForecast, severity: Severity) -> Signal:
        evidence = self._evidence(fc)
        where = ", ".join(x for x in (fc.site, fc.zone) if x)
        volts = f" ({fc.voltage:.2f} V)" if fc.voltage is not None else ""
        rate = fc.rate_pct_per_day or 0.0
        if fc.tte_s is not None and fc.tte_low_s is not None:
            high = "open" if fc.tte_high_s is None else f"{fc.tte_high_s / _DAY:.1f}"
            summary = (
                f"{fc.device_id}: battery {fc.level_pct:.0f}%{volts}, falling {rate:.2f} %/day, "
                f"empty in about {fc.tte_s / _DAY:.1f} days "
                f"({fc.tte_low_s / _DAY:.1f} to {high} days)"
            )
            before = _date(fc.last_ts + fc.tte_low_s)
            action = f"Replace the battery of {fc.device_id}" + (f" ({where})" if where else "")
            if severity is Severity.CRITICAL and (
                fc.tte_low_s < 2 * _DAY or fc.level_pct <= self.config.critical_level_pct
            ):
                action += f" now: it may be empty by {before}."
            else:
                action += f" before {before}."
        else:
            summary = f"{fc.device_id}: battery at {fc.level_pct:.0f}%{volts}, almost empty"
            action = f"Replace the battery of {fc.device_id}" + (f" ({where})" if where else "")
            action += f" now: it is at {fc.level_pct:.0f}%."
        return Signal(
            kind=KIND,
            subject=fc.device_id,
            firing=True,
            at=fc.last_ts,
            severity=severity,
            subject_type=SubjectType.DEVICE,
            summary=summary,
            evidence=evidence,
            action=action,
            site=fc.site,
            zone=fc.zone,
        )

    def _cleared(
        self,
        device_id: str,
        device: _Device,
        at: float,
        reason: str,
        fc: BatteryForecast | None = None,
    ) -> Signal:
        severity = Severity(device.severity) if device.severity else Severity.WARNING
        device.severity = 0
        text = {
            "swap": "battery replaced",
            "charging": "on external power",
            "forecast": "battery forecast back to normal",
        }[reason]
        evidence: dict[str, Any] = {"reason": reason, "chemistry": device.chemistry}
        if fc is not None:
            evidence.update(self._evidence(fc))
            if fc.tte_s is not None:
                text += f" (empty in about {fc.tte_s / _DAY:.0f} days)"
        return Signal(
            kind=KIND,
            subject=device_id,
            firing=False,
            at=at,
            severity=severity,
            subject_type=SubjectType.DEVICE,
            summary=f"{device_id}: {text}",
            evidence=evidence,
            action="",
            site=device.site,
            zone=device.zone,
        )

    @staticmethod
    def _evidence(fc: BatteryForecast) -> dict[str, Any]:
        def days(x: float | None) -> float | None:
            return None if x is None else round(x / _DAY, 3)

        return {
            "level_pct": round(fc.level_pct, 2),
            "level_sigma_pct": round(fc.level_sigma_pct, 2),
            "voltage": None if fc.voltage is None else round(fc.voltage, 4),
            "rate_pct_per_day": None
            if fc.rate_pct_per_day is None
            else round(fc.rate_pct_per_day, 4),
            "tte_days": days(fc.tte_s),
            "tte_low_days": days(fc.tte_low_s),
            "tte_high_days": days(fc.tte_high_s),
            "empty_at": None if fc.empty_at is None else iso_utc(fc.empty_at),
            "chemistry": fc.chemistry,
            "samples": fc.samples,
        }

    def tick(self, now: float) -> list[Signal]:
        return []

    # -- report -----------------------------------------------------------------------------

    def report(self, now: float) -> dict[str, Any]:
        """The detector's published report: the replacement plan."""
        return self.replacement_plan(now)

    def replacement_plan(
        self,
        now: float,
        criticality: Mapping[str, float] | None = None,
        horizon_s: float | None = None,
    ) -> dict[str, Any]:
        """Devices forecast empty within ``horizon_s`` (default: the warning horizon).

        Each device's priority is its time to empty from ``now`` (days) divided by its
        criticality (looked up by device id, then model; default 1): lower is more urgent.
        Devices are grouped by site and zone so one visit covers neighbours; groups are
        ordered by their most urgent device, devices within a group by priority. A device
        whose level is at or under the critical level counts as empty now.
        """
        config = self.config
        horizon = config.horizon_warning_s if horizon_s is None else horizon_s
        weights = criticality or {}
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for fc in self.forecasts():
            if fc.charging:
                continue
            if fc.empty_at is not None:
                remaining = max(fc.empty_at - now, 0.0)
                earliest = fc.last_ts + (fc.tte_low_s or 0.0)
            elif fc.level_pct <= config.critical_level_pct and fc.rate_pct_per_day is not None:
                remaining, earliest = 0.0, now
            else:
                continue
            if fc.level_pct <= config.critical_level_pct:
                remaining, earliest = 0.0, now
            if remaining > horizon:
                continue
            weight = weights.get(fc.device_id)
            if weight is None and fc.model is not None:
                weight = weights.get(fc.model)
            weight = 1.0 if weight is None or weight <= 0 else float(weight)
            entry = {
                "device_id": fc.device_id,
                "model": fc.model,
                "chemistry": fc.chemistry,
                "level_pct": round(fc.level_pct, 1),
                "rate_pct_per_day": None
                if fc.rate_pct_per_day is None
                else round(fc.rate_pct_per_day, 3),
                "tte_days": round(remaining / _DAY, 2),
                "empty_at": None if fc.empty_at is None else iso_utc(fc.empty_at),
                "replace_before": _date(max(earliest, now)),
                "criticality": weight,
                "priority": round(remaining / _DAY / weight, 3),
            }
            groups.setdefault((fc.site or "", fc.zone or ""), []).append(entry)
        ordered = [
            replacement_group(site, zone, entries) for (site, zone), entries in groups.items()
        ]
        ordered.sort(key=group_order)
        return {
            "generated_at": iso_utc(now),
            "horizon_days": round(horizon / _DAY, 3),
            "devices": sum(len(g["devices"]) for g in ordered),
            "groups": ordered,
        }

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for device_id, d in self._devices.items():
            devices[device_id] = {
                "chemistry": d.chemistry,
                "site": d.site,
                "zone": d.zone,
                "model": d.model,
                "charging": d.charging,
                "severity": d.severity,
                "swaps": list(d.swaps),
                "n": d.n,
                "b_n": d.b_n,
                "b_cnt": d.b_cnt,
                "b_pct": d.b_pct,
                "rejects": d.rejects,
                "f": [_json_float(x) for x in d.f],
            }
        return {"version": self.STATE_VERSION, "devices": devices}

    def load_state(self, state: dict[str, Any]) -> None:
        self._devices = {}
        if state.get("version") != self.STATE_VERSION:
            return
        config = self.config
        for device_id, data in dict(state.get("devices", {})).items():
            chemistry = str(data.get("chemistry", config.default_chemistry))
            if chemistry not in config.chemistries:
                chemistry = config.default_chemistry
            d = _Device(chemistry)
            d.site, d.zone, d.model = data.get("site"), data.get("zone"), data.get("model")
            d.charging = bool(data.get("charging", False))
            d.severity = int(data.get("severity", 0))
            swaps = [float(x) for x in data.get("swaps", [])]
            d.swaps = tuple(swaps[max(len(swaps) - config.swap_history, 0) :])
            d.n = int(data.get("n", 0))
            d.b_n = int(data.get("b_n", 0))
            d.b_cnt = int(data.get("b_cnt", 0))
            d.b_pct = bool(data.get("b_pct", False))
            d.rejects = int(data.get("rejects", 0))
            values = list(data.get("f", []))
            if len(values) != len(_FLOATS):
                continue
            d.f = array("d", map(_float, values, _FRESH))
            self._devices[str(device_id)] = d
