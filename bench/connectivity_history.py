"""30 days of connectivity data for 10,000 devices (86.4 million readings) analysed at once.

Stored readings are generated as NumPy columns (device, receive time; 5-minute reporting
with jitter), with planted trouble: 1% of devices with one long outage, 1% intermittent
(short gaps every day), and one zone whose devices drop out every night between 02:00 and
03:00. :func:`detectors.connectivity.history.analyze_history` then finds outages,
intermittent devices and the patterns; the table gives the time (seed bar: 2 minutes) and
what was found against what was planted. Generation is not timed.

    uv run python bench/connectivity_history.py [--devices 10000] [--days 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.connectivity.history import analyze_history

DAY = 86_400.0
T0 = 1_767_225_600.0


def generate(devices: int, days: float, interval: float, seed: int) -> tuple[
        np.ndarray, np.ndarray, list[str], list[str], set[str], set[str], str]:  # fmt: skip
    rng = np.random.default_rng(seed)
    per = int(days * DAY / interval)
    names = [f"d{i:06d}" for i in range(devices)]
    zones = [f"z{i % 50:02d}" for i in range(devices)]
    night_zone = "z07"
    dev = np.repeat(np.arange(devices, dtype=np.int32), per)
    ts = np.tile(np.arange(per, dtype=np.float64) * interval, devices)
    ts += T0 + np.repeat(rng.uniform(0, interval, devices), per)
    ts += rng.normal(0, 3.0, len(ts))
    keep = np.ones(len(ts), dtype=bool)
    outage = rng.choice(devices, devices // 100, replace=False)
    for d in outage:  # one outage of 2 to 12 hours
        first = int(rng.integers(per // 10, per - per // 10))
        keep[d * per + first : d * per + first + int(rng.uniform(2, 12) * 3600 / interval)] = False
    others = np.setdiff1d(np.arange(devices), outage)
    flaky = rng.choice(others, devices // 100, replace=False)
    for d in flaky:  # a short gap (2 reports) about every 4 hours
        starts = np.arange(int(rng.integers(0, 48)), per - 3, int(4 * 3600 / interval))
        for s in starts:
            keep[d * per + s : d * per + s + 2] = False
    night = np.array([i for i, z in enumerate(zones) if z == night_zone])
    hour = ((ts - T0) % DAY) / 3600.0
    in_zone = np.isin(dev, night)
    keep &= ~(in_zone & (hour >= 2.0) & (hour < 3.0))
    return (dev[keep], ts[keep], names, zones, {names[d] for d in outage},
            {names[d] for d in flaky}, night_zone)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    dev, ts, names, zones, outage, flaky, night_zone = generate(
        args.devices, args.days, args.interval, args.seed
    )
    started = time.perf_counter()
    report = analyze_history(dev, ts, names=names, zones=zones, max_outages=len(names) * 40)
    elapsed = time.perf_counter() - started
    long_down = {o["device"] for o in report["outages"] if o["duration_s"] >= 2 * 3600}
    zone_hits = [z["zone"] for z in report["by_zone"]]
    rows = [
        ("readings analysed", f"{len(ts):,} ({args.devices:,} devices, {args.days:g} days)"),
        ("time", f"{elapsed:.1f} s ({len(ts) / elapsed / 1e6:.1f} M readings/s; seed bar 120 s)"),
        ("planted long outages found", f"{len(outage & long_down)} of {len(outage)}"),
        ("devices with long outages not planted", str(len(long_down - outage))),
        ("planted intermittent devices found", f"{len(flaky & set(report['intermittent']))} of {len(flaky)}"),
        ("intermittent devices not planted", str(len(set(report["intermittent"]) - flaky))),
        ("nightly outage hour found", f"{report['by_hour']['peak_hours']} (planted: [2])"),
        ("zones flagged", f"{zone_hits} (planted: ['{night_zone}'])"),
        ("median reporting interval", f"{report['interval_s']['median']:.1f} s"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
