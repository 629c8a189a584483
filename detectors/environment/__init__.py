"""Environmental correlation: which operating conditions go with which trouble.

For every device, online and in constant memory: its environment (exponentially weighted
temperature, humidity and vibration from its own readings), the stress it has accumulated
(hours above ``hot_c``, above ``humid_pct``, above ``shaking_g``), and its outcomes:

- **lost reports**: reports missing between arrivals, judged against its own rhythm (the
  median of its recent gaps);
- **battery drain**: volts per day, the least-squares slope over the battery's readings,
  compared only between cells of the same battery type (metadata ``battery_chemistry``,
  else ``model``), since cells of different chemistries lose volts at rates that cannot be
  compared;
- **update failures**: failed against attempted firmware updates.

Every ``evaluate_every_s`` (data time) the devices are put in environmental bands (e.g.
temperature above 40 °C) per site and zone, and each band is compared with the rest of the
fleet with a stated test: a one-sided two-proportion z-test for lost reports and update
failures, a one-sided Mann-Whitney U test for battery drain (each drain over the median
drain of its battery type outside the band). A band whose outcome is at least
``min_ratio`` times worse at ``p < alpha`` (Bonferroni-corrected over the bands tried) is a
finding, reported in plain words with its numbers, and raises ``environment_risk`` on its
zone until it no longer holds. The report also ranks devices by accumulated stress, the
ones to maintain first.

"The rest of the fleet" is the whole fleet even when it is split over several detectors
(worker processes, see :mod:`service.runtime.fleet_facts`): each gives what the others need
(:meth:`EnvironmentDetector.fleet_summary`: its numbers of candidate bands, its lost and
expected reports and failed and attempted updates summed, its battery drains per battery
type) and takes
theirs (:meth:`EnvironmentDetector.apply_fleet_summary`), so a zone's band is tested against
the devices of every part, with the Bonferroni correction over every part's candidate
bands. The drains are sent as they are up to ``DRAIN_SKETCH`` distinct values per summary,
beyond that as ``DRAIN_SKETCH`` equal-count quantiles (then the drain test is approximate).

The package: :mod:`~detectors.environment.config` (the settings and the default bands),
:mod:`~detectors.environment.fleet` (every device's state in a few typed columns),
:mod:`~detectors.environment.comparisons` (the statistical tests of a band against the rest
of the fleet, what they compare and the drain sketch exchanged between parts),
:mod:`~detectors.environment.findings` (a finding in plain words, with its advice) and
:mod:`~detectors.environment.detector` (the online detector: readings, evaluations, report,
fleet summaries, checkpoints).

>>> from service.records import Reading
>>> det = EnvironmentDetector(EnvironmentConfig(min_devices=2))
>>> hot = [Reading(f"h{i}", 0.0, 0.0, {"temperature_c": 50.0}, {"site": "s", "zone": "z1"})
...        for i in range(3)]
>>> _ = det.process(hot)
>>> det.report(0.0)["devices"]
3
"""

from detectors.environment.comparisons import DRAIN_SKETCH, Sketch, battery_type, drain_sketch
from detectors.environment.config import EnvironmentConfig
from detectors.environment.detector import EnvironmentDetector

__all__ = [
    "DRAIN_SKETCH",
    "EnvironmentConfig",
    "EnvironmentDetector",
    "Sketch",
    "battery_type",
    "drain_sketch",
]
