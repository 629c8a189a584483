"""One fleet-wide report per detector, merged from the reports of several workers.

In multi-process mode each worker runs a full :class:`~service.intake.pipeline.Pipeline` over its
own sites: every device of a site, and so every gateway and drift peer group of that site,
is in exactly one worker. :func:`merge_all` turns the workers' ``Pipeline.reports(now)``
(all taken at the same ``now``) into the reports one pipeline over the whole fleet would
have produced; :func:`merge_reports` does it for one detector.

How each report is merged:

- counts are summed; per-device, per-site and per-gateway rows are concatenated, sorted
  with the detector's own key and cut to the detector's own limit. A detector's limit is
  not in its report: it comes from :class:`MergeOptions` (see
  :meth:`MergeOptions.from_settings`). Each worker has already cut its rows to the same
  limit, which keeps every row the fleet's cut would keep;
- per-model and per-group counts (firmware inventory, versions per model and site, update
  outcomes, outages per hour of day) are summed, and the shares, rates and tests computed
  from them are computed again from the sums;
- anything else (timestamps, window lengths, test descriptions) is the first worker's:
  every worker reports the same.

**Exact**, as one pipeline would report it:

- ``firmware``: everything (inventory, campaigns with progress, overdue and devices off
  target, consistency per model and site, urgent updates, update outcomes with success
  rates, stuck updates);
- ``battery``: everything (the replacement plan, grouped by site and zone);
- ``gateway``: everything, while every site is in one worker (a site reported by several
  workers, e.g. gateways reporting no site, gets its load statistics recomputed, but its
  rebalancing moves cannot be: see below);
- ``connectivity``: counts, gateways down, the hour-of-day pattern and its chi-square
  test, the zone pattern (each zone is tested against its own site) and technology
  switches;
- ``drift``: the sensors to recalibrate, ``by_zone``, ``healthy``, ``warming_up`` and
  ``environment.n``;
- ``environment``: ``devices`` and the devices ranked by stress (``vs_fleet_median`` only
  while every worker's median stress is zero; see below).

Order among tied rows: rows of different workers that tie on the detector's sort key
(equal p-values, or equal dates in the drift schedule) come in worker order, where one
pipeline orders them by when it first heard of the device, which the reports do not carry;
the rows themselves are exact. The environment detector ranks devices by their unrounded
stress hours but reports them rounded to 0.1 h: devices of different workers within 0.1 h
of each other are ranked by device id, so their order, and at the report limit which of
them is kept, may differ from one pipeline's.

**Approximate**: the statistics that compare a group with the rest of the *whole fleet*
need per-device values the reports do not carry, so each worker's version compares it with
the rest of that worker's devices. These are kept as the workers computed them,
concatenated (and sorted by p-value where the detector sorts them), and the merged report
names them under the key ``"approximate"`` (field -> why), only when an approximation was
made: when two or more workers contributed to the statistic. They are:

- ``connectivity.by_technology``: one-sided binomial tests of each radio technology
  against the rest of the fleet;
- ``drift.environment``: Mann-Whitney tests of drift rates per environmental band against
  the rest of the fleet (``bands``, ``findings``); ``fleet_median_rate_pct_per_day`` is the
  mean of the workers' medians weighted by their ``n``;
- ``environment.findings`` (and ``recommendations``): two-proportion and Mann-Whitney tests
  of each band against the rest of the fleet, with the Bonferroni correction of each
  worker's own number of candidate bands;
- ``environment.maintenance_by_stress[].vs_fleet_median``: relative to the median stress
  of the device's own worker, when some worker's median is not zero;
- ``gateway.sites.<site>.moves`` for a site reported by several workers: each worker's
  moves among its own gateways.

A detector missing from some workers' reports (it failed to report there) is merged from
the others. Reports of detectors this module does not know are merged by
:func:`merge_generic`.

>>> a = {"generated_at": "t", "devices": 2, "outages": 1, "gateways_down": ["gw-2"],
...      "technology_switches": [{"device_id": "d1", "switches": 1, "technology": "lte"}]}
>>> b = {"generated_at": "t", "devices": 3, "outages": 0, "gateways_down": ["gw-1"],
...      "technology_switches": [{"device_id": "d7", "switches": 4, "technology": "wifi"}]}
>>> merged = merge_reports("connectivity", [a, b])
>>> merged["devices"], merged["gateways_down"]
(5, ['gw-1', 'gw-2'])
>>> [row["device_id"] for row in merged["technology_switches"]]
['d7', 'd1']
>>> merge_reports("connectivity", [a]) == a
True
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from config.settings import Settings
from detectors.battery import group_order, replacement_group
from detectors.drift import schedule_order
from detectors.firmware import version_key
from service.records import Severity

Report = Mapping[str, Any]

# the connectivity report lists at most this many technology switchers (not configurable)
SWITCHES_LIMIT = 100


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """The detector settings a merge needs that the reports do not carry.

    The defaults are the detectors' defaults; :meth:`from_settings` reads the configured ones.
    """

    firmware_report_limit: int = 200
    environment_report_limit: int = 50
    connectivity_pattern_alpha: float = 0.01

    @classmethod
    def from_settings(cls, settings: Settings) -> MergeOptions:
        """The options of the detectors as ``settings`` configures them.

        >>> from config.settings import settings_from_mapping
        >>> MergeOptions.from_settings(settings_from_mapping(
        ...     {"detectors": {"firmware": {"report_limit": 20}}})).firmware_report_limit
        20
        """
        # imported here: the connectivity and environment detectors load scipy
        from detectors.connectivity import ConnectivityConfig
        from detectors.environment import EnvironmentConfig
        from detectors.firmware import FirmwareConfig

        detectors = settings.detectors
        return cls(
            firmware_report_limit=FirmwareConfig.from_mapping(detectors.firmware).report_limit,
            environment_report_limit=EnvironmentConfig.from_mapping(
                detectors.environment
            ).report_limit,
            connectivity_pattern_alpha=ConnectivityConfig.from_mapping(
                detectors.connectivity
            ).pattern_alpha,
        )


def merge_all(
    per_worker: Sequence[Mapping[str, Report]], *, options: MergeOptions | None = None
) -> dict[str, dict[str, Any]]:
    """Merge every detector's reports: ``per_worker`` holds one ``{detector name: report}``
    per worker (what :meth:`Pipeline.reports` returns); each detector any worker reported
    is merged from the workers that reported it.

    >>> merge_all([{"battery": {"generated_at": "t", "horizon_days": 30.0, "devices": 0,
    ...                          "groups": []}}, {}])["battery"]["devices"]
    0
    """
    names = dict.fromkeys(chain.from_iterable(per_worker))
    return {
        name: merge_reports(
            name, [reports[name] for reports in per_worker if name in reports], options=options
        )
        for name in names
    }


def merge_reports(
    name: str, reports: Sequence[Report], *, options: MergeOptions | None = None
) -> dict[str, Any]:
    """Merge the workers' reports of detector ``name`` into the fleet's report.

    One report is returned as it is (a shallow copy); a detector this module does not know
    is merged by :func:`merge_generic`. See the module docstring for what is exact. The
    merged report may share rows with the workers' reports: neither is to be changed.
    """
    if not reports:
        raise ValueError(f"no {name} reports to merge")
    if len(reports) == 1:
        return dict(reports[0])
    merger = _MERGERS.get(name)
    if merger is None:
        return merge_generic(reports)
    return merger(reports, options or MergeOptions())


# -- generic ---------------------------------------------------------------------------------


def merge_generic(reports: Sequence[Report]) -> dict[str, Any]:
    """Merge reports of any shape: at each key, numbers are summed, booleans or-ed, lists
    concatenated and mappings merged key by key; any other value (text, ``None``) is the
    first worker's that is not ``None``. Right for counts and rows, wrong for shares,
    means and sorted or cut lists: known detectors merge those properly.

    >>> merge_generic([{"n": 1, "rows": [1], "by": {"a": 1}, "ok": False, "at": "t"},
    ...                {"n": 2, "rows": [2], "by": {"a": 1, "b": 2}, "ok": True, "at": "t"}])
    {'n': 3, 'rows': [1, 2], 'by': {'a': 2, 'b': 2}, 'ok': True, 'at': 't'}
    """
    merged = _merge_values(list(reports))
    return dict(merged)


def _merge_values(values: Sequence[Any]) -> Any:
    present = [value for value in values if value is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    if all(isinstance(value, Mapping) for value in present):
        keys = dict.fromkeys(chain.from_iterable(present))
        return {key: _merge_values([v[key] for v in present if key in v]) for key in keys}
    if all(isinstance(value, bool) for value in present):
        return any(present)
    if all(isinstance(value, int | float) and not isinstance(value, bool) for value in present):
        return sum(present)
    if all(isinstance(value, list | tuple) for value in present):
        return list(chain.from_iterable(present))
    return present[0]


def _base(reports: Sequence[Report], *same: str) -> dict[str, Any]:
    """The generic merge (for fields a detector merge does not know, and to keep the first
    report's key order) with the fields ``same`` taken from the first worker that has them;
    the detector merge then sets the fields it merges."""
    out = merge_generic(reports)
    for key in same:
        if any(key in report for report in reports):
            out[key] = _first(reports, key)
    return out


def _total(reports: Iterable[Report], key: str) -> Any:
    return sum(report.get(key, 0) for report in reports)


def _rows(reports: Iterable[Report], key: str) -> list[Any]:
    return list(chain.from_iterable(report.get(key) or () for report in reports))


def _first(reports: Sequence[Report], key: str) -> Any:
    """The first worker's ``key`` that is not ``None`` (every worker reports the same)."""
    return next((r[key] for r in reports if r.get(key) is not None), reports[0].get(key))


# -- firmware --------------------------------------------------------------------------------


def _merge_firmware(reports: Sequence[Report], options: MergeOptions) -> dict[str, Any]:
    limit = options.firmware_report_limit
    out = _base(reports, "generated_at")
    out["devices"] = _total(reports, "devices")
    inventory: dict[str, dict[str, int]] = {}
    for report in reports:
        for model, versions in report.get("inventory", {}).items():
            counts = inventory.setdefault(model, {})
            for version, n in versions.items():
                counts[version] = counts.get(version, 0) + n
    out["inventory"] = inventory
    out["campaigns"] = _firmware_campaigns(reports, limit)
    out["consistency"] = _firmware_consistency(reports)
    urgent = _rows(reports, "urgent_updates")
    urgent.sort(
        key=lambda u: (-Severity.parse(str(u["severity"])), str(u["model"]), str(u["device_id"]))
    )
    out["urgent_updates"] = urgent[:limit]
    out["vulnerable_devices"] = _total(reports, "vulnerable_devices")
    out["update_outcomes"] = _firmware_outcomes(reports)
    out["stuck_updates"] = sorted(_rows(reports, "stuck_updates"))[:limit]
    out["advisories"] = list(dict.fromkeys(_rows(reports, "advisories")))
    return out


def _firmware_campaigns(reports: Sequence[Report], limit: int) -> list[dict[str, Any]]:
    # every worker lists the configured campaigns, in the same order
    by_campaign: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for report in reports:
        for index, campaign in enumerate(report.get("campaigns", ())):
            by_campaign.setdefault((index, campaign["name"]), []).append(campaign)
    campaigns = []
    for parts in by_campaign.values():
        devices = _total(parts, "devices")
        on_target = _total(parts, "on_target")
        campaign = _base(parts, "name", "target", "deadline")
        campaign.update(
            devices=devices,
            on_target=on_target,
            progress=round(on_target / devices, 4) if devices else None,
            overdue=any(part.get("overdue") for part in parts),
            off_target=sorted(_rows(parts, "off_target"))[:limit],
        )
        campaigns.append(campaign)
    return campaigns


def _firmware_consistency(reports: Sequence[Report]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for row in _rows(reports, "consistency"):
        counts = groups.setdefault((row["model"], row["site"]), {})
        for version, n in row["versions"].items():
            counts[version] = counts.get(version, 0) + n
    return [
        {"model": model, "site": site, "devices": sum(versions.values()),
         "versions": dict(sorted(versions.items(), key=lambda kv: version_key(kv[0]))),
         "consistent_share": round(max(versions.values()) / sum(versions.values()), 4)}
        for (model, site), versions in sorted(groups.items())
    ]  # fmt: skip


def _firmware_outcomes(reports: Sequence[Report]) -> dict[str, dict[str, Any]]:
    tallies: dict[tuple[str, str], list[int]] = {}
    for report in reports:
        for dimension, values in report.get("update_outcomes", {}).items():
            for value, row in values.items():
                tally = tallies.setdefault((dimension, value), [0, 0])
                tally[0] += row["succeeded"]
                tally[1] += row["failed"]
    outcomes: dict[str, dict[str, Any]] = {}
    for (dimension, value), (ok, failed) in sorted(tallies.items()):
        outcomes.setdefault(dimension, {})[value] = {
            "succeeded": ok, "failed": failed, "success_rate": round(ok / (ok + failed), 4),
        }  # fmt: skip
    return outcomes


# -- battery ---------------------------------------------------------------------------------


def _merge_battery(reports: Sequence[Report], options: MergeOptions) -> dict[str, Any]:
    out = _base(reports, "generated_at", "horizon_days")
    parts: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for group in _rows(reports, "groups"):
        parts.setdefault((group["site"] or "", group["zone"] or ""), []).append(group)
    groups: list[Mapping[str, Any]] = []
    for (site, zone), same in parts.items():
        if len(same) == 1:
            groups.append(same[0])
        else:
            groups.append(replacement_group(site, zone, _rows(same, "devices")))
    groups.sort(key=group_order)
    out["devices"] = sum(len(g["devices"]) for g in groups)
    out["groups"] = groups
    return out


# -- connectivity ----------------------------------------------------------------------------


def _merge_connectivity(reports: Sequence[Report], options: MergeOptions) -> dict[str, Any]:
    # imported here: the connectivity detector loads scipy
    from detectors.connectivity.patterns import _hour_pattern

    out = _base(reports, "generated_at", "window_s")
    out["devices"] = _total(reports, "devices")
    out["outages"] = _total(reports, "outages")
    out["gateways_down"] = sorted(set(_rows(reports, "gateways_down")))
    counts = [0] * 24
    for report in reports:
        for hour, n in enumerate(report.get("by_hour", {}).get("counts", ())):
            counts[hour] += n
    # the test is run on the summed counts: one outage start per count at its hour
    starts = [3600.0 * hour for hour, n in enumerate(counts) for _ in range(n)]
    out["by_hour"] = _hour_pattern(starts, options.connectivity_pattern_alpha)
    zones = [r["by_zone"] for r in reports if "by_zone" in r]
    if zones:
        out["by_zone"] = {**zones[0], "findings": _by_p_value(_rows(zones, "findings"))}
    contributing = [r for r in reports if r.get("devices") and "by_technology" in r]
    if len(contributing) <= 1:
        out["by_technology"] = (contributing or reports)[0].get("by_technology")
    else:
        technologies = [r["by_technology"] for r in contributing]
        out["by_technology"] = {
            **technologies[0],
            "findings": _by_p_value(_rows(technologies, "findings")),
        }
        _approximate(
            out,
            "by_technology",
            "each worker tests a technology against the rest of its own devices, "
            "not the rest of the fleet",
        )
    switches = _rows(reports, "technology_switches")
    switches.sort(key=lambda row: (-int(row["switches"]), str(row["device_id"])))
    out["technology_switches"] = switches[:SWITCHES_LIMIT]
    return out


def _by_p_value(rows: list[Any]) -> list[Any]:
    rows.sort(key=lambda row: float(row["p_value"]))
    return rows


def _approximate(out: dict[str, Any], field: str, why: str) -> None:
    out.setdefault("approximate", {})[field] = why


# -- gateway ---------------------------------------------------------------------------------


def _merge_gateway(reports: Sequence[Report], options: MergeOptions) -> dict[str, Any]:
    from detectors.gateway import _imbalance

    out = _base(reports, "generated_at")
    parts: dict[str, list[Mapping[str, Any]]] = {}
    for report in reports:
        for site, entry in report.get("sites", {}).items():
            parts.setdefault(site, []).append(entry)
    sites: dict[str, Mapping[str, Any]] = {}
    names: set[str] = set()
    for site, same in parts.items():
        names.update(chain.from_iterable(entry["gateways"] for entry in same))
        if len(same) == 1:
            sites[site] = same[0]
            continue
        gateways = _gateway_rows(same)
        merged = _base(same)
        merged["gateways"] = gateways
        merged.update(_imbalance([int(g["devices"]) for g in gateways.values() if not g.get("down")]))
        merged["moves"] = _rows(same, "moves")
        sites[site] = merged
        _approximate(
            out, f"sites.{site}.moves", "the site is in several workers: each planned moves "
            "among its own gateways only",
        )  # fmt: skip
    # in the order the detector lists them: by their first gateway's name
    out["sites"] = dict(sorted(sites.items(), key=lambda item: min(item[1]["gateways"] or [""])))
    out["gateways"] = len(names)
    return out


def _gateway_rows(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The gateways of one site reported by several workers, by name; a gateway several
    workers know carries the devices and messages of all of them."""
    parts: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        for name, row in entry["gateways"].items():
            parts.setdefault(name, []).append(row)
    gateways: dict[str, Any] = {}
    for name, rows in sorted(parts.items()):
        if len(rows) == 1:
            gateways[name] = rows[0]
            continue
        merged = _base(rows, "capacity", "status")
        merged["devices"] = _total(rows, "devices")
        merged["messages_per_s"] = round(_total(rows, "messages_per_s"), 3)
        merged["overloaded"] = any(row.get("overloaded") for row in rows)
        gateways[name] = merged
    return gateways


# -- drift -----------------------------------------------------------------------------------


def _merge_drift(reports: Sequence[Report], options: MergeOptions) -> dict[str, Any]:
    out = _base(reports, "generated_at", "generated_at_iso")
    entries = _rows(reports, "sensors")
    entries.sort(key=schedule_order)
    by_zone: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_zone.setdefault(f"{entry['site'] or '?'}/{entry['zone'] or '?'}", []).append(entry)
    out["sensors"] = entries
    out["by_zone"] = by_zone
    out["healthy"] = _total(reports, "healthy")
    out["warming_up"] = _total(reports, "warming_up")
    environments = [r["environment"] for r in reports if r.get("environment") is not None]
    # a worker without a drift rate has no row in the statistics: it changes nothing
    contributing = [e for e in environments if e.get("n")]
    if len(contributing) <= 1:
        if environments:
            out["environment"] = (contributing or environments)[0]
        return out
    n = _total(contributing, "n")
    medians = [
        (e["n"], e["fleet_median_rate_pct_per_day"])
        for e in contributing
        if e.get("fleet_median_rate_pct_per_day") is not None
    ]
    weight = sum(count for count, _ in medians)
    environment = _base(contributing, "statistic")
    environment.update(
        fleet_median_rate_pct_per_day=(
            sum(count * median for count, median in medians) / weight if weight else None
        ),
        n=n,
        bands=_rows(contributing, "bands"),
        findings=_rows(contributing, "findings"),
    )
    out["environment"] = environment
    _approximate(
        out,
        "environment",
        "bands and findings compare each band with the rest of its own worker's sensors, "
        "not the rest of the fleet; fleet_median_rate_pct_per_day is the n-weighted mean "
        "of the workers' medians",
    )
    return out


# -- environment -----------------------------------------------------------------------------


def _merge_environment(reports: Sequence[Report], options: MergeOptions) -> dict[str, Any]:
    limit = options.environment_report_limit
    out = _base(reports, "generated_at", "tests")
    out["devices"] = _total(reports, "devices")
    # a worker without devices changes no statistic
    contributing = [r for r in reports if r.get("devices")]
    if len(contributing) <= 1:
        only = (contributing or reports)[0]
        out["findings"] = only.get("findings", [])
        out["recommendations"] = only.get("recommendations", [])
        out["maintenance_by_stress"] = only.get("maintenance_by_stress", [])
        return out
    findings = _by_p_value(_rows(contributing, "findings"))
    out["findings"] = findings
    out["recommendations"] = [f["recommendation"] for f in findings]
    _approximate(
        out,
        "findings",
        "each worker tests a band against the rest of its own devices, not the rest of the "
        "fleet, with its own Bonferroni correction",
    )
    rows = list(
        heapq.merge(
            *(r.get("maintenance_by_stress", ()) for r in contributing),
            key=lambda row: (-row["stress_hours"], row["device_id"]),
        )
    )
    out["maintenance_by_stress"] = rows[:limit]
    # a worker's median is zero when its rows have no ratio (or it has no rows); when every
    # worker's is, so is the fleet's, and no row has a ratio either
    if any(row.get("vs_fleet_median") is not None for row in rows):
        _approximate(
            out,
            "maintenance_by_stress.vs_fleet_median",
            "relative to the median stress of the device's own worker",
        )
    return out


_MERGERS: dict[str, Callable[[Sequence[Report], MergeOptions], dict[str, Any]]] = {
    "firmware": _merge_firmware,
    "battery": _merge_battery,
    "connectivity": _merge_connectivity,
    "gateway": _merge_gateway,
    "drift": _merge_drift,
    "environment": _merge_environment,
}
