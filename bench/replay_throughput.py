"""Replay throughput and memory per device: the whole pipeline over a simulated fleet.

A deterministic simulated fleet (with faults) is generated in memory, then replayed through
the pipeline with no detectors and with the example configuration's detectors. Generation is
not timed. Memory per device is the traced heap the pipeline holds after the run, divided by
the number of devices it knows.

    uv run python bench/replay_throughput.py --devices 10000 --messages 200000
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
from service.metrics import FleetMetrics
from service.model import RawMessage
from service.pipeline import Pipeline
from service.replay import replay
from service.simulator import FaultSpec, SimulationConfig, Simulator

ROOT = Path(__file__).resolve().parents[1]


def recorded_fleet(devices: int, count: int, seed: int) -> list[RawMessage]:
    faults = tuple(
        FaultSpec.parse(spec)
        for spec in ("battery_failing=20", "sensor_drift=20", "overheating=10", "silent=10")
    )
    config = SimulationConfig(devices=devices, interval_s=60.0, seed=seed, faults=faults)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    messages = recorded_fleet(args.devices, args.messages, args.seed)
    settings = load_settings(ROOT / "config" / "fleetwatch.example.toml", environ={})
    print("| pipeline | messages | devices | readings/s | alerts opened | memory per device |")
    print("|---|---|---|---|---|---|")
    print(measure("no detectors", messages, settings, with_detectors=False), flush=True)
    print(measure("example config detectors", messages, settings, with_detectors=True))


if __name__ == "__main__":
    main()
