"""The codec contract: payload bytes in, plain records out.

A codec turns one payload into a list of *records*: plain ``dict`` objects in FleetWatch's
JSON payload schema (see the README): numeric fields are metrics, known string fields are
metadata, ``ts`` and ``seq`` are optional. Codecs know nothing of topics, devices or
detectors; :mod:`service.intake.normalize` turns records into readings. A payload a codec cannot
read raises :class:`service.errors.DecodeError` with a stable ``reason``; no other
exception may escape a codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from service.records import MessageKind

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a codec may need to know about the message it decodes."""

    kind: MessageKind = MessageKind.TELEMETRY
    max_records: int = 10_000
    received_at: float | None = None  # for formats with times relative to receipt (SenML)


class Codec(Protocol):
    """A payload format."""

    name: str
    content_types: tuple[str, ...]

    def decode(self, payload: bytes, context: DecodeContext) -> list[Record]: ...
