"""The LwM2M server: registration interface, observations and Send on the CoAP port.

LwM2M shares the CoAP server's UDP socket (``[coap] host``/``port``), as real deployments
do: ``/rd`` and ``/dp`` are answered here, everything else by the CoAP telemetry resource
(:mod:`protocols.coap`). Requests FleetWatch sends to devices leave from the same socket, so
they pass the NAT bindings the devices' own requests opened.

Registration interface (OMA LwM2M 1.1 Core, section 6.2):

- ``POST /rd?ep=<endpoint>&lt=<lifetime>&lwm2m=<version>&b=<binding>`` with a CoRE
  link-format body (``</3/0>,</4/0>,</3303/0>``): 2.01 Created, Location-Path
  ``rd/<id>``. A second registration of the same endpoint replaces the first.
- ``POST /rd/<id>`` (Update; optional ``lt``, ``b``, ``sms``, ``Q`` and a new link body):
  2.04 Changed; 4.04 Not Found for an unknown id.
- ``DELETE /rd/<id>`` (De-register): 2.02 Deleted.
- A registration not renewed within its lifetime plus ``lwm2m.lifetime_grace_s`` expires:
  its observations end and the device falls silent to the pipeline, which is how the
  connectivity detector sees a device go offline.

Every Register and Update is a contact with the device: it goes through the pipeline as a
status message ``{"status": "online"}`` (topic ``lwm2m/<endpoint>/status``), so a queue-mode
device (``b=UQ``, or ``Q``) that wakes up to send its Update is heard, not taken for offline.

After a registration (and after an Update, if observations are missing) FleetWatch
observes the objects of ``lwm2m.observe`` the device offers: the whole object first, its
instances when the object cannot be observed, and single mapped resources last, each after
a Write-Attributes (``PUT ?pmin=..&pmax=..``, ``lwm2m.pmin_s``/``pmax_s``) unless
``lwm2m.write_attributes`` is off.
Every request it sends carries an Accept option (``lwm2m.accept``, or the format the device's
root link names; on 4.06 Not Acceptable the next of TLV, SenML CBOR, SenML JSON, LwM2M JSON).
Queue-mode devices get requests only right after they contacted the server.

Notifications and Send (``POST /dp``, SenML JSON or CBOR) are decoded
(:mod:`protocols.lwm2m.content`), mapped by the object model
(:mod:`protocols.lwm2m.objects`) and handed to the pipeline as FleetWatch JSON records on
``lwm2m/<endpoint>/telemetry`` (firmware update transitions on ``lwm2m/<endpoint>/firmware``),
protocol ``lwm2m``: the same intake, normalization, duplicate window, journal and detectors
as MQTT and CoAP. A value without device time is stamped with its receive time, kept
strictly increasing per device so two notifications of one instant are not duplicates.

Bad input is counted and dead-lettered like bad MQTT or CoAP input (protocol ``lwm2m``):
a malformed registration is answered 4.00 (4.15 for a body that is not link format, 4.03
for an endpoint outside ``ingest.allowed_devices``), an undecodable Send 4.00, and an
undecodable notification (which has no reply of its own) is dead-lettered while the
observation goes on. Registrations are written to the state store on every change and
reloaded at start-up; observations of devices not in queue mode are then re-established.

Logging: expiries and restored registrations at INFO; registrations, de-registrations,
requests and notifications at DEBUG (a fleet re-registering after a power cut would flood
INFO); refused input at WARNING (by the pipeline); failures of FleetWatch's code at ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiocoap
import orjson
from aiocoap.blockwise import Block1Spool, ContinueException, IncompleteException
from aiocoap.numbers.codes import Code

from config.settings import Lwm2mSettings
from protocols.coap import CoapIntake, ResponseHook, diagnostic
from protocols.lwm2m import TOPIC_TEMPLATE
from protocols.lwm2m.content import (
    LINK_FORMAT,
    LWM2M_JSON,
    MEDIA_TYPES,
    SENML_CBOR,
    SENML_JSON,
    TLV,
    decode,
)
from protocols.lwm2m.objects import RESOURCES, ResourcePath, Role, Translation, translate
from protocols.lwm2m.registry import (
    MemoryStorage,
    Registration,
    RegistrationStorage,
    Registry,
    parse_query,
)
from service.errors import DecodeError, StateError
from service.records import MessageOutcome, RawMessage

log = logging.getLogger(__name__)

REGISTRATION_PATH = "rd"
SEND_PATH = "dp"
FALLBACK_FORMATS = (TLV, SENML_CBOR, SENML_JSON, LWM2M_JSON)
_STAMP_STEP = 0.001
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "iPATCH"})

EventHook = Callable[[str, int], None]
"""``(event, registrations)``: ``registered``, ``updated``, ``replaced``, ``deregistered``,
``expired``, ``restored``, ``notification``, ``notification_rejected`` or ``send``, and how
many registrations there are now."""


@dataclass(eq=False)
class _Session:
    """What the server holds for one live registration (mutable, private)."""

    registration: Registration
    observations: dict[ResourcePath, Any] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    establishing: asyncio.Task[Any] | None = None
    established: bool = False
    accept: int | None = None
    closed: bool = False


class Lwm2mResource:
    """The aiocoap site for ``/rd`` and ``/dp`` (one response per request)."""

    def __init__(self, server: Lwm2mServer) -> None:
        self.server = server

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        try:
            response = await self.server.respond(request)
        except Exception:
            log.exception("internal error answering an LwM2M request")
            response = aiocoap.Message(
                code=Code.INTERNAL_SERVER_ERROR, payload=diagnostic("internal_error")
            )
        method = request.code.name if request.code.name in _METHODS else "other"
        log.debug("LwM2M %s /%s -> %s", method, "/".join(request.opt.uri_path), response.code)
        if self.server.on_response is not None:
            self.server.on_response(method, str(response.code.dotted))
        pipe.add_response(response, is_last=True)


class Lwm2mServer:
    """The LwM2M server's lifetime (async context manager, reusable, not re-entrant).

    Parameters
    ----------
    settings
        The ``[lwm2m]`` settings.
    intake
        Where records go (:class:`service.intake.pipeline.Intake`).
    context
        Returns the running aiocoap context the CoAP server serves on (entered before this
        server); requests to devices are sent through it.
    storage
        Where registrations are kept (the daemon's :class:`service.state.store.StateStore`);
        in memory only when ``None``.
    clock
        Receive times and lifetimes.
    permits
        Whether an endpoint may register (``ingest.allowed_devices``); all when ``None``.
    on_response
        ``(method, code)`` for every reply to ``/rd`` and ``/dp``.
    on_event
        ``(event, registrations)`` for registration and notification events.
    max_payload
        The largest request payload taken (registration bodies, Send).
    new_id
        Makes registration ids.
    """

    def __init__(
        self,
        settings: Lwm2mSettings,
        intake: CoapIntake,
        *,
        context: Callable[[], Any],
        storage: RegistrationStorage | None = None,
        clock: Callable[[], float] = time.time,
        permits: Callable[[str], bool] | None = None,
        on_response: ResponseHook | None = None,
        on_event: EventHook | None = None,
        max_payload: int = 65_536,
        new_id: Callable[[], str] = lambda: secrets.token_hex(6),
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.context = context
        self.storage: RegistrationStorage = storage if storage is not None else MemoryStorage()
        self.clock = clock
        self.permits = permits
        self.on_response = on_response
        self.on_event = on_event
        self.max_payload = max_payload
        self.new_id = new_id
        self.resource = Lwm2mResource(self)
        self.registry = Registry(self.storage, grace_s=settings.lifetime_grace_s)
        self._sessions: dict[str, _Session] = {}
        self._stamps: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._block1 = Block1Spool()
        self._running = False
        self.requests_sent = 0

    @property
    def sites(self) -> Mapping[str, Any]:
        """The first path segments this server answers, for the CoAP server's dispatch."""
        return {REGISTRATION_PATH: self.resource, SEND_PATH: self.resource}

    # -- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> Lwm2mServer:
        if self._running:
            raise RuntimeError("Lwm2mServer is already running (not re-entrant)")
        self._running = True
        self.registry = Registry(self.storage, grace_s=self.settings.lifetime_grace_s)
        loaded = self.registry.load()
        for registration in loaded:
            session = self._sessions[registration.id] = _Session(registration)
            if not registration.queue:
                self._start_observing(session)
        if loaded:
            log.info(
                "restored %d LwM2M registrations (%d in queue mode wait for their next update)",
                len(loaded), sum(1 for r in loaded if r.queue),
            )  # fmt: skip
        self._spawn(self._sweeper(), "fleetwatch-lwm2m-sweeper")
        if loaded:
            self._event("restored")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop observing and sweeping (idempotent); registrations stay stored."""
        self._running = False
        for registration_id in list(self._sessions):
            self._end_session(registration_id)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _event(self, event: str) -> None:
        if self.on_event is not None:
            self.on_event(event, len(self.registry))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            self.sweep(self.clock())

    def sweep(self, now: float) -> list[Registration]:
        """End the registrations whose lifetime (plus grace) is over at ``now``."""
        try:
            gone = list(self.registry.expired(now))
        except StateError:
            log.exception("could not remove expired LwM2M registrations")
            return []
        for registration in gone:
            self._end_session(registration.id)
            log.info(
                "LwM2M registration of %s expired (lifetime %d s, last update %.0f s ago)",
                registration.endpoint, registration.lifetime, now - registration.updated_at,
            )  # fmt: skip
            self._event("expired")
        return gone

    def _end_session(self, registration_id: str) -> None:
        session = self._sessions.pop(registration_id, None)
        if session is None:
            return
        session.closed = True
        for request in session.observations.values():
            _cancel(request)
        session.observations.clear()
        for task in list(session.tasks):
            task.cancel()
        if session.establishing is not None:
            session.establishing.cancel()

    # -- requests from devices --------------------------------------------------------------

    async def respond(self, request: Any) -> Any:
        """The response to one request on ``/rd`` or ``/dp``."""
        segments = tuple(request.opt.uri_path)
        code = request.code
        if segments[:1] == (REGISTRATION_PATH,):
            if len(segments) == 1:
                if code != Code.POST:
                    return _reply(Code.METHOD_NOT_ALLOWED, "register with POST /rd")
                return await self._with_body(request, self._register)
            if len(segments) == 2:
                if code == Code.POST:
                    return await self._with_body(request, self._update)
                if code == Code.DELETE:
                    return self._deregister(segments[1])
                return _reply(Code.METHOD_NOT_ALLOWED, "update with POST, de-register with DELETE")
        elif segments == (SEND_PATH,):
            if code != Code.POST:
                return _reply(Code.METHOD_NOT_ALLOWED, "send with POST /dp")
            return await self._with_body(request, self._send)
        return _reply(Code.NOT_FOUND, f"no resource at /{'/'.join(segments)}")

    async def _with_body(
        self, request: Any, handler: Callable[[Any], Coroutine[Any, Any, Any]]
    ) -> Any:
        """Reassemble a block-wise body (checking the size limit), then handle the request."""
        block1 = request.opt.block1
        seen = len(request.payload) + (block1.start if block1 is not None else 0)
        if max(request.opt.size1 or 0, seen) > self.max_payload:
            error = DecodeError(
                "too_large", f"payload of {max(request.opt.size1 or 0, seen)} bytes exceeds "
                f"{self.max_payload}"
            )  # fmt: skip
            response = self._refuse(request, self.clock(), error, Code.REQUEST_ENTITY_TOO_LARGE)
            response.opt.size1 = self.max_payload
            return response
        if block1 is not None:
            try:
                request = self._block1.feed_and_take(request)
            except (ContinueException, IncompleteException) as exc:
                return exc.to_message()
        response = await handler(request)
        if block1 is not None and response.code.is_successful():
            response.opt.block1 = request.opt.block1
        return response

    def _refuse(
        self, request: Any, received: float, error: DecodeError, code: Any, topic: str = ""
    ) -> Any:
        """Count and dead-letter a refused request, answer ``code`` with a diagnostic."""
        where = topic or "/".join(request.opt.uri_path)
        query = "&".join(request.opt.uri_query)
        number = request.opt.content_format
        media = MEDIA_TYPES.get(int(number)) if number is not None else None
        message = RawMessage(
            (where + ("?" + query if query else ""))[:512],
            bytes(request.payload),
            received,
            "lwm2m",
            media or ("application/link-format" if number == LINK_FORMAT else None),
        )
        self.intake.reject(message, error)
        return _reply(code, f"{error.reason}: {error.detail}")

    def _unavailable(self, text: str) -> Any:
        response = _reply(Code.SERVICE_UNAVAILABLE, text)
        response.opt.max_age = self.settings.retry_after_s
        return response

    @staticmethod
    def _body(request: Any) -> str:
        number = request.opt.content_format
        if number is not None and int(number) != LINK_FORMAT:
            raise DecodeError(
                "unsupported_content_type",
                f"a registration body is link format (40), not content format {int(number)}",
            )
        try:
            return bytes(request.payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(
                "malformed_registration", f"the link-format body is not UTF-8: {exc.reason}"
            ) from exc

    async def _register(self, request: Any) -> Any:
        received = self.clock()
        try:
            query = parse_query(request.opt.uri_query)
            registration = Registration.create(
                self.new_id(),
                query,
                self._body(request),
                request.remote.hostinfo,
                now=received,
                default_lifetime=self.settings.default_lifetime_s,
            )
        except DecodeError as exc:
            code = (
                Code.UNSUPPORTED_CONTENT_FORMAT
                if exc.reason == "unsupported_content_type"
                else Code.BAD_REQUEST
            )
            return self._refuse(request, received, exc, code)
        if self.permits is not None and not self.permits(registration.endpoint):
            error = DecodeError(
                "not_allowed", "endpoint is not in ingest.allowed_devices",
                device_id=registration.endpoint,
            )  # fmt: skip
            return self._refuse(request, received, error, Code.FORBIDDEN)
        try:
            previous = self.registry.add(registration)
        except StateError:
            log.exception("could not store the registration of %s", registration.endpoint)
            return self._unavailable("registration could not be stored; register again later")
        if previous is not None:
            self._end_session(previous.id)
            self._event("replaced")
        session = self._sessions[registration.id] = _Session(registration)
        log.debug(
            "LwM2M %s registered as /rd/%s (lifetime %d s, binding %s, LwM2M %s, %d objects)",
            registration.endpoint, registration.id, registration.lifetime, registration.binding,
            registration.version, len(registration.objects()),
        )  # fmt: skip
        self._event("registered")
        try:
            await self._status(registration, received)
        except RuntimeError:
            return self._unavailable("shutting down; register again later")
        response = aiocoap.Message(code=Code.CREATED)
        response.opt.location_path = (REGISTRATION_PATH, registration.id)
        self._start_observing(session)
        return response

    async def _update(self, request: Any) -> Any:
        received = self.clock()
        registration_id = request.opt.uri_path[1]
        registration = self.registry.get(registration_id)
        session = self._sessions.get(registration_id)
        if registration is None or session is None:
            return _reply(Code.NOT_FOUND, f"no registration /rd/{registration_id}")
        try:
            query = parse_query(request.opt.uri_query)
            body = self._body(request) if request.payload else None
            updated = registration.updated(query, body, request.remote.hostinfo, now=received)
        except DecodeError as exc:
            exc.device_id = registration.endpoint
            code = (
                Code.UNSUPPORTED_CONTENT_FORMAT
                if exc.reason == "unsupported_content_type"
                else Code.BAD_REQUEST
            )
            return self._refuse(request, received, exc, code)
        try:
            self.registry.put(updated)
        except StateError:
            log.exception("could not store the update of %s", registration.endpoint)
            return self._unavailable("update could not be stored; update again later")
        session.registration = updated
        if updated.links != registration.links or updated.root != registration.root:
            for request_ in session.observations.values():
                _cancel(request_)
            session.observations.clear()
            session.established = False
        self._event("updated")
        try:
            await self._status(updated, received)
        except RuntimeError:
            return self._unavailable("shutting down; update again later")
        if not session.established:
            self._start_observing(session)
        return aiocoap.Message(code=Code.CHANGED)

    def _deregister(self, registration_id: str) -> Any:
        try:
            registration = self.registry.remove(registration_id)
        except StateError:
            log.exception("could not remove registration /rd/%s", registration_id)
            return self._unavailable("de-registration could not be stored; try again later")
        if registration is None:
            return _reply(Code.NOT_FOUND, f"no registration /rd/{registration_id}")
        self._end_session(registration_id)
        log.debug("LwM2M %s de-registered", registration.endpoint)
        self._event("deregistered")
        return aiocoap.Message(code=Code.DELETED)

    async def _send(self, request: Any) -> Any:
        received = self.clock()
        registration = self.registry.by_address(request.remote.hostinfo)
        if registration is None:
            error = DecodeError("not_registered", "no LwM2M registration for this client")
            return self._refuse(request, received, error, Code.NOT_FOUND)
        endpoint = registration.endpoint
        topic = TOPIC_TEMPLATE.format(device_id=endpoint, kind="telemetry")
        number = request.opt.content_format
        if number is None or int(number) not in (SENML_JSON, SENML_CBOR, LWM2M_JSON):
            error = DecodeError(
                "unsupported_content_type",
                "Send takes SenML JSON (110), SenML CBOR (112) or LwM2M JSON (11543)",
                device_id=endpoint,
            )
            return self._refuse(request, received, error, Code.UNSUPPORTED_CONTENT_FORMAT, topic)
        try:
            values = decode(bytes(request.payload), int(number), (), received)
        except DecodeError as exc:
            exc.device_id = endpoint
            return self._refuse(request, received, exc, Code.BAD_REQUEST, topic)
        translation = self._translate(registration, values)
        if self.intake.full:
            return self._unavailable("intake queue full; send again later")
        try:
            outcome = await self._submit(endpoint, translation, received, wait=True)
        except RuntimeError:
            return self._unavailable("shutting down; send again later")
        except StateError:
            return self._unavailable("could not be stored; send again later")
        self._event("send")
        if outcome is not None and outcome.rejected:
            first = outcome.errors[0]
            return _reply(Code.BAD_REQUEST, f"{first.reason}: {first.detail}")
        return aiocoap.Message(code=Code.CHANGED)

    # -- into the pipeline ------------------------------------------------------------------

    def _stamp(self, endpoint: str, received: float) -> float:
        """The receive time, made strictly increasing per device."""
        last = self._stamps.get(endpoint, 0.0)
        stamp = received if received > last else last + _STAMP_STEP
        self._stamps[endpoint] = stamp
        return stamp

    async def _status(self, registration: Registration, received: float) -> None:
        record = {"ts": self._stamp(registration.endpoint, received), "status": "online"}
        topic = TOPIC_TEMPLATE.format(device_id=registration.endpoint, kind="status")
        await self.intake.submit(
            RawMessage(topic, orjson.dumps(record), received, "lwm2m", "application/json"),
            wait=False,
        )

    def _translate(self, registration: Registration, values: Any) -> Translation:
        memory = self.registry.memory_of(registration.endpoint)
        before = memory.state()
        translation = translate(values, memory)
        if memory.state() != before:
            current = self.registry.get(registration.id)
            if current is not None:
                try:
                    self.registry.put(current)
                except StateError:
                    log.exception("could not store the firmware state of %s", current.endpoint)
        return translation

    async def _submit(
        self, endpoint: str, translation: Translation, received: float, *, wait: bool
    ) -> MessageOutcome | None:
        outcome: MessageOutcome | None = None
        for kind, records in (("telemetry", translation.records), ("firmware", translation.events)):
            if not records:
                continue
            for record in records:
                if "ts" not in record:
                    record["ts"] = self._stamp(endpoint, received)
            message = RawMessage(
                TOPIC_TEMPLATE.format(device_id=endpoint, kind=kind),
                orjson.dumps(records),
                received,
                "lwm2m",
                "application/json",
            )
            result = await self.intake.submit(message, wait=wait and kind == "telemetry")
            if kind == "telemetry":
                outcome = result
        return outcome

    async def _ingest(self, session: _Session, path: ResourcePath, response: Any) -> None:
        """A Read or Observe response (or notification) of ``path`` into the pipeline."""
        registration = session.registration
        received = self.clock()
        payload = bytes(response.payload)
        if not payload:
            return
        number = response.opt.content_format
        try:
            values = decode(
                payload,
                None if number is None else int(number),
                path,
                received,
                max_records=self.settings.max_records,
            )
        except DecodeError as exc:
            exc.device_id = registration.endpoint
            media = MEDIA_TYPES.get(int(number)) if number is not None else None
            topic = TOPIC_TEMPLATE.format(device_id=registration.endpoint, kind="telemetry")
            self.intake.reject(RawMessage(topic, payload, received, "lwm2m", media), exc)
            self._event("notification_rejected")
            return
        translation = self._translate(registration, values)
        await self._submit(registration.endpoint, translation, received, wait=False)
        self._event("notification")

    # -- requests to devices ----------------------------------------------------------------

    def _start_observing(self, session: _Session) -> None:
        if session.closed or not self._running:
            return
        if session.establishing is not None and not session.establishing.done():
            return
        session.establishing = self._spawn(
            self._establish(session),
            f"fleetwatch-lwm2m-observe-{session.registration.endpoint}",
        )

    async def _establish(self, session: _Session) -> None:
        registration = session.registration
        try:
            offered = registration.objects()
            complete = True
            for object_id in self.settings.observe:
                if object_id in offered:
                    complete &= await self._observe_object(session, object_id, offered[object_id])
            session.established = complete
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("observing %s failed", registration.endpoint)

    async def _observe_object(
        self, session: _Session, object_id: int, instances: tuple[int, ...]
    ) -> bool:
        """Observe the broadest path the device allows; ``False`` if it did not answer."""
        outcome = await self._observe(session, (object_id,))
        if outcome is not False:
            return outcome is True
        resources = sorted(
            resource_id
            for (obj, resource_id), spec in RESOURCES.items()
            if obj == object_id and spec.role is not Role.IGNORE
        )
        for instance in instances or (0,):
            outcome = await self._observe(session, (object_id, instance))
            if outcome is None:
                return False
            if outcome:
                continue
            for resource_id in resources:
                if await self._observe(session, (object_id, instance, resource_id)) is None:
                    return False
        return True

    def _uri(self, registration: Registration, path: ResourcePath) -> str:
        return f"coap://{registration.address}{registration.root}/" + "/".join(map(str, path))

    def _formats(self, session: _Session) -> list[int]:
        preferred = [session.accept, session.registration.content_format, self.settings.accept]
        formats: list[int] = []
        for number in (*preferred, *FALLBACK_FORMATS):
            if number is not None and number in MEDIA_TYPES and number not in formats:
                formats.append(number)
        return formats

    async def _exchange(self, message: Any) -> tuple[Any, Any]:
        """Send ``message`` through the CoAP context; (response or None, request)."""
        self.requests_sent += 1
        request = self.context().request(message)
        try:
            response = await asyncio.wait_for(request.response, self.settings.request_timeout_s)
        except (TimeoutError, aiocoap.error.Error) as exc:
            log.debug("%s %s: no answer (%s)", message.code, message.get_request_uri(), exc)
            _cancel(request)
            return None, request
        return response, request

    async def _write_attributes(self, session: _Session, path: ResourcePath) -> bool | None:
        settings = self.settings
        if not settings.write_attributes:
            return True
        message = aiocoap.Message(code=Code.PUT, uri=self._uri(session.registration, path))
        message.opt.uri_query = (f"pmin={settings.pmin_s}", f"pmax={settings.pmax_s}")
        message.opt.accept = self._formats(session)[0]
        response, _ = await self._exchange(message)
        if response is None:
            return None
        return bool(response.code.is_successful())

    async def _observe(self, session: _Session, path: ResourcePath) -> bool | None:
        """Observe ``path``: ``True`` observed, ``False`` refused or not observable (the
        value read is taken anyway), ``None`` no answer (the device is away)."""
        if await self._write_attributes(session, path) is None:
            return None
        for number in self._formats(session):
            message = aiocoap.Message(
                code=Code.GET, uri=self._uri(session.registration, path), observe=0
            )
            message.opt.accept = number
            response, request = await self._exchange(message)
            if response is None:
                return None
            if response.code == Code.NOT_ACCEPTABLE:
                _cancel(request)
                continue
            if not response.code.is_successful():
                _cancel(request)
                return False
            session.accept = number
            await self._ingest(session, path, response)
            if response.opt.observe is None or session.closed:
                _cancel(request)
                return False
            previous = session.observations.pop(path, None)
            if previous is not None:
                _cancel(previous)
            session.observations[path] = request
            task = self._spawn(
                self._follow(session, path, request),
                f"fleetwatch-lwm2m-notify-{session.registration.endpoint}",
            )
            session.tasks.add(task)
            task.add_done_callback(session.tasks.discard)
            return True
        return False

    async def _follow(self, session: _Session, path: ResourcePath, request: Any) -> None:
        """Take the notifications of one observation until it ends."""
        try:
            async for notification in request.observation:
                if not notification.code.is_successful():
                    break
                await self._ingest(session, path, notification)
        except asyncio.CancelledError:
            raise
        except RuntimeError:
            log.debug("intake closed; observation of %s ends", session.registration.endpoint)
        except aiocoap.error.Error as exc:
            log.debug("observation of %s ended: %r", session.registration.endpoint, exc)
        except Exception:
            log.exception("taking notifications of %s failed", session.registration.endpoint)
        finally:
            if session.observations.get(path) is request:
                del session.observations[path]
                session.established = False


def _cancel(request: Any) -> None:
    observation = getattr(request, "observation", None)
    if observation is not None and not observation.cancelled:
        observation.cancel()


def _reply(code: Any, text: str) -> Any:
    return aiocoap.Message(code=code, payload=diagnostic(text))
