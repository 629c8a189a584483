"""Live throughput: draining QoS 1 telemetry queued at a real mosquitto.

N messages are queued at a private mosquitto for two persistent sessions, FleetWatch's and
a bare ``mosquitto_sub``'s; then each drains them and the rates are compared. FleetWatch
acknowledges each message only after the pipeline (decode, normalize, rules, alerts) has
processed it and the state store has journaled it. Every run is bounded in count and time.

    uv run python bench/live_throughput.py --messages 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gmqtt import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings, settings_from_mapping
from service.runtime.broker import EmbeddedBroker
from service.runtime.daemon import Daemon

HERE = Path(__file__).resolve().parent
RULES = [
    {"name": "battery_low", "metric": "battery_v", "kind": "below", "threshold": 3.3},
    {"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 70.0},
    {"name": "weak", "metric": "rssi_dbm", "kind": "below", "threshold": -110.0},
]


async def register_session(
    host: str, port: int, client_id: str, topic_filter: str, qos: int = 1
) -> None:
    """Create a persistent session subscribed to ``topic_filter``, then leave it offline."""
    client = Client(client_id, clean_session=False, session_expiry_interval=3600)
    await client.connect(host, port)
    client.subscribe(topic_filter, qos=qos)
    await asyncio.sleep(0.2)
    await client.disconnect()


def publisher_command(
    host: str, port: int, count: int, devices: int, prefix: str, *options: str
) -> list[str]:
    """The command line of the publisher process (``bench/_publisher.py``)."""
    return [
        sys.executable, str(HERE / "_publisher.py"), host, str(port), str(count), str(devices),
        prefix, *options,
    ]  # fmt: skip


def publish(host: str, port: int, count: int, devices: int, prefix: str, qos: int = 1) -> float:
    """Publish ``count`` messages from a separate process; return the seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        publisher_command(host, port, count, devices, prefix, "--qos", str(qos)),
        check=True,
        timeout=600,
    )
    return time.perf_counter() - started


def drain_mosquitto_sub(
    host: str, port: int, count: int, client_id: str, topic_filter: str, qos: int = 1
) -> float:
    """Seconds ``mosquitto_sub`` takes to receive ``count`` queued messages (NaN if absent)."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        return float("nan")
    started = time.perf_counter()
    subprocess.run(
        [binary, "-h", host, "-p", str(port), "-c", "-i", client_id, "-q", str(qos), "-t", topic_filter,
         "-C", str(count), "-V", "mqttv5", "-x", "3600"],
        check=True, stdout=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - started


def fleetwatch_settings(
    host: str, port: int, prefix: str, state_dir: Path, qos: int = 1
) -> Settings:
    """The daemon's settings for a benchmark: topics under ``prefix``, default detectors,
    :data:`RULES`, no HTTP, the state store (journal on) in ``state_dir``."""
    return settings_from_mapping(
        {
            "mqtt": {"host": host, "port": port, "client_id": f"fw-{prefix}",
                     "subscriptions": [{"filter": f"{prefix}/fleet/+/+/+", "qos": qos}]},
            "topics": {"templates": [f"{prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"],
                       "alerts_prefix": f"{prefix}/alerts"},
            "http": {"enabled": False},
            "state": {"path": str(state_dir / f"{prefix}.db")},
            "rules": RULES,
        }
    )  # fmt: skip


async def drain_fleetwatch(
    host: str,
    port: int,
    count: int,
    prefix: str,
    timeout: float,
    *,
    qos: int = 1,
    state_dir: Path | None = None,
) -> float:
    """Seconds the daemon takes to process ``count`` queued messages (acknowledged after
    processing and journaling); a count of 0 just creates its persistent session."""
    with tempfile.TemporaryDirectory(prefix="fleetwatch-bench-") as scratch:
        folder = state_dir if state_dir is not None else Path(scratch)
        daemon = Daemon(fleetwatch_settings(host, port, prefix, folder, qos))
        # the clock starts before connecting: queued messages flow as soon as it is connected
        started = time.perf_counter()
        task = asyncio.create_task(daemon.run())
        await daemon.ready.wait()
        deadline = started + timeout
        while daemon.intake.processed < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        processed = daemon.intake.processed
        daemon.stop()
        await task
    if processed < count:
        raise RuntimeError(f"FleetWatch processed {processed} of {count} within {timeout} s")
    return elapsed


async def drain_client_only(
    host: str, port: int, count: int, client_id: str, topic_filter: str
) -> float:
    """FleetWatch's MQTT client alone: receive, then acknowledge in bulk, no pipeline."""
    from config.settings import MqttSettings
    from protocols.mqtt import MqttClient

    done = asyncio.Event()
    pending: list[int] = []
    received = 0

    def on_message(
        topic: str, payload: bytes, qos: int, properties: object, token: int | None
    ) -> None:
        nonlocal received
        received += 1
        if token is not None:
            pending.append(token)
        if len(pending) >= 500 or received >= count:
            client.acknowledge(pending)
            pending.clear()
        if received >= count:
            done.set()

    settings = MqttSettings(host=host, port=port, client_id=client_id, session_expiry_s=3600)
    client = MqttClient(settings, on_message=on_message, subscriptions=[(topic_filter, 1)])
    async with client:
        started = time.perf_counter()
        await asyncio.wait_for(done.wait(), 600)
        return time.perf_counter() - started


async def one_run(count: int, devices: int, run: int) -> tuple[float, float, float]:
    prefix = f"b{run}"
    with tempfile.TemporaryDirectory(prefix="fleetwatch-bench-") as scratch:
        async with EmbeddedBroker(prefer="mosquitto") as broker:
            host, port = broker.host, broker.port
            # FleetWatch's persistent session: start once so the broker keeps its subscription
            await drain_fleetwatch(host, port, 0, prefix, 5, state_dir=Path(scratch))
            await register_session(host, port, f"sub-{prefix}", f"{prefix}/fleet/#")
            await register_session(host, port, f"client-{prefix}", f"{prefix}/fleet/#")
            publish(host, port, count, devices, prefix)
            bare = drain_mosquitto_sub(host, port, count, f"sub-{prefix}", f"{prefix}/fleet/#")
            client_only = await drain_client_only(
                host, port, count, f"client-{prefix}", f"{prefix}/fleet/#"
            )
            ours = await drain_fleetwatch(host, port, count, prefix, 600, state_dir=Path(scratch))
    return count / bare, count / client_only, count / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bare_rates: list[float] = []
    client_rates: list[float] = []
    our_rates: list[float] = []
    for run in range(args.repeat):
        bare, client_only, ours = asyncio.run(one_run(args.messages, args.devices, run))
        bare_rates.append(bare)
        client_rates.append(client_only)
        our_rates.append(ours)
        print(
            f"run {run + 1}: mosquitto_sub {bare:,.0f} msg/s, client alone "
            f"{client_only:,.0f} msg/s, FleetWatch {ours:,.0f} readings/s",
            flush=True,
        )
    bare_m = statistics.median(bare_rates)
    client_m = statistics.median(client_rates)
    ours_m = statistics.median(our_rates)
    print()
    print("| path | messages | median rate | ratio to mosquitto_sub |")
    print("|---|---|---|---|")
    print(f"| mosquitto_sub, QoS 1 drain | {args.messages:,} | {bare_m:,.0f} msg/s | 1.00 |")
    print(
        f"| FleetWatch MQTT client alone (gmqtt, PUBACKs in bulk) | {args.messages:,} | "
        f"{client_m:,.0f} msg/s | {client_m / bare_m:.2f} |"
    )
    print(
        f"| FleetWatch daemon, QoS 1, ack after processing and journaling, rules on | {args.messages:,} | {ours_m:,.0f} readings/s | {ours_m / bare_m:.2f} |"
    )


if __name__ == "__main__":
    main()
