"""The power detector's settings (:class:`PowerConfig`), read from plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from detectors.base import reject_unknown
from detectors.battery import CHEMISTRIES, power_source_settings


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
