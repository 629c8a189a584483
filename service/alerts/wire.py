"""FleetWatch's outbound wire format: alert and dead-letter topics and payloads.

>>> from service.records import AlertRecord, AlertState, Severity, SubjectType
>>> alert_topic("fleetwatch/alerts", "rule.battery_low", "plant-a/th+1")
'fleetwatch/alerts/rule.battery_low/plant-a_th_1'
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from service.records import AlertRecord, DeadLetter, iso_utc

_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\x00": "_"})


def topic_level(text: str) -> str:
    """Make ``text`` safe as one MQTT topic level."""
    return text.translate(_TOPIC_UNSAFE) or "_"


def alert_topic(prefix: str, kind: str, subject: str) -> str:
    return f"{prefix}/{topic_level(kind)}/{topic_level(subject)}"


def alert_payload(record: AlertRecord) -> bytes:
    return orjson.dumps(record.to_json_dict(), option=orjson.OPT_NON_STR_KEYS)


def deadletter_payload(letter: DeadLetter) -> bytes:
    """The dead-letter message: the reason, the original topic and the payload.

    >>> import orjson
    >>> body = orjson.loads(deadletter_payload(DeadLetter("t/x", "malformed_json", "eof",
    ...     b"{", 0.0)))
    >>> body["reason"], body["topic"], body["payload"]
    ('malformed_json', 't/x', '{')
    """
    body: dict[str, Any] = {
        "topic": letter.topic,
        "reason": letter.reason,
        "detail": letter.detail,
        "protocol": letter.protocol,
        "device_id": letter.device_id,
        "received_at": iso_utc(letter.received_at),
    }
    try:
        body["payload"] = letter.payload.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_b64"] = base64.b64encode(letter.payload).decode("ascii")
    return orjson.dumps(body)
