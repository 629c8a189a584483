"""Live throughput with the fleet sharded by site over several daemons, one process each.

One FleetWatch daemon is one process. To use more cores, run one daemon per group of sites:
each subscribes only to its sites' topics (``mqtt.subscriptions``), has its own client id and
state file, and publishes to the same alert topics. A site's devices, gateways and zones are
all in one daemon, so each alert is raised once (see the README, "Using more than one core").

This benchmark queues N QoS 1 messages from devices at S sites (``site-{device % S}``) at a
private mosquitto, for a bare ``mosquitto_sub``, for one daemon subscribed to every site, and
for K daemons that split the sites between them (site ``s`` to daemon ``s % K``). Then each
drains its queue: ``mosquitto_sub`` alone, the single daemon alone, and the K daemons at the
same time, each in its own process, started together once all are ready. The sharded rate is
N over the time from the first daemon's start to the last one's finish. Each daemon acknowledges
after processing and journaling, with every default detector and the benchmark rules.

    uv run python bench/sharded_live.py --messages 200000 --shards 2 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_throughput import RULES, drain_mosquitto_sub, publisher_command, register_session

from config.settings import Settings, settings_from_mapping
from service.runtime.broker import EmbeddedBroker
from service.runtime.daemon import Daemon
from service.runtime.workers import Coordinator

SITES = 10


def shard_sites(shard: int, shards: int, sites: int) -> list[int]:
    """The sites daemon ``shard`` of ``shards`` takes.

    >>> shard_sites(0, 2, 5), shard_sites(1, 2, 5)
    ([0, 2, 4], [1, 3])
    """
    return [site for site in range(sites) if site % shards == shard]


def expected_messages(count: int, devices: int, sites: Sequence[int], site_count: int) -> int:
    """How many of the publisher's ``count`` messages go to ``sites``.

    >>> expected_messages(10, 4, [0], 2)  # devices 0 and 2 are at site 0
    5
    """
    wanted = set(sites)
    full, rest = divmod(count, devices)
    per_device = [full + (1 if device < rest else 0) for device in range(devices)]
    return sum(n for device, n in enumerate(per_device) if device % site_count in wanted)


def shard_settings(
    host: str, port: int, prefix: str, shard: int, shards: int, sites: int, state_dir: Path
) -> Settings:
    """One daemon's settings: subscribed to its sites only, its own client id and state."""
    name = f"fw-{prefix}-{shards}-{shard}"
    return settings_from_mapping(
        {
            "mqtt": {"host": host, "port": port, "client_id": name,
                     "subscriptions": [{"filter": f"{prefix}/fleet/site-{site}/+/+", "qos": 1}
                                       for site in shard_sites(shard, shards, sites)]},
            "topics": {"templates": [f"{prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"],
                       "alerts_prefix": f"{prefix}/alerts"},
            "http": {"enabled": False},
            "state": {"path": str(state_dir / f"{name}.db")},
            "rules": RULES,
        }
    )  # fmt: skip


async def child(settings: Settings, expected: int, timeout: float) -> dict[str, float]:
    """Run one daemon until it has processed ``expected`` messages (0: connect, so the broker
    keeps its session, then leave); wait for a line on stdin before starting."""
    daemon = Daemon(settings)
    if expected > 0:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.time()
    task = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    deadline = time.monotonic() + timeout
    while daemon.intake.processed < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    finished = time.time()
    processed = daemon.intake.processed
    daemon.stop()
    await task
    return {"start": started, "end": finished, "processed": processed}


def child_command(
    host: str, port: int, prefix: str, shard: int, shards: int, sites: int, expected: int,
    state_dir: Path,
) -> list[str]:  # fmt: skip
    return [
        sys.executable, str(Path(__file__).resolve()), "--child", host, str(port), prefix,
        str(shard), str(shards), str(sites), str(expected), str(state_dir),
    ]  # fmt: skip


def drain_shards(
    host: str, port: int, prefix: str, shards: int, sites: int, count: int, devices: int,
    state_dir: Path, timeout: float = 600,
) -> float:  # fmt: skip
    """Start ``shards`` daemon processes, let them go together; return readings/s overall
    (0 messages: only create their sessions)."""
    processes = []
    for shard in range(shards):
        expected = (
            expected_messages(count, devices, shard_sites(shard, shards, sites), sites)
            if count
            else 0
        )
        command = child_command(host, port, prefix, shard, shards, sites, expected, state_dir)
        processes.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    try:
        if count:
            for process in processes:
                assert process.stdout is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError("a sharded daemon did not start")
            for process in processes:
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
        results = []
        for process in processes:
            out, _ = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"a sharded daemon failed with exit code {process.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    if not count:
        return 0.0
    processed = sum(int(result["processed"]) for result in results)
    if processed < count:
        raise RuntimeError(f"sharded daemons processed {processed} of {count}")
    span = float(max(r["end"] for r in results)) - float(min(r["start"] for r in results))
    return count / span


def workers_settings(host: str, port: int, prefix: str, workers: int, state_dir: Path) -> Settings:
    """One daemon with ``workers`` worker processes, subscribed to every site."""
    return settings_from_mapping(
        {
            "mqtt": {"host": host, "port": port, "client_id": f"fw-{prefix}-workers",
                     "subscriptions": [{"filter": f"{prefix}/fleet/+/+/+", "qos": 1}]},
            "topics": {"templates": [f"{prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"],
                       "alerts_prefix": f"{prefix}/alerts",
                       "status": f"{prefix}/fleetwatch/status"},
            "pipeline": {"workers": workers},
            "http": {"enabled": False},
            "state": {"path": str(state_dir / f"fw-{prefix}-workers.db")},
            "rules": RULES,
        }
    )  # fmt: skip


async def drain_workers(settings: Settings, count: int, timeout: float = 600) -> float:
    """Readings/s of one daemon with worker processes draining ``count`` queued messages:
    from its first routed message until the broker has all ``count`` acknowledgements sent
    (each after a worker processed and journaled the message)."""
    coordinator = Coordinator(settings, settings.pipeline.workers)
    task = asyncio.create_task(coordinator.run())
    deadline = time.monotonic() + timeout
    try:
        while coordinator.routed == 0 and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        while coordinator.acknowledged < count and time.monotonic() < deadline:
            if task.done():
                task.result()
                raise RuntimeError("the daemon stopped before draining its queue")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        coordinator.stop()
        await task
    if coordinator.acknowledged < count:
        raise RuntimeError(f"workers acknowledged {coordinator.acknowledged} of {count}")
    return count / elapsed


@dataclass(frozen=True, slots=True)
class ShardedRun:
    mosquitto_sub: float
    one_daemon: float
    sharded: float
    workers: float


async def one_run(count: int, devices: int, shards: int, run: int) -> ShardedRun:
    prefix = f"s{run}"
    with tempfile.TemporaryDirectory(prefix="fleetwatch-sharded-") as scratch:
        state = Path(scratch)
        async with EmbeddedBroker(prefer="mosquitto") as broker:
            host, port = broker.host, broker.port
            # every session first, so the broker queues every message for each of them
            drain_shards(host, port, prefix, 1, SITES, 0, devices, state)
            drain_shards(host, port, prefix, shards, SITES, 0, devices, state)
            await register_session(host, port, f"sub-{prefix}", f"{prefix}/fleet/#")
            in_daemon = workers_settings(host, port, prefix, shards, state)
            await register_session(
                host, port, in_daemon.mqtt.client_id, in_daemon.mqtt.subscriptions[0].filter
            )
            subprocess.run(
                [*publisher_command(host, port, count, devices, prefix), "--sites", str(SITES)],
                check=True,
                timeout=600,
            )
            bare = count / drain_mosquitto_sub(
                host, port, count, f"sub-{prefix}", f"{prefix}/fleet/#"
            )
            single = drain_shards(host, port, prefix, 1, SITES, count, devices, state)
            sharded = drain_shards(host, port, prefix, shards, SITES, count, devices, state)
            workers = await drain_workers(in_daemon, count)
    return ShardedRun(bare, single, sharded, workers)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=8, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        host, port, prefix, shard, shards, sites, expected, state_dir = args.child
        settings = shard_settings(
            host, int(port), prefix, int(shard), int(shards), int(sites), Path(state_dir)
        )
        print(json.dumps(asyncio.run(child(settings, int(expected), timeout=600))), flush=True)
        return
    runs = []
    for run in range(args.repeat):
        result = asyncio.run(one_run(args.messages, args.devices, args.shards, run))
        runs.append(result)
        print(
            f"run {run + 1}: mosquitto_sub {result.mosquitto_sub:,.0f} msg/s, one daemon "
            f"{result.one_daemon:,.0f}, {args.shards} daemons sharded by site "
            f"{result.sharded:,.0f}, one daemon with {args.shards} worker processes "
            f"{result.workers:,.0f} readings/s",
            flush=True,
        )
    bare = statistics.median(r.mosquitto_sub for r in runs)
    single = statistics.median(r.one_daemon for r in runs)
    sharded = statistics.median(r.sharded for r in runs)
    workers = statistics.median(r.workers for r in runs)
    print()
    print("| path | median rate | ratio to mosquitto_sub |")
    print("|---|---|---|")
    print(
        f"| mosquitto_sub, QoS 1 drain of {args.messages:,} messages | {bare:,.0f} msg/s | 1.00 |"
    )
    print(f"| one daemon, all detectors, ack after processing and journaling | {single:,.0f} readings/s | {single / bare:.2f} |")  # fmt: skip
    print(f"| {args.shards} daemons sharded by site, one process each, the same | {sharded:,.0f} readings/s | {sharded / bare:.2f} |")  # fmt: skip
    print(f"| one daemon with {args.shards} worker processes sharded by site, the same | {workers:,.0f} readings/s | {workers / bare:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
