"""Connectivity detector on synthetic fleets: offline, gateway outages, intermittent links,
fading signal, batched uploads, clock skew and outage patterns."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import orjson
import pytest

from detectors.connectivity import ConnectivityConfig, ConnectivityDetector
from service.records import Reading, Severity, Signal

T0 = 1_767_225_600.0  # midnight UTC
INTERVAL = 60.0


def meta(
    gateway: str, zone: str = "z1", site: str = "plant-a", radio: str = "wifi"
) -> dict[str, str]:
    return {"gateway": gateway, "zone": zone, "site": site, "radio": radio}


def run_fleet(
    detector: ConnectivityDetector,
    devices: dict[str, dict[str, str]],
    until: float,
    *,
    silent: Callable[[str, float], bool] = lambda device, t: False,
    start: float = T0,
    interval: float = INTERVAL,
    tick_every: float = 10.0,
    seed: int = 1,
    metrics: Callable[[str, float], dict[str, float]] = lambda device, t: {},
) -> list[Signal]:
    """Every device reports every ``interval`` (with jitter) unless ``silent``; tick often."""
    rng = random.Random(seed)
    next_report = {d: start + rng.uniform(0, interval) for d in devices}
    signals: list[Signal] = []
    t = start
    while t < until:
        t += tick_every
        batch = []
        for device, due in next_report.items():
            while due <= t:
                if not silent(device, due):
                    batch.append(
                        Reading(device, due, due + 0.05, metrics(device, due), devices[device])
                    )
                due += interval * rng.uniform(0.9, 1.1)
            next_report[device] = due
        batch.sort(key=lambda r: r.received_at)
        signals += detector.process(batch)
        signals += detector.tick(t)
    return signals


def kinds(signals: list[Signal], firing: bool = True) -> list[tuple[str, str]]:
    return [(s.kind, s.subject) for s in signals if s.firing is firing]


def test_a_dead_gateway_is_one_alert_within_two_intervals_and_no_device_alerts() -> None:
    devices = {f"d{g}{i}": meta(f"gw{g}") for g in range(3) for i in range(10)}
    death, revival = T0 + 3600, T0 + 3 * 3600
    detector = ConnectivityDetector()

    def silent(device: str, t: float) -> bool:
        return device.startswith("d1") and death <= t < revival

    signals = run_fleet(detector, devices, T0 + 4 * 3600, silent=silent)
    down = [s for s in signals if s.kind == "gateway_down" and s.firing]
    assert [(s.subject, s.severity) for s in down] == [("gw1", Severity.CRITICAL)]
    assert down[0].at - death <= 2 * INTERVAL + 10
    assert [s for s in signals if s.kind == "device_offline"] == []
    cleared = [s for s in signals if s.kind == "gateway_down" and not s.firing]
    assert len(cleared) == 1 and revival <= cleared[0].at <= revival + 2 * INTERVAL
    assert detector.gateways_down == {}


def test_a_silent_device_goes_offline_then_persistent_then_recovers() -> None:
    devices = {f"d{i}": meta("gw0") for i in range(10)}
    gone, back = T0 + 3600, T0 + 3 * 3600
    detector = ConnectivityDetector()
    signals = run_fleet(
        detector, devices, T0 + 4 * 3600, silent=lambda d, t: d == "d3" and gone <= t < back
    )
    offline = [s for s in signals if s.kind == "device_offline"]
    assert [(s.subject, s.firing, s.severity) for s in offline] == [
        ("d3", True, Severity.WARNING),
        ("d3", True, Severity.CRITICAL),
        ("d3", False, Severity.WARNING),
    ]
    assert offline[0].at - gone <= 3 * INTERVAL * 1.1 + 2 * INTERVAL
    assert offline[1].evidence["class"] == "persistent"
    assert [s for s in signals if s.kind == "gateway_down"] == []


def test_many_short_gaps_are_intermittent_not_an_outage() -> None:
    devices = {f"d{i}": meta("gw0") for i in range(6)}
    detector = ConnectivityDetector()

    def silent(device: str, t: float) -> bool:
        # d0 misses 3 reports every two hours
        return device == "d0" and (t - T0) % 7200 < 3 * INTERVAL

    signals = run_fleet(detector, devices, T0 + 12 * 3600, silent=silent)
    raised = [s for s in signals if s.kind == "intermittent_connectivity" and s.firing]
    assert [s.subject for s in raised] == ["d0"]
    assert raised[0].evidence["gaps"] >= 4
    # once the link is known to be intermittent, its short drop-outs raise nothing more
    later = [s for s in signals if s.at > raised[0].at and s.firing]
    assert later == []
    assert {s.subject for s in signals} == {"d0"}


def test_batched_uploads_and_skewed_clocks_are_not_outages() -> None:
    detector = ConnectivityDetector()
    signals: list[Signal] = []
    info = meta("gw0")
    for hour in range(1, 24):
        received = T0 + hour * 3600
        # an hourly upload of 12 buffered readings, all received together
        batch = [
            Reading("logger", received - 3600 + 300 * k, received, {"t": 1.0}, info)
            for k in range(12)
        ]
        # a device whose clock is two hours ahead but that reports every minute
        batch += [
            Reading("skewed", received + 7200 - 60 * k, received - 60 * k, {}, info)
            for k in range(60, 0, -1)
        ]
        batch.sort(key=lambda r: r.received_at)
        signals += detector.process(batch)
        signals += detector.tick(received)
    assert signals == []
    assert abs(detector.expected_interval("logger") - 3600) < 60  # type: ignore[operator]
    assert abs(detector.expected_interval("skewed") - 60) < 5  # type: ignore[operator]


def test_fading_signal_is_predicted_before_the_link_is_lost() -> None:
    devices = {"fading": meta("gw0"), "steady": meta("gw0")}
    detector = ConnectivityDetector()
    rng = random.Random(3)

    def rssi(device: str, t: float) -> dict[str, float]:
        hours = (t - T0) / 3600
        base = -80.0 - (2.0 * hours if device == "fading" else 0.0)
        return {"rssi_dbm": base + rng.gauss(0, 1.0)}

    signals = run_fleet(detector, devices, T0 + 6 * 3600, metrics=rssi, interval=300, tick_every=60)
    firing = [s for s in signals if s.kind == "signal_degrading" and s.firing]
    assert [s.subject for s in firing] == ["fading"]
    slope = firing[0].evidence["slope_per_h"]
    assert -3.0 < slope < -1.0
    # -80 dBm falling 2 dB/h reaches -115 dBm 17.5 h after the start
    loss_at = firing[0].evidence["predicted_loss_at"]
    assert loss_at.startswith("2026-01-01T1")


def test_outages_at_one_hour_in_one_zone_are_found_as_patterns() -> None:
    devices = {f"a{i}": meta("gw0", zone="z1") for i in range(20)}
    devices |= {f"b{i}": meta("gw1", zone="z2") for i in range(10)}
    devices |= {f"c{i}": meta("gw2", zone="z3", site="plant-b", radio="lorawan") for i in range(10)}
    detector = ConnectivityDetector(ConnectivityConfig(pattern_window_s=6 * 86_400))

    def silent(device: str, t: float) -> bool:
        hour = ((t - T0) % 86_400) / 3600
        in_shift = device.startswith("b") and 14.0 <= hour < 14.1  # a machine runs at 14:00
        flaky_radio = device.startswith("c") and (t - T0) % 9000 < 2 * INTERVAL
        return in_shift or flaky_radio

    run_fleet(detector, devices, T0 + 5 * 86_400, silent=silent, tick_every=60)
    report = detector.report(T0 + 5 * 86_400)
    orjson.dumps(report)  # it is published as JSON
    hours = report["by_hour"]
    assert hours["concentrated"] and 14 in [h["hour_utc"] for h in hours["hours"]]
    zones = [tuple(f["group"]) for f in report["by_zone"]["findings"]]
    assert ("plant-a", "z2") in zones and ("plant-a", "z1") not in zones
    technologies = [f["group"] for f in report["by_technology"]["findings"]]
    assert technologies == ["lorawan"]


def test_roaming_devices_follow_their_gateway_and_switches_are_reported() -> None:
    detector = ConnectivityDetector()
    detector.process([Reading("d1", T0, T0, {}, meta("gw0", radio="wifi"))])
    detector.process([Reading("d1", T0 + 60, T0 + 60, {}, meta("gw1", radio="cellular"))])
    report = detector.report(T0 + 120)
    assert report["technology_switches"] == [
        {"device_id": "d1", "switches": 1, "technology": "cellular"}
    ]
    assert "d1" in detector._gateways["gw1"] and "d1" not in detector._gateways["gw0"]


def test_state_round_trip_carries_on_identically() -> None:
    devices = {f"d{i}": meta(f"gw{i % 2}") for i in range(8)}
    gone = T0 + 2 * 3600
    silent = lambda d, t: d == "d1" and t >= gone  # noqa: E731
    first = ConnectivityDetector()
    run_fleet(first, devices, gone, silent=silent)
    restored = ConnectivityDetector()
    restored.load_state(orjson.loads(orjson.dumps(first.state_dict())))
    later_first = run_fleet(first, devices, gone + 3600, silent=silent, start=gone, seed=9)
    later_restored = run_fleet(restored, devices, gone + 3600, silent=silent, start=gone, seed=9)
    assert later_first == later_restored
    assert kinds(later_first) == [("device_offline", "d1"), ("device_offline", "d1")]


def test_an_offline_status_message_is_not_a_sign_of_life() -> None:
    from service.records import MessageKind

    def offline_at(goodbye: bool) -> float:
        detector = ConnectivityDetector()
        devices = {f"d{i}": meta("gw-1") for i in range(5)}
        silent_from = T0 + 3600
        signals = run_fleet(detector, devices, silent_from, silent=lambda d, t: False)
        if goodbye:  # the broker's last will, or a device that says goodbye, as it goes
            bye = Reading("d0", silent_from, silent_from + 0.05, {},
                          {"state": "offline"}, kind=MessageKind.STATUS)  # fmt: skip
            signals += detector.process([bye])
        t = silent_from
        while t < silent_from + 3600:
            t += 10.0
            live = [Reading(d, t, t + 0.05, {}, devices[d]) for d in devices if d != "d0"
                    and int(t) % 60 == 0]  # fmt: skip
            signals += detector.process(live)
            signals += detector.tick(t)
        fired = [s for s in signals if s.firing and s.kind == "device_offline"]
        assert {s.subject for s in fired} == {"d0"}  # (it may escalate once it persists)
        return fired[0].at

    assert offline_at(goodbye=True) == offline_at(goodbye=False)


def _recounted(detector: ConnectivityDetector) -> ConnectivityDetector:
    """A detector restored from ``detector``'s checkpoint: its next tick counts every device."""
    fresh = ConnectivityDetector(detector.config)
    fresh.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    return fresh


def test_deadline_ticks_raise_what_a_full_recount_raises_at_the_same_tick() -> None:
    rng = random.Random(5)
    config = ConnectivityConfig(min_offline_s=0, persistent_s=900, active_window_s=3_000)
    live = ConnectivityDetector(config)
    gateways = ["gw1", "gw2", "gw3"]
    devices = {f"d{i}": rng.choice(gateways) for i in range(24)}
    outages = {
        d: (rng.uniform(0, 8_000), rng.uniform(200, 4_000)) for d in rng.sample(sorted(devices), 10)
    }
    t, ticks, fired = T0, 0, 0
    while t < T0 + 12_000:
        t += rng.uniform(5, 40)
        batch = []
        for device, gateway in devices.items():
            start, length = outages.get(device, (math.inf, 0.0))
            down = start <= t - T0 < start + length or (
                gateway == "gw2" and 5_000 <= t - T0 < 7_000
            )
            if not down and rng.random() < 0.4:
                if rng.random() < 0.01:
                    devices[device] = gateway = rng.choice(gateways)  # roams
                batch.append(Reading(device, t, t, {}, meta(gateway)))
        live.process(batch)
        if rng.random() < 0.5:
            now = t + rng.uniform(-60, 120)  # now and then earlier than the tick before
            reference = _recounted(live)
            expected = reference.tick(now)
            assert live.tick(now) == expected
            ticks += 1
            fired += len(expected)
    assert ticks > 100 and fired > 10


def test_checkpoint_without_deadlines_resumes_alerting_on_time() -> None:
    detector = ConnectivityDetector(ConnectivityConfig(min_offline_s=0))
    for t in range(0, 600, 60):
        detector.process([Reading("d1", T0 + t, T0 + t, {}, meta("gw1"))])
    restored = _recounted(detector)
    limit = restored.device_view("d1")["offline_after_s"]  # type: ignore[index]
    assert limit == detector.device_view("d1")["offline_after_s"]  # type: ignore[index]
    assert restored.tick(T0 + 540 + limit - 30) == []
    assert [s.kind for s in restored.tick(T0 + 540 + limit + 30)] == ["device_offline"]
    assert restored.device_view("d1")["offline"] is True  # type: ignore[index]


def test_per_device_columns_follow_each_device_through_a_checkpoint() -> None:
    def feed(detector: ConnectivityDetector, steps: range) -> list[Signal]:
        out: list[Signal] = []
        for step in steps:
            t = 60.0 * step
            quiet = 3 if 10 <= step < 20 else -1  # d3 silent for ten minutes, then back
            batch = [Reading(f"d{i}", t + i, t + i, {"rssi_dbm": -70.0 - i}, {"gateway": "g"})
                     for i in range(4) if i != quiet]  # fmt: skip
            out += detector.process(batch) + detector.tick(t + 30)
        return out

    first = ConnectivityDetector(ConnectivityConfig(min_offline_s=0, signal_spacing_s=60))
    assert [(s.subject, s.firing) for s in feed(first, range(15))] == [("d3", True)]
    second = ConnectivityDetector(first.config)
    second.load_state(orjson.loads(orjson.dumps(first.state_dict())))
    for i in range(4):
        assert second.expected_interval(f"d{i}") == first.expected_interval(f"d{i}") == 60.0
        assert second.device_view(f"d{i}") == first.device_view(f"d{i}")
    later = feed(first, range(15, 25))
    assert [(s.subject, s.firing) for s in later] == [("d3", False)]
    assert feed(second, range(15, 25)) == later
    assert second.state_dict() == first.state_dict()


def test_signal_windows_keep_each_devices_newest_points_in_order() -> None:
    config = ConnectivityConfig(signal_spacing_s=60, signal_window=4)
    detector = ConnectivityDetector(config)
    for step in range(12):
        t = 60.0 * step
        batch = [
            Reading(f"d{i}", t + i, t + i, {"rssi_dbm": -70.0 - i - step}, {}) for i in range(3)
        ]
        detector.process(batch)
    state = detector.state_dict()
    for i in range(3):
        points = state["devices"][f"d{i}"][13]
        assert len(points) == 2 * config.signal_window
        times = points[0::2]
        assert times == sorted(times) and times[-1] == 60.0 * 10 + i
        assert points[-1] == -70.0 - i - 10.5  # the mean of the last two readings
        assert detector.device_view(f"d{i}")["signal_dbm"] == round(points[-1], 2)  # type: ignore[index]
    again = ConnectivityDetector(config)
    again.load_state(orjson.loads(orjson.dumps(state)))
    assert again.state_dict() == state
    t = 60.0 * 12
    detector.process([Reading("d1", t, t, {"rssi_dbm": -90.0}, {})])
    again.process([Reading("d1", t, t, {"rssi_dbm": -90.0}, {})])
    assert again.state_dict() == detector.state_dict()


def test_devices_without_signal_have_no_signal_points() -> None:
    detector = ConnectivityDetector()
    detector.process([Reading("d1", 0.0, 0.0, {"temp": 1.0}, {"gateway": "g"})])
    assert detector.device_view("d1")["signal_dbm"] is None  # type: ignore[index]
    assert detector.state_dict()["devices"]["d1"][13] == []


# -- loss rate, gaps and intermittent links ----------------------------------------------------

DAY = 86_400.0
FIVE_MIN = 300.0


def random_loss(rates: dict[str, float], seed: int = 7) -> Callable[[str, float], bool]:
    """Each device loses each report independently at its rate."""
    rng = random.Random(seed)
    return lambda device, t: rng.random() < rates.get(device, 0.0)


def test_independent_loss_of_one_or_two_percent_is_not_a_gap_nor_offline() -> None:
    devices = {f"d{i}": meta(f"gw{i % 4}") for i in range(24)}
    rates = {d: 0.01 if i % 2 else 0.02 for i, d in enumerate(devices)}
    detector = ConnectivityDetector()
    signals = run_fleet(
        detector, devices, T0 + 3 * DAY, silent=random_loss(rates), interval=FIVE_MIN,
        tick_every=60.0,
    )  # fmt: skip
    assert kinds(signals) == []
    views = {d: detector.device_view(d) for d in devices}
    assert all(v is not None and 0.003 < v["loss_rate"] < 0.04 for v in views.values())
    # its loss rate, not a fixed factor, says how long a silence is before the device is
    # offline: a few reports missed in a row
    assert all(3 * FIVE_MIN < v["offline_after_s"] < 8 * FIVE_MIN for v in views.values())  # type: ignore[index]


def test_clustered_outages_are_intermittent_and_steady_loss_is_not() -> None:
    devices = {"flaky": meta("gw0"), "lossy": meta("gw0")} | {
        f"d{i}": meta("gw0") for i in range(4)
    }
    outage_starts = [h * 4 * 3600.0 + 1800.0 for h in range(6)]  # 6 outages a day ...
    loss = random_loss({"lossy": 0.08, "flaky": 0.01} | {f"d{i}": 0.01 for i in range(4)})

    def silent(device: str, t: float) -> bool:
        into_day = (t - T0) % DAY
        # ... of 20 minutes each, from the second day on
        if (
            device == "flaky"
            and t - T0 >= DAY
            and any(s <= into_day < s + 1200.0 for s in outage_starts)
        ):
            return True
        return loss(device, t)

    detector = ConnectivityDetector()
    signals = run_fleet(
        detector, devices, T0 + 3 * DAY, silent=silent, interval=FIVE_MIN, tick_every=60.0
    )
    raised = [s for s in signals if s.kind == "intermittent_connectivity" and s.firing]
    assert [s.subject for s in raised] == ["flaky"]
    evidence = raised[0].evidence
    assert evidence["test"] == "one-sided Poisson: gaps in the window vs independent loss"
    assert evidence["observed_gaps"] == evidence["gaps"] >= 4
    assert evidence["expected_gaps"] < 0.5 and evidence["p_value"] < evidence["alpha"]
    assert 0.0 < evidence["loss_rate"] < 0.05 and evidence["gap_min_lost"] >= 2
    # a link losing 8 % of its reports, one at a time, is lossy but not intermittent: its
    # loss rate is in its view, and no alert
    assert "lossy" not in {s.subject for s in signals}
    assert detector.device_view("lossy")["loss_rate"] > 0.05  # type: ignore[index]


def test_steady_loss_of_a_fast_reporter_is_judged_against_what_it_explains() -> None:
    # at 3 % loss and a report a minute, two lost in a row (a gap) happen about once a day
    # each: a window with four of them is not unusual, and the Poisson test knows it
    devices = {f"d{i}": meta("gw0") for i in range(12)}
    detector = ConnectivityDetector()
    signals = run_fleet(
        detector, devices, T0 + 3 * DAY, silent=random_loss({d: 0.03 for d in devices}),
        tick_every=60.0,
    )  # fmt: skip
    assert kinds(signals) == []
    gaps = [detector.device_view(d)["recent_gaps"] for d in devices]  # type: ignore[index]
    assert max(gaps) >= 4  # gaps there were, as many as the count alone would alert on


def test_a_link_that_never_lost_a_report_learns_that_its_new_losses_are_ordinary() -> None:
    # a week without a loss: then one lost report is improbable, a gap; but each gap counts
    # as a lost report too, so a link now losing 2 % is soon judged by that rate
    devices = {f"d{i}": meta("gw0") for i in range(8)}
    loss = random_loss({d: 0.02 for d in devices})
    detector = ConnectivityDetector()
    signals = run_fleet(
        detector, devices, T0 + 10 * DAY, silent=lambda d, t: t - T0 > 7 * DAY and loss(d, t),
        interval=FIVE_MIN, tick_every=120.0,
    )  # fmt: skip
    assert kinds(signals) == []
    assert all(detector.device_view(d)["loss_rate"] > 0.005 for d in devices)  # type: ignore[index]


def test_late_deliveries_and_a_batch_after_a_short_gap_do_not_shorten_the_interval() -> None:
    detector = ConnectivityDetector()
    info = meta("gw0")
    readings = []
    for k in range(300):
        sent = T0 + FIVE_MIN * k
        if 100 <= k < 104:
            continue  # buffered during a short gap, uploaded with the next report
        received = sent + 0.5
        if k % 10 == 7:
            received += 400.0  # delivered late, after a newer report
        elif k % 10 == 3:
            received += 200.0  # delayed, still in order
        readings.append(Reading("d1", sent, received, {}, info, seq=k))
        if k == 104:  # the batch of the buffered reports arrives 4 s before it
            readings += [
                Reading("d1", T0 + FIVE_MIN * j, received - 4.0, {}, info, seq=j)
                for j in range(100, 104)
            ]
    readings.sort(key=lambda r: r.received_at)
    signals: list[Signal] = []
    learned = []
    for reading in readings:
        signals += detector.process([reading]) + detector.tick(reading.received_at)
        view = detector.device_view("d1")
        assert view is not None
        learned.append(view["interval_s"])
    assert kinds(signals) == []
    # after the first few reports the interval stays the device's 5 minutes throughout: not
    # pulled down by a late or delayed report nor by the reading that follows the batch 4 s
    # later (nor pushed up by the silences before them)
    assert min(learned[10:]) == pytest.approx(FIVE_MIN, rel=0.01)
    assert max(learned[10:]) == pytest.approx(FIVE_MIN, rel=0.01)
    assert detector.expected_interval("d1") == pytest.approx(learned[-1])
    # the gap ended when the batch arrived: one silence of 5 intervals less 4 s; a late
    # report is not a lost one
    [(start, length)] = detector.state_dict()["devices"]["d1"][6]
    assert start == pytest.approx(T0 + FIVE_MIN * 100 + 0.5, abs=5)
    assert length == pytest.approx(5 * FIVE_MIN - 4.0, abs=1)
    assert detector.device_view("d1")["loss_rate"] < 0.01  # type: ignore[index]


def test_offline_says_persistent_only_after_persistent_s_and_is_one_alert() -> None:
    from service.alerts.lifecycle import AlertManager, Transition

    devices = {f"d{i}": meta("gw0") for i in range(5)}
    gone = T0 + 2 * 3600
    detector = ConnectivityDetector()
    signals = run_fleet(
        detector, devices, gone + 2 * 3600, silent=lambda d, t: d == "d0" and t >= gone
    )
    offline = [s for s in signals if s.kind == "device_offline"]
    first, escalated = offline
    assert first.severity is Severity.WARNING and first.at - gone <= 15 * 60
    assert "persistent" not in first.summary and first.evidence["class"] == "ongoing"
    assert "silent for" in first.summary and "expected every 1.0 min" in first.summary
    assert first.evidence["missed_reports"] >= 3 and 0 < first.evidence["loss_rate"] < 0.02
    at_15_min = [
        s for s in detector.tick(gone + 15 * 60) if s.kind == "device_offline"
    ]  # nothing new at 15 minutes, and the alert that is open does not say persistent
    assert at_15_min == [] and first.at < gone + 15 * 60
    assert escalated.severity is Severity.CRITICAL
    assert escalated.at - first.at >= detector.config.persistent_s - 10 * 60
    assert "persistent" in escalated.summary and escalated.evidence["class"] == "persistent"
    changes = AlertManager().apply(offline)
    assert [c.transition for c in changes] == [Transition.OPENED, Transition.ESCALATED]
    assert len({c.record.id for c in changes}) == 1
    assert "persistent" in changes[-1].record.summary


def _lossy_fleet_until(
    detector: ConnectivityDetector, until: float, start: float = T0
) -> list[Signal]:
    devices = {f"d{i}": meta("gw0") for i in range(8)}
    loss = random_loss({d: 0.03 for d in devices}, seed=int(start))
    gone = T0 + DAY / 2
    return run_fleet(
        detector, devices, until, start=start, seed=int(start) % 97, interval=FIVE_MIN,
        tick_every=60.0, silent=lambda d, t: (d == "d1" and t >= gone) or loss(d, t),
    )  # fmt: skip


def test_checkpoint_mid_episode_carries_on_identically() -> None:
    first = ConnectivityDetector()
    middle = T0 + DAY / 2 + 1800  # d1 is offline (warning), not yet persistent
    before = _lossy_fleet_until(first, middle)
    assert kinds(before) == [("device_offline", "d1")]
    state = orjson.loads(orjson.dumps(first.state_dict()))
    assert state["version"] == 2
    restored = ConnectivityDetector()
    restored.load_state(state)
    for i in range(8):
        assert restored.device_view(f"d{i}") == first.device_view(f"d{i}")
    later_first = _lossy_fleet_until(first, middle + DAY / 2, start=middle)
    later_restored = _lossy_fleet_until(restored, middle + DAY / 2, start=middle)
    assert later_first == later_restored
    assert [(s.kind, s.severity) for s in later_first if s.firing] == [
        ("device_offline", Severity.CRITICAL)
    ]
    assert restored.state_dict() == first.state_dict()


def test_a_checkpoint_of_the_previous_format_still_loads() -> None:
    first = ConnectivityDetector()
    middle = T0 + DAY / 2 + 1800
    _lossy_fleet_until(first, middle)
    state = orjson.loads(orjson.dumps(first.state_dict()))
    # format 1: the same rows without the loss bookkeeping
    old = {**state, "version": 1,
           "devices": {d: row[:18] for d, row in state["devices"].items()}}  # fmt: skip
    restored = ConnectivityDetector()
    restored.load_state(old)
    view = restored.device_view("d2")
    assert view is not None and view["interval_s"] == first.device_view("d2")["interval_s"]  # type: ignore[index]
    assert view["loss_rate"] == restored.config.loss_prior  # starts from the prior
    later = _lossy_fleet_until(restored, middle + DAY / 2, start=middle)
    assert [(s.kind, s.subject, s.severity) for s in later if s.firing] == [
        ("device_offline", "d1", Severity.CRITICAL)
    ]
    with pytest.raises(Exception, match="format 3"):
        ConnectivityDetector().load_state({**state, "version": 3})
