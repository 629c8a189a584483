"""Sensor drift and sensor faults, judged against the sensor's peers.

A sensor that ages reads a little more wrong every week; a broken one jumps, sticks, gets
noisy, spikes or leaves its physical range. Both show best against *peers*: the sensors of
the same metric in the same place (by default the same site and zone), which see the same
environment.

**Alignment.** Readings come at different moments and rates, so each peer group aligns them
into time buckets (``bucket_s``, 5 minutes by default), keeping each device's latest value
in the bucket. A bucket closes once the data of its group has passed its end by
``lateness_s`` (or ``tick(now)`` has passed it by ``idle_close_s``); readings for a closed
bucket are dropped.

**Residuals.** When a bucket closes, each device gets a *consensus*: the median of its peers'
values, each less that peer's learned offset (so the consensus does not move when peers with
different installation offsets leave or join it), excluding itself, excluding values outside
the physical range, and excluding peers currently flagged (unless that leaves fewer than
``min_peers``); peers that reported in the bucket come before those carried from an earlier
one (in a defrost a value minutes old is degrees off). Trusted reference devices count
``reference_weight`` times in a weighted median. The residual is
``(value - consensus) / max(|consensus|, floor)`` (relative, the default) or
``value - consensus`` for metrics given an absolute tolerance. A whole group that moves
together moves its consensus, so residuals stay small: an environment change is not drift.
A bucket in which a sensor's consensus moved more than ``transient_gate`` tolerances since
its previous bucket is a *transient* (a defrost, a door, machines starting): there its
residual says when it reported and how fast it follows, not how well it reads, so it and the
next ``transient_buckets`` are not judged for drift (for stuck and out of range they are).

**Tolerance.** ``rel_tolerance`` of the reading (or ``abs_tolerance``), at the sensor's typical
magnitude, but never finer than ``tolerance_floor[metric]`` in the metric's unit (0.5 °C and
2 %RH by default: 2 % of a 4 °C chiller would be 0.08 °C), than ``resolution_tolerance``
times the sensor's *resolution* (the smallest nonzero step between two of its values, learned
as it reports), or than ``noise_tolerance`` times its measured noise (which is itself never
taken below half a resolution step of the sensor or its peers: the MAD of values on a grid
may be 0). The evidence gives the tolerance in the metric's unit and which term set it.

**Drift.** Each device learns its normal offset to the consensus (median of ``value -
consensus`` over the first ``warmup_buckets``, in the metric's unit: installation offsets are
additive) and its noise (MAD of the residual, and MAD of its bucket-to-bucket differences).
Drift is ``(value - consensus - offset)`` made relative, median-filtered over 5 buckets
(an isolated spike cannot move it), then followed by

- a two-sided CUSUM on the normalised drift (allowance of a quarter tolerance, threshold
  ``cusum_h``), which says a change *is* there; and
- an EWMA (``ewma_alpha``), which says how large it is. ``sensor_drift`` fires only when
  both agree: the CUSUM has alarmed *and* the EWMA is past the tolerance (and never less
  than ``fire_z`` standard errors of the EWMA itself), or past ``early_fraction`` (half) of
  it with a significant rate that will take it out of tolerance within ``horizon_s`` (an
  early warning, ``out_of_tolerance: false`` in the evidence).

The drift rate is a Theil-Sen slope over the last ``rate_window`` means of
``rate_sample_s`` (4 h) each (at least ``rate_min_samples``; an early warning's, two days of
them, so a daily wave is not a trend), significant when it is ``rate_min_t`` times its
standard error; it gives the rate per day and the date the sensor will leave tolerance.

**Shapes.** ``ageing`` (a ramp), reported as ``sensor_drift`` (WARNING), or ``step``: the test
``step_vs_ramp_lr`` fits a linear ramp and a one-break step (two levels, each lasting at
least an eighth of ``step_window``, an hour) to the last ``step_window`` drifts; a step is a
likelihood ratio ``(RSS_ramp - RSS_step) / sigma**2`` (``sigma``: the robust scale of the step
model's residuals, at least the learned noise) of at least ``step_lr``, a jump of half the
threshold and half the drift or more, and a level after it that does not slope back (a
transient fading); a break too recent to judge waits. The evidence's ``shape_test`` gives the
ratio, the threshold and the jump. The failures are reported as ``sensor_fault``: ``step`` (a
sudden offset, WARNING), ``spikes`` (``spike_count`` isolated outliers of ``spike_z`` sigmas
within ``spike_window_buckets``, WARNING), ``noisy`` (the robust noise of the last
``recent_buckets`` is ``noisy_ratio`` times the learned one, WARNING), ``stuck`` (the same
value for ``stuck_buckets`` while the consensus, smoothed over a few buckets, moved over the
last few hours by more than ``stuck_resolutions`` steps of the sensor's resolution, or of its
peers' while it has never changed, and more than its noise: a cold room steady within one
step is not stuck; CRITICAL) and ``out_of_range`` (outside the physical range, CRITICAL).

**No peers.** A device with fewer than ``min_peers`` peers for ``mode_switch_buckets`` is
compared with its own expectation: a local level (EWMA over ``alone_level_buckets``, which
follows the weather) plus an hour-of-day profile around it (24 EWMA bins). Its tolerance is
``alone_factor`` times larger, and slow changes are absorbed by the level, so only clear
faults are flagged (jumps, stuck, noisy, spikes, out of range); ageing needs peers.

**Calibration.** A reading of kind ``calibration`` (or with ``meta["event"] ==
"calibration"``; ``meta["metric"]`` may name the metrics, comma-separated) is recorded in the
device's calibration history, resets its baseline and drift state, clears its alerts and
starts a verification: ``verify_buckets`` consecutive buckets agreeing with the peers
(within tolerance of the old normal offset) record ``verified``; ``verify_max_buckets``
without record ``verification_failed``.

Signals are edge-triggered per ``(kind, device)``; when several metrics of a device are
flagged, the worst one gives the evidence and ``evidence["metrics"]`` lists them all.
:meth:`DriftDetector.recalibration_schedule` orders the sensors by the date they leave (or
left) tolerance and correlates drift rates with the environment the devices report.

The package: :mod:`~detectors.drift.config` (the parameters), :mod:`~detectors.drift.detector`
(the detector), :mod:`~detectors.drift.peers` (peer groups, buckets and the consensus),
:mod:`~detectors.drift.sensor` (what is kept per sensor), :mod:`~detectors.drift.change_tests`
(the tests and shapes), :mod:`~detectors.drift.signals` (evidence and signals),
:mod:`~detectors.drift.schedule` (the recalibration report),
:mod:`~detectors.drift.robust_stats` and :mod:`~detectors.drift.containers`.

>>> from service.records import Reading
>>> cfg = DriftConfig(metrics=("pressure_kpa",), bucket_s=60, lateness_s=0, warmup_buckets=20)
>>> det = DriftDetector(cfg)
>>> fired = []
>>> for i in range(120):
...     t = 60.0 * i
...     for d in range(5):
...         v = 100.0 + 0.1 * (i % 7) + 0.01 * ((i * (d + 3)) % 5)
...         if d == 0 and i >= 60:
...             v *= 1.05  # a +5 % step
...         meta = {"site": "s1", "zone": "z1"}
...         fired += det.process([Reading(f"p{d}", t + d, t + d, {"pressure_kpa": v}, meta)])
>>> [(s.subject, s.kind, s.evidence["shape"]) for s in fired]
[('p0', 'sensor_fault', 'step')]
"""

from __future__ import annotations

from detectors.drift.config import DriftConfig, drift_config_from_dict
from detectors.drift.detector import DriftDetector
from detectors.drift.robust_stats import mann_whitney_greater, theil_sen
from detectors.drift.schedule import schedule_order
from detectors.drift.signals import DRIFT_KIND, FAULT_KIND

__all__ = [
    "DRIFT_KIND",
    "FAULT_KIND",
    "DriftConfig",
    "DriftDetector",
    "drift_config_from_dict",
    "mann_whitney_greater",
    "schedule_order",
    "theil_sen",
]
