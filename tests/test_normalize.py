"""Normalization: canonical names, units, timestamps, late data and duplicates."""

from __future__ import annotations

import pytest

from config.settings import IngestSettings, MetricAlias
from service.errors import DecodeError
from service.model import MessageKind
from service.normalize import Normalizer, parse_timestamp
from service.registry import DeviceRegistry

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def run(norm: Normalizer, records: list[dict], device: str = "d1", received: float = NOW):
    return norm.normalize(
        records,
        device_id=device,
        kind=MessageKind.TELEMETRY,
        received_at=received,
        levels={"site": "plant-a"},
        protocol="mqtt",
    )


@pytest.fixture
def norm() -> Normalizer:
    return Normalizer(DeviceRegistry())


def test_aliases_and_units_map_to_canonical_metrics(norm: Normalizer) -> None:
    out = run(norm, [{"ts": NOW, "vbat_mv": 3650, "temp_f": 212, "rh": 40, "rssi": -70}])
    metrics = dict(out.readings[0].metrics)
    assert metrics["battery_v"] == pytest.approx(3.65)
    assert metrics["temperature_c"] == pytest.approx(100.0)
    assert metrics["humidity_pct"] == 40.0
    assert metrics["rssi_dbm"] == -70.0


def test_configured_aliases_extend_the_built_in_ones() -> None:
    settings = IngestSettings(
        aliases={"volts": "battery_v", "supply_mv": MetricAlias(metric="voltage_v", scale=0.001)}
    )
    out = run(Normalizer(DeviceRegistry(), settings), [{"volts": 3.1, "supply_mv": 5000}])
    assert dict(out.readings[0].metrics) == {"battery_v": 3.1, "voltage_v": 5.0}


def test_metadata_fields_and_topic_identity(norm: Normalizer) -> None:
    out = run(norm, [{"fw": "2.1.0", "model": "TH-200", "gw": "gw-1", "lat": 52.1, "x": 3}])
    meta = out.readings[0].meta
    assert meta["firmware"] == "2.1.0"
    assert meta["model"] == "TH-200"
    assert meta["gateway"] == "gw-1"
    assert meta["lat"] == "52.1"
    assert meta["pos_x"] == "3"
    assert meta["site"] == "plant-a"
    assert meta["protocol"] == "mqtt"


def test_nested_metrics_and_meta_objects_are_read(norm: Normalizer) -> None:
    out = run(norm, [{"metrics": {"batt": 3.5}, "meta": {"model": "M1"}}])
    assert dict(out.readings[0].metrics) == {"battery_v": 3.5}
    assert out.readings[0].meta["model"] == "M1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1_767_225_600, NOW),
        (1_767_225_600_000, NOW),
        (1_767_225_600_000_000, NOW),
        ("2026-01-01T00:00:00Z", NOW),
        ("2026-01-01T01:00:00+01:00", NOW),
        ("2026-01-01T00:00:00", NOW),
        ("1767225600.5", NOW + 0.5),
    ],
)
def test_timestamp_forms(raw: object, expected: float) -> None:
    assert parse_timestamp(raw) == pytest.approx(expected)


def test_missing_timestamp_uses_receive_time(norm: Normalizer) -> None:
    out = run(norm, [{"temp": 20}], received=NOW + 5)
    assert out.readings[0].ts == NOW + 5


def test_future_timestamp_is_corrected_and_counted(norm: Normalizer) -> None:
    out = run(norm, [{"ts": NOW + 3600, "temp": 20}])
    assert out.readings[0].ts == NOW
    assert out.corrected_future == 1


@pytest.mark.parametrize("bad_ts", [0, 12345, "yesterday", "2026-13-45T00:00:00Z", True, [1]])
def test_impossible_timestamp_rejects_the_record(norm: Normalizer, bad_ts: object) -> None:
    out = run(norm, [{"ts": bad_ts, "temp": 20}])
    assert out.readings == []
    assert [e.reason for e in out.rejected] == ["invalid_timestamp"]


def test_late_reading_is_kept_and_marked(norm: Normalizer) -> None:
    run(norm, [{"ts": NOW, "temp": 20}])
    out = run(norm, [{"ts": NOW - 60, "temp": 19}])
    assert out.readings[0].late is True
    assert out.late == 1


def test_duplicates_by_seq_and_ts_are_dropped(norm: Normalizer) -> None:
    first = run(norm, [{"ts": NOW, "seq": 7, "temp": 20}])
    again = run(norm, [{"ts": NOW, "seq": 7, "temp": 20}])
    rebooted = run(norm, [{"ts": NOW + 60, "seq": 7, "temp": 21}])
    assert len(first.readings) == 1
    assert again.readings == [] and again.duplicates == 1
    assert len(rebooted.readings) == 1  # same seq after a reboot, new time: not a duplicate


def test_duplicates_by_ts_without_seq(norm: Normalizer) -> None:
    run(norm, [{"ts": NOW, "temp": 20}])
    assert run(norm, [{"ts": NOW, "temp": 20}]).duplicates == 1
    assert run(norm, [{"ts": NOW, "temp": 20}], device="d2").duplicates == 0


def test_string_where_a_number_belongs_rejects_only_that_record(norm: Normalizer) -> None:
    out = run(norm, [{"ts": NOW, "battery_v": "high"}, {"ts": NOW + 1, "battery_v": 3.6}])
    assert [e.reason for e in out.rejected] == ["non_numeric_value"]
    assert len(out.readings) == 1


def test_numeric_strings_are_numbers_and_free_text_is_metadata(norm: Normalizer) -> None:
    out = run(norm, [{"temperature_c": "21.5", "note": "door open"}])
    assert out.readings[0].metrics["temperature_c"] == 21.5
    assert out.readings[0].meta["note"] == "door open"


def test_non_finite_numbers_are_rejected(norm: Normalizer) -> None:
    out = run(norm, [{"temp": float("nan")}, {"temp": float("inf")}, {"temp": 10**400}])
    assert [e.reason for e in out.rejected] == ["non_finite_number"] * 3


def test_payload_naming_another_device_is_rejected(norm: Normalizer) -> None:
    out = run(norm, [{"device_id": "someone-else", "temp": 20}])
    assert [e.reason for e in out.rejected] == ["device_mismatch"]


def test_too_many_metrics_is_rejected() -> None:
    norm = Normalizer(DeviceRegistry(), IngestSettings(max_metrics_per_reading=3))
    out = run(norm, [{f"m{i}": i for i in range(5)}])
    assert [e.reason for e in out.rejected] == ["too_many_fields"]


def test_registry_tracks_devices_and_shares_unchanged_metadata(norm: Normalizer) -> None:
    a = run(norm, [{"ts": NOW, "model": "M", "temp": 1}]).readings[0]
    b = run(norm, [{"ts": NOW + 1, "temp": 2}]).readings[0]
    assert a.meta is b.meta
    info = norm.registry.get("d1")
    assert info is not None and info.last_ts == NOW + 1 and len(norm.registry) == 1


def test_dedupe_memory_is_bounded() -> None:
    norm = Normalizer(DeviceRegistry(), IngestSettings(dedupe_capacity=10))
    for i in range(100):
        run(norm, [{"ts": NOW + i, "temp": 1}])
    assert len(norm._seen) == 10


def test_decode_error_carries_context() -> None:
    err = DecodeError("too_large", "big", topic="t", device_id="d")
    assert (err.reason, err.topic, err.device_id) == ("too_large", "t", "d")


def test_event_fields_stay_with_their_message_and_do_not_stick_to_the_device() -> None:
    normalizer = Normalizer(DeviceRegistry())
    event = normalizer.normalize(
        [{"ts": NOW, "event": "failed", "from": "1.4", "to": "1.5", "code": 7, "model": "TH-200"}],
        device_id="d1", kind=MessageKind.FIRMWARE, received_at=NOW, levels={}, protocol="mqtt",
    ).readings[0]  # fmt: skip
    assert event.meta["event"] == "failed" and event.meta["to_version"] == "1.5"
    later = normalizer.normalize(
        [{"ts": NOW + 60, "temperature_c": 20}],
        device_id="d1", kind=MessageKind.TELEMETRY, received_at=NOW + 60, levels={},
        protocol="mqtt",
    ).readings[0]  # fmt: skip
    assert later.meta["model"] == "TH-200"
    assert "event" not in later.meta and "to_version" not in later.meta


def test_dedupe_window_remembers_older_keys_not_only_the_newest(norm: Normalizer) -> None:
    for i in range(5):
        run(norm, [{"ts": NOW + i, "seq": i, "temp": 1}])
    resent = run(norm, [{"ts": NOW + 1, "seq": 1, "temp": 1}, {"ts": NOW + 1, "seq": 9}])
    assert resent.duplicates == 1 and len(resent.readings) == 1
    assert run(norm, [{"seq": 3}]).duplicates == 0  # seq alone: keyed with ts 0.0
    assert run(norm, [{"seq": 3}]).duplicates == 1


def test_dedupe_window_evicts_oldest_first_across_devices() -> None:
    norm = Normalizer(DeviceRegistry(), IngestSettings(dedupe_capacity=3))
    run(norm, [{"ts": NOW, "temp": 1}], device="a")
    run(norm, [{"ts": NOW, "temp": 1}], device="b")
    run(norm, [{"ts": NOW + 1, "temp": 1}], device="a")
    run(norm, [{"ts": NOW + 1, "temp": 1}], device="b")  # pushes (a, NOW) out
    assert [key[0] for key in norm.state_dict()["seen"]] == ["b", "a", "b"]
    assert run(norm, [{"ts": NOW, "temp": 1}], device="b").duplicates == 1
    assert run(norm, [{"ts": NOW, "temp": 1}], device="a").duplicates == 0


def test_dedupe_state_round_trips_and_reads_the_saved_layout() -> None:
    saved = {"version": 1, "seen": [["d1", 7, NOW], ["d2", None, NOW], ["d1", 7, NOW]]}
    norm = Normalizer(DeviceRegistry(), IngestSettings(dedupe_capacity=10))
    norm.load_state(saved)
    assert norm.state_dict() == {"version": 1, "seen": [["d1", 7, NOW], ["d2", None, NOW]]}
    assert run(norm, [{"ts": NOW, "seq": 7, "temp": 1}]).duplicates == 1
    small = Normalizer(DeviceRegistry(), IngestSettings(dedupe_capacity=1))
    small.load_state(saved)
    assert small.state_dict()["seen"] == [["d2", None, NOW]]


def test_devices_with_equal_metadata_share_one_mapping(norm: Normalizer) -> None:
    a = run(norm, [{"ts": NOW, "model": "M", "gw": "g1"}], device="a").readings[0]
    b = run(norm, [{"ts": NOW, "model": "M", "gw": "g1"}], device="b").readings[0]
    c = run(norm, [{"ts": NOW, "gw": "g1", "model": "M"}], device="c").readings[0]
    assert a.meta is b.meta and dict(a.meta) == dict(c.meta)
    assert list(c.meta) == ["gateway", "model", "site", "protocol"]  # its own order
    moved = run(norm, [{"ts": NOW + 1, "gw": "g2"}], device="a").readings[0]
    assert moved.meta["gateway"] == "g2" and b.meta["gateway"] == "g1"
