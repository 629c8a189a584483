"""Connectivity over stored history: planted outages, intermittent devices, a nightly zone;
any row order; clear errors; the same outages the live detector reports."""

from __future__ import annotations

import numpy as np
import pytest

from bench.connectivity_history import generate
from detectors.connectivity import ConnectivityDetector
from detectors.connectivity.history import analyze_history
from service.records import Reading


def test_planted_trouble_is_found_and_nothing_else() -> None:
    dev, ts, names, zones, outage, flaky, night_zone = generate(300, 4, 300.0, seed=2)
    report = analyze_history(dev, ts, names=names, zones=zones)
    long_down = {o["device"] for o in report["outages"] if o["duration_s"] >= 2 * 3600}
    assert long_down == outage
    assert set(report["intermittent"]) == flaky
    assert report["by_hour"]["peak_hours"] == [2]
    assert [z["zone"] for z in report["by_zone"]] == [night_zone]
    assert report["interval_s"]["median"] == pytest.approx(300.0, abs=1.0)


def test_row_order_does_not_matter() -> None:
    dev, ts, names, zones, *_ = generate(100, 2, 300.0, seed=3)
    shuffled = np.random.default_rng(1).permutation(len(ts))
    a = analyze_history(dev, ts, names=names, zones=zones)
    b = analyze_history(dev[shuffled], ts[shuffled], names=names, zones=zones)
    assert a == b


def test_bad_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        analyze_history(np.zeros(3, dtype=int), np.zeros(2), names=["a"])
    with pytest.raises(ValueError, match="outside names"):
        analyze_history(np.array([0, 1]), np.array([0.0, 1.0]), names=["a"])
    with pytest.raises(ValueError, match="one entry per device"):
        analyze_history(np.array([0]), np.array([0.0]), names=["a"], zones=["z", "y"])


def test_the_live_detector_reports_the_same_long_outages() -> None:
    dev, ts, names, zones, outage, _, _ = generate(200, 3, 300.0, seed=4)
    report = analyze_history(dev, ts, names=names)
    persistent = {o["device"] for o in report["outages"] if o["persistent"]}
    order = np.argsort(ts, kind="stable")
    live = ConnectivityDetector()
    fired: set[str] = set()
    batch: list[Reading] = []
    next_tick = float(ts[order[0]]) + 60.0
    for i in order:
        t = float(ts[i])
        while t >= next_tick:
            fired |= {s.subject for s in live.process(batch) if s.firing}
            batch = []
            fired |= {s.subject for s in live.tick(next_tick) if s.firing and s.severity >= 30}
            next_tick += 60.0
        batch.append(Reading(names[int(dev[i])], t, t, {}, {"zone": zones[int(dev[i])]}))
    assert outage <= persistent
    assert outage <= fired


def test_independent_loss_is_not_intermittent_nor_an_outage_in_history() -> None:
    # 200 devices reporting every 5 minutes for 3 days lose 2 % of their reports at random;
    # one more loses 4 reports in a row every 4 hours
    rng = np.random.default_rng(3)
    per = 3 * 288
    dev = np.repeat(np.arange(201), per)
    ts = np.tile(np.arange(per) * 300.0, 201) + rng.normal(0, 3.0, 201 * per)
    keep = rng.random(201 * per) >= 0.02
    flaky = (dev == 200) & (np.arange(201 * per) % per % 48 < 4)
    report = analyze_history(dev[keep & ~flaky], ts[keep & ~flaky],
                             names=[f"d{i}" for i in range(201)])  # fmt: skip
    assert report["intermittent"] == ["d200"]
    assert report["outages_total"] == 0
    assert 0.015 < report["loss_rate"]["median"] < 0.025
