"""The LwM2M server over loopback UDP, driven by an aiocoap LwM2M client simulator.

Each test starts its own CoAP server (with LwM2M on the same socket) on 127.0.0.1 and a
free port, in front of a real pipeline and intake; clocks are injected; synchronisation is by
polling with bounded deadlines, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import orjson
import pytest
from aiocoap.numbers.codes import Code
from prometheus_client import CollectorRegistry

from config.settings import Settings, settings_from_mapping
from detectors.connectivity import ConnectivityConfig, ConnectivityDetector
from detectors.firmware import FirmwareDetector
from protocols.coap import CoapServer
from protocols.lwm2m import tlv
from protocols.lwm2m.content import LWM2M_JSON, SENML_CBOR, SENML_JSON, TEXT, TLV, decode
from protocols.lwm2m.objects import DeviceMemory, ResourceValue, translate
from protocols.lwm2m.registry import RegistrationStorage, parse_links
from protocols.lwm2m.server import Lwm2mServer
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.errors import ConfigError, DecodeError
from service.intake.pipeline import Intake, Pipeline
from service.records import MessageKind, RawMessage, Reading
from service.state.store import StateStore
from tests.daemon_helpers import daemon_settings, running_daemon
from tests.detector_helpers import Recorder
from tests.lwm2m_client import Lwm2mClient, senml_cbor, senml_records

NOW = 1_767_225_600.0

# a battery device: firmware 1.4.2, an internal battery at 3610 mV, 87 %, on LTE-FDD
DEVICE = {
    (3, 0, 1): "TH-200",
    (3, 0, 3): "1.4.2",
    (3, 0, 6, 0): 1,
    (3, 0, 7, 0): 3610,
    (3, 0, 9): 87,
}
SENSOR = {(3303, 0, 5700): 21.5, (3303, 0, 5701): "Cel"}


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Stack:
    """A CoAP server with the LwM2M server on its socket, a pipeline and an intake."""

    coap: CoapServer
    lwm2m: Lwm2mServer
    intake: Intake
    pipeline: Pipeline
    sink: MemorySink
    recorder: Recorder
    metrics: FleetMetrics
    clock: Clock
    responses: list[tuple[str, str]]
    events: list[str] = field(default_factory=list)
    journal: list[RawMessage] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.coap.port is not None
        return self.coap.port

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def settings_for(port: int = 0, **lwm2m: Any) -> Settings:
    return settings_from_mapping(
        {
            "coap": {"enabled": True, "host": "127.0.0.1", "port": port},
            "lwm2m": {"enabled": True, "pmin_s": 1, "pmax_s": 30, "request_timeout_s": 5.0,
                      **lwm2m},
        }
    )  # fmt: skip


@contextlib.asynccontextmanager
async def lwm2m_stack(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    storage: RegistrationStorage | None = None,
    detectors: Sequence[Any] = (),
) -> AsyncIterator[Stack]:
    settings = settings or settings_for()
    clock = clock or Clock()
    recorder = Recorder()
    sink = MemorySink()
    metrics = FleetMetrics(CollectorRegistry())
    pipeline = Pipeline.build(
        settings, detectors=[recorder, *detectors], sinks=[sink], metrics=metrics
    )
    journal: list[RawMessage] = []
    intake = Intake(pipeline, queue_size=1000, max_batch=100, clock=clock, journal=journal.extend)
    responses: list[tuple[str, str]] = []
    events: list[str] = []
    holder: dict[str, CoapServer] = {}
    lwm2m = Lwm2mServer(
        settings.lwm2m,
        intake,
        context=lambda: holder["coap"].context,
        storage=storage,
        clock=clock,
        permits=lambda endpoint: pipeline.allow.permits(endpoint, None),
        on_response=lambda method, code: responses.append((method, code)),
        on_event=lambda event, count: events.append(event),
    )
    coap = CoapServer(
        settings.coap,
        intake,
        clock=clock,
        on_response=lambda method, code: responses.append((method, code)),
        sites=lwm2m.sites,
    )
    holder["coap"] = coap
    stack = Stack(coap, lwm2m, intake, pipeline, sink, recorder, metrics, clock, responses,
                  events, journal)  # fmt: skip
    runner = asyncio.create_task(intake.run())
    try:
        async with coap, lwm2m:
            yield stack
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` (yielding to the loop) until it holds or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


def mqtt_json_reading(device_id: str, record: dict[str, Any], received: float) -> Reading:
    """The reading the MQTT JSON path makes of ``record``, through the same pipeline."""
    recorder = Recorder()
    pipeline = Pipeline.build(Settings(), detectors=[recorder], sinks=[MemorySink()],
                              metrics=FleetMetrics(CollectorRegistry()))  # fmt: skip
    pipeline.process_messages(
        [RawMessage(f"devices/{device_id}/telemetry", orjson.dumps(record), received, "mqtt")]
    )
    (reading,) = recorder.seen
    return reading


def without_protocol(reading: Reading) -> Reading:
    meta = {key: value for key, value in reading.meta.items() if key != "protocol"}
    return reading._replace(meta=meta)


@pytest.fixture
async def coap_client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context()
    yield context
    await context.shutdown()


# -- registration interface ----------------------------------------------------------------


async def test_register_update_deregister_and_reregister() -> None:
    async with lwm2m_stack() as stack, Lwm2mClient("th-1", stack.port, DEVICE) as client:
        response = await client.register()
        assert response.code == Code.CREATED
        assert client.location[0] == "rd" and len(client.location) == 2
        first_id = client.location[1]
        registration = stack.lwm2m.registry.get(first_id)
        assert registration is not None
        assert (registration.endpoint, registration.lifetime, registration.version) == (
            "th-1", 300, "1.1"
        )  # fmt: skip
        assert registration.address == f"127.0.0.1:{client.port}"
        assert registration.links == ((3, 0),)
        await until(lambda: bool(stack.recorder.of_kind(MessageKind.STATUS)))
        status = stack.recorder.of_kind(MessageKind.STATUS)[0]
        assert status.meta["status"] == "online" and status.meta["protocol"] == "lwm2m"

        stack.clock.advance(100)
        response = await client.update(lt="120", b="UQ")
        assert response.code == Code.CHANGED
        registration = stack.lwm2m.registry.get(first_id)
        assert registration is not None
        assert (registration.lifetime, registration.queue, registration.updated_at) == (
            120, True, NOW + 100
        )  # fmt: skip
        await until(lambda: len(stack.recorder.of_kind(MessageKind.STATUS)) == 2)

        # the same endpoint registering again replaces the first registration
        again = await client.register()
        assert again.code == Code.CREATED and client.location[1] != first_id
        assert stack.lwm2m.registry.get(first_id) is None
        assert len(stack.lwm2m.registry) == 1
        stale = aiocoap.Message(code=Code.POST, uri=client.uri(f"rd/{first_id}"))
        assert (await client.request(stale)).code == Code.NOT_FOUND

        assert (await client.deregister()).code == Code.DELETED
        assert len(stack.lwm2m.registry) == 0
        assert (await client.deregister()).code == Code.NOT_FOUND
        assert ("POST", "2.01") in stack.responses and ("DELETE", "2.02") in stack.responses
        assert stack.events.count("registered") == 2 and "replaced" in stack.events
        assert "deregistered" in stack.events
        assert stack.sink.deadletters == []


@pytest.mark.parametrize(
    ("query", "body", "content_format", "code", "reason"),
    [
        (("lt=60",), b"</3/0>", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9", "lt=soon"), b"</3/0>", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9", "lt=0"), b"</3/0>", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=a/b",), b"</3/0>", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9", "lwm2m=9.9"), b"</3/0>", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9", "b=XYZ"), b"</3/0>", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9",), b"3/0, junk", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9",), b"</3/0/9>", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9",), b"", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9",), b"\xff\xfe", 40, Code.BAD_REQUEST, "malformed_registration"),
        (("ep=th-9",), b"</3/0>", 50, Code.UNSUPPORTED_CONTENT_FORMAT, "unsupported_content_type"),
    ],
)
async def test_a_malformed_registration_is_refused_counted_and_dead_lettered(
    coap_client: Any,
    query: tuple[str, ...],
    body: bytes,
    content_format: int,
    code: Any,
    reason: str,
) -> None:
    async with lwm2m_stack() as stack:
        message = aiocoap.Message(
            code=Code.POST, uri=f"coap://127.0.0.1:{stack.port}/rd", payload=body
        )
        message.opt.uri_query = query
        message.opt.content_format = content_format
        response = await asyncio.wait_for(coap_client.request(message).response, 10)
        assert response.code == code
        assert response.payload.startswith(reason.encode() + b": ")
        (letter,) = stack.sink.deadletters
        assert (letter.reason, letter.protocol) == (reason, "lwm2m")
        assert letter.topic.startswith("rd")
        assert letter.payload == body
        assert stack.sample("fleetwatch_decode_errors_total", reason=reason) == 1
        assert stack.sample("fleetwatch_readings_total", protocol="lwm2m", result="rejected") == 1
        assert len(stack.lwm2m.registry) == 0


async def test_wrong_methods_and_paths(coap_client: Any) -> None:
    async with lwm2m_stack() as stack:
        base = f"coap://127.0.0.1:{stack.port}"
        for code, path, expected in [
            (Code.GET, "rd", Code.METHOD_NOT_ALLOWED),
            (Code.PUT, "rd/abc", Code.METHOD_NOT_ALLOWED),
            (Code.POST, "rd/abc", Code.NOT_FOUND),
            (Code.DELETE, "rd/abc", Code.NOT_FOUND),
            (Code.GET, "rd/a/b", Code.NOT_FOUND),
            (Code.GET, "dp", Code.METHOD_NOT_ALLOWED),
        ]:
            message = aiocoap.Message(code=code, uri=f"{base}/{path}")
            response = await asyncio.wait_for(coap_client.request(message).response, 10)
            assert response.code == expected, (code, path)
        # the CoAP telemetry path still works beside LwM2M on the same socket
        message = aiocoap.Message(
            code=Code.POST, uri=f"{base}/t/th-5", payload=b'{"temperature_c": 20.5}'
        )
        message.opt.content_format = 50
        response = await asyncio.wait_for(coap_client.request(message).response, 10)
        assert response.code == Code.CHANGED
        assert stack.recorder.seen[0].meta["protocol"] == "coap"
        assert stack.sink.deadletters == []


async def test_a_device_outside_the_allow_list_is_refused() -> None:
    settings = settings_from_mapping(
        {**settings_for().model_dump(mode="json"), "ingest": {"allowed_devices": ["ok-*"]}}
    )
    async with (
        lwm2m_stack(settings) as stack,
        Lwm2mClient("bad-1", stack.port, DEVICE) as client,
    ):
        response = await client.register()
        assert response.code == Code.FORBIDDEN
        assert [d.reason for d in stack.sink.deadletters] == ["not_allowed"]
        assert len(stack.lwm2m.registry) == 0


# -- observations ---------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [TLV, SENML_CBOR, SENML_JSON, LWM2M_JSON])
async def test_observed_object_gives_the_reading_of_the_mqtt_json_path(accept: int) -> None:
    async with (
        lwm2m_stack(settings_for(accept=accept)) as stack,
        Lwm2mClient("th-2", stack.port, DEVICE) as client,
    ):
        assert (await client.register()).code == Code.CREATED
        await until(lambda: bool(stack.recorder.telemetry()))
        (reading,) = stack.recorder.telemetry()
        assert reading.meta["protocol"] == "lwm2m"
        assert dict(reading.metrics) == {"battery_v": 3.61, "battery_pct": 87.0}
        expected = mqtt_json_reading(
            "th-2",
            {"ts": reading.ts, "battery_v": 3.61, "battery_pct": 87, "firmware": "1.4.2",
             "model": "TH-200"},
            reading.received_at,
        )  # fmt: skip
        assert without_protocol(reading) == without_protocol(expected)
        gets = [r for r in client.received if r.method == "GET"]
        assert gets[0].path == (3,) and gets[0].observe and gets[0].accept == accept
        assert all(r.accept is not None for r in client.received)  # explicit Accept, always
        await until(lambda: client.observers((3,)) == 1)


async def test_write_attributes_then_the_broadest_observable_path() -> None:
    values = {**DEVICE, **SENSOR, (3303, 1, 5700): 19.0}
    async with (
        lwm2m_stack() as stack,
        Lwm2mClient("th-3", stack.port, values, observable=(2,)) as client,
    ):
        assert (await client.register()).code == Code.CREATED
        await until(lambda: client.observers((3303, 1)) == 1 and client.observers((3, 0)) == 1)
        sensor = [r for r in client.received if r.path[:1] == (3303,)]
        assert [(r.method, r.path) for r in sensor] == [
            ("PUT", (3303,)), ("GET", (3303,)),
            ("PUT", (3303, 0)), ("GET", (3303, 0)),
            ("PUT", (3303, 1)), ("GET", (3303, 1)),
        ]  # fmt: skip
        assert client.attributes[(3303, 0)] == ("pmin=1", "pmax=30")
        await until(lambda: len(stack.recorder.telemetry()) >= 5)
        metrics: dict[str, float] = {}
        for reading in stack.recorder.telemetry():
            metrics.update(reading.metrics)
        assert metrics == {"battery_v": 3.61, "battery_pct": 87.0, "temperature_c": 21.5,
                           "temperature_c_1": 19.0}  # fmt: skip

        count = len(stack.recorder.telemetry())
        client.set({(3303, 0, 5700): 23.25})
        await until(lambda: len(stack.recorder.telemetry()) > count)
        assert stack.recorder.telemetry()[-1].metrics == {"temperature_c": 23.25}


async def test_resources_are_observed_when_instances_cannot_be() -> None:
    async with (
        lwm2m_stack(settings_for(write_attributes=False)) as stack,
        Lwm2mClient("th-4", stack.port, SENSOR, observable=(3,)) as client,
    ):
        assert (await client.register()).code == Code.CREATED
        await until(lambda: client.observers((3303, 0, 5700)) == 1)
        assert not any(r.method == "PUT" for r in client.received)  # write_attributes off
        client.set({(3303, 0, 5700): 30.0})
        await until(lambda: any(r.metrics.get("temperature_c") == 30.0
                                for r in stack.recorder.telemetry()))  # fmt: skip


async def test_accept_falls_back_on_4_06() -> None:
    async with (
        lwm2m_stack() as stack,
        Lwm2mClient("th-5", stack.port, SENSOR, formats={SENML_JSON}) as client,
    ):
        assert (await client.register()).code == Code.CREATED
        await until(lambda: client.observers((3303,)) == 1)
        accepts = [r.accept for r in client.received if r.method == "GET"]
        assert accepts == [TLV, SENML_CBOR, SENML_JSON]
        await until(lambda: bool(stack.recorder.telemetry()))
        assert stack.recorder.telemetry()[0].metrics == {"temperature_c": 21.5}


async def test_an_undecodable_notification_is_dead_lettered_and_the_observation_goes_on() -> None:
    async with (
        lwm2m_stack() as stack,
        Lwm2mClient("th-6", stack.port, SENSOR) as client,
    ):
        original = client.render

        def corrupt(path: tuple[int, ...], accept: int | None) -> Any:
            response = original(path, accept)
            response.payload = response.payload[:-2]  # truncated TLV
            return response

        client.render = corrupt  # type: ignore[method-assign]
        assert (await client.register()).code == Code.CREATED
        await until(lambda: bool(stack.sink.deadletters))
        letter = stack.sink.deadletters[0]
        assert (letter.reason, letter.protocol, letter.topic) == (
            "malformed_tlv", "lwm2m", "lwm2m/th-6/telemetry"
        )  # fmt: skip
        assert stack.sample("fleetwatch_decode_errors_total", reason="malformed_tlv") == 1
        assert "notification_rejected" in stack.events
        await until(lambda: client.observers((3303,)) == 1)
        client.render = original  # type: ignore[method-assign]
        client.set({(3303, 0, 5700): 22.0})
        await until(lambda: bool(stack.recorder.telemetry()))
        assert stack.recorder.telemetry()[0].metrics == {"temperature_c": 22.0}


async def test_firmware_update_states_become_firmware_events() -> None:
    values = {**DEVICE, (5, 0, 3): 0, (5, 0, 5): 0, (5, 0, 7): "1.5.0"}
    async with (
        lwm2m_stack(detectors=[FirmwareDetector()]) as stack,
        Lwm2mClient("th-7", stack.port, values) as client,
    ):
        assert (await client.register()).code == Code.CREATED
        await until(lambda: client.observers((5,)) == 1 and client.observers((3,)) == 1)
        client.set({(5, 0, 3): 1})
        await until(lambda: len(stack.recorder.of_kind(MessageKind.FIRMWARE)) == 1)
        client.set({(5, 0, 3): 0, (5, 0, 5): 8})
        await until(lambda: len(stack.recorder.of_kind(MessageKind.FIRMWARE)) == 2)
        downloading, failed = stack.recorder.of_kind(MessageKind.FIRMWARE)
        assert downloading.meta["event"] == "downloading"
        assert downloading.meta["to_version"] == "1.5.0"
        assert (failed.meta["event"], failed.meta["code"], failed.meta["from_version"]) == (
            "failed", "8", "1.4.2"
        )  # fmt: skip
        await until(lambda: any(a.kind == "firmware_update_failed" for a in stack.sink.alerts))

        client.set({(5, 0, 5): 1, (3, 0, 3): "1.5.0"})
        await until(lambda: len(stack.recorder.of_kind(MessageKind.FIRMWARE)) == 3)
        succeeded = stack.recorder.of_kind(MessageKind.FIRMWARE)[-1]
        assert succeeded.meta["event"] == "succeeded" and succeeded.meta["to_version"] == "1.5.0"
        await until(lambda: any(a.kind == "firmware_update_failed" and a.state.value == "resolved"
                                for a in stack.sink.alerts))  # fmt: skip


# -- lifetimes ------------------------------------------------------------------------------


async def test_lifetime_expiry_ends_the_registration_and_the_device_goes_offline() -> None:
    clock = Clock()
    connectivity = ConnectivityDetector(ConnectivityConfig(min_offline_s=0))
    async with (
        lwm2m_stack(
            settings_for(lifetime_grace_s=5), clock=clock, detectors=[connectivity]
        ) as stack,
        Lwm2mClient("th-8", stack.port, SENSOR, lifetime=60) as client,
    ):
        assert (await client.register()).code == Code.CREATED
        await until(lambda: client.observers((3303,)) == 1)
        for step in range(1, 4):  # a reading every 10 s
            clock.advance(10)
            client.set({(3303, 0, 5700): 20.0 + step})
            await until(lambda s=step: len(stack.recorder.telemetry()) == s + 1)  # type: ignore[misc]
        assert stack.lwm2m.sweep(NOW + 65) == []  # within lifetime + grace
        expired = stack.lwm2m.sweep(NOW + 65.5)
        assert [r.endpoint for r in expired] == ["th-8"]
        assert len(stack.lwm2m.registry) == 0 and "expired" in stack.events
        assert (await client.update()).code == Code.NOT_FOUND
        stack.pipeline.tick(NOW + 120)
        offline = [a for a in stack.sink.alerts if a.kind == "device_offline"]
        assert [a.subject for a in offline] == ["th-8"]


async def test_a_queue_mode_device_between_wake_ups_is_not_offline() -> None:
    clock = Clock()
    connectivity = ConnectivityDetector(ConnectivityConfig(min_offline_s=0))
    async with (
        lwm2m_stack(
            settings_for(lifetime_grace_s=0), clock=clock, detectors=[connectivity]
        ) as stack,
        Lwm2mClient("th-9", stack.port, SENSOR, lifetime=120, binding="UQ") as client,
    ):
        assert (await client.register()).code == Code.CREATED
        await until(lambda: bool(stack.recorder.telemetry()))
        for wake_up in range(1, 7):  # asleep for 100 s, then an update and a reading
            stack.lwm2m.sweep(clock.advance(95))
            stack.pipeline.tick(clock.now)
            clock.advance(5)
            assert (await client.update()).code == Code.CHANGED
            client.set({(3303, 0, 5700): 20.0 + wake_up})
            await until(lambda w=wake_up: len(stack.recorder.telemetry()) == w + 1)  # type: ignore[misc]
        assert len(stack.lwm2m.registry) == 1
        assert [a for a in stack.sink.alerts if a.kind == "device_offline"] == []


# -- Send -----------------------------------------------------------------------------------


async def test_send_in_senml_cbor_and_json(coap_client: Any) -> None:
    async with lwm2m_stack() as stack, Lwm2mClient("th-10", stack.port, SENSOR) as client:
        assert (await client.register()).code == Code.CREATED
        await until(lambda: bool(stack.recorder.telemetry()))
        pack = senml_records({(3303, 0, 5700): 24.5, (3, 0, 9): 55}, base_time=NOW - 60)
        response = await client.send(senml_cbor(pack), SENML_CBOR)
        assert response.code == Code.CHANGED
        sent = stack.recorder.telemetry()[-1]  # answered once processed
        assert (sent.ts, dict(sent.metrics)) == (NOW - 60, {"battery_pct": 55.0,
                                                             "temperature_c": 24.5})  # fmt: skip
        pack = senml_records({(3303, 0, 5700): 25.0}, base_time=NOW - 30)
        assert (await client.send(orjson.dumps(pack), SENML_JSON)).code == Code.CHANGED
        assert stack.recorder.telemetry()[-1].metrics == {"temperature_c": 25.0}

        bad = await client.send(b"\x9f\xa1", SENML_CBOR)
        assert bad.code == Code.BAD_REQUEST
        assert stack.sink.deadletters[-1].reason == "malformed_cbor"
        assert stack.sink.deadletters[-1].topic == "lwm2m/th-10/telemetry"
        text = await client.send(b"21.5", TEXT)
        assert text.code == Code.UNSUPPORTED_CONTENT_FORMAT

        # a client that never registered
        message = aiocoap.Message(code=Code.POST, uri=client.uri("dp"),
                                  payload=senml_cbor(pack))  # fmt: skip
        message.opt.content_format = SENML_CBOR
        stranger = await asyncio.wait_for(coap_client.request(message).response, 10)
        assert stranger.code == Code.NOT_FOUND
        assert stack.sink.deadletters[-1].reason == "not_registered"
        assert stack.journal[-1].protocol == "lwm2m"


# -- persistence ----------------------------------------------------------------------------


async def test_registrations_survive_a_restart_and_observations_are_re_established(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        async with lwm2m_stack(storage=store) as first:
            port = first.port
            client = Lwm2mClient("th-11", port, SENSOR)
            await client.__aenter__()
            assert (await client.register()).code == Code.CREATED
            await until(lambda: client.observers((3303,)) == 1)
            registration_id = client.location[1]
    try:
        with StateStore(path) as store:
            async with lwm2m_stack(settings_for(port=port), storage=store) as second:
                assert second.lwm2m.registry.get(registration_id) is not None
                before = len(client.received)
                await until(lambda: any(r.observe for r in client.received[before:]))
                client.set({(3303, 0, 5700): 26.0})
                await until(lambda: any(r.metrics.get("temperature_c") == 26.0
                                        for r in second.recorder.telemetry()))  # fmt: skip
                assert (await client.update()).code == Code.CHANGED
                assert second.lwm2m.registry.get(registration_id) is not None
    finally:
        await client.__aexit__(None, None, None)


async def test_a_queue_mode_device_is_asked_only_after_it_contacts_the_server(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        async with lwm2m_stack(storage=store) as first:
            port = first.port
            client = Lwm2mClient("th-12", port, SENSOR, binding="UQ")
            await client.__aenter__()
            assert (await client.register()).code == Code.CREATED
            await until(lambda: client.observers((3303,)) == 1)
    try:
        with StateStore(path) as store:
            async with lwm2m_stack(settings_for(port=port), storage=store) as second:
                assert len(second.lwm2m.registry) == 1
                assert second.lwm2m.requests_sent == 0  # asleep: nothing is sent
                before = len(client.received)
                assert (await client.update()).code == Code.CHANGED
                await until(lambda: any(r.observe for r in client.received[before:]))
                assert second.lwm2m.requests_sent > 0
                await until(lambda: bool(second.recorder.telemetry()))
    finally:
        await client.__aexit__(None, None, None)


async def test_a_journaled_lwm2m_message_replays_through_the_lwm2m_route() -> None:
    async with lwm2m_stack() as stack, Lwm2mClient("th-13", stack.port, SENSOR) as client:
        assert (await client.register()).code == Code.CREATED
        await until(lambda: bool(stack.recorder.telemetry()))
        journal = list(stack.journal)
    recorder = Recorder()
    pipeline = Pipeline.build(Settings(), detectors=[recorder], sinks=[],
                              metrics=FleetMetrics(CollectorRegistry()))  # fmt: skip
    pipeline.process_messages(journal)
    assert [r.kind for r in recorder.seen] == [r.kind for r in stack.recorder.seen]
    assert recorder.telemetry()[0].metrics == {"temperature_c": 21.5}


def test_lwm2m_needs_coap() -> None:
    with pytest.raises(ConfigError, match=r"lwm2m\.enabled needs coap\.enabled"):
        settings_from_mapping({"lwm2m": {"enabled": True}})
    with pytest.raises(ConfigError, match="not in the object model"):
        settings_from_mapping({"coap": {"enabled": True}, "lwm2m": {"observe": [3, 9999]}})


# -- formats ---------------------------------------------------------------------------------


DEVICE_TLV = tlv.encode([
    tlv.resource(0, "Open Mobile Alliance"),
    tlv.resource(3, "1.4.2"),
    tlv.multiple(6, {0: 1, 1: 5}),
    tlv.multiple(7, {0: 3610, 1: 5000}),
    tlv.multiple(8, {0: 125, 1: 900}),
    tlv.resource(9, 87),
    tlv.resource(10, 15),
    tlv.multiple(11, {0: 1, 1: 4}),
    tlv.resource(13, 1_767_225_600),
    tlv.resource(17, "x" * 300),  # a 16-bit length
])  # fmt: skip


def test_tlv_decodes_an_object_instance_with_multiple_resources() -> None:
    values = tlv.decode(DEVICE_TLV, (3, 0))
    found = {v.path: v.value for v in values}
    assert found[(3, 0, 7, 1)] == 5000 and found[(3, 0, 11, 1)] == 4
    assert found[(3, 0, 17)] == "x" * 300
    translation = translate(values, DeviceMemory())
    assert translation.records == [{
        "manufacturer": "Open Mobile Alliance", "firmware": "1.4.2", "battery_v": 3.61,
        "current_a": 0.125, "battery_pct": 87.0, "memory_free_kb": 15.0,
        "errors": "low_battery,low_signal",
    }]  # fmt: skip


def test_tlv_object_level_16_bit_ids_and_24_bit_lengths() -> None:
    big = "y" * 70_000
    payload = tlv.encode([tlv.instance(0, [tlv.resource(5700, 21.5), tlv.resource(5750, big)]),
                          tlv.instance(300, [tlv.resource(5700, -4.0)])])  # fmt: skip
    values = tlv.decode(payload, (3303,))
    assert [(v.path, v.value) for v in values] == [
        ((3303, 0, 5700), 21.5), ((3303, 0, 5750), big), ((3303, 300, 5700), -4.0)
    ]  # fmt: skip
    assert tlv.decode(tlv.resource(9, 2**40), (3, 0, 9))[0].value == 2**40
    assert tlv.decode(tlv.resource(5700, 1e300), (3303, 0, 5700))[0].value == 1e300
    assert tlv.decode(tlv.resource(68, 1), (3303, 0)) == []  # not in the object model


def test_truncated_tlv_is_a_clear_decode_error_at_every_length() -> None:
    for cut in range(1, len(DEVICE_TLV)):
        try:
            tlv.decode(DEVICE_TLV[:cut], (3, 0))
        except DecodeError as exc:
            assert exc.reason == "malformed_tlv" and "byte" in exc.detail
    with pytest.raises(DecodeError, match="needs 5 bytes of value, 4 left"):
        tlv.decode(tlv.resource(3, "1.4.2")[:-1], (3, 0))


@pytest.mark.parametrize(
    ("payload", "base", "message"),
    [
        (bytes([0xC5, 9, 0, 0]), (3, 0), "needs 5 bytes of value, 2 left"),
        (bytes([0xC3, 9, 1, 2, 3]), (3, 0), "integer at /3/0/9 has 3 bytes"),
        (bytes([0xE2, 0x16, 0x44, 1, 2]), (3303, 0), "float at /3303/0/5700 has 2 bytes"),
        (bytes([0xC2, 3, 0xFF, 0xFE]), (3, 0), "string at /3/0/3 is not UTF-8"),
        (bytes([0xC1, 9, 1]), (3,), "resource 9 outside an object instance"),
        (bytes([0x03, 0, 0xC1, 9, 1]), (3, 0), "object instance 0 inside"),
        (bytes([0x07, 0, 0x85, 6, 0x83, 0, 0x41, 0, 1]), (3,), "nested too deep"),
        (bytes([0x85, 6, 0x83, 0, 0x41, 0, 1]), (3, 0), "multiple resource 6 holds a multiple"),
        (bytes([0x41, 0, 1]), (3, 0), "resource instance 0 outside a multiple resource"),
        (bytes([0x18]), (3, 0), "cut short in its header"),
    ],
)
def test_corrupt_tlv_is_refused_with_a_reason(payload: bytes, base: tuple[int, ...],
                                             message: str) -> None:  # fmt: skip
    with pytest.raises(DecodeError, match=message) as info:
        tlv.decode(payload, base)
    assert info.value.reason in ("malformed_tlv", "non_finite_number")


def test_random_bytes_never_raise_anything_but_decode_errors() -> None:
    rng = random.Random(7)
    formats = (TLV, SENML_JSON, SENML_CBOR, LWM2M_JSON, TEXT, 60, 42)
    for _ in range(3000):
        payload = rng.randbytes(rng.randrange(0, 40))
        for number in formats:
            base = rng.choice([(3,), (3, 0), (3, 0, 9), (3303, 0, 5700), (5, 0)])
            with contextlib.suppress(DecodeError):
                decode(payload, number, base, NOW)
    # mutations of a valid payload
    for _ in range(3000):
        mutated = bytearray(DEVICE_TLV[:40])
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        with contextlib.suppress(DecodeError):
            tlv.decode(bytes(mutated), (3, 0))


def test_lwm2m_json_with_base_name_and_times() -> None:
    document = {"bn": "/3303/0/", "bt": NOW, "e": [
        {"n": "5700", "v": 21.5}, {"n": "5700", "v": 21.7, "t": 60}, {"n": "5701", "sv": "Cel"},
    ]}  # fmt: skip
    values = decode(orjson.dumps(document), LWM2M_JSON, (3303, 0), NOW + 100)
    assert values == [
        ResourceValue((3303, 0, 5700), 21.5, NOW),
        ResourceValue((3303, 0, 5700), 21.7, NOW + 60),
        ResourceValue((3303, 0, 5701), "Cel", NOW),
    ]
    relative = {"e": [{"n": "/3/0/9", "v": 50, "t": -30}, {"n": "3/0/3", "sv": "2.0"}]}
    values = decode(orjson.dumps(relative), LWM2M_JSON, (3, 0), NOW)
    assert values == [ResourceValue((3, 0, 9), 50, NOW - 30), ResourceValue((3, 0, 3), "2.0")]
    translation = translate(
        decode(orjson.dumps(document), LWM2M_JSON, (3303, 0), NOW), DeviceMemory()
    )
    assert translation.records == [{"ts": NOW, "temperature_c": 21.5},
                                   {"ts": NOW + 60, "temperature_c": 21.7}]  # fmt: skip
    for bad, reason in [
        (b"[]", "bad_lwm2m_json"),
        (b'{"e": [{"n": "3/0/9"}]}', "bad_lwm2m_json"),
        (b'{"e": [{"n": "x/0/9", "v": 1}]}', "bad_lwm2m_json"),
        (b'{"e": [{"n": "3/0/9", "v": 1.5}]}', "bad_lwm2m_json"),
        (b'{"e": [{"n": "3/0/3", "v": 1}]}', "bad_lwm2m_json"),
        (b'{"e": [{"n": "3/0", "v": 1}]}', "bad_lwm2m_json"),
        (b'{"e": ', "malformed_json"),
    ]:
        with pytest.raises(DecodeError) as info:
            decode(bad, LWM2M_JSON, (3, 0), NOW)
        assert info.value.reason == reason, bad


def test_senml_plain_text_and_cbor_single_values() -> None:
    pack = [
        {-2: "/3303/0/", 0: "5700", 2: 21.5},
        {0: "5701", 3: "Far"},
        {-2: "", 0: "/4/0/2", 2: -71},
    ]
    values = decode(cbor2.dumps(pack), SENML_CBOR, (), NOW)
    memory = DeviceMemory()
    records = translate(values, memory).records
    assert records == [{"rssi_dbm": -71.0, "temperature_c": pytest.approx(-5.8333, abs=1e-3)}]
    values = decode(cbor2.dumps([{0: "/4/0/2", 2: -71}, {0: "/4/0/0", 2: 7}]), SENML_CBOR, (),
                    NOW)  # fmt: skip
    assert translate(values, memory).records == [{"bearer": "nb-iot", "rssi_dbm": -71.0}]
    assert decode(b"3.61", TEXT, (3316, 0, 5700), NOW)[0].value == 3.61
    assert decode(b"1", TEXT, (3, 0, 9), NOW)[0].value == 1
    assert decode(cbor2.dumps(52.1), 60, (6, 0, 0), NOW)[0].value == 52.1
    with pytest.raises(DecodeError, match="not an integer"):
        decode(b"lots", TEXT, (3, 0, 9), NOW)
    with pytest.raises(DecodeError, match="a single value answers a resource"):
        decode(b"1", TEXT, (3, 0), NOW)
    with pytest.raises(DecodeError) as info:
        decode(b"[]", 50, (3, 0), NOW)
    assert info.value.reason == "unsupported_content_type"


def test_translation_of_location_power_and_units() -> None:
    memory = DeviceMemory()
    values = [
        ResourceValue((6, 0, 0), 52.1), ResourceValue((6, 0, 1), 4.3),
        ResourceValue((3, 0, 6, 0), 0), ResourceValue((3, 0, 7, 0), 12000),
        ResourceValue((3, 0, 8, 0), 250),
        ResourceValue((3328, 0, 5700), 1.5), ResourceValue((3323, 0, 5700), 101325.0),
        ResourceValue((3323, 0, 5701), "Pa"), ResourceValue((3304, 0, 5700), 45.0),
        ResourceValue((9999, 0, 1), 1), ResourceValue((3, 0, 11, 0), 0),
    ]  # fmt: skip
    translation = translate(values, memory)
    assert translation.records == [{
        "voltage_v": 12.0, "current_a": 0.25, "errors": "none", "lat": "52.1", "lon": "4.3",
        "humidity_pct": 45.0, "pressure_kpa": pytest.approx(101.325), "power_mw": 1500.0,
    }]  # fmt: skip
    assert translation.skipped == 1
    assert memory.power_sources == {0: 0}


def test_link_format_parsing() -> None:
    links = parse_links('</>;rt="oma.lwm2m";ct=110, </1/0>,</3/0>;ver="1.1", </3303>,</3303/0>')
    assert links.paths == ((1, 0), (3, 0), (3303,), (3303, 0)) and links.content_format == 110
    with pytest.raises(DecodeError, match="no closing quote"):
        parse_links('</3/0>;title="x')


# -- the daemon -----------------------------------------------------------------------------


@pytest.mark.broker
async def test_daemon_lwm2m_notification_fires_an_alert_on_mqtt(  # type: ignore[no-untyped-def]
    broker, topic_prefix, mqtt_client
) -> None:
    settings = daemon_settings(
        broker.host, broker.port, topic_prefix,
        coap={"enabled": True, "port": 0}, lwm2m={"enabled": True, "request_timeout_s": 5.0},
    )  # fmt: skip
    async with running_daemon(settings) as daemon:
        assert daemon.coap_port
        await mqtt_client.subscribe(f"{topic_prefix}/fleetwatch/alerts/#")
        async with Lwm2mClient("th-42", daemon.coap_port, DEVICE) as client:
            assert (await client.register()).code == Code.CREATED
            await until(lambda: client.observers((3,)) == 1)
            client.set({(3, 0, 7, 0): 3050})
            _, payload, _ = await mqtt_client.expect(
                f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/th-42"
            )
            alert = orjson.loads(payload)
            assert alert["state"] == "firing" and alert["evidence"]["value"] == pytest.approx(3.05)
            registry = daemon.registry
            assert registry.get_sample_value(
                "fleetwatch_readings_total", {"protocol": "lwm2m", "result": "accepted"}
            ) >= 2  # fmt: skip
            assert registry.get_sample_value("fleetwatch_lwm2m_registrations") == 1
            assert registry.get_sample_value(
                "fleetwatch_lwm2m_events_total", {"event": "registered"}
            ) == 1  # fmt: skip
            assert registry.get_sample_value(
                "fleetwatch_coap_requests_total", {"method": "POST", "code": "2.01"}
            ) == 1  # fmt: skip
