"""Firmware detector: planted firmware events in a simulated fleet, and report time at scale.

Scenario: a fleet reporting every 5 minutes for 2 days through ``replay``, with an update
campaign for TH-200 to 1.5.0 spread over 12 hours that fails more often at one site, three
devices changing to a version nobody ordered, two devices downgraded, and the shipped
advisories (TH-200 1.4.x is vulnerable). Then the report for 100,000 devices.

    uv run python bench/firmware.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.advisories import load_advisories
from config.settings import EXAMPLE_CONFIG, settings_from_mapping
from detectors.firmware import Campaign, FirmwareConfig, FirmwareDetector
from service.alerts.sinks import MemorySink
from service.records import AlertState, RawMessage, Reading
from service.replay.engine import replay
from service.simulator import FaultSpec, SimulationConfig, Simulator

DAY = 86_400.0


def scenario() -> list[tuple[str, str]]:
    faults = [
        "firmware_campaign=1@3600+1800:group=TH-200,version=1.5.0,spread_s=43200,p_fail=0.05,"
        "p_fail_site=0.4,weak_site=plant-a",
        "firmware_change=3@50000:version=7.7.7",
        "firmware_change=2@90000:version=1.0.0",
    ]
    config = SimulationConfig(devices=600, interval_s=300, seed=3,
                              faults=tuple(FaultSpec.parse(f) for f in faults))  # fmt: skip
    simulator = Simulator(config)
    messages = [RawMessage(m.topic, m.payload, m.ts + 0.05)
                for m in simulator.messages(config.start_ts + 2 * DAY)]  # fmt: skip
    settings = settings_from_mapping(
        {"detectors": {"enabled": ["firmware"], "firmware": {
            "advisories_file": str(EXAMPLE_CONFIG.with_name("advisories.toml")),
            "campaigns": [{"name": "th-1.5", "target": "1.5.0", "models": ["TH-200"]}]}},
         "pipeline": {"tick_interval_s": 300.0}}
    )  # fmt: skip
    sink = MemorySink()
    started = time.perf_counter()
    summary = replay(messages, settings, sinks=[sink])
    elapsed = time.perf_counter() - started
    planted = simulator.planted()
    unexpected_truth = {p.device_id for p in planted if p.fault == "firmware_change"}
    downgrades = {p.device_id for p in planted if p.fault == "firmware_change"
                  and p.start_ts >= config.start_ts + 90000}  # fmt: skip
    opened = [a for a in sink.alerts if a.state is AlertState.FIRING]
    unexpected = {a.subject for a in opened if a.kind == "firmware_unexpected_change"}
    downgrade_alerts = {a.subject for a in opened if a.kind == "firmware_unexpected_change"
                        and "downgrade" in a.evidence.get("reasons", [])}  # fmt: skip
    report = summary.reports["firmware"]
    advisories = load_advisories(EXAMPLE_CONFIG.with_name("advisories.toml"))
    campaign = report["campaigns"][0]
    by_site = report["update_outcomes"].get("site", {})
    weak = by_site.get("plant-a", {}).get("success_rate")
    others = [v["success_rate"] for k, v in by_site.items() if k != "plant-a"]
    failed_alerts = {a.subject for a in opened if a.kind == "firmware_update_failed"}
    return [
        ("unexpected changes detected", f"{len(unexpected & unexpected_truth)} of {len(unexpected_truth)}"),
        ("  of them flagged as downgrades", f"{len(downgrade_alerts & downgrades)} of {len(downgrades)}"),
        ("false unexpected-change alerts (campaign updates included)", str(len(unexpected - unexpected_truth))),
        ("campaign progress (TH-200 to 1.5.0)", f"{campaign['on_target']}/{campaign['devices']} ({campaign['progress']:.0%})"),
        ("update success rate at the weak site vs others", f"{weak:.0%} vs {statistics.mean(others):.0%}" if weak is not None and others else "n/a"),
        ("failed-update alerts open", str(len(failed_alerts))),
        ("vulnerable devices at the end (detected / truth)",
         f"{report['vulnerable_devices']} / {sum(1 for d in simulator.devices if any(a.affects(d.model.name, d.firmware) for a in advisories))}"),
        ("scenario replay", f"{len(messages):,} messages in {elapsed:.1f} s"),
    ]  # fmt: skip


def report_at_scale(devices: int) -> list[tuple[str, str]]:
    advisories = load_advisories(EXAMPLE_CONFIG.with_name("advisories.toml"))
    detector = FirmwareDetector(FirmwareConfig(
        advisories=tuple(advisories),
        campaigns=(Campaign("th-1.5", "1.5.0", models=("TH-200",)),)))  # fmt: skip
    versions = {"TH-200": ("1.4.2", "1.5.0"), "VB-31": ("2.0.1",), "PM-10": ("3.2.0", "3.3.1")}
    models = list(versions)
    batch = []
    for i in range(devices):
        model = models[i % 3]
        options = versions[model]
        batch.append(Reading(f"d{i:07d}", 0.0, 0.0, {}, {
            "model": model, "firmware": options[i // 3 % len(options)],
            "site": f"site-{i % 50}", "protocol": "mqtt"}))  # fmt: skip
    started = time.perf_counter()
    detector.process(batch)
    ingest = time.perf_counter() - started
    started = time.perf_counter()
    report = detector.report(60.0)
    seconds = time.perf_counter() - started
    return [
        (f"firmware report for {devices:,} devices", f"{seconds * 1000:.0f} ms ({report['vulnerable_devices']:,} vulnerable)"),
        (f"first sight of {devices:,} devices (inventory and advisories)", f"{ingest * 1000:.0f} ms"),
    ]  # fmt: skip


def main() -> None:
    rows = scenario() + report_at_scale(100_000)
    print("| firmware | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
