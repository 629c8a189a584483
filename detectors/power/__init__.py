"""Power-consumption anomalies: a device whose draw says its hardware is failing.

Readings are averaged per device into hourly points of its power draw (``power_mw``, or
``current_a`` times ``voltage_v``) and, for devices that report no power at all, of its
battery discharge rate: a rising discharge rate is a power anomaly too. The discharge rate
is the least-squares slope, in percent of charge per day, of the hourly median battery level
over the last ``drain_window_h`` hours (widened up to ``drain_window_max_h`` while the
slope's standard error exceeds ``drain_precision`` of the rate; a rate that imprecise is
neither judged nor learned); the level is ``battery_pct`` or ``battery_v`` read
through the device's chemistry curve (``model_chemistry``, the ``battery_chemistry`` meta
key, else ``default_chemistry``), corrected for the cold, so the rate is as steady as the
draw is whatever the chemistry. A charging device (``power_source`` in
``charging_sources``) or a new battery starts the rate afresh. Each point is judged before
it is learned, against two references:

- the device's **own baseline**: an exponentially weighted mean and mean absolute deviation
  with a long half-life (``baseline_half_life_h``), frozen while the device is flagged;
- its **fleet baseline**: the same statistics over every device of its model and operating
  mode (``mode`` metadata when reported), so a device that was bad from the start is seen.

Shapes, told apart:

- ``spike``: one point far out (``spike_z`` deviations) that the next point does not
  confirm (reported only as evidence, never alerted: spikes are everyday);
- ``step``: a sudden rise confirmed by ``step_points`` consecutive points above
  ``step_z`` (a short circuit, a stuck relay, a radio that stopped sleeping);
- ``creep``: a slow rise: the short-term mean (``short_half_life_h``) drifted more than
  ``creep_fraction`` above the long baseline with a monotone trend over ``trend_points``
  (for a discharge rate, ``drain_creep_fraction`` and also ``creep_z`` standard errors of
  the rate's own fit: a rate read off a voltage curve wanders as the level crosses the
  curve's bends);
- ``fleet_outlier``: the device's own level is ``fleet_ratio`` times its model's (power
  draw only: a discharge rate in percent depends on the battery's capacity and the duty
  cycle it was set up with, so drain rates are judged against the device's own past).

When the fleet is split over several detectors (worker processes, see
:mod:`service.runtime.fleet_facts`), a model's baseline and its number of devices are combined with
what the others gave at the last exchange (:meth:`PowerDetector.fleet_summary`,
:meth:`PowerDetector.apply_fleet_summary`): the devices are added up, and the baselines
averaged, each weighted by the devices that fed it over the last ``baseline_half_life_h``
(each gives one point a bucket, so the weights are the parts' shares of the model's
points). One detector's baseline forgets a little with every point of the model, wherever it
comes from; a part sees only its share of them, so it forgets as much per point of its own
as one detector does over the points of the whole model that arrive meanwhile. The combined
baseline then follows one detector's closely (on a simulated fleet split in two: within
0.2 % for half the judgements, 1 % for nine in ten) but not to the last digit, as
one detector's depends on the order in which the points of different parts arrive:
``fleet_outlier`` decisions agree unless a level is that close to the threshold.

A ``power_anomaly`` signal carries the shape, the level, both baselines, the excess and the
point's novelty score from a :class:`detectors.anomaly.NoveltyScorer` run over the device's
points (how far outside anything the device has shown), and clears when the level is back
within half the threshold.

The package: :mod:`~detectors.power.config` (the settings),
:mod:`~detectors.power.stats` (the running statistics of the baselines and the trend test),
:mod:`~detectors.power.drain` (the discharge-rate model), :mod:`~detectors.power.device`
(what is kept per device) and :mod:`~detectors.power.detector` (the online detector:
points, judgements, fleet summaries, checkpoints).

>>> from service.records import Reading
>>> det = PowerDetector()
>>> signals = []
>>> for h in range(24 * 8):
...     draw = 100.0 + (h % 3) + (100.0 if h >= 24 * 7 else 0.0)  # doubles on day 8
...     signals += det.process([Reading("d1", h * 3600.0, h * 3600.0, {"power_mw": draw})])
>>> [(s.kind, s.evidence["shape"]) for s in signals if s.firing]
[('power_anomaly', 'step')]
"""

from detectors.power.config import PowerConfig
from detectors.power.detector import PowerDetector

__all__ = ["PowerConfig", "PowerDetector"]
