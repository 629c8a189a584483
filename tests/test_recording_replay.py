"""Recordings, replay, and the simulate/replay/check-config commands."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from config.settings import EXAMPLE_CONFIG, settings_from_mapping
from service.commands.cli import main
from service.records import RawMessage
from service.replay.engine import replay
from service.replay.recording import RecordingError, read_recording, write_recording
from service.simulator import FaultSpec, SimulationConfig, Simulator


def test_round_trip_text_binary_and_gzip(tmp_path: Path) -> None:
    rows = [("a/b", b'{"x": 1}', 1.5), ("a/c", b"\x00\xff", 2.5)]
    for name in ("r.jsonl", "r.jsonl.gz"):
        path = tmp_path / name
        assert write_recording(path, rows) == 2
        assert [(m.topic, m.payload, m.received_at) for m in read_recording(path)] == rows
    with gzip.open(tmp_path / "r.jsonl.gz") as handle:
        assert b'"payload_b64"' in handle.read()


def test_corrupt_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"topic": "a", "payload": "{}", "received_at": 1}\nnot json\n[1]\n'
                    '{"topic": "b", "payload_b64": "!!", "received_at": 2}\n'
                    '{"topic": "c", "payload": "{}", "received_at": 3}\n')  # fmt: skip
    errors: list[tuple[int, str]] = []
    topics = [m.topic for m in read_recording(path, on_error=lambda n, r: errors.append((n, r)))]
    assert topics == ["a", "c"]
    assert [n for n, _ in errors] == [2, 3, 4]
    with pytest.raises(RecordingError) as info:
        list(read_recording(path))
    assert info.value.line == 2


def test_replay_finds_the_planted_battery_failures() -> None:
    simulator = Simulator(SimulationConfig(devices=200, interval_s=60, seed=5,
                                           faults=(FaultSpec.parse("battery_failing=4@600:collapse_s=1800"),)))  # fmt: skip
    messages = [m for m in simulator.messages(simulator.config.start_ts + 7200)]
    from service.records import RawMessage

    raw = [RawMessage(m.topic, m.payload, m.ts + 0.05) for m in messages]
    settings = settings_from_mapping({"rules": [
        {"name": "battery_low", "metric": "battery_v", "kind": "below", "threshold": 3.3}]})  # fmt: skip
    summary = replay(raw, settings)
    planted = {p.device_id for p in simulator.planted()}
    assert {a.subject for a in summary.active} == planted
    assert summary.readings == len(messages) and summary.rejected == 0


def test_simulate_out_then_replay_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "fleet.jsonl"
    assert main(["simulate", "--devices", "50", "--interval", "30", "--duration", "3600",
                 "--fault", "battery_failing=2@300:collapse_s=600", "--out", str(recording)]) == 0  # fmt: skip
    assert "recorded" in capsys.readouterr().out
    assert main(["replay", str(recording), "--config", str(EXAMPLE_CONFIG), "--json"]) == 0
    captured = capsys.readouterr()
    alerts = [orjson.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    battery = [a for a in alerts if a["kind"] == "rule.battery_low"]
    assert len({a["subject"] for a in battery}) == 2
    # the example configuration's other detectors see what they should: vulnerable firmware
    # (its advisories), and nothing about connectivity in a healthy fleet
    assert {a["kind"] for a in alerts} <= {"rule.battery_low", "firmware_vulnerable"}
    assert "readings accepted" in captured.err and "readings/s" in captured.err


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE_CONFIG)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'many'\n")
    assert main(["check-config", str(bad)]) == 2
    assert "mqtt.port" in capsys.readouterr().err


def _fleet_with_one_line_ahead(seconds_ahead: float) -> list[RawMessage]:
    simulator = Simulator(SimulationConfig(devices=60, interval_s=60, seed=8))
    raw = [RawMessage(m.topic, m.payload, m.ts + 0.05)
           for m in simulator.messages(simulator.config.start_ts + 4 * 3600)]  # fmt: skip
    middle = len(raw) // 2
    line = raw[middle]
    raw[middle] = RawMessage(line.topic, line.payload, line.received_at + seconds_ahead)
    return raw


def test_replay_puts_a_line_ahead_of_its_neighbours_back_in_order() -> None:
    # one recorded line nine minutes ahead: replayed where it stands, it would move the
    # replay's clock past every other device
    settings = settings_from_mapping({})
    raw = _fleet_with_one_line_ahead(540.0)
    summary = replay(raw, settings)
    assert summary.reordered >= 1 and summary.too_late == 0
    assert summary.readings == len(raw)
    kinds = {a.kind for a in summary.active}
    assert "gateway_down" not in kinds and "device_offline" not in kinds

    as_read = replay(raw, settings, reorder_window_s=0.0)
    assert as_read.reordered == 0
    assert as_read.alerts_opened > summary.alerts_opened  # the jump raised alerts as read


def test_replay_counts_what_is_further_out_of_order_than_the_window() -> None:
    # a line three hours behind its neighbours: the replay's clock has passed it; it is
    # replayed at once, as a late delivery would be live, and counted
    raw = _fleet_with_one_line_ahead(-3 * 3600.0)
    summary = replay(raw, settings_from_mapping({}), reorder_window_s=600.0)
    assert (summary.too_late, summary.reordered) == (1, 0)
    assert summary.readings == len(raw)
    # far ahead instead: held until its time comes, nothing left behind
    ahead = replay(_fleet_with_one_line_ahead(3 * 3600.0), settings_from_mapping({}),
                   reorder_window_s=600.0)  # fmt: skip
    assert (ahead.too_late, ahead.reordered) == (0, 1)


def test_reorder_window_sorts_whatever_is_displaced_less_than_the_window() -> None:
    import random

    from service.replay.ordering import ReorderWindow

    rng = random.Random(1)
    for _ in range(100):
        times = sorted(rng.uniform(0, 1000) for _ in range(300))
        times = [t + rng.uniform(-50, 50) if rng.random() < 0.2 else t for t in times]
        window = ReorderWindow(window_s=120.0, max_held=10_000)
        out = [m.received_at for m in window.order(RawMessage("t", b"", t) for t in times)]
        assert out == sorted(times) and window.too_late == 0
    bounded = ReorderWindow(window_s=1e9, max_held=5)
    out = list(bounded.order(RawMessage("t", b"", float(t)) for t in (5, 4, 3, 2, 1, 0, 9)))
    assert len(out) == 7  # never holds more than max_held: the oldest goes out early
