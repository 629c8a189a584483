"""The drift detector's parameters: :class:`DriftConfig`, its defaults, and reading it from
plain data (a ``[detectors.drift]`` TOML table)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from detectors.base import reject_unknown

_DAY = 86_400.0


def _default_floors() -> dict[str, float]:
    return {"temperature_c": 10.0, "humidity_pct": 10.0}


def _default_tolerance_floors() -> dict[str, float]:
    return {"temperature_c": 0.5, "humidity_pct": 2.0}


def _default_ranges() -> dict[str, tuple[float, float]]:
    return {
        "temperature_c": (-40.0, 125.0),
        "humidity_pct": (0.0, 100.0),
        "pressure_kpa": (30.0, 110.0),
    }


def _default_bands() -> dict[str, tuple[float, ...]]:
    return {
        "temperature_c": (10.0, 25.0, 40.0),
        "humidity_pct": (40.0, 70.0),
        "vibration_g": (0.5, 1.0, 2.0),
    }


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Parameters of :class:`DriftDetector`; the defaults suit sensors reporting every 1-15 min.

    Tolerances are relative (``rel_tolerance`` of the reading, with the reading's magnitude
    taken as at least ``rel_floor[metric]``, else ``default_rel_floor``) unless the metric has an
    ``abs_tolerance`` (in its unit). A sensor's effective tolerance is never below
    ``tolerance_floor[metric]`` (in the metric's unit), ``noise_tolerance`` times its own
    measured noise, or ``resolution_tolerance`` times its resolution (the smallest nonzero
    step between its readings). Times are seconds of device time.
    """

    metrics: tuple[str, ...] = ("temperature_c", "humidity_pct", "pressure_kpa")
    rel_tolerance: float = 0.02
    abs_tolerance: Mapping[str, float] = field(default_factory=dict)
    rel_floor: Mapping[str, float] = field(default_factory=_default_floors)
    default_rel_floor: float = 1.0
    tolerance_floor: Mapping[str, float] = field(default_factory=_default_tolerance_floors)
    noise_tolerance: float = 3.0
    resolution_tolerance: float = 2.0
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=_default_ranges)
    group_by: tuple[str, ...] = ("site", "zone")
    bucket_s: float = 300.0
    lateness_s: float = 300.0
    idle_close_s: float = 900.0
    max_open_buckets: int = 24
    carry_s: float = 1_800.0
    min_peers: int = 3
    reference_devices: tuple[str, ...] = ()
    reference_weight: float = 3.0
    warmup_buckets: int = 288
    ewma_alpha: float = 0.05
    cusum_h: float = 10.0
    fire_z: float = 5.0
    early_fraction: float = 0.5
    clear_fraction: float = 0.25
    horizon_s: float = 30 * _DAY
    rate_sample_s: float = 4 * 3_600.0
    rate_window: int = 42
    rate_min_samples: int = 6
    rate_min_t: float = 3.0
    predict_min_fraction: float = 0.25
    step_window: int = 96
    step_lr: float = 25.0
    recent_buckets: int = 72
    noisy_ratio: float = 3.0
    spike_z: float = 8.0
    spike_count: int = 3
    spike_window_buckets: int = 288
    stuck_buckets: int = 12
    stuck_resolutions: float = 2.0
    transient_gate: float = 1.0
    transient_buckets: int = 2
    clear_buckets: int = 6
    mode_switch_buckets: int = 12
    alone_factor: float = 3.0
    profile_alpha: float = 0.02
    profile_min_count: int = 24
    alone_level_buckets: float = 36.0
    verify_buckets: int = 12
    verify_max_buckets: int = 288
    calibration_history: int = 16
    environment_metrics: tuple[str, ...] = ("temperature_c", "humidity_pct", "vibration_g")
    environment_bands: Mapping[str, tuple[float, ...]] = field(default_factory=_default_bands)
    environment_alpha: float = 0.01
    environment_min_n: int = 3

    def __post_init__(self) -> None:
        positive = ("rel_tolerance", "bucket_s", "ewma_alpha", "cusum_h", "rate_sample_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"drift setting {name} must be positive")
        if not 0 < self.ewma_alpha <= 1 or not 0 < self.profile_alpha <= 1:
            raise ValueError("drift settings ewma_alpha and profile_alpha must be in (0, 1]")
        if not 0 < self.clear_fraction < 1 or not 0 < self.early_fraction <= 1:
            raise ValueError("drift settings clear_fraction and early_fraction must be in (0, 1)")
        minimum_one = (
            "min_peers", "warmup_buckets", "rate_window", "step_window", "recent_buckets",
            "spike_count", "stuck_buckets", "clear_buckets", "mode_switch_buckets",
            "verify_buckets", "calibration_history", "max_open_buckets",
        )  # fmt: skip
        for name in minimum_one:
            if getattr(self, name) < 1:
                raise ValueError(f"drift setting {name} must be at least 1")
        if self.alone_level_buckets < 1:
            raise ValueError("drift setting alone_level_buckets must be at least 1")
        for name in (
            "noise_tolerance",
            "resolution_tolerance",
            "stuck_resolutions",
            "transient_gate",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"drift setting {name} must not be negative")
        if self.transient_buckets < 0:
            raise ValueError("drift setting transient_buckets must not be negative")
        if not self.step_lr > 0:
            raise ValueError("drift setting step_lr must be positive")
        for metric, floor in self.tolerance_floor.items():
            if floor < 0:
                raise ValueError(f"drift tolerance_floor for {metric} must not be negative")
        if self.lateness_s < 0 or self.idle_close_s < 0:
            raise ValueError("drift settings lateness_s and idle_close_s must not be negative")
        for metric, tolerance in self.abs_tolerance.items():
            if not tolerance > 0:
                raise ValueError(f"drift abs_tolerance for {metric} must be positive")
        for metric, (low, high) in self.ranges.items():
            if not low < high:
                raise ValueError(f"drift range for {metric} must have min below max")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DriftConfig:
        """Build from plain data (a TOML/JSON table); unknown keys are an error.

        >>> DriftConfig.from_mapping({"metrics": ["pressure_kpa"], "ranges": {"pressure_kpa":
        ...     [800, 1200]}, "abs_tolerance": {"pressure_kpa": 2.5}}).ranges
        {'pressure_kpa': (800.0, 1200.0)}
        """
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "drift")
        values: dict[str, Any] = dict(data)
        for name in ("metrics", "group_by", "reference_devices", "environment_metrics"):
            if name in values:
                raw = values[name]
                values[name] = (raw,) if isinstance(raw, str) else tuple(str(x) for x in raw)
        for name in ("abs_tolerance", "rel_floor", "tolerance_floor"):
            if name in values:
                values[name] = {str(k): float(v) for k, v in dict(values[name]).items()}
        if "ranges" in values:
            ranges: dict[str, tuple[float, float]] = {}
            for metric, pair in dict(values["ranges"]).items():
                low, high = pair
                ranges[str(metric)] = (float(low), float(high))
            values["ranges"] = ranges
        if "environment_bands" in values:
            values["environment_bands"] = {
                str(k): tuple(sorted(float(x) for x in v))
                for k, v in dict(values["environment_bands"]).items()
            }
        return cls(**values)


def drift_config_from_dict(data: Mapping[str, Any]) -> DriftConfig:
    """:meth:`DriftConfig.from_mapping` as a function."""
    return DriftConfig.from_mapping(data)
