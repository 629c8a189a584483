"""Fleet facts: detectors split by site over workers converge, after an exchange, on the
comparisons one detector over the whole fleet makes; without the exchange they do not."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from detectors.environment import EnvironmentConfig, EnvironmentDetector, drain_sketch
from detectors.firmware import FirmwareDetector
from detectors.power import PowerConfig, PowerDetector
from service.records import MessageKind, Reading, Signal
from service.runtime.fleet_facts import WORKER_CALLS, exchange, merge_summaries, others_for

HOUR = 3_600.0


def daemons(detectors: Sequence[Any]) -> list[SimpleNamespace]:
    """One stand-in worker daemon per detector."""
    return [SimpleNamespace(pipeline=SimpleNamespace(detectors=[d])) for d in detectors]


def swap(detectors: Sequence[Any]) -> None:
    """One exchange over the workers' calls, every summary through pickle as on the wire."""
    workers = daemons(detectors)
    per_worker = [pickle.loads(pickle.dumps(WORKER_CALLS["facts.summaries"](w))) for w in workers]
    for index, worker in enumerate(workers):
        others = pickle.loads(pickle.dumps(others_for(index, per_worker)))
        assert WORKER_CALLS["facts.apply"](worker, others) == [worker.pipeline.detectors[0].name]


def shard(readings: Iterable[Reading], shard_of_site: dict[str, int]) -> list[list[Reading]]:
    parts: list[list[Reading]] = [[] for _ in range(max(shard_of_site.values()) + 1)]
    for reading in readings:
        parts[shard_of_site[reading.meta["site"]]].append(reading)
    return parts


def by_subject(signals: Iterable[Signal]) -> list[Signal]:
    return sorted(signals, key=lambda s: (s.subject, s.kind, s.at, s.firing))


# -- firmware -------------------------------------------------------------------------------

SITES3 = {"s0": 0, "s1": 1, "s2": 2}


def fw(device: str, site: str, version: str, ts: float, model: str = "TH-200") -> Reading:
    return Reading(device, ts, ts, {}, {"model": model, "site": site, "firmware": version})


FW_FIRST = [
    fw("a1", "s0", "1.4.0", 0.0), fw("a2", "s0", "1.5.0", 1.0),
    fw("b1", "s1", "1.4.0", 2.0), fw("b2", "s1", "1.4.0", 3.0),
    fw("c1", "s2", "2.0.0", 4.0, model="X-1"),
]  # fmt: skip
FW_THEN = [
    fw("b1", "s1", "1.5.0", 100.0),  # seen only at s0: a known version for TH-200
    fw("b2", "s1", "9.9.9", 101.0),  # nobody ever ran it
    fw("c1", "s2", "1.5.0", 102.0, model="X-1"),  # known for TH-200, not for X-1
    fw("a1", "s0", "1.3.0", 103.0),  # a downgrade to an unseen version
]  # fmt: skip


def firmware_run(exchanged: bool) -> tuple[FirmwareDetector, list[FirmwareDetector], list[Signal]]:
    one = FirmwareDetector()
    one.process(FW_FIRST)
    parts = [FirmwareDetector() for _ in range(3)]
    for part, readings in zip(parts, shard(FW_FIRST, SITES3), strict=True):
        part.process(readings)
    if exchanged:
        swap(parts)
    signals = [s for part, rs in zip(parts, shard(FW_THEN, SITES3), strict=True)
               for s in part.process(rs)]  # fmt: skip
    return one, parts, signals


def test_firmware_never_seen_versions_agree_with_one_detector_after_an_exchange() -> None:
    one, parts, signals = firmware_run(exchanged=True)
    expected = one.process(FW_THEN)
    assert by_subject(signals) == by_subject(expected)
    severity = {s.subject: (s.severity.label, s.evidence["reasons"]) for s in expected}
    assert severity["b1"] == ("warning", ["no campaign targets this version"])
    assert (
        severity["b2"][0] == "critical" and "version never seen for this model" in severity["b2"][1]
    )
    assert "version never seen for this model" in severity["c1"][1]
    for device in ("a1", "a2", "b1", "b2", "c1"):
        views = [v for v in (p.device_view(device) for p in parts) if v is not None]
        assert views == [one.device_view(device)]


def test_firmware_without_the_exchange_calls_a_known_version_never_seen() -> None:
    one, _, signals = firmware_run(exchanged=False)
    expected = {s.subject: s for s in one.process(FW_THEN)}
    split = {s.subject: s for s in signals}
    assert expected["b1"].severity.label == "warning"
    assert split["b1"].severity.label == "critical"
    assert "version never seen for this model" in split["b1"].evidence["reasons"]


def test_firmware_state_does_not_carry_what_others_gave() -> None:
    parts = [FirmwareDetector() for _ in range(3)]
    for part, readings in zip(parts, shard(FW_FIRST, SITES3), strict=True):
        part.process(readings)
    before = parts[1].state_dict()
    swap(parts)
    assert parts[1].state_dict() == before
    fresh = FirmwareDetector()
    fresh.load_state(before)
    # restored, it judges over its own devices until the next exchange
    assert (
        "version never seen for this model"
        in (fresh.process([fw("b1", "s1", "1.5.0", 100.0)])[0].evidence["reasons"])
    )


# -- power ----------------------------------------------------------------------------------

POWER_SITES = {"s0": 0, "s1": 1}
POWER_DEVICES = [("p1", "s0", 200.0), ("p2", "s0", 100.0), ("p3", "s0", 100.0),
                 ("q1", "s1", 100.0), ("q2", "s1", 100.0), ("q3", "s1", 100.0)]  # fmt: skip


def power_stream(hours: int) -> list[Reading]:
    """Two readings an hour from six devices of one model; p1 draws twice the others."""
    readings = []
    for half in range(2 * hours):
        for n, (device, site, draw) in enumerate(POWER_DEVICES):
            t = half * HOUR / 2 + n
            value = draw + (half + n) % 3
            readings.append(Reading(device, t, t, {"power_mw": value},
                                    {"model": "M", "site": site}))  # fmt: skip
    return readings


def power_run(exchanged: bool) -> tuple[list[Signal], list[Signal], list[PowerDetector]]:
    """One detector and two by site; with ``exchanged``, an exchange every hour of data."""
    stream = power_stream(48)
    one = PowerDetector()
    expected = one.process(stream)
    parts = [PowerDetector(), PowerDetector()]
    signals: list[Signal] = []
    for hour in range(48):
        batch = [r for r in stream if hour * HOUR <= r.ts < (hour + 1) * HOUR]
        for part, readings in zip(parts, shard(batch, POWER_SITES), strict=True):
            signals += part.process(readings)
        if exchanged:
            swap(parts)
    return expected, signals, parts


def without_baseline(signal: Signal) -> tuple[Any, ...]:
    evidence = {k: v for k, v in signal.evidence.items() if k != "model_baseline"}
    return (signal.kind, signal.subject, signal.firing, signal.at, signal.severity,
            signal.summary, evidence)  # fmt: skip


def test_power_fleet_outlier_agrees_with_one_detector_with_exchanges() -> None:
    expected, signals, _ = power_run(exchanged=True)
    assert [(s.subject, s.evidence["shape"]) for s in expected] == [("p1", "fleet_outlier")]
    assert [without_baseline(s) for s in signals] == [without_baseline(s) for s in expected]
    # the model's baseline: weighted by devices instead of by arrival order, close to it
    assert signals[0].evidence["model_baseline"] == pytest.approx(
        expected[0].evidence["model_baseline"], rel=0.01
    )


def test_power_without_the_exchange_a_worker_has_too_few_devices_of_the_model() -> None:
    expected, signals, _ = power_run(exchanged=False)
    assert expected and not signals  # three devices per worker: fewer than fleet_min_devices


def test_power_with_the_exchange_a_worker_full_of_outliers_is_not_its_own_yardstick() -> None:
    # one worker holds the high-draw device with two others, three devices are elsewhere:
    # alone, its baseline (133) puts the 200 mW device under 1.6 times it
    config = PowerConfig(fleet_min_devices=3)
    stream = power_stream(48)
    alone = PowerDetector(config)
    assert not alone.process(shard(stream, POWER_SITES)[0])
    parts = [PowerDetector(config), PowerDetector(config)]
    fired: list[Signal] = []
    for hour in range(48):
        batch = [r for r in stream if hour * HOUR <= r.ts < (hour + 1) * HOUR]
        for part, readings in zip(parts, shard(batch, POWER_SITES), strict=True):
            fired += part.process(readings)
        swap(parts)
    assert [(s.subject, s.evidence["shape"]) for s in fired] == [("p1", "fleet_outlier")]
    assert [without_baseline(s) for s in fired] == [
        without_baseline(s) for s in PowerDetector(config).process(stream)
    ]


def test_power_state_and_device_views_are_unchanged_by_an_exchange() -> None:
    _, _, parts = power_run(exchanged=False)
    before = [p.state_dict() for p in parts]
    views = [p.device_view("p1") for p in parts]
    swap(parts)
    assert [p.state_dict() for p in parts] == before
    assert [p.device_view("p1") for p in parts] == views


# -- environment ----------------------------------------------------------------------------

ENV_SITES = {"s0": 0, "s1": 1, "s2": 1}


def env_stream() -> list[Reading]:
    """12 hours every 5 minutes. s0/z1 is hot: its devices miss every fifth report, drain
    their batteries three times faster and fail most of their updates; s0/z2 has three cool
    devices, s1 and s2 twenty cool ones between them (each missing one report)."""
    devices = [(f"h{i}", "s0", "z1", True) for i in range(6)]
    devices += [(f"c{i}", "s0", "z2", False) for i in range(3)]
    devices += [(f"d{i}", "s1" if i % 2 else "s2", f"z{i % 3}", False) for i in range(20)]
    readings = []
    for step in range(144):
        t = step * 300.0
        for n, (device, site, zone, hot) in enumerate(devices):
            if (hot and step % 5 == 4) or (not hot and step == 40 + 3 * n):
                continue
            drain = (0.03 if hot else 0.01 + 0.0005 * n) * t / 86_400
            metrics = {"temperature_c": 50.0 if hot else 20.0 + n % 5,
                       "humidity_pct": 50.0, "battery_v": 3.6 - drain}  # fmt: skip
            readings.append(Reading(device, t + n, t + n, metrics, {"site": site, "zone": zone}))
    for n, (device, site, zone, hot) in enumerate(devices):
        t = 143 * 300.0 + 100 + n
        events = ["failed"] * 3 if hot else ["failed" if n == 10 else "succeeded"] * 3
        for k, event in enumerate([*events, "succeeded"]):
            readings.append(Reading(device, t + k, t + k, {},
                                        {"site": site, "zone": zone, "event": event},
                                        kind=MessageKind.FIRMWARE))  # fmt: skip
    return sorted(readings, key=lambda r: r.received_at)


def env_run(
    exchanged: bool, evaluate: Callable[[EnvironmentDetector, float], Any]
) -> tuple[Any, list[Any]]:
    config = EnvironmentConfig(min_devices=3)
    stream = env_stream()
    one = EnvironmentDetector(config)
    parts = [EnvironmentDetector(config), EnvironmentDetector(config)]
    for detector in (one, *parts):
        detector.tick(0.0)
    one.process(stream)
    for part, readings in zip(parts, shard(stream, ENV_SITES), strict=True):
        part.process(readings)
    if exchanged:
        swap(parts)
    end = 13 * HOUR
    return evaluate(one, end), [evaluate(part, end) for part in parts]


def test_environment_findings_agree_with_one_detector_after_an_exchange() -> None:
    expected, split = env_run(True, lambda d, now: d.tick(now))
    assert {s.subject for s in expected} == {"s0/z1"}
    assert {s.evidence["outcome"] for s in expected} <= {"lost reports", "battery drain",
                                                         "update failures"}  # fmt: skip
    assert by_subject(s for signals in split for s in signals) == by_subject(expected)
    one_report, reports = env_run(True, lambda d, now: d.report(now))
    findings = sorted((f for r in reports for f in r["findings"]), key=lambda f: f["p_value"])
    assert findings == one_report["findings"]
    assert {f["outcome"] for f in findings} == {"lost reports", "battery drain", "update failures"}


def test_environment_without_the_exchange_compares_with_the_worker_only() -> None:
    one_report, reports = env_run(False, lambda d, now: d.report(now))
    expected = {(f["metric"], f["band"], f["outcome"]): f for f in one_report["findings"]}
    split = {(f["metric"], f["band"], f["outcome"]): f for f in reports[0]["findings"]}
    assert expected.keys() != split.keys() or any(
        split[k]["n_rest"] != expected[k]["n_rest"] for k in expected
    )
    assert all(f["n_rest"] < 10 for f in split.values())
    assert all(f["n_rest"] > 10 for f in expected.values())


def test_environment_state_is_unchanged_and_an_empty_exchange_changes_nothing() -> None:
    config = EnvironmentConfig(min_devices=3)
    alone, given_nothing = EnvironmentDetector(config), EnvironmentDetector(config)
    stream = env_stream()
    for detector in (alone, given_nothing):
        detector.tick(0.0)
        detector.process(stream)
    given_nothing.apply_fleet_summary(merge_summaries("environment", []))
    assert given_nothing.state_dict() == alone.state_dict()
    assert given_nothing.tick(13 * HOUR) == alone.tick(13 * HOUR)


def test_drain_sketch_is_exact_up_to_its_limit_then_quantiles() -> None:
    values = [(0.001 * (v % 37), 1) for v in range(200)]
    exact = drain_sketch(values)
    assert sum(c for _, c in exact) == 200 and len(exact) == 37
    short = drain_sketch(values, limit=10)
    assert len(short) == 10 and sum(c for _, c in short) == 200
    assert [v for v, _ in short] == sorted(v for v, _ in short)


# -- the exchange ---------------------------------------------------------------------------


def test_summaries_are_bounded_by_models_not_devices() -> None:
    def sizes(devices: int) -> tuple[int, int]:
        firmware, power = FirmwareDetector(), PowerDetector()
        for h in range(3):
            batch = [Reading(f"d{i}", h * HOUR, h * HOUR, {"power_mw": 10.0 + i % 7},
                             {"model": f"M{i % 2}", "firmware": "1.0"}) for i in range(devices)]  # fmt: skip
            firmware.process(batch)
            power.process(batch)
        return len(pickle.dumps(firmware.fleet_summary())), len(pickle.dumps(power.fleet_summary()))

    assert sizes(10) == sizes(500)


def test_others_for_merges_every_other_worker_and_skips_unknown_names() -> None:
    key = ("M", None, "power_mw")
    per_worker: list[dict[str, Any]] = [{"power": {key: (2, 2.0, 200.0)}, "mystery": 1},
                  {"power": {key: (3, 3.0, 330.0)}},
                  {"power": {key: (1, 0.0, 0.0)}}]  # fmt: skip
    assert others_for(0, per_worker) == {"power": {key: (4, 3.0, 330.0)}}
    assert others_for(1, per_worker) == {"power": {key: (3, 2.0, 200.0)}}
    with pytest.raises(ValueError, match="no fleet summary"):
        merge_summaries("mystery", [1])


def test_a_failing_detector_does_not_stop_the_others_exchange() -> None:
    class Broken(FirmwareDetector):
        def fleet_summary(self) -> dict[str | None, frozenset[str]]:
            raise RuntimeError("bug")

    broken = Broken()
    broken.name = "power"  # answers as a detector that has summaries
    firmware = FirmwareDetector()
    firmware.process([fw("a1", "s0", "1.0", 0.0)])
    worker = SimpleNamespace(pipeline=SimpleNamespace(detectors=[broken, firmware]))
    assert WORKER_CALLS["facts.summaries"](worker) == {"firmware": {"TH-200": frozenset({"1.0"})}}


async def test_exchange_gives_each_worker_the_others() -> None:
    parts = [FirmwareDetector(), FirmwareDetector()]
    parts[0].process([fw("a1", "s0", "1.0", 0.0)])
    parts[1].process([fw("b1", "s1", "2.0", 0.0)])
    workers = daemons(parts)

    async def call_all(name: str, args: tuple[Any, ...]) -> list[Any]:
        return [WORKER_CALLS[name](w, *args) for w in workers]

    async def call_one(index: int, name: str, args: tuple[Any, ...]) -> Any:
        return WORKER_CALLS[name](workers[index], *args)

    given = await exchange(call_all, call_one)
    assert given == [{"firmware": {"TH-200": frozenset({"2.0"})}},
                     {"firmware": {"TH-200": frozenset({"1.0"})}}]  # fmt: skip
    reasons = parts[0].process([fw("a1", "s0", "2.0", 60.0)])[0].evidence["reasons"]
    assert "version never seen for this model" not in reasons
