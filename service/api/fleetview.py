"""The fleet view: devices, their status and place, as the HTTP API and status page see them.

:class:`FleetView` is a read model over the pipeline's state (the device registry, the
active and recent alerts, the detectors) plus :class:`LatestValues`, which keeps each
device's newest telemetry. It answers:

- device lists with filters (site, zone, model, firmware, status, gateway, protocol) and
  paging, and one device's *twin* (metadata, place, latest metrics, alerts, and what each
  detector knows of it: firmware history, battery forecast, drift, connectivity, power);
- alerts, active and recent, filtered by kind, severity and site;
- geography: the hierarchy region > facility (site) > zone with status roll-ups, devices as
  GeoJSON, devices within a radius of a point, and zones whose share of devices in trouble
  is significantly above the rest of the fleet's.

A device's status is ``offline`` while a ``device_offline`` alert is open on it, else the
worst severity of its open alerts (``critical``, ``warning``, ``info``), else ``ok``; an
alert belongs to a device when its subject is the device or ``<device>/<metric>``.

Sites are placed and grouped into regions by configuration (:class:`SiteInfo`); devices by
their ``lat``/``lon`` metadata, or on a facility floor plan by ``pos_x``/``pos_y``.

The hierarchy and the hotspot test are built from counts by :func:`build_tree` and
:func:`find_hotspots`, which the view of a daemon split into worker processes
(:mod:`service.api.fleetview_shards`) builds from the workers' merged counts.

>>> round(haversine_m(52.0, 4.0, 52.0, 4.01))
685
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from service.alerts.lifecycle import AlertManager
from service.intake.registry import DeviceInfo, DeviceRegistry
from service.records import AlertRecord, MessageKind, Reading, iso_utc

STATUSES = ("critical", "offline", "warning", "info", "ok")
FILTERS = ("site", "zone", "model", "firmware", "status", "gateway", "protocol")
COMPACT_COLUMNS = ("id", "status", "lat", "lon", "x", "y", "site", "zone", "region", "alerts")
EARTH_RADIUS_M = 6_371_008.8
_RANK = {name: rank for rank, name in enumerate(STATUSES)}


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """A facility: its display name, region and map position (from configuration)."""

    name: str | None = None
    region: str | None = None
    lat: float | None = None
    lon: float | None = None


class LatestValues:
    """Each device's newest telemetry reading: a detector that only remembers.

    It raises nothing; it sits among the detectors so it sees every reading, is saved in
    checkpoints with them and costs one dictionary store per reading.
    """

    name = "latest"
    STATE_VERSION = 1

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, Mapping[str, float]]] = {}

    def process(self, batch: Sequence[Reading]) -> list[Any]:
        latest = self._latest
        telemetry = MessageKind.TELEMETRY
        # a Reading's fields in order: device_id, ts, received_at, metrics, meta, seq, kind, late
        for device_id, ts, _, metrics, _, _, kind, late in batch:
            if late or kind is not telemetry or not metrics:
                continue
            latest[device_id] = (ts, metrics)
        return []

    def tick(self, now: float) -> list[Any]:
        return []

    def get(self, device_id: str) -> tuple[float, Mapping[str, float]] | None:
        return self._latest.get(device_id)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "latest": {d: [ts, dict(metrics)] for d, (ts, metrics) in self._latest.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"latest-values state format {state.get('version')} is not 1")
        self._latest = {
            str(d): (float(ts), {str(k): float(v) for k, v in metrics.items()})
            for d, (ts, metrics) in state["latest"].items()
        }


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as lists and maps show it."""

    id: str
    site: str | None
    zone: str | None
    region: str
    model: str | None
    firmware: str | None
    gateway: str | None
    protocol: str | None
    status: str
    alerts: int
    lat: float | None
    lon: float | None
    x: float | None
    y: float | None
    last_seen: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "site": self.site, "zone": self.zone, "region": self.region,
            "model": self.model, "firmware": self.firmware, "gateway": self.gateway,
            "protocol": self.protocol, "status": self.status, "alerts": self.alerts,
            "lat": self.lat, "lon": self.lon, "x": self.x, "y": self.y,
            "last_seen": iso_utc(self.last_seen),
        }  # fmt: skip


ZoneRow = tuple[DeviceInfo, str, str, str, str, float | None, float | None]
"""A device in the hierarchy: info, region, site, zone, status, latitude, longitude."""


def alert_filter(filters: Mapping[str, str]) -> Callable[[AlertRecord], bool]:
    """A test for alerts matching ``filters``: exact ``kind``, ``severity`` and ``site``."""

    def keep(alert: AlertRecord) -> bool:
        if filters.get("kind") and alert.kind != filters["kind"]:
            return False
        if filters.get("severity") and alert.severity.label != filters["severity"]:
            return False
        return not (filters.get("site") and alert.site != filters["site"])

    return keep


def near_entry(distance_m: float, row: DeviceRow) -> dict[str, Any]:
    """One device of a radius query: its row and its distance in metres."""
    return {**row.to_json(), "distance_m": round(distance_m, 1)}


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class FleetView:
    """Queries over the fleet's current state; see the module documentation."""

    def __init__(
        self,
        registry: DeviceRegistry,
        alerts: AlertManager,
        *,
        latest: LatestValues | None = None,
        detectors: Sequence[Any] = (),
        reports: Callable[[], dict[str, dict[str, Any]]] = dict,
        sites: Mapping[str, SiteInfo] | None = None,
    ) -> None:
        self.registry = registry
        self.alerts = alerts
        self.latest = latest
        self.detectors = detectors
        self._reports = reports
        self.sites = dict(sites or {})
        self._features: dict[str, tuple[Mapping[str, str], dict[str, Any]]] = {}
        self._places: dict[
            str,
            tuple[
                Mapping[str, str],
                tuple[str, float | None, float | None, float | None, float | None],
            ],
        ] = {}

    # -- status --------------------------------------------------------------------

    def device_of(self, alert: AlertRecord) -> str | None:
        """The device an alert is about, if any."""
        subject = alert.subject
        if subject in self.registry:
            return subject
        head = subject.split("/", 1)[0]
        return head if head != subject and head in self.registry else None

    def alerts_of(self, device_id: str) -> list[AlertRecord]:
        """Open alerts about one device (found through the alert manager's index)."""
        return [
            alert for alert in self.alerts.about(device_id) if self.device_of(alert) == device_id
        ]

    def device_alerts(self) -> dict[str, list[AlertRecord]]:
        """Open alerts by the device they are about."""
        out: dict[str, list[AlertRecord]] = {}
        for alert in self.alerts.active():
            device = self.device_of(alert)
            if device is not None:
                out.setdefault(device, []).append(alert)
        return out

    @staticmethod
    def status_of(alerts: Iterable[AlertRecord]) -> str:
        best = "ok"
        for alert in alerts:
            name = "offline" if alert.kind == "device_offline" else alert.severity.label
            if _RANK.get(name, 4) < _RANK[best]:
                best = name
        return best

    def region_of(self, site: str | None) -> str:
        info = self.sites.get(site or "")
        if info is not None and info.region:
            return info.region
        return "unassigned"

    def _place(self, info: DeviceInfo) -> tuple[str, float | None, float | None, float | None,
                                                float | None]:  # fmt: skip
        """Region and parsed coordinates, cached while the device's metadata is unchanged."""
        meta = info.meta
        cached = self._places.get(info.device_id)
        if cached is not None and cached[0] is meta:
            return cached[1]
        place = (
            meta.get("region") or self.region_of(meta.get("site")),
            _float(meta.get("lat")), _float(meta.get("lon")),
            _float(meta.get("pos_x")), _float(meta.get("pos_y")),
        )  # fmt: skip
        self._places[info.device_id] = (meta, place)
        return place

    def row(self, info: DeviceInfo, alerts: Sequence[AlertRecord]) -> DeviceRow:
        meta = info.meta
        region, lat, lon, x, y = self._place(info)
        return DeviceRow(
            id=info.device_id, site=meta.get("site"), zone=meta.get("zone"), region=region,
            model=meta.get("model"), firmware=meta.get("firmware"), gateway=meta.get("gateway"),
            protocol=meta.get("protocol"), status=self.status_of(alerts) if alerts else "ok",
            alerts=len(alerts), lat=lat, lon=lon, x=x, y=y, last_seen=info.last_seen,
        )  # fmt: skip

    def _matching(self, filters: Mapping[str, str] | None) -> Iterator[
            tuple[DeviceInfo, Sequence[AlertRecord]]]:  # fmt: skip
        """Devices matching ``filters`` with their open alerts; metadata is tested first."""
        wanted = {k: v for k, v in (filters or {}).items() if v}
        status = wanted.pop("status", None)
        by_device = self.device_alerts()
        items = tuple(wanted.items())
        none: tuple[AlertRecord, ...] = ()
        for info in self.registry:
            if items:
                meta = info.meta
                if any(meta.get(key) != value for key, value in items):
                    continue
            alerts = by_device.get(info.device_id, none)
            if status is not None and (self.status_of(alerts) if alerts else "ok") != status:
                continue
            yield info, alerts

    def rows(self, filters: Mapping[str, str] | None = None) -> Iterator[DeviceRow]:
        """Every device matching ``filters`` (exact values of :data:`FILTERS` keys)."""
        for info, alerts in self._matching(filters):
            yield self.row(info, alerts)

    def devices(
        self, filters: Mapping[str, str], limit: int, offset: int, compact: bool = False
    ) -> dict[str, Any]:
        """A page of devices; ``compact`` gives rows of :data:`COMPACT_COLUMNS` instead of
        objects (what the status page loads: a fifth of the bytes)."""
        matching = sorted(self._matching(filters), key=lambda pair: pair[0].device_id)
        chosen = matching[offset : offset + limit]
        out: dict[str, Any] = {"total": len(matching), "limit": limit, "offset": offset}
        if compact:  # straight to rows: the page asks for every device at once
            rows = []
            for info, alerts in chosen:
                region, lat, lon, x, y = self._place(info)
                meta = info.meta
                status = self.status_of(alerts) if alerts else "ok"
                rows.append([info.device_id, status, lat, lon, x, y, meta.get("site"),
                             meta.get("zone"), region, len(alerts)])  # fmt: skip
            out["columns"] = list(COMPACT_COLUMNS)
            out["rows"] = rows
        else:
            out["devices"] = [self.row(info, alerts).to_json() for info, alerts in chosen]
        return out

    # -- one device ----------------------------------------------------------------

    def twin(self, device_id: str) -> dict[str, Any] | None:
        """Everything known of one device, or ``None``."""
        info = self.registry.get(device_id)
        if info is None:
            return None
        alerts = self.alerts_of(device_id)
        row = self.row(info, alerts)
        latest = self.latest.get(device_id) if self.latest is not None else None
        views: dict[str, Any] = {}
        for detector in self.detectors:
            describe = getattr(detector, "device_view", None)
            if describe is not None:
                view = describe(device_id)
                if view is not None:
                    views[detector.name] = view
        recent = [
            a.to_json_dict() for a in reversed(self.alerts.recent) if self.device_of(a) == device_id
        ][:20]
        return {
            **row.to_json(),
            "first_seen": iso_utc(info.first_seen),
            "meta": dict(info.meta),
            "latest": None
            if latest is None
            else {"ts": iso_utc(latest[0]), "metrics": dict(latest[1])},
            "active_alerts": [a.to_json_dict() for a in alerts],
            "recent_alerts": recent,
            "detectors": views,
        }

    # -- alerts and reports ------------------------------------------------------------

    def active_alerts(self, filters: Mapping[str, str]) -> list[AlertRecord]:
        """Open alerts matching ``filters`` (``kind``, ``severity``, ``site``), by kind and
        subject."""
        keep = alert_filter(filters)
        active = [a for a in self.alerts.active() if keep(a)]
        active.sort(key=lambda a: (a.kind, a.subject))
        return active

    def recent_alerts(self, filters: Mapping[str, str]) -> Iterator[AlertRecord]:
        """Resolved alerts matching ``filters``, the most recently resolved first."""
        keep = alert_filter(filters)
        return (a for a in reversed(self.alerts.recent) if keep(a))

    def alert_list(self, filters: Mapping[str, str], state: str, limit: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if state in ("active", "all"):
            out["active"] = [a.to_json_dict() for a in self.active_alerts(filters)[:limit]]
        if state in ("recent", "all"):
            recent = islice(self.recent_alerts(filters), limit)
            out["recent"] = [a.to_json_dict() for a in recent]
        return out

    def reports(self) -> dict[str, dict[str, Any]]:
        return self._reports()

    # -- geography -----------------------------------------------------------------------

    def geojson(self, filters: Mapping[str, str]) -> dict[str, Any]:
        """Devices with coordinates as a GeoJSON FeatureCollection (``[lon, lat]``)."""
        return {"type": "FeatureCollection",
                "features": [feature for _, feature in self.features(filters)]}  # fmt: skip

    def features(self, filters: Mapping[str, str]) -> Iterator[tuple[DeviceInfo, dict[str, Any]]]:
        """Each device matching ``filters`` that has coordinates, with its GeoJSON feature.

        A device's feature is kept while its metadata is unchanged; only its status and
        alert count are refreshed per request.
        """
        cache = self._features
        for info, alerts in self._matching(filters):
            cached = cache.get(info.device_id)
            if cached is None or cached[0] is not info.meta:
                row = self.row(info, ())
                if row.lat is None or row.lon is None:
                    continue
                feature: dict[str, Any] = {
                    "type": "Feature",
                    "id": row.id,
                    "geometry": {"type": "Point", "coordinates": [row.lon, row.lat]},
                    "properties": {
                        "status": "ok", "site": row.site, "zone": row.zone,
                        "region": row.region, "model": row.model, "alerts": 0,
                    },
                }  # fmt: skip
                cache[info.device_id] = (info.meta, feature)
            else:
                feature = cached[1]
            properties: dict[str, Any] = feature["properties"]
            properties["status"] = self.status_of(alerts) if alerts else "ok"
            properties["alerts"] = len(alerts)
            yield info, feature

    def near(self, lat: float, lon: float, radius_m: float, limit: int) -> dict[str, Any]:
        """Devices within ``radius_m`` of a point, nearest first."""
        found = self.nearby(lat, lon, radius_m)
        return {
            "center": {"lat": lat, "lon": lon},
            "radius_m": radius_m,
            "total": len(found),
            "devices": [near_entry(d, row) for d, row in found[:limit]],
        }

    def nearby(self, lat: float, lon: float, radius_m: float) -> list[tuple[float, DeviceRow]]:
        """Devices within ``radius_m`` of a point with their distance, nearest first (devices
        at the same distance in registry order)."""
        found: list[tuple[float, DeviceRow]] = []
        # a cheap box first: a degree of latitude is about 111 km everywhere
        dlat = radius_m / 111_000.0
        dlon = dlat / max(0.01, math.cos(math.radians(lat)))
        for row in self.rows():
            if row.lat is None or row.lon is None:
                continue
            if abs(row.lat - lat) > dlat or abs(row.lon - lon) > dlon:
                continue
            distance = haversine_m(lat, lon, row.lat, row.lon)
            if distance <= radius_m:
                found.append((distance, row))
        found.sort(key=lambda pair: pair[0])
        return found

    def zone_rows(self) -> Iterator[ZoneRow]:
        """Every device as the hierarchy counts it: region, site and zone (``unknown`` when
        not set), status and coordinates, in registry order."""
        for info, alerts in self._matching(None):
            region, lat, lon, _, _ = self._place(info)
            meta = info.meta
            yield (info, region, meta.get("site") or "unknown", meta.get("zone") or "unknown",
                   self.status_of(alerts) if alerts else "ok", lat, lon)  # fmt: skip

    def tree(self) -> dict[str, Any]:
        """Region > facility > zone, each with device counts by status and a position."""
        counts: dict[tuple[str, str, str], dict[str, int]] = {}
        sums: dict[tuple[str, str], list[float]] = {}  # (site, zone) -> n, sum lat, sum lon
        for _, region, site, zone, status, lat, lon in self.zone_rows():
            tally = counts.get((region, site, zone))
            if tally is None:
                tally = counts[(region, site, zone)] = {}
            tally[status] = tally.get(status, 0) + 1
            if lat is not None and lon is not None:
                acc = sums.get((site, zone))
                if acc is None:
                    acc = sums[(site, zone)] = [0.0, 0.0, 0.0]
                acc[0] += 1
                acc[1] += lat
                acc[2] += lon
        return build_tree(counts, sums, self.sites)

    def hotspots(self, min_devices: int = 5, alpha: float = 0.01) -> dict[str, Any]:
        """Zones whose share of devices with open alerts is significantly above the rest's
        (see :func:`find_hotspots`)."""
        counts: dict[tuple[str, str], list[int]] = {}
        for row in self.rows():
            key = (row.site or "unknown", row.zone or "unknown")
            entry = counts.setdefault(key, [0, 0])
            entry[0] += 1
            entry[1] += row.status != "ok"
        return find_hotspots(counts, min_devices, alpha)


def build_tree(
    counts: Mapping[tuple[str, str, str], Mapping[str, int]],
    sums: Mapping[tuple[str, str], Sequence[float]],
    sites: Mapping[str, SiteInfo],
) -> dict[str, Any]:
    """The hierarchy region > facility > zone from device counts by status per
    ``(region, site, zone)`` and ``[devices, sum of lat, sum of lon]`` of the devices with
    coordinates per ``(site, zone)``; nodes come in the order of ``counts``.

    A zone is placed at its devices' mean position; a facility at its configured position,
    else at the mean of its devices'.

    >>> tree = build_tree({("North", "s1", "z1"): {"ok": 2, "critical": 1}},
    ...                   {("s1", "z1"): [2.0, 104.0, 8.0]}, {})
    >>> site = tree["regions"]["North"]["sites"]["s1"]
    >>> site["devices"], site["status"], site["lat"], site["zones"]["z1"]["lon"]
    (3, {'ok': 2, 'critical': 1}, 52.0, 4.0)
    """

    def node(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "devices": 0, "status": {}, **extra}

    def add(target: dict[str, Any], tally: Mapping[str, int]) -> None:
        for status, n in tally.items():
            target["devices"] += n
            target["status"][status] = target["status"].get(status, 0) + n

    regions: dict[str, dict[str, Any]] = {}
    for (region_name, site_name, zone_name), tally in counts.items():
        region_node = regions.setdefault(region_name, node(region_name, sites={}))
        site_info = sites.get(site_name, SiteInfo())
        site_node = region_node["sites"].get(site_name)
        if site_node is None:
            site_node = region_node["sites"][site_name] = node(
                site_name, title=site_info.name or site_name, lat=site_info.lat,
                lon=site_info.lon, zones={},
            )  # fmt: skip
        acc = sums.get((site_name, zone_name))
        zone_node = site_node["zones"].setdefault(
            zone_name,
            node(zone_name, lat=acc[1] / acc[0] if acc else None,
                 lon=acc[2] / acc[0] if acc else None),
        )  # fmt: skip
        for target in (region_node, site_node, zone_node):
            add(target, tally)
    for region_node in regions.values():
        for site_name, site_node in region_node["sites"].items():
            if site_node["lat"] is None:
                parts = [a for (s_name, _), a in sums.items() if s_name == site_name]
                n = sum(a[0] for a in parts)
                if n:
                    site_node["lat"] = sum(a[1] for a in parts) / n
                    site_node["lon"] = sum(a[2] for a in parts) / n
    return {"regions": regions}


def find_hotspots(
    counts: Mapping[tuple[str, str], Sequence[int]], min_devices: int = 5, alpha: float = 0.01
) -> dict[str, Any]:
    """Zones whose share of devices in trouble is significantly above the rest's, from
    ``[devices, devices in trouble]`` per ``(site, zone)``.

    One-sided two-proportion z-test per zone against all other devices, Bonferroni-
    corrected over the zones tested; a finding also needs at least twice the rate. Findings
    come by p-value, zones with equal p-values in the order of ``counts``.

    >>> found = find_hotspots({("s", "hot"): [10, 8], ("s", "cold"): [90, 3]})
    >>> found["zones_tested"], [(h["zone"], h["rate"]) for h in found["hotspots"]]
    (2, [('hot', 0.8)])
    """
    total = sum(n for n, _ in counts.values())
    bad = sum(b for _, b in counts.values())
    tested = [k for k, (n, _) in counts.items() if n >= min_devices and total - n > 0]
    threshold = alpha / max(1, len(tested))
    findings: list[dict[str, Any]] = []
    for key in tested:
        n, b = counts[key]
        rest_n, rest_b = total - n, bad - b
        p1, p2 = b / n, rest_b / rest_n
        pooled = (b + rest_b) / (n + rest_n)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / rest_n))
        if se == 0 or p1 < 2 * p2 or p1 == 0:
            continue
        z = (p1 - p2) / se
        p_value = 0.5 * math.erfc(z / math.sqrt(2))
        if p_value < threshold:
            findings.append({
                "site": key[0], "zone": key[1], "devices": n, "in_trouble": b,
                "rate": round(p1, 4), "rest_rate": round(p2, 4),
                "ratio": round(p1 / p2, 2) if p2 > 0 else None,
                "p_value": p_value, "z": round(z, 2),
            })  # fmt: skip
    findings.sort(key=lambda f: f["p_value"])
    return {"zones_tested": len(tested), "fleet_rate": bad / total if total else 0.0,
            "hotspots": findings}  # fmt: skip
