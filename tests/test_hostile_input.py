"""Hostile input: whatever arrives, the codecs, the topic parser, the normalizer and the
pipeline answer with readings or a clear decode error, never with an exception or a bug."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from config.settings import Settings, settings_from_mapping
from protocols.codecs import CodecSet, DecodeContext
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.errors import DecodeError
from service.intake.normalize import Normalizer
from service.intake.pipeline import Pipeline
from service.intake.registry import DeviceRegistry
from service.intake.topics import TopicRouter
from service.records import MessageKind, RawMessage

NOW = 1_767_225_600.0
SETTINGS = Settings()
JSON_CODEC = CodecSet().for_content_type(None)
assert JSON_CODEC is not None

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
field_names = st.one_of(
    st.sampled_from(["ts", "seq", "battery_v", "batt", "temperature_c", "rssi_dbm", "model",
                     "firmware", "device_id", "site", "zone", "gateway", "lat", "lon", "status"]),
    st.text(max_size=12),
)  # fmt: skip
records = st.dictionaries(field_names, json_values, max_size=10)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    records.map(orjson.dumps),
    st.lists(records, max_size=5).map(orjson.dumps),
)
topic_levels = st.one_of(
    st.sampled_from(["fleet", "devices", "telemetry", "status", "firmware", "plant-a", "d1", ""]),
    st.text(max_size=10),
)
topics = st.lists(topic_levels, min_size=0, max_size=7).map("/".join)


def pipeline() -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    config = settings_from_mapping(
        {"rules": [{"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 50}]}
    )
    from detectors import build_detectors

    built = Pipeline.build(
        config,
        detectors=build_detectors(config),
        sinks=[sink],
        metrics=FleetMetrics(CollectorRegistry()),
    )
    return built, sink


@settings(max_examples=150, deadline=None)
@given(payload=payloads, kind=st.sampled_from(list(MessageKind)))
def test_json_codec_returns_records_or_a_decode_error(payload: bytes, kind: MessageKind) -> None:
    try:
        decoded = JSON_CODEC.decode(payload, DecodeContext(kind, 100))
    except DecodeError as exc:
        assert exc.reason
        return
    assert isinstance(decoded, list)
    assert all(isinstance(record, dict) for record in decoded)


@settings(max_examples=150, deadline=None)
@given(topic=topics)
def test_topic_router_matches_or_refuses(topic: str) -> None:
    router = TopicRouter(SETTINGS.topics.templates)
    try:
        found = router.match(topic)
    except DecodeError as exc:
        assert exc.reason in {"unknown_topic", "unknown_kind"}
        return
    assert found.device_id


@settings(max_examples=80, deadline=None)
@given(batch=st.lists(records, min_size=1, max_size=4))
def test_normalizer_accepts_or_rejects_each_record(batch: list[dict[str, Any]]) -> None:
    normalizer = Normalizer(DeviceRegistry(), SETTINGS.ingest)
    result = normalizer.normalize(
        batch,
        device_id="d1",
        kind=MessageKind.TELEMETRY,
        received_at=NOW,
        levels={"site": "plant-a"},
        protocol="mqtt",
    )
    assert len(result.readings) + len(result.rejected) + result.duplicates == len(batch)
    for reading in result.readings:
        assert reading.device_id == "d1"
        assert all(isinstance(v, float) for v in reading.metrics.values())
        assert all(v == v and abs(v) != float("inf") for v in reading.metrics.values())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.tuples(topics, payloads), min_size=1, max_size=8))
def test_pipeline_never_fails_and_never_hits_an_internal_error(
    messages: list[tuple[str, bytes]],
) -> None:
    built, sink = pipeline()
    outcome = built.process_messages([RawMessage(t, p, NOW) for t, p in messages])
    assert outcome.messages == len(messages)
    assert not [letter for letter in sink.deadletters if letter.reason == "internal_error"]


@pytest.mark.parametrize("depth", [100, 2_000, 100_000])
def test_deeply_nested_payloads_are_refused_cleanly(depth: int) -> None:
    built, sink = pipeline()
    nested = b"[" * depth + b"]" * depth
    wrapped = b'{"temperature_c": 20, "x": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    outcome = built.process_messages(
        [
            RawMessage("fleet/plant-a/d1/telemetry", nested, NOW),
            RawMessage("fleet/plant-a/d2/telemetry", wrapped, NOW),
        ]
    )
    assert outcome.messages == 2
    assert not [letter for letter in sink.deadletters if letter.reason == "internal_error"]
    assert outcome.rejected >= 1  # the bare nest is not a telemetry record


def test_payload_over_the_size_limit_is_refused_before_parsing() -> None:
    built, sink = pipeline()
    limit = built.settings.ingest.max_payload_bytes
    huge = b'{"temperature_c": 20, "pad": "' + b"a" * limit + b'"}'
    outcome = built.process_messages([RawMessage("fleet/plant-a/d1/telemetry", huge, NOW)])
    assert outcome.rejected == 1
    assert sink.deadletters[0].reason == "too_large"


def test_a_payload_naming_another_device_is_refused_as_spoofing() -> None:
    built, sink = pipeline()
    spoof = orjson.dumps({"device_id": "d-victim", "temperature_c": 99})
    outcome = built.process_messages([RawMessage("fleet/plant-a/d-attacker/telemetry", spoof, NOW)])
    assert outcome.rejected == 1 and outcome.accepted == 0
    assert sink.deadletters[0].reason == "device_mismatch"
    assert "d-victim" not in built.registry


def test_allow_list_refuses_devices_and_sites_outside_it() -> None:
    config = settings_from_mapping(
        {"ingest": {"allowed_devices": ["TH-*", "VB-*"], "allowed_sites": ["plant-?"]}}
    )
    sink = MemorySink()
    built = Pipeline.build(
        config, detectors=[], sinks=[sink], metrics=FleetMetrics(CollectorRegistry())
    )
    body = b'{"temperature_c": 20}'
    outcome = built.process_messages(
        [
            RawMessage("fleet/plant-a/TH-1/telemetry", body, NOW),
            RawMessage("fleet/plant-a/rogue-1/telemetry", body, NOW),
            RawMessage("fleet/elsewhere/VB-2/telemetry", body, NOW),
            RawMessage("fleet/plant-b/VB-2/telemetry", body, NOW),
        ]
    )
    assert (outcome.accepted, outcome.rejected) == (2, 2)
    assert {letter.device_id for letter in sink.deadletters} == {"rogue-1", "VB-2"}
    assert {letter.reason for letter in sink.deadletters} == {"not_allowed"}
    assert sorted(info.device_id for info in built.registry) == ["TH-1", "VB-2"]
