"""The battery detector's settings (:class:`BatteryConfig`), read from plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from detectors.base import reject_unknown
from detectors.battery.chemistry import CHEMISTRIES, Chemistry, power_source_settings

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class BatteryConfig:
    """Settings of :class:`BatteryDetector` (see :mod:`detectors.battery` for their roles)."""

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
