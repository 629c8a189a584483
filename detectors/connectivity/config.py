"""The connectivity detector's settings: the ``[detectors.connectivity]`` table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from detectors.base import reject_unknown


@dataclass(frozen=True, slots=True)
class ConnectivityConfig:
    """Parameters; every one has a default that suits a fleet reporting every 1-60 minutes.

    Each device's loss rate ``p`` (lost reports over expected ones, forgetting over
    ``loss_window_s``, starting from ``loss_prior`` worth ``loss_prior_reports`` reports) is
    the baseline: a silence of ``k`` lost reports is a *gap* when ``p**k < gap_level`` (and
    it is longer than ``gap_factor`` intervals), the device is *offline* once the reports it
    missed are that improbable at ``offline_level`` (and it is silent ``offline_factor``
    intervals and ``min_offline_s``), and its link is *intermittent* when at least
    ``intermittent_gaps`` gaps within ``intermittent_window_s`` are more than independent
    loss at ``p`` explains (one-sided Poisson test at ``intermittent_alpha``).
    """

    offline_factor: float = 3.0
    min_offline_s: float = 120.0
    offline_level: float = 1e-8
    gap_factor: float = 1.5
    gap_level: float = 1e-3
    burst_s: float = 2.0
    persistent_s: float = 3_600.0
    intermittent_gaps: int = 4
    intermittent_window_s: float = 86_400.0
    intermittent_alpha: float = 1e-3
    loss_window_s: float = 7 * 86_400.0
    loss_prior: float = 0.01
    loss_prior_reports: float = 100.0
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

    def __post_init__(self) -> None:
        for name in ("offline_level", "gap_level", "intermittent_alpha", "loss_prior"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"connectivity setting {name} must be between 0 and 1")
        if not self.loss_window_s > 0.0 or not self.loss_prior_reports > 0.0:
            raise ValueError(
                "connectivity settings loss_window_s and loss_prior_reports must be positive"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ConnectivityConfig:
        """Build from plain data (a TOML table); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "connectivity")
        return cls(**dict(data))
