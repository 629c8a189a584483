"""The records every part of FleetWatch shares.

A transport hands a :class:`RawMessage` to a codec; normalization turns what the codec
found into :class:`Reading` objects; detectors turn readings into :class:`Signal` objects;
the alert lifecycle turns signals into :class:`AlertRecord` changes that sinks publish.

All records are frozen, slotted dataclasses. Times are UTC epoch seconds as ``float``:
``Reading.ts`` is device time (corrected for known skew), ``received_at`` is when FleetWatch
received the message.

>>> r = Reading(device_id="d1", ts=1_700_000_000.0, received_at=1_700_000_000.5,
...             metrics={"temperature_c": 21.5}, meta={"site": "plant-a"})
>>> r.site, r.metrics["temperature_c"]
('plant-a', 21.5)
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # for annotations only: records import nothing else of FleetWatch
    from service.errors import DecodeError

EMPTY: Mapping[str, Any] = MappingProxyType({})


class MessageKind(enum.StrEnum):
    """What a message on a device's topic carries."""

    TELEMETRY = "telemetry"
    STATUS = "status"
    FIRMWARE = "firmware"
    BATCH = "batch"
    CALIBRATION = "calibration"


class Severity(enum.IntEnum):
    """Alert severity, ordered so that ``max()`` gives the worst."""

    INFO = 10
    WARNING = 20
    CRITICAL = 30

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        """Parse ``"warning"``, ``"CRITICAL"`` ... into a severity.

        >>> Severity.parse("Critical")
        <Severity.CRITICAL: 30>
        """
        try:
            return cls[text.strip().upper()]
        except KeyError:
            allowed = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected one of {allowed})") from None


class RawMessage(NamedTuple):
    """Bytes from a transport, with where and when they came from (immutable).

    A typed named tuple, like :class:`Reading`: one is made for every message received.
    """

    topic: str
    payload: bytes
    received_at: float
    protocol: str = "mqtt"
    content_type: str | None = None


@dataclass(slots=True)
class MessageColumns:
    """Raw messages as columns, one per field of :class:`RawMessage`: how a batch of them
    goes to a worker process (compact to pickle; receive times unboxed).

    >>> columns = MessageColumns()
    >>> columns.add(RawMessage("fleet/a/d1/telemetry", b"{}", 1.5))
    >>> columns.topics.append("fleet/a/d2/telemetry")  # appending field by field is the same
    >>> columns.payloads.append(b"[]"); columns.times.append(2.0)
    >>> columns.protocols.append("coap"); columns.content_types.append("application/json")
    >>> len(columns), columns.messages()[1]
    (2, RawMessage(topic='fleet/a/d2/telemetry', payload=b'[]', received_at=2.0, protocol='coap', content_type='application/json'))
    """

    topics: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    times: array[float] = field(default_factory=lambda: array("d"))
    protocols: list[str] = field(default_factory=list)
    content_types: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.topics)

    def add(self, message: RawMessage) -> None:
        self.topics.append(message.topic)
        self.payloads.append(message.payload)
        self.times.append(message.received_at)
        self.protocols.append(message.protocol)
        self.content_types.append(message.content_type)

    def messages(self) -> list[RawMessage]:
        """The messages, in the order they were added."""
        return list(
            map(RawMessage, self.topics, self.payloads, self.times, self.protocols,
                self.content_types)
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What the pipeline made of one message: readings accepted, duplicates dropped, and
    the errors of what was rejected (the whole message, or single records of a batch).

    Request/response transports (CoAP) answer each request from it.
    """

    accepted: int = 0
    duplicates: int = 0
    errors: tuple[DecodeError, ...] = ()

    @property
    def rejected(self) -> bool:
        """Nothing was kept and something was refused."""
        return bool(self.errors) and not self.accepted and not self.duplicates


class Reading(NamedTuple):
    """One normalized observation from one device (immutable).

    ``metrics`` maps canonical metric names (units in the name: ``battery_v``,
    ``temperature_c``, ``rssi_dbm`` ...) to floats. ``meta`` carries the device's context
    (site, zone, gateway, model, firmware, protocol ...) as strings. ``kind`` says which
    message kind it came from: status and firmware messages become readings whose
    information is in ``meta``. ``late`` marks a reading older than one already seen from
    the same device.

    A typed named tuple rather than a frozen dataclass: readings are made on the hot path,
    and a named tuple is built three times faster.
    """

    device_id: str
    ts: float
    received_at: float
    metrics: Mapping[str, float]
    meta: Mapping[str, str] = EMPTY
    seq: int | None = None
    kind: MessageKind = MessageKind.TELEMETRY
    late: bool = False

    @property
    def site(self) -> str | None:
        return self.meta.get("site")

    @property
    def zone(self) -> str | None:
        return self.meta.get("zone")

    @property
    def model(self) -> str | None:
        return self.meta.get("model")


class SubjectType(enum.StrEnum):
    DEVICE = "device"
    GATEWAY = "gateway"
    SITE = "site"
    ZONE = "zone"
    FLEET = "fleet"


@dataclass(frozen=True, slots=True)
class Signal:
    """What a detector concludes about one subject at one (data) time.

    A signal is either *firing* (the condition holds) or *cleared* (it no longer holds).
    ``evidence`` holds the numbers behind the decision, ``action`` what an operator should
    do, in their words.
    """

    kind: str
    subject: str
    firing: bool
    at: float
    severity: Severity = Severity.WARNING
    subject_type: SubjectType = SubjectType.DEVICE
    summary: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    action: str = ""
    site: str | None = None
    zone: str | None = None


class AlertState(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as published: one active alert per ``(kind, subject)``."""

    id: str
    kind: str
    subject: str
    subject_type: SubjectType
    site: str | None
    zone: str | None
    severity: Severity
    state: AlertState
    started_at: float
    updated_at: float
    resolved_at: float | None
    summary: str
    evidence: Mapping[str, Any]
    action: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)

    def to_json_dict(self) -> dict[str, Any]:
        """The alert's published JSON form (times as ISO 8601 UTC).

        >>> rec = AlertRecord(id="a1", kind="rule.hot", subject="d1",
        ...     subject_type=SubjectType.DEVICE, site="s", zone=None,
        ...     severity=Severity.WARNING, state=AlertState.FIRING, started_at=0.0,
        ...     updated_at=0.0, resolved_at=None, summary="hot", evidence={}, action="")
        >>> rec.to_json_dict()["started_at"]
        '1970-01-01T00:00:00Z'
        """
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "subject_type": self.subject_type.value,
            "site": self.site,
            "zone": self.zone,
            "severity": self.severity.label,
            "state": self.state.value,
            "started_at": iso_utc(self.started_at),
            "updated_at": iso_utc(self.updated_at),
            "resolved_at": iso_utc(self.resolved_at) if self.resolved_at is not None else None,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "action": self.action,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be turned into readings, and why."""

    topic: str
    reason: str
    detail: str
    payload: bytes
    received_at: float
    protocol: str = "mqtt"
    device_id: str | None = None


def iso_utc(ts: float) -> str:
    """Format epoch seconds as ISO 8601 UTC with a ``Z`` suffix.

    >>> iso_utc(1_700_000_000.25)
    '2023-11-14T22:13:20.250Z'
    """
    import datetime as _dt

    moment = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def alert_to_state(record: AlertRecord) -> dict[str, Any]:
    """An alert as plain data with exact times, for checkpoints (see :func:`alert_from_state`)."""
    state = record.to_json_dict()
    state["started_at"] = record.started_at
    state["updated_at"] = record.updated_at
    state["resolved_at"] = record.resolved_at
    return state


def alert_from_state(state: Mapping[str, Any]) -> AlertRecord:
    """The alert :func:`alert_to_state` saved.

    >>> rec = AlertRecord(id="a1", kind="rule.hot", subject="d1",
    ...     subject_type=SubjectType.DEVICE, site="s", zone=None,
    ...     severity=Severity.CRITICAL, state=AlertState.FIRING, started_at=1.5,
    ...     updated_at=2.5, resolved_at=None, summary="hot", evidence={"v": 1}, action="")
    >>> alert_from_state(alert_to_state(rec)) == rec
    True
    """
    resolved_at = state.get("resolved_at")
    return AlertRecord(
        id=str(state["id"]),
        kind=str(state["kind"]),
        subject=str(state["subject"]),
        subject_type=SubjectType(state["subject_type"]),
        site=state.get("site"),
        zone=state.get("zone"),
        severity=Severity.parse(state["severity"]),
        state=AlertState(state["state"]),
        started_at=float(state["started_at"]),
        updated_at=float(state["updated_at"]),
        resolved_at=None if resolved_at is None else float(resolved_at),
        summary=str(state.get("summary", "")),
        evidence=dict(state.get("evidence", {})),
        action=str(state.get("action", "")),
    )


def signal_to_state(signal: Signal) -> dict[str, Any]:
    """A signal as plain data, for checkpoints."""
    return {
        "kind": signal.kind,
        "subject": signal.subject,
        "firing": signal.firing,
        "at": signal.at,
        "severity": signal.severity.label,
        "subject_type": signal.subject_type.value,
        "summary": signal.summary,
        "evidence": dict(signal.evidence),
        "action": signal.action,
        "site": signal.site,
        "zone": signal.zone,
    }


def signal_from_state(state: Mapping[str, Any]) -> Signal:
    """The signal :func:`signal_to_state` saved."""
    return Signal(
        kind=str(state["kind"]),
        subject=str(state["subject"]),
        firing=bool(state["firing"]),
        at=float(state["at"]),
        severity=Severity.parse(state["severity"]),
        subject_type=SubjectType(state["subject_type"]),
        summary=str(state.get("summary", "")),
        evidence=dict(state.get("evidence", {})),
        action=str(state.get("action", "")),
        site=state.get("site"),
        zone=state.get("zone"),
    )
