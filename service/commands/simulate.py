"""``fleetwatch simulate``: publish a simulated fleet to a broker, or record it to a file."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from service.simulator import FAULTS, FaultSpec, SimulationConfig, Simulator, publish


def add_simulate_parser(sub: Any) -> None:
    sim = sub.add_parser(
        "simulate",
        help="publish a simulated fleet (or record it with --out)",
        description="Simulated devices over sites, zones and gateways, with faults. "
        f"Faults: {', '.join(sorted(FAULTS))}. "
        "Give each as NAME[=COUNT][@START_S][+DURATION_S][:key=value,...].",
    )
    sim.add_argument("--devices", type=int, default=1000)
    sim.add_argument(
        "--rate", type=float, default=None, help="messages per second for the whole fleet"
    )
    sim.add_argument(
        "--interval", type=float, default=60.0, help="seconds between a device's reports"
    )
    sim.add_argument("--sites", type=int, default=3)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--fault", action="append", default=[], metavar="SPEC")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds to simulate")
    sim.add_argument("--max-messages", type=int, default=None)
    sim.add_argument("--prefix", default="", help="topic prefix before fleet/...")
    sim.add_argument("--config", type=Path, default=None, help="settings file for the broker")
    sim.add_argument("--host", default=None)
    sim.add_argument("--port", type=int, default=None)
    sim.add_argument("--qos", type=int, choices=(0, 1), default=1)
    sim.add_argument("--out", type=Path, default=None, help="record to this .jsonl[.gz] file")
    sim.add_argument(
        "--start", type=float, default=None, help="simulated start (epoch s) for --out"
    )
    sim.add_argument(
        "--chemistries", default="li_ion",
        help="battery chemistries to draw from, comma-separated (li_ion, li_socl2, alkaline_2aa)",
    )  # fmt: skip
    sim.set_defaults(func=cmd_simulate)


def _config(args: argparse.Namespace, start_ts: float) -> SimulationConfig:
    interval = args.interval
    if args.rate:
        interval = args.devices / args.rate
    return SimulationConfig(
        devices=args.devices,
        sites=args.sites,
        interval_s=interval,
        seed=args.seed,
        start_ts=start_ts,
        faults=tuple(FaultSpec.parse(spec) for spec in args.fault),
        topic_prefix=args.prefix,
        chemistries=_chemistries(args.chemistries),
    )


def _chemistries(text: str) -> tuple[str, ...]:
    from detectors.battery import CHEMISTRIES

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CHEMISTRIES]
    if not names or unknown:
        raise ValueError(f"unknown chemistries {unknown} (known: {', '.join(CHEMISTRIES)})")
    return names


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        if args.out is not None:
            return _record(args)
        return asyncio.run(_publish(args))
    except ValueError as exc:
        print(f"fleetwatch simulate: {exc}", file=sys.stderr)
        return 2


def _record(args: argparse.Namespace) -> int:
    from service.replay.recording import write_recording

    start = args.start if args.start is not None else 1_767_225_600.0
    simulator = Simulator(_config(args, start))
    delay = simulator.config.network_delay_s
    messages = simulator.messages(start + args.duration)
    if args.max_messages is not None:
        import itertools

        messages = itertools.islice(messages, args.max_messages)
    count = write_recording(args.out, ((m.topic, m.payload, m.ts + delay) for m in messages))
    print(f"recorded {count} messages from {args.devices} devices to {args.out}")
    for planted in simulator.planted():
        print(
            f"  fault {planted.fault} on {planted.device_id} ({planted.site}) from {planted.start_ts:.0f}"
        )
    return 0


async def _publish(args: argparse.Namespace) -> int:
    from config.settings import load_settings
    from protocols.mqtt import MqttClient

    settings = load_settings(args.config)
    mqtt = settings.mqtt
    updates: dict[str, Any] = {}
    if args.host:
        updates["host"] = args.host
    if args.port:
        updates["port"] = args.port
    if updates:
        mqtt = mqtt.model_copy(update=updates)
    simulator = Simulator(_config(args, time.time()))
    client = MqttClient(mqtt, client_id=f"fleetwatch-simulator-{args.seed}", persistent=False)
    async with client:

        async def send(topic: str, payload: bytes) -> None:
            await client.connected.wait()
            client.publish(topic, payload, qos=args.qos)

        started = time.monotonic()
        sent = await publish(
            simulator, send, duration_s=args.duration, max_messages=args.max_messages
        )
        elapsed = time.monotonic() - started
    print(f"published {sent} messages in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f}/s)")
    return 0
