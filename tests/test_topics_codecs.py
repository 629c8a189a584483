"""Topic templates and the JSON codec."""

from __future__ import annotations

import pytest

from protocols.codecs import CodecSet, DecodeContext
from protocols.codecs.json import JsonCodec
from service.errors import ConfigError, DecodeError
from service.intake.topics import TopicRouter
from service.records import MessageKind

ROUTER = TopicRouter(["fleet/{site}/{device_id}/{kind}", "devices/{device_id}/{kind}"])


@pytest.mark.parametrize(
    ("topic", "device", "kind", "levels"),
    [
        ("fleet/plant-a/d1/telemetry", "d1", MessageKind.TELEMETRY, {"site": "plant-a"}),
        ("fleet/plant-a/d1/status", "d1", MessageKind.STATUS, {"site": "plant-a"}),
        ("fleet/plant-a/d1/firmware", "d1", MessageKind.FIRMWARE, {"site": "plant-a"}),
        ("fleet/plant-a/d1/batch", "d1", MessageKind.BATCH, {"site": "plant-a"}),
        ("devices/d9/telemetry", "d9", MessageKind.TELEMETRY, {}),
    ],
)
def test_topics_match(topic: str, device: str, kind: MessageKind, levels: dict) -> None:
    found = ROUTER.match(topic)
    assert (found.device_id, found.kind, dict(found.levels)) == (device, kind, levels)


@pytest.mark.parametrize(
    "topic", ["fleet/plant-a/telemetry", "other/x/y", "fleet//d1/telemetry", "", "a" * 2000]
)
def test_unknown_topics_are_errors_not_guesses(topic: str) -> None:
    with pytest.raises(DecodeError) as info:
        ROUTER.match(topic)
    assert info.value.reason == "unknown_topic"


def test_template_without_kind_means_telemetry() -> None:
    router = TopicRouter(["site/{site}/zone/{zone}/{device_id}"])
    found = router.match("site/s1/zone/z2/dev")
    assert found.kind is MessageKind.TELEMETRY and dict(found.levels) == {
        "site": "s1",
        "zone": "z2",
    }


@pytest.mark.parametrize(
    "template", ["fleet/{site}/{kind}", "fleet/{nope}/{device_id}", "a/+/{device_id}"]
)
def test_bad_templates_are_configuration_errors(template: str) -> None:
    with pytest.raises(ConfigError) as info:
        TopicRouter([template])
    assert info.value.setting == "topics.templates"


CODEC = JsonCodec()


def test_json_object_and_batch() -> None:
    assert CODEC.decode(b'{"a": 1}', DecodeContext()) == [{"a": 1}]
    assert CODEC.decode(b'[{"a": 1}, {"a": 2}]', DecodeContext()) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b'{"a": 1', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"42", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"null", "not_an_object"),
        (b"[1, 2]", "not_an_object"),
        (b'{"a": NaN}', "non_finite_number"),
        (b'{"a": Infinity}', "non_finite_number"),
        (b'{"a": 1e999}', "non_finite_number"),
    ],
)
def test_json_bad_input(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(payload, DecodeContext())
    assert info.value.reason == reason


def test_json_batch_limit() -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(b"[" + b",".join([b"{}"] * 11) + b"]", DecodeContext(max_records=10))
    assert info.value.reason == "too_many_records"


def test_status_accepts_bare_words_and_strings() -> None:
    ctx = DecodeContext(kind=MessageKind.STATUS)
    assert CODEC.decode(b"offline", ctx) == [{"status": "offline"}]
    assert CODEC.decode(b'"online"', ctx) == [{"status": "online"}]
    with pytest.raises(DecodeError):
        CODEC.decode(b"offline", DecodeContext())


def test_codec_choice_by_content_type() -> None:
    codecs = CodecSet()
    assert codecs.for_content_type("application/json; charset=utf-8") is codecs.by_name["json"]
    assert codecs.for_content_type(None) is codecs.default
    assert codecs.for_content_type("image/png") is None


def test_matches_with_the_same_levels_share_them() -> None:
    router = TopicRouter(["fleet/{site}/{device_id}/{kind}"])
    a, b = router.match("fleet/s1/d1/telemetry"), router.match("fleet/s1/d2/status")
    assert a.levels is b.levels and dict(a.levels) == {"site": "s1"}
    assert dict(router.match("fleet/s2/d1/telemetry").levels) == {"site": "s2"}
