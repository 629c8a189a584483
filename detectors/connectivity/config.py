"""The connectivity detector's settings: the ``[detectors.connectivity]`` table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from detectors.base import reject_unknown


@dataclass(frozen=True, slots=True)
class ConnectivityConfig:
    """Parameters; every one has a default that suits a fleet reporting every 1-60 minutes."""

    offline_factor: float = 3.0
    min_offline_s: float = 120.0
    gap_factor: float = 2.0
    burst_s: float = 2.0
    persistent_s: float = 3_600.0
    intermittent_gaps: int = 4
    intermittent_window_s: float = 86_400.0
    gateway_factor: float = 1.5
    gateway_offline_fraction: float = 0.8
    gateway_min_devices: int = 3
    gateway_resolve_fraction: float = 0.5
    active_window_s: float = 86_400.0
    signal_window: int = 24
    signal_horizon_s: float = 86_400.0
    signal_min_drop_db: float = 3.0
    signal_min_t: float = 5.0
    signal_spacing_s: float = 300.0
    history: int = 64
    pattern_window_s: float = 7 * 86_400.0
    pattern_alpha: float = 0.01

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ConnectivityConfig:
        """Build from plain data (a TOML table); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "connectivity")
        return cls(**dict(data))
