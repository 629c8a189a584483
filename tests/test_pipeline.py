"""The pipeline core: bad input is counted, dead-lettered and never stops a batch."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from config.settings import Settings, settings_from_mapping
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.intake.pipeline import Intake, Pipeline
from service.records import RawMessage, Reading, Severity, Signal

NOW = 1_767_225_600.0
GOOD = RawMessage("fleet/plant-a/d1/telemetry", b'{"ts": 1767225600, "battery_v": 3.6}', NOW)

BAD_INPUTS = [
    ("malformed_json", RawMessage("fleet/plant-a/d2/telemetry", b'{"battery_v": 3.', NOW)),
    ("not_an_object", RawMessage("fleet/plant-a/d2/telemetry", b"3.6", NOW)),
    ("too_large", RawMessage("fleet/plant-a/d2/telemetry", b'{"x": "' + b"a" * 2000 + b'"}', NOW)),
    ("non_finite_number", RawMessage("fleet/plant-a/d2/telemetry", b'{"battery_v": NaN}', NOW)),
    ("non_finite_number", RawMessage("fleet/plant-a/d2/telemetry", b'{"battery_v": Infinity}', NOW)),
    ("non_numeric_value", RawMessage("fleet/plant-a/d2/telemetry", b'{"battery_v": "full"}', NOW)),
    ("unknown_topic", RawMessage("somewhere/else", b'{"battery_v": 3.6}', NOW)),
    ("unknown_kind", RawMessage("fleet/plant-a/d2/selfie", b'{"battery_v": 3.6}', NOW)),
    ("invalid_timestamp", RawMessage("fleet/plant-a/d2/telemetry", b'{"ts": -5, "battery_v": 3.6}', NOW)),
    ("invalid_timestamp", RawMessage("fleet/plant-a/d2/telemetry", b'{"ts": "soon"}', NOW)),
    ("unsupported_content_type",
     RawMessage("fleet/plant-a/d2/telemetry", b"\x00", NOW, content_type="image/png")),
]  # fmt: skip


class Recorder:
    """A detector that remembers what it was given."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Reading] = []
        self.ticks: list[float] = []

    def process(self, batch):  # type: ignore[no-untyped-def]
        self.seen.extend(batch)
        return [Signal("test.low", r.device_id, r.metrics.get("battery_v", 9) < 3.3, at=r.ts,
                       severity=Severity.CRITICAL, site=r.site) for r in batch]  # fmt: skip

    def tick(self, now: float):  # type: ignore[no-untyped-def]
        self.ticks.append(now)
        return []

    def state_dict(self):  # type: ignore[no-untyped-def]
        return {}

    def load_state(self, state) -> None:  # type: ignore[no-untyped-def]
        pass


class Broken(Recorder):
    name = "broken"

    def process(self, batch):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")


def build(*detectors, **overrides) -> tuple[Pipeline, MemorySink, FleetMetrics]:  # type: ignore[no-untyped-def]
    settings = settings_from_mapping({"ingest": {"max_payload_bytes": 1024}, **overrides})
    sink = MemorySink()
    metrics = FleetMetrics(CollectorRegistry())
    return (
        Pipeline.build(settings, detectors=list(detectors), sinks=[sink], metrics=metrics),
        sink,
        metrics,
    )


def sample(metrics: FleetMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    ("reason", "message"), BAD_INPUTS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_INPUTS)]
)
def test_each_bad_input_is_counted_dead_lettered_and_the_batch_goes_on(
    reason: str, message: RawMessage
) -> None:
    recorder = Recorder()
    pipeline, sink, metrics = build(recorder)
    outcome = pipeline.process_messages([message, GOOD])
    assert outcome.accepted == 1 and outcome.rejected == 1
    assert [r.device_id for r in recorder.seen] == ["d1"]
    assert [(d.reason, d.topic) for d in sink.deadletters] == [(reason, message.topic)]
    assert sink.deadletters[0].payload == message.payload[:4096]
    assert sample(metrics, "fleetwatch_decode_errors_total", reason=reason) == 1


def test_bad_record_in_a_batch_upload_keeps_the_others() -> None:
    recorder = Recorder()
    pipeline, sink, _ = build(recorder)
    payload = b'[{"ts": 1767225600, "battery_v": 3.6}, {"ts": "never"}, {"ts": 1767225660, "battery_v": 3.5}]'
    outcome = pipeline.process_messages([RawMessage("fleet/plant-a/d3/batch", payload, NOW)])
    assert outcome.accepted == 2 and outcome.rejected == 1
    assert [d.reason for d in sink.deadletters] == ["invalid_timestamp"]
    assert {r.kind.value for r in recorder.seen} == {"batch"}


def test_a_failing_detector_does_not_stop_the_others() -> None:
    recorder = Recorder()
    pipeline, _, metrics = build(Broken(), recorder)
    pipeline.process_messages([GOOD])
    assert len(recorder.seen) == 1
    assert sample(metrics, "fleetwatch_detector_errors_total", detector="broken") == 1


def test_signals_become_alerts_with_metrics() -> None:
    pipeline, sink, metrics = build(Recorder())
    low = RawMessage(
        "fleet/plant-a/d1/telemetry", b'{"ts": 1767225660, "battery_v": 3.1}', NOW + 60
    )
    ok = RawMessage(
        "fleet/plant-a/d1/telemetry", b'{"ts": 1767225720, "battery_v": 3.7}', NOW + 120
    )
    pipeline.process_messages([GOOD, low])
    assert [a.state.value for a in sink.alerts] == ["firing"]
    assert (
        sample(
            metrics,
            "fleetwatch_alerts_active",
            kind="test.low",
            severity="critical",
            site="plant-a",
        )
        == 1
    )
    pipeline.process_messages([ok])
    assert [a.state.value for a in sink.alerts] == ["firing", "resolved"]
    assert sample(metrics, "fleetwatch_alerts_fired_total", kind="test.low") == 1
    assert sample(metrics, "fleetwatch_alerts_resolved_total", kind="test.low") == 1
    assert (
        sample(
            metrics,
            "fleetwatch_alerts_active",
            kind="test.low",
            severity="critical",
            site="plant-a",
        )
        == 0
    )
    assert sample(metrics, "fleetwatch_readings_total", protocol="mqtt", result="accepted") == 3


def test_duplicates_are_counted() -> None:
    pipeline, _, metrics = build(Recorder())
    outcome = pipeline.process_messages([GOOD, GOOD])
    assert (outcome.accepted, outcome.duplicates) == (1, 1)
    assert sample(metrics, "fleetwatch_readings_total", protocol="mqtt", result="duplicate") == 1


async def test_intake_acknowledges_only_after_processing_and_applies_backpressure() -> None:
    recorder = Recorder()
    pipeline, _, metrics = build(recorder)
    paused: list[str] = []
    intake = Intake(pipeline, queue_size=4, max_batch=2, on_full=lambda: paused.append("full"),
                    on_room=lambda: paused.append("room"))  # fmt: skip
    messages = [
        RawMessage(
            "fleet/plant-a/d1/telemetry", f'{{"ts": {NOW + i}, "battery_v": 3.6}}'.encode(), NOW
        )
        for i in range(10)
    ]
    waiters = [asyncio.create_task(intake.submit(m, wait=True)) for m in messages]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)  # nothing is acknowledged before processing
    assert intake.depth == 4  # bounded: the other six submitters wait
    runner = asyncio.create_task(intake.run())
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert len(recorder.seen) == 10 and intake.processed == 10
    assert paused[0] == "full" and "room" in paused
    assert sample(metrics, "fleetwatch_intake_pauses_total") >= 1
    runner.cancel()


async def test_intake_drain_processes_what_is_queued() -> None:
    recorder = Recorder()
    pipeline, _, _ = build(recorder)
    intake = Intake(pipeline, queue_size=100, max_batch=10)
    for i in range(25):
        await intake.submit(
            RawMessage("fleet/a/d1/telemetry", f'{{"ts": {NOW + i}}}'.encode(), NOW), wait=False
        )
    intake.close()
    assert await intake.drain(5.0)
    assert len(recorder.seen) == 25
    with pytest.raises(RuntimeError):
        await intake.submit(GOOD, wait=False)


def test_tick_reaches_detectors() -> None:
    recorder = Recorder()
    pipeline, _, metrics = build(recorder)
    pipeline.process_messages([GOOD])
    pipeline.tick(NOW + 5)
    assert recorder.ticks == [NOW + 5]
    assert sample(metrics, "fleetwatch_devices_known") == 1


def test_settings_default_is_valid() -> None:
    assert Settings().pipeline.queue_size > 0


async def test_offered_messages_are_acknowledged_in_bulk_after_processing() -> None:
    recorder = Recorder()
    pipeline, _, _ = build(recorder)
    acked: list[list[int]] = []
    events: list[str] = []
    intake = Intake(
        pipeline,
        queue_size=8,
        max_batch=5,
        acknowledge=acked.append,
        on_full=lambda: events.append("full"),
        on_room=lambda: events.append("room"),
    )
    for i in range(10):
        body = f'{{"ts": {NOW + i}, "battery_v": 3.6}}'.encode()
        intake.offer(RawMessage("fleet/plant-a/d1/telemetry", body, NOW), token=100 + i)
    assert acked == []  # nothing acknowledged before processing
    assert events == ["full"]  # the transport is told to stop reading
    runner = asyncio.create_task(intake.run())
    while intake.processed < 10:
        await asyncio.sleep(0)
    runner.cancel()
    assert acked == [list(range(100, 105)), list(range(105, 110))]
    assert len(recorder.seen) == 10 and events == ["full", "room"]


def test_content_types_are_resolved_per_message_within_one_batch() -> None:
    recorder = Recorder()
    pipeline, sink, _ = build(recorder)
    png = RawMessage("fleet/plant-a/d2/telemetry", b"\x00", NOW, content_type="image/png")
    json_text = RawMessage(
        "fleet/plant-a/d3/telemetry", b'{"battery_v": 3.5}', NOW, content_type="text/json"
    )
    outcome = pipeline.process_messages([png, GOOD, png, json_text, GOOD])
    assert (outcome.accepted, outcome.rejected, outcome.duplicates) == (2, 2, 1)
    assert [r.device_id for r in recorder.seen] == ["d1", "d3"]
    assert [d.reason for d in sink.deadletters] == ["unsupported_content_type"] * 2


def test_counts_per_protocol_are_the_same_with_and_without_outcomes() -> None:
    from service.records import MessageOutcome

    messages = [
        GOOD,
        RawMessage("fleet/plant-a/d3/telemetry", b'{"ts": 1767225601, "battery_v": 3.6}', NOW,
                   protocol="http"),
        GOOD,  # a duplicate
        RawMessage("fleet/plant-a/d3/telemetry", b"{oops", NOW, protocol="http"),
        RawMessage("fleet/plant-a/d4/telemetry", b'[{"battery_v": 3.5}, {"ts": "soon"}]', NOW),
    ]  # fmt: skip
    totals = []
    for outcomes in (None, []):
        registry = CollectorRegistry()
        p = Pipeline.build(Settings(), detectors=[], sinks=[], metrics=FleetMetrics(registry))
        out = p.process_messages(messages, outcomes)
        counted = {
            (s.labels["protocol"], s.labels["result"]): s.value
            for metric in registry.collect()
            for s in metric.samples
            if s.name == "fleetwatch_readings_total"
        }
        totals.append(((out.accepted, out.duplicates, out.rejected), counted))
    assert totals[0] == totals[1]
    assert totals[0][0] == (3, 1, 2)
    assert totals[0][1] == {
        ("mqtt", "accepted"): 2, ("mqtt", "duplicate"): 1, ("mqtt", "rejected"): 1,
        ("http", "accepted"): 1, ("http", "rejected"): 1,
    }  # fmt: skip
    assert [(o.accepted, o.duplicates, len(o.errors)) for o in outcomes] == [
        (1, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
        (1, 0, 1),
    ]
    assert all(isinstance(o, MessageOutcome) for o in outcomes)


async def test_mixed_tokens_acknowledge_integers_and_resolve_futures_in_every_batch() -> None:
    recorder = Recorder()
    pipeline, _, _ = build(recorder)
    acked: list[list[int]] = []
    journal_ok = [True]

    def journal(messages: object) -> None:
        if not journal_ok[0]:
            raise OSError("disk full")

    intake = Intake(
        pipeline, queue_size=100, max_batch=4, acknowledge=acked.append, journal=journal
    )

    def message(i: int) -> RawMessage:
        body = f'{{"ts": {NOW + i}, "battery_v": 3.6}}'.encode()
        return RawMessage("fleet/plant-a/d1/telemetry", body, NOW)

    # batch 1: an integer, nothing, a waiting submitter, an integer
    intake.offer(message(0), token=7)
    intake.offer(message(1))
    waiter = asyncio.create_task(intake.submit(message(2), wait=True))
    await asyncio.sleep(0)
    intake.offer(message(3), token=8)
    # batch 2: integers only
    for i in range(4, 8):
        intake.offer(message(i), token=100 + i)
    intake._process_next()
    outcome = await asyncio.wait_for(waiter, 1)
    assert outcome is not None and outcome.accepted == 1
    intake._process_next()
    assert acked == [[7, 8], [104, 105, 106, 107]]
    # a batch that cannot be journaled: nothing acknowledged, the waiter is told
    journal_ok[0] = False
    intake.offer(message(8), token=9)
    waiter = asyncio.create_task(intake.submit(message(9), wait=True))
    await asyncio.sleep(0)
    intake._process_next()
    with pytest.raises(Exception, match="journaled"):
        await asyncio.wait_for(waiter, 1)
    journal_ok[0] = True
    intake.offer(message(10), token=11)
    intake._process_next()
    assert acked == [[7, 8], [104, 105, 106, 107], [11]]
    assert intake.processed == 11 and len(recorder.seen) == 11
