"""No loss across crashes and outages, against a real broker.

- ``kill -9`` mid-stream, then restart: every message processed, exact counts;
- the broker goes away and comes back: reconnect, and the alerts raised meanwhile arrive;
- a slow detector: intake pauses, memory stays bounded, nothing is dropped;
- poison messages are acknowledged once dead-lettered, never redelivered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from service.records import RawMessage, Reading, Signal
from service.runtime.broker import free_port
from service.runtime.shards import worker_state_path
from service.state.store import StateStore
from tests.daemon_helpers import daemon_settings, running_daemon

pytestmark = pytest.mark.broker

FLEETWATCH = [sys.executable, "-m", "service.commands.cli"]
NOW = 1_767_225_600


def reading(seq: int, devices: int = 50) -> tuple[str, bytes]:
    device = f"d{seq % devices:03d}"
    payload = orjson.dumps({"ts": NOW + seq, "seq": seq, "temperature_c": 20.0 + seq % 7})
    return device, payload


async def get_status(session: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/api/status") as response:
            return await response.json()  # type: ignore[no-any-return]
    except aiohttp.ClientError:
        return None


async def wait_status(
    port: int, condition: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """Poll the daemon's /api/status until ``condition`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            last = await get_status(session, port)
            if last is not None and condition(last):
                return last
            await asyncio.sleep(0.02)
    raise TimeoutError(f"status never matched within {timeout} s; last: {last}")


def run_config(tmp_path: Path, broker: Any, prefix: str, http_port: int, workers: int = 1) -> Path:
    config = tmp_path / "fleetwatch.toml"
    config.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "fw-{prefix}"
receive_maximum = 2000
reconnect_min_s = 0.1
reconnect_max_s = 1.0
[[mqtt.subscriptions]]
filter = "{prefix}/fleet/+/+/+"
[topics]
templates = ["{prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"]
alerts_prefix = "{prefix}/alerts"
status = "{prefix}/status"
deadletter = "{prefix}/deadletter"
[http]
port = {http_port}
[pipeline]
max_batch = 200
workers = {workers}
[state]
path = "{tmp_path / "state.db"}"
checkpoint_interval_s = 3600
"""
    )
    return config


async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *FLEETWATCH, "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=os.environ.copy(), start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
async def test_kill_9_mid_stream_loses_nothing_and_counts_exactly(
    tmp_path: Path, broker, topic_prefix, mqtt_client, workers
) -> None:  # type: ignore[no-untyped-def]
    """The daemon (with its worker processes, if any) is killed mid-stream and restarted."""
    total = 12_000
    http_port = free_port()
    config = run_config(tmp_path, broker, topic_prefix, http_port, workers)

    async def publish_all() -> None:
        for seq in range(total):
            device, payload = reading(seq)
            site = f"s{int(device[1:]) % 5}"  # five sites, on both workers when there are two
            await mqtt_client.publish(f"{topic_prefix}/fleet/{site}/{device}/telemetry", payload)
            if seq % 100 == 99:
                await asyncio.sleep(0.005)  # about 20,000 messages/s: a steady stream

    process = await start_daemon(config)
    try:
        await wait_status(http_port, lambda s: s["connected"], 30)
        publisher = asyncio.create_task(publish_all())
        at_kill = await wait_status(http_port, lambda s: s["readings"] >= 2_000, 30)
        # SIGKILL to the daemon and its workers: no shutdown, no checkpoint, PUBACKs lost
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        await asyncio.wait_for(publisher, 60)
        assert at_kill["readings"] < total  # the crash happened mid-stream

        process = await start_daemon(config)
        done = await wait_status(http_port, lambda s: s["readings"] >= total, 60)
        assert done["restored"]["journaled"] > 0  # state was rebuilt from the journal
        # redeliveries of what was processed before the crash are recognised as duplicates
        again = await wait_status(http_port, lambda s: s["queue_depth"] == 0, 10)
        assert again["readings"] == total
        assert again["devices"] == 50
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    paths = (
        [tmp_path / "state.db"]
        if workers == 1
        else [worker_state_path(tmp_path / "state.db", index, workers) for index in range(workers)]
    )
    summed = {"accepted": 0, "rejected": 0, "messages": 0, "duplicates": 0}
    for path in paths:
        with StateStore(path) as store:
            checkpoint = store.load_checkpoint()
            assert list(store.journal()) == []  # folded into the shutdown checkpoint
        assert checkpoint is not None
        for key in summed:
            summed[key] += checkpoint.components["pipeline"]["totals"][key]
    assert summed["accepted"] == total
    assert summed["rejected"] == 0
    assert summed["messages"] == total + summed["duplicates"]


async def test_broker_outage_reconnects_and_delivers_alerts_raised_meanwhile(
    tmp_path: Path, broker, topic_prefix, mqtt_factory
) -> None:  # type: ignore[no-untyped-def]
    settings = daemon_settings(
        broker.host,
        broker.port,
        topic_prefix,
        state={"enabled": True, "path": str(tmp_path / "state.db")},
    )
    async with running_daemon(settings) as daemon:
        await broker.stop()
        await asyncio.wait_for(_until(lambda: not daemon.mqtt.connected.is_set()), 10)
        # a reading arrives by another path (CoAP, a gateway upload) while MQTT is down
        payload = orjson.dumps({"ts": NOW, "seq": 1, "battery_v": 3.0})
        await daemon.intake.submit(
            RawMessage("t/d1", payload, time.time(), "coap", "application/json"), wait=True
        )
        assert [a.subject for a in daemon.pipeline.alerts.active()] == ["d1"]
        await broker.start()  # same port
        await asyncio.wait_for(daemon.mqtt.connected.wait(), 15)
        await asyncio.wait_for(daemon.alert_sink.flush(10), 15)
        client = await mqtt_factory()
        await client.subscribe(f"{topic_prefix}/fleetwatch/alerts/#")
        _topic, body, retained = await client.expect(
            f"{topic_prefix}/fleetwatch/alerts/rule.battery_low/d1", timeout=10
        )
        assert retained and orjson.loads(body)["state"] == "firing"
        assert daemon.mqtt.connections >= 2


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


class SlowAtFirst:
    """A detector that takes 20 ms per batch for its first batches, then is quick."""

    name = "slow"

    def __init__(self, slow_batches: int) -> None:
        self.slow_batches = slow_batches
        self.batches = 0
        self.readings = 0

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        self.batches += 1
        self.readings += len(batch)
        if self.batches <= self.slow_batches:
            time.sleep(0.02)
        return []

    def tick(self, now: float) -> list[Signal]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


async def test_slow_detector_pauses_intake_bounds_memory_and_drops_nothing(
    broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    from service.runtime.daemon import Daemon

    total = 10_000
    settings = daemon_settings(
        broker.host,
        broker.port,
        topic_prefix,
        mqtt={"receive_maximum": 200},
        pipeline={"queue_size": 100, "max_batch": 20},
    )
    detector = SlowAtFirst(slow_batches=100)
    daemon = Daemon(settings, detectors=[detector])
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        # a simulated fleet publishes from its own process, faster than the detector keeps up
        simulator = await asyncio.create_subprocess_exec(
            *FLEETWATCH, "simulate", "--host", broker.host, "--port", str(broker.port),
            "--prefix", topic_prefix, "--devices", "300", "--rate", "20000",
            "--max-messages", str(total), "--duration", "60",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await asyncio.wait_for(simulator.wait(), 60) == 0
        await asyncio.wait_for(_until(lambda: daemon.pipeline.totals.messages >= total), 60)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    assert daemon.pipeline.totals.messages == total
    assert daemon.pipeline.totals.rejected == 0
    assert detector.readings == daemon.pipeline.totals.accepted
    assert daemon.registry.get_sample_value("fleetwatch_intake_pauses_total", {}) >= 1  # type: ignore[operator]
    # the backlog waited at the broker, not in FleetWatch: the queue held at most its bound
    # plus what the one socket read in progress when intake paused (64 KiB) had brought in
    assert daemon.intake.max_depth <= 100 + 65_536 // 200


async def test_poison_messages_are_acknowledged_once_dead_lettered(
    tmp_path: Path, broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    settings = daemon_settings(broker.host, broker.port, topic_prefix)
    deadletter = f"{topic_prefix}/fleetwatch/deadletter"
    await mqtt_client.subscribe(deadletter)
    poison = [b"{not json", b"[1, 2", b'{"temperature_c": "hot"}', b"\xff\xfe"]
    async with running_daemon(settings) as daemon:
        for payload in poison:
            await mqtt_client.publish(f"{topic_prefix}/fleet/s1/d1/telemetry", payload)
        for _ in poison:
            await mqtt_client.expect(deadletter)
        await asyncio.wait_for(_until(lambda: daemon.intake.processed >= len(poison)), 10)
    # a second run on the same persistent session: nothing is delivered again
    async with running_daemon(settings) as daemon:
        marker = orjson.dumps({"ts": NOW, "temperature_c": 20.0})
        await mqtt_client.publish(f"{topic_prefix}/fleet/s1/d2/telemetry", marker)
        await asyncio.wait_for(_until(lambda: daemon.intake.processed >= 1), 10)
        assert daemon.intake.processed == 1
        assert daemon.pipeline.totals.rejected == 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(
    topic: bytes, payload: bytes, mid: int, *, qos: int = 1, props: bytes = b"", flags: int = 0
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    body += _varint(len(props)) + props + payload
    return bytes([0x30 | qos << 1 | flags]) + _varint(len(body)) + body


def test_mqtt_reader_delivers_what_gmqtt_delivers_for_any_split_of_the_stream() -> None:
    """The client's own framing of inbound bytes hands over the same messages, tokens and
    properties, in the same order, as gmqtt's packet-by-packet handling."""
    from gmqtt.mqtt.package import Package
    from gmqtt.mqtt.protocol import MQTTProtocol

    from config.settings import MqttSettings
    from protocols.mqtt import MqttClient

    content_type = b"\x03" + len(b"application/cbor").to_bytes(2, "big") + b"application/cbor"
    packets = [
        _publish(b"f/a/d1/telemetry", b'{"t": 1}', 1),
        _publish(b"f/a/d2/telemetry", b"\xa1", 2, props=content_type),
        _publish(b"f/a/d3/telemetry", b"x" * 300, 3, flags=0x08 | 0x01),  # dup, retain
        _publish(b"f/a/d4/telemetry", b"qos 0", 0, qos=0),
        b"\xd0\x00",  # PINGRESP
        _publish(b"f/a/d5/telemetry", b"aliased", 4, props=b"\x23\x00\x01"),
        _publish(b"", b"by alias", 5, props=b"\x23\x00\x01"),
        _publish(b"f/\xff/bad", b"not UTF-8", 6),
        _publish(b"f/a/d6/telemetry", b"", 7),
        _publish(b"f/a/d7/telemetry", b"y" * 20_000, 65535),
    ]
    stream = b"".join(packets)

    class Protocol:
        """gmqtt's reader, counting when the client hands a buffer to it."""

        proto_ver = 5

        def __init__(self, connection: Any) -> None:
            self._connection = connection
            self.fallbacks = 0

        def _read_packet(self, data: bytes) -> int:
            self.fallbacks += 1
            return MQTTProtocol._read_packet(self, data)  # type: ignore[arg-type]

    def wired(seen: list[tuple[Any, ...]]) -> tuple[MqttClient, Any, Any]:
        mqtt = MqttClient(
            MqttSettings(client_id="framing"),
            on_message=lambda t, p, q, props, token: seen.append((t, p, q, props, token)),
        )
        client = mqtt._client = mqtt._make_client()
        handler = client._package_handler

        class Connection:
            def __init__(self) -> None:
                self._protocol = Protocol(self)
                self._last_data_in = 0.0

            def put_package(self, package: Package) -> None:
                if handler.current_connection is self:
                    handler(package)

        connection = client._connection = Connection()
        handler.set_connection(connection)
        mqtt._generation = 3
        return mqtt, connection, handler

    def run(chunk: int | None) -> list[tuple[Any, ...]]:
        seen: list[tuple[Any, ...]] = []
        mqtt, connection, handler = wired(seen)
        if chunk is None:  # gmqtt's own handling, packet by packet
            for packet in packets:
                size = 2 + (len(packet) > 129) + (len(packet) > 16386)
                handler(Package(packet[0], packet[size:]))
            return seen
        mqtt._take_publishes()
        buffer = b""
        for start in range(0, len(stream), chunk):
            buffer += stream[start : start + chunk]
            parsed = connection._protocol._read_packet(buffer)
            assert parsed >= 0
            buffer = buffer[parsed:]
        assert buffer == b"" and connection._protocol.fallbacks == 0
        return seen

    expected = run(None)
    assert [m[0] for m in expected] == [
        "f/a/d1/telemetry", "f/a/d2/telemetry", "f/a/d3/telemetry", "f/a/d4/telemetry",
        "f/a/d5/telemetry", "f/a/d5/telemetry", b"f/\xff/bad", "f/a/d6/telemetry",
        "f/a/d7/telemetry",
    ]  # fmt: skip
    assert expected[0][2:] == (1, {"dup": 0, "retain": 0}, (3 << 16) | 1)
    assert expected[3][4] is None and expected[-1][4] == (3 << 16) | 65535
    for chunk in (1, 2, 3, 5, 64, 4096, len(stream)):
        assert run(chunk) == expected, chunk

    # a malformed remaining length, and a superseded connection: as gmqtt decides
    seen: list[tuple[Any, ...]] = []
    mqtt, connection, handler = wired(seen)
    mqtt._take_publishes()
    read = connection._protocol._read_packet
    # (gmqtt waits for more bytes before it looks at the fifth byte of the length)
    assert read(packets[0] + b"\x32\xff\xff\xff\xff\x01") == len(packets[0])
    assert len(seen) == 1 and connection._protocol.fallbacks == 1
    handler.set_connection(object())
    assert read(packets[0]) == len(packets[0])
    assert len(seen) == 1 and connection._protocol.fallbacks == 2


def test_pubacks_are_built_for_the_current_connection_only() -> None:
    from protocols.mqtt import puback_packets

    tokens = [(5 << 16) | mid for mid in (1, 255, 256, 65535)]
    assert puback_packets(tokens, 5) == bytes.fromhex("40020001 400200ff 40020100 4002ffff")
    assert puback_packets([(4 << 16) | 9, *tokens[:1]], 5) == bytes.fromhex("40020001")
    assert puback_packets([(4 << 16) | 9], 5) == b""
