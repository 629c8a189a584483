"""Connectivity over stored history, column by column: months of readings in seconds.

The live connectivity detector (:mod:`detectors.connectivity`) judges readings one at a
time as they arrive. Asked instead "what happened to these 10,000 devices over the last 30
days?", :func:`analyze_history` takes the stored readings as two NumPy columns (device
index, receive time) and answers with the same rules, vectorised:

- each device's reporting interval: the mean of its gaps between reports, counting only
  gaps shorter than twice a first rough mean (so outages do not stretch it);
- each device's loss rate ``p``: reports lost (a silence of ``k + 1`` intervals lost ``k``)
  over reports expected, over the whole history, a gap counted as one lost report, from
  ``loss_prior``; and its gaps: silences of ``k`` lost reports with ``p**k < gap_level``
  (longer than ``gap_factor`` intervals);
- outages: silences so long that the reports missed are improbable at ``offline_level``
  (and longer than ``offline_factor`` intervals and ``min_offline_s``); each with its
  device, start and length, classed ``persistent`` from ``persistent_s``;
- intermittent devices: at least ``intermittent_gaps`` gaps within some
  ``intermittent_window_s`` (windows from the epoch), more than independent loss at ``p``
  explains (one-sided Poisson test at ``intermittent_alpha``);
- patterns: outage starts (when the first report went missing) by hour of day against a
  uniform spread (chi-square), and per zone the share of devices with outages against the
  rest of the fleet's (one-sided binomial test, Bonferroni-corrected at ``pattern_alpha``).

>>> import numpy as np
>>> t = np.arange(0.0, 86_400.0, 300.0)
>>> ts = np.concatenate([t, np.delete(t, range(100, 130))])   # device 1 loses 30 reports
>>> dev = np.repeat([0, 1], [len(t), len(t) - 30])
>>> report = analyze_history(dev, ts, names=["a", "b"])
>>> [(o["device"], round(o["duration_s"] / 3600, 1), o["persistent"]) for o in report["outages"]]
[('b', 2.6, True)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from detectors.connectivity.config import ConnectivityConfig


def analyze_history(
    devices: NDArray[np.integer[Any]],
    received: NDArray[np.floating[Any]],
    *,
    names: Sequence[str],
    zones: Sequence[str] | None = None,
    config: ConnectivityConfig | None = None,
    max_outages: int = 10_000,
) -> dict[str, Any]:
    """Outages, intermittent devices and outage patterns in stored readings.

    ``devices[i]`` indexes ``names`` (and ``zones``, one per device); ``received[i]`` is the
    receive time (epoch seconds) of reading ``i``. Rows may come in any order.
    """
    config = config or ConnectivityConfig()
    if devices.shape != received.shape:
        raise ValueError("devices and received must have the same length")
    n_devices = len(names)
    if zones is not None and len(zones) != n_devices:
        raise ValueError("zones needs one entry per device")
    dev = np.asarray(devices, dtype=np.int64)
    ts = np.asarray(received, dtype=np.float64)
    if len(dev) and (dev.min() < 0 or dev.max() >= n_devices):
        raise ValueError("a device index is outside names")
    if len(dev) > 1 and not (
        np.all(dev[1:] >= dev[:-1]) and np.all((dev[1:] != dev[:-1]) | (ts[1:] >= ts[:-1]))
    ):
        order = np.lexsort((ts, dev))
        dev, ts = dev[order], ts[order]
    gap = np.diff(ts)
    owner = dev[1:]
    same = owner == dev[:-1]
    gap, owner, start = gap[same], owner[same], ts[:-1][same]

    # the reporting interval, robust to outages: a rough mean, then the mean below twice it
    counts = np.bincount(owner, minlength=n_devices)
    rough = np.bincount(owner, weights=gap, minlength=n_devices) / np.maximum(counts, 1)
    usual = gap < 2.0 * rough[owner]
    kept = np.bincount(owner[usual], minlength=n_devices)
    interval = np.bincount(owner[usual], weights=gap[usual], minlength=n_devices) / np.maximum(
        kept, 1
    )
    known = kept[owner] > 0
    spacing = interval[owner]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = gap / spacing
    # the silences that lost reports, and how many (a silence of k + 1 intervals lost k)
    lossy = np.flatnonzero(known & (ratio >= 1.5))
    lossy_owner = owner[lossy]
    lossy_lost = np.rint(ratio[lossy]) - 1.0
    all_lost = np.bincount(lossy_owner, weights=lossy_lost, minlength=n_devices)
    all_expected = np.where(kept > 0, counts, 0) + all_lost
    can_gap = ratio[lossy] > config.gap_factor
    # each device's loss rate, its gaps counted as one lost report: found from single
    # losses being ordinary, then from the rate that gives (two rounds settle it)
    prior = config.loss_prior_reports
    gap_lost = np.full(n_devices, 2.0)
    for _ in range(2):
        is_gap = can_gap & (lossy_lost >= gap_lost[lossy_owner])
        less = np.bincount(lossy_owner[is_gap], weights=lossy_lost[is_gap] - 1.0,
                           minlength=n_devices)  # fmt: skip
        loss = (all_lost - less + config.loss_prior * prior) / (all_expected - less + prior)
        # the fewest lost in a row with p**k below gap_level
        gap_lost = np.maximum(np.floor(np.log(config.gap_level) / np.log(loss)) + 1.0, 1.0)
    is_gap = can_gap & (lossy_lost >= gap_lost[lossy_owner])
    gappy = lossy[is_gap]

    # offline: k lost in a row with p**k at most offline_level, and offline_factor intervals
    offline_lost = np.clip(np.ceil(np.log(config.offline_level) / np.log(loss) - 1e-9), 1.0, 59.0)
    factor = np.maximum(offline_lost + 1.0, config.offline_factor)
    limit = np.maximum(factor[owner] * spacing, config.min_offline_s)
    down = (gap > limit) & known
    # an outage starts when the first report went missing
    out_dev, out_start, out_len = owner[down], start[down] + interval[owner[down]], gap[down]

    # intermittent: enough gaps within one window, counted per device and window, and more
    # than independent loss explains: a report starts a gap with probability (1 - p) p**k
    window = np.floor(start[gappy] / config.intermittent_window_s).astype(np.int64)
    intermittent: list[str] = []
    if len(window):
        window -= window.min()
        stride = int(window.max()) + 1
        per_window = np.bincount(owner[gappy] * stride + window)
        busy = np.nonzero(per_window >= config.intermittent_gaps)[0]
        who = busy // stride
        reports = config.intermittent_window_s / interval[who]
        p = loss[who]
        expected_gaps = reports * (1.0 - p) * p ** gap_lost[who]
        p_value = stats.poisson.sf(per_window[busy] - 1, expected_gaps)
        intermittent = sorted({names[int(d)] for d in who[p_value < config.intermittent_alpha]})

    order = np.argsort(-out_len, kind="stable")[:max_outages]
    outages = [
        {"device": names[int(out_dev[i])], "start": float(out_start[i]),
         "duration_s": float(out_len[i]),
         "persistent": bool(out_len[i] >= config.persistent_s)}
        for i in order
    ]  # fmt: skip
    return {
        "devices": n_devices,
        "readings": len(ts),
        "interval_s": {"median": float(np.median(interval[kept > 0])) if kept.any() else None},
        "loss_rate": {"median": float(np.median(loss[kept > 0])) if kept.any() else None},
        "outages_total": len(out_dev),
        "devices_with_outages": len(np.unique(out_dev)),
        "persistent_outages": int(np.count_nonzero(out_len >= config.persistent_s)),
        "outages": outages,
        "intermittent": intermittent,
        "by_hour": _by_hour(out_start, config.pattern_alpha),
        "by_zone": _by_zone(out_dev, zones, config.pattern_alpha) if zones is not None else [],
    }


def _by_hour(starts: NDArray[np.float64], alpha: float) -> dict[str, Any]:
    hours = np.bincount((np.floor(starts / 3600.0) % 24).astype(np.int64), minlength=24)
    total = int(hours.sum())
    if total < 24:
        return {"outages": hours.tolist(), "p_value": None, "peak_hours": []}
    p_value = float(stats.chisquare(hours).pvalue)
    expected = total / 24
    peaks = [h for h in range(24) if hours[h] > 2 * expected] if p_value < alpha else []
    return {"outages": hours.tolist(), "p_value": p_value, "peak_hours": peaks}


def _by_zone(
    out_dev: NDArray[np.int64], zones: Sequence[str], alpha: float
) -> list[dict[str, Any]]:
    """Zones where more devices had outages than the rest of the fleet's share predicts
    (one-sided binomial test per zone, Bonferroni-corrected; at least twice the share).
    Devices, not outages, are counted, so one troubled device does not make a zone."""
    names, zone_of = np.unique(np.asarray(zones, dtype=object), return_inverse=True)
    devices_per_zone = np.bincount(zone_of, minlength=len(names))
    hit = np.zeros(len(zones), dtype=bool)
    hit[out_dev] = True
    hit_per_zone = np.bincount(zone_of[hit], minlength=len(names))
    total_devices, total_hit = len(zones), int(hit.sum())
    if total_hit == 0 or len(names) < 2:
        return []
    threshold = alpha / len(names)
    found: list[dict[str, Any]] = []
    for z, name in enumerate(names):
        n, k = int(devices_per_zone[z]), int(hit_per_zone[z])
        rest_n, rest_k = total_devices - n, total_hit - k
        if n == 0 or rest_n == 0 or k == 0:
            continue
        share = max(rest_k, 0.5) / rest_n  # the rest's share, at least half a device
        p_value = float(stats.binom.sf(k - 1, n, share))
        if p_value < threshold and k / n >= 2 * share:
            found.append({"zone": str(name), "devices": n, "with_outages": k,
                          "share": round(k / n, 4), "rest_share": round(rest_k / rest_n, 4),
                          "p_value": p_value})  # fmt: skip
    found.sort(key=lambda f: f["p_value"])
    return found
