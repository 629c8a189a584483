"""The fleet API and status page, served by the daemon beside ``/metrics``.

Routes (all ``GET``, JSON unless said otherwise; the OpenAPI document at
``/api/openapi.json`` describes each parameter and response):

- ``/api/devices``: devices with filters and paging; ``/api/devices/{id}``: one twin;
- ``/api/alerts``: active and recent alerts, filtered by kind, severity and site;
- ``/api/reports`` and ``/api/reports/{name}``: the detectors' reports (battery replacement
  plan, recalibration schedule, firmware compliance, gateway balance, environment);
- ``/api/geo/devices`` (GeoJSON), ``/api/geo/near``, ``/api/geo/tree``,
  ``/api/geo/hotspots``: geography;
- ``/api/events``: alert changes as server-sent events;
- ``/``: the status page (a map with drill-down, floor plans and live alerts), with its
  scripts and the vendored map library under ``/static/``.

A bad parameter gets ``400`` with ``{"error": ..., "parameter": ...}``; an unknown device or
report ``404`` with ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web

from service.api.fleetview import FILTERS, STATUSES, FleetView
from service.records import AlertRecord, DeadLetter, Severity

if TYPE_CHECKING:
    from service.api.fleetview_shards import ShardedFleetView

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_LIMIT = 100_000
HEARTBEAT_S = 15.0
_T = TypeVar("_T")


class BadRequest(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def alert_event(view: FleetView, alert: AlertRecord) -> dict[str, Any]:
    """The event the page gets for one alert change: the alert, the device it is about and
    that device's status now (both ``None`` for an alert about no device)."""
    device = view.device_of(alert)
    status = None
    if device is not None:
        status = view.status_of(view.alerts_of(device))
    return {"type": "alert", "alert": alert.to_json_dict(), "device": device,
            "status": status}  # fmt: skip


class FleetEvents:
    """A sink that fans alert changes out to the page's event streams.

    Each subscriber has a bounded queue; one that falls behind is sent ``resync`` (reload
    everything) instead of an ever-growing backlog. Events built elsewhere (forwarded from
    the worker processes' pipelines) go out through :meth:`deliver`.
    """

    name = "fleet-events"

    def __init__(self, queue_size: int = 1000) -> None:
        self._view: FleetView | None = None
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def __len__(self) -> int:
        return len(self._subscribers)

    def bind(self, view: FleetView) -> None:
        """The view that says which device an alert is about (built after the pipeline)."""
        self._view = view

    def offer(self, item: AlertRecord | DeadLetter) -> None:
        view = self._view
        if not isinstance(item, AlertRecord) or not self._subscribers or view is None:
            return
        self.deliver(alert_event(view, item))

    def deliver(self, event: dict[str, Any]) -> None:
        """Send one event to every open stream (call it on the event loop's thread)."""
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "resync"})

    def close(self) -> None:
        """End every open stream (the server is shutting down)."""
        for queue in list(self._subscribers):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait({"type": "bye"})

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
    )


async def _settled(value: _T | Awaitable[_T]) -> _T:
    """A view's answer: as it is from a :class:`FleetView`, awaited from a sharded one."""
    if isinstance(value, Awaitable):
        return await value
    return value


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(name, f"{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(name, f"{name} must be between {low} and {high}")
    return value


def _float(request: web.Request, name: str, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        raise BadRequest(name, f"{name} is required")
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(name, f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(name, f"{name} must be between {low:g} and {high:g}")
    return value


def _filters(request: web.Request) -> dict[str, str]:
    filters = {key: request.query[key] for key in FILTERS if request.query.get(key)}
    status = filters.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest("status", f"status must be one of {', '.join(STATUSES)}")
    return filters


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except BadRequest as exc:
        return _json({"error": str(exc), "parameter": exc.parameter}, status=400)


class FleetApi:
    """The routes; built over a :class:`FleetView` (or, in a multi-process daemon, a
    :class:`~service.api.fleetview_shards.ShardedFleetView`) and a :class:`FleetEvents`."""

    def __init__(
        self,
        view: FleetView | ShardedFleetView,
        events: FleetEvents,
        *,
        tile_url: str | None = None,
        title: str = "FleetWatch",
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.view = view
        self.events = events
        self.tile_url = tile_url
        self.title = title
        self.heartbeat_s = heartbeat_s

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(_errors)
        router = app.router
        router.add_get("/", self.page)
        router.add_get("/api/openapi.json", self.openapi)
        router.add_get("/api/view-config", self.view_config)
        router.add_get("/api/devices", self.devices)
        router.add_get("/api/devices/{device_id}", self.device)
        router.add_get("/api/reports", self.report_names)
        router.add_get("/api/reports/{name}", self.report)
        router.add_get("/api/geo/devices", self.geo_devices)
        router.add_get("/api/geo/near", self.geo_near)
        router.add_get("/api/geo/tree", self.geo_tree)
        router.add_get("/api/geo/hotspots", self.geo_hotspots)
        router.add_get("/api/events", self.stream)
        router.add_static("/static/", STATIC_DIR, follow_symlinks=False)

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def view_config(self, request: web.Request) -> web.Response:
        sites = {
            name: {"name": info.name, "region": info.region, "lat": info.lat, "lon": info.lon}
            for name, info in self.view.sites.items()
        }
        return _json({"title": self.title, "tile_url": self.tile_url, "sites": sites,
                      "statuses": list(STATUSES)})  # fmt: skip

    async def devices(self, request: web.Request) -> web.Response:
        limit = _int(request, "limit", 100, 1, MAX_LIMIT)
        offset = _int(request, "offset", 0, 0, 10**9)
        shape = request.query.get("format", "full")
        if shape not in ("full", "compact"):
            raise BadRequest("format", "format must be full or compact")
        filters = _filters(request)
        return _json(await _settled(self.view.devices(filters, limit, offset, shape == "compact")))

    async def device(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        twin = await _settled(self.view.twin(device_id))
        if twin is None:
            return _json({"error": f"no device {device_id!r}"}, status=404)
        return _json(twin)

    async def alerts(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "all")
        if state not in ("active", "recent", "all"):
            raise BadRequest("state", "state must be active, recent or all")
        severity = request.query.get("severity")
        if severity and severity not in {s.label for s in Severity}:
            raise BadRequest("severity", "severity must be info, warning or critical")
        filters = {
            k: request.query[k] for k in ("kind", "severity", "site") if request.query.get(k)
        }
        limit = _int(request, "limit", 1000, 1, MAX_LIMIT)
        return _json(await _settled(self.view.alert_list(filters, state, limit)))

    async def report_names(self, request: web.Request) -> web.Response:
        return _json({"reports": sorted(await _settled(self.view.reports()))})

    async def report(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        reports = await _settled(self.view.reports())
        if name not in reports:
            return _json({"error": f"no report {name!r}", "known": sorted(reports)}, status=404)
        return _json(reports[name])

    async def geo_devices(self, request: web.Request) -> web.Response:
        return _json(await _settled(self.view.geojson(_filters(request))))

    async def geo_near(self, request: web.Request) -> web.Response:
        lat = _float(request, "lat", -90.0, 90.0)
        lon = _float(request, "lon", -180.0, 180.0)
        radius = _float(request, "radius_m", 0.0, 20_037_509.0)
        limit = _int(request, "limit", 1000, 1, MAX_LIMIT)
        return _json(await _settled(self.view.near(lat, lon, radius, limit)))

    async def geo_tree(self, request: web.Request) -> web.Response:
        return _json(await _settled(self.view.tree()))

    async def geo_hotspots(self, request: web.Request) -> web.Response:
        min_devices = _int(request, "min_devices", 5, 2, 10**6)
        return _json(await _settled(self.view.hotspots(min_devices=min_devices)))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        with self.events.subscribe() as queue:  # before the greeting: nothing slips by
            await response.prepare(request)
            await response.write(b"retry: 2000\nevent: hello\ndata: {}\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if event["type"] == "bye":
                    return response
                payload = orjson.dumps(event)
                await response.write(b"event: " + event["type"].encode() + b"\ndata: " +
                                     payload + b"\n\n")  # fmt: skip


def _param(name: str, description: str, schema: dict[str, Any], *, where: str = "query",
           required: bool = False) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "in": where, "description": description, "required": required,
            "schema": schema}  # fmt: skip


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or {"type": "object"}}}
    return {"200": {"description": description, "content": content}}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the fleet API."""
    text = {"type": "string"}
    error = {"$ref": "#/components/schemas/Error"}
    bad = {"400": {"description": "A bad parameter",
                   "content": {"application/json": {"schema": error}}}}  # fmt: skip
    missing = {"404": {"description": "Not found",
                       "content": {"application/json": {"schema": error}}}}  # fmt: skip
    filters = [
        _param("site", "Facility", text), _param("zone", "Zone or production line", text),
        _param("model", "Device model", text), _param("firmware", "Firmware version", text),
        _param("status", "Device status", {"type": "string", "enum": list(STATUSES)}),
        _param("gateway", "Gateway", text), _param("protocol", "mqtt, coap or lwm2m", text),
    ]  # fmt: skip
    paging = [
        _param("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
        _param("offset", "Rows to skip", {"type": "integer", "minimum": 0}),
    ]
    device = {"$ref": "#/components/schemas/Device"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "FleetWatch fleet API", "version": "1",
                 "description": "Devices, alerts, reports and geography of the fleet."},
        "paths": {
            "/api/devices": {"get": {
                "summary": "Devices, filtered and paged", "operationId": "listDevices",
                "parameters": [*filters, *paging, _param(
                    "format", "full: device objects; compact: columns and rows",
                    {"type": "string", "enum": ["full", "compact"]})],
                "responses": {**_ok("A page of devices", {
                    "type": "object", "required": ["total", "limit", "offset"],
                    "properties": {"total": {"type": "integer"}, "limit": {"type": "integer"},
                                   "offset": {"type": "integer"},
                                   "devices": {"type": "array", "items": device},
                                   "columns": {"type": "array", "items": text},
                                   "rows": {"type": "array", "items": {"type": "array"}}}}),
                              **bad},
            }},
            "/api/devices/{device_id}": {"get": {
                "summary": "One device's twin", "operationId": "getDevice",
                "parameters": [_param("device_id", "Device id", text, where="path",
                                      required=True)],
                "responses": {**_ok("The twin: metadata, latest metrics, alerts, and what "
                                    "each detector knows", {"type": "object",
                                    "required": ["id", "status", "meta", "detectors"]}),
                              **missing},
            }},
            "/api/alerts": {"get": {
                "summary": "Active and recent alerts", "operationId": "listAlerts",
                "parameters": [
                    _param("state", "Which alerts",
                           {"type": "string", "enum": ["active", "recent", "all"]}),
                    _param("kind", "Alert kind", text),
                    _param("severity", "Severity",
                           {"type": "string", "enum": ["info", "warning", "critical"]}),
                    _param("site", "Facility", text), paging[0],
                ],
                "responses": {**_ok("Alerts by state", {"type": "object", "properties": {
                    "active": {"type": "array", "items": {"type": "object"}},
                    "recent": {"type": "array", "items": {"type": "object"}}}}), **bad},
            }},
            "/api/reports": {"get": {
                "summary": "The detectors' report names", "operationId": "listReports",
                "responses": _ok("Report names", {"type": "object", "properties": {
                    "reports": {"type": "array", "items": text}}}),
            }},
            "/api/reports/{name}": {"get": {
                "summary": "One detector's report (battery replacement plan, recalibration "
                           "schedule, firmware compliance, gateway balance, environment)",
                "operationId": "getReport",
                "parameters": [_param("name", "Detector name", text, where="path",
                                      required=True)],
                "responses": {**_ok("The report"), **missing},
            }},
            "/api/geo/devices": {"get": {
                "summary": "Devices with coordinates as GeoJSON", "operationId": "geoDevices",
                "parameters": filters,
                "responses": {**_ok("A GeoJSON FeatureCollection", {
                    "type": "object", "required": ["type", "features"]}), **bad},
            }},
            "/api/geo/near": {"get": {
                "summary": "Devices within a radius of a point, nearest first",
                "operationId": "geoNear",
                "parameters": [
                    _param("lat", "Latitude", {"type": "number", "minimum": -90, "maximum": 90},
                           required=True),
                    _param("lon", "Longitude",
                           {"type": "number", "minimum": -180, "maximum": 180}, required=True),
                    _param("radius_m", "Radius in metres", {"type": "number", "minimum": 0},
                           required=True),
                    paging[0],
                ],
                "responses": {**_ok("Devices with their distance"), **bad},
            }},
            "/api/geo/tree": {"get": {
                "summary": "Region > facility > zone with device counts by status",
                "operationId": "geoTree", "responses": _ok("The hierarchy"),
            }},
            "/api/geo/hotspots": {"get": {
                "summary": "Zones whose share of devices in trouble is significantly above "
                           "the rest of the fleet's", "operationId": "geoHotspots",
                "parameters": [_param("min_devices", "Smallest zone tested",
                                      {"type": "integer", "minimum": 2})],
                "responses": {**_ok("Zones tested and findings"), **bad},
            }},
            "/api/events": {"get": {
                "summary": "Alert changes as server-sent events", "operationId": "events",
                "responses": {"200": {"description": "An event stream",
                                      "content": {"text/event-stream": {"schema": text}}}},
            }},
            "/api/view-config": {"get": {
                "summary": "What the status page needs: title, tile server, sites",
                "operationId": "viewConfig", "responses": _ok("The page's configuration"),
            }},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": text, "parameter": text}},
            "Device": {"type": "object",
                       "required": ["id", "status", "site", "zone", "region", "last_seen"],
                       "properties": {
                           "id": text, "status": {"type": "string", "enum": list(STATUSES)},
                           "site": {"type": ["string", "null"]},
                           "zone": {"type": ["string", "null"]}, "region": text,
                           "model": {"type": ["string", "null"]},
                           "firmware": {"type": ["string", "null"]},
                           "gateway": {"type": ["string", "null"]},
                           "protocol": {"type": ["string", "null"]},
                           "alerts": {"type": "integer"},
                           "lat": {"type": ["number", "null"]},
                           "lon": {"type": ["number", "null"]},
                           "x": {"type": ["number", "null"]}, "y": {"type": ["number", "null"]},
                           "last_seen": text}},
        }},
    }  # fmt: skip
