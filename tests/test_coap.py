"""The CoAP server, over loopback UDP with real clients (aiocoap and libcoap's coap-client).

Each test starts its own server on 127.0.0.1 and a free port, in front of a real pipeline
and intake; synchronisation is by polling with bounded deadlines, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import orjson
import pytest
from aiocoap.numbers.codes import Code
from prometheus_client import CollectorRegistry

from config.settings import Settings, settings_from_mapping
from protocols.coap import CONTENT_FORMATS, CoapServer
from protocols.proto import telemetry_pb2 as pb
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.errors import StateError
from service.intake.pipeline import Intake, Pipeline
from service.records import RawMessage, Reading
from tests.daemon_helpers import daemon_settings, running_daemon
from tests.detector_helpers import Recorder

NOW = 1_767_225_600
RECEIVED = NOW + 1.0
COAP_CLIENT = shutil.which("coap-client-notls") or shutil.which("coap-client")

# one reading, in every format the CoAP server takes
READING = {"ts": NOW, "battery_v": 3.61, "temperature_c": 21.5, "firmware": "1.4.2"}
SENML = [
    {"bt": NOW, "n": "battery", "u": "V", "v": 3.61},
    {"n": "temperature", "u": "Cel", "v": 21.5},
    {"n": "firmware", "vs": "1.4.2"},
]
SENML_CBOR = [{-3: NOW, 0: "battery", 1: "V", 2: 3.61}, {0: "temperature", 1: "Cel", 2: 21.5},
              {0: "firmware", 3: "1.4.2"}]  # fmt: skip
PROTOBUF = pb.Batch(
    readings=[
        pb.Telemetry(
            ts=NOW,
            metrics=[
                pb.Metric(name="battery_v", value=3.61),
                pb.Metric(name="temperature_c", value=21.5),
            ],
            metadata={"firmware": "1.4.2"},
        )
    ]
).SerializeToString()
PAYLOADS: dict[int, bytes] = {
    50: orjson.dumps(READING),
    60: cbor2.dumps(READING),
    110: orjson.dumps(SENML),
    112: cbor2.dumps(SENML_CBOR),
    65100: PROTOBUF,
}


@dataclass
class Stack:
    """A CoAP server in front of a real pipeline and intake."""

    server: CoapServer
    intake: Intake
    pipeline: Pipeline
    sink: MemorySink
    recorder: Recorder
    metrics: FleetMetrics
    responses: list[tuple[str, str]]
    journal: list[RawMessage]

    def uri(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.server.port}/{path}"

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def settings_for(**coap: Any) -> Settings:
    return settings_from_mapping(
        {"coap": {"enabled": True, "host": "127.0.0.1", "port": 0, **coap}}
    )


@contextlib.asynccontextmanager
async def coap_stack(
    settings: Settings | None = None,
    *,
    queue_size: int = 100,
    run_intake: bool = True,
    journal: Callable[[Sequence[RawMessage]], object] | None = None,
) -> AsyncIterator[Stack]:
    settings = settings or settings_for()
    recorder = Recorder()
    sink = MemorySink()
    metrics = FleetMetrics(CollectorRegistry())
    pipeline = Pipeline.build(settings, detectors=[recorder], sinks=[sink], metrics=metrics)
    journaled: list[RawMessage] = []

    def keep(messages: Sequence[RawMessage]) -> None:
        journaled.extend(messages)

    intake = Intake(pipeline, queue_size=queue_size, max_batch=50, clock=lambda: RECEIVED,
                    journal=journal or keep)  # fmt: skip
    responses: list[tuple[str, str]] = []
    server = CoapServer(
        settings.coap,
        intake,
        clock=lambda: RECEIVED,
        max_payload=min(settings.coap.max_payload_bytes, settings.ingest.max_payload_bytes),
        on_response=lambda method, code: responses.append((method, code)),
    )
    stack = Stack(server, intake, pipeline, sink, recorder, metrics, responses, journaled)
    runner = asyncio.create_task(intake.run()) if run_intake else None
    try:
        async with server:
            assert server.port and server.port > 0
            yield stack
    finally:
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context()
    yield context
    await context.shutdown()


async def post(
    client: Any,
    uri: str,
    payload: bytes,
    content_format: int | None = 50,
    code: Any = Code.POST,
    timeout: float = 10.0,
) -> Any:
    request = aiocoap.Message(code=code, uri=uri, payload=payload)
    if content_format is not None:
        request.opt.content_format = content_format
    return await asyncio.wait_for(client.request(request).response, timeout)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` (yielding to the loop) until it holds or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


def mqtt_json_reading(device_id: str) -> Reading:
    """The reading the MQTT JSON path makes of ``READING``, through the same pipeline."""
    recorder = Recorder()
    pipeline = Pipeline.build(Settings(), detectors=[recorder], sinks=[MemorySink()],
                              metrics=FleetMetrics(CollectorRegistry()))  # fmt: skip
    pipeline.process_messages(
        [RawMessage(f"devices/{device_id}/telemetry", orjson.dumps(READING), RECEIVED, "mqtt")]
    )
    (reading,) = recorder.seen
    return reading


def without_protocol(reading: Reading) -> Reading:
    meta = {key: value for key, value in reading.meta.items() if key != "protocol"}
    return reading._replace(meta=meta)


# -- every format, the same reading ------------------------------------------------------


@pytest.mark.parametrize("content_format", sorted(PAYLOADS))
async def test_each_format_gives_the_reading_of_the_mqtt_json_path(
    client: Any, content_format: int
) -> None:
    async with coap_stack() as stack:
        response = await post(client, stack.uri("t/th-7"), PAYLOADS[content_format], content_format)
        assert response.code == Code.CHANGED, response.payload
        (reading,) = stack.recorder.seen
        assert reading.meta["protocol"] == "coap"
        expected = mqtt_json_reading("th-7")
        assert expected.meta["protocol"] == "mqtt"
        assert without_protocol(reading) == without_protocol(expected)
        assert dict(reading.metrics) == {"battery_v": 3.61, "temperature_c": 21.5}
        assert stack.journal[0].protocol == "coap"
        assert stack.journal[0].content_type == CONTENT_FORMATS[content_format]
        assert stack.sample("fleetwatch_readings_total", protocol="coap", result="accepted") == 1
        assert stack.responses == [("POST", "2.04")]


async def test_put_and_path_template_levels(client: Any) -> None:
    async with coap_stack(settings_for(path="/s/{site}/{device_id}")) as stack:
        response = await post(client, stack.uri("s/plant-a/th-1"), PAYLOADS[50], code=Code.PUT)
        assert response.code == Code.CHANGED
        (reading,) = stack.recorder.seen
        assert (reading.device_id, reading.site) == ("th-1", "plant-a")
        assert (await post(client, stack.uri("t/th-1"), PAYLOADS[50])).code == Code.NOT_FOUND
        get = await post(client, stack.uri("s/plant-a/th-1"), b"", None, code=Code.GET)
        assert get.code == Code.METHOD_NOT_ALLOWED
        assert stack.sink.deadletters == []  # addressing errors are not telemetry
        assert stack.responses == [("PUT", "2.04"), ("POST", "4.04"), ("GET", "4.05")]


async def test_a_journaled_coap_message_replays_through_the_coap_path_template() -> None:
    async with coap_stack() as stack:
        pass
    recorder = Recorder()
    pipeline = Pipeline.build(stack.pipeline.settings, detectors=[recorder], sinks=[],
                              metrics=FleetMetrics(CollectorRegistry()))  # fmt: skip
    outcome = pipeline.process_messages(
        [RawMessage("t/th-3", PAYLOADS[60], RECEIVED, "coap", "application/cbor")]
    )
    assert outcome.accepted == 1 and recorder.seen[0].device_id == "th-3"


# -- bad input: counted, dead-lettered, answered -------------------------------------------


async def test_undecodable_payload_is_4_00_with_diagnostic_dead_letter_and_counter(
    client: Any,
) -> None:
    async with coap_stack() as stack:
        response = await post(client, stack.uri("t/th-2"), b'{"battery_v": 3.', 50)
        assert response.code == Code.BAD_REQUEST
        assert response.payload.startswith(b"malformed_json: ")
        (letter,) = stack.sink.deadletters
        assert (letter.reason, letter.topic, letter.protocol) == (
            "malformed_json",
            "t/th-2",
            "coap",
        )
        assert letter.payload == b'{"battery_v": 3.'
        assert stack.sample("fleetwatch_decode_errors_total", reason="malformed_json") == 1
        assert stack.sample("fleetwatch_readings_total", protocol="coap", result="rejected") == 1
        assert stack.recorder.seen == []

        cbor = await post(client, stack.uri("t/th-2"), b"\xa1\x61", 60)  # truncated CBOR
        assert cbor.code == Code.BAD_REQUEST
        assert stack.sink.deadletters[1].reason == cbor.payload.split(b":")[0].decode()
        assert stack.responses == [("POST", "4.00"), ("POST", "4.00")]


async def test_a_batch_with_one_bad_record_keeps_the_others(client: Any) -> None:
    async with coap_stack() as stack:
        batch = orjson.dumps([READING, {"ts": "soon", "battery_v": 3.5}])
        response = await post(client, stack.uri("t/th-2"), batch, 50)
        assert response.code == Code.CHANGED
        assert response.payload == b"accepted 1, rejected 1: invalid_timestamp"
        assert len(stack.recorder.seen) == 1
        assert [d.reason for d in stack.sink.deadletters] == ["invalid_timestamp"]


@pytest.mark.parametrize(("content_format", "detail"), [
    (None, b"the request has no Content-Format option"),
    (0, b"no codec for CoAP content format 0"),
    (41, b"no codec for CoAP content format 41"),
])  # fmt: skip
async def test_missing_or_unsupported_format_is_4_15_and_dead_lettered(
    client: Any, content_format: int | None, detail: bytes
) -> None:
    async with coap_stack() as stack:
        response = await post(client, stack.uri("t/th-4"), PAYLOADS[50], content_format)
        assert response.code == Code.UNSUPPORTED_CONTENT_FORMAT
        assert response.payload == b"unsupported_content_type: " + detail
        (letter,) = stack.sink.deadletters
        assert (letter.reason, letter.protocol, letter.topic) == (
            "unsupported_content_type", "coap", "t/th-4"
        )  # fmt: skip
        assert (
            stack.sample("fleetwatch_decode_errors_total", reason="unsupported_content_type") == 1
        )
        assert stack.sample("fleetwatch_readings_total", protocol="coap", result="rejected") == 1
        assert stack.journal == [] and stack.recorder.seen == []


@pytest.mark.parametrize("size", [700, 3000])  # one datagram; a block-wise upload
async def test_over_the_size_limit_is_4_13_with_size1(client: Any, size: int) -> None:
    async with coap_stack(settings_for(max_payload_bytes=600)) as stack:
        payload = orjson.dumps({"ts": NOW, "note": "x" * size})
        response = await post(client, stack.uri("t/th-5"), payload, 50)
        assert response.code == Code.REQUEST_ENTITY_TOO_LARGE
        assert response.opt.size1 == 600
        (letter,) = stack.sink.deadletters
        assert (letter.reason, letter.protocol) == ("too_large", "coap")
        assert stack.sample("fleetwatch_decode_errors_total", reason="too_large") == 1
        assert stack.recorder.seen == []


async def test_a_block_wise_upload_under_the_limit_is_reassembled(client: Any) -> None:
    async with coap_stack() as stack:
        batch = [{**READING, "ts": NOW + i, "site_note": "y" * 40} for i in range(60)]
        payload = orjson.dumps(batch)
        assert len(payload) > 3 * 1024
        response = await post(client, stack.uri("t/th-6"), payload, 50)
        assert response.code == Code.CHANGED
        assert len(stack.recorder.seen) == 60
        assert stack.journal[0].payload == payload


# -- backpressure, persistence -------------------------------------------------------------


async def test_a_full_intake_queue_is_5_03_with_max_age(client: Any) -> None:
    async with coap_stack(settings_for(retry_after_s=7), queue_size=1, run_intake=False) as stack:
        first = asyncio.create_task(post(client, stack.uri("t/th-8"), PAYLOADS[50], 50))
        await until(lambda: stack.intake.full)  # the first request fills the queue
        second = await post(
            client, stack.uri("t/th-9"), orjson.dumps({**READING, "ts": NOW + 1}), 50
        )
        assert second.code == Code.SERVICE_UNAVAILABLE
        assert second.opt.max_age == 7
        assert not first.done()  # not answered before it is processed
        runner = asyncio.create_task(stack.intake.run())
        try:
            assert (await first).code == Code.CHANGED
        finally:
            runner.cancel()
        assert [r.device_id for r in stack.recorder.seen] == ["th-8"]
        assert stack.sink.deadletters == []  # backpressure is not bad input
        assert sorted(stack.responses) == [("POST", "2.04"), ("POST", "5.03")]


async def test_2_04_only_once_journaled_and_5_03_when_the_journal_fails(client: Any) -> None:
    failing = {"now": False}
    journal: list[RawMessage] = []

    def write(messages: Sequence[RawMessage]) -> None:
        if failing["now"]:
            raise StateError("disk full")
        journal.extend(messages)

    async with coap_stack(journal=write) as stack:
        response = await post(client, stack.uri("t/th-1"), PAYLOADS[50], 50)
        assert response.code == Code.CHANGED and len(journal) == 1
        failing["now"] = True
        later = orjson.dumps({**READING, "ts": NOW + 60})
        refused = await post(client, stack.uri("t/th-1"), later, 50)
        assert refused.code == Code.SERVICE_UNAVAILABLE and refused.opt.max_age == 5
        assert len(journal) == 1


async def test_a_closed_intake_answers_5_03(client: Any) -> None:
    async with coap_stack() as stack:
        stack.intake.close()
        response = await post(client, stack.uri("t/th-1"), PAYLOADS[50], 50)
        assert response.code == Code.SERVICE_UNAVAILABLE


async def test_server_is_reusable_not_reentrant() -> None:
    async with coap_stack() as stack:
        with pytest.raises(RuntimeError):
            await stack.server.__aenter__()
    async with stack.server:
        assert stack.server.port
    assert stack.server.port is None


# -- libcoap's coap-client -----------------------------------------------------------------


async def coap_client(*args: str) -> tuple[bytes, bytes]:
    assert COAP_CLIENT is not None
    process = await asyncio.create_subprocess_exec(
        COAP_CLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err
    return out, err


@pytest.mark.skipif(COAP_CLIENT is None, reason="libcoap's coap-client is not installed")
async def test_libcoap_client_posts_json_and_cbor(tmp_path: Path) -> None:
    async with coap_stack() as stack:
        _, err = await coap_client(
            "-m", "post", "-t", "50", "-e", PAYLOADS[50].decode(), "-B", "5", stack.uri("t/lc-1")
        )
        assert err == b""
        cbor_file = tmp_path / "reading.cbor"
        cbor_file.write_bytes(PAYLOADS[60])
        _, err = await coap_client(
            "-m", "post", "-t", "60", "-f", str(cbor_file), "-B", "5", stack.uri("t/lc-2")
        )
        assert err == b""
        _, err = await coap_client(
            "-m", "post", "-t", "60", "-e", "{not cbor", "-B", "5", stack.uri("t/lc-3")
        )
        assert err.startswith(b"4.00")
        assert [r.device_id for r in stack.recorder.seen] == ["lc-1", "lc-2"]
        expected = without_protocol(mqtt_json_reading("lc-1"))
        assert without_protocol(stack.recorder.seen[0]) == expected
        assert without_protocol(stack.recorder.seen[1]) == expected._replace(device_id="lc-2")
        assert [d.reason for d in stack.sink.deadletters] == ["malformed_cbor"]
        assert stack.responses == [("POST", "2.04"), ("POST", "2.04"), ("POST", "4.00")]


# -- the daemon ----------------------------------------------------------------------------


@pytest.mark.broker
async def test_daemon_coap_reading_fires_an_alert_on_mqtt(  # type: ignore[no-untyped-def]
    broker, topic_prefix, mqtt_client, client
) -> None:
    settings = daemon_settings(
        broker.host, broker.port, topic_prefix, coap={"enabled": True, "port": 0}
    )
    async with running_daemon(settings) as daemon:
        assert daemon.coap_port
        await mqtt_client.subscribe(f"{topic_prefix}/fleetwatch/alerts/#")
        await mqtt_client.subscribe(f"{topic_prefix}/fleetwatch/deadletter")
        uri = f"coap://127.0.0.1:{daemon.coap_port}/t/th-42"
        low = orjson.dumps({"ts": NOW, "battery_v": 3.05, "model": "TH-200"})
        assert (await post(client, uri, low, 50)).code == Code.CHANGED
        _, payload, _ = await mqtt_client.expect(
            f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/th-42"
        )
        alert = orjson.loads(payload)
        assert alert["state"] == "firing" and alert["evidence"]["value"] == pytest.approx(3.05)
        bad = await post(client, uri, b"{oops", 50)
        assert bad.code == Code.BAD_REQUEST
        _, letter, _ = await mqtt_client.expect(f"{topic_prefix}/fleetwatch/deadletter")
        assert orjson.loads(letter)["protocol"] == "coap"
        registry = daemon.registry
        assert (
            registry.get_sample_value(
                "fleetwatch_coap_requests_total", {"method": "POST", "code": "2.04"}
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "fleetwatch_coap_requests_total", {"method": "POST", "code": "4.00"}
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "fleetwatch_readings_total", {"protocol": "coap", "result": "accepted"}
            )
            == 1
        )
