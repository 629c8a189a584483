"""The plan of a field simulation: which devices get which fault, and what else happens.

:func:`make_plan` draws, from the profile and one random generator, in this order:

1. the faulty devices (``faulty_share`` of the fleet, spread over :data:`DEVICE_FAULTS`,
   ``offline`` first) and their faults, with ground truth;
2. the events that are not faults: reboots, buffered short outages, relocations, battery
   swaps, calibrations, duty-cycle changes, skewed clocks, and the firmware campaign (TH-200
   from 1.4.2 to 1.5.0 in the weekend maintenance windows, some updates failing once);
3. the gateways' trouble: one outage, planned maintenance, and one site whose devices pile
   onto one gateway (overload and imbalance), with the devices each one explains.

>>> from service.simulator.field_fleet import build_field_fleet
>>> from service.simulator.realism import profile
>>> plant = profile("plant")
>>> fleet = build_field_fleet(plant, 60, interval_s=300.0, start_ts=0.0, rng=random.Random(1))
>>> plan = make_plan(fleet, plant, random.Random(2), 0.0, 7 * DAY_S)
>>> len(plan.faulty), sorted({r.fault for r in plan.truth if r.subject_type != "device"})
(12, ['gateway_imbalance', 'gateway_maintenance', 'gateway_outage', 'gateway_overload'])
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from service.simulator.faults import (
    BatteryFailing,
    BatterySwap,
    FadingSignal,
    Fault,
    GatewayDown,
    GatewayOverload,
    Overheating,
    RadioNoSleep,
    ShortCircuit,
    Silent,
    SlowLeak,
)
from service.simulator.field_faults import (
    DEVICE_FAULTS,
    AgeingSensor,
    ClusteredOutages,
    FieldEvent,
    FirmwareRegression,
    NoisySensor,
    StepSensor,
    StuckSensor,
    TruthRecord,
    outage_windows,
    truth,
)
from service.simulator.field_fleet import DAY_S, EPOCH_THURSDAY, FieldDevice, FieldFleet
from service.simulator.realism import RealismProfile

HOUR_S = 3_600.0
CAMPAIGN = ("TH-200", "1.4.2", "1.5.0")  # the example configuration's campaign th200-1.5
WEIGHTS = {"drift": 1.5, "battery_depletion": 1.5}  # the other device faults weigh 1


@dataclass(slots=True)
class Plan:
    """Everything a field simulation will do, drawn before the first message."""

    faults: dict[str, list[Fault]] = field(default_factory=dict)  # device id -> faults
    schedule: dict[str, list[tuple[float, str, dict[str, Any]]]] = field(default_factory=dict)
    truth: list[TruthRecord] = field(default_factory=list)
    events: list[FieldEvent] = field(default_factory=list)
    faulty: set[str] = field(default_factory=set)  # devices with a planted fault
    strain: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    # gateway -> (start, end, latency ms, loss %) while it is overloaded
    down: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # gateway -> (start, end) while it is down (outage or maintenance)

    def add_fault(self, device: FieldDevice, fault: Fault) -> None:
        self.faults.setdefault(device.device_id, []).append(fault)

    def at(self, device: FieldDevice, ts: float, kind: str, **params: Any) -> None:
        self.schedule.setdefault(device.device_id, []).append((ts, kind, params))


def _u(rng: random.Random, span: tuple[float, float]) -> float:
    return rng.uniform(span[0], span[1])


def magnitude(device: FieldDevice, metric: str) -> float:
    """The size a relative tolerance is judged against: the zone's typical reading, at
    least 10 (the drift detector's floor for temperature and humidity)."""
    climate = device.climate
    assert climate is not None
    typical = climate.setpoint_c if metric == "temperature_c" else climate.humidity_pct
    return max(abs(typical), 10.0)


def make_plan(
    fleet: FieldFleet,
    profile: RealismProfile,
    rng: random.Random,
    start: float,
    end: float,
    *,
    faults: bool = True,
    events: bool = True,
) -> Plan:
    """Draw the faults, the events and the gateways' trouble (see the module docstring)."""
    plan = Plan()
    if faults:
        _device_faults(fleet, profile, rng, start, end, plan)
    if events:
        _events(fleet, profile, rng, start, end, plan)
    _skew(fleet, profile, rng, plan)
    if faults or events:
        _gateways(fleet, profile, rng, start, end, plan, outage=faults, maintenance=events)
    for items in plan.schedule.values():
        items.sort(key=lambda item: item[0])
    plan.truth.sort(key=lambda r: (r.start_ts, r.fault, r.subject))
    plan.events.sort(key=lambda e: (e.ts, e.kind, e.subject))
    return plan


def _eligible(fault: str, device: FieldDevice, peers: dict[tuple[str, str, str], int]) -> bool:
    pack = device.pack
    if fault in ("stuck", "step", "drift", "noisy"):
        return peers.get((device.site, device.zone, "temperature_c"), 0) >= 4
    if fault in ("battery_failing", "radio_no_sleep", "battery_depletion"):
        return pack is not None and not device.solar_ma
    if fault in ("short_circuit", "slow_leak"):
        return (pack is not None and not device.solar_ma) or "power_mw" in device.model.metrics
    if fault == "overheating":
        return "temperature_c" in device.model.metrics
    if fault == "firmware_regression":
        return device.model.name != "TH-200"
    return True


def _device_faults(
    fleet: FieldFleet, profile: RealismProfile, rng: random.Random, start: float, end: float,
    plan: Plan,
) -> None:  # fmt: skip
    span = end - start
    total = round(profile.faulty_share * len(fleet.devices))
    weights = [(kind, WEIGHTS.get(kind, 1.0)) for kind in DEVICE_FAULTS]
    weights.sort(key=lambda kw: kw[0] != "offline")  # a small fleet still loses a device
    counts = dict.fromkeys(DEVICE_FAULTS, 0)
    weight_sum = sum(w for _, w in weights)
    exact = {k: total * w / weight_sum for k, w in weights}
    for kind in counts:
        counts[kind] = int(exact[kind])
    left = total - sum(counts.values())
    for kind, _ in sorted(weights, key=lambda kw: -(exact[kw[0]] - int(exact[kw[0]])))[:left]:
        counts[kind] += 1
    peers: dict[tuple[str, str, str], int] = {}
    for d in fleet.devices:
        for metric in d.model.metrics:
            key = (d.site, d.zone, metric)
            peers[key] = peers.get(key, 0) + 1
    taken: set[str] = set()
    regression_model: str | None = None
    for kind, _ in weights:
        pool = [d for d in fleet.devices if d.device_id not in taken and _eligible(kind, d, peers)]
        if kind == "firmware_regression" and pool:
            models = sorted({d.model.name for d in pool})
            regression_model = max(models, key=lambda m: sum(d.model.name == m for d in pool))
            pool = [d for d in pool if d.model.name == regression_model]
        for device in rng.sample(pool, min(counts[kind], len(pool))):
            taken.add(device.device_id)
            plan.faulty.add(device.device_id)
            t0 = start + span * rng.uniform(0.1, 0.6)
            plan.truth.append(_plant(kind, device, rng, t0, start, end, plan))


def _plant(
    kind: str, device: FieldDevice, rng: random.Random, t0: float, start: float, end: float,
    plan: Plan,
) -> TruthRecord:  # fmt: skip
    """Put one fault on ``device`` starting at ``t0``; its ground truth."""
    span = end - start
    t1 = end
    facts: dict[str, float | str] = {}
    params: dict[str, Any] = {}
    fault: Fault | None = None
    metric = "temperature_c"
    if kind in ("stuck", "step", "drift", "noisy") and "humidity_pct" in device.model.metrics:
        metric = "humidity_pct" if rng.random() < 0.3 else metric
    size = magnitude(device, metric)
    if kind == "offline":
        t0 = start + span * rng.uniform(0.1, 0.8)
        fault = Silent(device=device, start_ts=t0, end_ts=None)
    elif kind == "intermittent":
        windows = outage_windows(rng, t0, end, (3.0, 8.0))
        fault = ClusteredOutages(device=device, start_ts=t0, end_ts=None,
                                 params={"windows": windows})  # fmt: skip
        facts["outages"] = float(len(windows))
    elif kind == "fading_signal":
        per_day = rng.uniform(3.0, 10.0)
        fault = FadingSignal(device=device, start_ts=t0, end_ts=None,
                             params={"rate_db_per_h": per_day / 24.0})  # fmt: skip
        facts["rate_db_per_day"] = round(per_day, 3)
    elif kind == "stuck":
        fault = StuckSensor(device=device, start_ts=t0, end_ts=None, params={"metric": metric})
    elif kind == "step":
        share = rng.uniform(0.06, 0.15)
        sign = -1.0 if metric == "humidity_pct" and size > 70 else rng.choice((-1.0, 1.0))
        params = {"metric": metric, "offset": sign * share * size}
        fault = StepSensor(device=device, start_ts=t0, end_ts=None, params=params)
        facts["offset_pct"] = round(100 * sign * share, 3)
    elif kind == "drift":
        t0 = start + span * rng.uniform(0.05, 0.3)
        sign = -1.0 if metric == "humidity_pct" and size > 70 else rng.choice((-1.0, 1.0))
        pct_per_day = sign * rng.uniform(2.0, 6.0) / 30.0
        params = {"metric": metric, "per_day": pct_per_day / 100.0 * size}
        fault = AgeingSensor(device=device, start_ts=t0, end_ts=None, params=params)
        facts.update(rate_pct_per_day=round(pct_per_day, 5), magnitude=round(size, 3))
    elif kind == "noisy":
        sigma = max(5.0 * device.noise.get(metric, 0.1), 0.03 * size)
        fault = NoisySensor(device=device, start_ts=t0, end_ts=None,
                            params={"metric": metric, "sigma": sigma})  # fmt: skip
    elif kind == "battery_failing":
        collapse = rng.uniform(2 * HOUR_S, 24 * HOUR_S)
        t1 = min(end, t0 + collapse + rng.uniform(0.5, 2.0) * DAY_S)
        fault = BatteryFailing(device=device, start_ts=t0, end_ts=t1 if t1 < end else None,
                               params={"collapse_s": collapse})  # fmt: skip
    elif kind == "short_circuit":
        fault = ShortCircuit(device=device, start_ts=t0, end_ts=None,
                             params={"factor": rng.uniform(3.0, 6.0)})  # fmt: skip
    elif kind == "slow_leak":
        fault = SlowLeak(device=device, start_ts=t0, end_ts=None,
                         params={"per_day": rng.uniform(0.1, 0.3)})  # fmt: skip
    elif kind == "radio_no_sleep":
        fault = RadioNoSleep(device=device, start_ts=t0, end_ts=None,
                             params={"factor": rng.uniform(3.0, 5.0)})  # fmt: skip
    elif kind == "overheating":
        t0 = start + span * rng.uniform(0.1, 0.9)
        t1 = min(end, t0 + rng.uniform(3 * HOUR_S, 12 * HOUR_S))
        fault = Overheating(device=device, start_ts=t0, end_ts=t1,
                            params={"peak_c": rng.uniform(75.0, 95.0),
                                    "ramp_s": rng.uniform(HOUR_S, 3 * HOUR_S)})  # fmt: skip
    elif kind == "firmware_regression":
        major, minor, *_ = [*device.firmware.split("."), "0", "0"][:3]
        version = f"{major}.{int(minor) + 1}.0-rc1"
        fault = FirmwareRegression(device=device, start_ts=t0, end_ts=None,
                                   params={"version": version,
                                           "period_s": rng.uniform(2 * HOUR_S, 6 * HOUR_S)})  # fmt: skip
        facts["version"] = version
    elif kind == "battery_depletion":
        pack = device.pack
        assert pack is not None
        empty_in = rng.uniform(0.3 * span, span + 25 * DAY_S)
        level = rng.uniform(4.0, 20.0)
        pack.charge_mah = pack.capacity_mah * level / 100.0
        device.base_ma = pack.charge_mah / (empty_in / HOUR_S)
        empty_at = start + empty_in
        t0, t1 = max(start, empty_at - 30 * DAY_S), empty_at
        facts.update(empty_at=empty_at, start_level_pct=round(level, 2),
                     chemistry=pack.chemistry.name, vendor=device.vendor)  # fmt: skip
    if fault is not None:
        plan.add_fault(device, fault)
    if kind in ("stuck", "step", "drift", "noisy"):
        facts["metric"] = metric
    return truth(kind, device.device_id, device.site, t0, t1, facts=facts)


def _events(
    fleet: FieldFleet, profile: RealismProfile, rng: random.Random, start: float, end: float,
    plan: Plan,
) -> None:  # fmt: skip
    span = end - start
    days = span / DAY_S
    zones_of: dict[str, list[str]] = {}
    for site, zone in fleet.climates:
        zones_of.setdefault(site, []).append(zone)
    for device in fleet.devices:
        healthy = device.device_id not in plan.faulty
        # reboots and buffered short outages happen to every device
        for _ in range(_poisson(rng, _u(rng, profile.reboot_per_day) * days)):
            ts = rng.uniform(start, end)
            plan.at(device, ts, "reboot")
            plan.events.append(FieldEvent("reboot", device.device_id, ts, ts))
        for _ in range(_poisson(rng, _u(rng, profile.gap_per_day) * days)):
            ts, length = rng.uniform(start, end), _u(rng, profile.gap_s)
            plan.at(device, ts, "gap", until=ts + length)
            plan.events.append(FieldEvent("buffered_gap", device.device_id, ts, ts + length))
        if not healthy:
            continue
        if rng.random() < profile.relocation_share and len(zones_of[device.site]) > 1:
            ts = start + span * rng.uniform(0.1, 0.9)
            zone = rng.choice([z for z in zones_of[device.site] if z != device.zone])
            plan.at(device, ts, "relocate", zone=zone,
                    gateway=fleet.zone_gateway(device.site, zone))  # fmt: skip
            plan.events.append(FieldEvent("relocation", device.device_id, ts, ts))
        if device.pack is not None and rng.random() < profile.swap_share:
            ts = start + span * rng.uniform(0.1, 0.9)
            plan.add_fault(device, BatterySwap(device=device, start_ts=ts, end_ts=None))
            plan.events.append(FieldEvent("battery_swap", device.device_id, ts, ts))
        if "temperature_c" in device.model.metrics and rng.random() < profile.calibration_share:
            ts = start + span * rng.uniform(0.1, 0.9)
            plan.at(device, ts, "calibrate", metric="temperature_c")
            plan.events.append(FieldEvent("calibration", device.device_id, ts, ts))
        if rng.random() < profile.interval_change_share:
            ts = start + span * rng.uniform(0.1, 0.9)
            plan.at(device, ts, "duty", factor=rng.choice((0.5, 2.0)))
            plan.events.append(FieldEvent("duty_cycle", device.device_id, ts, ts))
    _campaign(fleet, profile, rng, start, end, plan)


def _campaign(
    fleet: FieldFleet, profile: RealismProfile, rng: random.Random, start: float, end: float,
    plan: Plan,
) -> None:  # fmt: skip
    """TH-200s go from 1.4.2 to 1.5.0, a growing share each weekend maintenance window
    (Sat and Sun 00:00-06:00 UTC); ``update_fail_share`` fail once and retry a window later.
    Until updated they run a version the advisory lists (a condition, not a fault)."""
    model, old, new = CAMPAIGN
    windows = []
    day = int(start // DAY_S)
    while day * DAY_S < end:
        if (day + EPOCH_THURSDAY) % 7 in (5, 6) and day * DAY_S >= start:
            windows.append(day * DAY_S)
        day += 1
    for device in fleet.devices:
        if device.model.name != model or device.firmware != old:
            continue
        first = None
        if windows:  # later windows take more devices; a fifth is not reached in time
            pick = rng.choices(range(len(windows) + 1),
                               weights=[*(i + 1 for i in range(len(windows))), 0.25 * len(windows)])[0]  # fmt: skip
            first = windows[pick] if pick < len(windows) else None
        done = end
        if first is not None:
            ts = first + rng.uniform(0.0, 5.0 * HOUR_S)
            fail = rng.random() < profile.update_fail_share
            plan.at(device, ts, "update", version=new, fail=fail, minutes=rng.uniform(2, 12))
            plan.events.append(FieldEvent("firmware_update", device.device_id, ts, ts))
            if fail:
                retry = [w for w in windows if w > first + 1.0]
                if retry:
                    again = retry[0] + rng.uniform(0.0, 5.0 * HOUR_S)
                    plan.at(device, again, "update", version=new, fail=False,
                            minutes=rng.uniform(2, 12))  # fmt: skip
                    done = again
                plan.truth.append(truth("update_failed", device.device_id, device.site, ts, done))
            else:
                done = ts
        plan.truth.append(truth("vulnerable_firmware", device.device_id, device.site, start, done,
                                facts={"version": old, "advisory": "FW-2026-001"}))  # fmt: skip


def _skew(fleet: FieldFleet, profile: RealismProfile, rng: random.Random, plan: Plan) -> None:
    """A few clocks minutes fast or slow (at least one)."""
    count = max(1, round(_u(rng, profile.skewed_devices) * len(fleet.devices)))
    for device in rng.sample(fleet.devices, min(count, len(fleet.devices))):
        device.skew_s = rng.choice((-1.0, 1.0)) * _u(rng, profile.skew_s)


def _gateways(
    fleet: FieldFleet, profile: RealismProfile, rng: random.Random, start: float, end: float,
    plan: Plan, *, outage: bool, maintenance: bool,
) -> None:  # fmt: skip
    span = end - start
    names = sorted(fleet.gateways)
    sites = sorted(set(fleet.gateways.values()))
    used: set[str] = set()
    overload_site = rng.choice(sites) if outage else None
    if overload_site is not None and profile.gateways_per_site > 1:
        target = f"gw-{overload_site}-01"
        t0 = start + span * rng.uniform(0.2, 0.5)
        t1 = min(end, t0 + span * rng.uniform(0.25, 0.4))
        movers = [d for d in fleet.devices if d.site == overload_site and d.gateway != target
                  and d.device_id not in plan.faulty and "rssi_dbm" in d.model.metrics]  # fmt: skip
        moved = rng.sample(movers, round(0.45 * len(movers)))
        for device in moved:
            plan.add_fault(device, GatewayOverload(device=device, start_ts=t0, end_ts=t1,
                                                   params={"rssi_loss_db": rng.uniform(2.0, 6.0)}))  # fmt: skip
        latency, loss = rng.uniform(600.0, 1500.0), rng.uniform(6.0, 15.0)
        plan.strain.setdefault(target, []).append((t0, t1, latency, loss))
        ids = tuple(sorted(d.device_id for d in moved))
        facts: dict[str, float | str] = {"moved": float(len(moved)), "latency_ms": round(latency, 1),
                                         "loss_pct": round(loss, 2)}  # fmt: skip
        plan.truth.append(truth("gateway_overload", target, overload_site, t0, t1,
                                facts=facts, affected=ids))  # fmt: skip
        plan.truth.append(truth("gateway_imbalance", overload_site, overload_site, t0, t1,
                                facts=facts, affected=ids))  # fmt: skip
        used.add(target)
    downs: list[tuple[str, str, float, float]] = []
    if outage:
        choices = [g for g in names if fleet.gateways[g] != overload_site] or names
        gateway = rng.choice(choices)
        t0 = start + span * rng.uniform(0.2, 0.75)
        downs.append(("gateway_outage", gateway, t0, min(end, t0 + rng.uniform(2.0, 8.0) * HOUR_S)))
        used.add(gateway)
    if maintenance:
        free = [g for g in names if g not in used]
        for gateway in rng.sample(free, min(profile.maintenance_gateways, len(free))):
            t0 = start + span * rng.uniform(0.1, 0.9)
            downs.append(("gateway_maintenance", gateway, t0,
                          min(end, t0 + _u(rng, profile.maintenance_s))))  # fmt: skip
    for kind, gateway, t0, t1 in downs:
        plan.down.setdefault(gateway, []).append((t0, t1))
        for device in fleet.devices:
            plan.add_fault(device, GatewayDown(device=device, start_ts=t0, end_ts=t1,
                                               params={"group": gateway}))  # fmt: skip
        behind = tuple(sorted(d.device_id for d in fleet.devices
                              if gateway in _gateways_during(d, plan, t0, t1)))  # fmt: skip
        plan.truth.append(truth(kind, gateway, fleet.gateways[gateway], t0, t1, affected=behind))
        if kind == "gateway_maintenance":
            plan.events.append(FieldEvent(kind, gateway, t0, t1))


def _gateways_during(device: FieldDevice, plan: Plan, t0: float, t1: float) -> set[str]:
    """The gateways ``device`` talks through at some moment between ``t0`` and ``t1``."""
    timeline = [(float("-inf"), device.gateway)]
    for ts, kind, params in sorted(plan.schedule.get(device.device_id, ()), key=lambda x: x[0]):
        if kind == "relocate":
            timeline.append((ts, str(params["gateway"])))
    for fault in plan.faults.get(device.device_id, ()):
        if isinstance(fault, GatewayOverload):
            timeline.append((fault.start_ts, f"gw-{device.site}-01"))
            if fault.end_ts is not None:
                timeline.append((fault.end_ts, timeline[-2][1]))
    timeline.sort(key=lambda x: x[0])
    out: set[str] = set()
    for i, (ts, gateway) in enumerate(timeline):
        until = timeline[i + 1][0] if i + 1 < len(timeline) else float("inf")
        if ts <= t1 and until >= t0:
            out.add(gateway)
    return out


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson count with the given mean (Knuth's method; means here are small)."""
    if mean <= 0:
        return 0
    limit, count, product = pow(2.718281828459045, -mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count
