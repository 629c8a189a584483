"""OMA LwM2M TLV (content format 11542): what LwM2M clients answer a plain Read with.

Each entry is a type byte, an identifier (8 or 16 bits), a length (in the type byte, or an
8, 16 or 24 bit field) and the value::

    type byte: bits 7-6  identifier type: 00 object instance, 01 resource instance,
                                         10 multiple resource, 11 resource with value
               bit 5     identifier length: 0 = 8 bits, 1 = 16 bits
               bits 4-3  length type: 00 = length in bits 2-0, 01/10/11 = 8/16/24 bit field
               bits 2-0  the length, when the length type is 00

An object instance holds resources; a multiple resource holds resource instances. Values
carry no type: integers are 1, 2, 4 or 8 byte big-endian two's complement, floats 4 or 8
byte IEEE 754, booleans one byte, strings UTF-8, times integers; the object model
(:mod:`protocols.lwm2m.objects`) says which is which. Resources the model does not know
are skipped.

Corrupt or truncated input raises :class:`~service.errors.DecodeError` (reason
``malformed_tlv``) naming the byte offset; no other exception escapes.

>>> payload = encode([resource(9, 87), resource(3, "1.4.2")])
>>> [(v.path, v.value) for v in decode(payload, (3, 0))]
[((3, 0, 9), 87), ((3, 0, 3), '1.4.2')]
>>> decode(payload[:-1], (3, 0))
Traceback (most recent call last):
...
service.errors.DecodeError: malformed_tlv: entry at byte 3 needs 5 bytes of value, 4 left
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from protocols.lwm2m.objects import ResourcePath, ResourceType, ResourceValue, Value, resource_type
from service.errors import DecodeError

CONTENT_FORMAT = 11542
MAX_DEPTH = 3  # object instance > multiple resource > resource instance


class TlvKind(enum.IntEnum):
    """The identifier type (bits 7-6 of the type byte)."""

    OBJECT_INSTANCE = 0
    RESOURCE_INSTANCE = 1
    MULTIPLE_RESOURCE = 2
    RESOURCE = 3


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV entry: a value (resources, resource instances) or children (the others)."""

    kind: TlvKind
    identifier: int
    value: bytes = b""
    children: tuple[Tlv, ...] = ()


def _error(detail: str) -> DecodeError:
    return DecodeError("malformed_tlv", detail, content_type="application/vnd.oma.lwm2m+tlv")


def parse(payload: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[Tlv]:
    """Parse ``payload[start:end]`` into TLV entries (nested entries parsed too).

    >>> parse(bytes([0xC1, 0x09, 0x57]))
    [Tlv(kind=<TlvKind.RESOURCE: 3>, identifier=9, value=b'W', children=())]
    """
    stop = len(payload) if end is None else end
    entries: list[Tlv] = []
    offset = start
    while offset < stop:
        at = offset
        header = payload[offset]
        kind = TlvKind(header >> 6)
        id_size = 2 if header & 0x20 else 1
        length_size = (header >> 3) & 0x03
        offset += 1
        if offset + id_size + length_size > stop:
            raise _error(f"entry at byte {at} is cut short in its header")
        identifier = int.from_bytes(payload[offset : offset + id_size], "big")
        offset += id_size
        if length_size:
            length = int.from_bytes(payload[offset : offset + length_size], "big")
            offset += length_size
        else:
            length = header & 0x07
        if offset + length > stop:
            raise _error(f"entry at byte {at} needs {length} bytes of value, {stop - offset} left")
        if kind in (TlvKind.OBJECT_INSTANCE, TlvKind.MULTIPLE_RESOURCE):
            if depth >= MAX_DEPTH - 1:
                raise _error(f"entries nested too deep at byte {at}")
            children = parse(payload, offset, offset + length, depth + 1)
            entries.append(Tlv(kind, identifier, children=tuple(children)))
        else:
            entries.append(Tlv(kind, identifier, bytes(payload[offset : offset + length])))
        offset += length
    return entries


def flatten(entries: Sequence[Tlv], base: ResourcePath) -> list[tuple[ResourcePath, bytes]]:
    """Resource paths and raw values of ``entries`` read from the path ``base``.

    ``base`` is the path that was read or observed: an object (one element), an object
    instance (two) or a resource (three).

    >>> flatten(parse(encode([instance(0, [resource(5700, 21.5)])])), (3303,))
    [((3303, 0, 5700), b'A\\xac\\x00\\x00')]
    """
    if not 1 <= len(base) <= 3:
        raise _error(f"cannot read TLV at path {'/'.join(map(str, base))!r}")
    out: list[tuple[ResourcePath, bytes]] = []
    for entry in entries:
        _flatten_entry(entry, base, out)
    return out


def _flatten_entry(entry: Tlv, base: ResourcePath, out: list[tuple[ResourcePath, bytes]]) -> None:
    kind, ident = entry.kind, entry.identifier
    level = len(base)
    if kind is TlvKind.OBJECT_INSTANCE:
        if level != 1:
            raise _error(f"object instance {ident} inside /{'/'.join(map(str, base))}")
        for child in entry.children:
            if child.kind not in (TlvKind.RESOURCE, TlvKind.MULTIPLE_RESOURCE):
                raise _error(f"object instance {ident} holds a {child.kind.name.lower()}")
            _flatten_entry(child, (base[0], ident), out)
    elif kind is TlvKind.RESOURCE:
        if level == 1:
            raise _error(f"resource {ident} outside an object instance")
        out.append(((base[0], base[1], ident), entry.value))
    elif kind is TlvKind.MULTIPLE_RESOURCE:
        if level == 1:
            raise _error(f"multiple resource {ident} outside an object instance")
        for child in entry.children:
            if child.kind is not TlvKind.RESOURCE_INSTANCE:
                raise _error(f"multiple resource {ident} holds a {child.kind.name.lower()}")
            out.append(((base[0], base[1], ident, child.identifier), child.value))
    else:
        if level != 3:
            raise _error(f"resource instance {ident} outside a multiple resource")
        out.append(((*base[:3], ident), entry.value))


def decode_value(raw: bytes, kind: ResourceType, path: ResourcePath = ()) -> Value:
    """A TLV value as the data type ``kind`` says.

    >>> decode_value(b"\\xff\\x85", ResourceType.INTEGER), decode_value(b"\\x01", ResourceType.BOOLEAN)
    (-123, True)
    """
    where = "/" + "/".join(map(str, path))
    if kind in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED):
        if len(raw) not in (1, 2, 4, 8):
            raise _error(f"integer at {where} has {len(raw)} bytes (1, 2, 4 or 8)")
        return int.from_bytes(raw, "big", signed=kind is not ResourceType.UNSIGNED)
    if kind is ResourceType.FLOAT:
        if len(raw) == 4:
            number: float = struct.unpack(">f", raw)[0]
        elif len(raw) == 8:
            number = struct.unpack(">d", raw)[0]
        else:
            raise _error(f"float at {where} has {len(raw)} bytes (4 or 8)")
        if not math.isfinite(number):
            raise DecodeError("non_finite_number", f"float at {where} is NaN or infinite")
        return number
    if kind is ResourceType.BOOLEAN:
        if raw not in (b"\x00", b"\x01"):
            raise _error(f"boolean at {where} is {raw[:8].hex()!r} (00 or 01)")
        return raw == b"\x01"
    if kind is ResourceType.STRING:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(f"string at {where} is not UTF-8: {exc.reason}") from exc
    if kind is ResourceType.OBJLNK:
        if len(raw) != 4:
            raise _error(f"object link at {where} has {len(raw)} bytes (4)")
        return f"{int.from_bytes(raw[:2], 'big')}:{int.from_bytes(raw[2:], 'big')}"
    return bytes(raw)


def decode(payload: bytes, base: ResourcePath) -> list[ResourceValue]:
    """The values of a TLV payload read from ``base``, typed by the object model."""
    try:
        pairs = flatten(parse(payload), base)
    except DecodeError:
        raise
    except (IndexError, ValueError) as exc:  # defensive: parse checks every bound
        raise _error(f"{type(exc).__name__}: {exc}") from exc
    values: list[ResourceValue] = []
    for path, raw in pairs:
        kind = resource_type(path)
        if kind is None:
            continue
        values.append(ResourceValue(path, decode_value(raw, kind, path)))
    return values


# -- encoding (clients, tests and benchmarks) ---------------------------------------------


def encode_value(value: Value) -> bytes:
    """A value in TLV form (integers as short as they fit; floats in 4 bytes when exact).

    >>> encode_value(87), encode_value(-1234), encode_value(21.5), encode_value("v1")
    (b'W', b'\\xfb.', b'A\\xac\\x00\\x00', b'v1')
    """
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        for size in (1, 2, 4, 8):
            try:
                return value.to_bytes(size, "big", signed=True)
            except OverflowError:
                continue
        raise ValueError(f"integer {value} does not fit in 8 bytes")
    if isinstance(value, float):
        try:
            single = struct.pack(">f", value)
        except OverflowError:
            return struct.pack(">d", value)
        return single if struct.unpack(">f", single)[0] == value else struct.pack(">d", value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _entry(kind: TlvKind, identifier: int, body: bytes) -> bytes:
    header = kind << 6
    ident = identifier.to_bytes(2 if identifier > 0xFF else 1, "big")
    if identifier > 0xFF:
        header |= 0x20
    length = len(body)
    if length < 8:
        return bytes([header | length]) + ident + body
    size = 1 if length <= 0xFF else 2 if length <= 0xFFFF else 3
    return bytes([header | (size << 3)]) + ident + length.to_bytes(size, "big") + body


def resource(identifier: int, value: Value) -> bytes:
    """One resource with its value."""
    return _entry(TlvKind.RESOURCE, identifier, encode_value(value))


def multiple(identifier: int, values: dict[int, Value]) -> bytes:
    """A multiple resource with its instances."""
    body = b"".join(
        _entry(TlvKind.RESOURCE_INSTANCE, index, encode_value(value))
        for index, value in values.items()
    )
    return _entry(TlvKind.MULTIPLE_RESOURCE, identifier, body)


def instance(identifier: int, resources: Sequence[bytes]) -> bytes:
    """An object instance holding encoded resources."""
    return _entry(TlvKind.OBJECT_INSTANCE, identifier, b"".join(resources))


def encode(entries: Sequence[bytes]) -> bytes:
    """A TLV payload of encoded entries."""
    return b"".join(entries)
