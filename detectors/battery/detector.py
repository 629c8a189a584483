"""Battery depletion: per device, how fast the battery empties and when it will be empty.

**Level.** Each reading gives a state of charge in percent, from ``battery_pct`` when the
device reports it (preferred: usually a fuel gauge), else from ``battery_v`` through the
discharge curve of the device's chemistry (piecewise linear, volts -> percent). The chemistry
comes from the device model through :attr:`BatteryConfig.model_chemistry`, else from a
``battery_chemistry`` meta key, else :attr:`BatteryConfig.default_chemistry`. Built in:

- ``li_ion``: one cell, 4.2 V full to 3.0 V empty;
- ``li_socl2``: 3.67 V full, a long flat plateau around 3.6-3.5 V, a knee, 3.0 V empty;
- ``alkaline_2aa``: two cells in series, 3.2 V full to 2.0 V empty.

Every level carries a curve uncertainty: how far the level moves when the voltage is off by
the chemistry's ``voltage_sigma_v`` (measurement, load, cell-to-cell spread). On a flat part
of a curve (the Li-SOCl2 plateau) a few millivolts span tens of percent, so the level and the
forecast say they are uncertain there.

**Cold.** When a device reports ``temperature_c`` (smoothed per device), voltages are
corrected up by the chemistry's ``temp_coef_v_per_c`` per degree below
``reference_temp_c`` (cells read low in the cold), and below ``cold_start_c`` the usable
share of the remaining charge is taken as ``1 - cold_capacity_per_c`` per degree below it
(floored at ``cold_capacity_floor``), which shortens the time to empty.

**Noise and load sag.** Readings are pooled in buckets of ``bucket_s`` (one hour); each
bucket contributes the mean of its values within ``sag_margin_v`` (``sag_margin_pct`` for
``battery_pct``) of its highest value, an upper envelope: a radio transmission or motor
start drags the voltage down for a moment, never up, so readings far below the top are set
aside, while the noise of the rest averages out (a plain maximum would read high by about
1.5 noise sigmas, which on a flat curve is many percent). Bucket levels then pass a running
median of three (one bucket late), so a lone low (or high) bucket never reaches the estimate,
and a robust residual test against the current fit: a level far below the prediction (more than
``reject_k`` robust scales) is set aside, up to ``max_rejects`` times in a row (a drop that
persists is real); the others are Huber-weighted (beyond ``huber_k`` scales their weight
shrinks). The robust scale is an exponentially weighted mean absolute residual.

**Discharge rate.** An exponentially forgetting weighted linear regression of level on time
(half-life ``half_life_s``), kept as weighted means and co-moments (Welford form, a dozen
floats per device, O(1) per bucket); its slope is the discharge rate in %/day and the time
to empty is ``level * usable / rate``. A change in usage shows as one-step residuals that
keep one sign: when their exponentially weighted mean (``change_alpha``) exceeds
``change_k`` robust scales, the old data's weight is cut to ``change_discount`` at once, so
the rate is re-estimated within a day or two rather than a few half-lives. The interval
(``interval_z`` standard errors) combines the regression's standard errors (effective number
of samples under forgetting, residuals taken as independent), the curve uncertainty of the
level, and a relative model uncertainty of the rate (``rate_rel_sigma``, inflated where the
curve is flat): ``low = (level - z*s_level) / (rate + z*s_rate)``, ``high = (level +
z*s_level) / (rate - z*s_rate)``, unbounded (``None``) when the rate may be zero.

**Swaps and charging.** A level more than ``swap_jump_pct`` (and ``swap_k`` robust scales)
above the prediction, in two buckets in a row (it must pass the median filter), is a battery
replacement: its time goes in the device's swap history (the last ``swap_history``), the
estimate starts afresh and an active alert clears. A device whose meta ``power_source`` is
in ``charging_sources`` (``mains``, ``charging``) is not depleting: its estimate restarts
when it goes back on battery. A level that rises steadily gives a negative rate: not
depleting, no forecast, no alert.

**Alerts** (kind ``battery_depletion``, edge triggered, judged when a bucket closes, once
``min_samples`` buckets over ``min_history_s`` are in the estimate): WARNING when the
time to empty falls under ``horizon_warning_s``, CRITICAL under ``horizon_critical_s`` or
when the level is at most ``critical_level_pct`` (and not rising). The time to empty judged
is a cautious one: the level over the rate at its lower confidence bound from the
regression's own standard error, so a young, noisy estimate does not fire (the curve's
uncertainty is left out of this, or a Li-SOCl2 cell would never be judged on its plateau).
A warning that becomes critical fires again; severity never steps down while active (the
alert lifecycle only escalates). It clears when the forecast is back above
``clear_hysteresis`` times the warning horizon (and the level above the critical level plus
``level_hysteresis_pct``), on a battery swap, or when the device starts charging. Evidence:
level, voltage, rate, time to empty and its interval (days), chemistry, samples; the action
says by which date to replace the battery (the interval's early end).

Late readings (and readings older than the device's latest) are skipped. A reading costs a
few dictionary look-ups and comparisons (about 2 µs); the curve and the regression run once
per bucket. Memory per device: about thirty numbers and at most ``swap_history`` swap times.

>>> from service.records import Reading
>>> det = BatteryDetector()
>>> meta = {"site": "s1", "zone": "z1", "model": "M1"}
>>> for hour in range(72):  # 2 %/day from 80 %
...     t = hour * 3600.0
...     _ = det.process([Reading("d1", t, t, {"battery_pct": 80 - 2 * hour / 24}, meta)])
>>> fc = det.forecasts()[0]
>>> round(fc.rate_pct_per_day, 2), round(fc.tte_s / 86_400, 1)
(2.0, 37.0)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from array import array
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import pairwise
from typing import Any, overload

from detectors.base import reject_unknown
from service.records import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

KIND = "battery_depletion"
_DAY = 86_400.0
_WATCHED_KINDS = (MessageKind.TELEMETRY, MessageKind.BATCH)
_NEG_INF = -math.inf  # one shared float for every device's "nothing yet"


@dataclass(frozen=True, slots=True)
class Chemistry:
    """A battery chemistry: its discharge curve and how its voltage misleads.

    ``curve`` is ``(volts, percent)`` points with ascending volts and non-decreasing percent;
    levels are interpolated linearly between points and clamped outside them.

    >>> c = Chemistry("x", ((3.0, 0.0), (4.0, 100.0)), voltage_sigma_v=0.05)
    >>> c.level(3.5), c.level(5.0), round(c.level_sigma(3.5), 6)
    (50.0, 100.0, 5.0)
    """

    name: str
    curve: tuple[tuple[float, float], ...]
    voltage_sigma_v: float = 0.02
    temp_coef_v_per_c: float = 0.002
    _volts: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _pcts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        points = tuple((float(v), float(p)) for v, p in self.curve)
        if len(points) < 2:
            raise ValueError(f"chemistry {self.name!r}: a curve needs at least two points")
        for (v0, p0), (v1, p1) in pairwise(points):
            if v1 <= v0 or p1 < p0:
                raise ValueError(
                    f"chemistry {self.name!r}: curve volts must ascend and percent not descend"
                )
        if self.voltage_sigma_v < 0:
            raise ValueError(f"chemistry {self.name!r}: voltage_sigma_v must not be negative")
        object.__setattr__(self, "curve", points)
        object.__setattr__(self, "_volts", tuple(v for v, _ in points))
        object.__setattr__(self, "_pcts", tuple(p for _, p in points))

    def level(self, volts: float) -> float:
        """State of charge (%) at ``volts`` (temperature-corrected)."""
        vs = self._volts
        i = bisect_right(vs, volts)
        if i == 0:
            return self._pcts[0]
        if i == len(vs):
            return self._pcts[-1]
        v0 = vs[i - 1]
        p0 = self._pcts[i - 1]
        return p0 + (self._pcts[i] - p0) * (volts - v0) / (vs[i] - v0)

    def volts_at(self, level: float) -> float:
        """The resting voltage at ``level`` percent (the curve read backwards).

        >>> Chemistry("x", ((3.0, 0.0), (4.0, 100.0))).volts_at(25.0)
        3.25
        """
        pcts = self._pcts
        if level <= pcts[0]:
            return self._volts[0]
        if level >= pcts[-1]:
            return self._volts[-1]
        i = bisect_right(pcts, level)
        p0, p1 = pcts[i - 1], pcts[i]
        v0, v1 = self._volts[i - 1], self._volts[i]
        return v0 + (v1 - v0) * (level - p0) / (p1 - p0) if p1 > p0 else v1

    def level_sigma(self, volts: float) -> float:
        """How far the level moves for ``voltage_sigma_v`` either way (% points)."""
        s = self.voltage_sigma_v
        return 0.5 * (self.level(volts + s) - self.level(volts - s))

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any]) -> Chemistry:
        known = {"curve", "voltage_sigma_v", "temp_coef_v_per_c"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"chemistry {name!r}: unknown settings {', '.join(sorted(unknown))}")
        curve = tuple((float(v), float(p)) for v, p in data["curve"])
        return cls(
            name=name,
            curve=curve,
            voltage_sigma_v=float(data.get("voltage_sigma_v", 0.02)),
            temp_coef_v_per_c=float(data.get("temp_coef_v_per_c", 0.002)),
        )


def power_source_settings(values: dict[str, Any]) -> None:
    """Convert the plain-data ``model_chemistry`` and ``charging_sources`` settings shared by
    the battery and power detectors, in place.

    >>> values = {"model_chemistry": {"TH-9": "li_socl2"}, "charging_sources": "mains"}
    >>> power_source_settings(values); values
    {'model_chemistry': {'TH-9': 'li_socl2'}, 'charging_sources': ('mains',)}
    """
    if "model_chemistry" in values:
        values["model_chemistry"] = {
            str(k): str(v) for k, v in dict(values["model_chemistry"]).items()
        }
    if "charging_sources" in values:
        raw = values["charging_sources"]
        values["charging_sources"] = (raw,) if isinstance(raw, str) else tuple(str(x) for x in raw)


def chemistry_name(
    model: str | None,
    meta: Mapping[str, str],
    by_model: Mapping[str, str],
    known: Mapping[str, Chemistry],
    default: str,
) -> str:
    """A device's battery chemistry: configured for its model, else named by its
    ``battery_chemistry`` metadata (when known), else the default.

    >>> chemistry_name("TH-9", {}, {"TH-9": "li_socl2"}, CHEMISTRIES, "li_ion")
    'li_socl2'
    >>> chemistry_name(None, {"battery_chemistry": "nimh"}, {}, CHEMISTRIES, "li_ion")
    'li_ion'
    """
    if model is not None and model in by_model:
        return by_model[model]
    named = meta.get("battery_chemistry")
    if named is not None and named in known:
        return named
    return default


CHEMISTRIES: dict[str, Chemistry] = {
    "li_ion": Chemistry(
        "li_ion",
        ((3.00, 0.0), (3.30, 3.0), (3.50, 8.0), (3.60, 15.0), (3.70, 35.0), (3.80, 55.0),
         (3.90, 70.0), (4.00, 82.0), (4.10, 92.0), (4.20, 100.0)),
        voltage_sigma_v=0.02,
        temp_coef_v_per_c=0.002,
    ),
    "li_socl2": Chemistry(
        "li_socl2",
        ((3.00, 0.0), (3.20, 1.0), (3.35, 3.0), (3.45, 6.0), (3.50, 10.0), (3.55, 25.0),
         (3.60, 70.0), (3.65, 95.0), (3.67, 100.0)),
        voltage_sigma_v=0.02,
        temp_coef_v_per_c=0.0015,
    ),
    "alkaline_2aa": Chemistry(
        "alkaline_2aa",
        ((2.00, 0.0), (2.20, 5.0), (2.40, 15.0), (2.60, 35.0), (2.80, 60.0), (3.00, 85.0),
         (3.20, 100.0)),
        voltage_sigma_v=0.03,
        temp_coef_v_per_c=0.004,
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BatteryConfig:
    """Settings of :class:`BatteryDetector` (see the module docstring for their roles)."""

    horizon_warning_s: float = 30 * _DAY
    horizon_critical_s: float = 7 * _DAY
    critical_level_pct: float = 5.0
    clear_hysteresis: float = 1.2
    level_hysteresis_pct: float = 2.0
    model_chemistry: Mapping[str, str] = field(default_factory=dict)
    default_chemistry: str = "li_ion"
    chemistries: Mapping[str, Chemistry] = field(default_factory=lambda: dict(CHEMISTRIES))
    bucket_s: float = 3_600.0
    half_life_s: float = 3 * _DAY
    min_history_s: float = _DAY
    min_samples: int = 6
    swap_jump_pct: float = 20.0
    swap_k: float = 4.0
    huber_k: float = 2.0
    reject_k: float = 5.0
    max_rejects: int = 3
    sag_margin_v: float = 0.05
    sag_margin_pct: float = 5.0
    change_alpha: float = 0.1
    change_k: float = 0.75
    change_discount: float = 0.25
    min_scale_pct: float = 0.25
    pct_sigma: float = 2.0
    rate_rel_sigma: float = 0.1
    min_rate_pct_per_day: float = 0.01
    interval_z: float = 1.645
    reference_temp_c: float = 20.0
    temp_smoothing: float = 0.1
    cold_start_c: float = 0.0
    cold_capacity_per_c: float = 0.01
    cold_capacity_floor: float = 0.5
    charging_sources: tuple[str, ...] = ("mains", "charging")
    swap_history: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.horizon_critical_s <= self.horizon_warning_s:
            raise ValueError("need 0 < horizon_critical_s <= horizon_warning_s")
        if self.clear_hysteresis < 1.0:
            raise ValueError("clear_hysteresis must be at least 1")
        if self.bucket_s <= 0 or self.half_life_s <= 0:
            raise ValueError("bucket_s and half_life_s must be positive")
        if self.min_samples < 2:
            raise ValueError("min_samples must be at least 2")
        if self.default_chemistry not in self.chemistries:
            raise ValueError(f"unknown default_chemistry {self.default_chemistry!r}")
        for model, name in self.model_chemistry.items():
            if name not in self.chemistries:
                raise ValueError(f"model {model!r}: unknown chemistry {name!r}")
        if not 0 < self.cold_capacity_floor <= 1:
            raise ValueError("cold_capacity_floor must be in (0, 1]")
        if not 0 < self.temp_smoothing <= 1:
            raise ValueError("temp_smoothing must be in (0, 1]")
        if self.swap_history < 0 or self.max_rejects < 0:
            raise ValueError("swap_history and max_rejects must not be negative")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BatteryConfig:
        """Build from plain data (a TOML/JSON table); unknown keys are an error.

        ``chemistries`` entries (``{"curve": [[volts, pct], ...], "voltage_sigma_v": ...,
        "temp_coef_v_per_c": ...}``) add to or replace the built-in ones.

        >>> cfg = BatteryConfig.from_mapping({"horizon_warning_s": 1_209_600,
        ...     "model_chemistry": {"TH-9": "li_socl2"}, "charging_sources": ["mains"]})
        >>> cfg.horizon_warning_s / 86_400, cfg.model_chemistry, cfg.charging_sources
        (14.0, {'TH-9': 'li_socl2'}, ('mains',))
        """
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "battery")
        values: dict[str, Any] = dict(data)
        power_source_settings(values)
        if "chemistries" in values:
            merged = dict(CHEMISTRIES)
            for name, spec in dict(values["chemistries"]).items():
                merged[str(name)] = (
                    spec if isinstance(spec, Chemistry) else Chemistry.from_mapping(str(name), spec)
                )
            values["chemistries"] = merged
        for name in ("min_samples", "max_rejects", "swap_history"):
            if name in values:
                values[name] = int(values[name])
        for f in fields(cls):
            if f.type == "float" and f.name in values:
                values[f.name] = float(values[f.name])
        return cls(**values)


def battery_config_from_dict(data: Mapping[str, Any]) -> BatteryConfig:
    """:meth:`BatteryConfig.from_mapping` as a function."""
    return BatteryConfig.from_mapping(data)


@dataclass(frozen=True, slots=True)
class BatteryForecast:
    """A device's current battery forecast (times in epoch seconds, durations in seconds).

    ``rate_pct_per_day`` is ``None`` until enough history is in the estimate; ``tte_s``,
    ``tte_low_s`` and ``empty_at`` are ``None`` when the battery is not depleting (or no rate
    is known yet); ``tte_high_s`` is ``None`` when the interval is unbounded above.
    """

    device_id: str
    site: str | None
    zone: str | None
    model: str | None
    chemistry: str
    level_pct: float
    level_sigma_pct: float
    voltage: float | None
    rate_pct_per_day: float | None
    rate_sigma_pct_per_day: float | None
    rate_se_pct_per_day: float | None
    tte_s: float | None
    tte_low_s: float | None
    tte_high_s: float | None
    empty_at: float | None
    last_ts: float
    samples: int
    charging: bool
    swaps: tuple[float, ...]


# the persisted float fields of a device, in order: their places in ``_Device.f``
_FLOATS = (
    "b_start", "b_end", "b_tsum", "b_top", "b_sum", "first_t", "last_t", "w", "w2", "mt",
    "my", "ctt", "cty", "cyy", "scale", "drift", "f0_level", "f1_level", "f1_t", "obs_level",
    "obs_v", "temp", "last_ts",
)  # fmt: skip
(_B_START, _B_END, _B_TSUM, _B_TOP, _B_SUM, _FIRST_T, _LAST_T, _W, _W2, _MT, _MY, _CTT, _CTY,
 _CYY, _SCALE, _DRIFT, _F0_LEVEL, _F1_LEVEL, _F1_T, _OBS_LEVEL, _OBS_V, _TEMP,
 _LAST_TS) = range(len(_FLOATS))  # fmt: skip
_NAN = math.nan
# a new device's floats (see _Device)
_FRESH = array("d", [_NAN, _NAN, 0.0, _NEG_INF, 0.0, _NAN, _NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                     0.0, _NAN, 0.0, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NEG_INF])  # fmt: skip


class _Float:
    """One of a device's floats, read and written by name (kept unboxed in ``_Device.f``)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    @overload
    def __get__(self, device: None, owner: type) -> _Float: ...
    @overload
    def __get__(self, device: _Device, owner: type) -> float: ...
    def __get__(self, device: _Device | None, owner: type) -> float | _Float:
        return self if device is None else device.f[self.index]

    def __set__(self, device: _Device, value: float) -> None:
        device.f[self.index] = value


class _Device:
    """Per-device state: a fixed number of floats plus a bounded swap history.

    The floats (``_FLOATS``) live unboxed in one array, 8 bytes each; the hot path indexes
    it, the rest reads and writes them by name.
    """

    __slots__ = (
        "b_cnt", "b_n", "b_pct", "charging", "chemistry", "f", "meta", "model", "n", "rejects",
        "severity", "site", "swaps", "zone",
    )  # fmt: skip

    b_start = _Float(_B_START)
    b_end = _Float(_B_END)
    b_tsum = _Float(_B_TSUM)  # sum of the open bucket's times
    b_top = _Float(_B_TOP)  # highest value (% or corrected V) in the bucket
    b_sum = _Float(_B_SUM)  # sum of the values within the sag margin of the top
    first_t = _Float(_FIRST_T)
    last_t = _Float(_LAST_T)  # days
    w = _Float(_W)
    w2 = _Float(_W2)
    mt = _Float(_MT)  # days
    my = _Float(_MY)
    ctt = _Float(_CTT)
    cty = _Float(_CTY)
    cyy = _Float(_CYY)
    scale = _Float(_SCALE)
    drift = _Float(_DRIFT)  # EW mean of the signed one-step residuals
    f0_level = _Float(_F0_LEVEL)  # the two previous bucket levels
    f1_level = _Float(_F1_LEVEL)
    f1_t = _Float(_F1_T)  # time of the previous bucket (days), awaiting its output
    obs_level = _Float(_OBS_LEVEL)  # latest bucket level
    obs_v = _Float(_OBS_V)  # its voltage (corrected), nan for battery_pct
    temp = _Float(_TEMP)  # smoothed temperature_c
    last_ts = _Float(_LAST_TS)  # latest reading used

    def __init__(self, chemistry: str) -> None:
        self.chemistry = chemistry
        self.site: str | None = None
        self.zone: str | None = None
        self.model: str | None = None
        self.meta: Mapping[str, str] | None = None  # latest meta, not persisted
        self.charging = False
        self.severity = 0  # 0: no active alert, else the Severity value
        self.swaps: tuple[float, ...] = ()  # battery swap times, oldest first
        self.f = array("d", _FRESH)
        self.b_n = 0
        self.b_cnt = 0  # count of the values within the sag margin of the top
        self.b_pct = False  # the bucket holds battery_pct values (else volts)
        self.n = 0  # buckets in the estimate
        self.rejects = 0

    def _reset_bucket(self) -> None:
        """Forget the open bucket and the median filter's buffer."""
        f = self.f
        f[_F0_LEVEL] = f[_F1_LEVEL] = f[_F1_T] = f[_B_START] = f[_B_END] = _NAN
        f[_B_TSUM] = f[_B_SUM] = 0.0
        f[_B_TOP] = _NEG_INF
        self.b_n = 0
        self.b_cnt = 0
        self.b_pct = False

    def reset_estimate(self) -> None:
        f = self.f
        self.n = 0
        f[_FIRST_T] = f[_LAST_T] = f[_SCALE] = _NAN
        f[_W] = f[_W2] = f[_MT] = f[_MY] = f[_CTT] = f[_CTY] = f[_CYY] = f[_DRIFT] = 0.0
        self.rejects = 0


def replacement_group(site: str, zone: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's group of the devices of one site and zone due for a battery: ``entries``
    sorted most urgent first (lowest priority value), the group's priority and date theirs.

    >>> group = replacement_group("plant-a", "", [
    ...     {"device_id": "b", "priority": 2.0, "tte_days": 4.0, "replace_before": "2026-03-02"},
    ...     {"device_id": "a", "priority": 1.0, "tte_days": 9.0, "replace_before": "2026-03-01"}])
    >>> group["zone"], group["priority"], group["replace_before"], [e["device_id"] for e in group["devices"]]
    (None, 1.0, '2026-03-01', ['a', 'b'])
    """
    entries.sort(key=lambda e: (e["priority"], e["tte_days"], e["device_id"]))
    return {
        "site": site or None,
        "zone": zone or None,
        "priority": entries[0]["priority"],
        "replace_before": min(e["replace_before"] for e in entries),
        "devices": entries,
    }


def group_order(group: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where a replacement group stands in the report: most urgent first, then by place."""
    return (group["priority"], group["site"] or "", group["zone"] or "")


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


def _date(ts: float) -> str:
    """The UTC calendar date of ``ts`` (ISO 8601)."""
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).date().isoformat()
