"""The rule engine: each kind fires and clears, with holds, hysteresis and filters."""

from __future__ import annotations

import pytest

from detectors.rules import Rule, RuleEngine
from service.records import MessageKind, Reading, Severity


def reading(
    t: float, value: float, metric: str = "temperature_c", device: str = "d1", **meta: str
) -> Reading:
    return Reading(device, t, t, {metric: value}, {"site": "a", "model": "M1", **meta})


def feed(
    engine: RuleEngine, points: list[tuple[float, float]], **kw: str
) -> list[tuple[float, bool]]:
    out = []
    for t, v in points:
        out += [(t, s.firing) for s in engine.process([reading(t, v, **kw)])]
    return out


@pytest.mark.parametrize(
    ("rule", "points", "expected"),
    [
        (Rule("r", "temperature_c", "above", threshold=50),
         [(0, 40), (1, 55), (2, 60), (3, 45)], [(1, True), (3, False)]),
        (Rule("r", "temperature_c", "below", threshold=0),
         [(0, 5), (1, -1), (2, 1)], [(1, True), (2, False)]),
        (Rule("r", "temperature_c", "outside", min=10, max=30),
         [(0, 20), (1, 35), (2, 20), (3, 5), (4, 15)], [(1, True), (2, False), (3, True), (4, False)]),
        (Rule("r", "temperature_c", "rate", max_rate_per_s=1.0),
         [(0, 20), (10, 25), (20, 60), (30, 61)], [(20, True), (30, False)]),
    ],
)  # fmt: skip
def test_each_kind_fires_once_and_clears(rule: Rule, points: list, expected: list) -> None:
    assert feed(RuleEngine([rule]), points) == expected


def test_hysteresis_stops_flapping_around_the_limit() -> None:
    points = [(t, 50.5 if t % 2 else 49.5) for t in range(20)] + [(20, 47.0)]
    plain = feed(RuleEngine([Rule("r", "temperature_c", "above", threshold=50)]), points)
    steady = feed(
        RuleEngine([Rule("r", "temperature_c", "above", threshold=50, hysteresis=2)]), points
    )
    assert len(plain) == 20
    assert steady == [(1, True), (20, False)]


def test_for_s_delays_firing_and_ignores_brief_excursions() -> None:
    engine = RuleEngine([Rule("r", "temperature_c", "above", threshold=50, for_s=60)])
    brief = feed(engine, [(0, 55), (30, 55), (40, 45)])
    held = feed(engine, [(100, 55), (130, 56), (161, 57), (200, 40)])
    assert brief == []
    assert held == [(161, True), (200, False)]


def test_model_and_site_filters() -> None:
    rule = Rule("r", "temperature_c", "above", threshold=50, models=("M2",), sites=("a",))
    engine = RuleEngine([rule])
    assert feed(engine, [(0, 60)]) == []  # model M1
    assert engine.process(
        [Reading("d2", 0, 0, {"temperature_c": 60}, {"site": "a", "model": "M2"})]
    )
    assert not engine.process(
        [Reading("d3", 0, 0, {"temperature_c": 60}, {"site": "b", "model": "M2"})]
    )


def test_late_readings_do_not_make_rates() -> None:
    engine = RuleEngine([Rule("r", "temperature_c", "rate", max_rate_per_s=1.0)])
    engine.process([reading(100, 20)])
    late = Reading("d1", 50, 101, {"temperature_c": 90}, {"site": "a"}, late=True)
    assert engine.process([late]) == []
    assert engine.process([reading(110, 21)]) == []


def test_non_telemetry_readings_are_ignored() -> None:
    engine = RuleEngine([Rule("r", "temperature_c", "above", threshold=50)])
    status = Reading("d1", 0, 0, {"temperature_c": 99}, {}, kind=MessageKind.STATUS)
    assert engine.process([status]) == []
    batch = Reading("d1", 1, 1, {"temperature_c": 99}, {}, kind=MessageKind.BATCH)
    assert len(engine.process([batch])) == 1


def test_devices_are_independent() -> None:
    engine = RuleEngine([Rule("r", "temperature_c", "above", threshold=50)])
    signals = engine.process(
        [reading(0, 60, device="a"), reading(0, 40, device="b"), reading(1, 61, device="b")]
    )
    assert [(s.subject, s.firing) for s in signals] == [("a", True), ("b", True)]


def test_signal_carries_evidence_and_operator_text() -> None:
    rule = Rule(
        "low", "battery_v", "below", threshold=3.3, severity=Severity.CRITICAL, action="Swap it."
    )
    (signal,) = RuleEngine([rule]).process([reading(5, 3.1, metric="battery_v", zone="z9")])
    assert signal.kind == "rule.low" and signal.severity is Severity.CRITICAL
    assert signal.evidence == {
        "rule": "low",
        "metric": "battery_v",
        "value": 3.1,
        "limit": 3.3,
        "since": 5,
    }
    assert signal.summary == "d1: battery_v 3.1 below 3.3"
    assert signal.action == "Swap it." and (signal.site, signal.zone) == ("a", "z9")


def test_state_round_trip_mid_excursion() -> None:
    rule = Rule("r", "temperature_c", "above", threshold=50, hysteresis=1)
    engine = RuleEngine([rule])
    assert feed(engine, [(0, 60)]) == [(0, True)]
    restored = RuleEngine([rule])
    restored.load_state(engine.state_dict())
    assert feed(restored, [(1, 60)]) == []  # still firing: no second alert
    assert feed(restored, [(2, 40)]) == [(2, False)]


def test_state_of_removed_rules_is_dropped() -> None:
    engine = RuleEngine([Rule("old", "temperature_c", "above", threshold=50)])
    feed(engine, [(0, 60)])
    fresh = RuleEngine([Rule("new", "temperature_c", "above", threshold=50)])
    fresh.load_state(engine.state_dict())
    assert feed(fresh, [(1, 60)]) == [(1, True)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "above"},
        {"kind": "outside", "min": 5, "max": 1},
        {"kind": "rate"},
        {"kind": "sideways", "threshold": 1},
        {"kind": "above", "threshold": 1, "for_s": -1},
    ],
)
def test_invalid_rules_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Rule("r", "m", **kwargs)


def test_rule_names_must_be_unique() -> None:
    with pytest.raises(ValueError):
        RuleEngine([Rule("r", "a", "above", threshold=1), Rule("r", "b", "above", threshold=1)])


def test_only_pairs_with_something_open_are_kept() -> None:
    engine = RuleEngine(
        [Rule("hot", "temperature_c", "above", threshold=50, for_s=60),
         Rule("fast", "temperature_c", "rate", max_rate_per_s=1.0)]
    )  # fmt: skip
    for device in ("a", "b", "c"):
        feed(engine, [(0, 20), (10, 21)], device=device)
    rows = engine.state_dict()["state"]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("fast", "a", False, None, 21), ("fast", "b", False, None, 21),
        ("fast", "c", False, None, 21),
    ]  # fmt: skip
    feed(engine, [(20, 55)], device="b")  # holding, not yet firing; and a fast change
    rows = engine.state_dict()["state"]
    assert ["hot", "b", False, 20] in [r[:4] for r in rows]
    assert ["fast", "b", True, 20] in [r[:4] for r in rows]


def test_state_with_a_row_for_every_pair_loads() -> None:
    rules = [Rule("hot", "temperature_c", "above", threshold=50),
             Rule("fast", "temperature_c", "rate", max_rate_per_s=1.0)]  # fmt: skip
    state = {
        "version": 1,
        "rules": ["hot", "fast"],
        "state": [
            ["hot", "a", False, None, None, None],  # a pair with nothing open
            ["hot", "b", True, 0.0, None, None],
            ["fast", "a", False, None, 20.0, 10.0],
            ["fast", "b", False, None, None, None],
        ],
    }
    engine = RuleEngine(rules)
    engine.load_state(state)
    assert feed(engine, [(20, 60)], device="a") == [(20, True), (20, True)]  # 4/s from 20 at 10
    assert feed(engine, [(20, 40)], device="b") == [(20, False)]
    assert feed(engine, [(30, 41)], device="b") == []


def test_filters_follow_the_model_and_site_of_each_reading() -> None:
    engine = RuleEngine([Rule("r", "temperature_c", "above", threshold=50, models=("M2",))])
    assert feed(engine, [(0, 60)]) == []  # model M1
    assert feed(engine, [(1, 60)], model="M2") == [(1, True)]  # same device, now an M2
    assert feed(engine, [(2, 40)], model="M2") == [(2, False)]


def test_signals_of_one_reading_follow_its_metrics_then_the_rules() -> None:
    engine = RuleEngine(
        [Rule("fast", "temperature_c", "rate", max_rate_per_s=1.0),
         Rule("low", "battery_v", "below", threshold=3.3),
         Rule("hot", "temperature_c", "above", threshold=50)]
    )  # fmt: skip
    engine.process([Reading("d1", 0, 0, {"temperature_c": 20.0}, {})])
    signals = engine.process([Reading("d1", 10, 10, {"battery_v": 3.0, "temperature_c": 60.0}, {})])
    assert [s.kind for s in signals] == ["rule.low", "rule.fast", "rule.hot"]
    signals = engine.process([Reading("d1", 60, 60, {"temperature_c": 50.0, "battery_v": 3.9}, {})])
    assert [(s.kind, s.firing) for s in signals] == [
        ("rule.fast", False), ("rule.hot", False), ("rule.low", False)
    ]  # fmt: skip


def test_a_rate_rule_added_later_starts_unseen_for_known_devices() -> None:
    rules = [Rule("hot", "temperature_c", "above", threshold=50),
             Rule("fast", "temperature_c", "rate", max_rate_per_s=1.0),
             Rule("jerky", "vibration_g", "rate", max_rate_per_s=0.1)]  # fmt: skip
    engine = RuleEngine(rules[:2])
    feed(engine, [(0, 20), (10, 21)], device="a")
    grown = RuleEngine(rules)
    grown.load_state(engine.state_dict())
    assert grown.state_dict()["state"] == engine.state_dict()["state"]
    assert grown.process([reading(20, 5.0, metric="vibration_g", device="a")]) == []
    assert grown.process([reading(30, 9.0, metric="vibration_g", device="a")])


def test_example_battery_low_rule_rides_out_transmit_sag_and_fires_on_a_low_cell() -> None:
    # a healthy cell resting at 3.36 V sags 0.1 V on every tenth reading (the radio
    # sends); a low cell stays at 3.2 V. Five-minute readings for a day.
    import random

    from config.settings import EXAMPLE_CONFIG, load_settings

    settings = load_settings(EXAMPLE_CONFIG, environ={})
    (low,) = [Rule.from_settings(r) for r in settings.rules if r.name == "battery_low"]
    engine = RuleEngine([low])
    rng = random.Random(3)
    healthy = [(t * 300.0, 3.36 - (0.1 if t % 10 == 3 else 0.0) + rng.gauss(0, 0.005))
               for t in range(288)]  # fmt: skip
    assert feed(engine, healthy, metric="battery_v", device="ok") == []
    weak = [(t * 300.0, 3.2 + rng.gauss(0, 0.005)) for t in range(288)]
    fired = feed(engine, weak, metric="battery_v", device="weak")
    assert fired == [(1800.0, True)]
