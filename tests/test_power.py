"""Power anomalies on synthetic devices: steps, creep, fleet outliers, rising drain; quiet
when healthy (daily cycle, noise, single spikes)."""

from __future__ import annotations

import math
import random

import orjson

from detectors.power import PowerConfig, PowerDetector
from service.records import Reading, Signal

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


def test_drain_read_through_the_chemistry_curve_ignores_charging_and_swaps() -> None:
    from detectors.battery import CHEMISTRIES

    curve = CHEMISTRIES["li_socl2"]
    rng = random.Random(4)
    meta = {**META, "model": "LS-1", "battery_chemistry": "li_socl2"}
    stream: list[Reading] = []
    level = 90.0
    for step in range(24 * 12 * 30):  # 30 days every 5 minutes
        t = step * 300.0
        day = t / 86_400
        source = "battery"
        if 10 <= day < 11:
            level = min(100.0, level + 0.4)  # on a charger for a day
            source = "charging"
        elif step == 24 * 12 * 18:
            level = 100.0  # a new battery on day 18
        else:
            level -= 0.5 / 288  # 0.5 %/day
        volts = curve.volts_at(level) + rng.gauss(0, 0.002)
        stream.append(Reading("ls1", t, t, {"battery_v": volts}, {**meta, "power_source": source}))
    detector = PowerDetector()
    half = len(stream) * 2 // 3
    signals = detector.process(stream[:half])
    copy = PowerDetector()
    copy.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    signals += detector.process(stream[half:])
    assert copy.process(stream[half:]) == []
    assert fired(signals) == []
    view = detector.device_view("ls1")
    assert view is not None
    assert view["source"] == "drain_per_day" and 0.3 < view["baseline"] < 0.7  # % per day
    assert copy.state_dict() == detector.state_dict()


def test_checkpoint_of_devices_not_yet_judged_round_trips() -> None:
    det = PowerDetector()
    det.process([Reading("d1", 10.0, 10.0, {"power_mw": 100.0}, META),
                 Reading("d2", 20.0, 20.0, {"battery_pct": 90.0}, META)])  # fmt: skip
    state = orjson.loads(orjson.dumps(det.state_dict()))
    restored = PowerDetector()
    restored.load_state(state)
    assert orjson.loads(orjson.dumps(restored.state_dict())) == state
    later = [
        Reading("d1", HOUR * h, HOUR * h, {"power_mw": 100.0 + h % 3}, META) for h in range(1, 80)
    ]
    assert det.process(later) == restored.process(later)
    assert det.device_view("d1") == restored.device_view("d1")
    assert det.state_dict() == restored.state_dict()


def test_checkpoints_during_and_after_the_novelty_warm_up_resume_the_same() -> None:
    rng = random.Random(3)
    stream = [
        Reading(f"w{d}", m * 300.0, m * 300.0, {"power_mw": 100.0 + d + rng.gauss(0, 2)},
                {"model": "M", "site": "s"})
        for m in range(12 * 24 * 4)
        for d in range(6)
    ]  # fmt: skip
    for hours in (1, 30, 47, 48, 60):  # before, at and after the 48-point warm-up
        cut = hours * 12 * 6
        detector = PowerDetector()
        detector.process(stream[:cut])
        saved = orjson.loads(orjson.dumps(detector.state_dict()))
        copy = PowerDetector()
        copy.load_state(saved)
        assert copy.state_dict() == saved
        assert copy.process(stream[cut:]) == detector.process(stream[cut:])
        assert copy.state_dict() == detector.state_dict()


def test_fleet_members_loaded_without_a_device_count_once() -> None:
    detector = PowerDetector()
    for h in range(3):
        detector.process([Reading("a", h * 3600.0, h * 3600.0, {"power_mw": 5.0}, {"model": "M"})])
    state = detector.state_dict()
    state["fleet"][0][2] = sorted({"a", "ghost"})
    copy = PowerDetector()
    copy.load_state(state)
    assert copy.state_dict()["fleet"][0][2] == ["a", "ghost"]
    copy.process([Reading("ghost", 3 * 3600.0, 3 * 3600.0, {"power_mw": 5.0}, {"model": "M"})])
    copy.process([Reading("ghost", 4 * 3600.0, 4 * 3600.0, {"power_mw": 5.0}, {"model": "M"})])
    assert copy.state_dict()["fleet"][0][2] == ["a", "ghost"]
    assert copy._fleet[("M", None, "power_mw")].members == 2


def _drain_stream(hours: int, seed: int) -> list[Reading]:
    """A battery reporting its level every 20 minutes, draining 0.5 %/day, with noise."""
    rng = random.Random(seed)
    stream: list[Reading] = []
    for step in range(hours * 3):
        t = step * 1200.0
        level = 95.0 - 0.5 * t / 86_400 + rng.gauss(0, 0.05)
        stream.append(Reading("dr", t, t, {"battery_pct": level}, META))
    return stream


def test_a_restored_drain_continues_bit_for_bit_like_an_uninterrupted_one() -> None:
    stream = _drain_stream(24 * 16, 5)
    for hours in (30, 100, 255, 300):  # before and after the running sums are summed afresh
        cut = hours * 3
        detector = PowerDetector()
        detector.process(stream[:cut])
        copy = PowerDetector()
        copy.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
        assert copy.process(stream[cut:]) == detector.process(stream[cut:])
        assert copy.state_dict() == detector.state_dict()
        assert copy.device_view("dr") == detector.device_view("dr")


def test_a_checkpoint_of_format_2_still_loads() -> None:
    stream = _drain_stream(24 * 8, 6)
    detector = PowerDetector()
    detector.process(stream[: len(stream) // 2])
    state = orjson.loads(orjson.dumps(detector.state_dict()))
    state["version"] = 2
    for row in state["devices"].values():
        if row[8] is not None:
            del row[8][6:]  # format 2 drains: no running sums, no update count
    copy = PowerDetector()
    copy.load_state(state)
    assert copy.state_dict()["version"] == 3
    copy.process(stream[len(stream) // 2 :])
    detector.process(stream[len(stream) // 2 :])
    view, expected = copy.device_view("dr"), detector.device_view("dr")
    assert view is not None and expected is not None
    assert math.isclose(view["baseline"], expected["baseline"], rel_tol=1e-9)
