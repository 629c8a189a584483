"""LwM2M registrations: what a client registered, until when, and where it is kept.

A registration (``POST /rd?ep=..&lt=..&lwm2m=..&b=..`` with a CoRE link-format body) gets an
id and a lifetime; an Update (``POST /rd/<id>``) renews it and may change the lifetime,
binding and object links; a De-register (``DELETE /rd/<id>``) ends it; a second
registration of the same endpoint replaces the first. A registration that is not renewed
within its lifetime (plus ``lwm2m.lifetime_grace_s``) expires.

Registrations are written to a :class:`RegistrationStorage` (the state store's SQLite file
in the daemon) on every change, so they survive a restart: LwM2M clients only send Updates
once registered, and many give up on a 4.04.

>>> registration = Registration.create("r1", parse_query(["ep=th-1", "lt=60", "b=UQ"]),
...     "</>;rt=\\"oma.lwm2m\\";ct=11543,</3/0>,</3303/0>", "127.0.0.1:5690", now=100.0)
>>> registration.queue, registration.links, registration.content_format, registration.expires_at
(True, ((3, 0), (3303, 0)), 11543, 160.0)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from protocols.lwm2m.content import parse_path
from protocols.lwm2m.objects import DeviceMemory, ResourcePath
from service.errors import DecodeError

DEFAULT_LIFETIME_S = 86_400
VERSIONS = frozenset({"1.0", "1.1", "1.2"})
_BINDINGS = re.compile(r"^[UMHTSNQ]{1,6}$")
_ENDPOINT = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces
_ENDPOINT_FORBIDDEN = frozenset("/+#?")
STATE_VERSION = 1

log = logging.getLogger(__name__)


def _malformed(detail: str) -> DecodeError:
    return DecodeError("malformed_registration", detail)


def parse_query(options: Iterable[str]) -> dict[str, str]:
    """Uri-Query options (``ep=th-1``, ``Q``) as a mapping; a flag maps to ``""``.

    >>> parse_query(["ep=th-1", "lt=300", "Q"])
    {'ep': 'th-1', 'lt': '300', 'Q': ''}
    """
    out: dict[str, str] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key in out:
            raise _malformed(f"query parameter {key!r} given twice")
        out[key] = value
    return out


def check_endpoint(name: str) -> str:
    """``name`` if it can name a device (it becomes the device id), else a decode error.

    >>> check_endpoint("urn:imei:356938035643809")
    'urn:imei:356938035643809'
    """
    if not _ENDPOINT.match(name) or _ENDPOINT_FORBIDDEN.intersection(name):
        raise _malformed(
            f"endpoint name {name[:64]!r} must be 1-128 printable characters without "
            "spaces, '/', '+', '#' or '?'"
        )
    return name


def parse_lifetime(text: str) -> int:
    """A lifetime in seconds (``lt``): a whole number of at least 1."""
    try:
        lifetime = int(text)
    except ValueError:
        raise _malformed(f"lifetime {text[:32]!r} is not a whole number of seconds") from None
    if lifetime < 1:
        raise _malformed(f"lifetime {lifetime} is below 1 second")
    return lifetime


def parse_binding(text: str) -> str:
    """A binding mode (``b``): ``U``, ``UQ``, ``S``, ``N``, ``T`` ... (1.0 and 1.1)."""
    if not _BINDINGS.match(text):
        raise _malformed(f"binding {text[:16]!r} is not an LwM2M binding mode")
    return text


@dataclass(frozen=True, slots=True)
class LinkSet:
    """A client's object links (``</3/0>,</3303/0>``) and what its root link said."""

    paths: tuple[ResourcePath, ...]
    root: str = ""  # an alternate root path (``</lwm2m>;rt="oma.lwm2m"``), else ""
    content_format: int | None = None  # ``ct`` of the root link


def _split_links(text: str) -> Iterator[str]:
    quoted = False
    start = 0
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            yield text[start:index]
            start = index + 1
    if quoted:
        raise _malformed("an attribute value in the link format has no closing quote")
    yield text[start:]


def parse_links(text: str) -> LinkSet:
    """A CoRE link-format registration body (RFC 6690) into object links.

    >>> parse_links('</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>,</lwm2m/4303>;ver=1.1')
    LinkSet(paths=((3, 0), (4303,)), root='/lwm2m', content_format=None)
    """
    links: list[tuple[str, dict[str, str]]] = []
    for raw in _split_links(text.strip()):
        item = raw.strip()
        if not item:
            continue
        if not item.startswith("<") or ">" not in item:
            raise _malformed(f"link {item[:64]!r} is not of the form </path>;attr=value")
        target, _, rest = item[1:].partition(">")
        attributes: dict[str, str] = {}
        for attribute in rest.split(";"):
            attribute = attribute.strip()
            if not attribute:
                continue
            name, _, value = attribute.partition("=")
            attributes[name.strip()] = value.strip().strip('"')
        links.append((target.strip(), attributes))
    root = ""
    content_format: int | None = None
    for target, attributes in links:
        if attributes.get("rt") == "oma.lwm2m":
            root = "" if target.rstrip("/") == "" else "/" + target.strip("/")
            ct = attributes.get("ct")
            if ct:
                try:
                    content_format = int(ct.split()[0])
                except ValueError:
                    raise _malformed(f"root link content format {ct[:16]!r}") from None
    paths: list[ResourcePath] = []
    for target, attributes in links:
        if attributes.get("rt") == "oma.lwm2m":
            continue
        if root and target.startswith(root + "/"):
            target = target[len(root) :]
        path = parse_path(target, "malformed_registration")
        if len(path) > 2:
            raise _malformed(f"link {target[:64]!r} names a resource, not an object or instance")
        paths.append(path)
    return LinkSet(tuple(paths), root, content_format)


@dataclass(frozen=True, slots=True)
class Registration:
    """One LwM2M client's registration."""

    id: str
    endpoint: str
    lifetime: int
    version: str
    binding: str
    queue: bool
    links: tuple[ResourcePath, ...]
    address: str  # host:port the client registered from, where requests go
    registered_at: float
    updated_at: float
    root: str = ""
    content_format: int | None = None
    sms: str | None = None

    @property
    def expires_at(self) -> float:
        return self.updated_at + self.lifetime

    def objects(self) -> dict[int, tuple[int, ...]]:
        """Offered objects and their instances (an object link alone: no instances listed).

        >>> links = ((3, 0), (3303,), (3303, 0), (3303, 1))
        >>> Registration("r1", "th-1", 60, "1.1", "U", False, links, "127.0.0.1:5690", 0.0,
        ...              0.0).objects()
        {3: (0,), 3303: (0, 1)}
        """
        offered: dict[int, list[int]] = {}
        for path in self.links:
            instances = offered.setdefault(path[0], [])
            if len(path) > 1 and path[1] not in instances:
                instances.append(path[1])
        return {obj: tuple(sorted(instances)) for obj, instances in offered.items()}

    @classmethod
    def create(
        cls,
        registration_id: str,
        query: Mapping[str, str],
        body: str,
        address: str,
        *,
        now: float,
        default_lifetime: int = DEFAULT_LIFETIME_S,
    ) -> Registration:
        """A registration from a Register request's query and link-format body."""
        endpoint = query.get("ep")
        if not endpoint:
            raise _malformed("the registration has no endpoint name (ep)")
        check_endpoint(endpoint)
        lifetime = parse_lifetime(query["lt"]) if "lt" in query else default_lifetime
        version = query.get("lwm2m", "1.0")
        if version not in VERSIONS:
            raise _malformed(f"LwM2M version {version[:16]!r} is not 1.0, 1.1 or 1.2")
        binding = parse_binding(query.get("b", "U") or "U")
        links = parse_links(body)
        if not links.paths:
            raise _malformed("the registration lists no objects")
        return cls(
            id=registration_id,
            endpoint=endpoint,
            lifetime=lifetime,
            version=version,
            binding=binding,
            queue="Q" in binding or "Q" in query,
            links=links.paths,
            address=address,
            registered_at=now,
            updated_at=now,
            root=links.root,
            content_format=links.content_format,
            sms=query.get("sms"),
        )

    def updated(
        self, query: Mapping[str, str], body: str | None, address: str, *, now: float
    ) -> Registration:
        """This registration renewed by an Update request (lt, b, sms, Q and links)."""
        changes: dict[str, Any] = {"updated_at": now, "address": address}
        if "lt" in query:
            changes["lifetime"] = parse_lifetime(query["lt"])
        if "b" in query:
            changes["binding"] = parse_binding(query["b"])
        if "b" in query or "Q" in query:
            changes["queue"] = "Q" in changes.get("binding", self.binding) or "Q" in query
        if "sms" in query:
            changes["sms"] = query["sms"]
        if body is not None and body.strip():
            links = parse_links(body)
            if not links.paths:
                raise _malformed("the update lists no objects")
            changes.update(links=links.paths, root=links.root or self.root)
            if links.content_format is not None:
                changes["content_format"] = links.content_format
        return replace(self, **changes)

    def state(self) -> dict[str, Any]:
        """Plain data for the state store."""
        return {
            "version": STATE_VERSION,
            "id": self.id, "endpoint": self.endpoint, "lifetime": self.lifetime,
            "lwm2m": self.version, "binding": self.binding, "queue": self.queue,
            "links": [list(path) for path in self.links], "address": self.address,
            "registered_at": self.registered_at, "updated_at": self.updated_at,
            "root": self.root, "content_format": self.content_format, "sms": self.sms,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Registration:
        """The registration :meth:`state` saved."""
        return cls(
            id=str(state["id"]),
            endpoint=str(state["endpoint"]),
            lifetime=int(state["lifetime"]),
            version=str(state["lwm2m"]),
            binding=str(state["binding"]),
            queue=bool(state["queue"]),
            links=tuple(tuple(int(p) for p in path) for path in state["links"]),
            address=str(state["address"]),
            registered_at=float(state["registered_at"]),
            updated_at=float(state["updated_at"]),
            root=str(state.get("root", "")),
            content_format=state.get("content_format"),
            sms=state.get("sms"),
        )


class RegistrationStorage(Protocol):
    """Where registrations are kept (:class:`service.state.store.StateStore` in the daemon)."""

    def save_registration(self, registration_id: str, endpoint: str, data: bytes) -> None: ...

    def delete_registration(self, registration_id: str) -> None: ...

    def load_registrations(self) -> list[bytes]: ...


@dataclass
class MemoryStorage:
    """Registrations kept in memory only (no state store): lost on restart."""

    rows: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def save_registration(self, registration_id: str, endpoint: str, data: bytes) -> None:
        for other, (name, _) in list(self.rows.items()):
            if name == endpoint and other != registration_id:
                del self.rows[other]
        self.rows[registration_id] = (endpoint, data)

    def delete_registration(self, registration_id: str) -> None:
        self.rows.pop(registration_id, None)

    def load_registrations(self) -> list[bytes]:
        return [data for _, data in self.rows.values()]


class Registry:
    """The live registrations, by id and by endpoint, written through to storage.

    Per endpoint it also keeps the translation memory (:class:`DeviceMemory`) that a
    re-registration inherits, saved with the registration.
    """

    def __init__(self, storage: RegistrationStorage, *, grace_s: float = 0.0) -> None:
        self.storage = storage
        self.grace_s = grace_s
        self._by_id: dict[str, Registration] = {}
        self._by_endpoint: dict[str, str] = {}
        self._by_address: dict[str, str] = {}
        self.memory: dict[str, DeviceMemory] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._by_id.values()))

    def get(self, registration_id: str) -> Registration | None:
        return self._by_id.get(registration_id)

    def by_endpoint(self, endpoint: str) -> Registration | None:
        registration_id = self._by_endpoint.get(endpoint)
        return None if registration_id is None else self._by_id.get(registration_id)

    def by_address(self, address: str) -> Registration | None:
        """The registration whose client sends from ``address`` (for Send, ``/dp``)."""
        registration_id = self._by_address.get(address)
        return None if registration_id is None else self._by_id.get(registration_id)

    def _index(self, registration: Registration) -> None:
        previous = self._by_id.get(registration.id)
        if previous is not None and self._by_address.get(previous.address) == previous.id:
            del self._by_address[previous.address]
        self._by_id[registration.id] = registration
        self._by_endpoint[registration.endpoint] = registration.id
        self._by_address[registration.address] = registration.id

    def _unindex(self, registration: Registration) -> None:
        self._by_id.pop(registration.id, None)
        if self._by_endpoint.get(registration.endpoint) == registration.id:
            del self._by_endpoint[registration.endpoint]
        if self._by_address.get(registration.address) == registration.id:
            del self._by_address[registration.address]

    def memory_of(self, endpoint: str) -> DeviceMemory:
        memory = self.memory.get(endpoint)
        if memory is None:
            memory = self.memory[endpoint] = DeviceMemory()
        return memory

    def _save(self, registration: Registration) -> None:
        data = registration.state()
        data["memory"] = self.memory_of(registration.endpoint).state()
        self.storage.save_registration(registration.id, registration.endpoint, orjson.dumps(data))

    def load(self) -> list[Registration]:
        """Load the stored registrations; a row that cannot be read is logged and skipped."""
        loaded: list[Registration] = []
        for row in self.storage.load_registrations():
            try:
                state = orjson.loads(row)
                registration = Registration.from_state(state)
                memory = DeviceMemory.from_state(state.get("memory") or {})
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                log.warning("skipped a stored LwM2M registration that cannot be read")
                continue
            previous = self.by_endpoint(registration.endpoint)
            if previous is not None and previous.updated_at >= registration.updated_at:
                continue
            if previous is not None:
                self._unindex(previous)
            self._index(registration)
            self.memory[registration.endpoint] = memory
            loaded.append(registration)
        return loaded

    def add(self, registration: Registration) -> Registration | None:
        """Store a new registration; return the one of the same endpoint it replaces."""
        previous = self.by_endpoint(registration.endpoint)
        self._save(registration)
        if previous is not None:
            self.storage.delete_registration(previous.id)
            self._unindex(previous)
        self._index(registration)
        return previous

    def put(self, registration: Registration) -> None:
        """Store a changed registration (Update, new firmware memory)."""
        self._save(registration)
        self._index(registration)

    def remove(self, registration_id: str) -> Registration | None:
        """Forget a registration (De-register, expiry)."""
        registration = self._by_id.get(registration_id)
        if registration is None:
            return None
        self.storage.delete_registration(registration_id)
        self._unindex(registration)
        return registration

    def expired(self, now: float) -> Sequence[Registration]:
        """Remove and return the registrations whose lifetime (plus grace) is over."""
        gone = [r for r in self._by_id.values() if now > r.expires_at + self.grace_s]
        for registration in gone:
            self.remove(registration.id)
        return gone
