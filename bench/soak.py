"""Soak: a steady load for a long time, with a broker restart and a daemon crash on the way.

FleetWatch runs as its own process (``fleetwatch run``) against a private mosquitto with
persistence. A publisher sends QoS 1 telemetry at a steady rate, each message unique. A
third of the way in the broker is restarted (the publisher drains and pauses around it and
catches up afterwards; what is queued for FleetWatch stays at the broker); two thirds of the way in the daemon is killed
with SIGKILL and started again. At the end the daemon is stopped cleanly, and its final
checkpoint says how many readings it processed: every message sent must be there.

    uv run python bench/soak.py --rate 2000 --minutes 30

Bounded: it stops after ``--minutes`` plus at most two minutes to drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from gmqtt import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.runtime.broker import EmbeddedBroker, free_port
from service.state.store import StateStore

PREFIX = "soak"
DEVICES = 2_000


def config_text(host: str, port: int, http_port: int, state: Path) -> str:
    return f"""
[mqtt]
host = "{host}"
port = {port}
client_id = "fleetwatch-soak"
reconnect_min_s = 0.2
reconnect_max_s = 2.0
[[mqtt.subscriptions]]
filter = "{PREFIX}/fleet/+/+/+"
[topics]
templates = ["{PREFIX}/fleet/{{site}}/{{device_id}}/{{kind}}"]
alerts_prefix = "{PREFIX}/alerts"
status = "{PREFIX}/status"
deadletter = "{PREFIX}/deadletter"
[http]
port = {http_port}
[state]
path = "{state}"
checkpoint_interval_s = 30
[[rules]]
name = "hot"
metric = "temperature_c"
kind = "above"
threshold = 70
"""


async def status(session: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/api/status") as response:
            return await response.json()  # type: ignore[no-any-return]
    except (aiohttp.ClientError, OSError):
        return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Publisher:
    """Publishes unique QoS 1 telemetry at a steady rate while connected."""

    def __init__(self, host: str, port: int, rate: float) -> None:
        # a persistent session, so what is in flight when the broker restarts is sent again
        self.client = Client(
            f"soak-publisher-{time.monotonic_ns()}",
            clean_session=False,
            session_expiry_interval=3600,
        )
        self.host, self.port, self.rate = host, port, rate
        self.sent = 0
        self.paused = False
        self.connected = asyncio.Event()
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_disconnect = lambda *_: self.connected.clear()

    async def run(self, seconds: float) -> None:
        await self.client.connect(self.host, self.port)
        started = time.monotonic()
        base = 1_767_225_600.0
        while (elapsed := time.monotonic() - started) < seconds:
            target = int(elapsed * self.rate)
            if self.connected.is_set() and not self.paused:
                while self.sent < target:
                    seq = self.sent
                    device = seq % DEVICES
                    payload = orjson.dumps(
                        {"ts": base + seq / self.rate, "seq": seq // DEVICES,
                         "temperature_c": 20.0 + (seq % 13), "battery_v": 3.7}
                    )  # fmt: skip
                    self.client.publish(
                        f"{PREFIX}/fleet/site-{device % 5}/dev-{device:05d}/telemetry",
                        payload,
                        qos=1,
                    )
                    self.sent += 1
            await asyncio.sleep(0.01)

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until the broker has acknowledged everything sent."""
        deadline = time.monotonic() + timeout
        while self.client._persistent_storage.get_all() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.drain()
        await self.client.disconnect()


async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.commands.cli", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def wait_until(
    session: aiohttp.ClientSession, port: int, condition: Any, timeout: float
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await status(session, port)
        if last is not None and condition(last):
            return last
        await asyncio.sleep(0.05)
    return last


async def soak(rate: float, minutes: float, broker_restart: bool, daemon_kill: bool) -> None:
    seconds = minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="fleetwatch-soak-"))
    http_port = free_port()
    broker = EmbeddedBroker(prefer="mosquitto", persistence_dir=workdir / "broker")
    await broker.start()
    config = workdir / "fleetwatch.toml"
    state = workdir / "state.db"
    config.write_text(config_text(broker.host, broker.port, http_port, state))
    daemon = await start_daemon(config)
    report: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        try:
            await wait_until(session, http_port, lambda s: s["connected"], 30)
            publisher = Publisher(broker.host, broker.port, rate)
            load = asyncio.create_task(publisher.run(seconds))
            await asyncio.sleep(min(30.0, seconds / 6))
            report["rss_start_mib"] = rss_mib(daemon.pid)

            await asyncio.sleep(seconds / 3 - min(30.0, seconds / 6))
            # the publisher stops and drains first: a publisher whose session the broker does
            # not restore loses its in-flight messages in its own client library, which is
            # not what this measures; FleetWatch's queued messages stay at the broker
            publisher.paused = True
            await publisher.drain()
            restarted = time.monotonic()
            if broker_restart:
                await broker.restart()
            publisher.paused = False
            back = await wait_until(session, http_port, lambda s: s["connected"], 60)
            report["broker_restart_reconnect_s"] = time.monotonic() - restarted
            report["broker_restart_ok"] = bool(back and back["connected"])

            await asyncio.sleep(seconds / 3)
            killed = time.monotonic()
            if daemon_kill:
                daemon.send_signal(signal.SIGKILL)
                await daemon.wait()
                killed = time.monotonic()
                daemon = await start_daemon(config)
            back = await wait_until(
                session, http_port, lambda s: s["connected"] and s["queue_depth"] == 0, 120
            )
            report["daemon_restart_recovery_s"] = time.monotonic() - killed
            report["journal_replayed"] = back["restored"]["journaled"] if back else None

            await load
            await publisher.close()
            sent = publisher.sent
            await wait_until(session, http_port, lambda s: s["readings"] >= sent, 120)
            report["rss_end_mib"] = rss_mib(daemon.pid)
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 60)
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()
            await broker.stop()
    with StateStore(state) as store:
        checkpoint = store.load_checkpoint()
    totals = checkpoint.components["pipeline"]["totals"] if checkpoint else {}
    processed = totals.get("accepted", 0)
    print(f"| soak ({minutes:g} min at {rate:,.0f} readings/s) | value |")
    print("|---|---|")
    rows = [
        ("readings sent", f"{sent:,}"),
        ("readings processed", f"{processed:,}"),
        ("lost", f"{max(0, sent - processed):,}"),
        ("duplicates dropped (redeliveries)", f"{totals.get('duplicates', 0):,}"),
        ("memory (RSS) at start / end", f"{report['rss_start_mib']:.0f} / {report['rss_end_mib']:.0f} MiB"),
        ("broker restart: reconnected within", f"{report['broker_restart_reconnect_s']:.1f} s"),
        ("daemon kill -9: connected and caught up within", f"{report['daemon_restart_recovery_s']:.1f} s"),
        ("journaled messages replayed after the crash", f"{report['journal_replayed']}"),
    ]  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value} |")
    with contextlib.suppress(OSError):
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        workdir.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2_000.0, help="readings per second")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--no-daemon-kill", action="store_true")
    args = parser.parse_args()
    asyncio.run(soak(args.rate, args.minutes, not args.no_broker_restart, not args.no_daemon_kill))


if __name__ == "__main__":
    main()
