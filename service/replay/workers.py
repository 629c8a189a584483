"""Replay on several worker processes, sharded by site, with deterministic results.

``fleetwatch replay FILE --workers N`` runs :func:`replay_sharded`: the pipeline of
:func:`service.replay.engine.replay` in N worker processes, each over its share of the sites.

- The **coordinator** (the calling process) reads the recording once and places each
  message on a worker with :class:`~service.runtime.shards.ShardRouter`, as the live daemon does
  (by site, else gateway, else device; a topic no template matches goes to worker 0, which
  dead-letters it). It cuts the stream at the tick boundaries ``replay`` uses (recorded
  time, every ``pipeline.tick_interval_s``; a long silence gives one tick, not one per
  interval) and groups the tick intervals into *steps*: a step ends at the first tick
  boundary once it holds :data:`EXCHANGE_MIN_MESSAGES` messages, or after
  :data:`EXCHANGE_MAX_TICKS` ticks, or (mid-interval, no tick) after
  :data:`STEP_MESSAGES` messages. Where and how the stream is cut depends on the recording
  only, never on timing.
- Each **worker** (a process started with ``spawn``, as the daemon's workers are) builds
  its pipeline as ``replay`` does. Per step (one pickled request, one answer) it takes the
  fleet facts it is given, then per tick interval runs its share of the messages in
  batches of ``batch_size`` (default ``pipeline.max_batch``) and ticks at the very time a
  single-process replay ticks at, whether it had messages or not; it answers with the alert
  changes and dead letters it produced (only when there are sinks) and its fleet facts.
- **Lock-step**: step k+1 is sent only once every worker has answered step k, and carries
  the fleet facts (:mod:`service.runtime.fleet_facts`) of the tick that ended step k: every
  worker's summaries, merged for each worker from all the others. So the detectors that
  compare a device with the rest of the fleet (firmware versions seen per model, power
  baselines, environment bands) learn the whole fleet as of that tick: at every tick while
  the recording is busy, as the live coordinator's exchange every ``tick_interval_s``, but
  on recorded time, which makes the output the same run to run. While the workers run step
  k, the coordinator reads and places step k+1: it holds one step ahead, no more.
- **Alert changes** reach ``sinks`` in the coordinator, tick interval by tick interval;
  within one, worker 0's first, then worker 1's, each worker's in the order it produced
  them (interleaved with its dead letters, as in ``replay``). A device, and with it its
  site's zones, gateways and peer groups, is in one worker, so each alert is raised once.
- The **summary** is a :class:`~service.replay.engine.ReplaySummary`: counts summed, active alerts
  merged and sorted as ``replay`` sorts them, reports merged by
  :func:`service.runtime.report_merge.merge_all` (taken at the last recorded time, as ``replay``
  takes them); ``seconds`` is the wall time of the whole run, process start-up included.
- **Failure**: a worker that cannot start, raises or dies makes :func:`replay_sharded` raise
  :class:`~service.errors.FleetWatchError` naming it; every worker process is stopped on
  the way out (pipes closed, joined with a timeout, then terminated).
- **Cost**: each worker starts a Python process, imports the detectors and builds its
  pipeline (about 1 s of CPU with a bytecode cache, 2 s without); the decoding and
  detection then split by the workers' shares of the messages, and the coordinator spends
  about 2 µs per message placing and pickling. Sites are placed by a hash of their names, so
  with few sites the shares can be far apart (the simulator's default ``plant-a`` ..
  ``plant-c`` all go to worker 0 of 2). Ticks do not split: every worker ticks at every
  tick time, so a sparse recording (a few messages per tick interval) gains nothing.

How the results compare with a single-process ``replay`` of the same recording:

- **the same**: messages, readings, rejected (and by reason), duplicates, devices; every
  signal judged per device or per site: rules, anomaly, battery, connectivity's device
  signals, gateway load per site, drift (while ``group_by`` includes the site); firmware,
  except that a version first installed in one worker is known to the others only from the
  end of that step on (the next tick, in a busy recording), so a device of another worker
  that installs it before then is judged "never seen for this model" where one process
  would not;
- **close, not equal**: the power detector's fleet baselines and the environment tests
  (see :mod:`service.runtime.fleet_facts`), and the report fields :mod:`service.runtime.report_merge`
  marks ``"approximate"``;
- **split**: a subject whose devices are in several workers (a gateway serving sites
  placed on different workers, devices whose topics name no site) is judged by each
  worker over its part, and may be active in several.

>>> from config.settings import settings_from_mapping
>>> settings = settings_from_mapping({"detectors": {"enabled": ["rules"]}, "rules": [
...     {"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 50}]})
>>> msgs = [RawMessage(f"fleet/{site}/d-{site}/telemetry",
...                    f'{{"ts": {t}, "temperature_c": {v}}}'.encode(), float(t))
...         for t, v in [(1.7e9, 20), (1.7e9 + 60, 60), (1.7e9 + 120, 20)]
...         for site in ("plant-a", "plant-d")]
>>> summary = replay_sharded(msgs, settings, workers=2)
>>> summary.readings, summary.devices, summary.alerts_opened, summary.alerts_resolved
(6, 2, 2, 2)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Any

from config.settings import Settings
from service.alerts.sinks import Item, Sink
from service.errors import FleetWatchError
from service.intake.topics import TopicRouter
from service.records import AlertRecord, DeadLetter, MessageColumns, RawMessage
from service.replay.engine import ReplaySummary, TickClock, replay, replay_pipeline
from service.replay.ordering import DEFAULT_WINDOW_S, ReorderWindow
from service.runtime.shards import ShardRouter

log = logging.getLogger(__name__)

EXCHANGE_MIN_MESSAGES = 500
"""A step ends at the first tick boundary once it holds this many messages ..."""

EXCHANGE_MAX_TICKS = 16
"""... or once it holds this many ticks: the fleet facts are exchanged at the end of every
step, so at every tick while the recording is busy (500 messages or more per interval, as
the live daemon exchanges every ``tick_interval_s``) and at least every 16 ticks when it is
sparse, where one round trip per tick would cost more than the work between them."""

STEP_MESSAGES = 50_000
"""A step is also cut after this many messages, even between ticks: how far the coordinator
reads ahead of the workers (one step) is bounded by it."""

START_TIMEOUT_S = 120.0
"""How long a worker may take to start (import, build its pipeline) before it is given up."""

STEP_TIMEOUT_S = 600.0
"""How long the workers may take over one step (its messages and ticks)."""

STOP_TIMEOUT_S = 10.0
"""How long the workers get to exit once their pipes are closed, before they are terminated."""

_STEP, _FINISH = 1, 2  # coordinator -> worker
_READY, _DONE, _FAILED = 1, 2, 3  # worker -> coordinator


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(slots=True)
class _Segment:
    """Each worker's messages of one tick interval (or part of one), then a tick at
    ``tick_at`` (none: no tick, the interval goes on in the next step)."""

    columns: list[MessageColumns]
    tick_at: float | None

    def for_worker(self, index: int) -> tuple[MessageColumns, float | None]:
        return self.columns[index], self.tick_at


@dataclass(slots=True)
class _Step:
    """What the workers do between two round trips: segments in order; ``final`` after the
    last message (its last segment ticks at the final tick)."""

    segments: list[_Segment]
    final: bool = False

    @property
    def exchanges(self) -> bool:
        """Whether the workers send their fleet facts after this step."""
        return not self.final and self.segments[-1].tick_at is not None


def steps(
    messages: Iterable[RawMessage],
    router: ShardRouter,
    interval: float,
    summary: ReplaySummary,
    *,
    min_messages: int = EXCHANGE_MIN_MESSAGES,
    max_ticks: int = EXCHANGE_MAX_TICKS,
    limit: int = STEP_MESSAGES,
) -> Iterator[_Step]:
    """``messages`` placed on ``router.count`` workers, cut at ``replay``'s tick boundaries
    into segments, grouped into steps (see :data:`EXCHANGE_MIN_MESSAGES`,
    :data:`EXCHANGE_MAX_TICKS`, :data:`STEP_MESSAGES`). Records the first and last receive
    times in ``summary``, as ``replay`` does.

    >>> from service.intake.topics import TopicRouter
    >>> router = ShardRouter(TopicRouter(["fleet/{site}/{device_id}/{kind}"]), 2)
    >>> msgs = [RawMessage(f"fleet/{s}/d/telemetry", b"{}", t)
    ...         for s, t in [("plant-a", 0.0), ("plant-d", 3.0), ("plant-a", 5.0),
    ...                      ("plant-a", 6.0), ("plant-d", 21.0)]]
    >>> def shape(step):
    ...     return [([len(c.topics) for c in seg.columns], seg.tick_at) for seg in step.segments]
    >>> [shape(s) for s in steps(msgs, router, 5.0, ReplaySummary(), min_messages=1)]
    [[([1, 1], 5.0)], [([2, 0], 10.0)], [([0, 1], 20.0)]]
    >>> [shape(s) for s in steps(msgs, router, 5.0, ReplaySummary(), max_ticks=2)]
    [[([1, 1], 5.0), ([2, 0], 10.0)], [([0, 1], 20.0)]]
    """
    count = router.count
    shard = router.shard
    columns = [MessageColumns() for _ in range(count)]
    segments: list[_Segment] = []
    held = 0
    clock = TickClock(interval)  # the tick boundaries of service.replay.engine.replay
    for message in messages:
        received = message.received_at
        tick_at = clock.due(received)
        if tick_at is not None:
            segments.append(_Segment(columns, tick_at))
            columns = [MessageColumns() for _ in range(count)]
            if held >= min_messages or len(segments) >= max_ticks:
                yield _Step(segments)
                segments, held = [], 0
        elif summary.first_ts is None:
            summary.first_ts = received
        summary.last_ts = received
        columns[shard(message.topic)].add(message)
        held += 1
        if held >= limit:
            segments.append(_Segment(columns, None))
            yield _Step(segments)
            columns, segments, held = [MessageColumns() for _ in range(count)], [], 0
    segments.append(_Segment(columns, clock.next_tick))
    yield _Step(segments, final=True)


# -- the worker side ------------------------------------------------------------------


class _Outbox:
    """The worker's sink: counts dead letters by reason; keeps every item for the
    coordinator's sinks while ``forward`` is set."""

    name = "replay-outbox"

    def __init__(self, forward: bool) -> None:
        self.forward = forward
        self.items: list[Item] = []
        self.rejected_by_reason: dict[str, int] = {}

    def offer(self, item: Item) -> None:
        if isinstance(item, DeadLetter):
            reasons = self.rejected_by_reason
            reasons[item.reason] = reasons.get(item.reason, 0) + 1
        if self.forward:
            self.items.append(item)

    def take(self) -> list[Item]:
        items, self.items = self.items, []
        return items


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """What one worker's pipeline did over the whole replay."""

    messages: int
    readings: int
    rejected: int
    duplicates: int
    devices: int
    alerts_opened: int
    alerts_resolved: int
    active: list[AlertRecord]
    reports: dict[str, dict[str, Any]]
    rejected_by_reason: dict[str, int]


class ReplayWorker:
    """One worker's pipeline, built as ``replay`` builds it; the fleet-facts calls
    (:data:`service.runtime.fleet_facts.WORKER_CALLS`) take it in place of a daemon."""

    def __init__(self, settings: Settings, *, forward: bool, batch_size: int | None) -> None:
        self.outbox = _Outbox(forward)
        self.pipeline = replay_pipeline(settings, [self.outbox])
        self.batch_size = batch_size or settings.pipeline.max_batch

    def step(
        self,
        others: dict[str, Any] | None,
        segments: Sequence[tuple[MessageColumns, float | None]],
        summarise: bool,
    ) -> tuple[list[list[Item]], dict[str, Any] | None]:
        """Take the others' facts, then per segment run its messages and tick; return the
        items made per segment and, when ``summarise``, this worker's facts."""
        from service.runtime.fleet_facts import WORKER_CALLS

        if others is not None:
            WORKER_CALLS["facts.apply"](self, others)
        pipeline = self.pipeline
        size = self.batch_size
        made: list[list[Item]] = []
        for columns, tick_at in segments:
            messages = columns.messages()
            for start in range(0, len(messages), size):
                pipeline.process_messages(messages[start : start + size])
            if tick_at is not None:
                pipeline.tick(tick_at)
            made.append(self.outbox.take())
        summaries = WORKER_CALLS["facts.summaries"](self) if summarise else None
        return made, summaries

    def finish(self, now: float) -> WorkerResult:
        pipeline = self.pipeline
        totals = pipeline.totals
        return WorkerResult(
            messages=totals.messages,
            readings=totals.accepted,
            rejected=totals.rejected,
            duplicates=totals.duplicates,
            devices=len(pipeline.registry),
            alerts_opened=pipeline.alerts.fired_total,
            alerts_resolved=pipeline.alerts.resolved_total,
            active=list(pipeline.alerts.active()),
            reports=pipeline.reports(now),
            rejected_by_reason=dict(self.outbox.rejected_by_reason),
        )


def _serve(worker: ReplayWorker, conn: Connection) -> bool:
    """Answer requests until the last; ``True`` once the result has been handed over."""
    from service.state.collector import tuned_collector

    with tuned_collector():
        while True:
            try:
                request = pickle.loads(conn.recv_bytes())
            except EOFError:
                return False  # the coordinator stopped
            if request[0] == _STEP:
                _, others, segments, summarise = request
                conn.send_bytes(_dumps((_DONE, *worker.step(others, segments, summarise))))
            else:
                conn.send_bytes(_dumps((_DONE, worker.finish(request[1]))))
                return True


def worker_main(
    settings: Settings,
    index: int,
    conn: Connection,
    forward: bool,
    batch_size: int | None,
    log_level: int,
) -> None:
    """A replay worker process's entry point: build the pipeline, then serve steps."""
    # Ctrl-C reaches the whole process group: the coordinator decides when workers stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)-7s replay-worker-{index} %(name)s: %(message)s",
    )
    stage = "could not start"
    handed_over = False
    try:
        worker = ReplayWorker(settings, forward=forward, batch_size=batch_size)
        conn.send_bytes(_dumps((_READY,)))
        stage = "failed"
        handed_over = _serve(worker, conn)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the coordinator is gone: nobody to tell
    except Exception as exc:
        log.exception("replay worker %d %s", index, stage)
        with contextlib.suppress(OSError):
            conn.send_bytes(_dumps((_FAILED, f"{stage}: {exc!r}")))
        raise SystemExit(1) from None
    finally:
        conn.close()
    if handed_over:
        # everything is with the coordinator, which waits for this process to end: leave
        # without freeing the fleet's state object by object (a second for a large fleet)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# -- the coordinator side ---------------------------------------------------------------


class WorkerPool:
    """The coordinator's end of N replay worker processes: start, one request each, the
    answers in worker order; leaving the ``with`` block stops every process."""

    def __init__(
        self, settings: Settings, count: int, *, forward: bool, batch_size: int | None
    ) -> None:
        self.settings = settings
        self.count = count
        self.forward = forward
        self.batch_size = batch_size
        self.processes: list[Any] = []
        self.conns: list[Connection] = []

    def __enter__(self) -> WorkerPool:
        context = multiprocessing.get_context("spawn")
        log_level = logging.getLogger().getEffectiveLevel()
        try:
            for index in range(self.count):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=worker_main,
                    args=(self.settings, index, theirs, self.forward, self.batch_size,
                          log_level),
                    name=f"fleetwatch-replay-worker-{index}",
                    daemon=True,
                )  # fmt: skip
                self.conns.append(ours)
                process.start()
                theirs.close()
                self.processes.append(process)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Close every pipe (a worker sees the end and exits), join, terminate stragglers."""
        for conn in self.conns:
            conn.close()
        deadline = time.monotonic() + timeout
        for index, process in enumerate(self.processes):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("replay worker %d did not exit; terminating it", index)
                process.terminate()
                process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)

    def _lost(self, index: int) -> FleetWatchError:
        process = self.processes[index]
        process.join(1.0)
        code = process.exitcode
        how = f"exit code {code}" if code is not None else "still running"
        return FleetWatchError(f"replay worker {index} exited unexpectedly ({how})")

    def send(self, index: int, request: tuple[Any, ...]) -> None:
        try:
            self.conns[index].send_bytes(_dumps(request))
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise self._lost(index) from exc

    def receive_all(self, timeout: float) -> list[tuple[Any, ...]]:
        """Every worker's next answer, in worker order; a failure raises, naming the worker."""
        answers: list[tuple[Any, ...] | None] = [None] * self.count
        pending = set(range(self.count))
        by_conn = {id(conn): index for index, conn in enumerate(self.conns)}
        by_sentinel = {process.sentinel: index for index, process in enumerate(self.processes)}
        deadline = time.monotonic() + timeout
        while pending:
            waiting: list[Any] = [self.conns[index] for index in sorted(pending)]
            waiting += [self.processes[index].sentinel for index in sorted(pending)]
            ready = wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = ", ".join(str(index) for index in sorted(pending))
                raise FleetWatchError(f"replay worker(s) {late} did not answer in {timeout:g} s")
            for obj in ready:
                index = by_sentinel[obj] if isinstance(obj, int) else by_conn[id(obj)]
                if index not in pending:
                    continue
                conn = self.conns[index]
                if isinstance(obj, int) and not conn.poll():
                    raise self._lost(index)
                try:
                    answer = pickle.loads(conn.recv_bytes())
                except (EOFError, ConnectionResetError) as exc:
                    raise self._lost(index) from exc
                if answer[0] == _FAILED:
                    raise FleetWatchError(f"replay worker {index} {answer[1]}")
                answers[index] = answer
                pending.discard(index)
        return [answer for answer in answers if answer is not None]


def replay_sharded(
    messages: Iterable[RawMessage],
    settings: Settings,
    *,
    workers: int,
    sinks: Sequence[Sink] = (),
    batch_size: int | None = None,
    reorder_window_s: float = DEFAULT_WINDOW_S,
) -> ReplaySummary:
    """Run ``messages`` through ``workers`` pipelines in worker processes, sharded by site
    (see the module docstring); alert changes go to ``sinks``. One worker: ``replay``.
    Messages are put in receive-time order within ``reorder_window_s`` first, as ``replay``
    does."""
    if workers <= 1:
        return replay(messages, settings, sinks=sinks, batch_size=batch_size,
                      reorder_window_s=reorder_window_s)  # fmt: skip
    from service.runtime.report_merge import MergeOptions, merge_all

    started = time.perf_counter()
    summary = ReplaySummary()
    router = ShardRouter(TopicRouter(settings.topics.templates), workers)
    forward = bool(sinks)
    with WorkerPool(settings, workers, forward=forward, batch_size=batch_size) as pool:
        # while the workers start: this process's own imports (the detectors' modules)
        options = MergeOptions.from_settings(settings)
        others: list[dict[str, Any] | None] = [None] * workers
        running = False
        window = ReorderWindow(reorder_window_s)
        ordered = window.order(messages)
        for step in steps(ordered, router, settings.pipeline.tick_interval_s, summary):
            if running:
                others = _collect(pool, sinks)
            else:
                pool.receive_all(START_TIMEOUT_S)  # every worker ready (read step 1 meanwhile)
                log.info("%d replay workers ready after %.2f s", workers,
                         time.perf_counter() - started)  # fmt: skip
            for index in range(workers):
                segments = [segment.for_worker(index) for segment in step.segments]
                pool.send(index, (_STEP, others[index], segments, step.exchanges))
            running = True
        if running:
            _collect(pool, sinks)
        now = summary.last_ts if summary.last_ts is not None else 0.0
        for index in range(workers):
            pool.send(index, (_FINISH, now))
        results: list[WorkerResult] = [answer[1] for answer in pool.receive_all(STEP_TIMEOUT_S)]
        log.info("replay workers done after %.2f s", time.perf_counter() - started)
    summary.messages = sum(r.messages for r in results)
    summary.readings = sum(r.readings for r in results)
    summary.rejected = sum(r.rejected for r in results)
    summary.duplicates = sum(r.duplicates for r in results)
    summary.devices = sum(r.devices for r in results)
    summary.alerts_opened = sum(r.alerts_opened for r in results)
    summary.alerts_resolved = sum(r.alerts_resolved for r in results)
    summary.active = sorted(
        (alert for r in results for alert in r.active), key=lambda a: (a.kind, a.subject)
    )
    summary.reports = merge_all([r.reports for r in results], options=options)
    summary.reordered, summary.too_late = window.reordered, window.too_late
    for r in results:
        for reason, count in r.rejected_by_reason.items():
            summary.rejected_by_reason[reason] = summary.rejected_by_reason.get(reason, 0) + count
    summary.seconds = time.perf_counter() - started
    return summary


def _collect(pool: WorkerPool, sinks: Sequence[Sink]) -> list[dict[str, Any] | None]:
    """Wait for every worker's answer to the step in flight; offer the items made to
    ``sinks`` (segment by segment, worker by worker); return what each worker is to be
    given with the next step."""
    from service.runtime.fleet_facts import others_for

    answers = pool.receive_all(STEP_TIMEOUT_S)
    if sinks:
        for made in zip(*(answer[1] for answer in answers), strict=True):
            for items in made:
                for item in items:
                    for sink in sinks:
                        sink.offer(item)
    per_worker = [answer[2] for answer in answers]
    if any(summaries is None for summaries in per_worker):
        return [None] * len(answers)
    return [others_for(index, per_worker) for index in range(len(answers))]


__all__: Sequence[str] = ("ReplayWorker", "WorkerPool", "replay_sharded", "steps", "worker_main")
