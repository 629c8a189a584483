"""Normalization: canonical names, units, timestamps, late data and duplicates."""

from __future__ import annotations

import pytest

from config.settings import IngestSettings, MetricAlias
from service.errors import DecodeError
from service.intake.normalize import Normalizer, parse_timestamp
from service.intake.registry import DeviceRegistry
from service.records import MessageKind

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


def test_duplicate_from_a_fast_clock_is_recognised_by_the_devices_own_ts(
    norm: Normalizer,
) -> None:
    # a device clock ten minutes fast: its ts is corrected to the receive time, which
    # differs between the two deliveries of the same reading
    fast = {"ts": NOW + 600, "temp": 20}
    first = run(norm, [fast], received=NOW)
    again = run(norm, [fast], received=NOW + 4)
    assert first.corrected_future == 1 and len(first.readings) == 1
    assert again.readings == [] and again.duplicates == 1
    with_seq = {"ts": NOW + 900, "seq": 3, "temp": 21}
    run(norm, [with_seq], received=NOW + 300)
    assert run(norm, [with_seq], received=NOW + 310).duplicates == 1


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


def _split_both_ways(records: list[dict]) -> tuple[list, list]:
    """Each record split by its shape's plan and field by field, as comparable data."""
    from service.intake.normalize import PLAN_AFTER, NormalizeResult

    planned, by_field = Normalizer(DeviceRegistry()), Normalizer(DeviceRegistry())
    outcomes: tuple[list, list] = ([], [])
    for record in records:
        for split, out in (
            (planned._split, outcomes[0]),
            (lambda *args: by_field._split_fields(*args) or True, outcomes[1]),
        ):
            metrics: dict = {}
            meta: dict = {}
            result = NormalizeResult()
            for _ in range(PLAN_AFTER):  # the last time with the shape's plan
                try:
                    metrics, meta, result = {}, {}, NormalizeResult()
                    split(dict(record), metrics, meta, result)
                    error = None
                except DecodeError as exc:
                    error = (exc.reason, exc.detail)
            out.append(
                (
                    [(k, repr(v)) for k, v in metrics.items()],
                    list(meta.items()),
                    result.ignored_fields,
                    error,
                )
            )
    return outcomes


def test_a_shape_plan_splits_records_exactly_as_field_by_field() -> None:
    records = [
        {"ts": NOW, "seq": 1, "temperature_c": 21.5, "batt": 3, "vbat_mv": True, "temp_f": -0.0,
         "model": "M", "fw": "1.2", "firmware": 3, "lat": 45.4, "x": 2, "radio": "lorawan",
         "odd key": 1, "code": None, "rh": None, "snr": [1], "zone": "z" * 300},
        {"ts": NOW, "radio": "lorawan", "mode": "eco"},
        {"ts": NOW, "radio": "12.5", "mode": "eco"},  # a number in a word's place
        {"ts": NOW, "temperature_c": 1e308, "power": 1e308},  # the sum overflows, not a value
        {"ts": NOW, "temperature_c": float("inf")},
        {"ts": NOW, "batt": "3.7", "rssi": "-70"},
        {"ts": NOW, "batt": "full", "rssi": "-70"},
        {"ts": NOW, "battery_mv": 10**400},
        {"ts": NOW, "status": "ok", "event": "boot", "from": 1.5},
        {"temp": 1, "temperature": 2, "temp_c": 3.5},
    ]  # fmt: skip
    planned, by_field = _split_both_ways(records)
    assert planned == by_field
    assert planned[3][3] is None and planned[4][3] == (
        "non_finite_number",
        "'temperature_c' is not finite",
    )


def test_the_same_keys_with_other_value_types_get_their_own_plan(norm: Normalizer) -> None:
    for value in (1.5, 2, "3.5", "on", None, True, 1.5):
        for _ in range(4):  # the later ones with the shape's plan
            out = run(norm, [{"radio": value}], received=NOW + len(norm._seen))
        reading = out.readings[0]
        if value is None:
            assert dict(reading.metrics) == {}
        elif value == "on":
            assert reading.meta["radio"] == "on" and dict(reading.metrics) == {}
        else:
            assert dict(reading.metrics) == {"radio": float(value)}
    for _ in range(4):  # an alias takes numbers only
        out = run(norm, [{"power": "on"}], received=NOW + len(norm._seen))
        assert [e.reason for e in out.rejected] == ["non_numeric_value"]


def test_dedupe_window_keeps_every_kind_of_seq_apart() -> None:
    from service.intake.normalize import DedupeWindow

    window = DedupeWindow(capacity=100)
    keys = [("d1", 1, 10.0), ("d1", None, 10.0), ("d1", 2**60 + 1, 10.0), ("d1", 2**53, 11.0)]
    assert all(window.add(*key) for key in keys)
    assert window.add("d1", 2**60, 10.0)  # a float cannot tell it from 2**60 + 1
    assert not any(window.add(*key) for key in keys)
    assert not window.add("d1", 1.0, 10.0)  # equal to 1, as in Python
    assert window.add("d2", 1.5, 10.0) and not window.add("d2", 1.5, 10.0)
    assert list(window) == [*keys, ("d1", 2**60, 10.0), ("d2", 1.5, 10.0)]


def test_dedupe_window_state_round_trips_and_loads_older_checkpoints() -> None:
    norm = Normalizer(DeviceRegistry())
    for i in range(3):
        run(norm, [{"ts": NOW + i, "seq": i, "temp": 1}])
    run(norm, [{"temp": 1}], received=NOW + 10)
    state = norm.state_dict()
    assert state == {
        "version": 1,
        "seen": [["d1", 0, NOW], ["d1", 1, NOW + 1], ["d1", 2, NOW + 2], ["d1", None, NOW + 10]],
    }
    # a checkpoint as written before: the same layout, with seqs of any JSON kind
    older = {"version": 1, "seen": [["d1", 1, NOW], ["d2", 2.0, NOW], ["d2", None, NOW + 1]]}
    for saved in (state, older):
        restored = Normalizer(DeviceRegistry())
        restored.load_state(saved)
        assert restored.state_dict() == saved
        assert all(not restored._seen.add(d, seq, ts) for d, seq, ts in saved["seen"])
