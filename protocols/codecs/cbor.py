"""The CBOR payload codec (cbor2): the same schema as the JSON payloads, in CBOR.

>>> import cbor2
>>> CborCodec().decode(cbor2.dumps({"ts": 1700000000, "temperature_c": 21.5}), DecodeContext())
[{'ts': 1700000000, 'temperature_c': 21.5}]
>>> try:
...     CborCodec().decode(b"\\xa1\\x61", DecodeContext())  # truncated
... except DecodeError as exc:
...     print(exc.reason)
malformed_cbor
"""

from __future__ import annotations

import cbor2

from protocols.codecs.base import DecodeContext, Record
from protocols.codecs.records import records_from_value
from service.errors import DecodeError


def load_cbor(payload: bytes) -> object:
    """Parse one CBOR item; any failure is a ``malformed_cbor`` decode error."""
    try:
        return cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types on corrupt input
        raise DecodeError("malformed_cbor", f"{type(exc).__name__}: {exc}"[:200]) from exc


class CborCodec:
    """Decode FleetWatch's payload schema from CBOR (RFC 8949)."""

    name: str = "cbor"
    content_types: tuple[str, ...] = ("application/cbor",)

    def decode(self, payload: bytes, context: DecodeContext) -> list[Record]:
        return records_from_value(load_cbor(payload), context, "CBOR")
