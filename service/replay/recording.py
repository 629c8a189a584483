"""Recorded messages: the file format ``fleetwatch replay`` reads and ``simulate --out`` writes.

JSON Lines, one message per line::

    {"topic": "fleet/plant-a/th-000001/telemetry", "payload": "{...}", "received_at": 1767225600.05}

``payload`` holds the payload as text when it is valid UTF-8; otherwise the line has
``payload_b64`` (base64) instead. A path ending in ``.gz`` is gzip-compressed.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "r.jsonl"
>>> write_recording(path, [("a/b", b"{}", 1.0), ("a/c", b"\\xff", 2.0)])
2
>>> [(m.topic, m.payload) for m in read_recording(path)]
[('a/b', b'{}'), ('a/c', b'\\xff')]
"""

from __future__ import annotations

import base64
import binascii
import gzip
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import orjson

from service.errors import FleetWatchError
from service.records import RawMessage


class RecordingError(FleetWatchError):
    """A line of a recording could not be read."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


def _open(path: Path, mode: str) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "b")  # type: ignore[return-value]
    return open(path, mode + "b")


def write_recording(path: Path | str, messages: Iterable[tuple[str, bytes, float]]) -> int:
    """Write ``(topic, payload, received_at)`` messages; return how many were written."""
    count = 0
    with _open(Path(path), "w") as out:
        for topic, payload, received_at in messages:
            row: dict[str, object] = {"topic": topic, "received_at": received_at}
            try:
                row["payload"] = payload.decode("utf-8")
            except UnicodeDecodeError:
                row["payload_b64"] = base64.b64encode(payload).decode("ascii")
            out.write(orjson.dumps(row))
            out.write(b"\n")
            count += 1
    return count


def read_recording(
    path: Path | str, *, on_error: Callable[[int, str], None] | None = None
) -> Iterator[RawMessage]:
    """Stream the messages of a recording.

    A corrupt line calls ``on_error(line_number, reason)`` and is skipped; without
    ``on_error`` it raises :class:`RecordingError`.
    """
    file = Path(path)
    if not file.exists():
        raise FleetWatchError(f"recording {file} does not exist")
    with _open(file, "r") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("line is not a JSON object")
                topic = row["topic"]
                received_at = float(row["received_at"])
                if "payload" in row:
                    payload = str(row["payload"]).encode("utf-8")
                else:
                    payload = base64.b64decode(row["payload_b64"], validate=True)
                if not isinstance(topic, str):
                    raise ValueError("topic is not a string")
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError, binascii.Error) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if on_error is None:
                    raise RecordingError(file, number, reason) from exc
                on_error(number, reason)
                continue
            yield RawMessage(topic, payload, received_at, "mqtt")
