"""The outage patterns of the connectivity report: outage starts concentrated at some hours
of the day (chi-square against a uniform spread), in one zone compared with the rest of its
site or on one radio technology compared with the rest of the fleet (one-sided binomial
tests), and the devices that switch technology most."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scipy import stats

from detectors.connectivity.config import ConnectivityConfig
from detectors.connectivity.device import _Device
from service.records import iso_utc


def outage_report(
    devices: Mapping[str, _Device],
    gateways_down: Iterable[str],
    config: ConnectivityConfig,
    now: float,
) -> dict[str, Any]:
    """Outage patterns over ``pattern_window_s``: by hour of day, zone and technology.

    ``devices`` maps each device id to its state, first heard first; ``gateways_down`` names
    the gateways down at ``now``.
    """
    since = now - config.pattern_window_s
    starts: list[tuple[float, _Device]] = [
        (start, device) for device in devices.values() for start, _ in device.gaps if start >= since
    ]
    return {
        "generated_at": iso_utc(now),
        "window_s": config.pattern_window_s,
        "devices": len(devices),
        "outages": len(starts),
        "gateways_down": sorted(gateways_down),
        "by_hour": _hour_pattern([s for s, _ in starts], config.pattern_alpha),
        "by_zone": _zone_pattern(devices.values(), starts, config.pattern_alpha),
        "by_technology": _technology_pattern(devices.values(), starts, config.pattern_alpha),
        "technology_switches": sorted(
            (
                {"device_id": device_id, "switches": d.switches, "technology": d.tech}
                for device_id, d in devices.items()
                if d.switches
            ),
            key=_by_switches,
        )[:100],
    }


def _by_switches(row: Mapping[str, Any]) -> tuple[int, str]:
    return (-int(row["switches"]), str(row["device_id"]))


def _hour_pattern(starts: Sequence[float], alpha: float) -> dict[str, Any]:
    counts = [0] * 24
    for start in starts:
        counts[int(start // 3600) % 24] += 1
    total = sum(counts)
    if total < 24:
        return {"counts": counts, "test": "chi-square vs uniform", "enough_data": False}
    result = stats.chisquare(counts)
    expected = total / 24
    hot = [
        {"hour_utc": hour, "outages": count, "ratio": round(count / expected, 2)}
        for hour, count in enumerate(counts)
        if (count - expected) / math.sqrt(expected) > 3
    ]
    return {
        "counts": counts,
        "test": "chi-square vs uniform",
        "enough_data": True,
        "statistic": round(float(result.statistic), 2),
        "p_value": float(result.pvalue),
        "concentrated": bool(result.pvalue < alpha and hot),
        "hours": hot,
    }


def _binomial_findings(
    groups: Mapping[Any, tuple[int, int]], totals: Mapping[Any, tuple[int, int]], alpha: float
) -> list[dict[str, Any]]:
    """Groups with more outages than their share of devices: one-sided binomial test.

    ``groups`` maps a group key to (devices, outages); ``totals`` maps the key's parent to the
    same pair for the parent (site, or the whole fleet).
    """
    findings: list[dict[str, Any]] = []
    for key, (devices, outages) in groups.items():
        parent_devices, parent_outages = totals[key[0] if isinstance(key, tuple) else None]
        if parent_devices <= devices or parent_outages == 0 or outages == 0:
            continue
        share = devices / parent_devices
        result = stats.binomtest(outages, parent_outages, share, alternative="greater")
        rest_rate = (parent_outages - outages) / max(1, parent_devices - devices)
        rate = outages / devices
        ratio = rate / rest_rate if rest_rate > 0 else math.inf
        if result.pvalue < alpha and ratio >= 2:
            findings.append(
                {
                    "group": list(key) if isinstance(key, tuple) else key,
                    "devices": devices,
                    "outages": outages,
                    "outages_per_device": round(rate, 2),
                    "rest_per_device": round(rest_rate, 2),
                    "ratio": round(ratio, 2) if math.isfinite(ratio) else None,
                    "p_value": float(result.pvalue),
                }
            )
    findings.sort(key=lambda row: float(row["p_value"]))
    return findings


def _zone_pattern(
    devices: Any, starts: Sequence[tuple[float, _Device]], alpha: float
) -> dict[str, Any]:
    zone_devices: dict[tuple[str, str], int] = {}
    site_devices: dict[str, int] = {}
    for device in devices:
        if device.site is None or device.zone is None:
            continue
        zone_devices[(device.site, device.zone)] = (
            zone_devices.get((device.site, device.zone), 0) + 1
        )
        site_devices[device.site] = site_devices.get(device.site, 0) + 1
    zone_outages: dict[tuple[str, str], int] = {}
    site_outages: dict[str, int] = {}
    for _, device in starts:
        if device.site is None or device.zone is None:
            continue
        key = (device.site, device.zone)
        zone_outages[key] = zone_outages.get(key, 0) + 1
        site_outages[device.site] = site_outages.get(device.site, 0) + 1
    groups = {key: (n, zone_outages.get(key, 0)) for key, n in zone_devices.items()}
    totals = {site: (n, site_outages.get(site, 0)) for site, n in site_devices.items()}
    return {
        "test": "one-sided binomial: zone's share of its site's outages vs its share of devices",
        "findings": _binomial_findings(groups, totals, alpha),
    }


def _technology_pattern(
    devices: Any, starts: Sequence[tuple[float, _Device]], alpha: float
) -> dict[str, Any]:
    tech_devices: dict[str, int] = {}
    for device in devices:
        if device.tech is not None:
            tech_devices[device.tech] = tech_devices.get(device.tech, 0) + 1
    tech_outages: dict[str, int] = {}
    for _, device in starts:
        if device.tech is not None:
            tech_outages[device.tech] = tech_outages.get(device.tech, 0) + 1
    groups = {tech: (n, tech_outages.get(tech, 0)) for tech, n in tech_devices.items()}
    fleet = (sum(tech_devices.values()), sum(tech_outages.values()))
    return {
        "test": "one-sided binomial: technology's share of outages vs its share of devices",
        "findings": _binomial_findings(groups, {None: fleet}, alpha),
    }
