"""Gateway load: overload against capacity and against what gateways report, site imbalance,
rebalancing moves that respect capacity and zones, roaming devices."""

from __future__ import annotations

import orjson

from detectors.gateway import GatewayConfig, GatewayDetector
from service.records import MessageKind, Reading, Severity

T0 = 1_767_225_600.0


def attach(detector: GatewayDetector, gateway: str, count: int, *, zone: str = "z1",
           site: str = "plant-a", prefix: str | None = None, at: float = T0) -> None:  # fmt: skip
    name = prefix or gateway
    detector.process(
        [Reading(f"{name}-{i}", at, at, {}, {"gateway": gateway, "site": site, "zone": zone})
         for i in range(count)]
    )  # fmt: skip


def test_balanced_site_raises_nothing() -> None:
    detector = GatewayDetector()
    for gateway in ("gw1", "gw2", "gw3"):
        attach(detector, gateway, 100)
    assert detector.tick(T0 + 60) == []
    report = detector.report(T0 + 60)["sites"]["plant-a"]
    assert report["cv"] == 0.0 and report["moves"] == []


def test_overloaded_gateway_and_imbalance_with_moves_within_capacity() -> None:
    detector = GatewayDetector(GatewayConfig(capacity_devices=250))
    attach(detector, "gw1", 180, zone="z1", prefix="a")
    attach(detector, "gw1", 140, zone="z2", prefix="b")
    attach(detector, "gw2", 60, zone="z2")
    attach(detector, "gw3", 40, zone="z3")
    signals = detector.tick(T0 + 60)
    assert [(s.kind, s.subject, s.severity) for s in signals] == [
        ("gateway_overloaded", "gw1", Severity.CRITICAL),  # 320 > 1.2 x 250
        ("gateway_imbalance", "plant-a", Severity.WARNING),
    ]
    moves = signals[1].evidence["moves"]
    moved = {m["to"]: m["devices"] for m in moves}
    assert all(m["from"] == "gw1" for m in moves)
    assert sum(moved.values()) == 320 - 140
    # gw2 already serves zone z2: the z2 devices go there first
    first = moves[0]
    assert first["to"] == "gw2" and first["zones"] == ["z2"]
    loads = {"gw1": 320 - sum(moved.values()), "gw2": 60 + moved["gw2"], "gw3": 40 + moved["gw3"]}
    assert all(load <= 250 for load in loads.values())
    assert "from gw1 to gw2" in signals[1].action


def test_a_gateway_reporting_strain_is_overloaded_below_its_capacity() -> None:
    detector = GatewayDetector()
    attach(detector, "gw1", 120)
    attach(detector, "gw2", 80)
    status = {"uplink_latency_ms": 900.0, "packet_loss_pct": 7.5, "cpu_pct": 95.0}
    detector.process([Reading("gw1", T0, T0, status, {"site": "plant-a", "role": "gateway"},
                              kind=MessageKind.STATUS)])  # fmt: skip
    detector.process([Reading("gw2", T0, T0, status, {"site": "plant-a", "role": "gateway"},
                              kind=MessageKind.STATUS)])  # fmt: skip
    signals = detector.tick(T0 + 60)
    assert [(s.kind, s.subject) for s in signals] == [("gateway_overloaded", "gw1")]
    assert signals[0].evidence["uplink_latency_ms"] == 900.0
    assert "packet loss 7.5%" in signals[0].summary


def test_roaming_devices_are_counted_where_they_were_heard_last() -> None:
    detector = GatewayDetector()
    attach(detector, "gw1", 10)
    detector.process([Reading("gw1-3", T0 + 5, T0 + 5, {}, {"gateway": "gw2", "site": "plant-a"})])
    report = detector.report(T0 + 10)["sites"]["plant-a"]["gateways"]
    assert report["gw1"]["devices"] == 9 and report["gw2"]["devices"] == 1


def test_overload_resolves_once_devices_move_away() -> None:
    detector = GatewayDetector(GatewayConfig(capacity_devices=120, active_window_s=600))
    attach(detector, "gw1", 130)
    attach(detector, "gw2", 70)
    fired = detector.tick(T0 + 60)
    assert [(s.kind, s.subject, s.firing) for s in fired] == [("gateway_overloaded", "gw1", True)]
    # 30 devices roam to gw2; the others keep reporting through gw1
    detector.process([Reading(f"gw1-{i}", T0 + 300, T0 + 300, {},
                              {"gateway": "gw2" if i < 30 else "gw1", "site": "plant-a"})
                      for i in range(130)])  # fmt: skip
    attach(detector, "gw2", 70, at=T0 + 300)
    cleared = detector.tick(T0 + 360)
    assert [(s.kind, s.subject, s.firing) for s in cleared] == [
        ("gateway_overloaded", "gw1", False)
    ]


def test_message_rate_is_tracked_per_gateway() -> None:
    detector = GatewayDetector(GatewayConfig(rate_smoothing=1.0))
    detector.process([Reading("d1", T0, T0, {}, {"gateway": "gw1"})])
    detector.tick(T0)
    for second in range(1, 61):
        detector.process([Reading("d1", T0 + second, T0 + second, {}, {"gateway": "gw1"})] * 2)
    detector.tick(T0 + 60)
    assert detector.report(T0 + 60)["sites"][""]["gateways"]["gw1"]["messages_per_s"] == 2.0


def test_state_round_trip() -> None:
    detector = GatewayDetector()
    attach(detector, "gw1", 300)
    attach(detector, "gw2", 20)
    detector.tick(T0 + 60)
    restored = GatewayDetector()
    restored.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    assert restored.report(T0 + 120) == detector.report(T0 + 120)
    assert restored.tick(T0 + 120) == detector.tick(T0 + 120) == []


def test_latency_rising_with_load_counts_as_strain_and_config_maps_devices() -> None:
    detector = GatewayDetector(
        GatewayConfig(active_window_s=10_000, device_gateways={"legacy-1": "gw2"})
    )
    attach(detector, "gw2", 60)
    detector.process([Reading("legacy-1", T0, T0, {}, {"site": "plant-a"})])
    signals = []
    for step in range(12):
        now = T0 + 60 * (step + 1)
        attach(detector, "gw1", 60 + 10 * step, at=now)  # load grows ...
        latency = 80.0 + 4.0 * (10 * step)  # ... and latency with it, still under the limit
        detector.process([Reading("gw1", now, now, {"uplink_latency_ms": latency},
                                  {"site": "plant-a", "role": "gateway"}, kind=MessageKind.STATUS)])  # fmt: skip
        signals += detector.tick(now)
    overloaded = [s for s in signals if s.kind == "gateway_overloaded"]
    assert [s.subject for s in overloaded] == ["gw1"]
    assert "rises with load" in overloaded[0].summary
    assert detector.report(T0 + 720)["sites"]["plant-a"]["gateways"]["gw2"]["devices"] == 61


def test_active_counts_kept_between_ticks_match_a_full_count() -> None:
    import random

    rng = random.Random(3)
    config = GatewayConfig(capacity_devices=6, active_window_s=900, min_site_devices=2,
                           min_excess_devices=1)  # fmt: skip
    live = GatewayDetector(config)
    where = {f"d{i}": rng.choice(["gw1", "gw2", "gw3"]) for i in range(30)}
    t = T0
    for _ in range(400):
        t += rng.uniform(10, 60)
        batch = []
        for device in where:
            if rng.random() < 0.02:
                where[device] = rng.choice(["gw1", "gw2", "gw3"])  # roams
            if rng.random() < 0.15:
                received = t - rng.uniform(0, 1_200) if rng.random() < 0.05 else t  # some late
                batch.append(Reading(device, received, received, {},
                                     {"gateway": where[device], "site": "s", "zone": "z"}))  # fmt: skip
        live.process(batch)
        reference = GatewayDetector(config)
        reference.load_state(orjson.loads(orjson.dumps(live.state_dict())))
        now = t + rng.uniform(-300, 60)  # now and then earlier than the tick before
        assert live.tick(now) == reference.tick(now)
        earlier = now - rng.uniform(0, 1_000)
        assert live.report(earlier) == reference.report(earlier)


def test_latency_history_keeps_the_last_ticks_and_survives_a_checkpoint() -> None:
    detector = GatewayDetector(GatewayConfig(load_history=12))
    for tick in range(20):
        status = {"uplink_latency_ms": 50.0 + tick}
        detector.process([Reading("gw1", T0 + tick, T0 + tick, status, {"role": "gateway"},
                                  kind=MessageKind.STATUS)])  # fmt: skip
        detector.tick(T0 + tick + 0.5)
    state = orjson.loads(orjson.dumps(detector.state_dict()))
    history = state["gateways"]["gw1"]["history"]
    assert history == [[0, 50.0 + t] for t in range(8, 20)]
    copy = GatewayDetector(GatewayConfig(load_history=12))
    copy.load_state(state)
    assert copy.state_dict() == state
    quiet = GatewayDetector()
    quiet.process([Reading("d1", T0, T0, {}, {"gateway": "gw2"})])
    assert quiet.state_dict()["gateways"]["gw2"]["status"] == {}
    assert quiet.state_dict()["gateways"]["gw2"]["history"] == []


def test_a_gateway_that_is_down_is_out_of_the_balance_and_never_a_receiver() -> None:
    # gw3 goes down (its devices fall silent) while the others' devices keep reporting;
    # counted at zero, it would make the site look imbalanced (loads 90/60/0) with moves
    # pointing at it
    detector = GatewayDetector(GatewayConfig(active_window_s=3600.0, down_after_s=1800.0))
    for minute in range(0, 181, 5):
        at = T0 + minute * 60
        attach(detector, "gw1", 90, at=at)
        attach(detector, "gw2", 60, at=at)
        if minute < 60:
            attach(detector, "gw3", 60, at=at)
        signals = detector.tick(at)
        assert [s.kind for s in signals if s.kind == "gateway_imbalance"] == [], minute
    report = detector.report(T0 + 180 * 60)["sites"]["plant-a"]
    assert report["gateways"]["gw3"]["down"] is True
    assert all("gw3" not in (m["from"], m["to"]) for m in report["moves"])
    # a survivor really overloaded: moves go only to the gateway that is up
    attach(detector, "gw1", 120, prefix="extra", at=T0 + 181 * 60)
    signals = detector.tick(T0 + 181 * 60)
    imbalance = [s for s in signals if s.kind == "gateway_imbalance"]
    assert imbalance and imbalance[0].evidence["moves"]
    assert {m["to"] for m in imbalance[0].evidence["moves"]} == {"gw2"}
    assert "gw3" not in imbalance[0].evidence["loads"]


def test_down_state_is_derived_again_after_a_restart() -> None:
    detector = GatewayDetector()
    attach(detector, "gw1", 30, at=T0)
    attach(detector, "gw2", 30, at=T0 + 7200)
    restored = GatewayDetector()
    restored.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    gateways = restored.report(T0 + 7200)["sites"]["plant-a"]["gateways"]
    assert (gateways["gw1"]["down"], gateways["gw2"]["down"]) == (True, False)


def test_a_gateway_whose_devices_all_moved_away_is_empty_not_down() -> None:
    detector = GatewayDetector(GatewayConfig(down_after_s=1800.0, min_excess_devices=5))
    attach(detector, "gw1", 30, at=T0)
    attach(detector, "gw2", 30, prefix="b", at=T0)
    # every device of gw2 moves to gw1 and keeps reporting there
    for minute in range(5, 121, 5):
        attach(detector, "gw1", 30, at=T0 + minute * 60)
        attach(detector, "gw1", 30, prefix="b", at=T0 + minute * 60)
    report = detector.report(T0 + 120 * 60)["sites"]["plant-a"]
    assert report["gateways"]["gw2"] == {**report["gateways"]["gw2"], "down": False, "devices": 0}
    assert [(m["from"], m["to"], m["devices"]) for m in report["moves"]] == [("gw1", "gw2", 30)]
