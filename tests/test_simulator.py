"""The simulator: deterministic, realistic, and every fault visible in the stream."""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest

from service.simulator import FAULTS, FaultSpec, SimulationConfig, Simulator, publish

START = 1_767_225_600.0


def sim(*faults: str, devices: int = 60, seed: int = 3, interval: float = 10.0) -> Simulator:
    return Simulator(
        SimulationConfig(devices=devices, interval_s=interval, seed=seed, start_ts=START,
                         faults=tuple(FaultSpec.parse(f) for f in faults))
    )  # fmt: skip


def collect(simulator: Simulator, until: float) -> dict[str, list[dict]]:
    """Telemetry by device, in one pass (a simulator's stream is consumed as it is read)."""
    out: dict[str, list[dict]] = {}
    for m in simulator.messages(until):
        if m.topic.endswith("/telemetry"):
            out.setdefault(m.topic.split("/")[2], []).append(orjson.loads(m.payload))
    return out


def test_same_seed_same_bytes_and_time_order() -> None:
    a = list(sim("battery_failing=2@30").messages(START + 600))
    b = list(sim("battery_failing=2@30").messages(START + 600))
    c = list(sim("battery_failing=2@30", seed=4).messages(START + 600))
    assert a == b and a != c
    times = [m.ts for m in a]
    assert times == sorted(times)
    assert len({m.topic.split("/")[2] for m in a}) == 60


def test_fleet_spreads_over_sites_zones_gateways_models() -> None:
    s = sim(devices=300)
    assert len({d.site for d in s.devices}) == 3
    assert len({(d.site, d.zone) for d in s.devices}) >= 10
    assert len({d.gateway for d in s.devices}) >= 6
    assert len({d.model.name for d in s.devices}) == 3
    first = orjson.loads(next(iter(s.messages(START + 60))).payload)
    assert {"ts", "seq", "model", "firmware", "gateway", "zone", "lat", "lon"} <= set(first)


def test_battery_failing_collapses_and_healthy_batteries_do_not() -> None:
    s = sim("battery_failing=1@60:collapse_s=60")
    (planted,) = s.planted()
    by_device = collect(s, START + 300)
    readings = by_device[planted.device_id]
    assert readings[-1]["battery_v"] < 3.2
    assert all(r["battery_v"] > 3.7 for r in readings if r["ts"] < planted.start_ts)
    healthy = [
        d.device_id for d in s.devices if d.model.battery and d.device_id != planted.device_id
    ]
    assert healthy and all(min(r["battery_v"] for r in by_device[d]) > 3.7 for d in healthy)


def test_battery_replaced_at_the_end_of_the_fault() -> None:
    s = sim("battery_failing=1@20+100:collapse_s=30")
    (planted,) = s.planted()
    readings = collect(s, START + 300)[planted.device_id]
    assert min(r["battery_v"] for r in readings) < 3.1
    assert readings[-1]["battery_v"] > 4.0


def test_overheating_and_drift_raise_temperature() -> None:
    s = sim("overheating=1@10:ramp_s=20", "sensor_drift=1@0:rate_c_per_h=360")
    hot, drifting = s.planted()
    by_device = collect(s, START + 600)
    assert max(r["temperature_c"] for r in by_device[hot.device_id]) > 80
    drift = by_device[drifting.device_id]
    assert drift[-1]["temperature_c"] - drift[0]["temperature_c"] > 40
    assert all(max(r["temperature_c"] for r in rows) < 40 for d, rows in by_device.items()
               if d not in (hot.device_id, drifting.device_id))  # fmt: skip


def test_gateway_overload_moves_devices_and_weakens_signal() -> None:
    s = sim("gateway_overload=5@0")
    by_device = collect(s, START + 60)
    for planted in s.planted():
        readings = by_device[planted.device_id]
        assert {r["gateway"] for r in readings} == {f"gw-{planted.site}-01"}
        assert all(r["rssi_dbm"] < -75 for r in readings)


def test_firmware_change_publishes_an_event_and_a_new_version() -> None:
    s = sim("firmware_change=1@30:version=6.6.6")
    (planted,) = s.planted()
    messages = [m for m in s.messages(START + 120) if f"/{planted.device_id}/" in m.topic]
    events = [orjson.loads(m.payload) for m in messages if m.topic.endswith("/firmware")]
    assert len(events) == 1 and events[0]["to"] == "6.6.6" and events[0]["event"] == "succeeded"
    assert orjson.loads(messages[-1].payload)["firmware"] == "6.6.6"


def test_silent_device_stops_then_uploads_its_backlog() -> None:
    s = sim("silent=1@30+60:graceful=1")
    (planted,) = s.planted()
    messages = [m for m in s.messages(START + 200) if f"/{planted.device_id}/" in m.topic]
    kinds = [m.topic.rsplit("/", 1)[1] for m in messages]
    assert "status" in kinds and "batch" in kinds
    gap = [m.ts for m in messages if m.topic.endswith("/telemetry")]
    assert max(b - a for a, b in itertools.pairwise(gap)) >= 60
    batch = orjson.loads(next(m.payload for m in messages if m.topic.endswith("/batch")))
    assert isinstance(batch, list) and len(batch) >= 5


def test_fault_specs() -> None:
    assert set(FAULTS) >= {"battery_failing", "sensor_drift", "overheating", "gateway_overload",
                           "firmware_change", "silent"}  # fmt: skip
    spec = FaultSpec.parse("overheating=2@5+30:peak_c=90,label=x")
    assert (spec.count, spec.start_s, spec.duration_s) == (2, 5.0, 30.0)
    assert dict(spec.params) == {"peak_c": 90.0, "label": "x"}
    for bad in ("nonsense", "silent=-1", "silent@x"):
        with pytest.raises(ValueError):
            FaultSpec.parse(bad)


async def test_publish_is_bounded_by_count() -> None:
    s = Simulator(SimulationConfig(devices=5, interval_s=0.01, start_ts=0.0))
    got: list[str] = []

    async def send(topic: str, payload: bytes) -> None:
        got.append(topic)

    sent = await asyncio.wait_for(
        publish(s, send, duration_s=60, max_messages=25, clock=lambda: 0.0), 10
    )
    assert sent == 25 == len(got)


def test_group_faults_hit_every_device_of_the_group_and_plant_the_group() -> None:
    import orjson as _orjson

    from service.simulator import FaultSpec as _Spec
    from service.simulator import SimulationConfig as _Config
    from service.simulator import Simulator as _Simulator

    config = _Config(devices=120, interval_s=60, seed=3,
                     faults=(_Spec.parse("gateway_down=1@600+1200"),))  # fmt: skip
    simulator = _Simulator(config)
    [planted] = simulator.planted()
    assert planted.fault == "gateway_down" and planted.device_id.startswith("gw-")
    behind = {d.device_id for d in simulator.devices if d.gateway == planted.device_id}
    start, end = planted.start_ts, planted.end_ts
    assert end is not None
    heard_during = set()
    heard_after = set()
    for message in simulator.messages(config.start_ts + 3600):
        body = _orjson.loads(message.payload)
        device = message.topic.split("/")[2]
        assert body["radio"] in {"lorawan", "wifi", "cellular"}
        if start <= message.ts < end:
            heard_during.add(device)
        elif message.ts >= end + 120:
            heard_after.add(device)
    assert behind and not behind & heard_during
    assert behind <= heard_after


def test_intermittent_and_fading_faults_lose_reports() -> None:
    from service.simulator import FaultSpec as _Spec
    from service.simulator import SimulationConfig as _Config
    from service.simulator import Simulator as _Simulator

    config = _Config(devices=20, interval_s=60, seed=4, faults=(
        _Spec.parse("intermittent=1:period_s=1800,outage_s=300"),
        _Spec.parse("fading_signal=1:rate_db_per_h=60"),
    ))  # fmt: skip
    simulator = _Simulator(config)
    counts: dict[str, int] = {}
    for message in simulator.messages(config.start_ts + 7200):
        device = message.topic.split("/")[2]
        counts[device] = counts.get(device, 0) + 1
    flaky, fading = (p.device_id for p in simulator.planted())
    healthy = max(counts.values())
    assert counts[flaky] < healthy * 0.9  # 5 of every 30 minutes lost
    assert counts.get(fading, 0) < healthy * 0.75  # link lost within the first 1.5 h


def test_firmware_campaign_reaches_a_models_devices_over_time() -> None:
    import orjson as _orjson

    from service.simulator import FaultSpec as _Spec
    from service.simulator import SimulationConfig as _Config
    from service.simulator import Simulator as _Simulator

    config = _Config(devices=60, interval_s=300, seed=2, faults=(_Spec.parse(
        "firmware_campaign=1@0+600:group=TH-200,version=1.5.0,spread_s=7200,p_fail=0,p_fail_site=0"),))  # fmt: skip
    simulator = _Simulator(config)
    events = [
        _orjson.loads(m.payload)["event"]
        for m in simulator.messages(config.start_ts + 4 * 3600)
        if m.topic.endswith("/firmware")
    ]
    th = [d for d in simulator.devices if d.model.name == "TH-200"]
    assert events.count("started") == events.count("succeeded") == len(th) > 0
    assert all(d.firmware == "1.5.0" for d in th)
    assert simulator.planted()[0].device_id == "TH-200"
