"""Where the daemon's time goes while it drains queued telemetry: a profile by component.

N QoS 1 messages are queued at a private mosquitto for the daemon's persistent session (as in
``bench/live_throughput.py``: default detectors and the benchmark rules, journal on, ack after
processing); the daemon then drains them under cProfile (or, with ``--sampler py-spy``, under
py-spy when it is installed). Each function's own time is put in one component by the file it
lives in, and the table gives each component's share of the process's busy time, plus the
functions that cost most. The profiler's own overhead inflates small, frequent calls, so the
shares are a guide to where time goes, not a second throughput figure.

    uv run python bench/profile_live.py --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_throughput import drain_fleetwatch, fleetwatch_settings, publish

from service.runtime.broker import EmbeddedBroker
from service.runtime.daemon import Daemon

# (component, path fragments); the first component whose fragment is in a function's file wins
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MQTT client (gmqtt, protocols/mqtt.py)", ("gmqtt", "protocols/mqtt.py")),
    ("decode + normalize", ("protocols/codecs", "service/intake/normalize.py", "service/intake/topics.py",
                            "service/intake/registry.py", "orjson")),
    ("detector: rules", ("detectors/rules.py",)),
    ("detector: connectivity", ("detectors/connectivity/",)),
    ("detector: gateway", ("detectors/gateway.py",)),
    ("detector: drift", ("detectors/drift",)),
    ("detector: firmware", ("detectors/firmware.py",)),
    ("detector: environment", ("detectors/environment/",)),
    ("detector: battery", ("detectors/battery/",)),
    ("detector: power", ("detectors/power/", "detectors/anomaly.py")),
    ("alerts + sinks", ("service/alerts/lifecycle.py", "service/alerts/sinks.py", "service/alerts/alertmanager.py")),
    ("state journal (SQLite)", ("service/state/store.py", "sqlite3")),
    ("metrics (prometheus_client)", ("prometheus_client", "service/alerts/metrics.py")),
    ("fleet view (latest values)", ("service/api/fleetview.py",)),
    ("pipeline + intake", ("service/intake/pipeline.py", "service/runtime/daemon.py", "service/replay/engine.py")),
    ("asyncio event loop and sockets", ("asyncio", "selectors", "socket", "select.epoll")),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Share:
    component: str
    seconds: float
    fraction: float


def component_of(filename: str, function: str) -> str:
    """The component a profiled function belongs to, by the file it lives in.

    >>> component_of("/x/detectors/drift/detector.py", "process")
    'detector: drift'
    >>> component_of("~", "<method 'execute' of 'sqlite3.Cursor' objects>")
    'state journal (SQLite)'
    >>> component_of("/usr/lib/python3.11/json/__init__.py", "loads")
    'other'
    """
    where = f"{filename}:{function}"
    for component, fragments in COMPONENTS:
        if any(fragment in where for fragment in fragments):
            return component
    return "other"


def shares(stats: Mapping[tuple[str, int, str], tuple[int, int, float, float, Any]]) -> list[Share]:
    """Each component's own time and share of the total, largest first.

    Built-in functions (``dict.get``, ``orjson.loads``, ...) have no file of their own: their
    time is split among their callers' components by what each caller spent in them.
    """
    by_component: dict[str, float] = {}

    def add(component: str, seconds: float) -> None:
        by_component[component] = by_component.get(component, 0.0) + seconds

    for (filename, _line, function), (_cc, _nc, own, _cum, callers) in stats.items():
        component = component_of(filename, function)
        if filename == "~" and component == "other" and callers:
            for (caller_file, _caller_line, caller_function), timing in callers.items():
                add(component_of(caller_file, caller_function), timing[2])
            continue
        add(component, own)
    total = sum(by_component.values()) or 1.0
    return sorted(
        (Share(name, seconds, seconds / total) for name, seconds in by_component.items()),
        key=lambda share: -share.seconds,
    )


def top_functions(stats: pstats.Stats, count: int) -> list[tuple[str, float, int]]:
    """The ``count`` functions with the most own time: (where, seconds, calls)."""
    rows = []
    for (filename, line, function), (_cc, calls, own, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.split("/work/main/")[-1].split("site-packages/")[-1]
        rows.append((f"{short}:{line}({function})", own, calls))
    rows.sort(key=lambda row: -row[1])
    return rows[:count]


async def profiled_drain(count: int, devices: int) -> tuple[pstats.Stats, float]:
    """Queue ``count`` messages, then profile the daemon from connecting until it has
    processed them all (start-up before connecting and the shutdown checkpoint are not
    profiled)."""
    prefix = "prof"
    with tempfile.TemporaryDirectory(prefix="fleetwatch-profile-") as scratch:
        async with EmbeddedBroker(prefer="mosquitto") as broker:
            host, port = broker.host, broker.port
            await drain_fleetwatch(host, port, 0, prefix, 5, state_dir=Path(scratch))
            publish(host, port, count, devices, prefix)
            daemon = Daemon(fleetwatch_settings(host, port, prefix, Path(scratch)))
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            task = asyncio.create_task(daemon.run())
            await daemon.ready.wait()
            deadline = started + 900
            while daemon.intake.processed < count and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
            profiler.disable()
            seconds = time.perf_counter() - started
            processed = daemon.intake.processed
            daemon.stop()
            await task
    if processed < count:
        raise RuntimeError(f"the daemon processed {processed} of {count} within 900 s")
    return pstats.Stats(profiler), seconds


def profiled_replay(count: int, devices: int) -> tuple[pstats.Stats, float]:
    """Profile ``replay`` of ``count`` simulated messages from ``devices`` devices (the
    recording is made before the profiler starts)."""
    from replay_throughput import recorded_fleet
    from suite import suite_settings

    from detectors import build_detectors
    from service.replay.engine import replay

    recorded = recorded_fleet(devices, count, 1)
    settings = suite_settings()
    detectors = build_detectors(settings)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    summary = replay(recorded, settings, detectors=detectors)
    profiler.disable()
    seconds = time.perf_counter() - started
    if summary.messages < count:
        raise RuntimeError(f"replay took {summary.messages} of {count} messages")
    return pstats.Stats(profiler), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--replay", action="store_true", help="profile replay (no broker)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.replay:
        stats, seconds = profiled_replay(args.messages, args.devices)
    else:
        stats, seconds = asyncio.run(profiled_drain(args.messages, args.devices))
    print(
        f"{'replayed' if args.replay else 'drained'} {args.messages:,} messages under "
        f"cProfile in {seconds:.1f} s "
        f"({args.messages / seconds:,.0f}/s with the profiler's overhead)\n"
    )
    print("| component | own time (s) | share |")
    print("|---|---|---|")
    for share in shares(stats.stats):  # type: ignore[attr-defined]
        print(f"| {share.component} | {share.seconds:.2f} | {share.fraction:.1%} |")
    print()
    print("| function | own time (s) | calls |")
    print("|---|---|---|")
    for where, own, calls in top_functions(stats, args.top):
        print(f"| {where} | {own:.2f} | {calls:,} |")
    print(f"\n({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
