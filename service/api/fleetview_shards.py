"""The fleet view of a daemon split into worker processes by site.

Each worker runs a whole pipeline over its own sites (every device of a site, and so every
device, is in exactly one worker) and keeps a :class:`~service.api.fleetview.FleetView` over
its devices. The coordinator serves HTTP and has no pipeline: :class:`ShardedFleetView`
answers what :class:`~service.api.fleetapi.FleetApi` asks with the JSON one ``FleetView`` over
the whole fleet would give, from small answers the workers compute with
:data:`WORKER_CALLS`:

- devices: each worker's first ``offset + limit`` matching rows by id, merged by id, then
  paged (the totals add up);
- a twin: from the one worker that knows the device;
- alerts: each worker's first ``limit`` open alerts (by kind and subject) and resolved
  ones (newest first), merged;
- GeoJSON and radius queries: each worker's features, or its nearest ``limit`` devices,
  merged;
- the hierarchy and hotspots: device counts by status per (region, site, zone) and
  coordinate sums per (site, zone), merged and then built by the functions the single
  view uses (:func:`~service.api.fleetview.build_tree`, :func:`~service.api.fleetview.find_hotspots`),
  so counts, rates and p-values are exact.

Order. One view lists devices in the order it first heard of them (GeoJSON features,
devices at equal distance, the hierarchy's nodes, hotspots with equal p-values); merged
answers restore that order from each device's first-seen time (receive time, from the
host's clock that all workers share); devices first heard at the same instant by two
workers come in worker order. Resolved alerts are merged by resolution time, newest first,
each worker's own order kept: as one daemon lists them (in the order it resolved them)
while resolution times follow that order. Each worker keeps ``alerts.recent_capacity``
resolved alerts, so asked for more than that the merged list can be longer than one
daemon's.

Positions. A zone's position is the mean of its devices', summed in registry order. A zone
lies in one worker, as its site does, except the devices without a site (site
``unknown``), which may be spread over several: their coordinates are sent one by one and
summed in the order one view would sum them, so the means agree to the last bit.

Events. Each worker adds an :class:`EventForwarder` to its pipeline's sinks; it sends
every alert change, as the page's event, to the coordinator, whose
:class:`~service.api.fleetapi.FleetEvents` hands it to the open streams with
:meth:`~service.api.fleetapi.FleetEvents.deliver`.

>>> import asyncio
>>> from types import SimpleNamespace
>>> from service.alerts.lifecycle import AlertManager
>>> from service.intake.registry import DeviceRegistry
>>> def worker(*devices):
...     registry = DeviceRegistry()
...     for heard, (device, site) in enumerate(devices):
...         registry.observe(device, float(heard), 0.0, {"site": site, "zone": "z1"})
...     return SimpleNamespace(fleet_view=FleetView(registry, AlertManager()))
>>> workers = [worker(("a1", "a"), ("a2", "a")), worker(("b1", "b"))]
>>> async def call_all(name, args):
...     return [WORKER_CALLS[name](host, *args) for host in workers]
>>> async def reports():
...     return {}
>>> view = ShardedFleetView(call_all, reports)
>>> page = asyncio.run(view.devices({}, limit=2, offset=1))
>>> page["total"], [row["id"] for row in page["devices"]]
(3, ['a2', 'b1'])
>>> tree = asyncio.run(view.tree())["regions"]["unassigned"]
>>> {name: site["devices"] for name, site in tree["sites"].items()}
{'a': 2, 'b': 1}
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from typing import Any, Protocol

from service.alerts.sinks import Item
from service.api.fleetapi import alert_event
from service.api.fleetview import (
    COMPACT_COLUMNS,
    FleetView,
    SiteInfo,
    build_tree,
    find_hotspots,
    near_entry,
)
from service.records import AlertRecord

CallAll = Callable[[str, tuple[Any, ...]], Awaitable[list[Any]]]
"""Calls one of :data:`WORKER_CALLS` in every worker; its answers in worker order."""

UNKNOWN = "unknown"
_FIRST = itemgetter(0)


class WorkerHost(Protocol):
    """What a worker call uses of the worker's daemon."""

    @property
    def fleet_view(self) -> FleetView: ...


@dataclass(frozen=True, slots=True)
class ZoneParts:
    """One worker's share of the hierarchy, each list in the order it first heard of the
    devices (the first-seen time of the first device leads each entry)."""

    counts: list[tuple[float, str, str, str, dict[str, int]]]
    """``(first seen, region, site, zone, devices by status)``."""
    places: list[tuple[float, str, str, float, float, float]]
    """``(first seen, site, zone, devices, sum of lat, sum of lon)`` of devices with
    coordinates."""
    loose: list[tuple[float, str, float, float]]
    """``(first seen, zone, lat, lon)`` of each device with coordinates in site
    ``unknown``."""


# -- worker side ------------------------------------------------------------------------


def _devices(
    host: WorkerHost, filters: dict[str, str], count: int, compact: bool
) -> dict[str, Any]:
    return host.fleet_view.devices(filters, count, 0, compact)


def _twin(host: WorkerHost, device_id: str) -> dict[str, Any] | None:
    return host.fleet_view.twin(device_id)


def _alerts(
    host: WorkerHost, filters: dict[str, str], state: str, limit: int
) -> dict[str, list[Any]]:
    view = host.fleet_view
    out: dict[str, list[Any]] = {}
    if state in ("active", "all"):
        out["active"] = [a.to_json_dict() for a in view.active_alerts(filters)[:limit]]
    if state in ("recent", "all"):
        out["recent"] = [
            (a.updated_at if a.resolved_at is None else a.resolved_at, a.to_json_dict())
            for a in islice(view.recent_alerts(filters), limit)
        ]
    return out


def _features(host: WorkerHost, filters: dict[str, str]) -> list[tuple[float, dict[str, Any]]]:
    # the view keeps its features and refreshes them in place: hand out copies
    return [
        (info.first_seen, {**feature, "properties": dict(feature["properties"])})
        for info, feature in host.fleet_view.features(filters)
    ]


def _near(
    host: WorkerHost, lat: float, lon: float, radius_m: float, limit: int
) -> tuple[int, list[tuple[float, float, dict[str, Any]]]]:
    view = host.fleet_view
    found = view.nearby(lat, lon, radius_m)
    registry = view.registry
    nearest = []
    for distance, row in found[:limit]:
        info = registry.get(row.id)
        nearest.append((distance, info.first_seen if info else 0.0, near_entry(distance, row)))
    return len(found), nearest


def _zones(host: WorkerHost, places: bool) -> ZoneParts:
    counts: dict[tuple[str, str, str], tuple[float, dict[str, int]]] = {}
    sums: dict[tuple[str, str], tuple[float, list[float]]] = {}
    loose: list[tuple[float, str, float, float]] = []
    for info, region, site, zone, status, lat, lon in host.fleet_view.zone_rows():
        entry = counts.get((region, site, zone))
        if entry is None:
            entry = counts[(region, site, zone)] = (info.first_seen, {})
        tally = entry[1]
        tally[status] = tally.get(status, 0) + 1
        if places and lat is not None and lon is not None:
            placed = sums.get((site, zone))
            if placed is None:
                placed = sums[(site, zone)] = (info.first_seen, [0.0, 0.0, 0.0])
            acc = placed[1]
            acc[0] += 1
            acc[1] += lat
            acc[2] += lon
            if site == UNKNOWN:
                loose.append((info.first_seen, zone, lat, lon))
    return ZoneParts(
        counts=[(first, r, s, z, tally) for (r, s, z), (first, tally) in counts.items()],
        places=[(first, s, z, a[0], a[1], a[2]) for (s, z), (first, a) in sums.items()],
        loose=loose,
    )


WORKER_CALLS: dict[str, Callable[..., Any]] = {
    "fleetview.devices": _devices,
    "fleetview.twin": _twin,
    "fleetview.alerts": _alerts,
    "fleetview.features": _features,
    "fleetview.near": _near,
    "fleetview.zones": _zones,
}
"""The functions :class:`ShardedFleetView` calls in each worker, as ``fn(daemon, *args)``;
arguments and answers are plain data (dicts, lists, tuples, :class:`ZoneParts`):

- ``fleetview.devices(filters, count, compact)``: the first ``count`` matching devices by id
  and their total, as :meth:`FleetView.devices` gives them;
- ``fleetview.twin(device_id)``: the twin, or ``None`` from workers without the device;
- ``fleetview.alerts(filters, state, limit)``: ``{"active": [alert], "recent":
  [(resolved at, alert)]}``, each the first ``limit``;
- ``fleetview.features(filters)``: ``[(first seen, GeoJSON feature)]``;
- ``fleetview.near(lat, lon, radius_m, limit)``: ``(total, [(distance, first seen, device)])``;
- ``fleetview.zones(places)``: :class:`ZoneParts` (without positions unless ``places``).
"""


class EventForwarder:
    """A worker's sink that sends each alert change, as the page's event, to ``forward``.

    ``forward`` runs on the pipeline's path, so it must not block: it hands the event
    (a plain dict) to whatever carries it to the coordinator. Changes offered before
    :meth:`bind` are not sent.
    """

    name = "fleet-events-forward"

    def __init__(self, forward: Callable[[dict[str, Any]], None]) -> None:
        self._forward = forward
        self._view: FleetView | None = None

    def bind(self, view: FleetView) -> None:
        """The worker's view (it says which device an alert is about, and its status)."""
        self._view = view

    def offer(self, item: Item) -> None:
        view = self._view
        if isinstance(item, AlertRecord) and view is not None:
            self._forward(alert_event(view, item))


# -- coordinator side ----------------------------------------------------------------------


def _merged_counts(
    parts: Iterable[ZoneParts],
) -> dict[tuple[str, str, str], dict[str, int]]:
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    for _, region, site, zone, tally in heapq.merge(*(p.counts for p in parts), key=_FIRST):
        target = counts.get((region, site, zone))
        if target is None:
            counts[(region, site, zone)] = dict(tally)
        else:
            for status, n in tally.items():
                target[status] = target.get(status, 0) + n
    return counts


def _merged_sums(parts: list[ZoneParts]) -> dict[tuple[str, str], list[float]]:
    sums: dict[tuple[str, str], list[float]] = {}
    shared: set[tuple[str, str]] = set()
    for _, site, zone, n, lat, lon in heapq.merge(*(p.places for p in parts), key=_FIRST):
        acc = sums.get((site, zone))
        if acc is None:
            sums[(site, zone)] = [n, lat, lon]
        else:  # a zone in several workers: only site ``unknown``'s, summed again below
            acc[0] += n
            acc[1] += lat
            acc[2] += lon
            shared.add((site, zone))
    again = {key: [0.0, 0.0, 0.0] for key in shared if key[0] == UNKNOWN}
    if again:
        for _, zone, lat, lon in heapq.merge(*(p.loose for p in parts), key=_FIRST):
            acc = again.get((UNKNOWN, zone))
            if acc is not None:
                acc[0] += 1
                acc[1] += lat
                acc[2] += lon
        sums.update(again)
    return sums


class ShardedFleetView:
    """The fleet view on the coordinator of a multi-process daemon; see the module
    documentation.

    Its queries are those of :class:`~service.api.fleetview.FleetView` that the fleet API
    uses, as coroutines with the same answers.

    Parameters
    ----------
    call_all
        Calls one of :data:`WORKER_CALLS` in every worker and returns the answers.
    reports
        The detectors' reports, merged across the workers.
    sites
        The configured facilities (as every worker has them).
    """

    def __init__(
        self,
        call_all: CallAll,
        reports: Callable[[], Awaitable[dict[str, dict[str, Any]]]],
        sites: Mapping[str, SiteInfo] | None = None,
    ) -> None:
        self._call_all = call_all
        self._reports = reports
        self.sites = dict(sites or {})

    async def _call(self, name: str, *args: Any) -> list[Any]:
        return await self._call_all(f"fleetview.{name}", args)

    async def devices(
        self, filters: Mapping[str, str], limit: int, offset: int, compact: bool = False
    ) -> dict[str, Any]:
        """A page of devices by id (see :meth:`FleetView.devices`)."""
        parts = await self._call("devices", dict(filters), offset + limit, compact)
        field, key = ("rows", _FIRST) if compact else ("devices", itemgetter("id"))
        merged = heapq.merge(*(part[field] for part in parts), key=key)
        out: dict[str, Any] = {
            "total": sum(part["total"] for part in parts),
            "limit": limit,
            "offset": offset,
        }
        if compact:
            out["columns"] = list(COMPACT_COLUMNS)
        out[field] = list(islice(merged, offset, offset + limit))
        return out

    async def twin(self, device_id: str) -> dict[str, Any] | None:
        """Everything known of one device, or ``None``."""
        for twin in await self._call("twin", device_id):
            if twin is not None:
                return dict(twin)
        return None

    async def alert_list(
        self, filters: Mapping[str, str], state: str, limit: int
    ) -> dict[str, Any]:
        """Open alerts by kind and subject, resolved ones newest first."""
        parts = await self._call("alerts", dict(filters), state, limit)
        out: dict[str, Any] = {}
        if state in ("active", "all"):
            active = heapq.merge(
                *(part["active"] for part in parts), key=itemgetter("kind", "subject")
            )
            out["active"] = list(islice(active, limit))
        if state in ("recent", "all"):
            recent = heapq.merge(*(part["recent"] for part in parts), key=_FIRST, reverse=True)
            out["recent"] = [alert for _, alert in islice(recent, limit)]
        return out

    async def reports(self) -> dict[str, dict[str, Any]]:
        return await self._reports()

    async def geojson(self, filters: Mapping[str, str]) -> dict[str, Any]:
        """Devices with coordinates as a GeoJSON FeatureCollection."""
        parts = await self._call("features", dict(filters))
        features = [feature for _, feature in heapq.merge(*parts, key=_FIRST)]
        return {"type": "FeatureCollection", "features": features}

    async def near(self, lat: float, lon: float, radius_m: float, limit: int) -> dict[str, Any]:
        """Devices within ``radius_m`` of a point, nearest first."""
        parts = await self._call("near", lat, lon, radius_m, limit)
        nearest = heapq.merge(*(found for _, found in parts), key=itemgetter(0, 1))
        return {
            "center": {"lat": lat, "lon": lon},
            "radius_m": radius_m,
            "total": sum(total for total, _ in parts),
            "devices": [entry for _, _, entry in islice(nearest, limit)],
        }

    async def tree(self) -> dict[str, Any]:
        """Region > facility > zone, each with device counts by status and a position."""
        parts: list[ZoneParts] = await self._call("zones", True)
        return build_tree(_merged_counts(parts), _merged_sums(parts), self.sites)

    async def hotspots(self, min_devices: int = 5, alpha: float = 0.01) -> dict[str, Any]:
        """Zones whose share of devices with open alerts is significantly above the rest's."""
        parts: list[ZoneParts] = await self._call("zones", False)
        counts: dict[tuple[str, str], list[int]] = {}
        for (_, site, zone), tally in _merged_counts(parts).items():
            n = sum(tally.values())
            entry = counts.setdefault((site, zone), [0, 0])
            entry[0] += n
            entry[1] += n - tally.get("ok", 0)
        return find_hotspots(counts, min_devices, alpha)
