"""Pipeline throughput per payload format: the same readings as JSON, CBOR, SenML JSON,
SenML CBOR and Protobuf, decoded, normalized and run through the pipeline (no broker, no
detectors: the cost of each format itself).

The simulated fleet's telemetry is encoded in each format once (not timed); then each set
of messages is run through a fresh pipeline in micro-batches, and every format must give
the same number of readings.

    uv run python bench/format_throughput.py [--devices 5000] [--messages 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import orjson
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings
from protocols.proto import telemetry_pb2
from service.alerts.metrics import FleetMetrics
from service.intake.pipeline import Pipeline
from service.records import RawMessage
from service.simulator import SimulationConfig, Simulator

NUMERIC_SKIP = {"ts", "seq"}


def senml(record: dict[str, Any], device: str) -> list[dict[str, Any]]:
    pack: list[dict[str, Any]] = [{"bn": f"urn:dev:{device}:", "bt": record["ts"]}]
    for key, value in record.items():
        if key in NUMERIC_SKIP or key in ("lat", "lon"):
            continue
        if isinstance(value, str):
            pack.append({"n": key, "vs": value})
        else:
            pack.append({"n": key, "v": value})
    return pack


def protobuf(record: dict[str, Any]) -> bytes:
    message = telemetry_pb2.Telemetry(ts=record["ts"], seq=record["seq"])  # type: ignore[attr-defined]
    for key, value in record.items():
        if key in NUMERIC_SKIP:
            continue
        if isinstance(value, str):
            message.metadata[key] = value
        elif key in ("lat", "lon"):
            message.metadata[key] = str(value)
        else:
            message.metrics.add(name=key, value=float(value))
    batch = telemetry_pb2.Batch(readings=[message])  # type: ignore[attr-defined]
    return bytes(batch.SerializeToString())


FORMATS: dict[str, tuple[str, Callable[[dict[str, Any], str], bytes]]] = {
    "JSON": ("application/json", lambda r, d: orjson.dumps(r)),
    "CBOR": ("application/cbor", lambda r, d: cbor2.dumps(r)),
    "SenML JSON": ("application/senml+json", lambda r, d: orjson.dumps(senml(r, d))),
    "SenML CBOR": ("application/senml+cbor", lambda r, d: cbor2.dumps(senml(r, d))),
    "Protobuf": ("application/x-protobuf", lambda r, d: protobuf(r)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    config = SimulationConfig(devices=args.devices, interval_s=60.0, seed=3)
    records: list[tuple[str, str, dict[str, Any]]] = []
    until = config.start_ts + 60.0 * (args.messages / args.devices + 2)
    for message in Simulator(config).messages(until):
        if message.topic.endswith("/telemetry"):
            device = message.topic.split("/")[2]
            records.append((message.topic, device, orjson.loads(message.payload)))
        if len(records) >= args.messages:
            break
    print(f"{len(records):,} messages from {args.devices:,} devices, batches of {args.batch}")
    print("| format | content type | bytes per message | readings/s |")
    print("|---|---|---|---|")
    for name, (content_type, encode) in FORMATS.items():
        messages = [
            RawMessage(topic, encode(record, device), record["ts"] + 0.05,
                       content_type=content_type)
            for topic, device, record in records
        ]  # fmt: skip
        size = sum(len(m.payload) for m in messages) / len(messages)
        pipeline = Pipeline.build(
            Settings(), detectors=[], sinks=[], metrics=FleetMetrics(CollectorRegistry())
        )
        started = time.perf_counter()
        for start in range(0, len(messages), args.batch):
            pipeline.process_messages(messages[start : start + args.batch])
        elapsed = time.perf_counter() - started
        totals = pipeline.totals
        if totals.rejected:
            sys.exit(f"{name}: {totals.rejected} messages rejected")
        print(f"| {name} | `{content_type}` | {size:.0f} | {totals.accepted / elapsed:,.0f} |")


if __name__ == "__main__":
    main()
