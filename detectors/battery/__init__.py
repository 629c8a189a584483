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

The package: ``chemistry`` holds the discharge curves and the choice of a device's chemistry,
``config`` the settings, ``device_state`` the per-device state, ``forecast`` the published
forecast record, ``report`` the pieces of the replacement plan, and ``detector`` the
:class:`BatteryDetector` itself.

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

from detectors.battery.chemistry import (
    CHEMISTRIES,
    Chemistry,
    chemistry_name,
    power_source_settings,
)
from detectors.battery.config import BatteryConfig, battery_config_from_dict
from detectors.battery.detector import BatteryDetector
from detectors.battery.report import group_order, replacement_group

__all__ = [
    "CHEMISTRIES",
    "BatteryConfig",
    "BatteryDetector",
    "Chemistry",
    "battery_config_from_dict",
    "chemistry_name",
    "group_order",
    "power_source_settings",
    "replacement_group",
]
