"""The drift detector on simulated peer groups: ageing, faults, shared changes, calibration.

Each zone holds sensors of one temperature that share a daily cycle and a slower weather
wave, each with its own small offset, noise, 0.01 °C resolution and reporting moment
within the 5-minute period. ``<zone>-0`` carries the fault under test (``<zone>-1`` and ``-2`` too in zones testing several). Simulations are seeded and shared between tests (module-scoped), to stay fast.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from detectors.base import Detector
from detectors.drift import (
    DRIFT_KIND,
    FAULT_KIND,
    DriftConfig,
    DriftDetector,
    drift_config_from_dict,
    mann_whitney_greater,
    theil_sen,
)
from service.records import MessageKind, Reading, Severity, Signal

DAY = 86_400.0
T0 = 19_675 * DAY  # a UTC midnight
Fault = Callable[[float, float], float]  # (day, true value) -> reported value


@dataclass
class Sim:
    """A seeded fleet of temperature sensors grouped in zones of site ``s1``."""

    zones: dict[str, tuple[int, dict[int, Fault]]]  # zone -> (sensors, faults by index)
    seed: int = 7
    base: float = 22.0
    zone_base: dict[str, float] | None = None
    zone_faults: dict[str, Fault] | None = None

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.rng = rng
        self.sensors: list[tuple[str, str, float, float, Fault | None]] = []
        self.weather = {zone: rng.uniform(0, 2 * math.pi) for zone in self.zones}
        for zone, (count, faults) in self.zones.items():
            for i in range(count):
                phase, offset = rng.uniform(0, 299), rng.gauss(0, 0.1)
                self.sensors.append((f"{zone}-{i}", zone, phase, offset, faults.get(i)))

    def run(
        self,
        detector: Detector,
        start_day: float,
        end_day: float,
        events: dict[int, list[Reading]] | None = None,
    ) -> list[Signal]:
        signals: list[Signal] = []
        gauss = self.rng.gauss
        zone_base = self.zone_base or {}
        zone_faults = self.zone_faults or {}
        two_pi = 2 * math.pi
        for step in range(int(start_day * 288), int(end_day * 288)):
            batch = []
            for device, zone, phase, offset, fault in self.sensors:
                t = T0 + step * 300.0 + phase
                day = (t - T0) / DAY
                value = (
                    zone_base.get(zone, self.base)
                    + 6.0 * math.sin(two_pi * (day - 0.375))
                    + 1.5 * math.sin(two_pi * day / 3.7 + self.weather[zone])
                )
                shared = zone_faults.get(zone)
                if shared is not None:
                    value = shared(day, value)
                value += offset + gauss(0.0, 0.05)
                if fault is not None:
                    value = fault(day, value)
                meta = {"site": "s1", "zone": zone}
                batch.append(Reading(device, t, t, {"temperature_c": round(value, 2)}, meta))
            if events and step in events:
                batch.extend(events[step])
            signals += detector.process(batch)
        return signals


def ageing(rate_per_month: float, start: float) -> Fault:
    return lambda day, v: v * (1.0 + rate_per_month * max(0.0, day - start) / 30.0)


def step(size: float, start: float, end: float = math.inf) -> Fault:
    return lambda day, v: v * (1.0 + size) if start <= day < end else v


def stuck(start: float) -> Fault:
    held: list[float] = []

    def fault(day: float, v: float) -> float:
        if day < start:
            return v
        if not held:
            held.append(round(v, 2))
        return held[0]

    return fault


def noisy(start: float, sd: float) -> Fault:
    rng = random.Random(11)
    return lambda day, v: v + rng.gauss(0.0, sd) if day >= start else v


def spikes(start: float, every: int, size: float) -> Fault:
    rng = random.Random(5)
    return lambda day, v: v * (1 + size) if day >= start and rng.randrange(every) == 0 else v


def out_of_range(start: float) -> Fault:
    return lambda day, v: 180.0 if day >= start else v


def fired(signals: Sequence[Signal], device: str | None = None) -> list[Signal]:
    return [s for s in signals if s.firing and (device is None or s.subject == device)]


def active(signals: Sequence[Signal]) -> dict[tuple[str, str], Signal]:
    """The alerts still open at the end: the last signal per (kind, subject) that fires."""
    last: dict[tuple[str, str], Signal] = {}
    for s in signals:
        last[(s.kind, s.subject)] = s
    return {k: s for k, s in last.items() if s.firing}


# -- the long run: slow ageing, a slower drift still under tolerance, a lone sensor -----------

LONG_DAYS = 20


@pytest.fixture(scope="module")
def long_run() -> tuple[DriftDetector, list[Signal]]:
    sim = Sim(
        {
            "A": (8, {0: ageing(0.03, 5.0)}),  # 3 %/month from day 5
            "I": (6, {0: ageing(0.015, 2.0)}),  # 1.5 %/month from day 2: under 2 % by day 20
            "L": (1, {}),  # alone in its zone
        }
    )
    # early warnings on: a drift with a significant rate fires at half the tolerance
    detector = DriftDetector(DriftConfig(early_fraction=0.5))
    return detector, sim.run(detector, 0, LONG_DAYS)


def test_slow_ageing_is_flagged_as_drift_and_healthy_peers_are_not(
    long_run: tuple[DriftDetector, list[Signal]],
) -> None:
    _, signals = long_run
    assert {s.subject for s in fired(signals)} == {"A-0"}
    first = fired(signals, "A-0")[0]
    assert first.kind == DRIFT_KIND
    assert first.severity == Severity.WARNING
    assert first.evidence["shape"] == "ageing"
    assert first.evidence["metric"] == "temperature_c"
    assert first.evidence["peers_used"] == 7
    assert first.evidence["group"] == "s1/A"
    assert first.site == "s1" and first.zone == "A"
    assert 0.0 < first.evidence["confidence"] <= 1.0
    assert first.evidence["drift_pct"] > 0.9
    assert "recalibrat" in first.action.lower()
    # flagged before leaving tolerance (day 25), with a date about right
    assert (first.at - T0) / DAY < LONG_DAYS
    predicted_day = (first.evidence["predicted_out_of_tolerance_at"] - T0) / DAY
    assert 20.0 < predicted_day < 32.0
    # no flapping: it stays open
    assert ("sensor_drift", "A-0") in active(signals)
    assert len([s for s in signals if s.subject == "A-0" and not s.firing]) == 0


def test_rate_and_prediction_for_a_drift_still_in_tolerance(
    long_run: tuple[DriftDetector, list[Signal]],
) -> None:
    detector, _ = long_run
    status = detector.sensor_status("I-0", "temperature_c")
    assert status is not None
    # 1.5 %/month = 0.05 %/day; at day 20 it is 0.9 % off, out of 2 % around day 42
    assert status["out_of_tolerance"] is False
    assert status["rate_significant"] is True
    assert 0.03 < status["rate_pct_per_day"] < 0.07
    assert 0.6 < status["drift_pct"] < 1.1
    predicted_day = (status["predicted_out_of_tolerance_at"] - T0) / DAY
    assert 34.0 < predicted_day < 55.0
    healthy = detector.sensor_status("I-3", "temperature_c")
    assert healthy is not None and healthy["predicted_out_of_tolerance_at"] is None


def test_lone_sensor_with_daily_cycle_is_judged_alone_and_not_flagged(
    long_run: tuple[DriftDetector, list[Signal]],
) -> None:
    detector, signals = long_run
    assert fired(signals, "L-0") == []
    status = detector.sensor_status("L-0", "temperature_c")
    assert status is not None
    assert status["mode"] == "alone" and status["warmed_up"]
    # alone_factor (3) times its tolerance: 2 % of its typical 23 °C is below the 0.5 °C floor
    assert status["tolerance_basis"] == "floor"
    assert status["tolerance_abs"] == pytest.approx(1.5)


def test_recalibration_schedule_orders_by_predicted_date(
    long_run: tuple[DriftDetector, list[Signal]],
) -> None:
    detector, _ = long_run
    now = T0 + LONG_DAYS * DAY
    report = detector.recalibration_schedule(now)
    json.dumps(report, allow_nan=False)
    devices = [e["device"] for e in report["sensors"]]
    assert devices[:2] == ["A-0", "I-0"]
    first, second = report["sensors"][:2]
    assert first["predicted_out_of_tolerance_at"] < second["predicted_out_of_tolerance_at"]
    assert second["status"] == "drifting" and 10 < second["days_left"] < 40
    assert list(report["by_zone"])[:2] == ["s1/A", "s1/I"]
    assert report["by_zone"]["s1/A"][0]["device"] == "A-0"
    assert report["healthy"] == 13


# -- the fault run: one faulty sensor per zone, faults from day 6 ---------------------------

FAULT_DAYS = 10
CALIBRATION_STEP = 9 * 288


@pytest.fixture(scope="module")
def fault_run() -> tuple[DriftDetector, list[Signal]]:
    sim = Sim(
        {
            "B": (7, {0: step(0.05, 6.0), 1: stuck(6.0), 2: out_of_range(6.0)}),
            "D": (6, {0: noisy(6.0, 0.8), 1: spikes(6.0, 40, 0.3)}),
            "F": (6, {}),  # the whole zone moves +10 % at day 6
            "G": (6, {0: ageing(3.0, 5.0)}),  # 10 %/day: one badly drifted peer
            "H": (6, {0: step(0.05, 6.0, 9.0)}),  # repaired and calibrated at day 9
        },
        zone_faults={"F": step(0.10, 6.0)},
    )
    calibration = Reading(
        "H-0", T0 + 9 * DAY + 1, T0 + 9 * DAY + 1, {}, {"site": "s1", "zone": "H"},
        kind=MessageKind.CALIBRATION,
    )  # fmt: skip
    detector = DriftDetector()
    return detector, sim.run(detector, 0, FAULT_DAYS, events={CALIBRATION_STEP: [calibration]})


@pytest.mark.parametrize(
    ("device", "kind", "shape", "severity"),
    [
        ("B-0", FAULT_KIND, "step", Severity.WARNING),
        ("B-1", FAULT_KIND, "stuck", Severity.CRITICAL),
        ("B-2", FAULT_KIND, "out_of_range", Severity.CRITICAL),
        ("D-0", FAULT_KIND, "noisy", Severity.WARNING),
        ("D-1", FAULT_KIND, "spikes", Severity.WARNING),
    ],
)
def test_failure_shapes(
    fault_run: tuple[DriftDetector, list[Signal]],
    device: str,
    kind: str,
    shape: str,
    severity: Severity,
) -> None:
    _, signals = fault_run
    mine = fired(signals, device)
    assert mine, f"{device} was not flagged"
    first = mine[0]
    assert (first.kind, first.evidence["shape"], first.severity) == (kind, shape, severity)
    assert 6.0 <= (first.at - T0) / DAY < 7.0  # found within a day
    assert first.action
    assert (kind, device) in active(signals)
    assert [s for s in signals if s.subject == device and not s.firing] == []  # no flapping


def test_no_false_alarms_on_healthy_sensors(fault_run: tuple[DriftDetector, list[Signal]]) -> None:
    _, signals = fault_run
    flagged = {s.subject for s in fired(signals)}
    healthy = {f"B-{i}" for i in range(3, 7)} | {f"D-{i}" for i in range(2, 6)}
    healthy |= {f"{zone}-{i}" for zone in "FGH" for i in range(1, 6)}
    assert flagged & healthy == set()


def test_group_moving_together_is_not_drift(fault_run: tuple[DriftDetector, list[Signal]]) -> None:
    _, signals = fault_run
    assert [s for s in signals if s.zone == "F"] == []


def test_one_badly_drifted_peer_does_not_flag_the_others(
    fault_run: tuple[DriftDetector, list[Signal]],
) -> None:
    detector, signals = fault_run
    zone_g = fired([s for s in signals if s.zone == "G"])
    assert {s.subject for s in zone_g} == {"G-0"}
    for i in range(1, 6):
        status = detector.sensor_status(f"G-{i}", "temperature_c")
        assert status is not None and abs(status["drift_pct"]) < 0.5


def test_calibration_clears_resets_and_is_verified(
    fault_run: tuple[DriftDetector, list[Signal]],
) -> None:
    detector, signals = fault_run
    mine = [s for s in signals if s.subject == "H-0"]
    assert [(s.kind, s.firing) for s in mine] == [(FAULT_KIND, True), (FAULT_KIND, False)]
    cleared = mine[1]
    assert cleared.at == T0 + 9 * DAY + 1
    assert cleared.evidence["reason"] == "calibrated"
    status = detector.sensor_status("H-0", "temperature_c")
    assert status is not None
    events = [event for _, event in status["calibration_history"]]
    assert events == ["calibrated", "verified"]
    verified_at = status["calibration_history"][1][0]
    assert 0 < verified_at - (T0 + 9 * DAY) < 2 * 3_600  # 12 buckets agreeing with peers
    assert status["last_calibration"] == T0 + 9 * DAY + 1


def test_schedule_puts_faults_first(fault_run: tuple[DriftDetector, list[Signal]]) -> None:
    detector, _ = fault_run
    report = detector.recalibration_schedule(T0 + FAULT_DAYS * DAY)
    json.dumps(report, allow_nan=False)
    statuses = [e["status"] for e in report["sensors"]]
    assert statuses == sorted(statuses, key=lambda s: s == "drifting")
    listed = {e["device"] for e in report["sensors"]}
    assert {"B-0", "B-1", "B-2", "D-0", "D-1", "G-0"} <= listed
    assert "H-0" not in listed and "F-1" not in listed
    assert set(report["by_zone"]) >= {"s1/B", "s1/D", "s1/G"}
    assert [e["device"] for e in report["by_zone"]["s1/B"]][:3] == ["B-2", "B-1", "B-0"]


# -- cold rooms: noise, resolution, ramps and steps ---------------------------------------------


@dataclass
class ColdRoom:
    """A chiller's sensors, as in the field: air at ``setpoint`` °C with a small daily swing,
    a defrost every 6 h (+3 °C for half an hour) and a door opening now and then (+1-2 °C for
    10 minutes), read by sensors hung in different spots: each follows the doors and defrosts
    with its own coupling (1 +- ``spread``) and lag (2 to 15 minutes at the default spread of
    0.4), and has its own installation
    offset (0.3 °C), noise (``noise`` °C) and reporting moment; readings come in ``step`` °C.
    ``steady``: none of that, the air holds within one step. ``c0`` carries the fault under
    test (``c1`` and ``c2`` too in rooms testing several)."""

    faults: dict[int, Fault]
    sensors: int = 8
    seed: int = 1
    setpoint: float = 4.0
    noise: float = 0.15
    step: float = 0.1
    interval: float = 300.0
    steady: bool = False
    spread: float = 0.4  # how differently placed sensors follow doors and defrosts

    def run(self, detector: Detector, days: float) -> list[Signal]:
        rng = random.Random(self.seed)
        doors = random.Random(self.seed + 1)
        placed = [
            [rng.uniform(0, self.interval - 1), rng.gauss(0, 0.3),
             rng.uniform(1.0 - self.spread, 1.0 + self.spread),
             1.0 - math.exp(-self.interval / rng.uniform(120.0, 120.0 + 1_950.0 * self.spread)),
             0.0]
            for _ in range(self.sensors)
        ]  # fmt: skip  # [reporting moment, offset, coupling, lag step, what it feels now]
        placed[0][1] = 0.0 if self.steady else placed[0][1]
        opened: dict[int, float] = {}
        meta = {"site": "s1", "zone": "chiller"}
        signals: list[Signal] = []
        for k in range(int(days * DAY / self.interval)):
            batch = []
            for i, spot in enumerate(placed):
                t = T0 + k * self.interval + spot[0]
                day = (t - T0) / DAY
                air = self.setpoint
                if not self.steady:
                    air += 0.4 * math.sin(2 * math.pi * day)
                    into = t % (6 * 3_600)
                    shock = 3.0 * math.sin(math.pi * into / 1_800) if into < 1_800 else 0.0
                    slot = int(t // 600)
                    if slot not in opened:
                        opened[slot] = 1.0 + doors.random() if doors.random() < 0.06 else 0.0
                    spot[4] += (spot[2] * (shock + opened[slot]) - spot[4]) * spot[3]
                    air += spot[4]
                noise = 0.01 if self.steady and i == 0 else self.noise
                value = air + spot[1] + rng.gauss(0.0, noise)
                fault = self.faults.get(i)
                if fault is not None:
                    value = fault(day, value)
                value = round(round(value / self.step) * self.step, 6)
                batch.append(Reading(f"c{i}", t, t, {"temperature_c": value}, meta))
            signals += detector.process(sorted(batch, key=lambda r: r.ts))  # in time order
        return signals


def ageing_per_month(pct: float, start: float, magnitude: float = 10.0) -> Fault:
    """Drift of ``pct`` % of ``magnitude`` (the reading, at least the 10 °C ``rel_floor``) a
    month from ``start``, as a field simulator plants it: 0.2 °C a month for 2 % in a chiller."""
    per_day = pct / 100.0 * magnitude / 30.0
    return lambda day, v: v + per_day * max(0.0, day - start)


def offset(size: float, start: float) -> Fault:
    return lambda day, v: v + size if day >= start else v


def test_healthy_chiller_with_noisy_quantised_sensors_raises_nothing() -> None:
    detector = DriftDetector()
    signals = ColdRoom({}, sensors=8, seed=1).run(detector, 6)
    assert signals == []  # no drift, no fault, no stuck
    status = detector.sensor_status("c0", "temperature_c")
    assert status is not None and status["warmed_up"]
    # its tolerance is no finer than 0.5 °C, 3x its own noise or 2x its 0.1 °C steps
    assert status["resolution"] == pytest.approx(0.1)
    assert status["tolerance_abs"] >= 0.5
    assert status["tolerance_abs"] >= 3 * status["noise"] - 1e-9
    assert status["tolerance_basis"] in ("floor", "noise")


AGEING_DAYS = 44
AGEING_FROM = 2.0


@pytest.fixture(scope="module")
def chiller_ageing() -> tuple[DriftDetector, list[Signal]]:
    # three of nine sensors ageing 2, 4 and 6 % a month of the 10 °C magnitude (0.2, 0.4 and
    # 0.6 °C a month) from day 2
    faults = {i: ageing_per_month(pct, AGEING_FROM) for i, pct in enumerate((2, 4, 6))}
    detector = DriftDetector()
    return detector, ColdRoom(faults, sensors=9, seed=2).run(detector, AGEING_DAYS)


@pytest.mark.parametrize(("device", "pct"), [("c0", 2.0), ("c1", 4.0), ("c2", 6.0)])
def test_ageing_in_a_chiller_is_drift_with_a_rate_and_a_date_not_a_step(
    chiller_ageing: tuple[DriftDetector, list[Signal]], device: str, pct: float
) -> None:
    detector, signals = chiller_ageing
    mine = fired(signals, device)
    assert mine, f"{device} was not reported"
    assert {s.kind for s in mine} == {DRIFT_KIND}  # never a sensor_fault (step)
    evidence = mine[0].evidence
    assert evidence["shape"] == "ageing"
    test = evidence["shape_test"]
    assert test["test"] == "step_vs_ramp_lr" and test["verdict"] == "ramp"
    assert test["likelihood_ratio"] < test["threshold"]
    # its rate (in % of the 10 °C magnitude a day) within 50 % of the truth when first
    # reported (an early warning of a slow drift fires on a rate at the high side of its
    # error), and the date it leaves its 0.5 °C tolerance within 30 % of the time left
    true_rate = pct / 30.0
    assert evidence["rate_significant"] is True
    assert evidence["rate_pct_per_day"] == pytest.approx(true_rate, rel=0.5)
    tolerance = evidence["tolerance_abs"]
    assert tolerance >= 0.5 - 1e-9
    true_day = AGEING_FROM + tolerance / (true_rate / 10.0)
    predicted_day = (evidence["predicted_out_of_tolerance_at"] - T0) / DAY
    assert abs(predicted_day - true_day) < 0.3 * (true_day - AGEING_FROM)
    report = detector.recalibration_schedule(T0 + AGEING_DAYS * DAY)
    entry = next(e for e in report["sensors"] if e["device"] == device)
    assert entry["status"] in ("drifting", "out_of_tolerance") and entry["shape"] == "ageing"
    assert entry["rate_pct_per_day"] is not None


def test_healthy_loggers_beside_ageing_ones_are_not_flagged(
    chiller_ageing: tuple[DriftDetector, list[Signal]],
) -> None:
    _, signals = chiller_ageing
    assert {s.subject for s in fired(signals)} <= {"c0", "c1", "c2"}


def test_an_offset_jump_of_a_few_tolerances_in_a_chiller_is_a_step() -> None:
    # +3 °C (6 tolerances) and -1 °C (2) jumps at day 3: found as steps, the large one not
    # first taken for ageing while its break was too recent to tell from a transient
    detector = DriftDetector()
    signals = ColdRoom({0: offset(3.0, 3.0), 1: offset(-1.0, 3.0)}, seed=3).run(detector, 4)
    for device, jump in (("c0", 3.0), ("c1", -1.0)):
        mine = fired(signals, device)
        assert mine, f"{device} was not flagged"
        first = mine[0]
        assert (first.kind, first.evidence["shape"]) == (FAULT_KIND, "step")
        assert 3.0 <= (first.at - T0) / DAY < 3.25  # within 6 hours
        test = first.evidence["shape_test"]
        assert test["verdict"] == "step" and test["likelihood_ratio"] >= test["threshold"]
        assert first.evidence["step"] * 10.0 == pytest.approx(jump, abs=0.3)  # relative to 10 °C
        assert [s for s in signals if s.subject == device and s.kind == DRIFT_KIND] == []
    assert {s.subject for s in fired(signals)} == {"c0", "c1"}


def test_a_stuck_chiller_sensor_is_still_stuck() -> None:
    # c0 repeats its 0.1 °C value from day 2.5 while the room swings and defrosts
    detector = DriftDetector()
    signals = ColdRoom({0: stuck(2.5)}, seed=4).run(detector, 3.5)
    mine = fired(signals, "c0")
    assert mine and mine[0].evidence["shape"] == "stuck"
    assert mine[0].severity == Severity.CRITICAL
    assert 2.5 <= (mine[0].at - T0) / DAY < 3.0
    assert mine[0].evidence["reference_moved_steps"] > 3  # its peers moved past its steps
    assert {s.subject for s in fired(signals)} == {"c0"}


@pytest.mark.parametrize("step_c", [0.1, 0.5])
def test_a_steady_cold_room_read_to_one_step_is_not_stuck(step_c: float) -> None:
    # the air holds within a step; a quiet c0 repeats one value for days while its noisier
    # peers' consensus jitters by a step: nothing moved, so nothing is stuck (nor noisy)
    detector = DriftDetector()
    signals = ColdRoom({}, sensors=7, seed=5, steady=True, step=step_c).run(detector, 3)
    assert signals == []
    status = detector.sensor_status("c0", "temperature_c")
    assert status is not None and status["stuck_buckets"] > 200  # one value for hours


# -- state, configuration, statistics ---------------------------------------------------------


def test_state_round_trips_through_json_and_continues_identically() -> None:
    sim = Sim({"B": (5, {0: step(0.05, 3.0)})}, seed=3)
    config = DriftConfig(metrics=("temperature_c",), warmup_buckets=144)
    first = DriftDetector(config)
    sim.run(first, 0, 2.5)
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    second = DriftDetector(config)
    second.load_state(saved)
    assert json.loads(json.dumps(second.state_dict(), allow_nan=False)) == saved
    # the same readings to both: same signals
    replay = Sim({"B": (5, {0: step(0.05, 3.0)})}, seed=3)
    replay.rng = random.Random(99)
    sim.rng = random.Random(99)
    a = sim.run(first, 2.5, 4.0)
    b = replay.run(second, 2.5, 4.0)
    assert [(s.kind, s.subject, s.firing, s.at) for s in a] == [
        (s.kind, s.subject, s.firing, s.at) for s in b
    ]
    assert [s.evidence["shape"] for s in fired(a)] == ["step"]
    with pytest.raises(ValueError):
        DriftDetector(config).load_state({"version": 99})


def test_config_from_dict() -> None:
    config = drift_config_from_dict(
        {
            "metrics": ["pressure_hpa"],
            "rel_tolerance": 0.01,
            "abs_tolerance": {"pressure_hpa": 2},
            "ranges": {"pressure_hpa": [800, 1200]},
            "reference_devices": ["ref-1"],
            "group_by": ["site"],
            "bucket_s": 600,
        }
    )
    assert config.metrics == ("pressure_hpa",)
    assert config.abs_tolerance == {"pressure_hpa": 2.0}
    assert config.ranges["pressure_hpa"] == (800.0, 1200.0)
    assert config.reference_devices == ("ref-1",)
    with pytest.raises(ValueError, match="unknown drift settings"):
        drift_config_from_dict({"tolerance": 1})
    with pytest.raises(ValueError):
        DriftConfig(rel_tolerance=0)
    assert isinstance(DriftDetector(config), Detector)


def test_reference_devices_dominate_the_consensus() -> None:
    config = DriftConfig(
        metrics=("pressure_hpa",), bucket_s=60, lateness_s=0, warmup_buckets=30,
        reference_devices=("ref",), abs_tolerance={"pressure_hpa": 1.0},
    )  # fmt: skip
    detector = DriftDetector(config)
    rng = random.Random(1)
    signals: list[Signal] = []
    meta = {"site": "s", "zone": "z"}
    # two of four ordinary peers drift down together after bucket 100; the reference and the
    # other peers hold: the drifting pair is flagged, the healthy ones are not
    for i in range(300):
        t = 60.0 * i
        batch = []
        for device in ("ref", "p1", "p2", "p3", "p4"):
            value = 1000.0 + 3.0 * math.sin(i / 20) + rng.gauss(0, 0.05)
            if device in ("p3", "p4") and i > 100:
                value -= 0.05 * (i - 100)
            batch.append(Reading(device, t + 1, t + 1, {"pressure_hpa": value}, meta))
        signals += detector.process(batch)
    assert {s.subject for s in fired(signals)} == {"p3", "p4"}


def test_environment_correlation_finds_hot_zone_drifting_faster() -> None:
    config = DriftConfig(
        metrics=("temperature_c",), bucket_s=3_600, lateness_s=0, warmup_buckets=24,
        rate_sample_s=6 * 3_600, min_peers=3, early_fraction=0.5,
    )  # fmt: skip
    detector = DriftDetector(config)
    rng = random.Random(4)
    hot_rates = [0.003, -0.003, 0.0025, -0.0025, 0.002, -0.002, 0.0015]  # per day
    cool_rates = [0.0004, -0.0004, 0.0003, -0.0003, 0.0002, -0.0002, 0.0001]
    sensors = [("hot", f"h{i}", 45.0, r) for i, r in enumerate(hot_rates)]
    sensors += [("cool", f"c{i}", 20.0, r) for i, r in enumerate(cool_rates)]
    for hour in range(24 * 20):
        t = T0 + 3_600.0 * hour
        day = hour / 24
        batch = []
        for zone, device, base, rate in sensors:
            value = base + 3.0 * math.sin(2 * math.pi * day) + rng.gauss(0, 0.03)
            value *= 1 + rate * max(0.0, day - 2)
            meta = {"site": "s1", "zone": zone}
            batch.append(Reading(device, t + 5, t + 5, {"temperature_c": value}, meta))
        detector.process(batch)
    report = detector.recalibration_schedule(T0 + 20 * DAY)["environment"]
    hot = [
        b
        for b in report["bands"]
        if b["scope"] == "s1/hot" and b["band"] == "temperature above 40 c"
    ]
    assert len(hot) == 1
    assert hot[0]["n"] == 7 and hot[0]["n_rest"] == 7
    assert hot[0]["ratio"] > 3 and hot[0]["p_value"] < 0.01
    assert any(
        f.startswith("sensors in s1/hot with temperature above 40") for f in report["findings"]
    )


def test_statistics_helpers() -> None:
    slope, intercept, _ = theil_sen([0, 1, 2, 3, 4, 5], [0.0, 0.1, 0.2, 0.3, 5.0, 0.5])
    assert slope == pytest.approx(0.1) and intercept == pytest.approx(0.0)
    _, p = mann_whitney_greater([1, 2, 3], [1, 2, 3])
    assert p > 0.3
    _, p = mann_whitney_greater([10, 11, 12, 13, 14], [1, 2, 3, 4, 5])
    assert p < 0.01


def test_ignores_other_kinds_and_out_of_order_after_close() -> None:
    detector = DriftDetector(DriftConfig(bucket_s=60, lateness_s=0))
    meta = {"site": "s", "zone": "z"}
    status = Reading("d1", 10.0, 10.0, {"temperature_c": 20.0}, meta, kind=MessageKind.STATUS)
    assert detector.process([status]) == []
    detector.process([Reading("d1", 200.0, 200.0, {"temperature_c": 20.0}, meta)])
    detector.process([Reading("d1", 10.0, 10.0, {"temperature_c": 20.0}, meta, late=True)])
    assert detector.late_dropped == 1
    assert detector.tick(10_000.0) == []


# -- compact state ------------------------------------------------------------------------------


def _warmed_detector() -> tuple[DriftDetector, Sim]:
    """A small detector past its warm-up, with a calibration and a late reading on the way."""
    sim = Sim({"B": (5, {0: step(0.05, 1.5)}), "L": (1, {})}, seed=5)
    config = DriftConfig(
        metrics=("temperature_c",), warmup_buckets=48, mode_switch_buckets=4,
        step_window=24, recent_buckets=24, rate_sample_s=3_600, calibration_history=2,
    )  # fmt: skip
    detector = DriftDetector(config)
    meta = {"site": "s1", "zone": "B"}
    calibration = Reading("B-1", T0 + DAY, T0 + DAY, {}, meta, kind=MessageKind.CALIBRATION)
    late = Reading("B-2", T0 + DAY - 200.0, T0 + DAY, {"temperature_c": 22.0}, meta)
    sim.run(detector, 0, 2.0, events={288: [calibration, late]})
    return detector, sim


def test_state_layout_loads_and_is_written_back_the_same() -> None:
    # windows as one list of drifts and a list of [time, mean] pairs, a full 24-hour profile,
    # the calibration history; a sensor warming up while verifying
    detector, _ = _warmed_detector()
    saved = json.loads(json.dumps(detector.state_dict(), allow_nan=False))
    assert saved["version"] == 3
    sensor = next(s for s in saved["sensors"] if s["device"] == "B-1")
    assert isinstance(sensor["drifts"], list) and isinstance(sensor["rates"][0], list)
    assert sensor["diffs"] == [] and sensor["step_win"] == []  # they follow from the drifts
    assert len(sensor["profile"]) == 24 and all(isinstance(n, int) for n in sensor["profile_n"])
    assert [event for _, event in sensor["history"]][:1] == ["calibrated"]
    previous = dict(sensor, warm=[[0.1, 20.0]] * 3, baseline=None, verifying=True)
    state = dict(saved, sensors=[previous if s is sensor else s for s in saved["sensors"]])
    loaded = DriftDetector(detector.config)
    loaded.load_state(json.loads(json.dumps(state)))
    again = json.loads(json.dumps(loaded.state_dict(), allow_nan=False))
    assert again == json.loads(json.dumps(state))
    status = loaded.sensor_status("B-1", "temperature_c")
    assert status is not None and status["verifying"] is True and not status["warmed_up"]


_VERSION_3 = ("res", "shape_lr", "mag", "settle", "ref_smooth")  # what version 3 added


def _as_version_2(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without what version 3 added to a sensor."""
    sensors = [{k: v for k, v in row.items() if k not in _VERSION_3} for row in state["sensors"]]
    return dict(state, version=2, sensors=sensors)


def _as_version_1(state: dict[str, Any], config: DriftConfig) -> dict[str, Any]:
    """``state`` in the version-1 layout: each sensor's last 5 drifts, its previous drift, and
    its noise and step windows as they were kept bucket by bucket (differences of successive
    drifts; 5-bucket medians, the first 4 drifts of a track standing for themselves)."""
    sensors = []
    for row in state["sensors"]:
        drifts = row["drifts"]
        first = row["buckets"] - len(drifts)  # the number of the oldest drift held
        steps = [
            d if first + k < 4 else sorted(drifts[k - 4 : k + 1])[2]
            for k, d in enumerate(drifts)
            if first + k < 4 or k >= 4
        ]
        old = {key: value for key, value in row.items() if key not in ("drifts", *_VERSION_3)}
        old.update(
            last5=drifts[-5:],
            prev_d=drifts[-1] if drifts else None,
            diffs=[b - a for a, b in itertools.pairwise(drifts)][-config.recent_buckets :],
            step_win=steps[-config.step_window :],
        )
        sensors.append(old)
    return dict(state, version=1, sensors=sensors)


def _assert_continues_alike(sim: Sim, original: DriftDetector, restored: DriftDetector) -> None:
    """Day 3 of ``_warmed_detector``'s fleet, fed to ``original`` (by ``sim``, which warmed
    it) and to ``restored`` (by a twin simulation): the same signals and the same report."""
    replay = Sim({"B": (5, {0: step(0.05, 1.5)}), "L": (1, {})}, seed=5)
    replay.rng = random.Random(8)
    sim.rng = random.Random(8)
    a = sim.run(original, 2.0, 3.0)
    b = replay.run(restored, 2.0, 3.0)
    assert [(s.kind, s.subject, s.firing, s.at, s.evidence) for s in a] == [
        (s.kind, s.subject, s.firing, s.at, s.evidence) for s in b
    ]
    now = T0 + 3 * DAY
    assert original.report(now) == restored.report(now)


def test_version_1_state_loads_and_continues_like_the_state_it_was_made_from() -> None:
    first, sim = _warmed_detector()
    config = first.config
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    drifting = next(s for s in saved["sensors"] if s["device"] == "B-0")
    assert len(drifting["drifts"]) == config.step_window + 4  # a full history
    current, previous = DriftDetector(config), DriftDetector(config)
    # against the same state in version 2 (both without what version 3 added: see below)
    current.load_state(json.loads(json.dumps(_as_version_2(saved))))
    previous.load_state(json.loads(json.dumps(_as_version_1(saved, config))))
    # the loaded windows are kept (and saved) until the history holds them
    carried = next(s for s in previous.state_dict()["sensors"] if s["device"] == "B-0")
    assert carried["drifts"] == drifting["drifts"][-5:]
    assert len(carried["step_win"]) == config.step_window and carried["diffs"]
    _assert_continues_alike(sim, current, previous)
    assert previous.state_dict() == current.state_dict()  # windows handed over
    with pytest.raises(ValueError, match="format 4"):
        DriftDetector(config).load_state(dict(saved, version=4))


def test_version_2_state_loads_and_learns_again_what_version_3_added() -> None:
    first, sim = _warmed_detector()
    config = first.config
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    warmed = [s for s in saved["sensors"] if s["baseline"] is not None]
    assert warmed and all(s["res"] == pytest.approx(0.01) and s["mag"] > 0 for s in warmed)
    older = DriftDetector(config)
    older.load_state(json.loads(json.dumps(_as_version_2(saved))))
    loaded = older.state_dict()
    assert loaded["version"] == 3
    assert {s["res"] for s in loaded["sensors"]} == {None}  # not known yet
    assert [s["baseline"] for s in loaded["sensors"]] == [s["baseline"] for s in saved["sensors"]]
    # the same readings to both: the same signals, and the resolution learned again
    replay = Sim({"B": (5, {0: step(0.05, 1.5)}), "L": (1, {})}, seed=5)
    replay.rng = random.Random(8)
    sim.rng = random.Random(8)
    a = sim.run(first, 2.0, 3.0)
    b = replay.run(older, 2.0, 3.0)
    assert [(s.kind, s.subject, s.firing, s.at, s.evidence.get("shape")) for s in a] == [
        (s.kind, s.subject, s.firing, s.at, s.evidence.get("shape")) for s in b
    ]
    for row in older.state_dict()["sensors"]:
        if row["baseline"] is not None:
            assert row["res"] == pytest.approx(0.01)


def test_a_warmed_sensor_keeps_its_numbers_unboxed_in_one_bounded_array() -> None:
    config = DriftConfig(metrics=("temperature_c",), warmup_buckets=24, mode_switch_buckets=2)
    sim = Sim({zone: (6, {}) for zone in "ABCDE"}, seed=2)
    metas = {zone: {"site": "s1", "zone": zone} for zone in "ABCDE"}
    batches: list[list[Reading]] = []
    for batch in _recorded(sim, 0, 0.5):  # 144 buckets: warmed up, history full
        # one metadata mapping per zone, as a pipeline shares one per device
        batches.append([r._replace(meta=metas[r.meta["zone"]]) for r in batch])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        detector = DriftDetector(config)
        for batch in batches:
            detector.process(batch)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    sensors = detector.state_dict()["sensors"]
    assert len(sensors) == 30 and all(s["baseline"] is not None for s in sensors)
    assert {len(s["drifts"]) for s in sensors} == {config.step_window + 4}
    # about 2.3 KB each with its device, metadata and peer group; a window object per
    # statistic and boxed numbers would take 3.8 KB
    assert held / len(sensors) < 2_800


def _recorded(sim: Sim, start_day: float, end_day: float) -> list[list[Reading]]:
    """The batches ``sim`` feeds a detector from ``start_day`` to ``end_day``."""
    batches: list[list[Reading]] = []

    class Recorder(DriftDetector):
        def process(self, batch: Sequence[Reading]) -> list[Signal]:
            batches.append(list(batch))
            return []

    sim.run(Recorder(), start_day, end_day)
    return batches


def test_times_keep_the_type_the_bucket_width_gives_them() -> None:
    config = DriftConfig(metrics=("temperature_c",), bucket_s=60, lateness_s=0, min_peers=2)
    detector = DriftDetector(config)
    meta = {"site": "s", "zone": "z"}
    for i in range(5):
        t = 60.0 * i + 1
        detector.process(
            [Reading(f"d{d}", t, t, {"temperature_c": 20.0 + d}, meta) for d in range(3)]
        )
    saved = detector.state_dict()
    assert saved == json.loads(json.dumps(saved))
    assert {type(s["last_ts"]) for s in saved["sensors"]} == {int}  # (i + 1) * 60


def test_round_trip_keeps_windows_in_order_and_continues_identically() -> None:
    first, sim = _warmed_detector()
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    second = DriftDetector(first.config)
    second.load_state(saved)
    assert json.loads(json.dumps(second.state_dict(), allow_nan=False)) == saved
    for device in ("B-0", "B-1", "L-0"):
        assert second.device_view(device) == first.device_view(device)
        assert second.sensor_status(device, "temperature_c") == first.sensor_status(
            device, "temperature_c"
        )
    _assert_continues_alike(sim, first, second)


def test_out_of_order_readings_keep_the_latest_value_of_each_bucket() -> None:
    config = DriftConfig(metrics=("temperature_c",), bucket_s=60, lateness_s=120, min_peers=2)
    detector = DriftDetector(config)
    meta = {"site": "s", "zone": "z"}

    def reading(device: str, ts: float, value: float) -> Reading:
        return Reading(device, ts, ts, {"temperature_c": value}, meta)

    # d1 reports in bucket 1, then bucket 2, then again in bucket 1 (older, then newer ts)
    detector.process([reading("d1", 70.0, 20.0), reading("d2", 71.0, 21.0)])
    detector.process([reading("d1", 130.0, 22.0), reading("d1", 65.0, 99.0)])
    detector.process([reading("d1", 80.0, 23.0), reading("d3", 75.0, 24.0)])
    buckets = detector.state_dict()["groups"][0]["buckets"]
    assert buckets["1"] == {"d1": [80.0, 23.0], "d2": [71.0, 21.0], "d3": [75.0, 24.0]}
    assert buckets["2"] == {"d1": [130.0, 22.0]}
    detector.tick(10_000.0)
    view = detector.device_view("d1")
    assert view is not None and view["metrics"]["temperature_c"]["reference"] is None
    assert detector.late_dropped == 0


def test_a_sensor_seen_in_one_bucket_saves_the_hour_it_counted_and_continues_the_same() -> None:
    config = DriftConfig(metrics=("temperature_c",), bucket_s=60, lateness_s=0, min_peers=2)
    meta = {"site": "s", "zone": "z"}

    def feed(detector: DriftDetector, minutes: range) -> list[Signal]:
        out: list[Signal] = []
        for i in minutes:
            t = T0 + 60.0 * i
            batch = [Reading(f"d{d}", t + d, t + d, {"temperature_c": 20.0 + d}, meta)
                     for d in range(3)]  # fmt: skip
            out += detector.process(batch)
        return out

    first = DriftDetector(config)
    feed(first, range(2))  # one closed bucket per sensor
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    counts = saved["sensors"][0]["profile_n"]
    assert (
        sum(counts) == 1 and counts.index(1) == 0 and saved["sensors"][0]["profile"] == [0.0] * 24
    )
    second = DriftDetector(config)
    second.load_state(saved)
    assert json.loads(json.dumps(second.state_dict(), allow_nan=False)) == saved
    assert feed(first, range(2, 90)) == feed(second, range(2, 90))
    assert first.state_dict() == second.state_dict()


def test_site_from_metadata_that_comes_back_reaches_every_sensor_of_the_device() -> None:
    detector = DriftDetector(DriftConfig(metrics=("temperature_c", "humidity_pct")))
    plain = {"gateway": "g"}  # no site or zone: the device keeps the ones it had
    detector.process([Reading("d", T0, T0, {"temperature_c": 20.0}, {"site": "a", "zone": "z"})])
    detector.process([Reading("d", T0 + 1, T0 + 1, {"temperature_c": 20.0}, plain)])
    detector.process([Reading("d", T0 + 2, T0 + 2, {"humidity_pct": 40.0}, {"site": "b"})])
    detector.process([Reading("d", T0 + 3, T0 + 3, {"humidity_pct": 40.0}, plain)])
    detector.process([Reading("d", T0 + 4, T0 + 4, {"temperature_c": 20.0}, plain)])
    sites = {s["metric"]: (s["site"], s["zone"]) for s in detector.state_dict()["sensors"]}
    assert sites == {"temperature_c": ("b", "z"), "humidity_pct": ("b", "z")}
    event = {"gateway": "g", "event": "calibration"}
    fired = detector.process([Reading("d", T0 + 5, T0 + 5, {"temperature_c": 20.0}, event)])
    assert [s.evidence["reason"] for s in fired] == []  # nothing was flagged: nothing to clear
    status = detector.sensor_status("d", "temperature_c")
    assert status is not None and status["calibration_history"] == [[T0 + 5, "calibrated"]]


def test_hour_counts_past_16_bits_and_environment_values_survive_a_round_trip() -> None:
    detector, _ = _warmed_detector()
    saved = json.loads(json.dumps(detector.state_dict(), allow_nan=False))
    sensor = next(s for s in saved["sensors"] if s["device"] == "L-0")
    counts = list(sensor["profile_n"])
    counts[3] = 70_000  # an hour counted for longer than 16 bits hold
    changed = dict(sensor, profile_n=counts)
    state = dict(saved, sensors=[changed if s is sensor else s for s in saved["sensors"]])
    loaded = DriftDetector(detector.config)
    loaded.load_state(json.loads(json.dumps(state)))
    again = json.loads(json.dumps(loaded.state_dict(), allow_nan=False))
    assert again == json.loads(json.dumps(state))
    assert any(row["env"] for row in again["devices"].values())
    # counting on from there: past 65,535 in a cell that was below it
    t = T0 + 10 * DAY + 3 * 3_600
    meta = {"site": "plant", "zone": "L"}
    for i in range(3):
        loaded.process([Reading("L-0", t + 300 * i, t + 300 * i, {"temperature_c": 20.0}, meta)])
    loaded.tick(t + 3 * DAY)
    after = next(s for s in loaded.state_dict()["sensors"] if s["device"] == "L-0")
    assert after["profile_n"][3] >= 70_000
