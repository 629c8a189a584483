"""Publish N small telemetry messages over M device topics, as fast as the broker takes them or
paced at a steady rate.

Run as a separate process by the benchmarks::

    python bench/_publisher.py HOST PORT N DEVICES PREFIX [--qos 1] [--rate R] [--seconds S]
        [--breach-every K] [--now-ts] [--sites S]

Message ``i`` goes to device ``i % DEVICES``, at site ``site-{device % S}`` (S = 5 unless
given), on ``PREFIX/fleet/site-{s}/dev-{device:06d}/telemetry``. ``--rate`` paces the publisher at R messages per
second (otherwise it goes as fast as the broker acknowledges); ``--seconds`` bounds the run in
time as N bounds it in count. ``--now-ts`` stamps each reading with its publish time (so a
subscriber can measure ingest-to-alert latency). ``--breach-every K``: every K-th device
alternates between 80 °C and 21.5 °C from one reading to the next, so a rule above 70 °C
opens and resolves an alert on each of its readings.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from gmqtt import Client

BASE_TS = 1_767_225_600.0


async def main(
    host: str,
    port: int,
    count: int,
    devices: int,
    prefix: str,
    *,
    qos: int = 1,
    rate: float | None = None,
    seconds: float | None = None,
    breach_every: int = 0,
    now_ts: bool = False,
    sites: int = 5,
) -> None:
    client = Client(f"bench-pub-{time.monotonic_ns()}")
    await client.connect(host, port)
    started = time.monotonic()
    stop_at = started + seconds if seconds is not None else float("inf")
    sent = 0
    for i in range(count):
        device = i % devices
        round_ = i // devices
        hot = breach_every > 0 and device % breach_every == 0 and round_ % 2 == 1
        payload = orjson.dumps(
            {"ts": time.time() if now_ts else BASE_TS + round_, "seq": round_,
             "battery_v": 3.7 - (i % 7) * 0.01, "temperature_c": 80.0 if hot else 21.5,
             "rssi_dbm": -70.0, "model": "TH-200", "firmware": "1.4.2"}
        )  # fmt: skip
        client.publish(
            f"{prefix}/fleet/site-{device % sites}/dev-{device:06d}/telemetry", payload, qos=qos
        )
        sent += 1
        if rate is not None and i % 50 == 49:
            # paced: wait until this message's slot (a steady rate, not bursts)
            delay = started + (i + 1) / rate - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
            if time.monotonic() >= stop_at:
                break
        elif i % 500 == 499:
            await asyncio.sleep(0)  # let acks in and the transport drain
            storage = client._persistent_storage  # unacknowledged QoS 1 messages
            while len(storage.get_all()) > 5000:
                await asyncio.sleep(0.001)
            if time.monotonic() >= stop_at:
                break
    publishing = time.monotonic() - started
    deadline = time.monotonic() + 60
    while client._persistent_storage.get_all() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await client.disconnect()
    if rate is not None:
        print(f"sent {sent} in {publishing:.3f} s", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("devices", type=int)
    parser.add_argument("prefix")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--breach-every", type=int, default=0)
    parser.add_argument("--now-ts", action="store_true")
    parser.add_argument("--sites", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(
        main(
            args.host, args.port, args.count, args.devices, args.prefix,
            qos=args.qos, rate=args.rate, seconds=args.seconds,
            breach_every=args.breach_every, now_ts=args.now_ts, sites=args.sites,
        )
    )  # fmt: skip


if __name__ == "__main__":
    cli()
