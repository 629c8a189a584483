"""The environment detector's settings (:class:`EnvironmentConfig`) and the default
environmental bands, read from plain data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from detectors.base import reject_unknown

_BANDS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "temperature_c": (("below 0 °C", -math.inf, 0.0), ("0-30 °C", 0.0, 30.0),
                      ("30-40 °C", 30.0, 40.0), ("above 40 °C", 40.0, math.inf)),
    "humidity_pct": (("below 30 %RH", -math.inf, 30.0), ("30-70 %RH", 30.0, 70.0),
                     ("above 70 %RH", 70.0, math.inf)),
    "vibration_g": (("below 0.5 g", -math.inf, 0.5), ("0.5-1 g", 0.5, 1.0),
                    ("above 1 g", 1.0, math.inf)),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class EnvironmentConfig:
    bands: Mapping[str, tuple[tuple[str, float, float], ...]] = field(
        default_factory=lambda: dict(_BANDS)
    )
    smoothing: float = 0.05
    hot_c: float = 40.0
    humid_pct: float = 80.0
    shaking_g: float = 1.0
    evaluate_every_s: float = 3_600.0
    min_devices: int = 5
    min_ratio: float = 1.5
    alpha: float = 0.01
    report_limit: int = 50

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EnvironmentConfig:
        known = {f.name for f in fields(cls)} - {"bands"}
        reject_unknown(data, known, "environment")
        return cls(**dict(data))
