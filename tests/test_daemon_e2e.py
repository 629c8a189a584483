"""End to end through a real broker: telemetry in, alerts and dead letters out."""

from __future__ import annotations

import orjson
import pytest

from tests.daemon_helpers import daemon_settings, running_daemon, scrape

pytestmark = pytest.mark.broker

NOW = 1_767_225_600


def telemetry(ts: int, seq: int, battery_v: float) -> bytes:
    return orjson.dumps(
        {"ts": ts, "seq": seq, "battery_v": battery_v, "model": "TH-200", "zone": "z1"}
    )


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return None


async def test_rule_breach_alert_fires_and_resolves(broker, topic_prefix, mqtt_client) -> None:  # type: ignore[no-untyped-def]
    settings = daemon_settings(broker.host, broker.port, topic_prefix)
    alert_topic = f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/th-1"
    device_topic = f"{topic_prefix}/fleet/plant-a/th-1/telemetry"
    async with running_daemon(settings) as daemon:
        await mqtt_client.subscribe(f"{topic_prefix}/fleetwatch/alerts/#")
        await mqtt_client.publish(device_topic, telemetry(NOW, 1, 3.70))
        await mqtt_client.publish(device_topic, telemetry(NOW + 60, 2, 3.10))

        _, payload, _retained = await mqtt_client.expect(alert_topic)
        alert = orjson.loads(payload)
        assert alert["state"] == "firing" and alert["severity"] == "critical"
        assert alert["site"] == "plant-a" and alert["zone"] == "z1"
        assert alert["evidence"]["value"] == pytest.approx(3.10)
        assert alert["action"] == "Replace the battery."

        text = await scrape(daemon.http_port)  # type: ignore[arg-type]
        assert (
            metric_value(text, "fleetwatch_alerts_active", kind="rule.battery_low", site="plant-a")
            == 1
        )
        assert (
            metric_value(text, "fleetwatch_readings_total", protocol="mqtt", result="accepted") == 2
        )

        await mqtt_client.publish(device_topic, telemetry(NOW + 120, 3, 3.72))
        _, payload, _ = await mqtt_client.expect(alert_topic, lambda p: b'"resolved"' in p)
        resolved = orjson.loads(payload)
        assert resolved["id"] == alert["id"] and resolved["resolved_at"] is not None
        _, cleared, _ = await mqtt_client.expect(alert_topic, lambda p: p == b"")
        assert cleared == b""

        text = await scrape(daemon.http_port)  # type: ignore[arg-type]
        assert metric_value(text, "fleetwatch_alerts_resolved_total", kind="rule.battery_low") == 1
        assert metric_value(
            text, "fleetwatch_alerts_active", kind="rule.battery_low", site="plant-a"
        ) in (None, 0)


async def test_late_subscriber_sees_exactly_the_active_alerts(
    broker, topic_prefix, mqtt_client, mqtt_factory
) -> None:  # type: ignore[no-untyped-def]
    settings = daemon_settings(broker.host, broker.port, topic_prefix)
    alerts = f"{topic_prefix}/fleetwatch/alerts/#"
    async with running_daemon(settings):
        await mqtt_client.subscribe(alerts)
        for device, volts in (("a", 3.0), ("b", 3.1), ("c", 3.9)):
            await mqtt_client.publish(
                f"{topic_prefix}/fleet/s/{device}/telemetry", telemetry(NOW, 1, volts)
            )
        await mqtt_client.expect(f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/b")
        await mqtt_client.publish(
            f"{topic_prefix}/fleet/s/b/telemetry", telemetry(NOW + 60, 2, 3.9)
        )
        await mqtt_client.expect(
            f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/b", lambda p: p == b""
        )
        await mqtt_client.expect(f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/a")
    late = await mqtt_factory()
    await late.subscribe(alerts)
    seen = await late.collect_until_marker(alerts, f"{topic_prefix}/fleetwatch/alerts/marker/x")
    assert [(topic.rsplit("/", 1)[1], retained) for topic, _, retained in seen] == [("a", True)]
    assert orjson.loads(seen[0][1])["state"] == "firing"


BAD = [
    ("malformed_json", "telemetry", b'{"battery_v": 3.'),
    ("not_an_object", "telemetry", b"[1, 2]"),
    ("too_large", "telemetry", b'{"pad": "' + b"x" * 3000 + b'"}'),
    ("non_finite_number", "telemetry", b'{"battery_v": NaN}'),
    ("non_numeric_value", "telemetry", b'{"battery_v": "full"}'),
    ("invalid_timestamp", "telemetry", b'{"ts": "last tuesday", "battery_v": 3.5}'),
    ("unknown_kind", "selfie", b'{"battery_v": 3.5}'),
]


async def test_bad_input_is_dead_lettered_and_intake_goes_on(
    broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    settings = daemon_settings(
        broker.host, broker.port, topic_prefix, ingest={"max_payload_bytes": 2048}
    )
    async with running_daemon(settings) as daemon:
        await mqtt_client.subscribe(f"{topic_prefix}/fleetwatch/deadletter")
        await mqtt_client.subscribe(f"{topic_prefix}/fleetwatch/alerts/#")
        for reason, kind, payload in BAD:
            topic = f"{topic_prefix}/fleet/s/bad/{kind}"
            await mqtt_client.publish(topic, payload)
            _, body, _ = await mqtt_client.expect(f"{topic_prefix}/fleetwatch/deadletter")
            letter = orjson.loads(body)
            assert (letter["reason"], letter["topic"]) == (reason, topic)
        # the unknown topic shape: subscribed under the prefix, matched by no template
        odd = f"{topic_prefix}/fleet/s/d/telemetry/extra"
        settings_topic = f"{topic_prefix}/fleet/s/odd-device/x"
        await mqtt_client.publish(settings_topic, b"{}")
        _, body, _ = await mqtt_client.expect(f"{topic_prefix}/fleetwatch/deadletter")
        assert orjson.loads(body)["reason"] == "unknown_kind"
        assert odd  # a 5-level topic is not delivered by the 4-level subscription at all
        # and a good reading after all of that still raises its alert
        await mqtt_client.publish(f"{topic_prefix}/fleet/s/good/telemetry", telemetry(NOW, 1, 3.0))
        await mqtt_client.expect(f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/good")
        text = await scrape(daemon.http_port)  # type: ignore[arg-type]
        for reason, _, _ in BAD:
            assert (
                metric_value(text, "fleetwatch_decode_errors_total", reason=reason) or 0
            ) >= 1, reason


async def test_status_topic_online_then_offline(broker, topic_prefix, mqtt_client) -> None:  # type: ignore[no-untyped-def]
    settings = daemon_settings(broker.host, broker.port, topic_prefix)
    status = f"{topic_prefix}/fleetwatch/status"
    async with running_daemon(settings):
        await mqtt_client.subscribe(status)
        _, payload, _ = await mqtt_client.expect(status, lambda p: p == b"online")
        assert payload == b"online"
    _, payload, _ = await mqtt_client.expect(status, lambda p: p == b"offline")
    assert payload == b"offline"


async def test_messages_published_while_stopped_are_processed_after_restart(
    broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    """The persistent session keeps QoS 1 messages for FleetWatch while it is down."""
    settings = daemon_settings(broker.host, broker.port, topic_prefix)
    async with running_daemon(settings):
        pass  # creates the persistent session and its subscriptions
    for seq in range(1, 51):
        volts = 3.0 if seq == 50 else 3.8
        await mqtt_client.publish(
            f"{topic_prefix}/fleet/s/d7/telemetry", telemetry(NOW + seq, seq, volts)
        )
    await mqtt_client.subscribe(f"{topic_prefix}/fleetwatch/alerts/#")
    async with running_daemon(settings) as daemon:
        await mqtt_client.expect(f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/d7")
        text = await scrape(daemon.http_port)  # type: ignore[arg-type]
        assert (
            metric_value(text, "fleetwatch_readings_total", protocol="mqtt", result="accepted")
            == 50
        )
