"""The field simulator under realism profiles, and the alert-quality benchmark's matching.

Rates are measured on the simulator's output (what FleetWatch would receive) and checked
against the profile's ranges, with a margin for sampling noise; nothing here depends on the
exact figures of one random run.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import ModuleType

import orjson
import pytest

from service.simulator import (
    FAULT_KINDS,
    PROFILES,
    FieldMessage,
    FieldSimulator,
    RealismProfile,
    profile,
)
from service.simulator.field_faults import DEVICE_FAULTS

ROOT = Path(__file__).resolve().parents[1]


def _ts(value: object) -> float:
    """A payload ``ts`` (ISO 8601, epoch seconds or milliseconds) as epoch seconds."""
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    number = float(value)  # type: ignore[arg-type]
    return number / 1000.0 if number > 1e11 else number


def _quiet(name: str, devices: int = 60, days: float = 1.0, seed: int = 5) -> FieldSimulator:
    """The channel alone: no faults, no events (no gaps, reboots, maintenance)."""
    return FieldSimulator(name, seed, devices=devices, days=days, faults=False, events=False)


@pytest.fixture(scope="module")
def plant_stream() -> tuple[FieldSimulator, list[FieldMessage]]:
    sim = _quiet("plant", devices=60, days=1.0)
    return sim, list(sim.messages())


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "bench" / "alert_quality.py"
    spec = importlib.util.spec_from_file_location("bench_alert_quality", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_alert_quality"] = module
    spec.loader.exec_module(module)
    return module


def test_there_are_profiles_and_they_differ() -> None:
    assert len(PROFILES) >= 2
    plant, cold = profile("plant"), profile("cold-chain")
    assert isinstance(plant, RealismProfile)
    differing = [k for k, v in plant.ranges().items() if cold.ranges()[k] != v]
    assert len(differing) >= 10, differing
    for p in PROFILES.values():
        for name, (low, high) in p.ranges().items():
            assert low <= high, (p.name, name)
        assert 0.0 < p.faulty_share < 0.5
        assert math.isclose(sum(w for _, w in p.models), 1.0)
    assert cold.share("zone_kinds", "freezer") > plant.share("zone_kinds", "freezer")
    with pytest.raises(ValueError, match="unknown realism profile"):
        profile("nowhere")


def test_same_profile_and_seed_same_bytes() -> None:
    def stream(name: str, seed: int) -> list[tuple[str, bytes, float]]:
        sim = FieldSimulator(name, seed, devices=25, days=0.3)
        return [(m.topic, m.payload, m.received_at) for m in sim.messages()]

    first = stream("cold-chain", 7)
    assert first == stream("cold-chain", 7)
    assert first != stream("cold-chain", 8)
    assert first != stream("plant", 7)
    assert [t for _, _, t in first] == sorted(t for _, _, t in first)  # receive order


def test_a_simulator_runs_once() -> None:
    sim = FieldSimulator("plant", 1, devices=5, days=0.01)
    list(sim.messages())
    with pytest.raises(RuntimeError):
        list(sim.messages())


def test_loss_duplicates_lateness_and_reordering_within_the_profile(
    plant_stream: tuple[FieldSimulator, list[FieldMessage]],
) -> None:
    sim, messages = plant_stream
    p = sim.profile
    telemetry = [m for m in messages if m.topic.endswith("/telemetry") and "/gw-" not in m.topic]
    copies = Counter((m.topic, m.payload) for m in telemetry)
    unique = len(copies)

    def within(measured: float, span: tuple[float, float], n: int) -> None:
        margin = 3.0 * math.sqrt(max(span[1], 1e-9) / n)  # binomial noise on n trials
        assert span[0] - margin <= measured <= span[1] + margin, (measured, span)

    intervals = [d.interval_s for d in sim.devices]
    low = p.expected_loss(min(intervals))[0]
    high = p.expected_loss(max(intervals))[1]
    within(1.0 - unique / sim.stats.sampled, (low, high), sim.stats.sampled)
    within(sum(n - 1 for n in copies.values()) / unique, p.duplicate_rate, unique)
    firsts: dict[tuple[str, bytes], FieldMessage] = {}
    for m in telemetry:
        firsts.setdefault((m.topic, m.payload), m)
    late = sum(1 for m in firsts.values() if m.received_at - m.sent_at >= p.late_delay_s[0] - 1)
    within(late / unique, p.late_share, unique)
    # out of order: received after a reading the same device took later
    newest: dict[str, int] = {}
    behind = 0
    for m in firsts.values():
        device, seq = m.topic.split("/")[2], orjson.loads(m.payload)["seq"]
        if seq < newest.get(device, 0):
            behind += 1
        newest[device] = max(newest.get(device, 0), seq)
    assert 0 < behind <= late


def test_skewed_clocks_are_a_few_and_within_range(
    plant_stream: tuple[FieldSimulator, list[FieldMessage]],
) -> None:
    sim, messages = plant_stream
    offsets: dict[str, list[float]] = {}
    for m in messages:
        if m.topic.endswith("/telemetry") and "/gw-" not in m.topic:
            body = orjson.loads(m.payload)
            if "ts" in body:
                offsets.setdefault(m.topic.split("/")[2], []).append(_ts(body["ts"]) - m.sent_at)
    skewed = {d: statistics.median(v) for d, v in offsets.items() if abs(statistics.median(v)) > 30}
    planned = {d.device_id: d.skew_s for d in sim.devices if d.skew_s}
    assert set(skewed) == set(planned) and 1 <= len(planned) <= max(1, 0.05 * len(sim.devices))
    low, high = sim.profile.skew_s
    assert all(low - 1 <= abs(s) <= high + 1 for s in skewed.values()), skewed
    assert {s > 0 for s in planned.values()} <= {True, False}


def test_sensors_report_on_their_step_and_humidity_saturates() -> None:
    sim = _quiet("cold-chain", devices=80, days=0.5, seed=3)
    steps = {("TH-200", "temperature_c"): 0.1, ("TH-200", "humidity_pct"): 0.5,
             ("VB-31", "temp"): 0.0625, ("PM-10", "temp_f"): 0.5, ("CT-40", "temp"): 0.1,
             ("CT-40", "rh"): 1.0}  # fmt: skip
    seen: Counter[tuple[str, str]] = Counter()
    humidity: list[float] = []
    for m in sim.messages():
        if not m.topic.endswith("/telemetry") or "/gw-" in m.topic:
            continue
        body = orjson.loads(m.payload)
        for (model, key), step in steps.items():
            if body["model"] == model and key in body:
                ratio = body[key] / step
                assert abs(ratio - round(ratio)) < 1e-6, (model, key, body[key])
                seen[(model, key)] += 1
        humidity += [body[k] for k in ("humidity_pct", "rh") if k in body]
    assert set(seen) == set(steps)
    assert max(humidity) == 100.0 and min(humidity) >= 0.0  # clipped at saturation
    aliases = {k for m in ("VB-31", "PM-10", "CT-40") for k in ("temp", "temp_f", "rh")}
    assert aliases <= {key for _, key in seen} | {"temp_f", "rh", "temp"}


def test_ground_truth_names_real_devices_and_a_minority_is_faulty() -> None:
    sim = FieldSimulator("plant", 2, devices=400, days=21)  # planning only: no messages
    devices = {d.device_id for d in sim.devices}
    faulty = sim.faulty_devices()
    assert faulty <= devices and 0.1 <= len(faulty) / len(devices) <= 0.25
    planted = {r.fault for r in sim.truth if not r.condition}
    assert set(DEVICE_FAULTS) <= planted
    assert {"gateway_outage", "gateway_overload", "gateway_imbalance"} <= planted
    for rec in sim.truth:
        kind = FAULT_KINDS[rec.fault]
        assert rec.alert_kinds == kind.alert_kinds and rec.condition == kind.condition
        assert rec.start_ts <= rec.end_ts
        if rec.subject_type == "device":
            assert rec.subject in devices
        elif rec.subject_type == "gateway":
            assert rec.subject in sim.fleet.gateways
        else:
            assert rec.subject in set(sim.fleet.gateways.values())
        if rec.fault == "drift":
            assert 2 / 30 <= abs(rec.fact("rate_pct_per_day")) <= 6 / 30
        if rec.fault == "battery_depletion":
            assert rec.fact("empty_at") == rec.end_ts
        if rec.fault in ("gateway_outage", "gateway_overload"):
            assert rec.affected and set(rec.affected) <= devices
    assert any(r.fact("empty_at") < sim.end_ts for r in sim.truth if r.fault == "battery_depletion")
    device_faults = [r for r in sim.truth if r.subject_type == "device" and not r.condition]
    assert len({r.subject for r in device_faults}) == len(device_faults)  # one fault a device


def test_benchmark_matches_a_small_fleet_end_to_end(bench: ModuleType) -> None:
    environ = {"FLEETWATCH_PIPELINE__TICK_INTERVAL_S": "60"}  # fewer ticks: a quicker test
    config = str(ROOT / "config" / "fleetwatch.example.toml")
    plant = bench.run_one("plant", 1, 30, 1.5, 300.0, config, environ)
    cold = bench.run_one("cold-chain", 1, 10, 0.5, 300.0, config, environ)
    assert plant["messages"] > 10_000 and plant["readings"] > 0
    results = {"plant": bench.summarise([plant]), "cold-chain": bench.summarise([cold])}
    text = bench.table(results)
    header = text.splitlines()[0]
    assert header == "| figure | plant (tuned) | cold-chain (held-out) |"
    rows = [line for line in text.splitlines()[2:] if line.startswith("| ")]
    assert rows and all(line.count(" | ") == 2 for line in rows)
    for fault in DEVICE_FAULTS:
        assert f"`{fault}`" in text
    for section in ("totals", "storms", "battery time to empty", "drift"):
        assert section in text
    offline = results["plant"]["faults"]["offline"]
    assert offline["planted"] >= 1 and offline["recall"] == 1.0
    assert results["plant"]["alert_kinds"]["device_offline"]["true"] >= 1
    assert results["plant"]["healthy_device_days"] == 1.5 * len(plant["healthy"])
