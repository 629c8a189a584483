"""Connectivity: devices that went quiet, gateways that went down, links that are fading.

Time here is *receive* time (``reading.received_at``), because connectivity is about when
FleetWatch hears from a device, not about the device's own clock: a device whose clock is
skewed cannot fake a gap, and a gateway that uploads a buffered batch after an outage is one
arrival, not many.

Per device, online and in bounded memory:

- the **expected interval** between arrivals, learned as an exponentially weighted mean
  with outliers clipped (devices report from every few seconds to every few hours), from
  arrivals *in order* only: a reading delivered late (older than the newest one seen, by
  its counter ``seq`` when it has one, else by its own clock) is neither an arrival nor part
  of the rhythm. Bursts (several readings within ``burst_s``) count as one arrival, so a
  batch uploaded after a gap ends the gap when it arrives, and the reading right behind it
  is learned at the spacing the device sent it with, not as a short interval;
- its **loss rate** ``p``: reports lost over reports expected (from the silence over the
  interval, or from ``seq``), forgetting over ``loss_window_s`` and starting from
  ``loss_prior``; reports lost in gaps are not counted, so ``p`` is the rate of independent
  loss, the baseline for what a gap is;
- a **gap**: a silence of ``k`` lost reports (longer than ``gap_factor`` intervals) that is
  improbable under independent loss, ``p**k < gap_level``: at 1 % loss one lost report is
  ordinary, two in a row are a gap;
- **offline**: silent so long that the reports missed are improbable at ``offline_level``
  (and at least ``offline_factor`` intervals and ``min_offline_s``). The alert says how long
  the device has been silent against which interval (class *ongoing*, or *intermittent*
  when its link had gaps in the window) and is escalated to critical, *persistent*, once
  silent ``persistent_s``;
- **intermittent connectivity**: at least ``intermittent_gaps`` gaps within
  ``intermittent_window_s`` and more than independent loss at ``p`` explains: a one-sided
  Poisson test (a report starts a gap with probability ``(1 - p) p**k``) at
  ``intermittent_alpha``, judged when a gap closes; the test, ``p`` and the expected and
  observed gaps are the evidence. A device that loses many reports, but one at a time, has
  few gaps and is not intermittent: its loss rate is in its device view (and in its
  alerts' evidence), not alerted;
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

A device reporting every minute loses three single reports in an hour: ordinary at its loss
rate (2.5 %), no alert. Silent, it is offline after seven intervals, once that many reports
lost in a row are improbable at that rate:

>>> from service.records import Reading
>>> det = ConnectivityDetector(ConnectivityConfig(min_offline_s=0))
>>> raised = []
>>> for t in range(0, 3600, 60):
...     if t // 60 not in (7, 19, 33):
...         raised += det.process([Reading("d1", t, t, {"rssi_dbm": -70.0})])
>>> raised, det.device_view("d1")["loss_rate"], det.device_view("d1")["offline_after_s"]
([], 0.02527, 424.0)
>>> det.tick(now=3540 + 410)
[]
>>> [(s.kind, s.evidence["class"]) for s in det.tick(now=3540 + 430)]
[('device_offline', 'ongoing')]
>>> [s.firing for s in det.process([Reading("d1", 4000.0, 4000.0, {})])]
[False]
"""

from detectors.connectivity.config import ConnectivityConfig
from detectors.connectivity.detector import ConnectivityDetector

__all__ = ["ConnectivityConfig", "ConnectivityDetector"]
