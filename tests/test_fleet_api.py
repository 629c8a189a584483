"""The fleet API over real HTTP against a daemon fed by the simulator through a real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from service.alerts.lifecycle import AlertManager
from service.api.fleetapi import FleetApi, FleetEvents, openapi_document
from service.api.fleetview import FleetView, haversine_m
from service.intake.registry import DeviceRegistry
from service.records import Severity, Signal
from tests.fleet_helpers import SITES, START, simulated_fleet

pytestmark = pytest.mark.broker


async def test_devices_twins_alerts_reports_and_geography(
    broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    async with simulated_fleet(broker, topic_prefix, mqtt_client) as fleet:
        failing = {p.device_id for p in fleet.simulator.planted()}
        sim_devices = {d.device_id: d for d in fleet.simulator.devices}

        status, page = await fleet.get("/api/devices?limit=1000")
        assert status == 200 and page["total"] == len(sim_devices) == 60
        rows = {row["id"]: row for row in page["devices"]}
        assert set(rows) == set(sim_devices)
        assert {d for d, row in rows.items() if row["status"] == "critical"} == failing
        sample = rows["th-000000"] if "th-000000" in rows else next(iter(rows.values()))
        assert sample["lat"] == pytest.approx(sim_devices[sample["id"]].lat)
        assert sample["region"] in {"Benelux", "Alps"}

        status, site_a = await fleet.get("/api/devices?site=plant-a&limit=1000")
        expected = {i for i, d in sim_devices.items() if d.site == "plant-a"}
        assert {row["id"] for row in site_a["devices"]} == expected
        status, critical = await fleet.get("/api/devices?status=critical")
        assert {row["id"] for row in critical["devices"]} == failing
        status, paged = await fleet.get("/api/devices?limit=7&offset=7")
        assert [row["id"] for row in paged["devices"]] == sorted(rows)[7:14]
        status, compact = await fleet.get("/api/devices?format=compact&limit=5")
        assert compact["columns"][:2] == ["id", "status"] and len(compact["rows"]) == 5

        victim = sorted(failing)[0]
        status, twin = await fleet.get(f"/api/devices/{victim}")
        assert status == 200 and twin["status"] == "critical"
        assert twin["meta"]["model"] == sim_devices[victim].model.name
        assert twin["latest"]["metrics"]["battery_v"] < 3.3
        assert [a["kind"] for a in twin["active_alerts"]] == ["rule.battery_low"]
        assert {"battery", "firmware", "connectivity"} <= set(twin["detectors"])
        assert twin["detectors"]["firmware"]["version"] == sim_devices[victim].firmware
        status, missing = await fleet.get("/api/devices/no-such-device")
        assert status == 404 and "no-such-device" in missing["error"]

        status, alerts = await fleet.get("/api/alerts?kind=rule.battery_low&severity=critical")
        assert {a["subject"] for a in alerts["active"]} == failing
        site = sim_devices[victim].site
        status, by_site = await fleet.get(f"/api/alerts?state=active&site={site}")
        assert victim in {a["subject"] for a in by_site["active"]} and "recent" not in by_site
        status, bad = await fleet.get("/api/alerts?severity=dreadful")
        assert status == 400 and bad["parameter"] == "severity"

        status, names = await fleet.get("/api/reports")
        assert {"battery", "firmware", "gateway", "connectivity"} <= set(names["reports"])
        status, battery = await fleet.get("/api/reports/battery")
        assert status == 200 and isinstance(battery, dict) and battery
        status, unknown = await fleet.get("/api/reports/nope")
        assert status == 404 and "battery" in unknown["known"]

        status, geo = await fleet.get("/api/geo/devices")
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 60
        feature = next(f for f in geo["features"] if f["id"] == victim)
        assert feature["geometry"]["coordinates"] == [
            pytest.approx(sim_devices[victim].lon),
            pytest.approx(sim_devices[victim].lat),
        ]
        assert feature["properties"]["status"] == "critical"

        a = SITES["plant-a"]
        status, near = await fleet.get(f"/api/geo/near?lat={a['lat']}&lon={a['lon']}&radius_m=3000")
        inside = {
            i for i, d in sim_devices.items()
            if haversine_m(a["lat"], a["lon"], d.lat, d.lon) <= 3000
        }  # fmt: skip
        assert {row["id"] for row in near["devices"]} == inside and inside
        distances = [row["distance_m"] for row in near["devices"]]
        assert distances == sorted(distances)
        status, bad = await fleet.get("/api/geo/near?lat=95&lon=0&radius_m=10")
        assert status == 400 and bad["parameter"] == "lat"

        status, tree = await fleet.get("/api/geo/tree")
        regions = tree["regions"]
        assert set(regions) == {"Benelux", "Alps"}
        assert sum(r["devices"] for r in regions.values()) == 60
        plant_a = regions["Benelux"]["sites"]["plant-a"]
        assert plant_a["title"] == "Plant A" and plant_a["devices"] == len(expected)
        assert sum(z["devices"] for z in plant_a["zones"].values()) == len(expected)
        status, hot = await fleet.get("/api/geo/hotspots")
        assert status == 200 and hot["zones_tested"] >= 1


async def test_alert_changes_stream_to_the_page(broker, topic_prefix, mqtt_client) -> None:  # type: ignore[no-untyped-def]
    async with simulated_fleet(broker, topic_prefix, mqtt_client, faults=()) as fleet:
        target = next(d for d in fleet.simulator.devices if d.model.battery)
        topic = f"{topic_prefix}/fleet/{target.site}/{target.device_id}/telemetry"
        async with (
            aiohttp.ClientSession() as session,
            session.get(fleet.url + "/api/events") as response,
        ):
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert await asyncio.wait_for(response.content.readline(), 5) == b"retry: 2000\n"
            body = orjson.dumps({"ts": START + 3600, "seq": 999, "battery_v": 3.0})
            await mqtt_client.publish(topic, body)
            event = await asyncio.wait_for(_next_event(response, "alert"), 10)
        assert event["device"] == target.device_id and event["status"] == "critical"
        assert event["alert"]["kind"] == "rule.battery_low"


async def _next_event(response: aiohttp.ClientResponse, name: str) -> dict[str, Any]:
    current = None
    while True:
        line = (await response.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            current = line[7:]
        elif line.startswith("data: ") and current == name:
            return dict(orjson.loads(line[6:]))


async def test_the_openapi_document_is_valid_and_covers_every_route(
    broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    document = openapi_document()
    validate(document)
    async with simulated_fleet(broker, topic_prefix, mqtt_client, devices=5, minutes=2) as fleet:
        status, served = await fleet.get("/api/openapi.json")
        assert status == 200 and served == orjson.loads(orjson.dumps(document))
        app = web.Application()
        FleetApi(fleet.daemon.fleet_view, FleetEvents()).add_routes(app)
        routes = {r.canonical for r in app.router.resources()} | {"/api/alerts"}
        assert {r for r in routes if r.startswith("/api/")} == {
            *document["paths"],
            "/api/openapi.json",
        }
        status, bad = await fleet.get("/api/devices?limit=zero")
        assert status == 400 and bad == {"error": "limit must be an integer, not 'zero'",
                                         "parameter": "limit"}  # fmt: skip
        status, bad = await fleet.get("/api/devices?status=purple")
        assert status == 400 and bad["parameter"] == "status"


def test_status_follows_the_worst_open_alert_and_hotspots_need_significance() -> None:
    registry = DeviceRegistry()
    for i in range(100):
        zone = "hot" if i < 10 else f"z{i % 3}"
        registry.observe(f"d{i}", 1.0, 1.0, {"site": "s", "zone": zone})
    alerts = AlertManager()
    fired = [Signal("rule.x", f"d{i}", True, at=2.0, severity=Severity.WARNING) for i in range(8)]
    fired.append(Signal("device_offline", "d0", True, at=2.0, severity=Severity.WARNING))
    fired.append(Signal("power_anomaly", "d1", True, at=2.0, severity=Severity.CRITICAL))
    fired.append(Signal("reading_anomaly", "d50/power_mw", True, at=2.0))
    alerts.apply(fired)
    view = FleetView(registry, alerts)
    rows = {row.id: row for row in view.rows()}
    assert rows["d0"].status == "offline" and rows["d1"].status == "critical"
    assert rows["d2"].status == "warning" and rows["d50"].status == "warning"
    assert rows["d99"].status == "ok" and rows["d0"].alerts == 2
    found = view.hotspots()
    assert [(h["site"], h["zone"]) for h in found["hotspots"]] == [("s", "hot")]
    assert found["hotspots"][0]["rate"] == 0.8


def test_a_device_region_in_its_metadata_wins_over_its_site() -> None:
    from service.api.fleetview import SiteInfo

    registry = DeviceRegistry()
    registry.observe("a", 1.0, 1.0, {"site": "s1", "zone": "z"})
    registry.observe("b", 1.0, 1.0, {"site": "s1", "zone": "z", "region": "Far North"})
    view = FleetView(registry, AlertManager(), sites={"s1": SiteInfo("Site 1", "North")})
    assert {row.id: row.region for row in view.rows()} == {"a": "North", "b": "Far North"}
    assert set(view.tree()["regions"]) == {"North", "Far North"}
