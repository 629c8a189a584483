"""Payload codecs, shared by every transport.

``CODECS`` maps a codec name to its class; :func:`codec_for_content_type` picks one from an
MQTT 5 content type or a CoAP content format name.
"""

from __future__ import annotations

from collections.abc import Callable

from protocols.codecs.base import Codec, DecodeContext, Record
from protocols.codecs.cbor import CborCodec
from protocols.codecs.json import JsonCodec
from protocols.codecs.protobuf import ProtobufCodec
from protocols.codecs.senml import SenmlCborCodec, SenmlJsonCodec

CODECS: dict[str, Callable[[], Codec]] = {
    "json": JsonCodec,
    "cbor": CborCodec,
    "senml+json": SenmlJsonCodec,
    "senml+cbor": SenmlCborCodec,
    "protobuf": ProtobufCodec,
}

__all__ = ["CODECS", "Codec", "CodecSet", "DecodeContext", "Record"]


class CodecSet:
    """One instance of every codec, looked up by name or content type.

    >>> codecs = CodecSet(default="json")
    >>> codecs.for_content_type("application/json").name, codecs.for_content_type(None).name
    ('json', 'json')
    >>> codecs.for_content_type("application/x-unknown") is None
    True
    """

    def __init__(self, default: str = "json") -> None:
        self.by_name: dict[str, Codec] = {name: cls() for name, cls in CODECS.items()}
        if default not in self.by_name:
            raise KeyError(f"unknown default codec {default!r}")
        self.default = self.by_name[default]
        self.by_content_type: dict[str, Codec] = {}
        for codec in self.by_name.values():
            for content_type in codec.content_types:
                self.by_content_type[content_type] = codec

    def for_content_type(self, content_type: str | None) -> Codec | None:
        if not content_type:
            return self.default
        base = content_type.split(";", 1)[0].strip().lower()
        return self.by_content_type.get(base)
