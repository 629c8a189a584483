"""The simulator's batteries and power faults: chemistries, draw faults, chargers, swaps,
temperature cycles and flat batteries, each visible in the stream; and the power detector
reading them."""

from __future__ import annotations

from typing import Any

import orjson

from bench.power import to_reading
from detectors.battery import CHEMISTRIES
from detectors.power import PowerDetector
from service.records import Reading, Signal
from service.simulator import FaultSpec, SimulationConfig, Simulator
from service.simulator.faults import FAULTS

START = 1_767_225_600.0
HOUR = 3_600.0
DAY = 86_400.0


def sim(*faults: str, devices: int = 30, interval: float = 600.0, chemistries: tuple[str, ...] = ("li_ion",)) -> Simulator:  # fmt: skip
    return Simulator(
        SimulationConfig(devices=devices, interval_s=interval, seed=5, start_ts=START,
                         faults=tuple(FaultSpec.parse(f) for f in faults),
                         chemistries=chemistries)
    )  # fmt: skip


def telemetry(simulator: Simulator, until: float) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in simulator.messages(until):
        if m.topic.endswith("/telemetry"):
            out.setdefault(m.topic.split("/")[2], []).append(orjson.loads(m.payload))
    return out


def planted_device(s: Simulator) -> str:
    (planted,) = s.planted()
    return planted.device_id


def test_the_new_faults_are_in_the_catalogue() -> None:
    assert {"short_circuit", "slow_leak", "radio_no_sleep", "charger", "battery_swap",
            "temperature_cycle"} <= set(FAULTS)  # fmt: skip


def test_each_chemistry_reports_voltages_on_its_own_curve() -> None:
    s = sim(devices=60, chemistries=("li_ion", "li_socl2", "alkaline_2aa"))
    by_chemistry: dict[str, list[float]] = {}
    for records in telemetry(s, START + DAY).values():
        for r in records:
            if "battery_chemistry" in r:
                by_chemistry.setdefault(r["battery_chemistry"], []).append(r["battery_v"])
    assert set(by_chemistry) == {"li_ion", "li_socl2", "alkaline_2aa"}
    for name, volts in by_chemistry.items():
        curve = CHEMISTRIES[name].curve
        assert curve[0][0] - 0.2 < min(volts) and max(volts) < curve[-1][0] + 0.05, name


def test_a_short_circuit_doubles_the_draw_of_mains_and_battery_devices() -> None:
    s = sim("short_circuit=30@43200")  # every eligible device, from hour 12
    shorted = {p.device_id for p in s.planted()}
    before = {d.device_id: d.draw_factor for d in s.devices}
    records = telemetry(s, START + DAY)
    mains = [d for d in s.devices if d.pack is None and d.device_id in shorted]
    battery = [d for d in s.devices if d.pack is not None and d.device_id in shorted]
    assert mains and battery
    for device in mains + battery:
        assert before[device.device_id] == 1.0 and device.draw_factor == 2.0
    for device in mains:
        early = [r["power_mw"] for r in records[device.device_id] if r["ts"] < START + 10 * HOUR]
        late = [r["power_mw"] for r in records[device.device_id] if r["ts"] > START + 14 * HOUR]
        assert 1.8 < (sum(late) / len(late)) / (sum(early) / len(early)) < 2.2


def test_a_slow_leak_grows_and_a_repair_ends_it() -> None:
    s = sim("slow_leak=1@0+864000:per_day=0.1")
    device = next(d for d in s.devices if d.device_id == planted_device(s))
    seen = []
    for m in s.messages(START + 12 * DAY):
        if f"/{device.device_id}/telemetry" in m.topic:
            seen.append((m.ts, device.extra_draw))
    assert max(extra for _, extra in seen) > 0.9  # ten days at +10% a day
    assert device.extra_draw == 0.0


def test_the_radio_bug_arrives_with_a_firmware_update_and_leaves_with_the_fix() -> None:
    s = sim("radio_no_sleep=1@3600+7200")
    device_id = planted_device(s)
    device = next(d for d in s.devices if d.device_id == device_id)
    base = device.firmware
    events = [
        orjson.loads(m.payload)
        for m in s.messages(START + 5 * HOUR)
        if m.topic.endswith(f"/{device_id}/firmware")
    ]
    assert [(e["from"], e["to"]) for e in events] == [
        (base, f"{base}-r2"),
        (f"{base}-r2", f"{base}-r3"),
    ]
    assert device.draw_factor == 1.0


def test_a_charger_raises_the_level_and_says_so_and_a_swap_restores_it() -> None:
    s = sim("charger=1@3600+36000:rate_c=0.2", "battery_swap=1@7200")
    planted = {p.fault: p.device_id for p in s.planted()}
    for device in s.devices:
        if device.pack is not None:
            device.pack.charge_mah = device.pack.capacity_mah * 0.3
    records = telemetry(s, START + 12 * HOUR)
    charged = records[planted["charger"]]
    assert any(r.get("power_source") == "charging" for r in charged)
    assert charged[-1]["battery_v"] > charged[0]["battery_v"] + 0.2
    swapped = next(d for d in s.devices if d.device_id == planted["battery_swap"])
    assert swapped.pack is not None and swapped.pack.level_pct > 99.0


def test_a_temperature_cycle_swings_and_the_cold_lowers_the_voltage() -> None:
    s = sim("temperature_cycle=1@0:amplitude_c=15")
    device_id = planted_device(s)
    records = telemetry(s, START + DAY)[device_id]
    temps = [r["temperature_c"] for r in records]
    assert max(temps) - min(temps) > 25
    if "battery_v" in records[0]:
        cold = [r["battery_v"] for r in records if r["temperature_c"] < 10]
        warm = [r["battery_v"] for r in records if r["temperature_c"] > 25]
        assert sum(cold) / len(cold) < sum(warm) / len(warm)


def test_a_flat_battery_silences_the_device() -> None:
    s = sim()
    victim, other = [d for d in s.devices if d.pack is not None][:2]
    assert victim.pack is not None
    victim.pack.charge_mah = victim.pack.capacity_mah * 0.0005  # about an hour left
    records = telemetry(s, START + DAY)
    assert victim.pack.empty
    assert len(records[victim.device_id]) < len(records[other.device_id]) / 4


def test_the_power_detector_sees_a_radio_bug_through_the_battery_voltage() -> None:
    s = sim("radio_no_sleep=12@432000", devices=40, interval=900.0,
            chemistries=("alkaline_2aa",))  # fmt: skip
    victims = {p.device_id for p in s.planted()}
    detector = PowerDetector()
    signals: list[Signal] = []
    batch: list[Reading] = []
    for m in s.messages(START + 9 * DAY):
        reading = to_reading(m.topic, m.payload)
        if reading is None:
            continue
        batch.append(reading)
        if len(batch) >= 500:
            signals += detector.process(batch)
            batch = []
    signals += detector.process(batch)
    firing = [s for s in signals if s.firing]
    assert {s.subject for s in firing} <= victims  # no healthy device flagged
    assert all(s.at > START + 5 * DAY for s in firing)
    by_voltage = [s for s in firing if s.evidence["source"] == "drain_per_day"]
    by_power = [s for s in firing if s.evidence["source"] == "power_mw"]
    assert by_voltage and by_power
    assert len(firing) == len(victims)  # every one of them, once
    assert all(s.evidence["ratio"] > 3 for s in by_power)  # 4x, seen within hours
    # a discharge rate is a fit over days: it shows the rise part-way when it is flagged
    assert all(s.evidence["ratio"] > 1.2 for s in by_voltage)
