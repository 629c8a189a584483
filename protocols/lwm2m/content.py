"""LwM2M payloads in every content format FleetWatch reads, decoded into resource values.

==============  ====================================  ============================================
content format  media type                              holds
==============  ====================================  ============================================
0               ``text/plain``                          one resource value (the path says which)
60              ``application/cbor``                    one resource value
110             ``application/senml+json``              SenML records named by path (``/3303/0/5700``)
112             ``application/senml+cbor``              the same in CBOR, integer labels
11542           ``application/vnd.oma.lwm2m+tlv``       TLV (:mod:`protocols.lwm2m.tlv`)
11543           ``application/vnd.oma.lwm2m+json``      LwM2M 1.0 JSON (``bn``, ``bt``, ``e`` records)
==============  ====================================  ============================================

SenML and LwM2M JSON resolve names against the base name and times against the base time;
a time below 2**28 is relative to the receive time (RFC 8428 section 4.5.3); a value with no
time at all gets ``ts = None`` (the server stamps it with the receive time). Values are
typed by the object model (an integer resource sent as ``21.0`` is ``21``); resources the
model does not know are skipped. A payload that cannot be read raises
:class:`~service.errors.DecodeError` with a stable reason (``malformed_tlv``,
``malformed_json``, ``malformed_cbor``, ``bad_senml``, ``bad_lwm2m_json``,
``bad_plain_text``, ``unsupported_content_type``); no other exception escapes.

>>> decode(b'[{"bn":"/3303/0/","bt":1700000000,"n":"5700","v":21.5}]', 110, (3303, 0), 1.7e9)
[ResourceValue(path=(3303, 0, 5700), value=21.5, ts=1700000000.0)]
>>> decode(b"87", 0, (3, 0, 9), 1.7e9)
[ResourceValue(path=(3, 0, 9), value=87, ts=None)]
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import orjson

from protocols.codecs.cbor import load_cbor
from protocols.codecs.senml import text_labels
from protocols.lwm2m import tlv
from protocols.lwm2m.objects import ResourcePath, ResourceType, ResourceValue, Value, resource_type
from service.errors import DecodeError

TEXT, OPAQUE, CBOR, SENML_JSON, SENML_CBOR, LINK_FORMAT = 0, 42, 60, 110, 112, 40
TLV, LWM2M_JSON = tlv.CONTENT_FORMAT, 11543

MEDIA_TYPES: Mapping[int, str] = {
    TEXT: "text/plain",
    CBOR: "application/cbor",
    SENML_JSON: "application/senml+json",
    SENML_CBOR: "application/senml+cbor",
    TLV: "application/vnd.oma.lwm2m+tlv",
    LWM2M_JSON: "application/vnd.oma.lwm2m+json",
}
"""The content formats FleetWatch decodes, with their media types."""

_RELATIVE_LIMIT = 2**28
_MAX_ID = 0xFFFF


def parse_path(text: str, reason: str = "bad_senml") -> ResourcePath:
    """``"/3303/0/5700"`` -> ``(3303, 0, 5700)``.

    >>> parse_path("/3/0/7/1"), parse_path("3303/0")
    ((3, 0, 7, 1), (3303, 0))
    """
    parts = [part for part in text.strip().split("/") if part]
    try:
        path = tuple(int(part) for part in parts)
    except ValueError:
        raise DecodeError(reason, f"{text[:64]!r} is not an LwM2M path") from None
    if not 1 <= len(path) <= 4 or any(not 0 <= p <= _MAX_ID for p in path):
        raise DecodeError(reason, f"{text[:64]!r} is not an LwM2M path")
    return path


def _typed(value: Any, path: ResourcePath, reason: str) -> Value | None:
    """``value`` as the model's type for ``path``; ``None`` when the model does not know it."""
    kind = resource_type(path)
    if kind is None:
        return None
    where = "/" + "/".join(map(str, path))
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError("non_finite_number", f"value at {where} is NaN or infinite")
    if kind in (ResourceType.INTEGER, ResourceType.UNSIGNED, ResourceType.TIME):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise DecodeError(reason, f"value at {where} is {value!r}, not an integer")
        return int(value)
    if kind is ResourceType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DecodeError(reason, f"value at {where} is {value!r}, not a number")
        return float(value)
    if kind is ResourceType.BOOLEAN:
        if not isinstance(value, bool):
            raise DecodeError(reason, f"value at {where} is {value!r}, not a boolean")
        return value
    if kind in (ResourceType.STRING, ResourceType.OBJLNK):
        if not isinstance(value, str):
            raise DecodeError(reason, f"value at {where} is {value!r}, not a string")
        return value
    return value if isinstance(value, bytes) else None


def _time(base: float | None, offset: float | None, received_at: float) -> float | None:
    if base is None and offset is None:
        return None
    total = (base or 0.0) + (offset or 0.0)
    return received_at + total if total < _RELATIVE_LIMIT else total


def _number(value: Any, label: str, reason: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DecodeError(reason, f"{label} is {value!r}, not a finite number")
    return float(value)


def _senml(pack: Any, received_at: float, max_records: int) -> list[ResourceValue]:
    reason = "bad_senml"
    if not isinstance(pack, list):
        raise DecodeError(reason, f"a SenML pack is an array, not a {type(pack).__name__}")
    if len(pack) > max_records:
        raise DecodeError("too_many_records", f"pack of {len(pack)} records exceeds {max_records}")
    base_name, base_time = "", None
    values: list[ResourceValue] = []
    for index, entry in enumerate(pack):
        if not isinstance(entry, dict):
            raise DecodeError(reason, f"record {index} is {type(entry).__name__}, not a map")
        if "bn" in entry:
            if not isinstance(entry["bn"], str):
                raise DecodeError(reason, f"record {index}: bn is not text")
            base_name = entry["bn"]
        if "bt" in entry:
            base_time = _number(entry["bt"], f"record {index}: bt", reason)
        name = entry.get("n", "")
        if not isinstance(name, str):
            raise DecodeError(reason, f"record {index}: n is not text")
        present = [key for key in ("v", "vs", "vb", "vd", "vlo") if key in entry]
        if not present:
            continue
        path = parse_path(base_name + name, reason)
        if len(path) < 3:
            raise DecodeError(reason, f"record {index}: {base_name + name!r} is not a resource")
        raw = entry[present[0]]
        if present[0] == "vd" and isinstance(raw, str):
            try:
                raw = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            except (binascii.Error, ValueError) as exc:
                raise DecodeError(reason, f"record {index}: vd is not base64") from exc
        offset = _number(entry["t"], f"record {index}: t", reason) if "t" in entry else None
        value = _typed(raw, path, reason)
        if value is not None:
            values.append(ResourceValue(path, value, _time(base_time, offset, received_at)))
    return values


def _lwm2m_json(document: Any, received_at: float, max_records: int) -> list[ResourceValue]:
    reason = "bad_lwm2m_json"
    if not isinstance(document, dict) or not isinstance(document.get("e"), list):
        raise DecodeError(reason, "an LwM2M JSON document is an object with an 'e' array")
    entries = document["e"]
    if len(entries) > max_records:
        raise DecodeError("too_many_records", f"{len(entries)} entries exceed {max_records}")
    base_name = document.get("bn", "")
    if not isinstance(base_name, str):
        raise DecodeError(reason, "bn is not text")
    base_time = _number(document["bt"], "bt", reason) if "bt" in document else None
    values: list[ResourceValue] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DecodeError(reason, f"entry {index} is {type(entry).__name__}, not an object")
        name = entry.get("n", "")
        if not isinstance(name, str):
            raise DecodeError(reason, f"entry {index}: n is not text")
        present = [key for key in ("v", "bv", "sv", "ov") if key in entry]
        if not present:
            raise DecodeError(reason, f"entry {index} has no value (v, bv, sv or ov)")
        path = parse_path(base_name + name, reason)
        if len(path) < 3:
            raise DecodeError(reason, f"entry {index}: {base_name + name!r} is not a resource")
        offset = _number(entry["t"], f"entry {index}: t", reason) if "t" in entry else None
        value = _typed(entry[present[0]], path, reason)
        if value is not None:
            values.append(ResourceValue(path, value, _time(base_time, offset, received_at)))
    return values


def _single(value: Any, base: ResourcePath, reason: str) -> list[ResourceValue]:
    if len(base) < 3:
        raise DecodeError(reason, "a single value answers a resource, not an object or instance")
    typed = _typed(value, base, reason)
    return [] if typed is None else [ResourceValue(base, typed)]


def _plain_text(payload: bytes, base: ResourcePath) -> list[ResourceValue]:
    reason = "bad_plain_text"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(reason, f"not UTF-8: {exc.reason}") from exc
    kind = resource_type(base) if len(base) >= 3 else None
    value: Any = text
    if kind in (ResourceType.INTEGER, ResourceType.UNSIGNED, ResourceType.TIME):
        try:
            value = int(text.strip())
        except ValueError:
            raise DecodeError(reason, f"{text[:32]!r} is not an integer") from None
    elif kind is ResourceType.FLOAT:
        try:
            value = float(text.strip())
        except ValueError:
            raise DecodeError(reason, f"{text[:32]!r} is not a number") from None
    elif kind is ResourceType.BOOLEAN:
        if text.strip() not in ("0", "1"):
            raise DecodeError(reason, f"{text[:32]!r} is not a boolean (0 or 1)")
        value = text.strip() == "1"
    elif kind is ResourceType.OPAQUE:
        return []
    return _single(value, base, reason)


def decode(
    payload: bytes,
    content_format: int | None,
    base: ResourcePath,
    received_at: float,
    *,
    max_records: int = 10_000,
) -> list[ResourceValue]:
    """The resource values of a payload in ``content_format``, read from the path ``base``."""
    if content_format == TLV:
        return tlv.decode(payload, base)
    if content_format == SENML_JSON:
        try:
            pack = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("malformed_json", str(exc)) from exc
        return _senml(pack, received_at, max_records)
    if content_format == SENML_CBOR:
        return _senml(text_labels(load_cbor(payload)), received_at, max_records)
    if content_format == LWM2M_JSON:
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("malformed_json", str(exc)) from exc
        return _lwm2m_json(document, received_at, max_records)
    if content_format == TEXT:
        return _plain_text(payload, base)
    if content_format == CBOR:
        return _single(load_cbor(payload), base, "malformed_cbor")
    detail = (
        "the payload has no Content-Format option"
        if content_format is None
        else f"no LwM2M decoder for content format {content_format}"
    )
    raise DecodeError("unsupported_content_type", detail)
