"""Power anomalies on a simulated fleet: precision, recall, delay and lead time before failure.

The simulator runs a fleet of mains and battery devices (Li-ion, Li-SOCl2 and alkaline packs,
chosen per device; voltage noise and sag) for 90 days at 5-minute reporting. Faults that raise
the draw are planted at random times between day 5 and day 60: short circuits (2x draw), slow
leaks (+5% a day) and a firmware bug that keeps the radio awake (4x). Confounders that must
not be flagged: chargers, battery swaps, temperature cycles and batteries that simply run
down. A failure is a battery that runs flat (the device goes silent). Every message goes
through the simulator's JSON and into the power detector in time order.

    uv run python bench/power.py [--devices 1000] [--days 90]

Prints precision, recall and false-positive rate per device, detection delay after the fault
starts, and the lead time between the first alert and the failure the fault causes (bar: at
least 24 hours on more than 95% of failing devices, under 5% false positives).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.power import PowerDetector
from service.records import Reading, Signal
from service.simulator.faults import FaultSpec
from service.simulator.run import SimulationConfig, Simulator

DAY = 86_400.0
HOUR = 3_600.0
DRAW_FAULTS = ("short_circuit", "slow_leak", "radio_no_sleep")
CONFOUNDERS = ("charger", "battery_swap", "temperature_cycle")
SKIP = {"ts", "seq", "lat", "lon"}


def plan(devices: int, days: float, rng: random.Random) -> tuple[FaultSpec, ...]:
    """Draw faults on 18% of devices and confounders on 12%, at random start times."""
    specs: list[FaultSpec] = []
    per = max(1, devices * 6 // 100)
    last_start = min(60.0, days * 0.66)
    for name in DRAW_FAULTS:
        for _ in range(per):
            specs.append(FaultSpec(name, 1, rng.uniform(5.0, last_start) * DAY))
    for name in CONFOUNDERS:
        for _ in range(max(1, devices * 4 // 100)):
            start = rng.uniform(3.0, days - 3.0) * DAY
            duration = 2.0 * DAY if name == "charger" else None
            specs.append(FaultSpec(name, 1, start, duration))
    return tuple(specs)


def to_reading(topic: str, payload: bytes) -> Reading | None:
    parts = topic.split("/")
    if parts[-1] != "telemetry":
        return None
    record = orjson.loads(payload)
    metrics = {k: float(v) for k, v in record.items() if k not in SKIP and not isinstance(v, str)}
    meta = {k: v for k, v in record.items() if isinstance(v, str)}
    meta["site"] = parts[-3]
    ts = float(record["ts"])
    return Reading(parts[-2], ts, ts, metrics, meta, int(record["seq"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--interval", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--verbose", action="store_true", help="list every false positive")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    config = SimulationConfig(
        devices=args.devices, sites=5, zones_per_site=4, gateways_per_site=4,
        interval_s=args.interval, seed=args.seed, faults=plan(args.devices, args.days, rng),
        chemistries=("li_ion", "li_socl2", "alkaline_2aa"),
    )  # fmt: skip
    sim = Simulator(config)
    for device in sim.devices:  # half the batteries are well into their life already
        if device.pack is not None and rng.random() < 0.5:
            device.pack.charge_mah = device.pack.capacity_mah * rng.uniform(0.12, 0.4)
    planted = {p.device_id: p for p in sim.planted()}
    by_id = {d.device_id: d for d in sim.devices}
    detector = PowerDetector()
    first_alert: dict[str, float] = {}
    first_signal: dict[str, Signal] = {}
    last_seen: dict[str, float] = {}
    readings = 0
    batch: list[Reading] = []
    started = time.perf_counter()
    spent = 0.0
    for message in sim.messages(config.start_ts + args.days * DAY):
        reading = to_reading(message.topic, message.payload)
        if reading is None:
            continue
        batch.append(reading)
        last_seen[reading.device_id] = reading.ts
        if len(batch) >= 2000:
            t0 = time.perf_counter()
            signals = detector.process(batch)
            spent += time.perf_counter() - t0
            readings += len(batch)
            batch = []
            for s in signals:
                if s.firing:
                    first_alert.setdefault(s.subject, s.at)
                    first_signal.setdefault(s.subject, s)
    if batch:
        for s in detector.process(batch):
            if s.firing:
                first_alert.setdefault(s.subject, s.at)
        readings += len(batch)
    wall = time.perf_counter() - started
    end = config.start_ts + args.days * DAY

    def kind(device_id: str) -> str:
        device = by_id[device_id]
        if device.pack is None:
            return "power_mw (mains)"
        if device.model.reports_pct:
            return "battery_pct"
        return f"battery_v {device.pack.chemistry.name}"

    # a fault planted on a device whose battery ran flat before the fault began never acted
    dead_first = {
        d for d, p in planted.items()
        if p.fault in DRAW_FAULTS and last_seen.get(d, end) < p.start_ts
    }  # fmt: skip
    faulty = {d for d, p in planted.items() if p.fault in DRAW_FAULTS} - dead_first
    healthy = [d for d in by_id if d not in faulty]
    tp = {d for d in faulty if first_alert.get(d, -1) >= planted[d].start_ts}
    early = {d for d in faulty if 0 <= first_alert.get(d, end + 1) < planted[d].start_ts}
    fp = {d for d in healthy if d in first_alert} | early

    def flat(device_id: str) -> bool:
        pack = by_id[device_id].pack
        return pack is not None and pack.empty

    failed = {d for d in faulty if flat(d) and last_seen.get(d, end) < end - DAY}
    lead = {d: last_seen[d] + args.interval - first_alert[d] for d in failed if d in tp}
    delays = [(first_alert[d] - planted[d].start_ts) / HOUR for d in tp]
    natural = [d for d in healthy if flat(d)]

    print(f"power bench: {args.devices} devices, {args.days:g} days every {args.interval:g} s, "
          f"{readings:,} readings in {wall:.0f} s ({spent / readings * 1e6:.2f} µs per "
          f"reading in the detector)")  # fmt: skip
    rows = [
        ("devices with a draw fault / confounders / natural deaths",
         f"{len(faulty)} / {sum(p.fault in CONFOUNDERS for p in planted.values())} / "
         f"{len(natural)} ({len(dead_first)} faults planted on batteries already flat, "
         "not counted)"),
        ("precision (devices)", f"{len(tp) / max(1, len(tp) + len(fp)):.1%}"),
        ("recall (devices)", f"{len(tp) / max(1, len(faulty)):.1%}"),
        ("false-positive rate (healthy devices flagged)",
         f"{len(fp)}/{len(healthy)} = {len(fp) / max(1, len(healthy)):.2%}"),
        ("detection delay after the fault starts, h (median / p90)",
         f"{_pct(delays, 50):.1f} / {_pct(delays, 90):.1f}"),
        ("failing devices (battery ran flat after the fault)", str(len(failed))),
        ("... warned at least 24 h before failing",
         f"{sum(v >= DAY for v in lead.values())}/{len(failed)} = "
         f"{sum(v >= DAY for v in lead.values()) / max(1, len(failed)):.1%}"),
        ("... lead time, days (median / p10)",
         f"{_pct([v / DAY for v in lead.values()], 50):.1f} / "
         f"{_pct([v / DAY for v in lead.values()], 10):.1f}"),
    ]  # fmt: skip
    for name in DRAW_FAULTS:
        group = [d for d in faulty if planted[d].fault == name]
        rows.append((f"recall: {name}", f"{sum(d in tp for d in group)}/{len(group)}"))
    for label in sorted({kind(d) for d in faulty}):
        group = [d for d in faulty if kind(d) == label]
        rows.append((f"recall: {label}", f"{sum(d in tp for d in group)}/{len(group)}"))
    for name in CONFOUNDERS:
        group = [d for d, p in planted.items() if p.fault == name]
        rows.append((f"flagged among {name}", f"{sum(d in fp for d in group)}/{len(group)}"))
    rows.append(("flagged among natural deaths", f"{sum(d in fp for d in natural)}/{len(natural)}"))
    if args.verbose:
        for d in sorted(failed):
            if lead.get(d, 0.0) < DAY:
                print("LATE", d, kind(d), planted[d].fault,
                      f"fault day {(planted[d].start_ts - config.start_ts) / DAY:.1f}",
                      f"flat day {(last_seen[d] - config.start_ts) / DAY:.1f}",
                      f"alert day {(first_alert[d] - config.start_ts) / DAY:.1f}"
                      if d in first_alert else "no alert")  # fmt: skip
        for d in sorted(fp):
            first = first_signal.get(d)
            if first is not None:
                print(
                    "FP",
                    d,
                    kind(d),
                    planted[d].fault if d in planted else "-",
                    first.evidence["shape"],
                    first.evidence["level"],
                    first.evidence["baseline"],
                    first.evidence["model_baseline"],
                    round((first.at - config.start_ts) / DAY, 1),
                )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if q < 100
        else max(values)
    )


if __name__ == "__main__":
    main()
