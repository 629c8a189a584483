"""The drift detector's report: the recalibration schedule (sensors by the date they leave,
or left, tolerance, and by zone) and how drift rates relate to the environment the devices
report (per band, a one-sided Mann-Whitney U test against the rest of the fleet)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from detectors.drift.change_tests import _Judge
from detectors.drift.config import _DAY
from detectors.drift.peers import _Device
from detectors.drift.robust_stats import _median, mann_whitney_greater
from detectors.drift.sensor import _Sensor
from detectors.drift.signals import _SEVERITY, last_calibration
from service.records import Severity, iso_utc

_URGENCY = {"fault": 0, "out_of_tolerance": 0, "drifting": 1}


def schedule_order(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where a sensor stands in the recalibration schedule: faults and sensors out of
    tolerance before drifting ones, then by severity, then the soonest due first."""
    return (
        _URGENCY[entry["status"]],
        -int(Severity.parse(entry["severity"])),
        entry["predicted_out_of_tolerance_at"],
    )


def recalibration_schedule(
    judge: _Judge,
    sensors: Sequence[_Sensor],
    devices: Mapping[str, _Device],
    env_column: array[float],
    now: float,
) -> dict[str, Any]:
    """Which of ``sensors`` need calibration when, by zone, and how drift relates to the
    environment of ``devices``.

    The report's ``sensors`` lists the sensors that are out of tolerance or faulty first
    (earliest first), then those predicted to leave tolerance, by date; ``by_zone`` groups
    the same entries by ``site/zone``; ``environment`` compares drift rates per environmental
    band with the rest of the fleet (median ratio, one-sided Mann-Whitney U test).
    """
    entries: list[dict[str, Any]] = []
    healthy = 0
    warming = 0
    for s in sensors:
        if s.baseline is None:
            warming += 1
            continue
        effective = judge.effective(s)
        threshold = judge.threshold(s, effective)
        judge.refresh_rate(s)
        judge.predict(s, s.last_ts, threshold)
        if s.fault_shape is not None or s.drift_shape == "step":
            status = "fault"
        elif abs(s.ewma) >= threshold:
            status = "out_of_tolerance"
        elif s.predicted_at is not None:
            status = "drifting"
        else:
            healthy += 1
            continue
        if status == "drifting":
            due = s.predicted_at if s.predicted_at is not None else s.last_ts
        elif status == "fault":
            due = s.since if s.since is not None else s.last_ts
        else:
            due = s.out_since if s.out_since is not None else s.last_ts
        shape = s.shape
        severity = _SEVERITY[shape] if shape is not None else Severity.INFO
        _, absolute = judge.tolerance(s.metric)
        rate = s.rate_per_day
        entries.append(
            {
                "device": s.device,
                "metric": s.metric,
                "site": s.site,
                "zone": s.zone,
                "group": s.group,
                "status": status,
                "shape": shape,
                "severity": severity.label,
                "drift": s.ewma,
                "drift_pct": None if absolute else 100.0 * s.ewma,
                "rate_per_day": rate,
                "rate_pct_per_day": None if rate is None or absolute else 100.0 * rate,
                "predicted_out_of_tolerance_at": due,
                "predicted_out_of_tolerance_iso": iso_utc(due),
                "days_left": max(0.0, (due - now) / _DAY) if status == "drifting" else 0.0,
                "action": "replace or repair" if status == "fault" else "recalibrate",
                "last_calibration": last_calibration(s),
            }
        )
    entries.sort(key=schedule_order)
    by_zone: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        zone = f"{entry['site'] or '?'}/{entry['zone'] or '?'}"
        by_zone.setdefault(zone, []).append(entry)
    return {
        "generated_at": now,
        "generated_at_iso": iso_utc(now),
        "sensors": entries,
        "by_zone": by_zone,
        "healthy": healthy,
        "warming_up": warming,
        "environment": environment_report(judge, sensors, devices, env_column),
    }


def environment_report(
    judge: _Judge,
    sensors: Sequence[_Sensor],
    devices: Mapping[str, _Device],
    env_column: array[float],
) -> dict[str, Any]:
    """Drift rate (absolute, per day) per environmental band against the rest of the fleet
    (``env_column``: the devices' environment EWMAs, see :attr:`_Device.env`)."""
    config = judge.config
    rows: list[tuple[float, str, dict[str, float]]] = []
    env_metrics = config.environment_metrics
    for s in sensors:
        if s.baseline is None:
            continue
        judge.refresh_rate(s)
        if s.rate_per_day is None:
            continue
        device = devices.get(s.device)
        if device is None:
            continue
        zone = f"{s.site or '?'}/{s.zone or '?'}"
        rows.append((abs(s.rate_per_day), zone, device.environment(env_column, env_metrics)))
    all_rates = [r for r, _, _ in rows]
    report: dict[str, Any] = {
        "statistic": "ratio of median |drift rate| in the band to the rest of the fleet; "
        "one-sided Mann-Whitney U test (normal approximation)",
        "fleet_median_rate_pct_per_day": 100.0 * _median(all_rates) if all_rates else None,
        "n": len(rows),
        "bands": [],
        "findings": [],
    }
    min_n = config.environment_min_n
    for env_metric in config.environment_metrics:
        edges = tuple(config.environment_bands.get(env_metric, ()))
        if not edges:
            continue
        unit = env_metric.rsplit("_", 1)[-1] if "_" in env_metric else ""
        with_env = [(r, z, e[env_metric]) for r, z, e in rows if env_metric in e]
        for band in range(len(edges) + 1):
            lo = edges[band - 1] if band > 0 else -math.inf
            hi = edges[band] if band < len(edges) else math.inf
            if band == 0:
                label = f"{env_metric.split('_')[0]} below {edges[0]:g} {unit}"
            elif band == len(edges):
                label = f"{env_metric.split('_')[0]} above {edges[-1]:g} {unit}"
            else:
                label = f"{env_metric.split('_')[0]} {lo:g}-{hi:g} {unit}"
            inside = [(r, z) for r, z, v in with_env if lo <= v < hi]
            scopes: list[tuple[str, list[float], list[float]]] = [
                (
                    "fleet",
                    [r for r, _ in inside],
                    [r for r, _, v in with_env if not lo <= v < hi],
                )
            ]
            for zone in sorted({z for _, z in inside}):
                chosen = [r for r, z in inside if z == zone]
                rest = [r for r, z, v in with_env if not (z == zone and lo <= v < hi)]
                scopes.append((zone, chosen, rest))
            for scope, a, b in scopes:
                if len(a) < min_n or len(b) < min_n:
                    continue
                med_a, med_b = _median(a), _median(b)
                ratio = med_a / med_b if med_b > 0 else math.inf
                u, p = mann_whitney_greater(a, b)
                row = {
                    "metric": env_metric,
                    "band": label,
                    "scope": scope,
                    "n": len(a),
                    "n_rest": len(b),
                    "median_rate_pct_per_day": 100.0 * med_a,
                    "rest_median_rate_pct_per_day": 100.0 * med_b,
                    "ratio": ratio if math.isfinite(ratio) else None,
                    "u": u,
                    "p_value": p,
                }
                report["bands"].append(row)
                if p < 0.05 and ratio >= 1.5:
                    where = "sensors" if scope == "fleet" else f"sensors in {scope}"
                    factor = f"{ratio:.1f}x" if math.isfinite(ratio) else "much"
                    report["findings"].append(
                        f"{where} with {label} drift {factor} faster than the rest "
                        f"(n={len(a)} vs {len(b)}, Mann-Whitney p={p:.2g})"
                    )
    return report
