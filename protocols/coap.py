"""The CoAP transport: an aiocoap server that takes device telemetry over UDP.

A device sends one payload per request, ``POST`` (or ``PUT``) to the path the ``[coap]
path`` template names (``/t/{device_id}`` by default; ``{site}``, ``{zone}``, ``{gateway}``
and ``{kind}`` segments work as in MQTT topic templates). The Content-Format option picks
the codec:

=============  ==============================  =============================
content format  media type                       codec
=============  ==============================  =============================
50              ``application/json``             JSON payload schema
60              ``application/cbor``             the same schema in CBOR
110             ``application/senml+json``       SenML JSON
112             ``application/senml+cbor``       SenML CBOR
65100           ``application/x-protobuf``       ``protocols/proto/telemetry.proto``
=============  ==============================  =============================

(65100 is FleetWatch's own number, from the experimental range 65000-65535.)

Each request becomes a :class:`~service.records.RawMessage` (protocol ``coap``, the request
path as its topic, the media type as its content type) that goes through the same
:class:`~service.intake.pipeline.Intake` as MQTT messages: the same codecs, normalization, duplicate
window, journal and detectors; the pipeline routes it with the path template. The reply is
sent only once the pipeline has processed the message and, with the state store on,
journaled it:

- 2.04 Changed: readings accepted (or all of them duplicates of readings already taken); when
  some records of a batch were refused the payload says which reasons;
- 4.00 Bad Request: nothing could be read; the diagnostic payload gives the reason
  (``malformed_json``, ``invalid_timestamp`` ...), as the dead letter does;
- 4.03 Forbidden: the device or site is not in ``ingest.allowed_devices``/``allowed_sites``;
- 4.04 Not Found / 4.05 Method Not Allowed: a path the template does not match, a method
  other than POST or PUT (not dead-lettered: no telemetry was offered);
- 4.13 Request Entity Too Large, with Size1 giving the limit: the payload (or the Size1 a
  block-wise upload announces) exceeds ``coap.max_payload_bytes`` (and
  ``ingest.max_payload_bytes``); refused at the first block that crosses it;
- 4.15 Unsupported Content-Format: no Content-Format option, or one FleetWatch has no codec
  for;
- 5.03 Service Unavailable, with Max-Age ``coap.retry_after_s``: the intake queue is full
  (backpressure), FleetWatch is shutting down, or the message could not be journaled;
  nothing was taken, the device should send it again later.

Bad input (4.00, 4.13, 4.15 and pipeline refusals) is counted and dead-lettered exactly like
bad MQTT input: ``fleetwatch_decode_errors_total{reason}``,
``fleetwatch_readings_total{protocol="coap",result="rejected"}`` and a dead letter with
``"protocol": "coap"`` and the request path as its topic. Every reply is counted by method
and code through ``on_response`` (the daemon feeds ``fleetwatch_coap_requests_total``).

Block-wise uploads (RFC 7959 Block1) are reassembled by aiocoap's block spool; FleetWatch
checks each block against the size limit before it is stored. Confirmable requests get
aiocoap's message-layer de-duplication; retransmitted readings that still reach the
pipeline are dropped by its duplicate window.

Logging: a refused message is logged at WARNING by the pipeline (with its dead letter);
replies are logged at DEBUG; a failure of FleetWatch's own code while answering is ERROR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

import aiocoap
from aiocoap.blockwise import Block1Spool, ContinueException, IncompleteException
from aiocoap.numbers.codes import Code

from config.settings import CoapSettings
from protocols.codecs.protobuf import COAP_CONTENT_FORMAT as PROTOBUF_CONTENT_FORMAT
from service.errors import DecodeError, StateError
from service.intake.topics import TopicRouter
from service.records import MessageOutcome, RawMessage

log = logging.getLogger(__name__)

CONTENT_FORMATS: dict[int, str] = {
    50: "application/json",
    60: "application/cbor",
    110: "application/senml+json",
    112: "application/senml+cbor",
    PROTOBUF_CONTENT_FORMAT: "application/x-protobuf",
}
"""CoAP content format number -> the media type the codecs know it by."""

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "iPATCH"})
_TAKES_TELEMETRY = (Code.POST, Code.PUT)
_DIAGNOSTIC_BYTES = 256

# pipeline refusal reason -> reply code (anything else is 4.00 Bad Request)
_REASON_CODES: dict[str, Any] = {
    "too_large": Code.REQUEST_ENTITY_TOO_LARGE,
    "unsupported_content_type": Code.UNSUPPORTED_CONTENT_FORMAT,
    "not_allowed": Code.FORBIDDEN,
    "unknown_topic": Code.NOT_FOUND,
    "unknown_kind": Code.NOT_FOUND,
    "internal_error": Code.INTERNAL_SERVER_ERROR,
}

ResponseHook = Callable[[str, str], None]
"""``(method, code)`` for every reply, e.g. ``("POST", "2.04")``."""


class CoapIntake(Protocol):
    """What the CoAP server needs of the pipeline's intake (:class:`service.intake.pipeline.Intake`)."""

    @property
    def full(self) -> bool: ...

    async def submit(self, message: RawMessage, *, wait: bool) -> MessageOutcome | None: ...

    def reject(self, message: RawMessage, error: DecodeError) -> None: ...


def diagnostic(text: str) -> bytes:
    """A diagnostic payload: UTF-8 text, cut to a size that fits one datagram.

    >>> diagnostic("malformed_json: " + "x" * 1000)[-3:], len(diagnostic("é" * 300)) <= 256
    (b'xxx', True)
    """
    return text.encode("utf-8")[:_DIAGNOSTIC_BYTES].decode("utf-8", "ignore").encode("utf-8")


class TelemetryResource:
    """The server site: answers every request the CoAP server receives.

    Parameters
    ----------
    settings
        The ``[coap]`` settings (path template, size limit, Max-Age under backpressure).
    intake
        Where messages go; answers come from what it made of them.
    clock
        Receive times.
    max_payload
        The payload limit in bytes (the daemon passes the smaller of ``coap`` and
        ``ingest.max_payload_bytes``); ``settings.max_payload_bytes`` by default.
    on_response
        Called with ``(method, code)`` for every reply.
    """

    def __init__(
        self,
        settings: CoapSettings,
        intake: CoapIntake,
        *,
        clock: Callable[[], float] = time.time,
        max_payload: int | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.clock = clock
        self.max_payload = settings.max_payload_bytes if max_payload is None else max_payload
        self.on_response = on_response
        self.router = TopicRouter([settings.path], setting="coap.path")
        self._block1 = Block1Spool()

    # -- aiocoap's server-site interface --------------------------------------------------

    async def render_to_pipe(self, pipe: Any) -> None:
        """Answer the request of ``pipe`` with exactly one response."""
        request = pipe.request
        try:
            response = await self.respond(request)
        except Exception:
            log.exception("internal error answering a CoAP request")
            response = aiocoap.Message(
                code=Code.INTERNAL_SERVER_ERROR, payload=diagnostic("internal_error")
            )
        method = request.code.name if request.code.name in _METHODS else "other"
        log.debug("CoAP %s /%s -> %s", method, "/".join(request.opt.uri_path), response.code)
        if self.on_response is not None:
            self.on_response(method, str(response.code.dotted))
        pipe.add_response(response, is_last=True)

    # -- the answer -----------------------------------------------------------------------

    async def respond(self, request: Any) -> Any:
        """The response to one request (an ``aiocoap.Message``)."""
        segments: tuple[str, ...] = tuple(request.opt.uri_path)
        topic = "/".join(segments)
        if not segments or any("/" in segment for segment in segments):
            return _reply(Code.NOT_FOUND, f"no resource at /{topic}")
        try:
            self.router.match(topic)
        except DecodeError:
            return _reply(Code.NOT_FOUND, f"no resource at /{topic}")
        if request.code not in _TAKES_TELEMETRY:
            return _reply(Code.METHOD_NOT_ALLOWED, "telemetry is taken by POST or PUT")

        received_at = self.clock()
        number = request.opt.content_format
        media_type = None if number is None else CONTENT_FORMATS.get(int(number))
        if media_type is None:
            detail = (
                "the request has no Content-Format option"
                if number is None
                else f"no codec for CoAP content format {int(number)}"
            )
            return self._refuse(
                RawMessage(topic, bytes(request.payload), received_at, "coap", None),
                DecodeError("unsupported_content_type", detail),
                Code.UNSUPPORTED_CONTENT_FORMAT,
            )

        block1 = request.opt.block1
        announced = request.opt.size1 or 0
        seen = len(request.payload) + (block1.start if block1 is not None else 0)
        if max(announced, seen) > self.max_payload:
            return self._refuse(
                RawMessage(topic, bytes(request.payload), received_at, "coap", media_type),
                DecodeError(
                    "too_large",
                    f"payload of {max(announced, seen)} bytes exceeds {self.max_payload}",
                ),
                Code.REQUEST_ENTITY_TOO_LARGE,
            )
        if block1 is not None:
            try:
                request = self._block1.feed_and_take(request)
            except (ContinueException, IncompleteException) as exc:
                return exc.to_message()

        message = RawMessage(topic, bytes(request.payload), received_at, "coap", media_type)
        response = await self._submit(message)
        if block1 is not None and response.code.is_successful():
            response.opt.block1 = request.opt.block1
        return response

    async def _submit(self, message: RawMessage) -> Any:
        if self.intake.full:
            return self._unavailable("intake queue full; send again later")
        try:
            outcome = await self.intake.submit(message, wait=True)
        except RuntimeError:
            return self._unavailable("shutting down; send again later")
        except StateError:
            return self._unavailable("could not be stored; send again later")
        if outcome is None:
            return _reply(Code.INTERNAL_SERVER_ERROR, "internal_error")
        if outcome.rejected:
            first = outcome.errors[0]
            code = _REASON_CODES.get(first.reason, Code.BAD_REQUEST)
            response = _reply(code, f"{first.reason}: {first.detail}")
            if code == Code.REQUEST_ENTITY_TOO_LARGE:
                response.opt.size1 = self.max_payload
            return response
        if outcome.errors:
            reasons = sorted({error.reason for error in outcome.errors})
            return _reply(
                Code.CHANGED,
                f"accepted {outcome.accepted}, rejected {len(outcome.errors)}: "
                + ", ".join(reasons),
            )
        return aiocoap.Message(code=Code.CHANGED)

    def _refuse(self, message: RawMessage, error: DecodeError, code: Any) -> Any:
        """Count and dead-letter ``message`` as the pipeline would, and answer ``code``."""
        self.intake.reject(message, error)
        response = _reply(code, f"{error.reason}: {error.detail}")
        if code == Code.REQUEST_ENTITY_TOO_LARGE:
            response.opt.size1 = self.max_payload
        return response

    def _unavailable(self, text: str) -> Any:
        response = _reply(Code.SERVICE_UNAVAILABLE, text)
        response.opt.max_age = self.settings.retry_after_s
        return response


def _reply(code: Any, text: str) -> Any:
    return aiocoap.Message(code=code, payload=diagnostic(text))


class _Dispatch:
    """The server site when other resources share the socket: a request goes to the
    resource its first path segment names, anything else to the telemetry resource."""

    def __init__(self, default: TelemetryResource, sites: Mapping[str, Any]) -> None:
        self.default = default
        self.sites = dict(sites)

    async def render_to_pipe(self, pipe: Any) -> None:
        segments = pipe.request.opt.uri_path
        site = self.sites.get(segments[0]) if segments else None
        await (site or self.default).render_to_pipe(pipe)


def _bound_port(context: Any) -> int | None:
    """The UDP port aiocoap's server socket is bound to (for ``port = 0``)."""
    for interface in getattr(context, "request_interfaces", ()):
        messages = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        transport = getattr(messages, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            return int(sock.getsockname()[1])
    return None


class CoapServer:
    """The CoAP server's lifetime (async context manager, reusable, not re-entrant).

    Binds UDP on ``settings.host``/``settings.port`` (only UDP: no CoAP over TCP,
    WebSockets or DTLS) and answers with a :class:`TelemetryResource`.

    Parameters
    ----------
    settings
        The ``[coap]`` settings.
    intake
        Where messages go (:class:`service.intake.pipeline.Intake`).
    clock, max_payload, on_response
        As for :class:`TelemetryResource`.
    sites
        Other resources on the same socket, by first path segment (the LwM2M server's
        ``rd`` and ``dp``); they take precedence over the path template.
    """

    def __init__(
        self,
        settings: CoapSettings,
        intake: CoapIntake,
        *,
        clock: Callable[[], float] = time.time,
        max_payload: int | None = None,
        on_response: ResponseHook | None = None,
        sites: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.resource = TelemetryResource(
            settings, intake, clock=clock, max_payload=max_payload, on_response=on_response
        )
        self.site: Any = _Dispatch(self.resource, sites) if sites else self.resource
        self._context: Any = None
        self.port: int | None = None

    async def __aenter__(self) -> CoapServer:
        if self._context is not None:
            raise RuntimeError("CoapServer is already running (not re-entrant)")
        settings = self.settings
        try:
            self._context = await aiocoap.Context.create_server_context(
                self.site, bind=(settings.host, settings.port), transports=["udp6"]
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot bind CoAP to {settings.host}:{settings.port}: {exc}"
            ) from exc
        self.port = settings.port or _bound_port(self._context)
        log.info("serving CoAP on udp %s:%s /%s", settings.host, self.port, settings.path)
        return self

    @property
    def context(self) -> Any:
        """The running aiocoap context (requests to devices are sent through it)."""
        if self._context is None:
            raise RuntimeError("CoapServer is not running")
        return self._context

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop serving and release the socket (idempotent)."""
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()
        self.port = None
