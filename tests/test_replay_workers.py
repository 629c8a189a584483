"""Replay on worker processes sharded by site: the single-process results, deterministic.

Real worker processes throughout (spawned, as the daemon's are); no broker is needed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import Settings, settings_from_mapping
from service.alerts.sinks import Item, MemorySink
from service.commands.cli import main
from service.errors import FleetWatchError
from service.intake.topics import TopicRouter
from service.records import AlertRecord, DeadLetter, RawMessage
from service.replay.engine import ReplaySummary, replay
from service.replay.recording import write_recording
from service.replay.workers import EXCHANGE_MAX_TICKS, replay_sharded
from service.runtime.shards import ShardRouter
from service.simulator import FaultSpec, SimulationConfig, Simulator

T0 = 1_767_225_600.0

RULES = [
    {"name": "battery_low", "metric": "battery_v", "kind": "below", "threshold": 3.3},
    {"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 60},
]

# Alerts judged against the rest of the fleet from exchanged summaries, which are close to
# one process's judgement but not equal to it (service.runtime.fleet_facts): a power baseline is a
# weighted mean of the workers' baselines, the environment tests see the others' devices as
# of the last exchange. Every other kind must come out exactly as in one process.
APPROXIMATE_KINDS = {"power_anomaly", "environment_risk"}


def fleet_recording() -> list[RawMessage]:
    """Five sites (plant-a..c on worker 0 of 2, plant-d and -e on worker 1) with faults,
    repeated messages and messages that cannot be decoded."""
    faults = tuple(
        FaultSpec.parse(spec)
        for spec in (
            "battery_failing=3@600:collapse_s=1800",
            "sensor_drift=3",
            "overheating=3@1200+1200",
            "silent=3@1800+1200",
            "firmware_change=1@3000",
            "gateway_down=1@4800+900",
        )
    )
    simulator = Simulator(
        SimulationConfig(devices=150, sites=5, interval_s=60, seed=11, faults=faults)
    )
    out: list[RawMessage] = []
    for index, sent in enumerate(simulator.messages(T0 + 2 * 3600)):
        message = RawMessage(sent.topic, sent.payload, sent.ts + 0.05)
        out.append(message)
        if index % 97 == 0:
            out.append(message)  # delivered twice
        if index % 501 == 0:
            out.append(message._replace(payload=b"{not json"))
        if index % 777 == 0:
            out.append(message._replace(topic="elsewhere/entirely"))
    return out


class ChangeLog:
    """A sink that keeps every item it is offered, in order."""

    name = "changes"

    def __init__(self) -> None:
        self.items: list[Item] = []

    def offer(self, item: Item) -> None:
        self.items.append(item)

    @property
    def alerts(self) -> list[AlertRecord]:
        return [item for item in self.items if isinstance(item, AlertRecord)]


def change_key(alert: AlertRecord) -> tuple[Any, ...]:
    return (alert.kind, alert.subject, alert.state.value, alert.severity.label,
            alert.started_at, alert.updated_at, alert.resolved_at)  # fmt: skip


def exact(alerts: list[AlertRecord]) -> Counter[tuple[Any, ...]]:
    return Counter(change_key(a) for a in alerts if a.kind not in APPROXIMATE_KINDS)


@dataclass
class Runs:
    settings: Settings
    messages: list[RawMessage]
    one: ReplaySummary
    one_log: MemorySink
    two: list[ReplaySummary]
    two_logs: list[ChangeLog]


@pytest.fixture(scope="module")
def runs() -> Runs:
    settings = settings_from_mapping({"rules": RULES})
    messages = fleet_recording()
    one_log = MemorySink()
    one = replay(messages, settings, sinks=[one_log])
    two_logs = [ChangeLog(), ChangeLog()]
    two = [replay_sharded(messages, settings, workers=2, sinks=[log]) for log in two_logs]
    return Runs(settings, messages, one, one_log, two, two_logs)


def test_the_fleet_is_spread_over_both_workers(runs: Runs) -> None:
    router = ShardRouter(TopicRouter(runs.settings.topics.templates), 2)
    placed = Counter(router.shard(m.topic) for m in runs.messages)
    assert placed[0] > len(runs.messages) / 4 and placed[1] > len(runs.messages) / 4


def test_two_workers_give_the_single_process_results(runs: Runs) -> None:
    one, two = runs.one, runs.two[0]
    counts = ("messages", "readings", "rejected", "duplicates", "devices", "first_ts", "last_ts")
    assert [getattr(two, name) for name in counts] == [getattr(one, name) for name in counts]
    assert one.duplicates > 0 and one.rejected > 0
    assert two.rejected_by_reason == one.rejected_by_reason
    assert set(one.rejected_by_reason) == {"malformed_json", "unknown_topic"}
    # every alert opened and resolved, with its times and severity
    single = exact(runs.one_log.alerts)
    assert exact(runs.two_logs[0].alerts) == single
    assert {key[0] for key in single} >= {
        "rule.battery_low", "rule.hot", "device_offline", "gateway_down",
        "firmware_unexpected_change",
    }  # fmt: skip
    assert any(key[2] == "resolved" for key in single)
    assert (two.alerts_opened, two.alerts_resolved) == (one.alerts_opened, one.alerts_resolved)
    assert [change_key(a) for a in two.active] == [change_key(a) for a in one.active]
    # the reports, but for the fields that compare a group with the rest of the fleet,
    # which the merge names as approximate (service.runtime.report_merge)
    assert set(two.reports) == set(one.reports)
    for name, merged in two.reports.items():
        approximate = set(merged.get("approximate", {})) | {"approximate"}
        assert {k: v for k, v in merged.items() if k not in approximate} == {
            k: v for k, v in one.reports[name].items() if k not in approximate
        }, name


def test_sinks_get_each_change_once_and_the_dead_letters(runs: Runs) -> None:
    log = runs.two_logs[0]
    keys = [change_key(a) for a in log.alerts]
    assert len(keys) == len(set(keys)) == len(runs.one_log.alerts)
    opened = [a for a in log.alerts if a.state.value == "firing" and a.updated_at == a.started_at]
    assert len(opened) == runs.two[0].alerts_opened
    letters = [item for item in log.items if isinstance(item, DeadLetter)]
    assert len(letters) == runs.one.rejected


def test_a_sharded_replay_is_the_same_run_to_run(runs: Runs) -> None:
    first, second = runs.two_logs
    assert [change_key(a) for a in first.alerts] == [change_key(a) for a in second.alerts]
    assert [a.evidence for a in first.alerts] == [a.evidence for a in second.alerts]
    assert runs.two[0].reports == runs.two[1].reports
    assert runs.two[0].active == runs.two[1].active


def reading(site: str, device: str, ts: float, firmware: str) -> RawMessage:
    payload = {"ts": ts, "temperature_c": 21.0, "model": "TH-200", "firmware": firmware}
    return RawMessage(f"fleet/{site}/{device}/telemetry", orjson.dumps(payload), ts + 0.05)


def test_a_version_first_seen_in_another_worker_is_not_never_seen() -> None:
    # a1 (plant-a, worker 0) installs 2.0.0 first; d1 (plant-d, worker 1, same model)
    # installs it well after the next exchange of fleet facts
    settings = settings_from_mapping({"detectors": {"enabled": ["firmware"]}})
    later = EXCHANGE_MAX_TICKS + 4
    messages = []
    for minute in range(later + 5):
        ts = T0 + 60 * minute
        messages.append(reading("plant-a", "a1", ts, "2.0.0" if minute >= 2 else "1.0.0"))
        messages.append(reading("plant-d", "d1", ts, "2.0.0" if minute >= later else "1.0.0"))
    one, two = MemorySink(), ChangeLog()
    replay(messages, settings, sinks=[one])
    replay_sharded(messages, settings, workers=2, sinks=[two])

    def judged(alerts: list[AlertRecord], device: str) -> list[tuple[str, list[str]]]:
        return [
            (a.severity.label, list(a.evidence["reasons"]))
            for a in alerts
            if a.kind == "firmware_unexpected_change" and a.subject == device
        ]

    never = "version never seen for this model"
    assert any(never in reasons for _, reasons in judged(one.alerts, "a1"))
    assert judged(two.alerts, "a1") == judged(one.alerts, "a1")
    assert judged(one.alerts, "d1") and all(never not in r for _, r in judged(one.alerts, "d1"))
    # worker 1 has never seen 2.0.0 itself: only the exchange tells it worker 0 has
    assert judged(two.alerts, "d1") == judged(one.alerts, "d1")


def hot_fleet() -> list[RawMessage]:
    messages = []
    for minute in range(30):
        for site, device in (("plant-a", "a1"), ("plant-d", "d1")):
            value = 80.0 if 2 <= minute < 4 else 20.0
            body = orjson.dumps({"ts": T0 + 60 * minute, "temperature_c": value})
            messages.append(RawMessage(f"fleet/{site}/{device}/telemetry", body, T0 + 60 * minute))
    return messages


def test_one_worker_is_the_single_process_replay() -> None:
    settings = settings_from_mapping({"detectors": {"enabled": ["rules"]}, "rules": RULES})
    one = replay(hot_fleet(), settings)
    same = replay_sharded(hot_fleet(), settings, workers=1)
    assert not multiprocessing.active_children()
    assert (same.readings, same.alerts_opened, same.alerts_resolved) == (
        one.readings, one.alerts_opened, one.alerts_resolved,
    )  # fmt: skip
    assert (one.readings, one.alerts_opened, one.alerts_resolved) == (60, 2, 2)


def test_a_worker_that_cannot_start_is_reported_and_stopped(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-advisories.toml"
    settings = settings_from_mapping(
        {"detectors": {"enabled": ["firmware"], "firmware": {"advisories_file": str(missing)}}}
    )
    # both workers fail alike; the first to answer is named
    with pytest.raises(FleetWatchError, match=r"replay worker [01] could not start: .*advisories"):
        replay_sharded(hot_fleet(), settings, workers=2)
    assert not multiprocessing.active_children()


def test_a_worker_lost_mid_replay_is_reported_and_the_others_stopped() -> None:
    settings = settings_from_mapping({"detectors": {"enabled": ["rules"]}, "rules": RULES})
    killed: list[int] = []

    class KillWorkerOne:
        """On the first alert, worker 1 dies for real (SIGKILL)."""

        name = "killer"

        def offer(self, item: Item) -> None:
            for child in multiprocessing.active_children():
                if child.name == "fleetwatch-replay-worker-1" and not killed:
                    assert child.pid is not None
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)

    with pytest.raises(FleetWatchError, match="replay worker 1 exited unexpectedly"):
        replay_sharded(hot_fleet(), settings, workers=2, sinks=[KillWorkerOne()])
    assert killed
    assert not multiprocessing.active_children()


def test_cli_replays_on_two_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "fleet.jsonl"
    write_recording(recording, [(m.topic, m.payload, m.received_at) for m in hot_fleet()])
    config = tmp_path / "fleetwatch.toml"
    config.write_text(
        '[detectors]\nenabled = ["rules"]\n\n[[rules]]\nname = "hot"\n'
        'metric = "temperature_c"\nkind = "above"\nthreshold = 60\n'
    )
    args = ["replay", str(recording), "--config", str(config)]
    assert main([*args, "--workers", "2"]) == 0
    sharded = capsys.readouterr().out
    assert "replayed 60 messages" in sharded and "on 2 worker processes" in sharded
    assert "readings accepted   60" in sharded
    assert not multiprocessing.active_children()
    assert main(args) == 0
    single = capsys.readouterr().out
    assert "worker processes" not in single

    def changes(out: str) -> list[str]:
        return sorted(line for line in out.splitlines() if " rule.hot " in line)

    assert len(changes(single)) == 4 and changes(sharded) == changes(single)
    assert main([*args, "--workers", "-1"]) == 2
    assert "--workers" in capsys.readouterr().err
