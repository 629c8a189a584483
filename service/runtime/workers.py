"""Several worker processes behind one broker connection, sharded by site.

With ``pipeline.workers`` above one (0 means one per core), ``fleetwatch run`` starts a
:class:`Coordinator` and that many worker processes:

- the **coordinator** holds the one MQTT subscription. It places each message on the
  worker that owns its site (:class:`~service.runtime.shards.ShardRouter`), sends it over a local
  socket in micro-batches, and acknowledges it to the broker only once that worker has
  processed and journaled it, in the order the broker delivered the messages. It serves
  HTTP: one ``/metrics`` merging every process's metrics
  (:mod:`service.runtime.metrics_merge`), ``/api/status`` and ``/api/alerts`` over all workers, and
  the fleet view. It publishes the detectors' reports merged across workers
  (:mod:`service.runtime.report_merge`) and the daemon's status topic.
- each **worker** is a :class:`~service.runtime.daemon.Daemon` over its sites: the full pipeline
  with every detector, its own state file (``<state>.worker-<i>-of-<n>.db``: checkpoints
  and journal) and its own publishing connection, on which it sends its alerts and dead
  letters to the one alert topic tree. A device belongs to one site and a site to one
  worker, so every alert is raised by one process only.

A worker that dies stops the daemon (the others shut down cleanly); what it had not
acknowledged, the broker delivers again after the restart, and its journal brings it back
to where it was. Saved state records the number of workers it was saved by; start-up with
another number is refused (:func:`~service.runtime.shards.check_state_layout`).

Detectors that compare a device with the rest of the fleet (firmware versions seen per
model, power baselines per model, environment bands against the rest of the fleet) get
the other workers' contributions every ``pipeline.tick_interval_s``
(:mod:`service.runtime.fleet_facts`), so they judge against the whole fleet, one interval late;
the published reports are merged over the whole fleet.

The wire between coordinator and worker is a stream of frames: a 4-byte length, a 1-byte
type and a pickled body (:func:`frame`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from config.settings import Settings
from protocols.mqtt import MqttClient
from service.alerts.metrics import FleetMetrics
from service.api.fleetview_shards import EventForwarder
from service.errors import FleetWatchError
from service.intake.topics import TopicRouter
from service.records import AlertRecord, MessageColumns
from service.runtime.daemon import Daemon, http_access, ingest_client
from service.runtime.metrics_merge import FamiliesCollector, merge_families
from service.runtime.shards import ShardRouter, check_state_layout, worker_state_path

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!IB")

BATCH, ACK, CALL, REPLY, EVENT, READY, STOP, STOPPED, FAILED = range(1, 10)
"""Frame types. Coordinator to worker: BATCH, CALL, STOP. Worker to coordinator: ACK,
REPLY, EVENT, READY, STOPPED, FAILED."""

CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 600.0  # restoring a large journal may take minutes


def frame(kind: int, body: bytes) -> bytes:
    """One frame: length of ``body``, ``kind``, ``body``.

    >>> frame(ACK, b"xy")
    b'\\x00\\x00\\x00\\x02\\x02xy'
    """
    return _HEADER.pack(len(body), kind) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame's type and body; raises ``IncompleteReadError`` at end of stream."""
    length, kind = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return kind, await reader.readexactly(length)


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


# -- the worker side ------------------------------------------------------------------


def _call_status(daemon: Any) -> dict[str, Any]:
    return dict(daemon.status())


def _call_metrics(daemon: Any) -> list[Metric]:
    return list(daemon.registry.collect())


def _call_active_alerts(daemon: Any) -> list[AlertRecord]:
    return list(daemon.pipeline.alerts.active())


def _call_reports(daemon: Any, now: float) -> dict[str, dict[str, Any]]:
    return dict(daemon.pipeline.reports(now))


def worker_calls() -> dict[str, Callable[..., Any]]:
    """What the coordinator may call in a worker, by name; each takes the worker's daemon."""
    from service.api.fleetview_shards import WORKER_CALLS as FLEETVIEW_CALLS
    from service.runtime.fleet_facts import WORKER_CALLS as FACT_CALLS

    return {
        "status": _call_status,
        "metrics": _call_metrics,
        "alerts.active": _call_active_alerts,
        "reports": _call_reports,
        **FLEETVIEW_CALLS,
        **FACT_CALLS,
    }


def worker_settings(settings: Settings, index: int, count: int) -> Settings:
    """A worker's settings: no subscriptions, no HTTP, its own client id and state file."""
    mqtt = settings.mqtt.model_copy(
        update={"client_id": f"{settings.mqtt.client_id}-worker-{index}", "subscriptions": ()}
    )
    state = settings.state.model_copy(
        update={"path": worker_state_path(settings.state.path, index, count)}
    )
    http = settings.http.model_copy(update={"enabled": False})
    return settings.model_copy(update={"mqtt": mqtt, "state": state, "http": http})


class WorkerDaemon(Daemon):
    """A daemon fed by the coordinator: batches in, acknowledgements back.

    Its broker connection only publishes (alerts and dead letters); the coordinator owns
    the subscription and the status topic. While its intake is full, ``intake_open`` is
    clear and the coordinator's batches wait in the socket.
    """

    checks_state_layout = False

    def __init__(self, settings: Settings, send: Callable[[int, bytes], None]) -> None:
        self._send = send
        self.intake_open = asyncio.Event()
        self.intake_open.set()
        super().__init__(settings)
        if self.fleet_events is not None:
            # alert changes go to the coordinator's event streams (the status page)
            forwarder = EventForwarder(lambda event: send(EVENT, _dumps(event)))
            forwarder.bind(self.fleet_view)
            self.pipeline.sinks = [
                forwarder if sink is self.fleet_events else sink for sink in self.pipeline.sinks
            ]

    def _broker_client(self, settings: Settings) -> MqttClient:
        return MqttClient(
            settings.mqtt,
            subscriptions=(),
            status_topic=None,
            on_connection_change=self._connection_changed,
        )

    def _pause_ingest(self) -> None:
        self.intake_open.clear()

    def _resume_ingest(self) -> None:
        self.intake_open.set()

    def _acknowledge(self, tokens: list[int]) -> None:
        self._send(ACK, array("q", tokens).tobytes())

    def publish_reports(self, prefix: str) -> dict[str, dict[str, Any]]:
        # the coordinator publishes the reports merged across workers
        return {}


async def _serve_worker(settings: Settings, index: int, count: int, sock: socket.socket) -> int:
    reader, writer = await asyncio.open_connection(sock=sock)

    def send(kind: int, body: bytes) -> None:
        if not writer.is_closing():
            writer.write(frame(kind, body))

    try:
        daemon = WorkerDaemon(worker_settings(settings, index, count), send)
    except Exception as exc:
        log.exception("worker %d could not be built", index)
        send(FAILED, _dumps(f"worker {index} could not start: {exc!r}"))
        await writer.drain()
        writer.close()
        return 1
    calls = worker_calls()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    running = asyncio.create_task(daemon.run(), name=f"fleetwatch-worker-{index}")
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        error = running.exception()
        send(FAILED, _dumps(f"worker {index} could not start: {error}"))
        await writer.drain()
        writer.close()
        return 1
    send(READY, b"")

    async def serve() -> None:
        offer = daemon.intake.offer
        while True:
            try:
                kind, body = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                daemon.stop()  # the coordinator is gone: shut down cleanly
                return
            if kind == BATCH:
                seqs_raw, columns = pickle.loads(body)
                seqs = array("q")
                seqs.frombytes(seqs_raw)
                try:
                    for seq, message in zip(seqs, columns.messages(), strict=True):
                        offer(message, seq)
                except RuntimeError:
                    # stopping on its own (SIGTERM to the whole group): what is not
                    # acknowledged, the broker delivers again
                    log.info("worker %d is stopping; batch left for redelivery", index)
                if not daemon.intake_open.is_set():
                    await daemon.intake_open.wait()
            elif kind == CALL:
                call_id, name, args = pickle.loads(body)
                try:
                    result = (call_id, True, calls[name](daemon, *args))
                except Exception as exc:
                    log.exception("worker %d: call %s failed", index, name)
                    result = (call_id, False, f"{name} failed in worker {index}: {exc!r}")
                send(REPLY, _dumps(result))
            elif kind == STOP:
                daemon.stop()
            await writer.drain()

    serving = asyncio.create_task(serve(), name=f"fleetwatch-worker-{index}-channel")
    try:
        await running
    except BaseException as exc:
        send(FAILED, _dumps(f"worker {index} failed: {exc!r}"))
        raise
    else:
        send(STOPPED, b"")
    finally:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        serving.cancel()
        writer.close()
    return 0


def worker_main(
    settings: Settings, index: int, count: int, sock: socket.socket, log_level: int
) -> None:
    """A worker process's entry point (started by the coordinator, logging as it does)."""
    # Ctrl-C reaches the whole process group: the coordinator decides when workers stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)-7s worker-{index} %(name)s: %(message)s",
    )
    raise SystemExit(asyncio.run(_serve_worker(settings, index, count, sock)))


# -- the coordinator side ---------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Outbound:
    """Messages placed on one worker and not yet sent to it: their sequence numbers and the
    messages as columns (one batch)."""

    seqs: array[int] = dataclasses.field(default_factory=lambda: array("q"))
    columns: MessageColumns = dataclasses.field(default_factory=MessageColumns)

    def __len__(self) -> int:
        return len(self.seqs)

    def take(self) -> bytes:
        body = _dumps((self.seqs.tobytes(), self.columns))
        self.seqs = array("q")
        self.columns = MessageColumns()
        return body


def merge_restored(summaries: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """What every worker's start-up restored, added up (``None`` unless each restored).

    >>> merge_restored([{"checkpoint_at": 5.0, "devices": 2, "alerts_active": 1,
    ...                  "journaled": 10, "outbox": 0, "seconds": 0.5},
    ...                 {"checkpoint_at": 3.0, "devices": 1, "alerts_active": 0,
    ...                  "journaled": 4, "outbox": 1, "seconds": 0.25}])
    {'checkpoint_at': 3.0, 'devices': 3, 'alerts_active': 1, 'journaled': 14, 'outbox': 1, 'seconds': 0.5}
    """
    if not summaries or any(summary is None for summary in summaries):
        return None
    present = [summary for summary in summaries if summary is not None]
    times = [summary.get("checkpoint_at") for summary in present]
    return {
        "checkpoint_at": None if any(t is None for t in times) else min(times),  # type: ignore[type-var]
        **{
            key: sum(int(summary.get(key) or 0) for summary in present)
            for key in ("devices", "alerts_active", "journaled", "outbox")
        },
        "seconds": max(float(summary.get("seconds") or 0.0) for summary in present),
    }


class WorkerHandle:
    """The coordinator's end of one worker: its process, socket and calls in flight."""

    def __init__(self, index: int, process: Any, sock: socket.socket) -> None:
        self.index = index
        self.process = process
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.outbound = _Outbound()
        self.in_flight = 0
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.failure: str | None = None
        self.calls: dict[int, asyncio.Future[Any]] = {}

    @property
    def alive(self) -> bool:
        return not self.stopped.is_set() and self.process.is_alive()

    def send(self, kind: int, body: bytes) -> None:
        assert self.writer is not None
        if not self.writer.is_closing():
            self.writer.write(frame(kind, body))


class Coordinator:
    """The daemon as several processes: one broker connection, N workers sharded by site.

    Same lifecycle as :class:`~service.runtime.daemon.Daemon`: :meth:`run` until :meth:`stop`;
    :attr:`ready` is set once every worker has restored its state and the broker
    subscription is up.
    """

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if workers < 2:
            raise ValueError("a coordinator needs at least two workers")
        self.settings = settings
        self.count = workers
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.metrics = FleetMetrics(self.registry)
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self._stop = asyncio.Event()
        self.shards = ShardRouter(TopicRouter(settings.topics.templates), workers)
        self.workers: list[WorkerHandle] = []
        self.mqtt = ingest_client(settings, self._on_message, self._connection_changed)
        self._seq = itertools.count(1)
        self._call_ids = itertools.count(1)
        # (sequence number, broker token) in delivery order, until acknowledged
        self._pending: deque[tuple[int, int | None]] = deque()
        self._done: set[int] = set()
        self._in_flight = 0
        self._capacity = settings.pipeline.queue_size
        self._paused = False
        self._flush_scheduled = False
        self._max_batch = settings.pipeline.max_batch
        self._events: Any = None
        self.failure: str | None = None
        self.acknowledged = 0
        self.routed = 0
        self.max_in_flight = 0
        self.metrics.queue_capacity.set(self._capacity)

    def stop(self) -> None:
        """Ask the daemon to shut down (safe from a signal handler)."""
        self._stop.set()

    def healthy(self) -> bool:
        return self.mqtt.connected.is_set() and all(w.alive for w in self.workers)

    # -- routing -----------------------------------------------------------------------

    def _on_message(
        self, topic: str, payload: bytes, qos: int, properties: Any, token: int | None
    ) -> None:
        value = properties.get("content_type") if properties else None
        worker = self.workers[self.shards.shard(topic)]
        seq = next(self._seq)
        out = worker.outbound
        out.seqs.append(seq)
        columns = out.columns
        columns.topics.append(topic)
        columns.payloads.append(payload)
        columns.times.append(self.clock())
        columns.protocols.append("mqtt")
        columns.content_types.append(value[0] if value else None)
        self._pending.append((seq, token))
        self._in_flight += 1
        self.routed += 1
        if len(out) >= self._max_batch:
            self._flush(worker)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_all)
        if self._in_flight >= self._capacity and not self._paused:
            self._paused = True
            self.metrics.intake_paused.inc()
            self.mqtt.pause_reading()

    def _flush(self, worker: WorkerHandle) -> None:
        count = len(worker.outbound)
        if count:
            worker.in_flight += count
            worker.send(BATCH, worker.outbound.take())

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        for worker in self.workers:
            self._flush(worker)
        self.metrics.queue_depth.set(self._in_flight)
        if self._in_flight > self.max_in_flight:
            self.max_in_flight = self._in_flight

    def _acknowledged(self, worker: WorkerHandle, body: bytes) -> None:
        seqs = array("q")
        seqs.frombytes(body)
        worker.in_flight -= len(seqs)
        self._in_flight -= len(seqs)
        done = self._done
        done.update(seqs)
        pending = self._pending
        tokens: list[int] = []
        # acknowledge in delivery order: up to the first message still being processed
        while pending and pending[0][0] in done:
            seq, token = pending.popleft()
            done.discard(seq)
            if token is not None:
                tokens.append(token)
        if tokens:
            self.acknowledged += self.mqtt.acknowledge(tokens)
        if self._paused and self._in_flight <= self._capacity // 2:
            self._paused = False
            self.mqtt.resume_reading()

    def _connection_changed(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)
        if connected and self.mqtt.connections > 1:
            self.metrics.mqtt_reconnects.inc()
            # the previous connection's deliveries stay in order in _pending; their
            # acknowledgements are skipped (the broker sends them again, and the workers'
            # duplicate windows drop the repeats)

    # -- calls into workers ------------------------------------------------------------

    async def call_all(self, name: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """``name`` called in every worker with ``args``; results in worker order."""
        return list(await asyncio.gather(*(self.call(w, name, args) for w in self.workers)))

    async def call(self, worker: WorkerHandle, name: str, args: tuple[Any, ...] = ()) -> Any:
        if not worker.alive:
            raise FleetWatchError(f"worker {worker.index} is not running")
        call_id = next(self._call_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.calls[call_id] = future
        worker.send(CALL, _dumps((call_id, name, args)))
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT_S)
        finally:
            worker.calls.pop(call_id, None)

    async def exposition(self) -> bytes:
        """``/metrics``: the coordinator's and every worker's metrics, merged."""
        families = await self.call_all("metrics")
        merged = merge_families([list(self.registry.collect()), *families])
        return generate_latest(FamiliesCollector(lambda: merged))

    async def active_alerts(self) -> list[AlertRecord]:
        return [alert for alerts in await self.call_all("alerts.active") for alert in alerts]

    async def status(self) -> dict[str, Any]:
        """What the daemon has done, summed over workers, with each worker's own status."""
        per_worker = await self.call_all("status")
        summed: dict[str, Any] = {"connected": self.mqtt.connected.is_set()}
        for key in ("messages", "readings", "rejected", "duplicates", "devices",
                    "alerts_active", "queue_depth"):  # fmt: skip
            summed[key] = sum(int(status.get(key) or 0) for status in per_worker)
        summed["queue_depth"] += self._in_flight
        summed["journal"] = sum(int(status.get("journal") or 0) for status in per_worker)
        summed["restored"] = merge_restored([status.get("restored") for status in per_worker])
        summed["workers"] = per_worker
        return summed

    async def reports(self) -> dict[str, dict[str, Any]]:
        """Every detector's report over the whole fleet (merged across workers)."""
        from service.runtime.report_merge import MergeOptions, merge_all

        per_worker = await self.call_all("reports", (self.clock(),))
        return merge_all(per_worker, options=MergeOptions.from_settings(self.settings))

    async def publish_reports(self) -> dict[str, dict[str, Any]]:
        """Merge the workers' reports, update report-based metrics, publish (retained)."""
        reports = await self.reports()
        self.metrics.set_reports(reports)
        if self.mqtt.connected.is_set():
            prefix = self.settings.topics.reports_prefix
            for name, report in reports.items():
                self.mqtt.publish(f"{prefix}/{name}", orjson.dumps(report), qos=1, retain=True)
        return reports

    async def exchange_facts(self) -> None:
        """One round of fleet-wide facts: each worker's detectors get the other workers'
        contributions (:mod:`service.runtime.fleet_facts`)."""
        from service.runtime.fleet_facts import exchange

        async def call_one(index: int, name: str, args: tuple[Any, ...]) -> Any:
            return await self.call(self.workers[index], name, args)

        await exchange(self.call_all, call_one)

    async def _exchanger(self) -> None:
        interval = self.settings.pipeline.tick_interval_s
        while True:
            try:
                await self.exchange_facts()
            except (FleetWatchError, TimeoutError):
                # detectors keep what they were given last
                log.warning("fleet facts not exchanged this time: a worker did not answer")
            await asyncio.sleep(interval)

    async def _reporter(self) -> None:
        interval = self.settings.pipeline.report_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.publish_reports()
            except (FleetWatchError, TimeoutError):
                log.warning("reports not published this time: a worker did not answer")

    # -- worker processes ----------------------------------------------------------------

    def _start_workers(self) -> None:
        context = multiprocessing.get_context("spawn")
        log_level = logging.getLogger().getEffectiveLevel()
        for index in range(self.count):
            ours, theirs = socket.socketpair()
            process = context.Process(
                target=worker_main,
                args=(self.settings, index, self.count, theirs, log_level),
                name=f"fleetwatch-worker-{index}",
            )
            process.start()
            theirs.close()
            self.workers.append(WorkerHandle(index, process, ours))

    async def _listen(self, worker: WorkerHandle) -> None:
        """Read one worker's frames until it stops; a worker lost early stops the daemon."""
        reader, writer = await asyncio.open_connection(sock=worker.sock)
        worker.reader, worker.writer = reader, writer
        try:
            while True:
                kind, body = await read_frame(reader)
                if kind == ACK:
                    self._acknowledged(worker, body)
                elif kind == REPLY:
                    call_id, ok, value = pickle.loads(body)
                    future = worker.calls.get(call_id)
                    if future is not None and not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(FleetWatchError(value))
                elif kind == EVENT:
                    if self._events is not None:
                        self._events.deliver(pickle.loads(body))
                elif kind == READY:
                    worker.ready.set()
                elif kind == STOPPED:
                    worker.stopped.set()
                elif kind == FAILED:
                    worker.failure = pickle.loads(body)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for future in worker.calls.values():
                if not future.done():
                    future.set_exception(FleetWatchError(f"worker {worker.index} stopped"))
            if not worker.stopped.is_set():
                worker.failure = worker.failure or (f"worker {worker.index} exited unexpectedly")
                worker.stopped.set()
                self.failure = self.failure or worker.failure
                log.error("%s; stopping", worker.failure)
                self._stop.set()

    async def _wait_started(self) -> None:
        waiters = [asyncio.ensure_future(w.ready.wait()) for w in self.workers]
        stopped = asyncio.ensure_future(self._stop.wait())
        pending: set[asyncio.Future[Any]] = {*waiters, stopped}
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        try:
            while not stopped.done() and not all(waiter.done() for waiter in waiters):
                remaining = deadline - asyncio.get_running_loop().time()
                done, pending = await asyncio.wait(
                    pending, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
        finally:
            for future in (*waiters, stopped):
                future.cancel()
        if not all(w.ready.is_set() for w in self.workers) and not self._stop.is_set():
            self.failure = "workers did not start in time"
            self._stop.set()

    def _http(self) -> Any:
        from service.api.fleetapi import FleetApi
        from service.api.fleetview import SiteInfo
        from service.api.http import HttpServer

        settings = self.settings
        fleet_api = None
        if settings.fleetview.enabled:
            from service.api.fleetapi import FleetEvents
            from service.api.fleetview_shards import ShardedFleetView

            self._events = FleetEvents()
            view = ShardedFleetView(
                self.call_all,
                self.reports,
                sites={
                    name: SiteInfo(site.name, site.region, site.lat, site.lon)
                    for name, site in settings.fleetview.sites.items()
                },
            )
            fleet_api = FleetApi(
                view,
                self._events,
                tile_url=settings.fleetview.tile_url,
                title=settings.fleetview.title,
            )
        http = settings.http
        return HttpServer(
            http.host,
            http.port,
            self.registry,
            healthy=self.healthy,
            active_alerts=self.active_alerts,
            status=self.status,
            **http_access(settings),
            fleet_api=fleet_api,
            exposition=self.exposition,
        )

    async def run(self) -> None:
        """Start the workers, then route until :meth:`stop`; raise if a worker failed."""
        settings = self.settings
        if settings.state.enabled:
            check_state_layout(settings.state.path, self.count)
        self._start_workers()
        try:
            async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as group:
                listeners = [
                    group.create_task(self._listen(w), name=f"fleetwatch-listen-{w.index}")
                    for w in self.workers
                ]
                await self._wait_started()
                if not self._stop.is_set():
                    if settings.http.enabled:
                        http = await stack.enter_async_context(self._http())
                        self.http_port = http.port
                        log.info("serving metrics at %s/metrics", http.url)
                    reporter = group.create_task(self._reporter(), name="fleetwatch-reports")
                    exchanger = group.create_task(self._exchanger(), name="fleetwatch-facts")
                    connect = group.create_task(self.mqtt.connect(), name="fleetwatch-connect")
                    stopping = group.create_task(self._stop.wait())
                    await asyncio.wait({connect, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if connect.done():
                        connect.result()
                        self.ready.set()
                        log.info("FleetWatch is running with %d workers", self.count)
                        await stopping
                    else:
                        connect.cancel()
                        stopping.cancel()
                    reporter.cancel()
                    exchanger.cancel()
                await self._shutdown()
                for listener in listeners:
                    listener.cancel()
        finally:
            self._reap()
        if self.failure is not None:
            raise FleetWatchError(self.failure)

    async def _shutdown(self) -> None:
        timeout = self.settings.pipeline.shutdown_timeout_s
        log.info("shutting down: %d messages with the workers", self._in_flight)
        self.mqtt.pause_reading()
        self._flush_all()
        for worker in self.workers:
            if worker.alive and worker.writer is not None:
                worker.send(STOP, b"")
        stopped = [w.stopped.wait() for w in self.workers]
        try:
            await asyncio.wait_for(asyncio.gather(*stopped), timeout + 5.0)
        except TimeoutError:
            log.warning("shutdown timeout: a worker did not stop in time")
        if self._in_flight:
            log.warning("%d messages left unacknowledged for redelivery", self._in_flight)
        await self.mqtt.close()
        for worker in self.workers:
            if worker.writer is not None:
                worker.writer.close()
        log.info("FleetWatch stopped")

    def _reap(self, timeout: float = 10.0) -> None:
        # a worker still running sees its channel close and shuts down cleanly
        for worker in self.workers:
            if worker.writer is not None:
                worker.writer.close()
            worker.sock.close()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("worker %d did not exit; terminating it", worker.index)
                worker.process.terminate()
                worker.process.join(5.0)


__all__: Sequence[str] = ("Coordinator", "worker_calls", "worker_main", "worker_settings")
