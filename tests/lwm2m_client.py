"""An LwM2M client simulator on aiocoap, for tests and benchmarks.

It binds its own UDP socket on loopback (an aiocoap server context, so that it answers the
server's requests on the port it registered from, as a real client does), registers,
answers Read and Observe of its objects in TLV, SenML JSON/CBOR, LwM2M JSON or plain text
(as the Accept option asks), takes Write-Attributes, sends notifications when a value
changes, updates, de-registers and uses Send (``POST /dp``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiocoap
import aiocoap.resource
import cbor2
import orjson
from aiocoap.numbers.codes import Code

from protocols.coap import _bound_port
from protocols.lwm2m import tlv
from protocols.lwm2m.content import LWM2M_JSON, SENML_CBOR, SENML_JSON, TEXT, TLV
from protocols.lwm2m.objects import ResourcePath, Value

ALL_FORMATS = frozenset({TLV, SENML_JSON, SENML_CBOR, LWM2M_JSON, TEXT})


@dataclass(frozen=True)
class Received:
    """A request the client received from the server."""

    method: str
    path: tuple[int, ...]
    query: tuple[str, ...]
    accept: int | None
    observe: bool


def _name(path: ResourcePath) -> str:
    return "/" + "/".join(map(str, path))


def encode_tlv(values: Mapping[ResourcePath, Value], prefix: ResourcePath) -> bytes:
    """The values under ``prefix`` as a TLV payload read from ``prefix``."""
    chosen = {p: v for p, v in values.items() if p[: len(prefix)] == prefix}

    def resources(obj: int, inst: int) -> list[bytes]:
        out: list[bytes] = []
        ids = sorted({p[2] for p in chosen if p[:2] == (obj, inst)})
        for rid in ids:
            multi = {
                p[3]: v for p, v in chosen.items() if p[:3] == (obj, inst, rid) and len(p) == 4
            }
            if multi:
                out.append(tlv.multiple(rid, multi))
            else:
                out.append(tlv.resource(rid, chosen[(obj, inst, rid)]))
        return out

    if len(prefix) == 1:
        instances = sorted({p[1] for p in chosen})
        return tlv.encode([tlv.instance(i, resources(prefix[0], i)) for i in instances])
    return tlv.encode(resources(prefix[0], prefix[1]))


def senml_records(
    values: Mapping[ResourcePath, Value], prefix: ResourcePath = (), base_time: float | None = None
) -> list[dict[str, Any]]:
    """SenML records (text labels) of the values under ``prefix``."""
    records: list[dict[str, Any]] = []
    for path, value in sorted(values.items()):
        if path[: len(prefix)] != prefix:
            continue
        record: dict[str, Any] = {"n": _name(path)}
        if isinstance(value, bool):
            record["vb"] = value
        elif isinstance(value, str):
            record["vs"] = value
        else:
            record["v"] = value
        records.append(record)
    if records and base_time is not None:
        records[0]["bt"] = base_time
    return records


def senml_cbor(records: list[dict[str, Any]]) -> bytes:
    labels = {"bn": -2, "bt": -3, "n": 0, "v": 2, "vs": 3, "vb": 4, "t": 6}
    return cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in records])


def lwm2m_json(values: Mapping[ResourcePath, Value], prefix: ResourcePath) -> bytes:
    entries: list[dict[str, Any]] = []
    for path, value in sorted(values.items()):
        if path[: len(prefix)] != prefix:
            continue
        entry: dict[str, Any] = {"n": "/".join(map(str, path[len(prefix) :]))}
        if isinstance(value, bool):
            entry["bv"] = value
        elif isinstance(value, str):
            entry["sv"] = value
        else:
            entry["v"] = value
        entries.append(entry)
    return orjson.dumps({"bn": _name(prefix) + "/", "e": entries})


class _Node(aiocoap.resource.Resource):  # type: ignore[misc]
    """One path of the client's object tree (object, instance or resource), not observable."""

    def __init__(self, client: Lwm2mClient, path: ResourcePath) -> None:
        super().__init__()
        self.client = client
        self.path = path

    async def render_get(self, request: Any) -> Any:
        accept = request.opt.accept
        self.client.received.append(
            Received("GET", self.path, tuple(request.opt.uri_query),
                     None if accept is None else int(accept), request.opt.observe is not None)
        )  # fmt: skip
        return self.client.render(self.path, None if accept is None else int(accept))

    async def render_put(self, request: Any) -> Any:
        accept = request.opt.accept
        self.client.received.append(
            Received("PUT", self.path, tuple(request.opt.uri_query),
                     None if accept is None else int(accept), False)
        )  # fmt: skip
        self.client.attributes[self.path] = tuple(request.opt.uri_query)
        return aiocoap.Message(code=Code.CHANGED)


class _ObservableNode(_Node, aiocoap.resource.ObservableResource):  # type: ignore[misc]
    """A path of the client's object tree that can be observed."""


class Lwm2mClient:
    """A simulated LwM2M client (async context manager).

    Parameters
    ----------
    endpoint
        The endpoint name (the device id in FleetWatch).
    server_port
        The FleetWatch CoAP port on 127.0.0.1.
    values
        The client's resources: path -> value (``(3, 0, 7, 0)`` for resource instances).
    observable
        Which levels can be observed: 1 object, 2 instance, 3 resource.
    formats
        Content formats it answers in (others: 4.06 Not Acceptable).
    """

    def __init__(
        self,
        endpoint: str,
        server_port: int,
        values: Mapping[ResourcePath, Value],
        *,
        lifetime: int = 300,
        binding: str = "U",
        version: str = "1.1",
        observable: Iterable[int] = (1, 2, 3),
        formats: Iterable[int] = ALL_FORMATS,
        links: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.server_port = server_port
        self.values: dict[ResourcePath, Value] = dict(values)
        self.lifetime = lifetime
        self.binding = binding
        self.version = version
        self.observable = frozenset(observable)
        self.formats = frozenset(formats)
        self.links = links
        self.received: list[Received] = []
        self.attributes: dict[ResourcePath, tuple[str, ...]] = {}
        self.location: tuple[str, ...] = ()
        self.context: Any = None
        self.port = 0
        self._nodes: dict[ResourcePath, _Node] = {}

    # -- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> Lwm2mClient:
        site = aiocoap.resource.Site()
        paths: set[ResourcePath] = set()
        for path in self.values:
            paths.update((path[:1], path[:2], path[:3]))
        for path in sorted(paths):
            node = (_ObservableNode if len(path) in self.observable else _Node)(self, path)
            self._nodes[path] = node
            site.add_resource(tuple(map(str, path)), node)
        self.context = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", 0), transports=["udp6"]
        )
        self.port = _bound_port(self.context) or 0
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.context is not None:
            await self.context.shutdown()
            self.context = None

    # -- what it answers ------------------------------------------------------------------

    def observers(self, path: ResourcePath) -> int:
        """How many observations the server holds on ``path``."""
        return len(getattr(self._nodes.get(path), "_observations", ()))

    def render(self, path: ResourcePath, accept: int | None) -> Any:
        chosen = {p: v for p, v in self.values.items() if p[: len(path)] == path}
        if not chosen:
            return aiocoap.Message(code=Code.NOT_FOUND)
        number = TLV if accept is None else accept
        if number not in self.formats:
            return aiocoap.Message(code=Code.NOT_ACCEPTABLE)
        if number == TLV:
            payload = encode_tlv(chosen, path)
        elif number == SENML_JSON:
            payload = orjson.dumps(senml_records(chosen, path))
        elif number == SENML_CBOR:
            payload = senml_cbor(senml_records(chosen, path))
        elif number == LWM2M_JSON:
            payload = lwm2m_json(chosen, path)
        elif number == TEXT and len(path) == 3 and path in chosen:
            payload = str(chosen[path]).encode()
        else:
            return aiocoap.Message(code=Code.NOT_ACCEPTABLE)
        return aiocoap.Message(code=Code.CONTENT, payload=payload, content_format=number)

    def set(self, values: Mapping[ResourcePath, Value]) -> None:
        """Change values and notify whoever observes them."""
        self.values.update(values)
        touched: set[ResourcePath] = set()
        for path in values:
            touched.update((path[:1], path[:2], path[:3]))
        for path in touched:
            node = self._nodes.get(path)
            if isinstance(node, _ObservableNode):
                node.updated_state()

    # -- what it sends ----------------------------------------------------------------------

    def uri(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.server_port}/{path}"

    def link_body(self) -> bytes:
        if self.links is not None:
            return self.links.encode()
        instances = sorted({p[:2] for p in self.values})
        return ",".join(f"</{o}/{i}>" for o, i in instances).encode()

    async def request(self, message: Any, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(self.context.request(message).response, timeout)

    async def register(self, **query: str) -> Any:
        """Register; remembers the location on 2.01."""
        params = {"ep": self.endpoint, "lt": str(self.lifetime), "lwm2m": self.version,
                  "b": self.binding, **query}  # fmt: skip
        message = aiocoap.Message(code=Code.POST, uri=self.uri("rd"), payload=self.link_body())
        message.opt.uri_query = tuple(f"{k}={v}" if v else k for k, v in params.items())
        message.opt.content_format = 40
        response = await self.request(message)
        if response.code == Code.CREATED:
            self.location = tuple(response.opt.location_path)
        return response

    async def update(self, *, body: bytes | None = None, **query: str) -> Any:
        message = aiocoap.Message(
            code=Code.POST, uri=self.uri("/".join(self.location)), payload=body or b""
        )
        if query:
            message.opt.uri_query = tuple(f"{k}={v}" for k, v in query.items())
        if body:
            message.opt.content_format = 40
        return await self.request(message)

    async def deregister(self) -> Any:
        message = aiocoap.Message(code=Code.DELETE, uri=self.uri("/".join(self.location)))
        return await self.request(message)

    async def send(self, payload: bytes, content_format: int = SENML_CBOR) -> Any:
        message = aiocoap.Message(code=Code.POST, uri=self.uri("dp"), payload=payload)
        message.opt.content_format = content_format
        return await self.request(message)
