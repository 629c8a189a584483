"""Connectivity and gateway detectors on labelled simulated fleets, and their cost at scale.

Scenario 1: a fleet reporting every 5 minutes for 3 days with gateways that die, devices
that go silent for good (persistent), devices with intermittent links, a zone whose devices
drop out at 14:00 every day, and overloaded gateways. Scenario 2: a radio technology that
keeps dropping. Both run through ``replay`` (the daemon's pipeline) with the default
detectors. Then the cost per reading and per tick on a steady fleet, and ``tick`` time and
memory at 100,000 devices behind 500 gateways.

    uv run python bench/connectivity.py [--devices 1000] [--days 3]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import settings_from_mapping
from detectors.connectivity import ConnectivityDetector
from detectors.gateway import GatewayDetector
from service.alerts.sinks import MemorySink
from service.records import AlertRecord, AlertState, RawMessage, Reading
from service.replay.engine import replay
from service.simulator import FaultSpec, SimulationConfig, Simulator

INTERVAL = 300.0
DAY = 86_400.0


def run(
    devices: int, days: float, faults: list[str], seed: int
) -> tuple[Simulator, list[AlertRecord], dict]:  # type: ignore[type-arg]
    config = SimulationConfig(
        devices=devices, interval_s=INTERVAL, seed=seed,
        faults=tuple(FaultSpec.parse(f) for f in faults),
    )  # fmt: skip
    simulator = Simulator(config)
    messages = (
        RawMessage(m.topic, m.payload, m.ts + 0.05)
        for m in simulator.messages(config.start_ts + days * DAY)
    )
    settings = settings_from_mapping(
        {"detectors": {"enabled": ["connectivity", "gateway"],
                       "gateway": {"capacity_devices": 150}},
         "pipeline": {"tick_interval_s": 60.0}}
    )  # fmt: skip
    sink = MemorySink()
    summary = replay(messages, settings, sinks=[sink])
    return simulator, sink.alerts, summary.reports


def opened(alerts: list[AlertRecord], kind: str) -> list[AlertRecord]:
    return [a for a in alerts if a.kind == kind and a.state is AlertState.FIRING]


def scenario_fleet(devices: int, days: float, seed: int) -> list[tuple[str, str]]:
    faults = [
        f"gateway_down=1@{DAY + 3 * 3600:.0f}+7200",
        f"gateway_down=1@{2 * DAY + 9 * 3600:.0f}+3600",
        f"silent=20@{DAY / 2:.0f}+{DAY:.0f}",
        "intermittent=20@3600:period_s=7200,outage_s=900",
        "shift_dropout=1",
        f"gateway_overload={devices // 4}",
    ]
    started = time.perf_counter()
    simulator, alerts, reports = run(devices, days, faults, seed)
    elapsed = time.perf_counter() - started
    planted = simulator.planted()
    by_device = {d.device_id: d for d in simulator.devices}
    rows: list[tuple[str, str]] = []

    # gateway outages: delay, and per-device alerts raised during them
    delays, held = [], 0
    down_devices: set[str] = set()
    for fault in (p for p in planted if p.fault == "gateway_down"):
        assert fault.end_ts is not None
        behind = {d.device_id for d in simulator.devices if d.gateway == fault.device_id}
        down_devices |= behind
        first = min(
            (a.started_at for a in opened(alerts, "gateway_down") if a.subject == fault.device_id
             and a.started_at >= fault.start_ts),
            default=None,
        )  # fmt: skip
        delays.append((first - fault.start_ts) / INTERVAL if first is not None else float("inf"))
        held += sum(
            1 for a in opened(alerts, "device_offline")
            if a.subject in behind and fault.start_ts <= a.started_at <= fault.end_ts + 2 * INTERVAL
        )  # fmt: skip
    rows.append(
        ("gateway outages detected", f"{sum(d != float('inf') for d in delays)} of {len(delays)}")
    )
    rows.append(("gateway-down delay (reporting intervals, each outage)",
                 ", ".join(f"{d:.2f}" for d in delays)))  # fmt: skip
    rows.append(("per-device offline alerts during gateway outages", str(held)))

    # intermittent versus persistent
    intermittent = {p.device_id for p in planted if p.fault == "intermittent"}
    persistent = {p.device_id for p in planted if p.fault == "silent"}
    flagged_intermittent = {a.subject for a in opened(alerts, "intermittent_connectivity")}
    critical_offline = {
        a.subject for a in alerts
        if a.kind == "device_offline" and a.severity.label == "critical"
    }  # fmt: skip
    correct = sum(
        1 for d in intermittent if d in flagged_intermittent and d not in critical_offline
    )
    correct += sum(1 for d in persistent if d in critical_offline and d not in flagged_intermittent)
    total = len(intermittent) + len(persistent)
    rows.append(
        ("intermittent vs persistent accuracy", f"{correct / total:.1%} ({correct}/{total})")
    )

    # false alerts on healthy devices
    shift_zone = next(p.device_id for p in planted if p.fault == "shift_dropout")
    troubled = (
        intermittent
        | persistent
        | down_devices
        | {d.device_id for d in simulator.devices if f"{d.site}/{d.zone}" == shift_zone}
    )
    healthy = [d for d in by_device if d not in troubled]
    false_devices = {
        a.subject for a in alerts
        if a.kind in ("device_offline", "intermittent_connectivity", "signal_degrading")
        and a.state is AlertState.FIRING and a.subject in healthy
    }  # fmt: skip
    rows.append(("healthy devices with a connectivity alert (false positives)",
                 f"{len(false_devices)} of {len(healthy)} ({len(false_devices) / len(healthy):.2%})"))  # fmt: skip

    # patterns
    pattern = reports["connectivity"]
    zones = [f"{g[0]}/{g[1]}" for g in (f["group"] for f in pattern["by_zone"]["findings"])]
    rows.append(
        ("zone pattern: planted zone found", f"{shift_zone in zones} (zones flagged: {len(zones)})")
    )
    hours = [h["hour_utc"] for h in pattern["by_hour"]["hours"]]
    rows.append(("hour-of-day pattern: concentrated at 14h UTC",
                 f"{pattern['by_hour'].get('concentrated')} (hours flagged: {hours})"))  # fmt: skip

    # overload and imbalance
    overloaded_planted = {f"gw-{site}-01" for site in {d.site for d in simulator.devices}}
    overloaded = {a.subject for a in opened(alerts, "gateway_overloaded")}
    imbalanced = {a.subject for a in opened(alerts, "gateway_imbalance")}
    hits = len(overloaded & overloaded_planted)
    rows.append(("overloaded gateways found (precision, recall)",
                 f"{hits / max(1, len(overloaded)):.0%}, {hits / len(overloaded_planted):.0%}"))  # fmt: skip
    sites = {d.site for d in simulator.devices}
    rows.append(("imbalanced sites found", f"{len(imbalanced & sites)} of {len(sites)}"))
    rows.append(("scenario 1 replay time", f"{elapsed:.1f} s"))
    return rows


def scenario_radio(seed: int) -> list[tuple[str, str]]:
    simulator, _, reports = run(600, 2.0, ["flaky_radio=1:period_s=10800,outage_s=900"], seed)
    [planted] = simulator.planted()
    found = [f["group"] for f in reports["connectivity"]["by_technology"]["findings"]]
    return [
        (
            "technology pattern: planted radio found (flagged)",
            f"{planted.device_id in found} ({found})",
        )
    ]


def scale(devices: int, gateways: int) -> list[tuple[str, str]]:
    rng = random.Random(1)
    connectivity, gateway = ConnectivityDetector(), GatewayDetector()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = 1_767_225_600.0
    metas = [
        {"gateway": f"gw{i % gateways:04d}", "site": f"site{i % gateways // 10}",
         "zone": f"z{i % 7}", "radio": "lorawan"}
        for i in range(devices)
    ]  # fmt: skip
    for round_ in range(30):
        batch = [
            Reading(f"d{i:07d}", t0 + round_ * 300 + rng.uniform(0, 300),
                    t0 + round_ * 300 + rng.uniform(0, 300), {"rssi_dbm": -80.0}, metas[i])
            for i in range(devices)
        ]  # fmt: skip
        connectivity.process(batch)
        gateway.process(batch)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    now = t0 + 30 * 300 + 60
    ticks_c, ticks_g = [], []
    for k in range(5):
        started = time.perf_counter()
        connectivity.tick(now + k)
        ticks_c.append(time.perf_counter() - started)
        started = time.perf_counter()
        gateway.tick(now + k)
        ticks_g.append(time.perf_counter() - started)
    del metas
    return [
        (f"connectivity tick, {devices:,} devices, {gateways} gateways (median of 5)",
         f"{statistics.median(ticks_c) * 1000:.0f} ms"),
        (f"gateway tick, {devices:,} devices (median of 5)", f"{statistics.median(ticks_g) * 1000:.0f} ms"),
        ("memory per device, both detectors (after 30 readings each)", f"{held / devices:,.0f} bytes"),
    ]  # fmt: skip


def per_reading(devices: int, rounds: int = 30, repeats: int = 5) -> list[tuple[str, str]]:
    """The connectivity detector's cost per reading (``process``) and per tick on a steady
    fleet: 5-minute reports with jitter, delivery delays, 1 % of reports lost, a few late
    and a ``seq`` on every reading (the readings are made before the clock starts); the
    fastest of ``repeats`` runs in CPU time, the least disturbed by whatever else the machine
    does."""
    rng = random.Random(2)
    t0 = 1_767_225_600.0
    metas = [
        {"gateway": f"gw{i % 500:04d}", "site": f"site{i % 500 // 10}", "zone": f"z{i % 7}"}
        for i in range(devices)
    ]  # fmt: skip
    phase = [rng.uniform(0, INTERVAL) for _ in range(devices)]
    batches: list[list[Reading]] = []
    for round_ in range(rounds):
        batch = []
        for i in range(devices):
            if rng.random() < 0.01:
                continue  # lost
            ts = t0 + phase[i] + round_ * INTERVAL + rng.uniform(-3, 3)
            delay = rng.expovariate(1.0) + (rng.uniform(60, 600) if rng.random() < 0.005 else 0)
            batch.append(Reading(f"d{i:07d}", ts, ts + delay, {"rssi_dbm": -80.0}, metas[i],
                                 seq=round_))  # fmt: skip
        batch.sort(key=lambda r: r.received_at)
        batches.append(batch)
    readings = sum(len(b) for b in batches)
    per_reading_us, per_tick_ms = [], []
    for _ in range(repeats):
        detector = ConnectivityDetector()
        gc.collect()
        spent = ticks = 0.0
        for batch in batches:
            started = time.process_time()
            detector.process(batch)
            spent += time.process_time() - started
            started = time.process_time()
            detector.tick(batch[-1].received_at)
            ticks += time.process_time() - started
        per_reading_us.append(spent / readings * 1e6)
        per_tick_ms.append(ticks / len(batches) * 1e3)
    return [
        (f"connectivity process, CPU per reading ({devices:,} devices x {rounds} reports, "
         f"best of {repeats})", f"{min(per_reading_us):.2f} µs"),
        (f"connectivity tick after each round, CPU, {devices:,} devices (best of {repeats})",
         f"{min(per_tick_ms):.1f} ms"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--scale-devices", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rows = scenario_fleet(args.devices, args.days, args.seed)
    rows += scenario_radio(args.seed)
    rows += per_reading(args.scale_devices)
    rows += scale(args.scale_devices, 500)
    print("| connectivity and gateways | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
