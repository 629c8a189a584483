"""Replay: the live pipeline over recorded messages, as fast as it goes.

Time is the recording's: each message's recorded receive time drives the pipeline's ticks
(every ``pipeline.tick_interval_s`` of recorded time), so 30 days of history replay in
seconds and give the same alerts as they would have live.

>>> from prometheus_client import CollectorRegistry
>>> from config.settings import settings_from_mapping
>>> from service.records import RawMessage
>>> settings = settings_from_mapping({"rules": [
...     {"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 50}]})
>>> msgs = [RawMessage("fleet/a/d1/telemetry", f'{{"ts": {t}, "temperature_c": {v}}}'.encode(),
...                    float(t)) for t, v in [(1.7e9, 20), (1.7e9 + 60, 60), (1.7e9 + 120, 20)]]
>>> summary = replay(msgs, settings)
>>> summary.readings, summary.alerts_opened, summary.alerts_resolved
(3, 1, 1)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from config.settings import Settings
from detectors import build_detectors
from detectors.base import Detector
from service.alerts.lifecycle import Transition
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink, Sink
from service.intake.pipeline import BatchOutcome, Pipeline
from service.records import AlertRecord, AlertState, RawMessage
from service.replay.ordering import DEFAULT_WINDOW_S, ReorderWindow
from service.state.collector import tuned_collector


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did, and how fast."""

    messages: int = 0
    readings: int = 0
    rejected: int = 0
    duplicates: int = 0
    alerts_opened: int = 0
    alerts_resolved: int = 0
    devices: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    seconds: float = 0.0
    active: list[AlertRecord] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    reordered: int = 0  # read out of receive-time order and replayed in place
    too_late: int = 0  # further out of order than the reorder window: replayed as read

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class TickClock:
    """Ticks on recorded time: the first ``interval`` after the first message, then at
    every multiple of ``interval`` after it that a message reaches (a long silence gives one
    tick, not one per interval). Feed it each message's receive time, in order.

    >>> clock = TickClock(5.0)
    >>> [clock.due(t) for t in (0.0, 3.0, 5.0, 6.0, 21.0)], clock.next_tick
    ([None, None, 5.0, None, 10.0], 20.0)
    """

    interval: float
    next_tick: float | None = None

    def due(self, received: float) -> float | None:
        """The tick to run before the message received at ``received``, if one is due."""
        next_tick = self.next_tick
        if next_tick is None:
            self.next_tick = received + self.interval
            return None
        if received < next_tick:
            return None
        interval = self.interval
        self.next_tick = max(next_tick + interval, received - (received - next_tick) % interval)
        return next_tick


def replay_pipeline(
    settings: Settings,
    sinks: Sequence[Sink],
    detectors: Sequence[Detector] | None = None,
    registry: CollectorRegistry | None = None,
) -> Pipeline:
    """The pipeline a replay runs: ``detectors`` (default: those ``settings`` enable), its
    own metrics (in ``registry``, else a fresh one), alert changes and dead letters to
    ``sinks``."""
    return Pipeline.build(
        settings,
        detectors=build_detectors(settings) if detectors is None else detectors,
        sinks=sinks,
        metrics=FleetMetrics(registry or CollectorRegistry()),
    )


def replay(
    messages: Iterable[RawMessage],
    settings: Settings,
    *,
    detectors: Sequence[Detector] | None = None,
    sinks: Sequence[Sink] = (),
    batch_size: int | None = None,
    registry: CollectorRegistry | None = None,
    reorder_window_s: float = DEFAULT_WINDOW_S,
) -> ReplaySummary:
    """Run ``messages`` through the pipeline; return a summary (alerts go to ``sinks``).

    Messages are put back in receive-time order within ``reorder_window_s`` of recorded
    time (:class:`~service.replay.ordering.ReorderWindow`; 0 replays them as read)."""
    memory = MemorySink()
    pipeline = replay_pipeline(settings, [memory, *sinks], detectors, registry)
    summary = ReplaySummary()
    window = ReorderWindow(reorder_window_s)
    with tuned_collector():
        _run(pipeline, window.order(messages), settings, batch_size, summary)
    summary.reordered, summary.too_late = window.reordered, window.too_late
    summary.devices = len(pipeline.registry)
    summary.active = sorted(pipeline.alerts.active(), key=lambda a: (a.kind, a.subject))
    summary.reports = pipeline.reports(summary.last_ts if summary.last_ts is not None else 0.0)
    summary.alerts_opened = pipeline.alerts.fired_total
    summary.alerts_resolved = pipeline.alerts.resolved_total
    for letter in memory.deadletters:
        summary.rejected_by_reason[letter.reason] = (
            summary.rejected_by_reason.get(letter.reason, 0) + 1
        )
    return summary


def _run(
    pipeline: Pipeline,
    messages: Iterable[RawMessage],
    settings: Settings,
    batch_size: int | None,
    summary: ReplaySummary,
) -> None:
    """Feed ``messages`` through ``pipeline`` in batches, ticking on recorded time."""
    size = batch_size or settings.pipeline.max_batch
    clock = TickClock(settings.pipeline.tick_interval_s)
    started = time.perf_counter()
    batch: list[RawMessage] = []
    total = BatchOutcome()

    def run_batch() -> None:
        outcome = pipeline.process_messages(batch)
        total.messages += outcome.messages
        total.accepted += outcome.accepted
        total.rejected += outcome.rejected
        total.duplicates += outcome.duplicates
        batch.clear()

    for message in messages:
        received = message.received_at
        tick_at = clock.due(received)
        if tick_at is not None:
            if batch:
                run_batch()
            pipeline.tick(tick_at)
        elif summary.first_ts is None:
            summary.first_ts = received
        summary.last_ts = received
        batch.append(message)
        if len(batch) >= size:
            run_batch()
    if batch:
        run_batch()
    if clock.next_tick is not None:
        pipeline.tick(clock.next_tick)
    summary.seconds = time.perf_counter() - started
    summary.messages = total.messages
    summary.readings = total.accepted
    summary.rejected = total.rejected
    summary.duplicates = total.duplicates


def describe_change(record: AlertRecord, transition: Transition | None = None) -> str:
    """One line for a terminal: time, state, severity, kind, subject, summary."""
    from service.records import iso_utc

    state = "RESOLVED" if record.state is AlertState.RESOLVED else (
        "ESCALATED" if transition is Transition.ESCALATED else "FIRING"
    )  # fmt: skip
    at = iso_utc(record.resolved_at if record.resolved_at is not None else record.updated_at)
    return f"{at} {state:<9} {record.severity.label:<8} {record.kind} {record.subject}: {record.summary}"
