"""The FleetWatch daemon: MQTT in, pipeline, alerts and dead letters out, metrics served.

Phases, in order (as ``fleetwatch run`` goes through them):

1. start-up: build the pipeline from settings, bind the HTTP server (and the CoAP server
   when ``[coap] enabled``, with the LwM2M server on its socket when ``[lwm2m] enabled``,
   its registrations loaded from the state store), connect to the broker (retrying with
   back-off) and subscribe;
2. main loop: intake, micro-batches, ticks and sinks run as named tasks in a TaskGroup
   until the stop event is set (SIGTERM or SIGINT);
3. shutdown, bounded by ``pipeline.shutdown_timeout_s``: stop reading from the broker,
   process what is queued (so it is acknowledged), flush alerts and dead letters, publish
   ``offline`` on the status topic, disconnect; then cancel what is left. CoAP requests
   that arrive once intake is closed are answered 5.03; the CoAP server closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from config.advisories import AdvisoryWatcher
from config.settings import Settings
from detectors import build_detectors
from detectors.base import Detector
from protocols.coap import CoapServer
from protocols.lwm2m.server import Lwm2mServer
from protocols.mqtt import MqttClient
from service.alerts.alertmanager import AlertmanagerSink
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import Item, QueuedSink, Sink
from service.alerts.wire import alert_payload, alert_topic, deadletter_payload
from service.api.fleetapi import FleetApi, FleetEvents
from service.api.fleetview import FleetView, LatestValues, SiteInfo
from service.api.http import HttpServer, server_ssl_context
from service.intake.pipeline import Intake, Pipeline
from service.records import AlertRecord, AlertState, DeadLetter, RawMessage
from service.runtime.shards import check_state_layout
from service.state.collector import tuned_collector
from service.state.memory import release_free_memory
from service.state.store import RestoreSummary, StateStore, outbox_items, outbox_state

log = logging.getLogger(__name__)


def ingest_client(
    settings: Settings,
    on_message: Callable[[str, bytes, int, Any, int | None], None],
    on_connection_change: Callable[[bool], None],
) -> MqttClient:
    """The broker connection that takes telemetry: the configured subscriptions (under
    ``$share/<group>/`` with ``mqtt.shared_group``) and the status topic's last will."""
    group = settings.mqtt.shared_group
    subscriptions = [
        (f"$share/{group}/{sub.filter}" if group else sub.filter, sub.qos)
        for sub in settings.mqtt.subscriptions
    ]
    return MqttClient(
        settings.mqtt,
        on_message=on_message,
        subscriptions=subscriptions,
        status_topic=settings.topics.status,
        on_connection_change=on_connection_change,
    )


def http_access(settings: Settings) -> dict[str, Any]:
    """The HTTP server's basic-auth credentials and TLS context, as ``[http]`` sets them."""
    http = settings.http
    return {
        "credentials": (
            (http.username, http.password)
            if http.username is not None and http.password is not None
            else None
        ),
        "ssl_context": (
            server_ssl_context(http.tls_cert_file, http.tls_key_file)
            if http.tls_cert_file is not None
            else None
        ),
    }


class Daemon:
    """One running FleetWatch (one process; see :mod:`service.runtime.workers` for several).

    Parameters
    ----------
    settings
        Validated settings.
    registry
        The Prometheus registry FleetWatch's metrics live on.
    detectors
        Detectors to run; by default those ``settings.detectors.enabled`` names.
    clock
        Wall clock for receive times and ticks (tests may pass their own).
    extra_sinks
        More outbound sinks beside the MQTT ones (the demo's console view).
    """

    checks_state_layout = True
    """Whether start-up refuses state saved by worker processes (a worker's own is not)."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        detectors: Sequence[Detector] | None = None,
        clock: Callable[[], float] = time.time,
        extra_sinks: Sequence[Sink] = (),
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = FleetMetrics(self.registry)
        self.clock = clock
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self._stop = asyncio.Event()
        self.mqtt = self._broker_client(settings)
        self.alert_sink = QueuedSink(
            "mqtt-alerts", self._deliver_alert, self.metrics, settings.alerts.sink_queue_size
        )
        self.deadletter_sink = QueuedSink(
            "mqtt-deadletter",
            self._deliver_deadletter,
            self.metrics,
            settings.alerts.sink_queue_size,
        )
        self.alertmanager = (
            AlertmanagerSink(settings.alertmanager, self.metrics, clock=clock)
            if settings.alertmanager.enabled
            else None
        )
        fleetview = settings.fleetview
        self.latest = LatestValues() if fleetview.enabled else None
        self.fleet_events = FleetEvents() if fleetview.enabled else None
        chosen = list(build_detectors(settings) if detectors is None else detectors)
        self.pipeline = Pipeline.build(
            settings,
            detectors=[*chosen, self.latest] if self.latest is not None else chosen,
            sinks=[
                _Router(self.alert_sink, self.deadletter_sink),
                *([self.alertmanager] if self.alertmanager is not None else []),
                *([self.fleet_events] if self.fleet_events is not None else []),
                *extra_sinks,
            ],
            metrics=self.metrics,
        )
        self.fleet_view = FleetView(
            self.pipeline.registry,
            self.pipeline.alerts,
            latest=self.latest,
            detectors=chosen,
            reports=lambda: self.pipeline.reports(self.clock()),
            sites={
                name: SiteInfo(site.name, site.region, site.lat, site.lon)
                for name, site in fleetview.sites.items()
            },
        )
        if self.fleet_events is not None:
            self.fleet_events.bind(self.fleet_view)
        self.store = (
            StateStore(settings.state.path, synchronous=settings.state.synchronous, exclusive=True)
            if settings.state.enabled
            else None
        )
        self.restored: RestoreSummary | None = None
        self._advisories = self._advisory_watcher()
        self._last_report = self.clock()
        self.intake = Intake(
            self.pipeline,
            queue_size=settings.pipeline.queue_size,
            max_batch=settings.pipeline.max_batch,
            clock=clock,
            on_full=self._pause_ingest,
            on_room=self._resume_ingest,
            acknowledge=self._acknowledge,
            journal=self._journal if self.store is not None and settings.state.journal else None,
        )
        # CoAP telemetry goes through the same intake (and so journal and pipeline) as MQTT
        # LwM2M shares the CoAP server's socket: /rd and /dp beside the telemetry path
        self.lwm2m = (
            Lwm2mServer(
                settings.lwm2m,
                self.intake,
                context=lambda: self._coap_context(),
                storage=self.store,
                clock=clock,
                permits=lambda endpoint: self.pipeline.allow.permits(endpoint, None),
                on_response=self._coap_response,
                on_event=self._lwm2m_event,
                max_payload=min(settings.coap.max_payload_bytes, settings.ingest.max_payload_bytes),
            )
            if settings.lwm2m.enabled
            else None
        )
        self.coap = (
            CoapServer(
                settings.coap,
                self.intake,
                clock=clock,
                max_payload=min(settings.coap.max_payload_bytes, settings.ingest.max_payload_bytes),
                on_response=self._coap_response,
                sites=self.lwm2m.sites if self.lwm2m is not None else None,
            )
            if settings.coap.enabled
            else None
        )
        self.coap_port: int | None = None

    def _broker_client(self, settings: Settings) -> MqttClient:
        """The broker connection: telemetry in, alerts and dead letters out."""
        return ingest_client(settings, self._on_message, self._connection_changed)

    # -- transport callbacks --------------------------------------------------------

    def _on_message(
        self, topic: str, payload: bytes, qos: int, properties: Any, token: int | None
    ) -> None:
        value = properties.get("content_type") if properties else None
        message = RawMessage(topic, payload, self.clock(), "mqtt", value[0] if value else None)
        try:
            self.intake.offer(message, token)
        except RuntimeError:
            # shutting down: not acknowledged, so the broker delivers it again later
            log.debug("intake closed; %s left for redelivery", topic)

    def _pause_ingest(self) -> None:
        self.mqtt.pause_reading()

    def _resume_ingest(self) -> None:
        self.mqtt.resume_reading()

    def _acknowledge(self, tokens: list[int]) -> None:
        self.mqtt.acknowledge(tokens)

    def _coap_response(self, method: str, code: str) -> None:
        self.metrics.coap_requests.labels(method=method, code=code).inc()

    def _coap_context(self) -> Any:
        assert self.coap is not None
        return self.coap.context

    def _lwm2m_event(self, event: str, registrations: int) -> None:
        self.metrics.lwm2m_events.labels(event=event).inc()
        self.metrics.lwm2m_registrations.set(registrations)

    def _connection_changed(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)
        if connected and self.mqtt.connections > 1:
            self.metrics.mqtt_reconnects.inc()
            # a broker that lost its state also lost the retained alerts and any alert
            # publish in flight: publish the active set again (same ids, idempotent)
            for record in self.pipeline.alerts.active():
                self.alert_sink.offer(record)

    async def _deliver_alert(self, item: Item) -> None:
        assert isinstance(item, AlertRecord)
        await self.mqtt.connected.wait()
        topic = alert_topic(self.settings.topics.alerts_prefix, item.kind, item.subject)
        if item.state is AlertState.FIRING:
            self.mqtt.publish(topic, alert_payload(item), qos=1, retain=True)
        else:
            self.mqtt.publish(topic, alert_payload(item), qos=1, retain=False)
            self.mqtt.publish(topic, b"", qos=1, retain=True)

    async def _deliver_deadletter(self, item: Item) -> None:
        assert isinstance(item, DeadLetter)
        await self.mqtt.connected.wait()
        self.mqtt.publish(self.settings.topics.deadletter, deadletter_payload(item), qos=1)
        self.metrics.deadletters.labels(outcome="published").inc()

    # -- lifecycle ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to shut down (safe from a signal handler)."""
        self._stop.set()

    def healthy(self) -> bool:
        return self.mqtt.connected.is_set()

    def status(self) -> dict[str, Any]:
        """What the daemon has done since its state began (survives restarts)."""
        totals = self.pipeline.totals
        restored = self.restored
        return {
            "connected": self.mqtt.connected.is_set(),
            "messages": totals.messages,
            "readings": totals.accepted,
            "rejected": totals.rejected,
            "duplicates": totals.duplicates,
            "devices": len(self.pipeline.registry),
            "alerts_active": sum(1 for _ in self.pipeline.alerts.active()),
            "queue_depth": self.intake.depth,
            "journal": self.store.journal_length if self.store is not None else None,
            "restored": None if restored is None else dataclasses.asdict(restored),
        }

    async def _ticker(self) -> None:
        interval = self.settings.pipeline.tick_interval_s
        window = self.settings.pipeline.active_window_s
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            self.pipeline.tick(now)
            self.metrics.devices_active.set(self.pipeline.registry.count_active(now - window))

    # -- state --------------------------------------------------------------------

    def _journal(self, messages: Sequence[RawMessage]) -> None:
        assert self.store is not None
        self.store.append_journal(messages)
        self.metrics.journal_length.set(self.store.journal_length)

    def checkpoint(self) -> None:
        """Save every component's state and the undelivered outbound items, atomically."""
        if self.store is None:
            return
        started = time.perf_counter()
        components = self.pipeline.state_dict()
        components["outbox"] = outbox_state(
            [*self.alert_sink.pending(), *self.deadletter_sink.pending()]
        )
        try:
            size = self.store.save_checkpoint(components, saved_at=self.clock())
        except Exception:
            self.metrics.state_errors.labels(operation="checkpoint").inc()
            log.exception("checkpoint to %s failed", self.store.path)
            return
        del components  # the fleet's state as plain data: give its pages back
        release_free_memory()
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.set(time.perf_counter() - started)
        self.metrics.checkpoint_bytes.set(size)
        self.metrics.journal_length.set(0)

    def _restore(self) -> None:
        """Open the state store; load the checkpoint; run the journal; checkpoint afresh."""
        if self.store is None:
            return
        if self.checks_state_layout:
            check_state_layout(self.settings.state.path, 1)
        store = self.store.open()
        started = time.perf_counter()
        summary = RestoreSummary()
        checkpoint = store.load_checkpoint()
        if checkpoint is not None:
            self.pipeline.load_state(checkpoint.components)
            summary.checkpoint_at = checkpoint.saved_at
            for item in outbox_items(checkpoint.components.get("outbox", {})):
                _Router(self.alert_sink, self.deadletter_sink).offer(item)
                summary.outbox += 1
        batch: list[RawMessage] = []
        for message in store.journal():
            batch.append(message)
            if len(batch) >= self.settings.pipeline.max_batch:
                self.pipeline.process_messages(batch)
                summary.journaled += len(batch)
                batch = []
        if batch:
            self.pipeline.process_messages(batch)
            summary.journaled += len(batch)
        summary.devices = len(self.pipeline.registry)
        summary.alerts_active = sum(1 for _ in self.pipeline.alerts.active())
        summary.seconds = time.perf_counter() - started
        self.restored = summary
        if checkpoint is not None or summary.journaled:
            log.info(
                "restored state from %s: %d devices, %d active alerts, %d journaled messages "
                "run again, %d undelivered items re-queued, in %.2f s",
                store.path, summary.devices, summary.alerts_active, summary.journaled,
                summary.outbox, summary.seconds,
            )  # fmt: skip
        self.checkpoint()

    def _advisory_watcher(self) -> tuple[AdvisoryWatcher, Any] | None:
        path = self.settings.detectors.firmware.get("advisories_file")
        firmware = next((d for d in self.pipeline.detectors if d.name == "firmware"), None)
        if not path or firmware is None or not hasattr(firmware, "set_advisories"):
            return None
        return AdvisoryWatcher(Path(path)), firmware

    def reload_advisories(self) -> bool:
        """Reload the advisory file if it changed; ``True`` when new advisories were set."""
        if self._advisories is None:
            return False
        watcher, firmware = self._advisories
        advisories = watcher.changed()
        if advisories is None:
            return False
        firmware.set_advisories(advisories)
        return True

    async def _reporter(self) -> None:
        interval = self.settings.pipeline.report_interval_s
        prefix = self.settings.topics.reports_prefix
        while True:
            await asyncio.sleep(min(interval, 5.0))
            self.reload_advisories()
            if self.clock() - self._last_report < interval:
                continue
            self._last_report = self.clock()
            self.publish_reports(prefix)

    def publish_reports(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Collect the detectors' reports, update report-based metrics, publish (retained)."""
        reports = self.pipeline.reports(self.clock())
        self.metrics.set_reports(reports)
        if self.mqtt.connected.is_set():
            for name, report in reports.items():
                self.mqtt.publish(f"{prefix}/{name}", orjson.dumps(report), qos=1, retain=True)
        return reports

    async def _checkpointer(self) -> None:
        interval = self.settings.state.checkpoint_interval_s
        while True:
            await asyncio.sleep(interval)
            self.checkpoint()

    async def run(self) -> None:
        """Run until :meth:`stop` is called, then shut down within the timeout."""
        settings = self.settings
        self._restore()
        if self.alertmanager is not None:
            # restored open alerts go to Alertmanager too (it may have lost them meanwhile)
            self.alertmanager.track(self.pipeline.alerts.active())
        http = (
            HttpServer(
                settings.http.host,
                settings.http.port,
                self.registry,
                healthy=self.healthy,
                active_alerts=self.pipeline.alerts.active,
                status=self.status,
                **http_access(settings),
                fleet_api=(
                    FleetApi(
                        self.fleet_view,
                        self.fleet_events,
                        tile_url=settings.fleetview.tile_url,
                        title=settings.fleetview.title,
                    )
                    if self.fleet_events is not None
                    else None
                ),
            )
            if settings.http.enabled
            else None
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(tuned_collector())
            if self.store is not None:
                stack.callback(self.store.close)
            if http is not None:
                await stack.enter_async_context(http)
                self.http_port = http.port
                log.info("serving metrics at %s/metrics", http.url)
            if self.coap is not None:
                # closed after shutdown has drained the intake, so queued requests get answers
                await stack.enter_async_context(self.coap)
                self.coap_port = self.coap.port
                if self.lwm2m is not None:
                    # registrations are loaded from the state store opened by _restore
                    await stack.enter_async_context(self.lwm2m)
            if self.alertmanager is not None:
                await stack.enter_async_context(self.alertmanager)
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.intake.run(), name="fleetwatch-pipeline"),
                    group.create_task(self._ticker(), name="fleetwatch-ticker"),
                    group.create_task(self.alert_sink.run(), name="fleetwatch-sink-alerts"),
                    group.create_task(
                        self.deadletter_sink.run(), name="fleetwatch-sink-deadletter"
                    ),
                ]
                tasks.append(group.create_task(self._reporter(), name="fleetwatch-reports"))
                if self.store is not None:
                    tasks.append(
                        group.create_task(self._checkpointer(), name="fleetwatch-checkpoint")
                    )
                connect = group.create_task(self.mqtt.connect(), name="fleetwatch-mqtt-connect")
                stop = group.create_task(self._stop.wait(), name="fleetwatch-stop")
                await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
                if connect.done():
                    connect.result()
                    self.ready.set()
                    log.info("FleetWatch is running")
                    await stop
                else:
                    connect.cancel()
                await self._shutdown()
                for task in tasks:
                    task.cancel()

    async def _shutdown(self) -> None:
        timeout = self.settings.pipeline.shutdown_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        log.info("shutting down: draining %d queued messages", self.intake.depth)
        self.mqtt.pause_reading()
        self.intake.close()
        drained = await self.intake.drain(timeout)
        if not drained:
            log.warning("shutdown timeout: %d messages left unacknowledged", self.intake.depth)
        self.pipeline.tick(self.clock())
        for sink in (self.alert_sink, self.deadletter_sink):
            remaining = max(0.1, deadline - loop.time())
            if self.mqtt.connected.is_set() and not await sink.flush(remaining):
                log.warning("shutdown timeout: %d items left in sink %s", len(sink), sink.name)
        if self.alertmanager is not None and len(self.alertmanager):
            remaining = max(0.1, deadline - loop.time())
            if not await self.alertmanager.flush(remaining):
                log.warning(
                    "shutdown timeout: %d alert changes not sent to Alertmanager",
                    len(self.alertmanager),
                )
        self.checkpoint()
        await self.mqtt.close()
        log.info("FleetWatch stopped")


class _Router:
    """Sends alert changes to the alert sink and dead letters to the dead-letter sink."""

    name = "router"

    def __init__(self, alerts: QueuedSink, deadletters: QueuedSink) -> None:
        self._alerts = alerts
        self._deadletters = deadletters

    def offer(self, item: Item) -> None:
        if isinstance(item, AlertRecord):
            self._alerts.offer(item)
        else:
            self._deadletters.offer(item)
