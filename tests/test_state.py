"""The state store and checkpoints: what is saved comes back exactly, what cannot be read is
refused with a message that names it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from config.settings import Settings, settings_from_mapping
from detectors import build_detectors
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.errors import StateError
from service.intake.pipeline import Pipeline
from service.records import DeadLetter, RawMessage
from service.state.store import StateStore, outbox_items, outbox_state

NOW = 1_767_225_600.0
RULES = [
    {"name": "battery_low", "metric": "battery_v", "kind": "below", "threshold": 3.3},
    {"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 70.0,
     "for_s": 120},
]  # fmt: skip


def settings(**alerts: float) -> Settings:
    return settings_from_mapping({"rules": RULES, "alerts": alerts})


def pipeline(config: Settings) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    built = Pipeline.build(
        config,
        detectors=build_detectors(config),
        sinks=[sink],
        metrics=FleetMetrics(CollectorRegistry()),
    )
    return built, sink


def message(device: str, seq: int, **metrics: float) -> RawMessage:
    payload = orjson.dumps({"ts": NOW + seq * 60, "seq": seq, **metrics})
    return RawMessage(f"fleet/plant-a/{device}/telemetry", payload, NOW + seq * 60 + 0.1)


def through_json(components: dict) -> dict:  # type: ignore[type-arg]
    return orjson.loads(orjson.dumps(components))  # type: ignore[no-any-return]


def test_checkpoint_and_journal_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    messages = [message("d1", 1, battery_v=3.7), message("d2", 2, battery_v=3.1)]
    with StateStore(path) as store:
        assert store.load_checkpoint() is None
        store.save_checkpoint({"pipeline": {"version": 1, "data_time": 5.0}}, saved_at=10.0)
        store.append_journal(messages)
        assert store.journal_length == 2
    with StateStore(path) as store:
        checkpoint = store.load_checkpoint()
        assert checkpoint is not None
        assert checkpoint.saved_at == 10.0
        assert checkpoint.components["pipeline"]["data_time"] == 5.0
        assert list(store.journal()) == messages
        assert store.journal_length == 2
        store.save_checkpoint({"pipeline": {"version": 1, "data_time": 6.0}})
        assert list(store.journal()) == []


def test_a_state_file_from_a_newer_fleetwatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE store_meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(StateError, match="schema 99, written by a newer FleetWatch"):
        StateStore(path).open()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot be opened"):
        StateStore(path).open()


def test_a_component_saved_in_a_newer_format_is_refused_by_name() -> None:
    restored, _ = pipeline(settings())
    with pytest.raises(StateError, match="saved state of alerts has format 7"):
        restored.load_state({"alerts": {"version": 7, "open": []}})
    with pytest.raises(StateError, match="detector rules cannot be read"):
        restored.load_state({"detector.rules": {"version": 1, "state": [["x"]]}})


def test_restored_pipeline_carries_on_where_it_was() -> None:
    config = settings()
    first, first_sink = pipeline(config)
    history = [
        message("d1", 1, battery_v=3.7),
        message("d1", 2, battery_v=3.1),  # fires battery_low
        message("d2", 3, temperature_c=80.0),  # hot, but for_s not yet reached
        message("d3", 4, battery_v=3.9),
    ]
    first.process_messages(history)
    assert [a.subject for a in first.alerts.active()] == ["d1"]

    restored, restored_sink = pipeline(config)
    restored.load_state(through_json(first.state_dict()))

    # what was processed before is recognised as duplicates, nothing fires twice
    outcome = restored.process_messages(history)
    assert (outcome.accepted, outcome.duplicates) == (0, 4)
    assert restored_sink.alerts == []
    assert restored.totals.accepted == 4
    assert len(restored.registry) == 3
    assert restored.registry.get("d2").meta["site"] == "plant-a"  # type: ignore[union-attr]

    # the rule engine remembers that d2 has been hot since seq 3: 2 minutes later it fires
    restored.process_messages([message("d2", 5, temperature_c=81.0)])
    assert [(a.kind, a.subject) for a in restored_sink.alerts] == [("rule.hot", "d2")]

    # the open alert keeps its id and resolves on recovery
    restored.process_messages([message("d1", 6, battery_v=3.8)])
    resolved = [a for a in restored_sink.alerts if a.subject == "d1"]
    assert [a.state.value for a in resolved] == ["resolved"]
    assert resolved[0].id == first_sink.alerts[0].id
    assert restored.alerts.fired_total == 2 and restored.alerts.resolved_total == 1


def test_pending_alerts_under_a_fire_hold_survive_a_restart() -> None:
    config = settings(fire_hold_s=600.0)
    first, _ = pipeline(config)
    first.process_messages([message("d1", 1, battery_v=3.1)])
    assert list(first.alerts.active()) == []
    restored, sink = pipeline(config)
    restored.load_state(through_json(first.state_dict()))
    restored.tick(NOW + 60 + 600)
    assert [a.subject for a in sink.alerts] == ["d1"]
    assert sink.alerts[0].started_at == NOW + 60


def test_outbox_round_trip_keeps_alerts_and_dead_letters() -> None:
    first, sink = pipeline(settings())
    first.process_messages([message("d1", 1, battery_v=3.1), RawMessage("x/y", b"{", NOW)])
    items = [*sink.alerts, *sink.deadletters]
    assert len(items) == 2
    assert outbox_items(orjson.loads(orjson.dumps(outbox_state(items)))) == items


def test_dead_letter_payload_survives_as_bytes() -> None:
    letter = DeadLetter("t", "malformed_json", "detail", b"\x00\xff{", NOW, "coap", "d9")
    assert outbox_items(outbox_state([letter])) == [letter]


SCHEMA_1 = """
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE checkpoint (component TEXT PRIMARY KEY, saved_at REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE journal (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
    payload BLOB NOT NULL, received_at REAL NOT NULL, protocol TEXT NOT NULL, content_type TEXT);
INSERT INTO store_meta VALUES ('schema', '1');
"""


def test_a_schema_1_journal_is_replayed_before_what_is_journaled_after_the_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    old = message("d1", 1, battery_v=3.7)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
        db.execute(
            "INSERT INTO journal (topic, payload, received_at, protocol, content_type) "
            "VALUES (?, ?, ?, ?, ?)",
            (old.topic, old.payload, old.received_at, old.protocol, old.content_type),
        )
    new = [message("d2", 2, battery_v=3.6), message("d3", 3, battery_v=3.5)]
    with StateStore(path) as store:
        assert store.journal_length == 1
        store.append_journal(new)
        assert store.journal_length == 3
    with StateStore(path) as store:
        assert list(store.journal()) == [old, *new]
        store.save_checkpoint({"pipeline": {"version": 1, "data_time": 6.0}})
        assert list(store.journal()) == [] and store.journal_length == 0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM store_meta WHERE key = 'schema'").fetchone() == ("2",)


def test_a_corrupt_journal_batch_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        store.append_journal([message("d1", 1, battery_v=3.7)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE journal_batch SET data = x'9f01'")
    with StateStore(path) as store, pytest.raises(StateError, match=r"journal batch 1 .* corrupt"):
        list(store.journal())


def test_a_state_file_is_used_by_one_daemon_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = StateStore(path, exclusive=True).open()
    second = StateStore(path, exclusive=True, lock_timeout_s=0.1)
    with pytest.raises(StateError, match="in use by another FleetWatch process"):
        second.open()
    # reading it (as tools and tests do) takes no lock
    with StateStore(path) as reader:
        assert reader.load_checkpoint() is None
    first.close()
    second.open()  # free once the first has closed it
    second.close()
