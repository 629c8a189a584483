"""The Protobuf payload codec: ``protocols/proto/telemetry.proto``, one ``Batch`` per payload.

Content type ``application/x-protobuf`` (MQTT 5) and CoAP content format 65100.

>>> from protocols.proto import telemetry_pb2 as pb
>>> payload = pb.Batch(readings=[pb.Telemetry(ts=1700000000, seq=4, metadata={"firmware": "1.4.2"},
...     metrics=[pb.Metric(name="temperature_c", value=21.5)])]).SerializeToString()
>>> ProtobufCodec().decode(payload, DecodeContext())
[{'ts': 1700000000.0, 'seq': 4, 'temperature_c': 21.5, 'firmware': '1.4.2'}]
"""

from __future__ import annotations

import math

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocols.codecs.base import DecodeContext, Record
from protocols.proto import telemetry_pb2
from service.errors import DecodeError

COAP_CONTENT_FORMAT = 65100


class ProtobufCodec:
    """Decode ``fleetwatch.telemetry.v1.Batch``."""

    name: str = "protobuf"
    content_types: tuple[str, ...] = (
        "application/x-protobuf",
        "application/protobuf",
        "application/vnd.fleetwatch.telemetry+protobuf",
    )

    def decode(self, payload: bytes, context: DecodeContext) -> list[Record]:
        try:
            batch = telemetry_pb2.Batch.FromString(payload)  # type: ignore[attr-defined]
        except (ProtobufDecodeError, ValueError, RuntimeError) as exc:
            raise DecodeError("malformed_protobuf", str(exc)[:200]) from exc
        if not batch.readings:
            raise DecodeError("no_records", "the Protobuf batch holds no readings")
        if len(batch.readings) > context.max_records:
            raise DecodeError(
                "too_many_records",
                f"batch of {len(batch.readings)} readings exceeds the limit of "
                f"{context.max_records}",
            )
        records: list[Record] = []
        for item in batch.readings:
            record: Record = {}
            if item.ts:
                record["ts"] = item.ts
            if item.HasField("seq"):
                record["seq"] = item.seq
            if item.device_id:
                record["device_id"] = item.device_id
            for metric in item.metrics:
                if not math.isfinite(metric.value):
                    raise DecodeError(
                        "non_finite_number", f"metric {metric.name!r} is NaN or infinite"
                    )
                record[metric.name] = metric.value
            record.update(item.metadata)
            records.append(record)
        return records
