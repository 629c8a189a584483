"""Environmental correlation on a synthetic fleet with one hot zone."""

from __future__ import annotations

import random

import orjson

from detectors.environment import EnvironmentConfig, EnvironmentDetector
from service.records import MessageKind, Reading, Signal

T0 = 1_767_225_600.0


def run(detector: EnvironmentDetector, days: float = 2.0, seed: int = 1) -> list[Signal]:
    rng = random.Random(seed)
    devices = [(f"d{z}{i}", f"z{z}") for z in range(1, 5) for i in range(15)]
    signals: list[Signal] = []
    steps = int(days * 288)
    for step in range(steps):
        t = T0 + step * 300
        batch = []
        for device, zone in devices:
            hot = zone == "z4"
            if rng.random() < (0.15 if hot else 0.01):
                continue  # lost on the way
            drain = (0.02 if hot else 0.007) * step / 288  # volts per day
            batch.append(Reading(device, t, t + 0.1, {
                "temperature_c": (45.0 if hot else 21.0) + rng.gauss(0, 0.5),
                "battery_v": 3.9 - drain + rng.gauss(0, 0.003)},
                {"site": "plant-a", "zone": zone}))  # fmt: skip
        if step == steps // 2:
            for device, zone in devices:
                failed = rng.random() < (0.6 if zone == "z4" else 0.05)
                batch.append(Reading(device, t, t + 0.1, {}, {"event": "failed" if failed else "succeeded",
                                     "site": "plant-a", "zone": zone}, kind=MessageKind.FIRMWARE))  # fmt: skip
        signals += detector.process(batch)
        signals += detector.tick(t)
    return signals


def test_the_hot_zone_is_found_with_its_outcomes_and_nothing_else() -> None:
    detector = EnvironmentDetector()
    signals = run(detector)
    raised = [(s.kind, s.subject) for s in signals if s.firing]
    assert raised == [("environment_risk", "plant-a/z4")]
    findings = detector.findings()
    assert {f["zone_subject"] for f in findings} == {"plant-a/z4"}
    outcomes = {f["outcome"] for f in findings}
    assert {"lost reports", "battery drain", "update failures"} <= outcomes
    drain = next(f for f in findings if f["outcome"] == "battery drain")
    assert drain["band"] == "above 40 °C" and 2.0 < drain["ratio"] < 4.0
    assert "plant-a/z4 with above 40 °C drain their batteries" in drain["text"]
    report = detector.report(T0 + 2 * 86_400)
    orjson.dumps(report)
    top = report["maintenance_by_stress"][:15]
    assert {row["zone"] for row in top} == {"z4"}
    assert report["recommendations"]


def test_a_uniform_fleet_has_no_findings() -> None:
    detector = EnvironmentDetector()
    rng = random.Random(2)
    for step in range(400):
        t = T0 + step * 300
        detector.process([Reading(f"d{i}", t, t, {"temperature_c": 21 + rng.gauss(0, 1)},
                                  {"site": "s", "zone": f"z{i % 4}"}) for i in range(40)
                          if rng.random() > 0.02])  # fmt: skip
        assert detector.tick(t) == []
    assert detector.findings() == []


def test_state_round_trip() -> None:
    detector = EnvironmentDetector(EnvironmentConfig(evaluate_every_s=86_400))
    run(detector, days=1.0)
    restored = EnvironmentDetector(EnvironmentConfig(evaluate_every_s=86_400))
    restored.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    assert restored.findings() == detector.findings()
    assert restored.report(T0) == detector.report(T0)


STATE_V1 = {
    "version": 1, "next_evaluation": None, "open": {},
    "devices": {
        "d1": ["s", "z", {"temperature_c": 45.0}, [0.5833333333333333, 0.0, 0.0], 1767225600.1,
               1767227700.1, 300.0, 8, [1767225600.0, 3.9], [1767227700.0, 3.83], [0, 1],
               [300.0] * 7, 0, 3,
               [8.0, 0.09722222222222222, 30.92, 0.001687885802469136, 0.37430555555555556]],
        "d2": ["s", "z2", {"humidity_pct": 85.0}, [0.0, 0.5833333333333333, 0.0], 1767225600.1,
               1767227700.1, 300.0, 8, None, None, [0, 0], [300.0] * 7, 0, 3,
               [0.0, 0.0, 0.0, 0.0, 0.0]],
    },
}  # fmt: skip


def test_state_format_1_still_loads() -> None:
    detector = EnvironmentDetector()
    detector.load_state(orjson.loads(orjson.dumps(STATE_V1)))
    state = detector.state_dict()
    assert state["version"] == 2
    assert state["devices"]["d1"] == [
        "s", "z", {"temperature_c": 45.0}, [0.5833333333333333, 0.0, 0.0], 1767227700.1,
        [300.0] * 7, 0, 3,
        [1767225600.0, 1767227700.0, 3.83, 8.0, 0.09722222222222222, 30.92,
         0.001687885802469136, 0.37430555555555556],
        [0, 1],
    ]  # fmt: skip
    assert state["devices"]["d2"][8:] == [None, None]
    # the loaded devices go on from where they were: two gaps of one report each
    t = 1767227700.1 + 600
    detector.process([Reading("d1", t, t, {"temperature_c": 45.0}, {"site": "s", "zone": "z"})])
    d1 = detector.state_dict()["devices"]["d1"]
    assert d1[6:8] == [1, 5] and d1[3][0] > 0.5833333333333333
    restored = EnvironmentDetector()
    restored.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    assert restored.report(t) == detector.report(t)


def test_report_ranks_the_most_stressed_devices_first_within_the_limit() -> None:
    detector = EnvironmentDetector(EnvironmentConfig(report_limit=3))
    for step in range(6):
        t = T0 + step * 300
        detector.process([Reading(f"d{i}", t, t, {"temperature_c": 41.0 + i if i % 2 else 20.0},
                                  {"site": "s", "zone": "z"}) for i in range(8)])  # fmt: skip
    top = detector.report(T0)["maintenance_by_stress"]
    assert [row["device_id"] for row in top] == ["d1", "d3", "d5"]
    assert all(row["hot_hours"] == row["stress_hours"] > 0 for row in top)


def test_recent_gaps_are_saved_oldest_first_and_rhythm_survives_a_reload() -> None:
    detector = EnvironmentDetector()
    gaps = [60.0, 61.0, 59.0, 300.0, 60.5, 58.0, 62.0, 60.0, 59.5, 61.5, 600.0, 60.0, 58.5]
    t = T0
    for gap in [0.0, *gaps]:
        t += gap
        detector.process([Reading("d1", t, t, {"temperature_c": 45.0}, {"site": "s"})])
    state = detector.state_dict()
    assert state["devices"]["d1"][5] == gaps[-9:]
    restored = EnvironmentDetector()
    restored.load_state(orjson.loads(orjson.dumps(state)))
    assert restored.state_dict() == state
    for later in (detector, restored):  # a gap of three reports: two lost
        later.process([Reading("d1", t + 180, t + 180, {"temperature_c": 45.0}, {"site": "s"})])
    assert restored.state_dict() == detector.state_dict()
    assert detector.state_dict()["devices"]["d1"][6] == state["devices"]["d1"][6] + 2


def test_changed_metadata_moves_a_device_and_shared_metadata_is_read_once() -> None:
    detector = EnvironmentDetector()
    meta = {"site": "s", "zone": "z1"}
    for step in range(3):
        detector.process([Reading("d1", T0 + 60 * step, T0 + 60 * step, {}, meta)])
    assert detector.state_dict()["devices"]["d1"][:2] == ["s", "z1"]
    t = T0 + 600
    detector.process([Reading("d1", t, t, {}, {"site": "s", "zone": "z2"})])
    detector.process([Reading("d1", t + 60, t + 60, {}, {})])  # no metadata: stays put
    assert detector.state_dict()["devices"]["d1"][:2] == ["s", "z2"]


def _mixed_cells(alkaline_in_cold_drain: float) -> EnvironmentDetector:
    """Li-SOCl2 cells (flat, 2 mV/day) in three zones, alkaline cells (steep, 20 mV/day)
    in zone z1 and in the freezer z4 (-20 °C), where they drain ``alkaline_in_cold_drain``."""
    detector = EnvironmentDetector(EnvironmentConfig(min_devices=5))
    rng = random.Random(4)
    devices = [(f"s{z}{i}", f"z{z}", "li_socl2", 0.002, 20.0)
               for z in (1, 2, 3) for i in range(10)]  # fmt: skip
    devices += [(f"a1{i}", "z1", "alkaline_2aa", 0.02, 20.0) for i in range(10)]
    devices += [(f"a4{i}", "z4", "alkaline_2aa", alkaline_in_cold_drain, -20.0)
                for i in range(10)]  # fmt: skip
    for step in range(3 * 288):
        t = T0 + step * 300
        detector.process([
            Reading(device, t, t + 0.1,
                    {"temperature_c": temp + rng.gauss(0, 0.3),
                     "battery_v": 3.6 - drain * step / 288 + rng.gauss(0, 0.002)},
                    {"site": "plant-a", "zone": zone, "battery_chemistry": chemistry})
            for device, zone, chemistry, drain, temp in devices
        ])  # fmt: skip
        detector.tick(t)
    return detector


def test_battery_drain_is_compared_only_between_cells_of_one_type() -> None:
    # the freezer holds alkaline cells, which lose volts ten times faster than the
    # lithium cells elsewhere, and no faster than the alkaline cells outside it
    same = _mixed_cells(alkaline_in_cold_drain=0.02)
    assert [f for f in same.findings() if f["outcome"] == "battery drain"] == []
    # alkaline cells that really drain faster in the freezer are still found
    faster = _mixed_cells(alkaline_in_cold_drain=0.06)
    drain = [f for f in faster.findings() if f["outcome"] == "battery drain"]
    assert [f["zone_subject"] for f in drain] == ["plant-a/z4"]
    assert 2.0 < drain[0]["ratio"] < 4.0
