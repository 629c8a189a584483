"""Pieces of the battery replacement plan: a site and zone's group of devices due for a new
battery, the order of the groups, and calendar dates.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any


def replacement_group(site: str, zone: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's group of the devices of one site and zone due for a battery: ``entries``
    sorted most urgent first (lowest priority value), the group's priority and date theirs.

    >>> group = replacement_group("plant-a", "", [
    ...     {"device_id": "b", "priority": 2.0, "tte_days": 4.0, "replace_before": "2026-03-02"},
    ...     {"device_id": "a", "priority": 1.0, "tte_days": 9.0, "replace_before": "2026-03-01"}])
    >>> group["zone"], group["priority"], group["replace_before"], [e["device_id"] for e in group["devices"]]
    (None, 1.0, '2026-03-01', ['a', 'b'])
    """
    entries.sort(key=lambda e: (e["priority"], e["tte_days"], e["device_id"]))
    return {
        "site": site or None,
        "zone": zone or None,
        "priority": entries[0]["priority"],
        "replace_before": min(e["replace_before"] for e in entries),
        "devices": entries,
    }


def group_order(group: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where a replacement group stands in the report: most urgent first, then by place."""
    return (group["priority"], group["site"] or "", group["zone"] or "")


def _date(ts: float) -> str:
    """The UTC calendar date of ``ts`` (ISO 8601)."""
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).date().isoformat()
