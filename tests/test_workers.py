"""The daemon as a coordinator and worker processes sharded by site, on a real broker.

Every reading is processed by exactly one worker and acknowledged to the broker once it
is journaled; every alert is raised once; ``/metrics`` and ``/api/status`` add the workers
up; state survives a restart per worker; a lost worker stops the daemon loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from config.settings import Settings
from service.errors import ConfigError, FleetWatchError
from service.runtime.shards import shard_of, worker_state_path
from service.runtime.workers import Coordinator
from tests.daemon_helpers import daemon_settings, firing_alerts, scrape

pytestmark = pytest.mark.broker

NOW = 1_767_225_600
SITES = ["plant-a", "plant-b", "plant-c", "plant-d"]


def settings_for(broker: Any, prefix: str, state: Path | None, **overrides: Any) -> Settings:
    sections: dict[str, Any] = {
        "pipeline": {"tick_interval_s": 0.2, "shutdown_timeout_s": 5.0, "workers": 2},
        "state": {"enabled": state is not None, "path": str(state or "unused.db"),
                  "checkpoint_interval_s": 3600},
        "fleetview": {"enabled": False},
    }  # fmt: skip
    sections.update(overrides)
    return daemon_settings(broker.host, broker.port, prefix, **sections)


@contextlib.asynccontextmanager
async def running(settings: Settings, timeout: float = 60.0) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(settings, settings.pipeline.workers)
    task = asyncio.create_task(coordinator.run())
    ready = asyncio.create_task(coordinator.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when="FIRST_COMPLETED")
    if task in done:
        ready.cancel()
        task.result()
        raise RuntimeError("coordinator stopped before it was ready")
    assert ready in done, "coordinator did not become ready"
    try:
        yield coordinator
    finally:
        coordinator.stop()
        await asyncio.wait_for(task, 30)


async def get_json(port: int, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        assert response.status == 200
        return orjson.loads(await response.read())


def devices() -> dict[str, list[str]]:
    return {site: [f"{site[-1]}{n}" for n in range(3)] for site in SITES}


async def publish_round(client: Any, prefix: str, seq: int, volts: float) -> int:
    sent = 0
    for site, names in devices().items():
        for name in names:
            payload = orjson.dumps({"ts": NOW + 60 * seq, "seq": seq, "battery_v": volts})
            await client.publish(f"{prefix}/fleet/{site}/{name}/telemetry", payload)
            sent += 1
    return sent


async def until(predicate: Any, timeout: float = 20.0) -> None:
    """Poll ``predicate`` (a coroutine function) until true; bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_workers_split_sites_alert_once_and_add_up(
    broker, topic_prefix, mqtt_client, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # the four sites land on both workers (else this test would not test sharding)
    assert {shard_of(site, 2) for site in SITES} == {0, 1}
    settings = settings_for(
        broker, topic_prefix, tmp_path / "state.db", fleetview={"enabled": True}
    )
    alerts = f"{topic_prefix}/fleetwatch/alerts/#"
    async with running(settings) as coordinator:
        await mqtt_client.subscribe(alerts)
        sent = await publish_round(mqtt_client, topic_prefix, 1, 3.7)
        sent += await publish_round(mqtt_client, topic_prefix, 2, 3.0)
        all_devices = {name for names in devices().values() for name in names}
        firing = await firing_alerts(mqtt_client, alerts, all_devices)
        assert len(firing) == len(set(firing)), firing

        async def all_acknowledged() -> bool:
            return coordinator.acknowledged == sent

        await until(all_acknowledged)
        assert coordinator.routed == sent
        status = await get_json(coordinator.http_port, "/api/status")
        assert status["readings"] == sent and status["devices"] == len(all_devices)
        per_worker = [w["devices"] for w in status["workers"]]
        assert sorted(per_worker) == sorted(
            3 * sum(1 for site in SITES if shard_of(site, 2) == index) for index in (0, 1)
        )
        active = await get_json(coordinator.http_port, "/api/alerts?state=active")
        assert {row["subject"] for row in active["active"]} == all_devices
        listed = await get_json(coordinator.http_port, "/api/devices?limit=100")
        assert sorted(row["id"] for row in listed["devices"]) == sorted(all_devices)
        twin = await get_json(coordinator.http_port, "/api/devices/c2")
        assert twin["id"] == "c2" and twin["site"] == "plant-c"
        text = await scrape(coordinator.http_port)
        assert f'fleetwatch_readings_total{{protocol="mqtt",result="accepted"}} {sent}.0' in text
        assert "fleetwatch_mqtt_connected 1.0" in text
        assert text.count("# TYPE fleetwatch_readings_total counter") == 1
    # each worker saved its own sites
    for index in (0, 1):
        assert worker_state_path(tmp_path / "state.db", index, 2).exists()


async def test_worker_state_survives_a_restart_and_the_count_is_checked(
    broker, topic_prefix, mqtt_client, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "state.db"
    settings = settings_for(broker, topic_prefix, path)
    async with running(settings) as coordinator:
        sent = await publish_round(mqtt_client, topic_prefix, 1, 3.7)

        async def acknowledged() -> bool:
            return coordinator.acknowledged == sent

        await until(acknowledged)
    async with running(settings) as coordinator:
        status = await get_json(coordinator.http_port, "/api/status")
        assert status["readings"] == sent
        assert status["devices"] == sum(len(names) for names in devices().values())
        assert all(w["restored"]["devices"] > 0 for w in status["workers"])
    three = settings.model_copy(
        update={"pipeline": settings.pipeline.model_copy(update={"workers": 3})}
    )
    with pytest.raises(ConfigError, match="saved by 2 worker"):
        await Coordinator(three, 3).run()


async def test_a_lost_worker_stops_the_daemon_loudly(broker, topic_prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    coordinator = Coordinator(settings_for(broker, topic_prefix, None), 2)
    task = asyncio.create_task(coordinator.run())
    await asyncio.wait_for(coordinator.ready.wait(), 60)
    pid = coordinator.workers[1].process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(FleetWatchError, match="worker 1"):
        await asyncio.wait_for(task, 30)
    assert not coordinator.workers[0].process.is_alive()


async def test_what_the_workers_hold_is_bounded_and_nothing_is_dropped(
    broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(
        broker, topic_prefix, None,
        pipeline={"workers": 2, "queue_size": 100, "max_batch": 20, "shutdown_timeout_s": 5.0},
    )  # fmt: skip
    total = 2_000
    async with running(settings) as coordinator:
        for seq in range(total):
            site = SITES[seq % len(SITES)]
            payload = orjson.dumps({"ts": NOW + seq, "seq": seq, "temperature_c": 20.0})
            await mqtt_client.publish(f"{topic_prefix}/fleet/{site}/d{seq % 40}/telemetry", payload)

        async def all_acknowledged() -> bool:
            return coordinator.acknowledged == total

        await until(all_acknowledged, timeout=60)
        status = await get_json(coordinator.http_port, "/api/status")
        assert status["readings"] == total and status["duplicates"] == 0
        # reading from the broker paused; the bound is exceeded by one socket read at most
        assert coordinator.metrics.intake_paused._value.get() > 0
        assert coordinator.max_in_flight <= 100 + 1_000, coordinator.max_in_flight


async def test_workers_share_what_the_fleet_has_seen(broker, topic_prefix, mqtt_client) -> None:  # type: ignore[no-untyped-def]
    """A firmware version seen at a site of one worker is known to the other worker once
    fleet facts are exchanged: a device elsewhere moving to it is an unexpected change,
    but not a version "never seen for this model"."""
    settings = settings_for(broker, topic_prefix, None, detectors={"enabled": ["firmware"]})
    alerts = f"{topic_prefix}/fleetwatch/alerts/#"
    sent = 0

    async def report(site: str, device: str, version: str, seq: int) -> None:
        nonlocal sent
        payload = orjson.dumps({"ts": NOW + 60 * seq, "seq": seq, "model": "TH-200",
                                "firmware": version, "temperature_c": 20.0})  # fmt: skip
        await mqtt_client.publish(f"{topic_prefix}/fleet/{site}/{device}/telemetry", payload)
        sent += 1

    assert shard_of("plant-a", 2) != shard_of("plant-d", 2)
    async with running(settings) as coordinator:
        await mqtt_client.subscribe(alerts)
        for device in ("a1", "a2"):
            await report("plant-a", device, "1.0", 1)
        await report("plant-d", "d1", "1.0", 1)
        await report("plant-d", "d2", "2.0", 1)  # 2.0 is seen at plant-d only

        async def acknowledged() -> bool:
            return coordinator.acknowledged == sent

        await until(acknowledged)
        await coordinator.exchange_facts()
        await report("plant-a", "a1", "2.0", 2)  # known to the fleet: not "never seen"
        await report("plant-a", "a2", "3.0", 2)  # new to the whole fleet
        reasons = {}
        while set(reasons) != {"a1", "a2"}:
            _, payload, _ = await mqtt_client.expect(alerts, lambda p: b'"firing"' in p)
            alert = orjson.loads(payload)
            assert alert["kind"] == "firmware_unexpected_change"
            reasons[alert["subject"]] = alert["evidence"]["reasons"]
        assert "version never seen for this model" not in reasons["a1"]
        assert "version never seen for this model" in reasons["a2"]
