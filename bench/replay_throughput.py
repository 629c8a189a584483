"""Replay throughput and memory per device: the whole pipeline over a simulated fleet.

A deterministic simulated fleet (with faults) at ``--sites`` sites is generated in memory,
then replayed through the pipeline with no detectors and with the example configuration's
detectors. Generation is not timed. Memory per device is the traced heap the pipeline holds
after the run, divided by the number of devices it knows.

With ``--workers N`` (N > 1) the example configuration's detectors are also run by
:func:`service.replay.workers.replay_sharded` on N worker processes sharded by site, over
the same messages; its time includes starting the processes, which is also given alone
(a sharded replay of no messages). Sites are placed on workers by a hash of their name, so
the split is uneven with few sites: the simulator's default three (``plant-a`` ..
``plant-c``) all hash to worker 0 of 2, hence ten sites by default here (60 % / 40 % of the
devices on 2 workers); the table's last column shows the split.

    uv run python bench/replay_throughput.py --devices 10000 --messages 200000
    uv run python bench/replay_throughput.py --devices 10000 --messages 200000 --workers 2
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings, load_settings
from detectors import build_detectors
from service.alerts.metrics import FleetMetrics
from service.intake.pipeline import Pipeline
from service.intake.topics import TopicRouter
from service.records import RawMessage
from service.replay.engine import replay
from service.replay.workers import replay_sharded
from service.runtime.shards import ShardRouter
from service.simulator import FaultSpec, SimulationConfig, Simulator

ROOT = Path(__file__).resolve().parents[1]


def recorded_fleet(devices: int, count: int, seed: int, sites: int = 3) -> list[RawMessage]:
    """``count`` messages of a simulated fleet with faults, devices spread over ``sites``
    sites (topics ``fleet/{site}/{device_id}/telemetry``), received 50 ms after sending."""
    faults = tuple(
        FaultSpec.parse(spec)
        for spec in ("battery_failing=20", "sensor_drift=20", "overheating=10", "silent=10")
    )
    config = SimulationConfig(
        devices=devices, sites=sites, interval_s=60.0, seed=seed, faults=faults
    )
    messages: list[RawMessage] = []
    until = config.start_ts + config.interval_s * (count / devices + 2)
    for sim_message in Simulator(config).messages(until_ts=until):
        messages.append(RawMessage(sim_message.topic, sim_message.payload, sim_message.ts + 0.05))
        if len(messages) >= count:
            break
    return messages


def measure(
    label: str, messages: list[RawMessage], settings: Settings, with_detectors: bool
) -> str:
    detectors = build_detectors(settings) if with_detectors else []
    summary = replay(messages, settings, detectors=detectors)
    rate = summary.readings_per_s
    # a second, traced run for memory (tracing slows it down, so it is not timed)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pipeline = Pipeline.build(
        settings,
        detectors=build_detectors(settings) if with_detectors else [],
        sinks=[],
        metrics=FleetMetrics(CollectorRegistry()),
    )
    for start in range(0, len(messages), settings.pipeline.max_batch):
        pipeline.process_messages(messages[start : start + settings.pipeline.max_batch])
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_device = held / max(1, len(pipeline.registry))
    return (
        f"| {label} | {summary.messages:,} | {summary.devices:,} | {rate:,.0f} | "
        f"{summary.alerts_opened} | {per_device / 1024:.1f} KiB |"
    )


def split(messages: list[RawMessage], settings: Settings, workers: int) -> str:
    """How the messages are placed on ``workers`` workers, as percentages."""
    router = ShardRouter(TopicRouter(settings.topics.templates), workers)
    counts = [0] * workers
    for message in messages:
        counts[router.shard(message.topic)] += 1
    return " / ".join(f"{100 * n / max(1, len(messages)):.0f} %" for n in counts)


def measure_workers(
    label: str, messages: list[RawMessage], settings: Settings, workers: int
) -> str:
    """A row for ``replay_sharded`` on ``workers`` processes (start-up included)."""
    startup = replay_sharded([], settings, workers=workers).seconds
    summary = replay_sharded(messages, settings, workers=workers)
    return (
        f"| {label} | {summary.messages:,} | {summary.devices:,} | "
        f"{summary.readings_per_s:,.0f} (start-up {startup:.1f} s included) | "
        f"{summary.alerts_opened} | per worker: {split(messages, settings, workers)} of the messages |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sites", type=int, default=10, help="sites the devices are spread over")
    parser.add_argument(
        "--workers", type=int, default=1, help="also replay on this many worker processes"
    )
    args = parser.parse_args()
    messages = recorded_fleet(args.devices, args.messages, args.seed, sites=args.sites)
    settings = load_settings(ROOT / "config" / "fleetwatch.example.toml", environ={})
    print("| pipeline | messages | devices | readings/s | alerts opened | memory per device |")
    print("|---|---|---|---|---|---|")
    print(measure("no detectors", messages, settings, with_detectors=False), flush=True)
    print(measure("example config detectors", messages, settings, with_detectors=True), flush=True)
    if args.workers > 1:
        label = f"example config detectors, {args.workers} worker processes sharded by site"
        print(measure_workers(label, messages, settings, args.workers))


if __name__ == "__main__":
    main()
