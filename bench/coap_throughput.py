"""CoAP throughput: readings per second one CoAP endpoint sustains, reply after processing.

The server side is what the daemon runs for CoAP: the aiocoap server on 127.0.0.1, the
intake (bounded queue, micro-batches), the pipeline with the rules detector and, unless
``journal`` says no, the SQLite state store journaling every message before its 2.04.
Clients run in separate processes (``python bench/coap_throughput.py client ...``): each
opens ``contexts`` aiocoap client contexts (one UDP socket each) and keeps ``inflight``
requests outstanding per context, for a bounded number of requests, each one JSON reading
of a distinct device and time. aiocoap sends one confirmable request at a time per peer
(NSTART = 1), so confirmable concurrency comes from more contexts; non-confirmable requests
are not held back. Every variant is bounded in count and time.

    uv run python bench/coap_throughput.py --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from config.settings import Settings, settings_from_mapping
from detectors import build_detectors
from protocols.coap import CoapServer
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.intake.pipeline import Intake, Pipeline
from service.state.store import StateStore

RULES = [
    {"name": "battery_low", "metric": "battery_v", "kind": "below", "threshold": 3.3},
    {"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 70.0},
]
BASE_TS = 1_767_225_600


@dataclass(frozen=True)
class Variant:
    """One row of the table."""

    label: str
    processes: int
    contexts: int  # per process
    inflight: int  # per context
    confirmable: bool
    journal: bool


VARIANTS = (
    Variant("CON, 1 client, sequential", 1, 1, 1, True, True),
    Variant("CON, 2 processes x 16 clients", 2, 16, 1, True, True),
    Variant("CON, same, no journal", 2, 16, 1, True, False),
    Variant("NON, 2 processes x 1 client x 64 in flight", 2, 1, 64, False, True),
)


# -- client process ------------------------------------------------------------------------


async def run_client(
    port: int, start: int, count: int, contexts: int, inflight: int, confirmable: bool
) -> dict[str, Any]:
    """Send ``count`` requests; return the reply codes, latencies and elapsed time."""
    import aiocoap
    from aiocoap.numbers.codes import Code
    from aiocoap.numbers.types import Type

    clients = [await aiocoap.Context.create_client_context() for _ in range(contexts)]
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    next_index = iter(range(start, start + count))

    async def worker(client: Any) -> None:
        for index in next_index:
            payload = orjson.dumps(
                {"ts": BASE_TS + index // 1000, "seq": index, "battery_v": 3.7,
                 "temperature_c": 21.5, "rssi_dbm": -70.0, "model": "TH-200"}
            )  # fmt: skip
            request = aiocoap.Message(
                code=Code.POST,
                uri=f"coap://127.0.0.1:{port}/t/dev-{index % 1000:06d}",
                payload=payload,
                content_format=50,
            )
            if not confirmable:
                request.mtype = Type.NON
            sent = time.perf_counter()
            try:
                response = await asyncio.wait_for(client.request(request).response, 30)
            except (TimeoutError, aiocoap.error.Error):
                codes["timeout"] += 1
                continue
            latencies.append(time.perf_counter() - sent)
            codes[str(response.code.dotted)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients for _ in range(inflight)))
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.shutdown()
    latencies.sort()
    return {
        "codes": dict(codes),
        "elapsed": elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


# -- server (this process) -----------------------------------------------------------------


def bench_settings() -> Settings:
    return settings_from_mapping(
        {
            "coap": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "detectors": {"enabled": ["rules"]},
            "rules": RULES,
        }
    )


async def measure(variant: Variant, requests: int, folder: Path) -> str:
    settings = bench_settings()
    metrics = FleetMetrics(CollectorRegistry())
    pipeline = Pipeline.build(
        settings, detectors=build_detectors(settings), sinks=[MemorySink()], metrics=metrics
    )
    store = (
        StateStore(folder / f"state-{time.monotonic_ns()}.db").open() if variant.journal else None
    )
    intake = Intake(
        pipeline,
        queue_size=settings.pipeline.queue_size,
        max_batch=settings.pipeline.max_batch,
        journal=store.append_journal if store is not None else None,
    )
    runner = asyncio.create_task(intake.run(), name="bench-intake")
    per_process = requests // variant.processes
    try:
        async with CoapServer(settings.coap, intake) as server:
            assert server.port is not None
            started = time.perf_counter()
            processes = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "client",
                    str(server.port),
                    str(index * per_process),
                    str(per_process),
                    str(variant.contexts),
                    str(variant.inflight),
                    "con" if variant.confirmable else "non",
                    stdout=subprocess.PIPE,
                )
                for index in range(variant.processes)
            ]
            outputs = [await asyncio.wait_for(process.communicate(), 600) for process in processes]
            wall = time.perf_counter() - started
    finally:
        runner.cancel()
        if store is not None:
            store.close()
    results = [orjson.loads(out) for out, _ in outputs]
    codes: Counter[str] = Counter()
    for result in results:
        codes.update(result["codes"])
    accepted = pipeline.totals.accepted
    sent = per_process * variant.processes
    # clients start at slightly different times: the rate over the slowest client's span
    span = max(result["elapsed"] for result in results)
    p50 = statistics.median(r["p50_ms"] for r in results if r["p50_ms"] is not None)
    p99 = max(r["p99_ms"] for r in results if r["p99_ms"] is not None)
    other = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items()) if code != "2.04")
    return (
        f"| {variant.label} | {'on' if variant.journal else 'off'} | {sent:,} | "
        f"{codes.get('2.04', 0):,} | {other or '-'} | {accepted:,} | {span:.2f} s | "
        f"{accepted / span:,.0f} | {p50:.2f} / {p99:.2f} ms | (wall {wall:.1f} s) |"
    )


async def serve(requests: int) -> None:
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {requests:,} requests per row")
    print(
        "| clients | journal | requests | 2.04 | other replies | readings accepted | "
        "time | readings/s | latency p50 / p99 | |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="fleetwatch-coap-bench-") as folder:
        for variant in VARIANTS:
            count = requests if variant.processes * variant.contexts > 1 else requests // 4
            print(await measure(variant, count, Path(folder)), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        port, start, count, contexts, inflight, mode = sys.argv[2:8]
        result = asyncio.run(
            run_client(
                int(port), int(start), int(count), int(contexts), int(inflight), mode == "con"
            )
        )
        sys.stdout.buffer.write(orjson.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per row")
    args = parser.parse_args()
    asyncio.run(serve(args.requests))


if __name__ == "__main__":
    main()
