"""Power anomalies on synthetic devices: steps, creep, fleet outliers, rising drain; quiet
when healthy (daily cycle, noise, single spikes)."""

from __future__ import annotations

import math
import random

import orjson

from detectors.power import PowerConfig, PowerDetector
from service.model import Reading, Signal

HOUR = 3_600.0
META = {"model": "PM-10", "site": "plant-a", "zone": "z1"}


def draw(hours: int, shape: str, rng: random.Random, base: float = 1000.0) -> list[float]:
    values = []
    for h in range(hours):
        value = base * (1 + 0.05 * math.sin(2 * math.pi * h / 24)) + rng.gauss(0, base * 0.01)
        if shape == "step" and h >= hours - 48:
            value *= 2.0  # a short circuit doubles the draw
        elif shape == "creep" and h >= hours - 24 * 6:
            value *= 1 + 0.004 * (h - (hours - 24 * 6))  # a slow leak, +0.4%/h
        elif shape == "spike" and h == hours - 30:
            value *= 3.0
        values.append(value)
    return values


def run(detector: PowerDetector, devices: dict[str, list[float]]) -> list[Signal]:
    signals: list[Signal] = []
    hours = len(next(iter(devices.values())))
    for h in range(hours):
        for minute in (0, 20, 40):
            t = h * HOUR + minute * 60
            batch = [
                Reading(d, t, t, {"power_mw": values[h]}, META) for d, values in devices.items()
            ]
            signals += detector.process(batch)
    return signals


def fired(signals: list[Signal]) -> list[tuple[str, str]]:
    return [(s.subject, s.evidence["shape"]) for s in signals if s.firing]


def test_step_and_creep_are_told_apart_and_healthy_devices_stay_quiet() -> None:
    rng = random.Random(1)
    hours = 24 * 21
    devices = {f"ok{i}": draw(hours, "none", rng) for i in range(8)}
    devices["short"] = draw(hours, "step", rng)
    devices["leak"] = draw(hours, "creep", rng)
    devices["blip"] = draw(hours, "spike", rng)
    signals = run(PowerDetector(), devices)
    assert sorted(fired(signals)) == [("leak", "creep"), ("short", "step")]
    step = next(s for s in signals if s.subject == "short")
    assert step.severity.label == "critical" and 1.8 < step.evidence["ratio"] < 2.2
    assert step.at - (hours - 48) * HOUR <= 4 * HOUR  # within hours of the short


def test_a_device_drawing_far_more_than_its_model_is_an_outlier() -> None:
    rng = random.Random(2)
    hours = 24 * 5
    devices = {f"ok{i}": draw(hours, "none", rng) for i in range(8)}
    devices["hungry"] = draw(hours, "none", rng, base=2000.0)  # bad from the start
    assert fired(run(PowerDetector(), devices)) == [("hungry", "fleet_outlier")]


def test_a_rising_battery_drain_is_a_power_anomaly_without_a_power_metric() -> None:
    detector = PowerDetector(PowerConfig(warmup_points=48))
    signals: list[Signal] = []
    level = 100.0
    for h in range(24 * 12):
        rate = 0.5 if h < 24 * 9 else 1.5  # %/day; the radio stops sleeping on day 9
        level -= rate / 24
        t = h * HOUR
        signals += detector.process([Reading("d1", t, t, {"battery_pct": level}, META)])
    assert fired(signals) == [("d1", "step")]
    assert signals[0].evidence["source"] == "drain_per_day"


def test_recovery_clears_and_state_round_trips() -> None:
    rng = random.Random(3)
    hours = 24 * 12
    values = draw(hours, "none", rng)
    values[-100:-60] = [v * 2 for v in values[-100:-60]]  # doubled for 40 h, then fixed
    detector = PowerDetector()
    half = {"d1": values[: hours - 72]}
    assert fired(run(detector, half)) == [("d1", "step")]
    restored = PowerDetector()
    restored.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    rest = {"d1": values[hours - 72 :]}

    def continue_from(det: PowerDetector) -> list[Signal]:
        signals: list[Signal] = []
        for h, value in enumerate(rest["d1"], start=hours - 72):
            for minute in (0, 20, 40):
                t = h * HOUR + minute * 60
                signals += det.process([Reading("d1", t, t, {"power_mw": value}, META)])
        return signals

    original, copy = continue_from(detector), continue_from(restored)
    assert original == copy
    assert [s.firing for s in original] == [False]  # it fired during the first half; cleared now
