"""Firmware: versions, advisories (and reloading them), campaigns, update events, unexpected
changes, the report."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from config.advisories import AdvisoryWatcher, load_advisories
from detectors.firmware import (
    Advisory,
    Campaign,
    FirmwareConfig,
    FirmwareDetector,
    parse_window,
    version_key,
)
from service.errors import ConfigError
from service.records import MessageKind, Reading, Severity, Signal

SAT = 1_767_398_400.0  # Saturday 2026-01-03 00:00 UTC
TUE = SAT + 3 * 86_400  # Tuesday
ADVISORY = Advisory.from_mapping(
    {"id": "FW-1", "models": ["TH-200"], "affected": [">=1.4.0,<1.5.0"], "severity": "critical",
     "fixed": "1.5.0", "cve": ["CVE-2026-0001"]}
)  # fmt: skip
CAMPAIGN = Campaign(name="th-1.5", target="1.5.0", models=("TH-200",))


def telemetry(device: str, version: str, ts: float, model: str = "TH-200") -> Reading:
    return Reading(device, ts, ts, {"temperature_c": 20.0},
                   {"model": model, "firmware": version, "site": "plant-a", "protocol": "mqtt"})  # fmt: skip


def event(device: str, name: str, ts: float, to: str, frm: str = "1.4.2", **extra: str) -> Reading:
    meta = {"event": name, "from_version": frm, "to_version": to, "model": "TH-200",
            "site": "plant-a", "protocol": "lwm2m", **extra}  # fmt: skip
    return Reading(device, ts, ts, {}, meta, kind=MessageKind.FIRMWARE)


def fired(signals: list[Signal]) -> list[tuple[str, str, str]]:
    return [(s.kind, s.subject, s.severity.label) for s in signals if s.firing]


def detector(**config: object) -> FirmwareDetector:
    defaults: dict[str, object] = {
        "advisories": (ADVISORY,), "campaigns": (CAMPAIGN,),
        "maintenance_windows": ("Sat 00:00-06:00",),
    }  # fmt: skip
    return FirmwareDetector(FirmwareConfig(**{**defaults, **config}))  # type: ignore[arg-type]


def test_versions_compare_sensibly() -> None:
    assert version_key("1.10.0") > version_key("1.9.9")
    assert version_key("1.0") == version_key("1.0.0")
    assert version_key("2.0.0-rc2") < version_key("2.0.0") < version_key("2.0.0-build5")
    assert version_key("v3.2") == version_key("3.2")
    assert parse_window("Sat 00:00-06:00") == (5, 0, 360)
    with pytest.raises(ValueError, match="Sat 00:00-06:00"):
        parse_window("someday")


def test_vulnerable_devices_alert_with_the_advisory_and_clear_after_the_fix() -> None:
    det = detector()
    signals = det.process([telemetry("d1", "1.4.2", SAT), telemetry("d2", "1.5.0", SAT),
                           telemetry("d3", "1.4.2", SAT, model="VB-31")])  # fmt: skip
    assert fired(signals) == [("firmware_vulnerable", "d1", "critical")]
    assert signals[0].evidence["cve"] == ["CVE-2026-0001"]
    assert signals[0].evidence["fixed_in"] == "1.5.0"
    urgent = det.report(SAT)["urgent_updates"]
    assert [(u["device_id"], u["update_to"]) for u in urgent] == [("d1", "1.5.0")]
    later = det.process([telemetry("d1", "1.5.0", SAT + 3600)])  # the campaign's update
    assert [(s.kind, s.firing) for s in later] == [("firmware_vulnerable", False)]


def test_new_advisories_apply_on_the_next_tick() -> None:
    det = detector(advisories=())
    assert det.process([telemetry("d1", "1.4.2", SAT)]) == []
    det.set_advisories([ADVISORY])
    assert fired(det.tick(SAT + 60)) == [("firmware_vulnerable", "d1", "critical")]
    det.set_advisories([])
    assert [(s.kind, s.firing) for s in det.tick(SAT + 120)] == [("firmware_vulnerable", False)]


def test_unexpected_changes_downgrades_and_unknown_versions() -> None:
    det = detector(advisories=())
    det.process([telemetry(f"d{i}", "1.5.0", SAT) for i in range(5)])
    det.process([telemetry("d9", "1.4.2", SAT)])
    # a campaign target inside the window: expected, nothing raised
    assert det.process([telemetry("d9", "1.5.0", SAT + 600)]) == []
    # a downgrade on a Tuesday: critical, with every reason
    [signal] = det.process([telemetry("d1", "1.4.2", TUE)])
    assert (signal.kind, signal.severity) == ("firmware_unexpected_change", Severity.CRITICAL)
    assert signal.evidence["reasons"] == [
        "downgrade",
        "no campaign targets this version",
        "outside the maintenance windows",
    ]
    # a version nobody has seen for the model
    [signal] = det.process([telemetry("d2", "1.6.0-dev", SAT + 60)])
    assert "version never seen for this model" in signal.evidence["reasons"]
    # back to the target: resolved
    assert [(s.kind, s.firing) for s in det.process([telemetry("d1", "1.5.0", TUE + 60)])] == [
        ("firmware_unexpected_change", False)
    ]


def test_update_events_failures_stuck_updates_and_success_rates() -> None:
    det = detector(stuck_after_s=1800)
    det.process([telemetry(d, "1.4.2", SAT) for d in ("a", "b", "c")])
    det.process([event("a", "started", SAT + 10, "1.5.0"), event("b", "downloading", SAT + 10, "1.5.0"),
                 event("c", "started", SAT + 10, "1.5.0")])  # fmt: skip
    failed = det.process([event("b", "failed", SAT + 300, "1.5.0", code="7")])
    assert fired(failed) == [("firmware_update_failed", "b", "warning")]
    assert failed[0].evidence["code"] == "7"
    done = det.process([event("a", "succeeded", SAT + 400, "1.5.0")])
    assert ("firmware_vulnerable", False) in [(s.kind, s.firing) for s in done]
    stuck = det.tick(SAT + 2000)
    assert fired(stuck) == [("firmware_update_stuck", "c", "warning")]
    outcomes = det.report(SAT + 2000)["update_outcomes"]
    assert outcomes["path"]["1.4.2 -> 1.5.0"] == {"succeeded": 1, "failed": 1, "success_rate": 0.5}
    assert outcomes["protocol"]["lwm2m"]["success_rate"] == 0.5
    retried = det.process([event("b", "succeeded", SAT + 3000, "1.5.0")])
    assert ("firmware_update_failed", False) in [(s.kind, s.firing) for s in retried]


def test_campaign_progress_and_consistency_report() -> None:
    det = detector()
    det.process([telemetry(f"t{i}", "1.5.0" if i < 3 else "1.4.2", SAT) for i in range(4)])
    det.process([telemetry("v1", "2.0.1", SAT, model="VB-31")])
    report = det.report(SAT)
    orjson.dumps(report)
    [campaign] = report["campaigns"]
    assert (campaign["devices"], campaign["on_target"], campaign["progress"]) == (4, 3, 0.75)
    assert campaign["off_target"] == ["t3"]
    th = next(c for c in report["consistency"] if c["model"] == "TH-200")
    assert th["versions"] == {"1.4.2": 1, "1.5.0": 3} and th["consistent_share"] == 0.75
    assert report["inventory"]["VB-31"] == {"2.0.1": 1}


def test_state_round_trip() -> None:
    det = detector()
    det.process([telemetry("d1", "1.4.2", SAT), event("d1", "started", SAT, "1.5.0")])
    restored = detector()
    restored.load_state(orjson.loads(orjson.dumps(det.state_dict())))
    assert restored.report(SAT + 10) == det.report(SAT + 10)
    assert fired(restored.tick(SAT + 7200)) == fired(det.tick(SAT + 7200))


def test_advisory_file_loads_reloads_and_refuses_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "advisories.toml"
    path.write_text('[[advisory]]\nid = "A"\naffected = ["<2"]\n')
    assert [a.id for a in load_advisories(path)] == ["A"]
    watcher = AdvisoryWatcher(path)
    assert watcher.changed() is None
    path.write_text('[[advisory]]\nid = "B"\naffected = ["<3"]\nseverity = "critical"\n')
    os.utime(path, (1e9, 1e9))  # a new modification time, whatever the clock's resolution
    assert [a.id for a in watcher.changed() or []] == ["B"]
    path.write_text("[[advisory]]\nid = \n")
    os.utime(path, (2e9, 2e9))
    assert watcher.changed() is None  # a broken file keeps the old advisories
    with pytest.raises(ConfigError, match="advisories_file"):
        load_advisories(path)


def test_the_daemon_reloads_the_advisory_file_and_exports_firmware_gauges(tmp_path: Path) -> None:
    from config.settings import settings_from_mapping
    from service.records import RawMessage
    from service.runtime.daemon import Daemon

    path = tmp_path / "advisories.toml"
    path.write_text('[[advisory]]\nid = "A"\naffected = ["<1"]\n')
    settings = settings_from_mapping({
        "detectors": {"enabled": ["firmware"], "firmware": {
            "advisories_file": str(path),
            "campaigns": [{"name": "th", "target": "1.5.0", "models": ["TH-200"]}]}},
        "state": {"enabled": False}, "http": {"enabled": False}})  # fmt: skip
    daemon = Daemon(settings)
    payload = b'{"ts": 1767398400, "model": "TH-200", "firmware": "1.4.2"}'
    daemon.pipeline.process_messages([RawMessage("fleet/plant-a/d1/telemetry", payload, SAT)])
    assert list(daemon.pipeline.alerts.active()) == []
    path.write_text('[[advisory]]\nid = "B"\naffected = ["<1.5"]\nseverity = "critical"\n')
    os.utime(path, (1e9, 1e9))
    assert daemon.reload_advisories()
    daemon.pipeline.tick(SAT + 60)
    assert [a.kind for a in daemon.pipeline.alerts.active()] == ["firmware_vulnerable"]
    daemon.publish_reports("fleetwatch/reports")
    sample = daemon.registry.get_sample_value
    assert sample("fleetwatch_firmware_devices", {"model": "TH-200", "version": "1.4.2"}) == 1
    assert sample("fleetwatch_firmware_vulnerable_devices", {}) == 1
    assert sample("fleetwatch_firmware_campaign_progress_ratio", {"campaign": "th"}) == 0


def test_stuck_updates_fire_in_the_order_devices_were_first_seen() -> None:
    det = detector(stuck_after_s=1800, advisories=())
    det.process([telemetry(d, "1.4.2", SAT) for d in ("c", "a", "b", "d")])
    det.process([event("b", "started", SAT + 10, "1.5.0"), event("a", "started", SAT + 20, "1.5.0"),
                 event("c", "started", SAT + 30, "1.5.0"), event("d", "started", SAT + 40, "1.5.0")])  # fmt: skip
    det.process([event("d", "succeeded", SAT + 50, "1.5.0")])
    assert det.tick(SAT + 1000) == []
    assert [s.subject for s in det.tick(SAT + 2000) if s.firing] == ["c", "a", "b"]
    assert det.tick(SAT + 3000) == []  # already open
    assert det.report(SAT + 3000)["stuck_updates"] == ["a", "b", "c"]
    view = det.device_view("d")
    assert view is not None and view["history"][0]["to"] == "1.5.0"
    assert det.device_view("a") == {
        "version": "1.4.2", "previous": None, "history": [],
        "update_in_progress": {"since": "2026-01-03T00:00:20Z", "to": "1.5.0"},
        "open_alerts": ["firmware_update_stuck"],
    }  # fmt: skip


def test_state_round_trip_keeps_updates_in_progress_and_alerts() -> None:
    det = detector(stuck_after_s=1800)
    det.process([telemetry("d1", "1.4.2", SAT), telemetry("d2", "1.5.0", SAT)])
    det.process([event("d1", "started", SAT + 10, "1.5.0")])
    restored = detector(stuck_after_s=1800)
    restored.load_state(orjson.loads(orjson.dumps(det.state_dict())))
    assert restored.state_dict() == orjson.loads(orjson.dumps(det.state_dict()))
    assert [s.subject for s in restored.tick(SAT + 2000) if s.firing] == ["d1"]
    assert restored.device_view("d2") == det.device_view("d2")
