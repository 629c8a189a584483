"""A daemon fed by the simulator through the test broker, for the fleet API and page tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.runtime.daemon import Daemon
from service.simulator import FaultSpec, SimulationConfig, Simulator
from tests.daemon_helpers import daemon_settings, running_daemon

START = 1_767_225_600.0
SITES = {
    "plant-a": {"name": "Plant A", "region": "Benelux", "lat": 52.37, "lon": 4.90},
    "plant-b": {"name": "Plant B", "region": "Alps", "lat": 48.14, "lon": 11.58},
    "plant-c": {"name": "Plant C", "region": "Alps", "lat": 45.46, "lon": 9.19},
}


@dataclass
class Fleet:
    daemon: Daemon
    simulator: Simulator
    url: str
    prefix: str
    sent: int

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            return response.status, await response.json(content_type=None)


async def wait_processed(daemon: Daemon, count: int, timeout: float = 20.0) -> None:
    """Poll until the daemon has taken ``count`` messages (bounded)."""
    deadline = time.monotonic() + timeout
    while daemon.pipeline.totals.messages < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{daemon.pipeline.totals.messages} of {count} messages processed")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def simulated_fleet(
    broker: Any, prefix: str, mqtt_client: Any, *, devices: int = 60, minutes: float = 10.0,
    faults: tuple[str, ...] = ("battery_failing=2@120",),
) -> AsyncIterator[Fleet]:  # fmt: skip
    """A running daemon that has taken ``minutes`` of a simulated fleet's messages."""
    settings = daemon_settings(
        broker.host, broker.port, prefix, fleetview={"sites": SITES},
    )  # fmt: skip
    simulator = Simulator(
        SimulationConfig(devices=devices, interval_s=60.0, seed=7, start_ts=START,
                         topic_prefix=prefix, faults=tuple(FaultSpec.parse(f) for f in faults))
    )  # fmt: skip
    async with running_daemon(settings) as daemon:
        sent = 0
        for message in simulator.messages(START + minutes * 60):
            await mqtt_client.publish(message.topic, message.payload)
            sent += 1
        await wait_processed(daemon, sent)
        yield Fleet(daemon, simulator, f"http://127.0.0.1:{daemon.http_port}", prefix, sent)
