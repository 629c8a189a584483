"""The Alertmanager sink: wire format, retries, bounded queue, and a real Alertmanager.

The end-to-end test runs a real ``alertmanager`` (Debian package
``prometheus-alertmanager``) on free 127.0.0.1 ports with clustering off: FleetWatch
pushes an alert to it, Alertmanager shows it and notifies a webhook, and after recovery it
shows it resolved.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from config.settings import AlertmanagerSettings
from service.alerts.alertmanager import AlertmanagerSink
from service.alerts.metrics import FleetMetrics
from service.records import AlertRecord, AlertState, Severity, SubjectType
from service.runtime.broker import free_port
from tests.daemon_helpers import daemon_settings, running_daemon
from tests.monitoring_helpers import ALERTMANAGER, get_json, loopback_address, poll, running_process

NOW = 1_767_225_600
WALL = 1_800_000_000.0


def record(subject: str = "th-1", **changes: Any) -> AlertRecord:
    alert = AlertRecord(
        id=f"id-{subject}",
        kind="rule.battery_low",
        subject=subject,
        subject_type=SubjectType.DEVICE,
        site="plant-a",
        zone="z1",
        severity=Severity.CRITICAL,
        state=AlertState.FIRING,
        started_at=WALL - 600,
        updated_at=WALL - 600,
        resolved_at=None,
        summary=f"{subject}: battery_v 3.10 below 3.3",
        evidence={"metric": "battery_v", "value": 3.1, "limit": 3.3},
        action="Replace the battery.",
    )
    return dataclasses.replace(alert, **changes)


def metric(metrics: FleetMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class FakeAlertmanager:
    """An aiohttp server on 127.0.0.1 that records pushes and answers with set statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.pushes: list[list[dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _alerts(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.pushes.append(await request.json())
        async with self.changed:
            self.changed.notify_all()
        return web.json_response({}, status=status)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for push in self.pushes for alert in push]

    async def __aenter__(self) -> FakeAlertmanager:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self._alerts)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def sink_for(url: str, metrics: FleetMetrics, **settings: Any) -> AlertmanagerSink:
    values: dict[str, Any] = {"enabled": True, "urls": [url], "retry_min_s": 0.01}
    values["retry_max_s"] = 0.05
    return AlertmanagerSink(
        AlertmanagerSettings(**(values | settings)), metrics, clock=lambda: WALL
    )


# -- the wire format -----------------------------------------------------------------------


def test_payload_labels_annotations_and_times() -> None:
    sink = sink_for("http://127.0.0.1:9", FleetMetrics(CollectorRegistry()), labels={"env": "t"})
    firing = sink.payload(record(), now=WALL)
    assert firing["labels"] == {
        "alertname": "rule.battery_low",
        "severity": "critical",
        "site": "plant-a",
        "zone": "z1",
        "device": "th-1",
        "env": "t",
    }
    annotations = firing["annotations"]
    assert annotations["summary"] == "th-1: battery_v 3.10 below 3.3"
    assert orjson.loads(annotations["evidence"]) == {
        "limit": 3.3,
        "metric": "battery_v",
        "value": 3.1,
    }
    assert annotations["action"] == "Replace the battery."
    assert firing["startsAt"] == "2027-01-15T07:50:00Z"
    assert firing["endsAt"] == "2027-01-15T08:04:00Z"  # four resend intervals ahead

    resolved = sink.payload(record(state=AlertState.RESOLVED, resolved_at=WALL - 5), now=WALL)
    assert resolved["endsAt"] == "2027-01-15T08:00:00Z"  # now
    gateway = sink.payload(
        record("gw-1", subject_type=SubjectType.GATEWAY, zone=None, started_at=WALL + 99),
        now=WALL,
    )
    assert gateway["labels"]["gateway"] == "gw-1" and "zone" not in gateway["labels"]
    assert gateway["startsAt"] == "2027-01-15T08:00:00Z"  # never after now
    site = sink.payload(record("plant-a", subject_type=SubjectType.SITE), now=WALL)
    assert site["labels"]["subject"] == "plant-a" and "device" not in site["labels"]


# -- delivery ------------------------------------------------------------------------------


async def test_failed_pushes_are_counted_and_retried_with_backoff() -> None:
    metrics = FleetMetrics(CollectorRegistry())
    async with FakeAlertmanager(statuses=[503, 500]) as manager:
        sink = sink_for(manager.url, metrics)
        async with sink:
            sink.offer(record())
            assert await sink.flush(5.0)
        assert [a["labels"]["device"] for a in manager.alerts()] == ["th-1"]
    assert (
        metric(metrics, "fleetwatch_alertmanager_send_failures_total", alertmanager=manager.url)
        == 2
    )
    assert metric(metrics, "fleetwatch_alertmanager_alerts_sent_total", state="firing") == 1
    assert metric(metrics, "fleetwatch_sink_published_total", sink="alertmanager") == 1


async def test_unreachable_alertmanager_never_blocks_the_offer() -> None:
    metrics = FleetMetrics(CollectorRegistry())
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sink = sink_for(url, metrics, timeout_s=0.5)
    async with sink:
        for index in range(100):
            sink.offer(record(f"th-{index}"))  # returns at once: no await, no network
        assert len(sink) == 100
        assert not await sink.flush(0.3)
    assert metric(metrics, "fleetwatch_alertmanager_send_failures_total", alertmanager=url) >= 1
    assert len(sink) == 100  # kept for the next attempt


async def test_bounded_queue_overflow_is_counted_and_resend_covers_it() -> None:
    metrics = FleetMetrics(CollectorRegistry())
    async with FakeAlertmanager() as manager:
        sink = sink_for(manager.url, metrics, queue_size=2, resend_interval_s=0.2)
        for subject in ("th-1", "th-2", "th-3"):
            sink.offer(record(subject))
        sink.offer(record("th-1", severity=Severity.WARNING))  # replaces th-1 in place
        assert len(sink) == 2
        assert metric(metrics, "fleetwatch_sink_overflow_total", sink="alertmanager") == 1
        async with sink:

            def devices() -> set[str]:
                return {a["labels"]["device"] for a in manager.alerts()}

            await manager.wait_for(lambda: devices() == {"th-1", "th-2", "th-3"})
        first = manager.pushes[0]
        assert [(a["labels"]["device"], a["labels"]["severity"]) for a in first] == [
            ("th-1", "warning"),
            ("th-2", "critical"),
        ]


async def test_resolve_is_sent_with_ends_at_now_and_stops_the_resends() -> None:
    metrics = FleetMetrics(CollectorRegistry())
    async with FakeAlertmanager() as manager:
        sink = sink_for(manager.url, metrics, resend_interval_s=0.1)
        async with sink:
            sink.offer(record())
            await manager.wait_for(lambda: len(manager.pushes) >= 3)  # sent, then resent
            sink.offer(record(state=AlertState.RESOLVED, resolved_at=WALL))
            assert await sink.flush(5.0)
            assert sink.active == []
            resolved_at = len(manager.pushes)
        last = manager.pushes[resolved_at - 1]
        assert last[0]["endsAt"] == "2027-01-15T08:00:00Z"
    assert metric(metrics, "fleetwatch_alertmanager_alerts_sent_total", state="resolved") == 1


async def test_sink_is_reusable_but_not_reentrant() -> None:
    sink = sink_for("http://127.0.0.1:9", FleetMetrics(CollectorRegistry()))
    async with sink:
        with pytest.raises(RuntimeError):
            await sink.__aenter__()
    async with sink:
        pass


# -- a real Alertmanager -------------------------------------------------------------------

needs_alertmanager = pytest.mark.skipif(
    ALERTMANAGER is None,
    reason="alertmanager is not installed (Debian package prometheus-alertmanager)",
)

AlertmanagerFactory = Callable[[str], AbstractAsyncContextManager[str]]


@pytest.fixture
def alertmanager(tmp_path: Path) -> AlertmanagerFactory:
    """Start a real Alertmanager that notifies ``webhook_url`` (firing and resolved).

    It listens on a free 127.0.0.1 port, with clustering off and storage in a temp dir;
    groups are flushed at once and every second, so notifications come within seconds.
    """

    @asynccontextmanager
    async def start(webhook_url: str) -> AsyncIterator[str]:
        assert ALERTMANAGER is not None
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "device"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                }
            ],
        }
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        address = loopback_address()
        argv = [
            ALERTMANAGER,
            f"--config.file={path}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address={address}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        url = f"http://{address}"
        async with running_process(argv, f"{url}/-/ready", tmp_path / "alertmanager.log"):
            yield url

    return start


class Webhook:
    """Alertmanager's webhook receiver on 127.0.0.1: keeps every notification."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _notify(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response(text="ok")

    async def __aenter__(self) -> Webhook:
        app = web.Application()
        app.router.add_post("/hook", self._notify)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def telemetry(ts: int, seq: int, battery_v: float) -> bytes:
    return orjson.dumps(
        {"ts": ts, "seq": seq, "battery_v": battery_v, "model": "TH-200", "zone": "z1"}
    )


@needs_alertmanager
@pytest.mark.broker
async def test_real_alertmanager_receives_the_alert_and_sees_it_resolved(
    broker: Any, topic_prefix: str, mqtt_client: Any, alertmanager: AlertmanagerFactory
) -> None:
    async with Webhook() as webhook, alertmanager(webhook.url) as url:
        settings = daemon_settings(
            broker.host,
            broker.port,
            topic_prefix,
            alertmanager={
                "enabled": True,
                "urls": [url],
                "resend_interval_s": 1.0,
                "retry_min_s": 0.05,
                "retry_max_s": 0.5,
                "labels": {"source": "fleetwatch"},
            },
        )
        device_topic = f"{topic_prefix}/fleet/plant-a/th-1/telemetry"
        async with running_daemon(settings) as daemon:
            await mqtt_client.publish(device_topic, telemetry(NOW, 1, 3.70))
            await mqtt_client.publish(device_topic, telemetry(NOW + 60, 2, 3.10))

            async def shown() -> dict[str, Any] | None:
                alerts = await get_json(
                    f"{url}/api/v2/alerts", filter='alertname="rule.battery_low"'
                )
                return alerts[0] if alerts else None

            alert = await poll(shown, 10.0, "Alertmanager shows the battery alert")
            assert alert["status"]["state"] == "active"
            assert alert["labels"] == {
                "alertname": "rule.battery_low",
                "severity": "critical",
                "site": "plant-a",
                "zone": "z1",
                "device": "th-1",
                "source": "fleetwatch",
            }
            evidence = orjson.loads(alert["annotations"]["evidence"])
            assert evidence["value"] == pytest.approx(3.10)
            assert alert["annotations"]["action"] == "Replace the battery."
            assert alert["annotations"]["summary"]

            await mqtt_client.publish(device_topic, telemetry(NOW + 120, 3, 3.72))

            async def gone() -> bool | None:
                return True if await shown() is None else None

            await poll(gone, 10.0, "Alertmanager no longer shows the alert as active")

            async def resolved_notification() -> dict[str, Any] | None:
                for note in webhook.notifications:
                    if note["status"] == "resolved":
                        return note
                return None

            note = await poll(resolved_notification, 10.0, "the resolved notification")
            assert [a["labels"]["device"] for a in note["alerts"]] == ["th-1"]
            assert note["alerts"][0]["status"] == "resolved"
            assert any(n["status"] == "firing" for n in webhook.notifications)
            scraped = daemon.metrics.registry.get_sample_value
            assert scraped("fleetwatch_alertmanager_alerts_sent_total", {"state": "resolved"}) == 1
