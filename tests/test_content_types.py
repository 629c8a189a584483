"""Which codec reads an MQTT message: its MQTT 5 content type, else the first
``[[ingest.content_types]]`` topic rule that matches, else ``ingest.default_content_type``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import cbor2
import orjson
import pytest
from prometheus_client import CollectorRegistry

from config.settings import EXAMPLE_CONFIG, load_settings, settings_from_mapping
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.errors import ConfigError
from service.intake.pipeline import Pipeline
from service.intake.topics import ContentTypeRules, filter_matches
from service.records import RawMessage
from tests.daemon_helpers import daemon_settings, running_daemon

NOW = 1_767_225_600
RECORD = {"ts": NOW, "battery_v": 3.6}
SENML = [{"bt": NOW, "n": "batt", "u": "V", "v": 3.6}]
RULES = {
    "content_types": [
        {"filter": "fleet/+/+/batch", "content_type": "application/senml+json"},
        {"filter": "lora/#", "content_type": "application/cbor"},
    ],
    "default_content_type": "application/json",
}


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("fleet/+/+/batch", "fleet/a/d1/batch", True),
        ("fleet/+/+/batch", "fleet/a/d1/telemetry", False),
        ("fleet/+/+/batch", "fleet/a/batch", False),
        ("lora/#", "lora/gw/d1/up", True),
        ("lora/#", "lora", True),
        ("lora/+", "lora/gw/d1", False),
        ("#", "anything/at/all", True),
        ("devices/d1/telemetry", "devices/d1/telemetry", True),
    ],
)
def test_topic_filters(topic_filter: str, topic: str, matches: bool) -> None:
    assert filter_matches(topic_filter, topic) is matches


def test_first_matching_rule_wins_then_the_default() -> None:
    rules = ContentTypeRules(
        [("fleet/+/+/batch", "application/cbor"), ("fleet/#", "application/senml+json")],
        "application/json",
    )
    assert rules.content_type("fleet/a/d1/batch") == "application/cbor"
    assert rules.content_type("fleet/a/d1/telemetry") == "application/senml+json"
    assert rules.content_type("devices/d1/telemetry") == "application/json"
    assert rules.content_type("fleet/a/d1/batch") == "application/cbor"  # from the cache


def build(**ingest: Any) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    settings = settings_from_mapping({"ingest": ingest})
    pipeline = Pipeline.build(
        settings, detectors=[], sinks=[sink], metrics=FleetMetrics(CollectorRegistry())
    )
    return pipeline, sink


def test_content_type_property_then_topic_rule_then_default() -> None:
    pipeline, sink = build(**RULES)
    outcome = pipeline.process_messages(
        [
            # MQTT 5 content type wins over the topic rule
            RawMessage("fleet/a/d1/batch", cbor2.dumps(RECORD), NOW, "mqtt", "application/cbor"),
            # no content type: the topic rule
            RawMessage("fleet/a/d2/batch", orjson.dumps(SENML), NOW, "mqtt"),
            RawMessage("lora/gw/d3/telemetry", cbor2.dumps(RECORD), NOW, "mqtt"),
            # neither: the default
            RawMessage("fleet/a/d4/telemetry", orjson.dumps(RECORD), NOW, "mqtt"),
        ]
    )
    assert (outcome.accepted, outcome.rejected) == (3, 1)
    # lora/... matches a rule but no topic template: refused for its topic, not its format
    assert [d.reason for d in sink.deadletters] == ["unknown_topic"]


def test_a_configured_default_reads_messages_without_a_content_type() -> None:
    pipeline, sink = build(default_content_type="application/cbor")
    outcome = pipeline.process_messages(
        [
            RawMessage("devices/d1/telemetry", cbor2.dumps(RECORD), NOW, "mqtt"),
            RawMessage(
                "devices/d2/telemetry", orjson.dumps(RECORD), NOW, "mqtt", "application/json"
            ),
            RawMessage("devices/d3/telemetry", orjson.dumps(RECORD), NOW, "mqtt"),
        ]
    )
    assert (outcome.accepted, outcome.rejected) == (2, 1)
    assert sink.deadletters[0].topic == "devices/d3/telemetry"
    assert sink.deadletters[0].reason == "malformed_cbor"


@pytest.mark.parametrize(
    ("ingest", "setting"),
    [
        ({"default_content_type": "application/xml"}, "ingest.default_content_type"),
        (
            {"content_types": [{"filter": "a/#/b", "content_type": "application/cbor"}]},
            "ingest.content_types.0.filter",
        ),
        (
            {"content_types": [{"filter": "a/b+", "content_type": "application/cbor"}]},
            "ingest.content_types.0.filter",
        ),
        (
            {"content_types": [{"filter": "a/#", "content_type": "text/csv"}]},
            "ingest.content_types.0.content_type",
        ),
    ],
)
def test_bad_rules_stop_start_up_naming_the_setting(ingest: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"ingest": ingest})
    assert info.value.setting == setting


def test_example_configuration_documents_the_rules() -> None:
    settings = load_settings(EXAMPLE_CONFIG, environ={})
    assert settings.ingest.default_content_type == "application/json"
    assert settings.coap.enabled and settings.coap.host == "0.0.0.0"
    text = EXAMPLE_CONFIG.read_text()
    assert "# [[ingest.content_types]]" in text and "# filter = " in text


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.mark.broker
async def test_daemon_reads_the_mqtt5_content_type_then_topic_rules(  # type: ignore[no-untyped-def]
    broker, topic_prefix, mqtt_client
) -> None:
    if broker.kind != "mosquitto":
        pytest.skip("MQTT 5 properties need mosquitto")
    settings = daemon_settings(
        broker.host,
        broker.port,
        topic_prefix,
        ingest={
            "content_types": [
                {
                    "filter": f"{topic_prefix}/fleet/+/+/batch",
                    "content_type": "application/senml+json",
                }
            ]
        },
    )
    base = f"{topic_prefix}/fleet/plant-a"
    async with running_daemon(settings) as daemon:
        gmqtt = mqtt_client._client
        gmqtt.publish(f"{base}/d1/telemetry", cbor2.dumps(RECORD), qos=1,
                      content_type="application/cbor")  # fmt: skip
        gmqtt.publish(f"{base}/d2/batch", orjson.dumps(SENML), qos=1)
        gmqtt.publish(f"{base}/d3/telemetry", orjson.dumps(RECORD), qos=1)
        await _until(lambda: daemon.pipeline.totals.messages >= 3)
        totals = daemon.pipeline.totals
        assert (totals.accepted, totals.rejected) == (3, 0)
        assert len(daemon.pipeline.registry) == 3
