"""The battery detector: forecasts, alerts, swaps, charging, sag, cold, state and the plan."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator

import pytest

from detectors.battery import (
    CHEMISTRIES,
    BatteryConfig,
    BatteryDetector,
    battery_config_from_dict,
)
from service.records import MessageKind, Reading, Severity, Signal

DAY = 86_400.0
T0 = 1_700_000_000.0
META = {"site": "plant-a", "zone": "z1", "model": "M1", "gateway": "g1", "firmware": "1.0"}


def volts_for(level: float, chemistry: str = "li_ion") -> float:
    """The voltage the built-in curve maps to ``level`` (its inverse)."""
    curve = CHEMISTRIES[chemistry].curve
    for (v0, p0), (v1, p1) in itertools.pairwise(curve):
        if p0 <= level <= p1 and p1 > p0:
            return v0 + (v1 - v0) * (level - p0) / (p1 - p0)
    return curve[0][0] if level <= curve[0][1] else curve[-1][0]


def reading(
    t: float, device: str = "d1", meta: dict[str, str] | None = None, **metrics: float
) -> Reading:
    return Reading(
        device, t, t, metrics, META if meta is None else meta, kind=MessageKind.TELEMETRY
    )


def stream(
    level_at: Callable[[float], float],
    days: float,
    *,
    every_s: float = 300.0,
    noise_v: float = 0.01,
    device: str = "d1",
    meta: dict[str, str] | None = None,
    chemistry: str = "li_ion",
    pct: bool = False,
    seed: int = 1,
    sag: float = 0.0,
    start: float = 0.0,
    temperature: float | None = None,
) -> Iterator[Reading]:
    """Readings every ``every_s`` from ``start`` days for ``days``; level_at(day) in %."""
    rng = random.Random(seed)
    t = start * DAY
    while t < (start + days) * DAY:
        level = max(level_at(t / DAY), 0.0)
        extra: dict[str, float] = {}
        if temperature is not None:
            extra["temperature_c"] = temperature
        if pct:
            value = min(100.0, max(0.0, level + rng.gauss(0.0, 0.5)))
            yield reading(T0 + t, device, meta, battery_pct=round(value), **extra)
        else:
            v = volts_for(level, chemistry) + rng.gauss(0.0, noise_v)
            if sag and rng.random() < sag:
                v -= rng.uniform(0.25, 0.5)  # load sag: a radio burst drags the voltage down
            yield reading(T0 + t, device, meta, battery_v=round(v, 3), **extra)
        t += every_s


def run(det: BatteryDetector, readings: Iterator[Reading], batch: int = 50) -> list[Signal]:
    signals: list[Signal] = []
    chunk: list[Reading] = []
    for r in readings:
        chunk.append(r)
        if len(chunk) == batch:
            signals += det.process(chunk)
            chunk = []
    signals += det.process(chunk)
    return signals


def linear(start: float, per_day: float) -> Callable[[float], float]:
    return lambda day: start - per_day * day


# -- depletion ---------------------------------------------------------------------------


def test_li_ion_voltage_warned_a_week_ahead_with_an_accurate_forecast() -> None:
    det = BatteryDetector()
    drain = linear(100.0, 2.5)  # empty at day 40
    early = run(det, stream(drain, 10.0))  # up to 30 days before empty
    fc = det.forecast("d1")
    assert fc is not None and fc.tte_s is not None and fc.rate_pct_per_day is not None
    remaining = 40 * DAY - (fc.last_ts - T0)
    assert abs(fc.tte_s - remaining) / remaining < 0.15
    assert fc.tte_low_s is not None and fc.tte_high_s is not None
    assert fc.tte_low_s <= fc.tte_s <= fc.tte_high_s
    assert fc.tte_low_s < remaining < fc.tte_high_s
    assert abs(fc.rate_pct_per_day - 2.5) < 0.3
    assert fc.empty_at == pytest.approx(fc.last_ts + fc.tte_s)

    later = run(det, stream(drain, 30.0, start=10.0, seed=2))
    signals = early + later
    firing = [s for s in signals if s.firing]
    assert [s.severity for s in firing] == [Severity.WARNING, Severity.CRITICAL]
    assert not [s for s in signals if not s.firing]
    warning, critical = firing
    assert 40 * DAY - (warning.at - T0) >= 7 * DAY
    assert 40 * DAY - (critical.at - T0) >= 2 * DAY
    assert warning.kind == "battery_depletion" and warning.subject == "d1"
    assert (warning.site, warning.zone) == ("plant-a", "z1")
    ev = warning.evidence
    for key in ("level_pct", "voltage", "rate_pct_per_day", "tte_days", "tte_low_days",
                "tte_high_days", "chemistry", "samples"):  # fmt: skip
        assert key in ev
    assert ev["chemistry"] == "li_ion" and ev["voltage"] is not None
    assert 20 < ev["tte_days"] < 33
    assert warning.action.startswith("Replace the battery of d1 (plant-a, z1) before 20")
    assert "%/day" in warning.summary and "days" in warning.summary
    json.dumps(dict(ev))


def test_healthy_two_year_battery_is_not_warned() -> None:
    det = BatteryDetector()
    signals = run(det, stream(linear(100.0, 100 / 730), 45.0, every_s=900.0))
    assert signals == []
    fc = det.forecast("d1")
    assert fc is not None and fc.tte_s is not None
    assert fc.tte_s > 365 * DAY
    assert det.replacement_plan(T0 + 45 * DAY)["devices"] == 0


def test_escalation_warning_to_critical_with_battery_pct() -> None:
    det = BatteryDetector()
    signals = run(det, stream(linear(60.0, 4.0), 13.0, every_s=600.0, pct=True))
    assert [(s.firing, s.severity) for s in signals] == [
        (True, Severity.WARNING),
        (True, Severity.CRITICAL),
    ]
    warning, critical = signals
    assert warning.at - T0 < 2 * DAY  # tte ~15 days as soon as the history allows
    assert critical.evidence["tte_days"] < 7.0
    assert critical.evidence["voltage"] is None
    assert critical.action.startswith("Replace the battery of d1")


def test_critical_level_alone_is_critical() -> None:
    det = BatteryDetector(BatteryConfig(horizon_critical_s=DAY, horizon_warning_s=2 * DAY))
    signals = run(det, stream(linear(4.0, 0.1), 3.0, every_s=600.0, pct=True))
    assert [(s.firing, s.severity) for s in signals] == [(True, Severity.CRITICAL)]


# -- swaps and charging --------------------------------------------------------------------


def test_battery_swap_resets_the_estimate_and_clears_the_alert() -> None:
    det = BatteryDetector()
    before = run(det, stream(linear(40.0, 3.0), 8.0))  # 40 % -> 16 %: warned, then critical
    assert before and before[-1].firing
    swap_t = T0 + 8 * DAY
    new = linear(108.0, 1.0)  # 100 % at day 8, and a lighter duty: 1 %/day
    after = run(det, stream(new, 0.5, start=8.0, seed=3))
    assert len(after) == 1 and not after[0].firing
    assert after[0].evidence["reason"] == "swap"
    assert after[0].severity == Severity.CRITICAL
    assert "replaced" in after[0].summary
    fc = det.forecast("d1")
    assert fc is not None
    assert len(fc.swaps) == 1 and abs(fc.swaps[0] - swap_t) < 2 * 3600
    assert fc.level_pct > 95 and fc.rate_pct_per_day is None and fc.samples < 12
    # a fresh estimate from the new battery only
    later = run(det, stream(new, 4.0, start=8.5, seed=4))
    fc = det.forecast("d1")
    assert later == []
    assert fc is not None and fc.rate_pct_per_day is not None
    assert abs(fc.rate_pct_per_day - 1.0) < 0.2


def test_swap_history_is_bounded() -> None:
    det = BatteryDetector(BatteryConfig(swap_history=3))
    for k in range(5):
        run(det, stream(linear(60.0 + 30 * k, 30.0), 1.0, start=float(k), every_s=1800.0, seed=k))
    fc = det.forecast("d1")
    assert fc is not None and len(fc.swaps) == 3
    assert list(fc.swaps) == sorted(fc.swaps)


def test_charging_device_is_not_warned() -> None:
    det = BatteryDetector()
    rising = run(det, stream(lambda d: 3.0 + 15.0 * d, 5.0, device="rising"))
    mains = {**META, "power_source": "mains"}
    plugged = run(det, stream(linear(3.0, 0.5), 5.0, device="plugged", meta=mains))
    assert rising == [] and plugged == []
    fc = det.forecast("rising")
    assert fc is not None and fc.rate_pct_per_day is not None and fc.rate_pct_per_day < 0
    assert fc.tte_s is None and fc.empty_at is None
    plugged_fc = det.forecast("plugged")
    assert plugged_fc is not None and plugged_fc.charging
    assert det.replacement_plan(T0 + 5 * DAY)["devices"] == 0


def test_plugging_in_clears_an_active_alert() -> None:
    det = BatteryDetector()
    fired = run(det, stream(linear(30.0, 3.0), 3.0, pct=True))
    assert [s.severity for s in fired if s.firing] == [Severity.WARNING]
    charging = {**META, "power_source": "charging"}
    cleared = run(det, stream(lambda d: 30.0 + 20 * (d - 3), 1.0, start=3.0, meta=charging))
    assert len(cleared) == 1 and not cleared[0].firing
    assert cleared[0].evidence["reason"] == "charging"


# -- uncertainty, noise, cold ----------------------------------------------------------------


def test_li_socl2_plateau_gives_a_wide_interval() -> None:
    config = BatteryConfig(model_chemistry={"TH-9": "li_socl2"})
    det = BatteryDetector(config)
    socl2 = {**META, "model": "TH-9"}
    # a 2-year cell at 60 %: on the plateau (3.55-3.60 V)
    run(det, stream(linear(60.0, 0.08), 20.0, every_s=900.0, meta=socl2, chemistry="li_socl2",
                    noise_v=0.003, device="s"))  # fmt: skip
    run(det, stream(linear(60.0, 0.08), 20.0, every_s=900.0, noise_v=0.003, device="i"))
    plateau, ion = det.forecast("s"), det.forecast("i")
    assert plateau is not None and ion is not None
    assert plateau.chemistry == "li_socl2" and ion.chemistry == "li_ion"
    assert plateau.voltage is not None and 3.55 < plateau.voltage < 3.6
    assert plateau.level_sigma_pct > 10 > 4 > ion.level_sigma_pct
    assert plateau.tte_low_s is not None and ion.tte_low_s is not None
    assert ion.tte_high_s is not None
    assert ion.tte_high_s / ion.tte_low_s < 2.0
    assert plateau.tte_high_s is None or plateau.tte_high_s / plateau.tte_low_s > 3.0
    truth = (60.0 - 0.08 * 20) / 0.08 * DAY  # about two years
    assert plateau.tte_low_s < truth and (plateau.tte_high_s is None or plateau.tte_high_s > truth)


def test_battery_chemistry_meta_key_and_default() -> None:
    det = BatteryDetector(BatteryConfig(default_chemistry="alkaline_2aa"))
    det.process([reading(T0, "a", {**META, "battery_chemistry": "li_socl2"}, battery_v=3.6)])
    det.process([reading(T0, "b", battery_v=3.0)])
    forecasts = {fc.device_id: fc for fc in det.forecasts()}
    assert forecasts["a"].chemistry == "li_socl2"
    assert forecasts["b"].chemistry == "alkaline_2aa"
    assert forecasts["b"].level_pct == pytest.approx(85.0)


@pytest.mark.parametrize("every_s", [300.0, 3_600.0])
def test_load_sag_dips_do_not_fire(every_s: float) -> None:
    det = BatteryDetector()
    signals = run(det, stream(linear(70.0, 0.2), 30.0, every_s=every_s, sag=0.04))
    assert signals == []
    fc = det.forecast("d1")
    assert fc is not None and fc.rate_pct_per_day is not None
    assert abs(fc.rate_pct_per_day - 0.2) < 0.1
    assert fc.level_pct > 60


def test_cold_corrects_voltage_and_shortens_time_to_empty() -> None:
    warm, cold = BatteryDetector(), BatteryDetector()
    run(warm, stream(linear(80.0, 2.0), 5.0, temperature=20.0, noise_v=0.0))
    coef = CHEMISTRIES["li_ion"].temp_coef_v_per_c
    cold_readings = (
        r._replace(metrics={**r.metrics, "battery_v": r.metrics["battery_v"] - coef * 40.0})
        for r in stream(linear(80.0, 2.0), 5.0, temperature=-20.0, noise_v=0.0)
    )
    run(cold, cold_readings)
    w, c = warm.forecast("d1"), cold.forecast("d1")
    assert w is not None and c is not None and w.tte_s is not None and c.tte_s is not None
    assert c.level_pct == pytest.approx(w.level_pct, abs=0.5)  # the voltage drop is corrected
    assert c.tte_s == pytest.approx(0.8 * w.tte_s, rel=0.03)  # 80 % usable at -20 °C


def test_late_readings_are_skipped() -> None:
    det = BatteryDetector()
    run(det, stream(linear(80.0, 2.0), 3.0, pct=True))
    before = det.forecasts()
    t = T0 + 1.5 * DAY
    late = Reading("d1", t, T0 + 3 * DAY, {"battery_pct": 1.0}, META, late=True)
    older = Reading("d1", t, T0 + 3 * DAY, {"battery_pct": 1.0}, META)
    assert det.process([late, older]) == []
    assert det.forecasts() == before


def test_battery_pct_and_battery_v_agree() -> None:
    by_v, by_pct = BatteryDetector(), BatteryDetector()
    run(by_v, stream(linear(90.0, 1.5), 12.0))
    run(by_pct, stream(linear(90.0, 1.5), 12.0, pct=True))
    v, p = by_v.forecast("d1"), by_pct.forecast("d1")
    assert v is not None and p is not None and v.tte_s is not None and p.tte_s is not None
    assert v.rate_pct_per_day == pytest.approx(1.5, rel=0.1)
    assert p.rate_pct_per_day == pytest.approx(1.5, rel=0.1)
    assert v.tte_s == pytest.approx(p.tte_s, rel=0.1)
    assert v.voltage is not None and p.voltage is None


# -- state and report ----------------------------------------------------------------------


def _fleet() -> list[Iterator[Reading]]:
    meta = {"a": ("s1", "z1", "M1"), "b": ("s1", "z1", "M2"), "c": ("s1", "z2", "M1"),
            "d": ("s2", "z1", "M1"), "e": ("s2", "z1", "M1")}  # fmt: skip
    rate = {"a": 4.0, "b": 2.0, "c": 3.0, "d": 1.0, "e": 0.1}
    return [
        stream(linear(80.0, rate[d]), 4.0, every_s=1800.0, pct=True, device=d, seed=i,
               meta={"site": meta[d][0], "zone": meta[d][1], "model": meta[d][2]})
        for i, d in enumerate(meta)
    ]  # fmt: skip


def test_state_round_trip_gives_the_same_forecasts_and_signals() -> None:
    first = BatteryDetector()
    for readings in _fleet():
        run(first, readings)
    run(first, stream(linear(40.0, 3.0), 5.0, device="swapped", seed=9))
    run(first, stream(linear(115.0, 3.0), 1.2, start=5.0, device="swapped", seed=10))
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    second = BatteryDetector()
    second.load_state(state)
    assert second.forecasts() == first.forecasts()
    assert any(fc.swaps for fc in second.forecasts())
    more = list(stream(linear(60.0, 4.0), 4.0, start=4.0, every_s=1800.0, pct=True, device="a"))
    assert second.process(more) == first.process(more)
    assert second.forecasts() == first.forecasts()
    fresh = BatteryDetector()
    fresh.load_state({"version": 999, "devices": {}})
    assert fresh.forecasts() == []


def test_replacement_plan_groups_by_site_and_zone_and_orders_by_urgency() -> None:
    det = BatteryDetector()
    for readings in _fleet():
        run(det, readings)
    now = T0 + 4 * DAY
    plan = det.replacement_plan(now)
    json.dumps(plan, allow_nan=False)
    # a: 64 % at 4 %/day ~16 d; b: 72 % at 2 ~36 d (outside 30 d); c: 68 % at 3 ~23 d;
    # d: 76 % at 1 ~76 d; e: healthy
    assert plan["devices"] == 2
    assert [(g["site"], g["zone"]) for g in plan["groups"]] == [("s1", "z1"), ("s1", "z2")]
    assert [d["device_id"] for d in plan["groups"][0]["devices"]] == ["a"]
    wide = det.replacement_plan(now, horizon_s=90 * DAY)
    assert wide["devices"] == 4
    order = [(g["site"], g["zone"], [d["device_id"] for d in g["devices"]]) for g in wide["groups"]]
    assert order == [("s1", "z1", ["a", "b"]), ("s1", "z2", ["c"]), ("s2", "z1", ["d"])]
    # a critical model moves its zone ahead: d (76 d / 10) before a (16 d)
    weighted = det.replacement_plan(now, criticality={"d": 10.0, "M2": 0.1}, horizon_s=90 * DAY)
    order = [(g["site"], g["zone"], [d["device_id"] for d in g["devices"]])
             for g in weighted["groups"]]  # fmt: skip
    assert order == [("s2", "z1", ["d"]), ("s1", "z1", ["a", "b"]), ("s1", "z2", ["c"])]
    first = weighted["groups"][0]["devices"][0]
    assert first["criticality"] == 10.0 and first["priority"] < 10
    assert first["replace_before"] <= first["empty_at"][:10]


# -- config ----------------------------------------------------------------------------------


def test_config_from_dict() -> None:
    config = battery_config_from_dict(
        {
            "horizon_warning_s": 14 * DAY,
            "horizon_critical_s": 3 * DAY,
            "critical_level_pct": 8,
            "model_chemistry": {"TH-9": "li_socl2", "AA": "custom"},
            "chemistries": {"custom": {"curve": [[1.0, 0], [1.5, 100]], "voltage_sigma_v": 0.01}},
            "min_samples": 4.0,
        }
    )
    assert config.critical_level_pct == 8.0 and config.min_samples == 4
    assert config.chemistries["custom"].level(1.25) == pytest.approx(50.0)
    assert "li_ion" in config.chemistries
    with pytest.raises(ValueError, match="unknown battery settings"):
        battery_config_from_dict({"horizon": 1})
    with pytest.raises(ValueError, match="unknown chemistry"):
        battery_config_from_dict({"model_chemistry": {"X": "nimh"}})
    with pytest.raises(ValueError, match="horizon"):
        battery_config_from_dict({"horizon_critical_s": 40 * DAY})


def test_a_change_in_usage_is_picked_up_within_days() -> None:
    det = BatteryDetector()
    assert run(det, stream(linear(90.0, 0.5), 10.0, every_s=900.0, pct=True)) == []
    heavier = lambda day: 85.0 - 3.0 * (day - 10.0)  # noqa: E731
    signals = run(det, stream(heavier, 4.0, start=10.0, every_s=900.0, pct=True, seed=2))
    fc = det.forecast("d1")
    assert fc is not None and fc.rate_pct_per_day == pytest.approx(3.0, rel=0.15)
    assert [s.severity for s in signals if s.firing] == [Severity.WARNING]


def test_swap_history_survives_a_checkpoint_and_keeps_growing_bounded() -> None:
    det = BatteryDetector(BatteryConfig(swap_history=3))
    for k in range(2):
        run(det, stream(linear(60.0 + 30 * k, 30.0), 1.0, start=float(k), every_s=1800.0, seed=k))
    state = json.loads(json.dumps(det.state_dict()))
    assert isinstance(state["devices"]["d1"]["swaps"], list)
    restored = BatteryDetector(BatteryConfig(swap_history=3))
    restored.load_state(state)
    assert restored.state_dict() == state
    for k in range(2, 5):
        readings = list(stream(linear(60.0 + 30 * k, 30.0), 1.0, start=float(k), every_s=1800.0,
                               seed=k))  # fmt: skip
        assert run(det, iter(readings)) == run(restored, iter(readings))
    fc = restored.forecast("d1")
    assert fc is not None and len(fc.swaps) == 3 and fc.swaps == det.forecast("d1").swaps  # type: ignore[union-attr]
