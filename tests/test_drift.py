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
    assert status["tolerance"] == pytest.approx(0.06)


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
    assert saved["version"] == 2
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
        old = {key: value for key, value in row.items() if key != "drifts"}
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
    current.load_state(saved)
    previous.load_state(json.loads(json.dumps(_as_version_1(saved, config))))
    # the loaded windows are kept (and saved) until the history holds them
    carried = next(s for s in previous.state_dict()["sensors"] if s["device"] == "B-0")
    assert carried["drifts"] == drifting["drifts"][-5:]
    assert len(carried["step_win"]) == config.step_window and carried["diffs"]
    _assert_continues_alike(sim, current, previous)
    assert previous.state_dict() == current.state_dict()  # windows handed over
    with pytest.raises(ValueError, match="format 3"):
        DriftDetector(config).load_state(dict(saved, version=3))


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
