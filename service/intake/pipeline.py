"""The pipeline: raw messages in, detector signals through the alert lifecycle, changes out.

:class:`Pipeline` is the synchronous core shared by every mode: the daemon, ``replay``
and the demo all call :meth:`Pipeline.process_messages` on micro-batches and
:meth:`Pipeline.tick` as time passes. :class:`Intake` adds what the live daemon needs
around it: a bounded queue, micro-batching, acknowledgement after processing and
backpressure.

>>> from prometheus_client import CollectorRegistry
>>> from service.records import RawMessage
>>> from service.alerts.sinks import MemorySink
>>> sink = MemorySink()
>>> p = Pipeline.build(Settings(), detectors=[], sinks=[sink],
...                    metrics=FleetMetrics(CollectorRegistry()))
>>> out = p.process_messages([
...     RawMessage("fleet/a/d1/telemetry", b'{"temperature_c": 20}', 1.7e9),
...     RawMessage("fleet/a/d1/telemetry", b'{oops', 1.7e9)])
>>> out.accepted, out.rejected, sink.deadletters[0].reason
(1, 1, 'malformed_json')
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from operator import itemgetter
from typing import Any

from config.settings import Settings
from detectors.base import Detector
from protocols.codecs import CodecSet, DecodeContext
from protocols.lwm2m import TOPIC_TEMPLATE as LWM2M_TOPIC_TEMPLATE
from service.alerts.lifecycle import AlertChange, AlertManager, Transition
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import Sink
from service.errors import DecodeError, StateError, check_state_version
from service.intake.identity import AllowList
from service.intake.normalize import Normalizer, NormalizeResult
from service.intake.registry import DeviceRegistry
from service.intake.topics import ContentTypeRules, TopicRouter
from service.records import DeadLetter, MessageKind, MessageOutcome, RawMessage, Reading, Signal

log = logging.getLogger(__name__)

_TS = itemgetter(1)  # Reading.ts
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


@dataclass(slots=True)
class BatchOutcome:
    """What one micro-batch did."""

    messages: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    signals: int = 0
    alert_changes: int = 0


class Pipeline:
    """Decode, normalize, detect and run the alert lifecycle over micro-batches."""

    def __init__(
        self,
        *,
        settings: Settings,
        router: TopicRouter,
        codecs: CodecSet,
        normalizer: Normalizer,
        detectors: Sequence[Detector],
        alerts: AlertManager,
        metrics: FleetMetrics,
        sinks: Sequence[Sink],
        routers: Mapping[str, TopicRouter] | None = None,
        content_types: ContentTypeRules | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        # transports whose addresses follow their own templates (CoAP paths), by protocol
        self.routers = dict(routers or {})
        self.codecs = codecs
        # the content type of a message that names none: by topic, else the default
        self.content_types = content_types or ContentTypeRules((), "application/json")
        self.normalizer = normalizer
        self.registry = normalizer.registry
        self.detectors = list(detectors)
        self.alerts = alerts
        self.metrics = metrics
        self.sinks = list(sinks)
        max_records = settings.ingest.max_batch_records
        self._contexts = {kind: DecodeContext(kind, max_records) for kind in MessageKind}
        self._max_payload = settings.ingest.max_payload_bytes
        self.allow = AllowList(settings.ingest.allowed_devices, settings.ingest.allowed_sites)
        self.data_time = 0.0
        self.totals = BatchOutcome()
        self._detector_counters: dict[str, Any] = {}
        metrics.queue_capacity.set(settings.pipeline.queue_size)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        detectors: Sequence[Detector],
        sinks: Sequence[Sink],
        metrics: FleetMetrics,
        registry: DeviceRegistry | None = None,
    ) -> Pipeline:
        """Assemble a pipeline from settings."""
        return cls(
            settings=settings,
            router=TopicRouter(settings.topics.templates),
            routers={
                "coap": TopicRouter([settings.coap.path], setting="coap.path"),
                "lwm2m": TopicRouter([LWM2M_TOPIC_TEMPLATE], setting="lwm2m"),
            },
            content_types=ContentTypeRules(
                [(rule.filter, rule.content_type) for rule in settings.ingest.content_types],
                settings.ingest.default_content_type,
            ),
            codecs=CodecSet(),
            normalizer=Normalizer(registry or DeviceRegistry(), settings.ingest),
            detectors=detectors,
            alerts=AlertManager(
                fire_hold_s=settings.alerts.fire_hold_s,
                resolve_hold_s=settings.alerts.resolve_hold_s,
                recent_capacity=settings.alerts.recent_capacity,
            ),
            metrics=metrics,
            sinks=sinks,
        )

    # -- decoding -------------------------------------------------------------------

    def _dead_letter(self, message: RawMessage, error: DecodeError) -> None:
        self.metrics.decode_errors.labels(reason=error.reason).inc()
        log.warning("rejected %s: %s", message.topic[:200], error)
        letter = DeadLetter(
            topic=message.topic,
            reason=error.reason,
            detail=error.detail,
            payload=message.payload[:4096],
            received_at=message.received_at,
            protocol=message.protocol,
            device_id=error.device_id,
        )
        for sink in self.sinks:
            sink.offer(letter)

    def reject(self, message: RawMessage, error: DecodeError) -> None:
        """Count and dead-letter a message its transport refused before decoding (a CoAP
        request over the size limit or without a known content format), as if the
        pipeline had refused it."""
        if error.topic is None:
            error.topic = message.topic
        self._dead_letter(message, error)
        self.metrics.readings.labels(protocol=message.protocol, result="rejected").inc()
        self.totals.messages += 1
        self.totals.rejected += 1

    def decode(
        self,
        messages: Sequence[RawMessage],
        outcome: BatchOutcome,
        outcomes: list[MessageOutcome] | None = None,
    ) -> list[Reading]:
        """Turn messages into readings; dead-letter what cannot be read.

        With ``outcomes``, what became of each message is appended to it, in order.
        """
        normalize = self.normalizer.normalize
        default_match = self.router.match
        routers = {protocol: router.match for protocol, router in self.routers.items()}
        content_types = self.content_types
        # without topic rules, a message that names no content type has the default one
        content_type_for = content_types.content_type if content_types.rules else None
        default_type = content_types.default
        contexts = self._contexts
        for_content_type = self.codecs.for_content_type
        # per content type in this batch: (codec, whether it needs the receive time)
        codecs: dict[str | None, tuple[Any, bool]] = {}
        max_payload = self._max_payload
        allow = None if self.allow.open else self.allow
        result = NormalizeResult()
        readings = result.readings
        rejected = result.rejected
        # per protocol: [accepted, duplicates, rejected]; readings and duplicates are
        # counted for each run of messages of one protocol
        counts: dict[str, list[int]] = {}
        protocol: str | None = None
        tally = [0, 0, 0]
        match = default_match
        run_readings = run_duplicates = 0
        kind = MessageKind.TELEMETRY
        kind_context = contexts[kind]
        for message in messages:
            if message.protocol != protocol:
                tally[0] += len(readings) - run_readings
                tally[1] += result.duplicates - run_duplicates
                run_readings, run_duplicates = len(readings), result.duplicates
                protocol = message.protocol
                tally = counts.get(protocol) or counts.setdefault(protocol, [0, 0, 0])
                match = routers.get(protocol, default_match)
            n_readings, n_duplicates, n_rejected = len(readings), result.duplicates, len(rejected)
            try:
                if len(message.payload) > max_payload:
                    raise DecodeError(
                        "too_large",
                        f"payload of {len(message.payload)} bytes exceeds {max_payload}",
                    )
                found = match(message.topic)
                if allow is not None and not allow.permits(
                    found.device_id, found.levels.get("site")
                ):
                    raise DecodeError(
                        "not_allowed",
                        "device or site is not in ingest.allowed_devices / allowed_sites",
                        device_id=found.device_id,
                    )
                content_type = message.content_type or (
                    content_type_for(message.topic) if content_type_for else default_type
                )
                known = codecs.get(content_type)
                if known is None:
                    codec = for_content_type(content_type)
                    known = codecs[content_type] = (
                        codec,
                        getattr(codec, "needs_receive_time", False),
                    )
                codec, needs_receive_time = known
                if codec is None:
                    raise DecodeError(
                        "unsupported_content_type",
                        f"no codec for content type {message.content_type!r}",
                        device_id=found.device_id,
                    )
                if found.kind is not kind:
                    kind = found.kind
                    kind_context = contexts[kind]
                context = kind_context
                if needs_receive_time:
                    context = replace(context, received_at=message.received_at)
                records = codec.decode(message.payload, context)
                normalize(
                    records,
                    device_id=found.device_id,
                    kind=kind,
                    received_at=message.received_at,
                    levels=found.levels,
                    protocol=protocol,
                    result=result,
                )
            except DecodeError as exc:
                # what a failed message added is not counted
                run_readings += len(readings) - n_readings
                run_duplicates += result.duplicates - n_duplicates
                if exc.topic is None:
                    exc.topic = message.topic
                self._dead_letter(message, exc)
                tally[2] += 1
                if outcomes is not None:
                    outcomes.append(MessageOutcome(errors=(exc,)))
                continue
            except Exception as exc:  # a bug of ours: keep going, but loudly
                run_readings += len(readings) - n_readings
                run_duplicates += result.duplicates - n_duplicates
                log.exception("internal error decoding %s", message.topic[:200])
                error = DecodeError("internal_error", repr(exc)[:200])
                self._dead_letter(message, error)
                tally[2] += 1
                if outcomes is not None:
                    outcomes.append(MessageOutcome(errors=(error,)))
                continue
            if len(rejected) > n_rejected:
                for error in rejected[n_rejected:]:
                    error.topic = message.topic
                    self._dead_letter(message, error)
                tally[2] += len(rejected) - n_rejected
            if outcomes is not None:
                outcomes.append(
                    MessageOutcome(
                        accepted=len(readings) - n_readings,
                        duplicates=result.duplicates - n_duplicates,
                        errors=tuple(rejected[n_rejected:]),
                    )
                )
        tally[0] += len(readings) - run_readings
        tally[1] += result.duplicates - run_duplicates
        for protocol, (accepted, duplicates, failed) in counts.items():
            outcome.accepted += accepted
            outcome.duplicates += duplicates
            outcome.rejected += failed
            for result_name, count in (
                ("accepted", accepted),
                ("duplicate", duplicates),
                ("rejected", failed),
            ):
                if count:
                    self.metrics.readings.labels(protocol=protocol, result=result_name).inc(count)
        if result.late:
            self.metrics.late_readings.inc(result.late)
        if result.corrected_future:
            self.metrics.timestamps_corrected.inc(result.corrected_future)
        if result.ignored_fields:
            self.metrics.ignored_fields.inc(result.ignored_fields)
        return readings

    # -- detection ------------------------------------------------------------------

    def _detector_seconds(self, detector: Detector) -> Any:
        """The ``detector_seconds`` counter of ``detector`` (its labelled child, kept)."""
        child = self._detector_counters.get(detector.name)
        if child is None:
            child = self._detector_counters[detector.name] = self.metrics.detector_seconds.labels(
                detector=detector.name
            )
        return child

    def _run_detectors(self, readings: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        clock = time.perf_counter
        for detector in self.detectors:
            started = clock()
            try:
                signals.extend(detector.process(readings))
            except Exception:
                log.exception(
                    "detector %s failed on a batch of %d readings", detector.name, len(readings)
                )
                self.metrics.detector_errors.labels(detector=detector.name).inc()
            self._detector_seconds(detector).inc(clock() - started)
        return signals

    def _publish_changes(self, changes: Sequence[AlertChange]) -> None:
        if not changes:
            return
        metrics = self.metrics
        for change in changes:
            if change.transition is Transition.OPENED:
                metrics.alerts_fired.labels(kind=change.record.kind).inc()
            elif change.transition is Transition.RESOLVED:
                metrics.alerts_resolved.labels(kind=change.record.kind).inc()
            for sink in self.sinks:
                sink.offer(change.record)
        metrics.set_active_alerts(self.alerts.active())

    def _apply_signals(self, signals: Sequence[Signal]) -> list[AlertChange]:
        flaps = self.alerts.flaps_suppressed
        changes = self.alerts.apply(signals)
        if self.alerts.flaps_suppressed > flaps:
            self.metrics.alert_flaps.inc(self.alerts.flaps_suppressed - flaps)
        self._publish_changes(changes)
        return changes

    def process_messages(
        self, messages: Sequence[RawMessage], outcomes: list[MessageOutcome] | None = None
    ) -> BatchOutcome:
        """Run one micro-batch through decode, detectors and the alert lifecycle.

        With ``outcomes``, what became of each message is appended to it, in order.
        """
        started = time.perf_counter()
        outcome = BatchOutcome(messages=len(messages))
        readings = self.decode(messages, outcome, outcomes)
        if readings:
            newest = max(map(_TS, readings))
            if newest > self.data_time:
                self.data_time = newest
            signals = self._run_detectors(readings)
            outcome.signals = len(signals)
            if signals:
                outcome.alert_changes = len(self._apply_signals(signals))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(messages))
        totals = self.totals
        totals.messages += outcome.messages
        totals.accepted += outcome.accepted
        totals.rejected += outcome.rejected
        totals.duplicates += outcome.duplicates
        totals.signals += outcome.signals
        totals.alert_changes += outcome.alert_changes
        return outcome

    def reports(self, now: float) -> dict[str, dict[str, Any]]:
        """Each reporting detector's report, by detector name."""
        out: dict[str, dict[str, Any]] = {}
        for detector in self.detectors:
            report = getattr(detector, "report", None)
            if report is None:
                continue
            try:
                out[detector.name] = report(now)
            except Exception:
                log.exception("detector %s failed to report", detector.name)
                self.metrics.detector_errors.labels(detector=detector.name).inc()
        return out

    # -- checkpoints ----------------------------------------------------------------

    STATE_VERSION = 1

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Every component's state by name, as plain data (one checkpoint)."""
        components: dict[str, dict[str, Any]] = {
            "pipeline": {
                "version": self.STATE_VERSION,
                "data_time": self.data_time,
                "totals": asdict(self.totals),
            },
            "registry": {"version": 1, "devices": self.registry.export()},
            "normalizer": self.normalizer.state_dict(),
            "alerts": self.alerts.state_dict(),
        }
        for detector in self.detectors:
            components[f"detector.{detector.name}"] = detector.state_dict()
        return components

    def load_state(self, components: Mapping[str, dict[str, Any]]) -> None:
        """Restore what :meth:`state_dict` saved; refuse, naming it, what cannot be read.

        A detector with no saved state (newly enabled) starts fresh; saved state of a
        detector no longer enabled is ignored.
        """
        for name, state in components.items():
            try:
                if name == "pipeline":
                    check_state_version(name, state, self.STATE_VERSION)
                    self.data_time = float(state.get("data_time", 0.0))
                    self.totals = BatchOutcome(**state.get("totals", {}))
                elif name == "registry":
                    check_state_version(name, state, 1)
                    self.registry.restore(state.get("devices", []))
                elif name == "normalizer":
                    self.normalizer.load_state(state)
                elif name == "alerts":
                    self.alerts.load_state(state)
            except StateError:
                raise
            except Exception as exc:
                raise StateError(f"saved state of {name} cannot be read: {exc!r}") from exc
        for detector in self.detectors:
            saved = components.get(f"detector.{detector.name}")
            if saved is None:
                continue
            try:
                detector.load_state(saved)
            except StateError:
                raise
            except Exception as exc:
                raise StateError(
                    f"saved state of detector {detector.name} cannot be read: {exc!r}"
                ) from exc
        self.metrics.set_active_alerts(self.alerts.active())
        self.metrics.devices_known.set(len(self.registry))

    def tick(self, now: float) -> list[AlertChange]:
        """Let detectors and the alert lifecycle see time pass; return alert changes."""
        signals: list[Signal] = []
        for detector in self.detectors:
            started = time.perf_counter()
            try:
                signals.extend(detector.tick(now))
            except Exception:
                log.exception("detector %s failed on tick", detector.name)
                self.metrics.detector_errors.labels(detector=detector.name).inc()
            self._detector_seconds(detector).inc(time.perf_counter() - started)
        changes = self._apply_signals(signals) if signals else []
        settled = self.alerts.tick(now)
        self._publish_changes(settled)
        self.metrics.devices_known.set(len(self.registry))
        return changes + settled


Token = int | asyncio.Future[MessageOutcome | None] | None
"""How a queued message is acknowledged once processed: a transport's integer token (an MQTT
packet id, acknowledged in bulk through ``acknowledge``), a future to resolve with what became
of the message, or nothing."""


class Intake:
    """The live front of the pipeline: a bounded queue, micro-batches, acks after processing.

    Transports hand messages over in one of two ways:

    - :meth:`offer` (synchronous, for transports that parse many messages per socket read,
      like MQTT): the message is queued with an integer token; once its batch has been
      processed, ``acknowledge`` is called with the tokens of the whole batch at once, so
      the transport acknowledges (e.g. sends its PUBACKs) in one write. When the queue
      reaches its bound, ``on_full`` is called and the transport stops reading from its
      socket; ``on_room`` is called when the queue is back under half its bound. The queue
      can exceed its bound only by what one socket read already held.
    - :meth:`submit` (async, for request/response transports): waits while the queue is
      full, and with ``wait=True`` returns only once the message has been processed (and
      journaled), with its :class:`~service.records.MessageOutcome`. A transport that would
      rather refuse than wait checks :attr:`full` first (CoAP answers 5.03).

    With a ``journal`` (the state store's), each processed batch is journaled before it
    is acknowledged; a batch that cannot be journaled is not acknowledged.

    Nothing is ever dropped from the queue.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        queue_size: int,
        max_batch: int,
        clock: Callable[[], float] = time.time,
        on_full: Callable[[], None] | None = None,
        on_room: Callable[[], None] | None = None,
        acknowledge: Callable[[list[int]], object] | None = None,
        journal: Callable[[Sequence[RawMessage]], object] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._queue: deque[tuple[RawMessage, Token]] = deque()
        self._capacity = queue_size
        self._max_batch = max_batch
        self._low_watermark = max(1, queue_size // 2)
        self._clock = clock
        self._on_full = on_full
        self._on_room = on_room
        self.acknowledge = acknowledge
        self.journal = journal
        self._ready = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()
        self._closed = False
        # queued entries whose token is not an integer (none, or a future to resolve)
        self._untokened = 0
        self.processed = 0
        self.max_depth = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self._capacity

    def _check_full(self) -> None:
        if len(self._queue) >= self._capacity and self.has_room.is_set():
            self.has_room.clear()
            self.pipeline.metrics.intake_paused.inc()
            if self._on_full is not None:
                self._on_full()

    def offer(self, message: RawMessage, token: int | None = None) -> None:
        """Queue ``message`` without waiting; ``token`` is acknowledged after processing."""
        if self._closed:
            raise RuntimeError("intake is closed")
        queue = self._queue
        queue.append((message, token))
        if token is None:
            self._untokened += 1
        depth = len(queue)
        if depth == 1:
            # the batch loop waits for this only once it has found the queue empty
            self._ready.set()
        if depth > self.max_depth:
            self.max_depth = depth
            if depth >= self._capacity:
                self._check_full()
        elif depth >= self._capacity:
            self._check_full()

    async def submit(self, message: RawMessage, *, wait: bool) -> MessageOutcome | None:
        """Queue ``message`` (waiting for room); with ``wait``, return once processed.

        Returns what became of the message (``None`` without ``wait``, or when its batch
        failed); raises :class:`StateError` when it could not be journaled and
        ``RuntimeError`` when the intake is closed.
        """
        if self._closed:
            raise RuntimeError("intake is closed")
        while len(self._queue) >= self._capacity:
            self._check_full()
            await self.has_room.wait()
            if self._closed:
                raise RuntimeError("intake is closed")
        future: asyncio.Future[MessageOutcome | None] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
        self._queue.append((message, future))
        self._untokened += 1
        self._ready.set()
        self._check_full()
        if future is None:
            return None
        return await future

    def reject(self, message: RawMessage, error: DecodeError) -> None:
        """Count and dead-letter a message the transport refused (see :meth:`Pipeline.reject`)."""
        self.pipeline.reject(message, error)

    def close(self) -> None:
        """Refuse further messages (shutdown)."""
        self._closed = True

    async def run(self) -> None:
        """Process micro-batches until cancelled."""
        queue = self._queue
        metrics = self.pipeline.metrics
        while True:
            if not queue:
                self._ready.clear()
                await self._ready.wait()
            self._process_next()
            depth = len(queue)
            metrics.queue_depth.set(depth)
            if depth <= self._low_watermark and not self.has_room.is_set():
                self.has_room.set()
                if self._on_room is not None:
                    self._on_room()
            # let transports and sinks run between batches
            await asyncio.sleep(0)

    def _process_next(self) -> None:
        queue = self._queue
        count = min(self._max_batch, len(queue))
        if count == len(queue):
            batch = list(queue)
            queue.clear()
        else:
            popleft = queue.popleft
            batch = [popleft() for _ in range(count)]
        messages = list(map(_FIRST, batch))
        # integer tokens only (the common case): acknowledged as they are
        plain = not self._untokened
        # per-message outcomes only when a request/response transport waits for them
        outcomes: list[MessageOutcome] | None = None
        if not plain and any(token is not None and type(token) is not int for _, token in batch):
            outcomes = []
        journaled = True
        try:
            self.pipeline.process_messages(messages, outcomes)
            if self.journal is not None:
                journaled = False
                self.journal(messages)
                journaled = True
        except Exception:
            if journaled:
                log.exception("batch of %d messages failed", len(messages))
            else:
                # not acknowledged: the broker delivers these again once reconnected
                log.exception("journal write failed; %d messages left unacknowledged", count)
                self.pipeline.metrics.state_errors.labels(operation="journal").inc()
        finally:
            now = self._clock()
            self.pipeline.metrics.lag_seconds.observe(max(0.0, now - messages[0].received_at))
            if plain:
                tokens: list[int] = list(map(_SECOND, batch)) if journaled else []
            else:
                tokens = self._settle(batch, outcomes, journaled)
            if tokens and self.acknowledge is not None:
                self.acknowledge(tokens)
            self.processed += count

    def _settle(
        self,
        batch: Sequence[tuple[RawMessage, Token]],
        outcomes: list[MessageOutcome] | None,
        journaled: bool,
    ) -> list[int]:
        """Resolve the futures of a processed batch; return its integer tokens to
        acknowledge (none when it was not journaled)."""
        tokens: list[int] = []
        complete = outcomes is not None and len(outcomes) == len(batch)
        for index, (_, token) in enumerate(batch):
            if token is None:
                self._untokened -= 1
                continue
            if type(token) is int:
                if journaled:
                    tokens.append(token)
                continue
            self._untokened -= 1
            if not token.done():  # type: ignore[union-attr]
                if journaled:
                    token.set_result(  # type: ignore[union-attr]
                        outcomes[index] if complete and outcomes is not None else None
                    )
                else:
                    token.set_exception(  # type: ignore[union-attr]
                        StateError("the message could not be journaled")
                    )
        return tokens

    async def drain(self, timeout: float) -> bool:
        """Process what is queued (after :meth:`close`); ``False`` if time ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue:
            self._process_next()
            if loop.time() > deadline:
                return not self._queue
            await asyncio.sleep(0)
        return True
