"""The Alertmanager sink: FleetWatch's alerts pushed to Prometheus Alertmanager.

Each alert change is sent to every configured Alertmanager with ``POST /api/v2/alerts``,
in the form Prometheus itself uses:

- labels: ``alertname`` (the alert's kind), ``severity``, ``site`` and ``zone`` when known,
  the subject as ``device`` or ``gateway`` (``subject`` for site, zone and fleet alerts),
  plus the static ``[alertmanager] labels``;
- annotations: ``summary``, ``evidence`` (JSON), ``action`` and FleetWatch's alert ``id``;
- ``startsAt``: when the alert opened (never later than now); ``endsAt``: for a firing
  alert now plus four resend intervals, so Alertmanager lets it lapse by itself only if
  FleetWatch stops re-sending it; for a resolved alert now, which resolves it at once.

Every open alert is sent again each ``resend_interval_s``. A push counts as delivered when
at least one Alertmanager accepted it (an Alertmanager cluster shares what one member
received); each refused or failed push is counted per Alertmanager in
``fleetwatch_alertmanager_send_failures_total``, and the batch is tried again with jittered
exponential back-off (``retry_min_s`` .. ``retry_max_s``).

The queue holds at most ``queue_size`` alerts (newest state per alert; a newer change of an
alert already queued replaces it in place). Past the bound a change is counted in
``fleetwatch_sink_overflow_total{sink="alertmanager"}`` and not queued: a firing alert still
goes out with the next resend, and a resolved one lapses in Alertmanager at its ``endsAt``.
:meth:`AlertmanagerSink.offer` never blocks and never waits for the network.

>>> from prometheus_client import CollectorRegistry
>>> from config.settings import AlertmanagerSettings
>>> from service.records import AlertRecord, AlertState, Severity, SubjectType
>>> sink = AlertmanagerSink(AlertmanagerSettings(), FleetMetrics(CollectorRegistry()),
...                         clock=lambda: 1_700_000_000.0)
>>> alert = AlertRecord(id="a1", kind="rule.battery_low", subject="th-1",
...     subject_type=SubjectType.DEVICE, site="plant-a", zone="z1",
...     severity=Severity.CRITICAL, state=AlertState.FIRING, started_at=1_699_999_000.0,
...     updated_at=1_699_999_000.0, resolved_at=None, summary="th-1: battery low",
...     evidence={"value": 3.1}, action="Replace the battery.")
>>> body = sink.payload(alert, now=1_700_000_000.0)
>>> body["labels"]
{'alertname': 'rule.battery_low', 'severity': 'critical', 'site': 'plant-a', 'zone': 'z1', 'device': 'th-1'}
>>> body["startsAt"], body["endsAt"]
('2023-11-14T21:56:40Z', '2023-11-14T22:17:20Z')
>>> body["annotations"]["evidence"]
'{"value":3.1}'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from yarl import URL

from config.settings import AlertmanagerSettings
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import Item
from service.records import AlertRecord, AlertState, SubjectType, iso_utc

log = logging.getLogger(__name__)

# a firing alert's endsAt lies this many resend intervals ahead (as Prometheus does)
_ENDS_AFTER_RESENDS = 4
_SUBJECT_LABELS = {SubjectType.DEVICE: "device", SubjectType.GATEWAY: "gateway"}


class AlertmanagerSink:
    """Pushes alert changes to Alertmanager from a bounded queue (async context manager).

    Parameters
    ----------
    settings
        The ``[alertmanager]`` settings.
    metrics
        FleetWatch's metrics (queue depth, deliveries, overflow, failures).
    clock
        Wall clock for ``startsAt``/``endsAt`` (tests may pass their own).

    Enter it to start delivering (an HTTP session and one named task); leaving it stops
    delivering, keeping what is still queued. It may be entered again, but not while it
    is running. Alert changes may be offered before it is entered: they wait in the queue.
    """

    name = "alertmanager"

    def __init__(
        self,
        settings: AlertmanagerSettings,
        metrics: FleetMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._clock = clock
        # (endpoint, the Alertmanager's URL without credentials, for logs and metrics)
        self._endpoints = tuple(
            (url.rstrip("/") + "/api/v2/alerts", str(URL(url).with_user(None)))
            for url in settings.urls
        )
        self._active: dict[tuple[str, str], AlertRecord] = {}
        self._pending: dict[tuple[str, str], AlertRecord] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> list[AlertRecord]:
        """The firing alerts the sink keeps sending."""
        return list(self._active.values())

    # -- the pipeline's side: never blocks -------------------------------------------------

    def offer(self, item: Item) -> None:
        """Queue an alert change (dead letters are not Alertmanager's business)."""
        if not isinstance(item, AlertRecord):
            return
        if item.state is AlertState.FIRING:
            self._active[item.key] = item
        else:
            self._active.pop(item.key, None)
        if item.key in self._pending or len(self._pending) < self.settings.queue_size:
            self._pending[item.key] = item
        else:
            self._metrics.sink_overflow.labels(sink=self.name).inc()
            log.warning(
                "alertmanager queue is full (%d): %s change of %s/%s left to the next resend",
                self.settings.queue_size, item.state.value, item.kind, item.subject,
            )  # fmt: skip
            return
        self._idle.clear()
        self._wakeup.set()
        self._metrics.sink_queue_depth.labels(sink=self.name).set(len(self._pending))

    def track(self, alerts: Iterable[AlertRecord]) -> None:
        """Take ``alerts`` (the open set, e.g. after a restore) as firing and send them."""
        for alert in alerts:
            self.offer(alert)

    # -- the wire format ------------------------------------------------------------------

    def payload(self, alert: AlertRecord, now: float) -> dict[str, Any]:
        """One alert in Alertmanager's v2 form, as of ``now`` (wall clock)."""
        labels: dict[str, str] = {"alertname": alert.kind, "severity": alert.severity.label}
        if alert.site:
            labels["site"] = alert.site
        if alert.zone:
            labels["zone"] = alert.zone
        labels[_SUBJECT_LABELS.get(alert.subject_type, "subject")] = alert.subject
        for name, value in self.settings.labels.items():
            labels.setdefault(name, value)
        annotations = {
            "summary": alert.summary or f"{alert.subject}: {alert.kind}",
            "evidence": orjson.dumps(
                dict(alert.evidence), option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS
            ).decode(),
            "id": alert.id,
        }
        if alert.action:
            annotations["action"] = alert.action
        if alert.state is AlertState.FIRING:
            ends_at = now + _ENDS_AFTER_RESENDS * self.settings.resend_interval_s
        else:
            ends_at = now
        body: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso_utc(min(alert.started_at, now)),
            "endsAt": iso_utc(ends_at),
        }
        if self.settings.generator_url:
            body["generatorURL"] = self.settings.generator_url
        return body

    # -- delivery -------------------------------------------------------------------------

    async def __aenter__(self) -> AlertmanagerSink:
        if self._task is not None:
            raise RuntimeError("the Alertmanager sink is already running")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
            headers={"Content-Type": "application/json"},
        )
        self._task = asyncio.create_task(self._run(), name="fleetwatch-sink-alertmanager")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def flush(self, timeout: float) -> bool:
        """Wait until everything offered so far was delivered; ``False`` on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _take(self) -> list[AlertRecord]:
        batch: list[AlertRecord] = []
        while self._pending and len(batch) < self.settings.max_batch:
            key = next(iter(self._pending))
            batch.append(self._pending.pop(key))
        return batch

    def _requeue(self, batch: list[AlertRecord]) -> None:
        # a newer change offered meanwhile wins over the one that failed
        for alert in batch:
            self._pending.setdefault(alert.key, alert)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.resend_interval_s
        next_resend = loop.time() + interval
        delay = self.settings.retry_min_s
        while True:
            self._wakeup.clear()  # offer() sets it again after queueing
            if not self._pending:
                self._idle.set()
                # asyncio.timeout, not wait_for: a cancel that coincides with the wake-up
                # must still cancel this task
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_resend - loop.time())):
                        await self._wakeup.wait()
            if loop.time() >= next_resend:
                next_resend = loop.time() + interval
                for key, alert in self._active.items():
                    self._pending.setdefault(key, alert)
            batch = self._take()
            if not batch:
                continue
            self._idle.clear()
            try:
                delivered = await self._send(batch)
            except asyncio.CancelledError:
                self._requeue(batch)  # stopped mid-push: keep it for the next start
                raise
            if delivered:
                delay = self.settings.retry_min_s
            else:
                self._requeue(batch)
            self._metrics.sink_queue_depth.labels(sink=self.name).set(len(self._pending))
            if not delivered:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.settings.retry_max_s)

    async def _send(self, batch: list[AlertRecord]) -> bool:
        """Push ``batch`` to every Alertmanager; ``True`` when at least one accepted it."""
        session = self._session
        assert session is not None
        body = orjson.dumps([self.payload(alert, self._clock()) for alert in batch])
        results = await asyncio.gather(
            *(self._post(session, url, shown, body) for url, shown in self._endpoints)
        )
        if not any(results):
            return False
        self._metrics.sink_published.labels(sink=self.name).inc(len(batch))
        firing = sum(1 for alert in batch if alert.state is AlertState.FIRING)
        if firing:
            self._metrics.alertmanager_alerts_sent.labels(state="firing").inc(firing)
        if len(batch) - firing:
            self._metrics.alertmanager_alerts_sent.labels(state="resolved").inc(len(batch) - firing)
        return True

    async def _post(
        self, session: aiohttp.ClientSession, url: str, shown: str, body: bytes
    ) -> bool:
        try:
            async with session.post(url, data=body) as response:
                if response.status < 300:
                    return True
                detail = (await response.text())[:200]
                log.warning("Alertmanager %s refused alerts: %d %s", shown, response.status, detail)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("Alertmanager %s unreachable: %s", shown, exc or type(exc).__name__)
        self._metrics.alertmanager_failures.labels(alertmanager=shown).inc()
        return False
