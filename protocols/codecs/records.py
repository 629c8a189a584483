"""What every structured codec checks once it has parsed a payload into a value.

>>> from protocols.codecs.base import DecodeContext
>>> records_from_value([{"a": 1}, {"b": 2.5}], DecodeContext(), "CBOR")
[{'a': 1}, {'b': 2.5}]
>>> records_from_value({"a": float("nan")}, DecodeContext(), "CBOR")
Traceback (most recent call last):
...
service.errors.DecodeError: non_finite_number: field 'a' is NaN or infinite
"""

from __future__ import annotations

import math
from typing import Any

from protocols.codecs.base import DecodeContext, Record
from service.errors import DecodeError
from service.records import MessageKind


def check_record(record: dict[Any, Any]) -> Record:
    """Keys must be text; numbers finite; values scalars (nested values stay for the
    normalizer to ignore and count)."""
    for key, value in record.items():
        if not isinstance(key, str):
            raise DecodeError("bad_key", f"field name {key!r} is not text")
        if isinstance(value, float) and not math.isfinite(value):
            raise DecodeError("non_finite_number", f"field {key!r} is NaN or infinite")
        if isinstance(value, bytes | bytearray):
            raise DecodeError("unsupported_value", f"field {key!r} holds raw bytes")
    return record


def records_from_value(value: Any, context: DecodeContext, format_name: str) -> list[Record]:
    """An object is one record, an array of objects a batch; anything else is refused."""
    if isinstance(value, dict):
        return [check_record(value)]
    if isinstance(value, list):
        if len(value) > context.max_records:
            raise DecodeError(
                "too_many_records",
                f"batch of {len(value)} records exceeds the limit of {context.max_records}",
            )
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise DecodeError(
                    "not_an_object", f"batch item {index} is {type(item).__name__}, not an object"
                )
            check_record(item)
        return value
    if context.kind is MessageKind.STATUS and isinstance(value, str):
        return [{"status": value}]
    raise DecodeError(
        "not_an_object",
        f"payload is a {format_name} {type(value).__name__}, not an object or array",
    )
