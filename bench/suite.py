"""FleetWatch's performance suite: every figure in one table, each the median of repeated runs.

One command runs it all and prints one Markdown table plus the machine it ran on:

- ``replay`` throughput with every detector of the default settings on (no broker);
- live throughput through a private mosquitto (127.0.0.1, a free port) with the publisher
  in its own process: N messages are queued for persistent sessions at QoS 0 and QoS 1, then
  drained by FleetWatch (acknowledging after processing and journaling) and by a bare
  ``mosquitto_sub``; every throughput is also given as a ratio to that QoS 1
  ``mosquitto_sub`` drain rate, measured in the same run;
- the same drain by two daemons sharded by site, one process each, and by one daemon with
  two worker processes (``bench/sharded_live.py``), next to one daemon on the same queue;
- ingest-to-alert latency (p50, p99) at a steady 10,000 readings/s: a paced publisher stamps
  each reading with its publish time, every 50th device alternates above and below a rule
  threshold, and a ``mosquitto_sub`` stamps the arrival of each alert message;
- memory per device with all detectors at 100,000 and 1,000,000 devices (a fresh process per
  size; resident memory after three readings per device through a pipeline), and once the
  detectors have warmed up (two days of 5-minute readings; the extra memory of 4,000 devices
  over 2,000, per extra device);
- each detector's cost per reading and its ``tick(now)`` at 100,000 devices;
- the analyses the requirements set bars for: firmware across the fleet, 30 days of
  connectivity for 10,000 devices (extrapolated from a shorter run), a drift report for
  1,000 sensors, gateway analysis for 500 gateways.

Every load is bounded in count and time; every process it starts is stopped on the way out.

    uv run python bench/suite.py            # full run (about 23 minutes on 2 cores)
    uv run python bench/suite.py --quick    # smaller sizes, 1,000,000 devices skipped
    uv run python bench/suite.py --only live latency --repeats 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import live_throughput  # noqa: E402
import sharded_live  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from config.settings import Settings, settings_from_mapping  # noqa: E402
from detectors import build_detectors  # noqa: E402
from detectors.base import Detector  # noqa: E402
from service.alerts.metrics import FleetMetrics  # noqa: E402
from service.intake.pipeline import Pipeline  # noqa: E402
from service.records import RawMessage, Reading  # noqa: E402
from service.runtime.broker import EmbeddedBroker  # noqa: E402
from service.runtime.daemon import Daemon  # noqa: E402
from service.runtime.workers import Coordinator  # noqa: E402
from service.state.memory import release_free_memory  # noqa: E402

T0 = 1_767_225_600.0
INTERVAL = 300.0  # the seeds' reporting interval: every 5 minutes
GATEWAYS = 500


# -- the table ------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One figure of the table: a name, the value of each run, its unit.

    ``throughput`` rows are also shown as a ratio to the ``mosquitto_sub`` drain rate.
    """

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    throughput: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


def _number(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(rows: Sequence[Row], baseline: float | None) -> str:
    """The rows as one Markdown table; throughputs also as a ratio to ``baseline``."""
    lines = [
        "| figure | median | unit | runs (min-max) | vs mosquitto_sub drain | note |",
        "|---|---:|---|---|---:|---|",
    ]
    for row in rows:
        if row.values:
            spread = (
                f"{len(row.values)} ({_number(min(row.values))}-{_number(max(row.values))})"
                if len(row.values) > 1
                else "1"
            )
        else:
            spread = "0"
        ratio = ""
        if row.throughput and baseline and row.values:
            ratio = f"{row.median / baseline:.2f}"
        lines.append(
            f"| {row.name} | {_number(row.median)} | {row.unit} | {spread} | {ratio} | {row.note} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """One line on the machine: CPU model, cores, memory, Python."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024**2:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} cores ({model}){memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


# -- a simulated fleet, as readings ---------------------------------------------------------


def suite_settings() -> Settings:
    """The default settings (every default detector on) plus the benchmarks' rules."""
    return settings_from_mapping({"rules": live_throughput.RULES})


def device_metas(devices: int, gateways: int = GATEWAYS) -> list[dict[str, str]]:
    """Each device's context: 10 devices' worth of gateways per site, 7 zones, 3 models."""
    models = (("TH-200", "1.4.2"), ("VB-31", "2.0.1"), ("PM-10", "3.2.0"))
    return [
        {"gateway": f"gw{i % gateways:04d}", "site": f"site{i % gateways // 10}",
         "zone": f"z{i % 7}", "model": models[i % 3][0], "firmware": models[i % 3][1],
         "protocol": "mqtt"}
        for i in range(devices)
    ]  # fmt: skip


def fleet_round(metas: Sequence[dict[str, str]], round_: int, seed: int = 0) -> list[Reading]:
    """One reporting round (5 minutes) of every device, in time order."""
    rng = random.Random(seed * 1_000_003 + round_)
    start = T0 + round_ * INTERVAL
    count = len(metas)
    readings: list[Reading] = []
    for i, meta in enumerate(metas):
        ts = start + INTERVAL * i / count
        readings.append(
            Reading(
                f"d{i:07d}", ts, ts + 0.05,
                {"battery_v": 3.7 - round_ * 1e-4 + rng.gauss(0, 0.005),
                 "temperature_c": 21.0 + (i % 7) + rng.gauss(0, 0.2),
                 "rssi_dbm": -80.0 + rng.gauss(0, 2.0),
                 "power_mw": 120.0 + rng.gauss(0, 3.0)},
                meta, seq=round_,
            )
        )  # fmt: skip
    return readings


def batches(readings: Sequence[Reading], size: int) -> Iterator[Sequence[Reading]]:
    for start in range(0, len(readings), size):
        yield readings[start : start + size]


@dataclass(slots=True)
class DetectorCost:
    name: str
    per_reading_us: float
    tick_ms: float


def detector_costs(
    settings: Settings, devices: int, rounds: int = 3, batch: int | None = None
) -> list[DetectorCost]:
    """Each detector's cost per reading (µs) over ``rounds`` reports of ``devices`` devices in
    the pipeline's micro-batches, and its ``tick(now)`` after the last round (ms).

    Readings are made before the clock starts; each detector sees every batch, as in the
    pipeline, and a tick after every round (the pipeline ticks every few seconds), so the
    tick timed is a steady one, not the first.
    """
    detectors = build_detectors(settings)
    size = batch or settings.pipeline.max_batch
    metas = device_metas(devices)
    spent = dict.fromkeys((d.name for d in detectors), 0.0)
    ticks = dict.fromkeys((d.name for d in detectors), 0.0)
    readings = 0
    for round_ in range(rounds):
        fleet = fleet_round(metas, round_)
        for chunk in batches(fleet, size):
            for detector in detectors:
                started = time.perf_counter()
                detector.process(chunk)
                spent[detector.name] += time.perf_counter() - started
        readings += len(fleet)
        now = T0 + (round_ + 1) * INTERVAL
        for detector in detectors:
            started = time.perf_counter()
            detector.tick(now)
            ticks[detector.name] = time.perf_counter() - started
    return [
        DetectorCost(d.name, spent[d.name] / readings * 1e6, ticks[d.name] * 1e3) for d in detectors
    ]


@dataclass(slots=True)
class ConnectivityRun:
    readings: int
    seconds: float
    connectivity_report_ms: float
    gateway_report_ms: float


def connectivity_analysis(devices: int, days: float, gateways: int = GATEWAYS) -> ConnectivityRun:
    """The connectivity and gateway detectors over ``days`` of 5-minute reports from ``devices``
    devices behind ``gateways`` gateways (a tick after every round), then their reports.

    Only the detectors are timed (the analysis of stored readings), not making the readings.
    """
    settings = settings_from_mapping({"detectors": {"enabled": ["connectivity", "gateway"]}})
    detectors: list[Detector] = build_detectors(settings)
    metas = device_metas(devices, gateways)
    spent = 0.0
    readings = 0
    rounds = max(1, round(days * 86_400 / INTERVAL))
    for round_ in range(rounds):
        fleet = fleet_round(metas, round_)
        started = time.perf_counter()
        for chunk in batches(fleet, settings.pipeline.max_batch):
            for detector in detectors:
                detector.process(chunk)
        end = T0 + (round_ + 1) * INTERVAL
        for detector in detectors:
            detector.tick(end)
        spent += time.perf_counter() - started
        readings += len(fleet)
    now = T0 + rounds * INTERVAL
    report_ms: dict[str, float] = {}
    for detector in detectors:
        started = time.perf_counter()
        detector.report(now)  # type: ignore[attr-defined]
        report_ms[detector.name] = (time.perf_counter() - started) * 1e3
    return ConnectivityRun(readings, spent, report_ms["connectivity"], report_ms["gateway"])


# -- replay ---------------------------------------------------------------------------------


REPLAY_SITES = 10
"""Sites of the replayed fleet: placed on 2 workers by a hash of their names, 10 sites put 60 %
of the devices on one and 40 % on the other (the simulator's default 3 all go to one)."""


def replay_rate(
    devices: int, messages: int, seed: int, workers: Sequence[int] = (1,)
) -> list[float]:
    """Readings per second of replays of one simulated fleet at :data:`REPLAY_SITES` sites,
    all default detectors on, one figure per entry of ``workers``: 1 is ``replay`` in this
    process, more is ``replay_sharded`` on that many worker processes (their start-up
    included)."""
    import replay_throughput

    from service.replay.workers import replay_sharded

    recorded = replay_throughput.recorded_fleet(devices, messages, seed, sites=REPLAY_SITES)
    settings = suite_settings()
    # one worker: replay_sharded is replay in this process
    return [replay_sharded(recorded, settings, workers=count).readings_per_s for count in workers]


# -- memory per device (run in a fresh process per size) ------------------------------------


def _rss_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _available_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _feed(pipeline: Pipeline, metas: Sequence[dict[str, str]], rounds: int, batch: int) -> None:
    """``rounds`` 5-minute rounds of JSON telemetry from every device in ``metas``, a tick
    after each round."""
    devices = len(metas)
    for round_ in range(rounds):
        for first in range(0, devices, batch):
            messages = []
            for i in range(first, min(devices, first + batch)):
                meta = metas[i]
                ts = T0 + round_ * INTERVAL + INTERVAL * i / devices
                payload = orjson.dumps(
                    {"ts": ts, "seq": round_, "battery_v": 3.7, "temperature_c": 21.0 + i % 7,
                     "rssi_dbm": -80.0, "power_mw": 120.0, "gateway": meta["gateway"],
                     "zone": meta["zone"], "model": meta["model"], "firmware": meta["firmware"]}
                )  # fmt: skip
                messages.append(
                    RawMessage(f"fleet/{meta['site']}/d{i:07d}/telemetry", payload, ts + 0.05)
                )
            pipeline.process_messages(messages)
        pipeline.tick(T0 + (round_ + 1) * INTERVAL)


def bare_pipeline(settings: Settings) -> Pipeline:
    """A pipeline with every detector of ``settings``, no sinks, its own metrics."""
    return Pipeline.build(
        settings,
        detectors=build_detectors(settings),
        sinks=[],
        metrics=FleetMetrics(CollectorRegistry()),
    )


def load_first_use(settings: Settings) -> None:
    """Run a small throwaway pipeline (readings, ticks, reports), so that the modules its
    detectors import on first use are loaded before a memory measurement starts."""
    warm_up = bare_pipeline(settings)
    _feed(warm_up, device_metas(20, gateways=4), 3, settings.pipeline.max_batch)
    warm_up.reports(T0 + 3 * INTERVAL)


def memory_per_device(devices: int, rounds: int = 3) -> dict[str, float]:
    """Resident memory the pipeline with every default detector holds per device, after
    ``rounds`` JSON readings from each of ``devices`` devices (meant for a fresh process).

    A small throwaway pipeline runs first (readings, ticks, reports), so modules imported on
    first use are loaded before the measurement starts. Free heap pages are given back to
    the operating system before both readings of resident memory, as the daemon gives them
    back after each checkpoint.
    """
    settings = suite_settings()
    size = settings.pipeline.max_batch
    load_first_use(settings)
    pipeline = bare_pipeline(settings)
    metas = device_metas(devices)
    gc.collect()
    release_free_memory()
    before = _rss_bytes()
    started = time.perf_counter()
    _feed(pipeline, metas, rounds, size)
    seconds = time.perf_counter() - started
    gc.collect()
    release_free_memory()  # as the daemon does after each checkpoint
    held = _rss_bytes() - before
    known = len(pipeline.registry)
    return {
        "devices": known,
        "held_bytes": held,
        "bytes_per_device": held / max(1, known),
        "readings_per_s": devices * rounds / seconds,
    }


def memory_in_subprocess(devices: int, timeout: float, rounds: int = 3) -> dict[str, float]:
    """:func:`memory_per_device` in a fresh interpreter (so nothing else is on its heap)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(devices),
               "--memory-rounds", str(rounds)]  # fmt: skip
    done = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- live: drains through a real mosquitto --------------------------------------------------


@dataclass(slots=True)
class LiveRun:
    mosquitto_sub_q1: float
    mosquitto_sub_q0: float
    fleetwatch_q1: float
    fleetwatch_q0: float


async def live_run(count: int, devices: int, run: int) -> LiveRun:
    """Queue ``count`` messages at QoS 1 and at QoS 0 for persistent sessions of FleetWatch
    and ``mosquitto_sub``; each then drains its queue. Rates in messages per second."""
    lt = live_throughput
    q1, q0 = f"s{run}q1", f"s{run}q0"
    with tempfile.TemporaryDirectory(prefix="fleetwatch-suite-") as scratch:
        state = Path(scratch)
        # queue_qos0_messages: QoS 0 messages are kept for an offline persistent session too
        broker = EmbeddedBroker(prefer="mosquitto", extra_config=("queue_qos0_messages true",))
        async with broker:
            host, port = broker.host, broker.port
            for prefix, qos in ((q1, 1), (q0, 0)):
                # FleetWatch's persistent session: start once so the broker keeps it
                await lt.drain_fleetwatch(host, port, 0, prefix, 5, qos=qos, state_dir=state)
                await lt.register_session(host, port, f"sub-{prefix}", f"{prefix}/fleet/#", qos)
                await asyncio.to_thread(lt.publish, host, port, count, devices, prefix, qos)
            rates = []
            for prefix, qos in ((q1, 1), (q0, 0)):
                seconds = await asyncio.to_thread(
                    lt.drain_mosquitto_sub, host, port, count, f"sub-{prefix}",
                    f"{prefix}/fleet/#", qos,
                )  # fmt: skip
                rates.append(count / seconds)
            for prefix, qos in ((q1, 1), (q0, 0)):
                seconds = await lt.drain_fleetwatch(
                    host, port, count, prefix, 600, qos=qos, state_dir=state
                )
                rates.append(count / seconds)
    return LiveRun(*rates)


# -- ingest-to-alert latency ----------------------------------------------------------------


@dataclass(slots=True)
class LatencyRun:
    p50_ms: float
    p99_ms: float
    alerts: int
    readings: int
    seconds: float
    sent_per_s: float


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def alert_latencies(lines: Sequence[str], kind: str) -> list[float]:
    """Seconds from each alert's reading to its arrival, from ``mosquitto_sub -F '%U %p'``
    output: firing alerts by ``updated_at``, resolved ones by ``resolved_at``."""
    latencies = []
    for line in lines:
        arrived, _, payload = line.partition(" ")
        if not payload.strip():
            continue  # the empty retained message that clears a resolved alert
        body = orjson.loads(payload)
        if body.get("kind") != kind:
            continue
        stamp = body["resolved_at"] if body["state"] == "resolved" else body["updated_at"]
        latencies.append(float(arrived) - _epoch(stamp))
    return latencies


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency_run(
    rate: float, seconds: float, devices: int, run: int, workers: int = 1
) -> LatencyRun:
    """A publisher paced at ``rate`` readings/s for ``seconds``; every 50th device alternates
    above and below the ``hot`` rule's threshold, so each of its readings opens or resolves
    an alert; a ``mosquitto_sub`` on the alert topics stamps each arrival. With ``workers``
    above one, the daemon runs that many worker processes and the devices are at 10 sites."""
    lt = live_throughput
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        raise RuntimeError("mosquitto_sub is not installed")
    prefix = f"s{run}lat{workers}"
    count = int(rate * seconds)
    sites = ("--sites", "10") if workers > 1 else ()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="fleetwatch-suite-") as scratch:
        out_path = Path(scratch) / "alerts.txt"
        async with EmbeddedBroker(prefer="mosquitto") as broker:
            host, port = broker.host, broker.port
            settings = lt.fleetwatch_settings(host, port, prefix, Path(scratch), 1)
            daemon: Daemon | Coordinator
            if workers > 1:
                pipeline = settings.pipeline.model_copy(update={"workers": workers})
                daemon = coordinator = Coordinator(
                    settings.model_copy(update={"pipeline": pipeline}), workers
                )

                def processed() -> int:
                    return coordinator.acknowledged
            else:
                daemon = single = Daemon(settings)

                def processed() -> int:
                    return single.intake.processed

            task = asyncio.create_task(daemon.run())
            try:
                await daemon.ready.wait()
                with out_path.open("wb") as out:
                    processes.append(
                        subprocess.Popen(
                            [binary, "-h", host, "-p", str(port), "-q", "1",
                             "-t", f"{prefix}/alerts/#", "-F", "%U %p",
                             "-W", str(int(seconds + 20))],
                            stdout=out, stderr=subprocess.DEVNULL,
                        )
                    )  # fmt: skip
                await asyncio.sleep(0.5)  # subscribed before the first reading
                before = processed()
                publisher = subprocess.Popen(
                    lt.publisher_command(
                        host, port, count, devices, prefix, "--qos", "1", "--rate", str(rate),
                        "--seconds", str(seconds), "--breach-every", "50", "--now-ts", *sites,
                    ),
                    stdout=subprocess.PIPE,
                )  # fmt: skip
                processes.append(publisher)
                started = time.perf_counter()
                deadline = started + seconds + 60
                while publisher.poll() is None and time.perf_counter() < deadline:
                    await asyncio.sleep(0.1)
                elapsed = time.perf_counter() - started
                # let the last readings through and their alerts out, bounded
                settle = time.perf_counter() + 10
                last = -1
                while time.perf_counter() < settle and processed() != last:
                    last = processed()
                    await asyncio.sleep(0.5)
                readings = processed() - before
                finished = publisher.poll() is not None
                said = publisher.stdout.read().decode() if finished and publisher.stdout else ""
                found = re.search(r"sent (\d+) in ([\d.]+) s", said)
                sent_rate = int(found.group(1)) / float(found.group(2)) if found else float("nan")
            finally:
                daemon.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 30)
                for process in processes:
                    if process.poll() is None:
                        process.terminate()
                for process in processes:
                    try:
                        process.wait(5)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(5)
        lines = out_path.read_text(errors="replace").splitlines()
    latencies = alert_latencies(lines, "rule.hot")
    return LatencyRun(
        percentile(latencies, 0.50) * 1e3,
        percentile(latencies, 0.99) * 1e3,
        len(latencies),
        readings,
        elapsed,
        sent_rate,
    )


# -- the seeds' analyses from the detectors' own benchmarks ---------------------------------


def _ms(text: str) -> float:
    found = re.search(r"([\d,.]+) ms", text)
    return float(found.group(1).replace(",", "")) if found else float("nan")


def firmware_analysis(devices: int) -> tuple[float, float]:
    """``bench/firmware.py``'s report at scale: (report ms, first sight of the fleet ms)."""
    import firmware

    rows = dict(firmware.report_at_scale(devices))
    report = next(v for k, v in rows.items() if k.startswith("firmware report"))
    first = next(v for k, v in rows.items() if k.startswith("first sight"))
    return _ms(report), _ms(first)


def drift_report(sensors: int, days: float, timeout: float) -> tuple[float, float]:
    """``bench/drift.py`` in its own process: (recalibration report ms, µs per reading)."""
    done = subprocess.run(
        [sys.executable, str(HERE / "drift.py"), "--sensors", str(sensors), "--days", str(days)],
        check=True, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    report = cost = float("nan")
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != 2:
            continue
        if cells[0].startswith("recalibration schedule time"):
            report = _ms(cells[1])
        elif cells[0] == "detector cost":
            found = re.search(r"([\d.]+) µs", cells[1])
            cost = float(found.group(1)) if found else float("nan")
    return report, cost


# -- the whole suite ------------------------------------------------------------------------


@dataclass(slots=True)
class Sizes:
    live_messages: int
    live_devices: int
    replay_messages: int
    replay_devices: int
    latency_seconds: float
    memory_devices: tuple[int, ...]
    cost_devices: int
    connectivity_devices: int
    connectivity_days: float
    firmware_devices: int
    drift_days: float
    # memory once every detector has warmed up: devices x 5-minute rounds
    steady_devices: int = 4_000
    steady_rounds: int = 576

    @classmethod
    def full(cls) -> Sizes:
        return cls(200_000, 10_000, 200_000, 10_000, 10.0, (100_000, 1_000_000), 100_000,
                   10_000, 1.0, 100_000, 10.0)  # fmt: skip

    @classmethod
    def quick(cls) -> Sizes:
        return cls(30_000, 2_000, 40_000, 2_000, 5.0, (100_000,), 20_000,
                   2_000, 0.5, 20_000, 3.0, 2_000, 576)  # fmt: skip


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_suite(sizes: Sizes, repeats: int, only: set[str] | None = None) -> tuple[list[Row], float]:
    """Run every part ``repeats`` times (memory at 1,000,000 devices and once warmed up: once);
    return the rows
    and the median ``mosquitto_sub`` drain rate."""

    def wanted(part: str) -> bool:
        return only is None or part in only

    rows: list[Row] = []
    baseline = float("nan")
    rate = 10_000.0

    if wanted("live"):
        bare = Row(
            f"`mosquitto_sub` drain, {sizes.live_messages:,} queued QoS 1 messages",
            "msg/s",
            throughput=True,
        )
        bare0 = Row("`mosquitto_sub` drain, same at QoS 0", "msg/s", throughput=True)
        q1 = Row(
            "live QoS 1: FleetWatch drains the same, ack after processing and journaling, all detectors",
            "readings/s",
            throughput=True,
        )
        q0 = Row("live QoS 0: the same at QoS 0", "readings/s", throughput=True)  # fmt: skip
        for run in range(repeats):
            log(f"live throughput, run {run + 1}/{repeats}")
            live = asyncio.run(live_run(sizes.live_messages, sizes.live_devices, run))
            bare.values.append(live.mosquitto_sub_q1)
            bare0.values.append(live.mosquitto_sub_q0)
            q1.values.append(live.fleetwatch_q1)
            q0.values.append(live.fleetwatch_q0)
        baseline = bare.median
        rows += [bare, bare0, q1, q0]

    if wanted("sharded"):
        one = Row(f"live QoS 1, one daemon, {sizes.live_messages:,} queued messages from devices at 10 sites (`bench/sharded_live.py`)", "readings/s", throughput=True)  # fmt: skip
        two = Row("live QoS 1, two daemons sharded by site, one process each, the same queue", "readings/s", throughput=True)  # fmt: skip
        workers = Row("live QoS 1, **one daemon with two worker processes** sharded by site (`pipeline.workers = 2`), the same queue", "readings/s", throughput=True)  # fmt: skip
        own = []
        own_workers = []
        for run in range(repeats):
            log(f"sharded live throughput, run {run + 1}/{repeats}")
            sharded = asyncio.run(sharded_live.one_run(sizes.live_messages, sizes.live_devices, 2, run))  # fmt: skip
            one.values.append(sharded.one_daemon)
            two.values.append(sharded.sharded)
            workers.values.append(sharded.workers)
            own.append(sharded.sharded / sharded.mosquitto_sub)
            own_workers.append(sharded.workers / sharded.mosquitto_sub)
        two.note = (
            f"{statistics.median(own):.2f} of the `mosquitto_sub` drain measured in the same runs"
        )
        workers.note = (
            f"{statistics.median(own_workers):.2f} of the same runs' `mosquitto_sub` drain"
        )
        rows += [one, two, workers]

    if wanted("replay"):
        row = Row(f"`replay`, {sizes.replay_messages:,} simulated messages from {sizes.replay_devices:,} devices at {REPLAY_SITES} sites, all default detectors", "readings/s", throughput=True)  # fmt: skip
        sharded = Row("`replay`, same, two worker processes sharded by site (`--workers 2`)", "readings/s", throughput=True,
                      note="process start-up included; 60 % / 40 % of the messages per worker")  # fmt: skip
        for run in range(repeats):
            log(f"replay, run {run + 1}/{repeats}")
            one, two = replay_rate(sizes.replay_devices, sizes.replay_messages, run + 1, (1, 2))
            row.values.append(one)
            sharded.values.append(two)
        rows += [row, sharded]

    if wanted("latency"):
        p50 = Row(f"ingest-to-alert latency p50 at {rate:,.0f} readings/s for {sizes.latency_seconds:g} s (QoS 1, all detectors, 1% of readings breach)", "ms")  # fmt: skip
        p99 = Row("ingest-to-alert latency p99, same", "ms")
        achieved = Row("  publisher's achieved rate during the latency run", "readings/s")
        half50 = Row(f"ingest-to-alert latency p50 at {rate / 2:,.0f} readings/s, otherwise the same", "ms")  # fmt: skip
        half99 = Row(f"ingest-to-alert latency p99 at {rate / 2:,.0f} readings/s", "ms")
        workers50 = Row(f"ingest-to-alert latency p50 at {rate:,.0f} readings/s, one daemon with two worker processes, devices at 10 sites", "ms")  # fmt: skip
        workers99 = Row("ingest-to-alert latency p99, same", "ms")
        for run in range(repeats):
            log(f"latency, run {run + 1}/{repeats}")
            result = asyncio.run(latency_run(rate, sizes.latency_seconds, 1_000, run))
            p50.values.append(result.p50_ms)
            p99.values.append(result.p99_ms)
            achieved.values.append(result.sent_per_s)
            p50.note = (
                f"{result.alerts:,} alert messages, {result.readings:,} readings in the last run"
            )
            result = asyncio.run(latency_run(rate / 2, sizes.latency_seconds, 1_000, run))
            half50.values.append(result.p50_ms)
            half99.values.append(result.p99_ms)
            result = asyncio.run(latency_run(rate, sizes.latency_seconds, 1_000, run, workers=2))
            workers50.values.append(result.p50_ms)
            workers99.values.append(result.p99_ms)
        rows += [p50, p99, achieved, half50, half99, workers50, workers99]

    if wanted("memory"):
        available = _available_bytes()
        per_device = float("nan")
        for devices in sizes.memory_devices:
            row = Row(f"memory per device, all detectors, {devices:,} devices", "KiB",
                      note="resident memory grown by 3 readings per device, in a fresh process")  # fmt: skip
            runs = repeats if devices <= 100_000 else 1
            if per_device == per_device and available and per_device * devices * 1.2 > available:
                row.note = f"skipped: needs about {per_device * devices / 2**30:.0f} GiB"
                rows.append(row)
                continue
            for run in range(runs):
                log(f"memory at {devices:,} devices, run {run + 1}/{runs}")
                memory = memory_in_subprocess(devices, timeout=3600)
                row.values.append(memory["bytes_per_device"] / 1024)
            per_device = row.median * 1024
            rows.append(row)
        days = sizes.steady_rounds * INTERVAL / 86_400
        small, large = sizes.steady_devices // 2, sizes.steady_devices
        row = Row(f"memory per device after {days:g} days of 5-minute readings (detectors warmed up), all detectors", "KiB",
                  note=f"resident memory of {large:,} devices minus that of {small:,}, per extra device (fixed costs such as the full duplicate window cancel out)")  # fmt: skip
        # one run (it takes minutes), as for 1,000,000 devices
        log(f"memory after {days:g} days at {small:,} and {large:,} devices")
        held = [memory_in_subprocess(n, 3600, sizes.steady_rounds) for n in (small, large)]
        extra = held[1]["held_bytes"] - held[0]["held_bytes"]
        row.values.append(extra / (held[1]["devices"] - held[0]["devices"]) / 1024)
        rows.append(row)
    if wanted("detectors"):
        settings = suite_settings()
        per: dict[str, list[DetectorCost]] = {}
        for run in range(repeats):
            log(f"detector costs at {sizes.cost_devices:,} devices, run {run + 1}/{repeats}")
            for cost in detector_costs(settings, sizes.cost_devices):
                per.setdefault(cost.name, []).append(cost)
        for name, costs in per.items():
            rows.append(Row(f"detector `{name}`: cost per reading", "µs", [c.per_reading_us for c in costs]))  # fmt: skip
            rows.append(Row(f"detector `{name}`: `tick(now)` at {sizes.cost_devices:,} devices", "ms", [c.tick_ms for c in costs]))  # fmt: skip

    if wanted("analysis"):
        fw_report = Row(f"firmware report across {sizes.firmware_devices:,} devices (`bench/firmware.py`)", "ms", note="seed bar: 30 s")  # fmt: skip
        fw_first = Row(f"firmware: first sight of {sizes.firmware_devices:,} devices (inventory, advisories)", "ms")  # fmt: skip
        n, days = sizes.connectivity_devices, sizes.connectivity_days
        readings_30d = 10_000 * 30 * 86_400 / INTERVAL  # the seed's fleet: 86.4 M readings
        conn = Row(f"connectivity + gateway detectors, {n:,} devices x {days:g} day at 5-minute reports", "s")  # fmt: skip
        conn30 = Row(f"  extrapolated to 30 days x 10,000 devices ({readings_30d / 1e6:.1f} M readings)", "s", note="seed bar: 120 s (detectors only; decoding stored messages not included)")  # fmt: skip
        conn_report = Row(f"connectivity report, {n:,} devices", "ms")
        gw_report = Row(f"gateway load report, {GATEWAYS} gateways ({n:,} devices)", "ms", note="seed bar: 2 min")  # fmt: skip
        for run in range(repeats):
            log(f"analyses, run {run + 1}/{repeats}")
            report_ms, first_ms = firmware_analysis(sizes.firmware_devices)
            fw_report.values.append(report_ms)
            fw_first.values.append(first_ms)
            analysis = connectivity_analysis(n, days)
            conn.values.append(analysis.seconds)
            conn30.values.append(analysis.seconds / analysis.readings * readings_30d)
            conn_report.values.append(analysis.connectivity_report_ms)
            gw_report.values.append(analysis.gateway_report_ms)
        drift_ms = Row(f"drift: recalibration report for 1,000 sensors after {sizes.drift_days:g} days (`bench/drift.py`)", "ms", note="seed bar: 60 s")  # fmt: skip
        drift_us = Row("drift detector cost (same run)", "µs per reading")
        for run in range(repeats):
            log(f"drift report, run {run + 1}/{repeats}")
            report, per_reading = drift_report(1_000, sizes.drift_days, timeout=1200)
            drift_ms.values.append(report)
            drift_us.values.append(per_reading)
        rows += [fw_report, fw_first, conn, conn30, conn_report, gw_report, drift_ms, drift_us]
    return rows, baseline


PARTS = ("live", "sharded", "replay", "latency", "memory", "detectors", "analysis")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, skip 1M devices")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-rounds", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_per_device(args.memory_child, args.memory_rounds)))
        return
    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.perf_counter()
    rows, baseline = run_suite(sizes, max(1, args.repeats), set(args.only) if args.only else None)
    print(f"Machine: {machine()}.")
    print(
        f"Run: `bench/suite.py{' --quick' if args.quick else ''}`, "
        f"{args.repeats} runs per figure, {time.perf_counter() - started:.0f} s in all."
    )
    print()
    print(format_table(rows, baseline if baseline == baseline else None))


if __name__ == "__main__":
    main()
