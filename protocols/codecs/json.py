"""The JSON payload codec (orjson).

A JSON object is one record; a JSON array of objects is a batch of records (a device that
uploads what it buffered while offline). On a status topic a bare word (``online``,
``offline``) is accepted too, because that is what most last-will messages carry.

>>> codec = JsonCodec()
>>> codec.decode(b'{"ts": 1700000000, "temperature_c": 21.5}', DecodeContext())
[{'ts': 1700000000, 'temperature_c': 21.5}]
>>> codec.decode(b'{"t": NaN}', DecodeContext())
Traceback (most recent call last):
...
service.errors.DecodeError: non_finite_number: NaN or Infinity is not a number FleetWatch accepts
"""

from __future__ import annotations

import orjson

from protocols.codecs.base import DecodeContext, Record
from service.errors import DecodeError
from service.records import MessageKind

_STATUS_WORDS = frozenset({b"online", b"offline", b"connected", b"disconnected"})
_NON_FINITE_MARKERS = (b"NaN", b"Infinity", b"infinity")
_STATUS = MessageKind.STATUS  # a module constant: enum member access is slow


class JsonCodec:
    """Decode FleetWatch's JSON payload schema."""

    name: str = "json"
    content_types: tuple[str, ...] = ("application/json", "text/json")

    def decode(self, payload: bytes, context: DecodeContext) -> list[Record]:
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            stripped = payload.strip()
            if context.kind is _STATUS and stripped.lower() in _STATUS_WORDS:
                return [{"status": stripped.lower().decode()}]
            message = str(exc)
            if "infinity" in message or any(mark in payload for mark in _NON_FINITE_MARKERS):
                raise DecodeError(
                    "non_finite_number", "NaN or Infinity is not a number FleetWatch accepts"
                ) from exc
            raise DecodeError("malformed_json", message) from exc
        if isinstance(value, dict):
            return [value]
        if isinstance(value, list):
            if len(value) > context.max_records:
                raise DecodeError(
                    "too_many_records",
                    f"batch of {len(value)} records exceeds the limit of {context.max_records}",
                )
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    raise DecodeError(
                        "not_an_object",
                        f"batch item {index} is {type(item).__name__}, not an object",
                    )
            return value
        if context.kind is _STATUS and isinstance(value, str):
            return [{"status": value}]
        raise DecodeError(
            "not_an_object", f"payload is a JSON {type(value).__name__}, not an object or array"
        )
