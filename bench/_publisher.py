"""Publish N small telemetry messages over M device topics at QoS 1, as fast as the broker takes them.

Run as a separate process by the benchmarks: ``python bench/_publisher.py HOST PORT N DEVICES PREFIX``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from gmqtt import Client


async def main(host: str, port: int, count: int, devices: int, prefix: str) -> None:
    client = Client(f"bench-pub-{time.monotonic_ns()}")
    await client.connect(host, port)
    base = 1_767_225_600.0
    for i in range(count):
        device = i % devices
        payload = orjson.dumps(
            {"ts": base + i // devices, "seq": i // devices, "battery_v": 3.7 - (i % 7) * 0.01,
             "temperature_c": 21.5, "rssi_dbm": -70.0, "model": "TH-200", "firmware": "1.4.2"}
        )  # fmt: skip
        client.publish(
            f"{prefix}/fleet/site-{device % 5}/dev-{device:06d}/telemetry", payload, qos=1
        )
        if i % 500 == 499:
            await asyncio.sleep(0)  # let acks in and the transport drain
            storage = client._persistent_storage  # unacknowledged QoS 1 messages
            while len(storage.get_all()) > 5000:
                await asyncio.sleep(0.001)
    deadline = time.monotonic() + 60
    while client._persistent_storage.get_all() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await client.disconnect()


if __name__ == "__main__":
    host, port, count, devices, prefix = sys.argv[1:6]
    asyncio.run(main(host, int(port), int(count), int(devices), prefix))
