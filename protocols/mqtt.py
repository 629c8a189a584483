"""The MQTT transport: a gmqtt client with at-least-once intake.

Why gmqtt: it is asyncio-native, speaks MQTT 5 and 3.1.1, and is the fastest of the
maintained Python clients at draining a broker (see ``bench/live_throughput.py``).
FleetWatch takes over acknowledgement: gmqtt hands each inbound QoS 1 PUBLISH to
:class:`MqttClient` with its packet id, the message handler queues it with a token, and the
PUBACKs of a whole processed micro-batch go out in one socket write
(:meth:`MqttClient.acknowledge`). So a message is acknowledged only after the pipeline has
processed it, without a task, a future or a system call per message. Tokens carry the
connection they arrived on: after a reconnect, stale ones are not acknowledged (the broker
sends those messages again, and duplicates are dropped downstream).

Once connected, :class:`MqttClient` also frames what the socket delivers itself
(:meth:`MqttClient._take_publishes`): a QoS 1 PUBLISH with a topic name and no properties,
the common case, goes straight from the read buffer to the message handler; every other
packet (acknowledgements, QoS 0 and 2, properties, topic aliases, anything malformed) is
handed to gmqtt as a packet of its own, which handles it as it always does.

What :class:`MqttClient` adds:

- a persistent session (fixed client id, no clean start, session expiry), QoS 1
  subscriptions renewed on every connect, MQTT 5 Receive Maximum to bound how many
  unacknowledged messages the broker sends at once;
- MQTT 5 with a fall back to 3.1.1 when the broker refuses it (``protocol = "auto"``);
- reconnect with jittered exponential back-off, on the first connect and after a loss;
- TLS (server verification, optional client certificate) and username/password;
- a last will on the service status topic and ``online`` published (retained) on connect;
- :meth:`MqttClient.pause_reading` / :meth:`MqttClient.resume_reading`, so intake stops
  reading from the socket while the pipeline's queue is full.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import struct
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError
from gmqtt.mqtt.package import Package

from config.settings import MqttSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, int, dict[str, Any], int | None], None]
"""``(topic, payload, qos, properties, token)``: ``token`` is ``None`` for QoS 0; for QoS 1
the handler must pass it to :meth:`MqttClient.acknowledge` once the message is processed."""

_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 and 5 (reason code 0 may be omitted)
# a packet id's high and low byte within a token stored as an unsigned 64-bit integer
_ID_HIGH, _ID_LOW = (1, 0) if sys.byteorder == "little" else (6, 7)

_PROTOCOL_REFUSED = (1, 132)  # 3.1.1 "unacceptable protocol version", 5 "unsupported"


def tls_context(settings: MqttSettings) -> ssl.SSLContext | bool:
    """The TLS context for the broker connection (``False`` when TLS is off)."""
    tls = settings.tls
    if not tls.enabled:
        return False
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    if tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def puback_packets(tokens: Sequence[int], generation: int) -> bytes:
    """The PUBACK packets for the ``tokens`` of connection ``generation``, in order
    (tokens of other connections are left out).

    >>> puback_packets([(3 << 16) | 1, (3 << 16) | 258], 3).hex(" ")
    '40 02 00 01 40 02 01 02'
    >>> puback_packets([(2 << 16) | 1, (3 << 16) | 7], 3).hex(" ")
    '40 02 00 07'
    """
    if min(tokens) >> 16 != generation or max(tokens) >> 16 != generation:
        pack = _PUBACK.pack
        return b"".join(
            pack(0x40, 2, token & 0xFFFF) for token in tokens if token >> 16 == generation
        )
    # all of this connection: four bytes each, 0x40 0x02 and the packet id (big-endian)
    ids = array("Q", tokens).tobytes()
    data = bytearray(b"\x40\x02\x00\x00" * len(tokens))
    data[2::4] = ids[_ID_HIGH::8]
    data[3::4] = ids[_ID_LOW::8]
    return bytes(data)


class Backoff:
    """Jittered exponential back-off.

    gmqtt reconnects by itself and takes only the next delay (``reconnect_delay``); retry
    libraries (tenacity, backoff) retry a call they wrap, which is not how gmqtt is driven,
    so the delay sequence is kept here.

    >>> b = Backoff(0.5, 8.0, rng=random.Random(1))
    >>> [round(b.next(), 2) for _ in range(6)]
    [0.32, 1.35, 2.53, 3.02, 7.96, 7.6]
    """

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.minimum * (2**self._attempt))
        self._attempt += 1
        return float(min(self.maximum, base * self._rng.uniform(0.5, 1.5)))

    def reset(self) -> None:
        self._attempt = 0


class MqttClient:
    """An MQTT connection for FleetWatch (async context manager, not re-entrant).

    Parameters
    ----------
    settings
        Broker address, credentials, TLS, session and back-off settings.
    client_id
        Overrides ``settings.client_id`` (the simulator and tests use their own).
    on_message
        A :data:`MessageHandler`, or ``None`` for a publish-only client.
    subscriptions
        ``(filter, qos)`` pairs subscribed on every connect.
    status_topic
        When given: last will ``offline`` and ``online`` on connect, both retained.
    persistent
        ``False`` for a throw-away session (clean start, no expiry).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        on_message: MessageHandler | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        status_topic: str | None = None,
        persistent: bool = True,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id or settings.client_id
        self._on_message = on_message
        self.subscriptions = tuple(subscriptions)
        self.status_topic = status_topic
        self.persistent = persistent
        self._on_connection_change = on_connection_change
        self.connected = asyncio.Event()
        self.connections = 0
        self.failed_attempts = 0
        self.protocol_version = MQTTv50 if settings.protocol != "3.1.1" else MQTTv311
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._client: Client | None = None
        self._closing = False
        self._paused = False
        self._read_gate = asyncio.Event()
        self._read_gate.set()
        self._generation = 0

    # -- lifecycle ------------------------------------------------------------------

    def _make_client(self) -> Client:
        properties: dict[str, Any] = {}
        persistent = self.persistent and not self.settings.clean_start
        if self.protocol_version == MQTTv50:
            properties["receive_maximum"] = self.settings.receive_maximum
            if persistent:
                properties["session_expiry_interval"] = self.settings.session_expiry_s
        will = None
        if self.status_topic:
            will = Message(self.status_topic, b"offline", qos=1, retain=True)
        client = Client(
            self.client_id,
            clean_session=not persistent,
            optimistic_acknowledgement=False,
            will_message=will,
            **properties,
        )
        if self.settings.username:
            client.set_auth_credentials(self.settings.username, self.settings.password)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": self._backoff.next()})
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        if self._on_message is not None:
            client.on_message = self._dispatch_qos0
            # QoS 1: take the packet id and acknowledge after processing, in bulk
            client._package_handler._handle_qos_1_publish_packet = self._dispatch_qos1
        return client

    def _dispatch_qos0(
        self, client: Client, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> None:
        assert self._on_message is not None
        self._on_message(topic, payload, qos, properties, None)

    def _dispatch_qos1(
        self, mid: int, payload: bytes, topic: str, properties: dict[str, Any]
    ) -> None:
        assert self._on_message is not None
        self._on_message(topic, payload, 1, properties, (self._generation << 16) | mid)

    def acknowledge(self, tokens: Sequence[int]) -> int:
        """Send the PUBACKs for ``tokens`` in one write; return how many were sent.

        Tokens from an earlier connection are skipped: the broker redelivers those.
        """
        protocol = getattr(getattr(self._client, "_connection", None), "_protocol", None)
        if protocol is None or not self.connected.is_set() or not tokens:
            return 0
        data = puback_packets(tokens, self._generation)
        if data:
            protocol.write_data(data)
        return len(data) // 4

    async def _connect_once(self) -> None:
        client = self._make_client()
        self._client = client
        await client.connect(
            self.settings.host,
            self.settings.port,
            ssl=tls_context(self.settings),
            keepalive=self.settings.keepalive_s,
            version=self.protocol_version,
        )

    async def connect(self) -> None:
        """Connect, retrying with back-off until connected (cancel to give up)."""
        while True:
            try:
                await self._connect_once()
                return
            except MQTTConnectError as exc:
                code = getattr(exc, "_code", None)
                if (
                    code in _PROTOCOL_REFUSED
                    and self.settings.protocol == "auto"
                    and self.protocol_version == MQTTv50
                ):
                    log.info("broker refused MQTT 5; falling back to MQTT 3.1.1")
                    self.protocol_version = MQTTv311
                    continue
                if code in (4, 5, 134, 135):
                    raise
                delay = self._backoff.next()
                log.warning("MQTT connect refused (%s); retrying in %.1f s", exc, delay)
            except (OSError, TimeoutError) as exc:
                delay = self._backoff.next()
                log.warning(
                    "cannot reach MQTT broker %s:%d (%s); retrying in %.1f s",
                    self.settings.host, self.settings.port, exc, delay,
                )  # fmt: skip
            self.failed_attempts += 1
            await self._discard_client()
            await asyncio.sleep(delay)

    async def _discard_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.stop_reconnect()
                await client.disconnect()
            except Exception:  # a half-open client: nothing more to release
                log.debug("discarding a failed MQTT client", exc_info=True)

    async def __aenter__(self) -> MqttClient:
        if self._client is not None:
            raise RuntimeError("MqttClient is already connected (not re-entrant)")
        self._closing = False
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_acknowledged(self, timeout: float) -> bool:
        """Wait (bounded) until the broker has acknowledged every QoS 1 message we sent."""
        storage = getattr(self._client, "_persistent_storage", None)
        if storage is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while storage.get_all() and self.connected.is_set():
            if loop.time() > deadline:
                log.warning("%d published messages not acknowledged", len(storage.get_all()))
                return False
            await asyncio.sleep(0.01)
        return not storage.get_all()

    async def close(self) -> None:
        """Publish ``offline`` (when a status topic is set), wait for the broker to
        acknowledge what was published (bounded by ``mqtt.close_timeout_s``), disconnect."""
        self._closing = True
        client = self._client
        if client is None:
            return
        if self.status_topic and self.connected.is_set():
            client.publish(self.status_topic, b"offline", qos=1, retain=True)
        # read again (intake is closed: what arrives now is not acknowledged and comes
        # back later) so the broker's acknowledgements of what we sent get in
        self.resume_reading()
        await self.wait_acknowledged(self.settings.close_timeout_s)
        try:
            client.stop_reconnect()
            await asyncio.wait_for(client.disconnect(), 5.0)
        except (TimeoutError, OSError, AttributeError):
            log.debug("MQTT disconnect did not complete cleanly", exc_info=True)
        self._client = None
        self.connected.clear()

    # -- callbacks ------------------------------------------------------------------

    def _handle_connect(self, client: Client, flags: int, rc: int, properties: Any) -> None:
        self.connections += 1
        self._generation += 1
        self._backoff.reset()
        client.set_config({"reconnect_delay": self._backoff.next()})
        for topic_filter, qos in self.subscriptions:
            client.subscribe(topic_filter, qos=qos)
        if self.status_topic:
            client.publish(self.status_topic, b"online", qos=1, retain=True)
        self._gate_reads()
        if self._on_message is not None:
            self._take_publishes()
        if self._paused:
            self._set_reading(False)
        self.connected.set()
        log.info(
            "connected to MQTT broker %s:%d (session present: %s)",
            self.settings.host, self.settings.port, bool(flags),
        )  # fmt: skip
        if self._on_connection_change:
            self._on_connection_change(True)

    def _handle_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        self.connected.clear()
        if self._on_connection_change:
            self._on_connection_change(False)
        if self._closing:
            return
        delay = self._backoff.next()
        client.set_config({"reconnect_delay": delay})
        log.warning("lost the MQTT broker connection; reconnecting in %.1f s", delay)

    # -- use ------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish; QoS 1 messages are kept and re-sent by gmqtt across reconnects."""
        if self._client is None:
            raise RuntimeError("MqttClient is not connected")
        self._client.publish(topic, payload, qos=qos, retain=retain)

    def _transport(self) -> asyncio.Transport | None:
        connection = getattr(self._client, "_connection", None)
        return getattr(connection, "_transport", None)

    def _gate_reads(self) -> None:
        """Make the client's socket read loop wait while intake is paused.

        Pausing the transport alone is not enough: gmqtt reads through an asyncio
        StreamReader, whose own flow control resumes the transport as soon as its buffer
        drains. With the read loop held at this gate, nothing more is parsed (so nothing
        more reaches the intake) than the one read of at most 64 KiB already in progress;
        the StreamReader then pauses the socket itself once its buffer is full.
        """
        protocol = getattr(getattr(self._client, "_connection", None), "_protocol", None)
        if protocol is None or getattr(protocol, "_fleetwatch_gated", False):
            return
        read = protocol.read
        gate = self._read_gate

        async def gated_read(n: int = -1) -> bytes:
            if not gate.is_set():
                await gate.wait()
            data: bytes = await read(n)
            return data

        protocol.read = gated_read
        protocol._fleetwatch_gated = True

    def _take_publishes(self) -> None:
        """Frame the connection's inbound bytes here, and hand each QoS 1 PUBLISH with a
        topic name and no properties straight to the message handler.

        gmqtt's reader makes a package object per packet, looks its handler up, logs it at
        DEBUG, parses its properties into a dictionary and checks the connection for each
        one; for the bulk of a drain (QoS 1 telemetry without properties) none of that
        changes the outcome. What this reader does not take is passed, packet by packet
        and in order, to gmqtt's own handling (``put_package``). Malformed lengths, and
        buffers read by a connection that is no longer the client's, go to gmqtt's reader.
        """
        client = self._client
        connection: Any = getattr(client, "_connection", None)
        protocol = getattr(connection, "_protocol", None)
        handler = getattr(client, "_package_handler", None)
        if (
            protocol is None
            or handler is None
            or getattr(protocol, "_fleetwatch_reader", False)
            or not hasattr(protocol, "_read_packet")
            or not hasattr(connection, "put_package")
        ):
            return  # gmqtt reads everything itself
        assert self._on_message is not None
        on_message = self._on_message
        read_packets = protocol._read_packet
        put_package = connection.put_package
        has_properties = protocol.proto_ver >= MQTTv50
        monotonic = time.monotonic

        def take(data: bytes) -> int:
            if handler.current_connection is not connection:
                parsed: int = read_packets(data)
                return parsed
            connection._last_data_in = monotonic()
            generation = self._generation << 16
            size = len(data)
            position = 0
            while size - position >= 2:
                # the remaining length: one to four bytes of seven bits each
                start = position + 1
                length = shift = 0
                while True:
                    if start >= size:
                        return position  # the header is not complete yet
                    byte = data[start]
                    start += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 21:  # malformed: gmqtt decides what happens
                        rest: int = read_packets(data[position:])
                        return -1 if rest < 0 else position + rest
                end = start + length
                if end > size:
                    return position  # the packet is not complete yet
                command = data[position]
                position = end
                if command & 0xF6 == 0x32 and length >= 5:  # PUBLISH, QoS 1
                    topic_end = start + 2 + ((data[start] << 8) | data[start + 1])
                    payload_at = topic_end + 2 + has_properties
                    if (
                        topic_end > start + 2
                        and payload_at <= end
                        and not (has_properties and data[payload_at - 1])
                    ):
                        try:
                            topic = data[start + 2 : topic_end].decode()
                        except UnicodeDecodeError:
                            pass  # gmqtt hands such a topic over as bytes
                        else:
                            mid = (data[topic_end] << 8) | data[topic_end + 1]
                            properties = {"dup": (command & 0x08) >> 3, "retain": command & 1}
                            try:
                                on_message(
                                    topic, data[payload_at:end], 1, properties, generation | mid
                                )
                            except Exception:  # as gmqtt does: log, go on with the next
                                log.exception("error handling an MQTT message on %s", topic)
                            continue
                put_package(Package(command, data[start:end]))
                generation = self._generation << 16  # a CONNACK may have begun a new one
            handler._last_msg_in = monotonic()
            return position

        protocol._read_packet = take
        protocol._fleetwatch_reader = True

    def _set_reading(self, reading: bool) -> None:
        if reading:
            self._read_gate.set()
        else:
            self._read_gate.clear()
        transport = self._transport()
        if transport is None or transport.is_closing():
            return
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def pause_reading(self) -> None:
        """Stop reading from the socket (backpressure); idempotent."""
        if not self._paused:
            self._paused = True
            self._set_reading(False)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._set_reading(True)
