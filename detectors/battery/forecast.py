"""A device's battery forecast as the battery detector publishes it."""

from __future__ import annotations

from dataclasses import dataclass


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
