"""Connectivity: devices that went quiet, gateways that went down, links that are fading.

Time here is *receive* time (``reading.received_at``), because connectivity is about when
FleetWatch hears from a device, not about the device's own clock: a device whose clock is
skewed cannot fake a gap, and a gateway that uploads a buffered batch after an outage is one
arrival, not many.

Per device, online and in bounded memory:

- the **expected interval** between arrivals, learned as an exponentially weighted mean
  with outliers clipped (devices report from every few seconds to every few hours); bursts
  (several readings within ``burst_s``) count as one arrival, so batched uploads are fine;
- **offline**: silent for ``offline_factor`` times its interval (and at least
  ``min_offline_s``). The alert says whether the trouble is *persistent* (one long outage)
  or *intermittent* (many short gaps), with the gap history as evidence;
- **intermittent connectivity**: ``intermittent_gaps`` or more gaps (silences longer than
  ``gap_factor`` intervals) within ``intermittent_window_s``, even when none is long enough
  to count as offline;
- **signal degrading**: a least-squares trend of RSSI (or SNR, link quality) over the last
  readings that will cross the loss level within ``signal_horizon_s``.

Per gateway, the root cause: when ``gateway_offline_fraction`` of the devices behind one
gateway (at least ``gateway_min_devices``) are all silent for ``gateway_factor`` times their
own interval, one ``gateway_down`` alert is raised and the per-device offline alerts it
explains are held back; it resolves when its devices are heard again. Devices that roam
between gateways are followed (the gateway is the one on the latest reading).

:meth:`ConnectivityDetector.report` adds the patterns: outages concentrated at some hours
of the day (chi-square test against a uniform spread over 24 hours), in one zone compared
with the rest of its site, or on one radio technology compared with the rest of the fleet
(one-sided binomial tests), and devices that switch technology.

The package: :mod:`~detectors.connectivity.config` (the settings),
:mod:`~detectors.connectivity.device` (what is kept per device),
:mod:`~detectors.connectivity.detector` (the online detector: arrivals, gaps, silence,
gateways, checkpoints), :mod:`~detectors.connectivity.trend` (the signal trend fit),
:mod:`~detectors.connectivity.patterns` (the outage patterns of the report) and
:mod:`~detectors.connectivity.history` (the same rules over stored history, column by
column).

>>> from service.records import Reading
>>> det = ConnectivityDetector(ConnectivityConfig(min_offline_s=0))
>>> for t in range(0, 600, 60):
...     _ = det.process([Reading("d1", t, t, {"rssi_dbm": -70.0})])
>>> [s.kind for s in det.tick(now=540 + 60 * 3.5)]
['device_offline']
>>> [s.firing for s in det.process([Reading("d1", 800.0, 800.0, {})])]
[False]
"""

from detectors.connectivity.config import ConnectivityConfig
from detectors.connectivity.detector import ConnectivityDetector

__all__ = ["ConnectivityConfig", "ConnectivityDetector"]
