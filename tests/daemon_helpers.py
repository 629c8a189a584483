"""Run a FleetWatch daemon inside a test, against the test broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from config.settings import Settings, settings_from_mapping
from service.runtime.daemon import Daemon

RULES = [
    {"name": "battery_low", "metric": "battery_v", "kind": "below", "threshold": 3.3,
     "hysteresis": 0.05, "severity": "critical", "action": "Replace the battery."},
    {"name": "overheating", "metric": "temperature_c", "kind": "above", "threshold": 70.0},
]  # fmt: skip


def daemon_settings(host: str, port: int, prefix: str, **overrides: Any) -> Settings:
    """Settings for a daemon that lives under its own topic prefix."""
    data: dict[str, Any] = {
        "mqtt": {
            "host": host,
            "port": port,
            "client_id": f"fleetwatch-{prefix}",
            "subscriptions": [{"filter": f"{prefix}/fleet/+/+/+", "qos": 1}],
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        },
        "topics": {
            "templates": [f"{prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"],
            "alerts_prefix": f"{prefix}/fleetwatch/alerts",
            "deadletter": f"{prefix}/fleetwatch/deadletter",
            "status": f"{prefix}/fleetwatch/status",
        },
        "pipeline": {"tick_interval_s": 0.2, "shutdown_timeout_s": 5.0},
        "http": {"port": 0},
        "state": {"enabled": False},
        "rules": RULES,
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return settings_from_mapping(data)


async def scrape(port: int) -> str:
    """The daemon's ``/metrics`` exposition (asserting it answers 200)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


@contextlib.asynccontextmanager
async def running_daemon(settings: Settings, timeout: float = 10.0) -> AsyncIterator[Daemon]:
    """Start a daemon, wait until it is connected, stop it (bounded) on exit."""
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run(), name="test-daemon")
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait(
        {task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if task in done:
        ready.cancel()
        task.result()
        raise RuntimeError("daemon stopped before it was ready")
    if ready not in done:
        ready.cancel()
        task.cancel()
        raise TimeoutError("daemon did not become ready")
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, timeout)


async def firing_alerts(client: Any, alerts: str, subjects: set[str]) -> list[tuple[str, str]]:
    """Every ``(kind, subject)`` that fires on ``alerts`` (a filter) until each of
    ``subjects`` has fired, and whatever else fires before a marker published after them:
    so an alert raised twice shows up twice."""
    firing: list[tuple[str, str]] = []
    while {subject for _, subject in firing} != subjects:
        _, payload, _ = await client.expect(alerts, lambda p: b'"firing"' in p)
        alert = orjson.loads(payload)
        firing.append((alert["kind"], alert["subject"]))
    marker = alerts.rstrip("#") + "marker"
    for topic, payload, _ in await client.collect_until_marker(alerts, marker):
        if payload and topic != marker and b'"firing"' in payload:
            alert = orjson.loads(payload)
            firing.append((alert["kind"], alert["subject"]))
    return firing
