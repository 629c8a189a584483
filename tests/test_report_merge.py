"""Workers' reports, merged, equal the reports of one pipeline over the whole fleet.

One simulated fleet (three sites, faults of every kind the reports show) is fed once into
one pipeline and, split by site, into the workers of two splits (three workers, one of
them without a site; and one worker per site), all ticked at the same times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from config.settings import settings_from_mapping
from detectors import build_detectors
from detectors.connectivity import ConnectivityConfig
from detectors.environment import EnvironmentConfig
from detectors.firmware import FirmwareConfig
from detectors.gateway import GatewayConfig, GatewayDetector
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.intake.pipeline import Pipeline
from service.records import RawMessage, Reading, Severity
from service.runtime.report_merge import MergeOptions, merge_all, merge_generic, merge_reports
from service.simulator import FaultSpec, SimulationConfig, Simulator

START = 1_767_225_600.0
DAYS = 2.0
WINDOW_S = 600.0  # one micro-batch and one tick per ten minutes of data
FAULTS = (
    "battery_failing=3@3600", "sensor_drift=2@7200:rate_c_per_h=0.5", "firmware_change=2@5000",
    "firmware_campaign=1@20000+3600:spread_s=3000", "silent=3@30000+7200",
    "gateway_down=1@40000+5400", "intermittent=3@1000", "flaky_radio=1@2000", "hot_zone=2@0",
    "overheating=1@50000", "shift_dropout=1@0", "fading_signal=2@10000",
)  # fmt: skip
SETTINGS = settings_from_mapping(
    {"detectors": {
        # small limits, so the merge has rows to cut
        "firmware": {"report_limit": 2, "campaigns": [{"name": "nine", "target": "9.0.0"}],
                     "advisories": [{"id": "FW-1", "models": ["TH-200"], "affected": ["<1.5.0"],
                                     "severity": "critical", "fixed": "1.5.0"}]},
        "environment": {"report_limit": 3},
        "drift": {"warmup_buckets": 96},
    }}
)  # fmt: skip
OPTIONS = MergeOptions.from_settings(SETTINGS)
SPLITS = {
    "two_sites_one_site_none": ({"plant-a", "plant-b"}, {"plant-c"}, set()),
    "one_site_each": ({"plant-a"}, {"plant-b"}, {"plant-c"}),
}
# fields a fleet-wide test computes from per-device values the reports do not carry
APPROXIMATE = {
    "connectivity": {"by_technology"},
    "drift": {"environment"},
    "environment": {"findings", "recommendations"},
}

Reports = dict[str, dict[str, Any]]


def build() -> Pipeline:
    return Pipeline.build(
        SETTINGS,
        detectors=build_detectors(SETTINGS),
        sinks=[MemorySink()],
        metrics=FleetMetrics(CollectorRegistry()),
    )


@pytest.fixture(scope="module")
def fleet() -> tuple[Reports, dict[str, list[Reports]]]:
    """The single pipeline's reports, and each split's workers' reports."""
    simulator = Simulator(
        SimulationConfig(devices=45, interval_s=600.0, seed=7, start_ts=START,
                         faults=tuple(FaultSpec.parse(f) for f in FAULTS))
    )  # fmt: skip
    messages = [
        RawMessage(m.topic, m.payload, m.ts + 0.05)
        for m in simulator.messages(START + DAYS * 86_400)
    ]
    single = build()
    workers = {split: [(sites, build()) for sites in parts] for split, parts in SPLITS.items()}
    everyone = [single, *(p for shards in workers.values() for _, p in shards)]
    end, at = START, 0
    while at < len(messages):
        end += WINDOW_S
        batch: list[RawMessage] = []
        while at < len(messages) and messages[at].received_at < end:
            batch.append(messages[at])
            at += 1
        single.process_messages(batch)
        for shards in workers.values():
            for sites, pipeline in shards:
                pipeline.process_messages([m for m in batch if m.topic.split("/")[1] in sites])
        for pipeline in everyone:
            pipeline.tick(end)
    return single.reports(end), {
        split: [p.reports(end) for _, p in shards] for split, shards in workers.items()
    }


def test_the_fleet_gives_every_report_content(fleet: tuple[Reports, Any]) -> None:
    single, _ = fleet
    assert set(single) == {"connectivity", "gateway", "drift", "firmware", "environment",
                           "battery"}  # fmt: skip
    firmware = single["firmware"]
    assert firmware["vulnerable_devices"] > 2 and len(firmware["urgent_updates"]) == 2
    assert firmware["campaigns"][0]["on_target"] > 0
    assert len(firmware["campaigns"][0]["off_target"]) == 2
    assert firmware["update_outcomes"]["site"] and len(firmware["consistency"]) > 3
    assert len(single["battery"]["groups"]) >= 2
    assert single["connectivity"]["outages"] > 0
    assert any(site["moves"] for site in single["gateway"]["sites"].values())
    assert len({(e["site"], e["zone"]) for e in single["drift"]["sensors"]}) >= 2
    assert single["drift"]["environment"]["n"] > 0
    assert len(single["environment"]["maintenance_by_stress"]) == 3


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_exact_reports_equal_one_pipeline(fleet: tuple[Reports, Any], split: str) -> None:
    single, splits = fleet
    merged = merge_all(splits[split], options=OPTIONS)
    assert set(merged) == set(single)
    for name in ("firmware", "battery", "gateway"):
        assert merged[name] == single[name], name
    # drift's sensors and by_zone: see the next test
    ordered = {"drift": {"sensors", "by_zone"}}
    for name, approximate in APPROXIMATE.items():
        exact = set(single[name]) - approximate - ordered.get(name, set())
        assert {k: merged[name][k] for k in exact} == {k: single[name][k] for k in exact}, name


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_drift_sensors_equal_up_to_the_order_of_ties(
    fleet: tuple[Reports, Any], split: str
) -> None:
    single, splits = fleet
    merged = merge_all(splits[split], options=OPTIONS)["drift"]
    expected = single["drift"]

    def key(e: Mapping[str, Any]) -> tuple[Any, ...]:
        urgent = {"fault": 0, "out_of_tolerance": 0, "drifting": 1}[e["status"]]
        return urgent, -Severity.parse(e["severity"]), e["predicted_out_of_tolerance_at"]

    def canonical(entries: Sequence[Mapping[str, Any]]) -> list[Any]:
        return sorted(entries, key=lambda e: (*key(e), e["device"], e["metric"]))

    assert len(merged["sensors"]) >= 2
    assert [key(e) for e in merged["sensors"]] == [key(e) for e in expected["sensors"]]
    assert canonical(merged["sensors"]) == canonical(expected["sensors"])
    assert {z: canonical(rows) for z, rows in merged["by_zone"].items()} == {
        z: canonical(rows) for z, rows in expected["by_zone"].items()
    }


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_approximations_are_named_and_keep_their_counts(
    fleet: tuple[Reports, Any], split: str
) -> None:
    single, splits = fleet
    merged = merge_all(splits[split], options=OPTIONS)
    assert set(merged["connectivity"]["approximate"]) == {"by_technology"}
    assert set(merged["drift"]["approximate"]) == {"environment"}
    assert merged["drift"]["environment"]["n"] == single["drift"]["environment"]["n"]
    assert set(merged["environment"]["approximate"]) == {"findings"}
    assert merged["environment"]["recommendations"] == [
        f["recommendation"] for f in merged["environment"]["findings"]
    ]
    for name in ("firmware", "battery", "gateway"):
        assert "approximate" not in merged[name]


def test_one_report_is_returned_unchanged(fleet: tuple[Reports, Any]) -> None:
    single, splits = fleet
    assert merge_all([single], options=OPTIONS) == single
    for name, report in single.items():
        assert merge_reports(name, [report]) == report
    # a worker without sites adds nothing, even to the approximate statistics
    alone = splits["two_sites_one_site_none"]
    assert merge_all([*alone[:1], alone[2]], options=OPTIONS) == alone[0]
    assert merge_all([single, alone[2]], options=OPTIONS) == single


def test_options_default_to_the_detectors_defaults_and_read_the_settings() -> None:
    assert MergeOptions() == MergeOptions(
        firmware_report_limit=FirmwareConfig().report_limit,
        environment_report_limit=EnvironmentConfig().report_limit,
        connectivity_pattern_alpha=ConnectivityConfig().pattern_alpha,
    )
    assert (OPTIONS.firmware_report_limit, OPTIONS.environment_report_limit) == (2, 3)
    assert {f.name for f in fields(MergeOptions)} == {
        "firmware_report_limit", "environment_report_limit", "connectivity_pattern_alpha",
    }  # fmt: skip


def test_limits_are_applied_again_after_merging() -> None:
    a = {"generated_at": "t", "devices": 3, "inventory": {"M": {"1.0": 3}}, "campaigns": [],
         "consistency": [], "urgent_updates": [], "vulnerable_devices": 0,
         "update_outcomes": {}, "stuck_updates": ["a1", "a7"], "advisories": []}  # fmt: skip
    b = {**a, "inventory": {"M": {"1.1": 1}, "N": {"2.0": 2}}, "stuck_updates": ["a3", "b9"]}
    merged = merge_reports("firmware", [a, b], options=MergeOptions(firmware_report_limit=3))
    assert merged["stuck_updates"] == ["a1", "a3", "a7"]
    assert merged["inventory"] == {"M": {"1.0": 3, "1.1": 1}, "N": {"2.0": 2}}
    assert merged["devices"] == 6


def test_a_site_in_several_workers_gets_its_load_recomputed_and_its_moves_marked() -> None:
    config = GatewayConfig(min_site_devices=2, min_excess_devices=1)
    # devices that name no site: their gateways all fall in the site "" of every worker
    west = [Reading(f"w{i}", 0.0, 0.0, {}, {"gateway": "gw-1"}) for i in range(6)]
    east = [Reading(f"e{i}", 0.0, 0.0, {}, {"gateway": "gw-2"}) for i in range(2)]
    east += [Reading("e9", 0.0, 0.0, {}, {"gateway": "gw-3"})]
    one, first, second = GatewayDetector(config), GatewayDetector(config), GatewayDetector(config)
    one.process(west + east)
    first.process(west)
    second.process(east)
    expected = one.report(60.0)
    merged = merge_reports("gateway", [first.report(60.0), second.report(60.0)])
    site, want = merged["sites"][""], expected["sites"][""]
    assert merged["gateways"] == expected["gateways"] == 3
    assert site["gateways"] == want["gateways"]
    assert (site["mean"], site["cv"], site["max_over_mean"]) == (
        want["mean"], want["cv"], want["max_over_mean"],
    )  # fmt: skip
    # each worker alone had nothing to move: the moves are not the fleet's, and say so
    assert want["moves"] and not site["moves"]
    assert set(merged["approximate"]) == {"sites..moves"}


def test_battery_groups_of_one_zone_in_several_workers_are_merged() -> None:
    def entry(device: str, priority: float) -> dict[str, Any]:
        return {"device_id": device, "tte_days": priority, "priority": priority,
                "replace_before": f"2026-01-{int(priority) + 1:02d}"}  # fmt: skip

    def group(site: str | None, *entries: dict[str, Any]) -> dict[str, Any]:
        return {"site": site, "zone": None, "priority": entries[0]["priority"],
                "replace_before": min(e["replace_before"] for e in entries),
                "devices": list(entries)}  # fmt: skip

    a = {"generated_at": "t", "horizon_days": 30.0, "devices": 3,
         "groups": [group(None, entry("d2", 4.0)), group("s1", entry("d1", 5.0), entry("d4", 9.0))]}  # fmt: skip
    b = {"generated_at": "t", "horizon_days": 30.0, "devices": 1,
         "groups": [group(None, entry("d3", 2.0))]}  # fmt: skip
    merged = merge_reports("battery", [a, b])
    assert merged["horizon_days"] == 30.0 and merged["devices"] == 4
    assert [g["site"] for g in merged["groups"]] == [None, "s1"]
    assert [e["device_id"] for e in merged["groups"][0]["devices"]] == ["d3", "d2"]
    assert merged["groups"][0]["replace_before"] == "2026-01-03"


def test_stress_ratios_from_workers_with_stress_are_marked() -> None:
    def row(device: str, hours: float, ratio: float | None) -> dict[str, Any]:
        return {"device_id": device, "stress_hours": hours, "vs_fleet_median": ratio}

    base = {"generated_at": "t", "tests": "...", "findings": [], "recommendations": []}
    quiet = {**base, "devices": 4, "maintenance_by_stress": [row("a", 9.0, None)]}
    calm = {**base, "devices": 5, "maintenance_by_stress": [row("b", 12.0, None)]}
    merged = merge_reports("environment", [quiet, calm])
    assert [r["device_id"] for r in merged["maintenance_by_stress"]] == ["b", "a"]
    # both workers' medians are zero: so is the fleet's, and no ratio is approximate
    assert set(merged["approximate"]) == {"findings"}
    busy = {**base, "devices": 2, "maintenance_by_stress": [row("c", 10.0, 2.0)]}
    merged = merge_reports("environment", [quiet, busy], options=MergeOptions(
        environment_report_limit=1))  # fmt: skip
    assert [r["device_id"] for r in merged["maintenance_by_stress"]] == ["c"]
    assert set(merged["approximate"]) == {"findings", "maintenance_by_stress.vs_fleet_median"}


def test_unknown_detectors_are_merged_generically() -> None:
    a = {"devices": 2, "rows": [{"id": "a"}], "by_model": {"M": 1}, "ok": False, "note": None}
    b = {"devices": 1, "rows": [{"id": "b"}], "by_model": {"M": 2, "N": 1}, "ok": True,
         "note": "from b"}  # fmt: skip
    expected = {"devices": 3, "rows": [{"id": "a"}, {"id": "b"}], "by_model": {"M": 3, "N": 1},
                "ok": True, "note": "from b"}  # fmt: skip
    assert merge_reports("someday", [a, b]) == merge_generic([a, b]) == expected
    assert merge_all([{"someday": a}, {"someday": b}]) == {"someday": expected}
    with pytest.raises(ValueError, match="no someday reports"):
        merge_reports("someday", [])
