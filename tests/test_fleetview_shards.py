"""The fleet view of workers split by site answers as one view over the whole fleet.

One daemon takes a simulated fleet's whole stream; two more (the workers) take it split by
site, with devices that report no site spread over both. A :class:`ShardedFleetView` over
the workers, calling :data:`WORKER_CALLS` through pickle as a process boundary would, must
give the single daemon's view's JSON byte for byte, directly and through the fleet API.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config.settings import Settings
from service.api.fleetapi import FleetApi, FleetEvents
from service.api.fleetview import SiteInfo
from service.api.fleetview_shards import WORKER_CALLS, EventForwarder, ShardedFleetView
from service.records import RawMessage
from service.runtime.daemon import Daemon
from service.simulator import FaultSpec, SimulationConfig, Simulator
from tests.daemon_helpers import daemon_settings
from tests.fleet_helpers import SITES, START

Message = tuple[float, str, bytes]  # device time, topic, payload
PREFIX = "shards"
EAST = ("plant-a", "plant-b")  # the first worker's sites; the second has the rest
REPORTS: dict[str, dict[str, Any]] = {
    "battery": {"replace": ["th-000002"]},
    "firmware": {"versions": {"1.0": 3}},
}


def _wire(value: Any) -> Any:
    """``value`` as it comes out of another process."""
    return pickle.loads(pickle.dumps(value))


def _settings() -> Settings:
    return daemon_settings(
        "127.0.0.1", 1, PREFIX, http={"enabled": False}, fleetview={"sites": SITES},
        topics={"templates": [f"{PREFIX}/fleet/{{site}}/{{device_id}}/{{kind}}",
                              f"{PREFIX}/loose/{{device_id}}/{{kind}}"]},
    )  # fmt: skip


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


@dataclass
class Shards:
    """One daemon over the whole fleet and two workers over its sites, fed alike."""

    whole: Daemon
    workers: list[Daemon]
    batteries: list[tuple[str, str, str]] = field(default_factory=list)  # id, site, zone
    events: FleetEvents = field(default_factory=FleetEvents)
    forwarded: int = 0
    received: float = START

    def worker_of(self, topic: str) -> int:
        _, kind, first, *_ = topic.split("/")
        if kind == "loose":  # no site: spread by the device's number
            return int(first.rsplit("-", 1)[1]) % 2
        return 0 if first in EAST else 1

    def feed(self, messages: list[Message], batch: int = 64) -> None:
        """Process ``(ts, topic, payload)`` in batches, each worker its share; tick all."""
        for start in range(0, len(messages), batch):
            raws = []
            for ts, topic, payload in messages[start : start + batch]:
                # receive times rise strictly: the order first heard of is unambiguous
                self.received = max(self.received + 1e-3, ts)
                raws.append(RawMessage(topic, payload, self.received, "mqtt", None))
            self.whole.pipeline.process_messages(raws)
            for index, worker in enumerate(self.workers):
                share = [raw for raw in raws if self.worker_of(raw.topic) == index]
                if share:
                    worker.pipeline.process_messages(share)
            for daemon in (self.whole, *self.workers):
                daemon.pipeline.tick(self.received)

    def reading(self, ts: float, site: str | None, device: str, **values: Any) -> Message:
        """A telemetry message; one without a site goes to the topic that names none."""
        where = "loose" if site is None else f"fleet/{site}"
        return (
            ts,
            f"{PREFIX}/{where}/{device}/telemetry",
            orjson.dumps({"ts": ts, "seq": int(ts), **values}),
        )

    async def call_all(self, name: str, args: tuple[Any, ...]) -> list[Any]:
        function = WORKER_CALLS[name]
        return [_wire(function(worker, *_wire(args))) for worker in self.workers]

    async def reports(self) -> dict[str, dict[str, Any]]:
        return REPORTS

    def view(self) -> ShardedFleetView:
        sites = {name: SiteInfo(**info) for name, info in SITES.items()}  # type: ignore[arg-type]
        return ShardedFleetView(self.call_all, self.reports, sites)

    def forward(self, event: dict[str, Any]) -> None:
        self.forwarded += 1
        self.events.deliver(_wire(event))


def build(devices: int, minutes: float, faults: tuple[str, ...]) -> Shards:
    settings = _settings()
    shards = Shards(Daemon(settings, clock=lambda: START), [])
    for _ in range(2):
        forwarder = EventForwarder(shards.forward)
        worker = Daemon(settings, clock=lambda: START, extra_sinks=[forwarder])
        forwarder.bind(worker.fleet_view)
        shards.workers.append(worker)
    simulator = Simulator(
        SimulationConfig(devices=devices, interval_s=60.0, seed=7, start_ts=START,
                         topic_prefix=PREFIX, faults=tuple(FaultSpec.parse(f) for f in faults))
    )  # fmt: skip
    shards.batteries = [(d.device_id, d.site, d.zone) for d in simulator.devices if d.model.battery]
    stream = [(m.ts, m.topic, m.payload) for m in simulator.messages(START + minutes * 60)]
    # devices without a site, in two zones, spread over both workers; two pairs share a spot
    for n in range(6):
        lat, lon = (52.371, 4.901) if n < 4 else (52.38 + n / 1000, 4.92)
        for step in range(int(minutes // 10)):
            ts = START + 45 + step * 600 + n
            stream.append(shards.reading(ts, None, f"lo-{n}", temperature_c=20.0 + n,
                                         zone="yard" if n % 3 else "dock", lat=lat, lon=lon))  # fmt: skip
    stream.sort(key=lambda message: message[0])
    shards.feed(stream)
    return shards


@pytest.fixture(scope="module")
def fleet() -> Iterator[Shards]:
    shards = build(80, 150.0, ("battery_failing=2@120", "gateway_down=1@3000", "silent=2@1800"))
    end = shards.received + 60
    west = [b for b in shards.batteries if b[1] == "plant-c"]
    zone = max(sorted({b[2] for b in west}), key=lambda z: sum(b[2] == z for b in west))
    # one zone runs out of batteries; two batteries in each worker fail and come back
    breach: list[Message] = []
    for i, (device, site, _) in enumerate(b for b in west if b[2] == zone):
        breach.append(shards.reading(end + i, site, device, battery_v=3.0))
    east = [b for b in shards.batteries if b[1] in EAST][:2]
    others = [b for b in west if b[2] != zone][:2]
    for i, (device, site, _) in enumerate([east[0], others[0], east[1], others[1]]):
        breach.append(shards.reading(end + 100 + i, site, device, battery_v=3.0))
        breach.append(shards.reading(end + 200 + 10 * i, site, device, battery_v=3.8))
    breach.sort(key=lambda message: message[0])
    shards.feed(breach, batch=3)
    yield shards


def rows(fleet: Shards) -> list[dict[str, Any]]:
    return fleet.whole.fleet_view.devices({}, 10_000, 0)["devices"]  # type: ignore[no-any-return]


def test_the_workers_split_the_fleet_and_it_has_trouble(fleet: Shards) -> None:
    everyone = rows(fleet)
    ids = [sorted(info.device_id for info in w.pipeline.registry) for w in fleet.workers]
    assert sorted(ids[0] + ids[1]) == sorted(row["id"] for row in everyone)
    assert {"lo-0", "lo-2"} <= set(ids[0]) and {"lo-1", "lo-3"} <= set(ids[1])
    assert {"ok", "critical", "offline"} <= {row["status"] for row in everyone}
    resolved = {a["site"] for a in fleet.whole.fleet_view.alert_list({}, "recent", 100)["recent"]}
    assert "plant-c" in resolved and resolved & set(EAST)  # alerts resolved in both workers


FILTERS = [
    {}, {"site": "plant-a"}, {"site": "plant-c"}, {"status": "critical"}, {"status": "ok"},
    {"status": "offline"}, {"zone": "yard"}, {"model": "TH-200", "status": "ok"},
    {"site": "nowhere"},
]  # fmt: skip
PAGES = [(100, 0), (7, 0), (7, 7), (5, 33), (1, 85), (10, 1000), (100_000, 0)]


@pytest.mark.parametrize(
    "filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "all"
)
async def test_device_pages_match_one_view(fleet: Shards, filters: dict[str, str]) -> None:
    single, sharded = fleet.whole.fleet_view, fleet.view()
    for limit, offset in PAGES:
        for compact in (False, True):
            expected = single.devices(filters, limit, offset, compact)
            got = await sharded.devices(filters, limit, offset, compact)
            assert _json(got) == _json(expected), (limit, offset, compact)
    if not filters:
        assert single.devices(filters, 7, 7)["total"] == len(rows(fleet)) > 80


async def test_twins_alerts_and_reports_match_one_view(fleet: Shards) -> None:
    single, sharded = fleet.whole.fleet_view, fleet.view()
    everyone = rows(fleet)
    chosen = [row["id"] for row in everyone if row["status"] != "ok"] + ["lo-1", "lo-4"]
    chosen += [row["id"] for row in everyone[::9]]
    for device_id in chosen:
        twin = single.twin(device_id)
        assert twin is not None and _json(await sharded.twin(device_id)) == _json(twin)
    assert await sharded.twin("no-such-device") is None

    recent = single.alert_list({}, "recent", 1000)["recent"]
    assert len(recent) >= 4
    for filters in ({}, {"kind": "rule.battery_low"}, {"severity": "critical"},
                    {"site": "plant-c"}, {"kind": "device_offline", "site": "plant-a"}):  # fmt: skip
        for state in ("active", "recent", "all"):
            for limit in (1, 3, 1000):
                expected = single.alert_list(filters, state, limit)
                got = await sharded.alert_list(filters, state, limit)
                assert _json(got) == _json(expected), (filters, state, limit)
    assert await sharded.reports() == REPORTS


async def test_geography_matches_one_view(fleet: Shards) -> None:
    single, sharded = fleet.whole.fleet_view, fleet.view()
    for filters in ({}, {"status": "critical"}, {"site": "plant-b"}, {"zone": "yard"}):
        expected = single.geojson(filters)
        assert expected["features"] or filters.get("zone")
        assert _json(await sharded.geojson(filters)) == _json(expected)

    queries = [
        (52.37, 4.90, 3000.0, 1000), (52.37, 4.90, 3000.0, 5), (52.371, 4.901, 10.0, 10),
        (50.0, 8.0, 2_000_000.0, 40), (0.0, 0.0, 10.0, 5),
    ]  # fmt: skip
    for lat, lon, radius, limit in queries:
        expected = single.near(lat, lon, radius, limit)
        assert _json(await sharded.near(lat, lon, radius, limit)) == _json(expected)
    # four devices without a site share a spot, two in each worker: ties in registry order
    tied = single.near(52.371, 4.901, 10.0, 10)["devices"]
    assert [d["id"] for d in tied] == ["lo-0", "lo-1", "lo-2", "lo-3"]

    tree = single.tree()
    assert set(tree["regions"]["unassigned"]["sites"]["unknown"]["zones"]) == {"dock", "yard"}
    assert _json(await sharded.tree()) == _json(tree)
    for min_devices in (2, 3, 5, 50):
        expected = single.hotspots(min_devices=min_devices)
        assert _json(await sharded.hotspots(min_devices=min_devices)) == _json(expected)
    assert single.hotspots(min_devices=3)["hotspots"]


def _app(view: Any, events: FleetEvents) -> web.Application:
    app = web.Application()
    api = FleetApi(view, events, heartbeat_s=60.0)
    app.router.add_get("/api/alerts", api.alerts)
    api.add_routes(app)
    return app


async def test_the_fleet_api_serves_the_sharded_view_as_the_single_one(fleet: Shards) -> None:
    single_events = FleetEvents()
    paths = [
        "/api/devices", "/api/devices?limit=9&offset=20", "/api/devices?format=compact&limit=50",
        "/api/devices?site=plant-b&status=ok", "/api/devices?status=purple",
        "/api/devices/lo-3", "/api/devices/nope", "/api/alerts", "/api/alerts?state=recent&limit=2",
        "/api/alerts?severity=dreadful", "/api/geo/devices?site=plant-c",
        "/api/geo/near?lat=52.37&lon=4.9&radius_m=5000&limit=7", "/api/geo/tree",
        "/api/geo/hotspots?min_devices=3", "/api/view-config",
    ]  # fmt: skip
    async with (
        TestClient(TestServer(_app(fleet.whole.fleet_view, single_events))) as one,
        TestClient(TestServer(_app(fleet.view(), fleet.events))) as split,
    ):
        for path in paths:
            expected, got = await one.get(path), await split.get(path)
            assert (got.status, await got.read()) == (expected.status, await expected.read())
        names = await split.get("/api/reports")
        assert await names.json() == {"reports": ["battery", "firmware"]}
        report = await split.get("/api/reports/battery")
        assert await report.json() == REPORTS["battery"]
        assert (await split.get("/api/reports/nope")).status == 404


async def _next_event(response: Any) -> dict[str, Any]:
    while True:
        line = (await response.content.readline()).decode()
        if line.startswith("data: ") and line != "data: {}\n":
            return dict(orjson.loads(line[6:]))


async def test_alert_changes_in_a_worker_reach_the_coordinators_streams() -> None:
    shards = build(12, 20.0, ())
    target, site, _ = next(b for b in shards.batteries if b[1] == "plant-c")
    before = shards.forwarded
    async with TestClient(TestServer(_app(shards.view(), shards.events))) as client:
        response = await client.get("/api/events")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert await asyncio.wait_for(response.content.readline(), 5) == b"retry: 2000\n"
        assert len(shards.events) == 1
        with shards.whole.fleet_events.subscribe() as single:  # type: ignore[union-attr]
            shards.feed([shards.reading(shards.received + 60, site, target, battery_v=3.0)])
            expected = [single.get_nowait() for _ in range(single.qsize())]
        got = [await asyncio.wait_for(_next_event(response), 5) for _ in expected]
        # the same events, from whichever worker, as the page gets them from one daemon
        assert sorted(map(_json, got)) == sorted(map(_json, expected))
        assert shards.forwarded == before + len(expected)
        battery = next(event for event in got if event["device"] == target)
        assert battery["alert"]["kind"] == "rule.battery_low" and battery["status"] == "critical"
        shards.events.close()  # as the server does when it stops: the stream ends
        await asyncio.wait_for(response.content.read(), 5)
        assert len(shards.events) == 0
