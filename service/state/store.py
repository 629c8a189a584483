"""The state store: checkpoints and a journal in one SQLite file, so nothing is forgotten.

FleetWatch keeps everything it has learned in memory and saves it here:

- **checkpoints**: the state of every component (device registry, duplicate window, active
  alerts, undelivered alert changes, each detector), saved every
  ``state.checkpoint_interval_s`` and at shutdown, all in one transaction;
- **journal**: every message processed since the last checkpoint, written before the
  message is acknowledged to the broker, one row per micro-batch (its messages packed as
  CBOR). A checkpoint empties it in the same transaction.
- **LwM2M registrations**: written on every Register, Update and De-register (not with
  the checkpoints), so a client's registration survives any restart.

After a crash (even ``kill -9``), the daemon loads the last checkpoint and runs the journal
through the pipeline again, which brings every component back to exactly where it was when
it last acknowledged a message; what it had not acknowledged, the broker delivers again, and
the restored duplicate window drops what was already seen. SQLite runs in WAL mode; with
``synchronous = "normal"`` a process crash loses nothing, a power loss may lose the last
transactions (``"full"`` syncs every commit).

Each component's state carries a ``version``; the file carries a schema version. A file
written by a newer FleetWatch is refused with a clear message instead of being misread.

>>> import tempfile, pathlib
>>> from service.records import RawMessage
>>> path = pathlib.Path(tempfile.mkdtemp()) / "state.db"
>>> with StateStore(path) as store:
...     _ = store.save_checkpoint({"alerts": {"version": 1, "open": []}}, saved_at=1.0)
...     store.append_journal([RawMessage("fleet/a/d1/telemetry", b"{}", 2.0)])
>>> with StateStore(path) as store:
...     checkpoint = store.load_checkpoint()
...     checkpoint.components["alerts"], [m.topic for m in store.journal()]
({'version': 1, 'open': []}, ['fleet/a/d1/telemetry'])
"""

from __future__ import annotations

import base64
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import cbor2
import orjson

from service.errors import StateError, check_state_version
from service.records import AlertRecord, DeadLetter, RawMessage, alert_from_state, alert_to_state

SCHEMA_VERSION = 2
"""Layout of the state file. Raise it (and add a migration) when tables change.

Schema 2 journals one row per micro-batch (``journal_batch``); schema 1 journaled one row per
message (``journal``), which is still read, oldest first, from files written before."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    component TEXT PRIMARY KEY,
    saved_at REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    protocol TEXT NOT NULL,
    content_type TEXT
);
CREATE TABLE IF NOT EXISTS journal_batch (
    id INTEGER PRIMARY KEY,
    messages INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS lwm2m_registration (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The components' saved states and when they were saved (wall-clock seconds)."""

    saved_at: float
    components: Mapping[str, dict[str, Any]]


class StateStore:
    """One SQLite state file: open it, load what it holds, save checkpoints, journal."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "normal",
        exclusive: bool = False,
        lock_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self._synchronous = "FULL" if synchronous == "full" else "NORMAL"
        self._db: sqlite3.Connection | None = None
        self.journal_length = 0
        # a running daemon holds <path>.lock while the file is open (see _lock)
        self._exclusive = exclusive
        self._lock_timeout_s = lock_timeout_s
        self._lock_fd: int | None = None

    # -- lifetime -----------------------------------------------------------------------

    def open(self) -> StateStore:
        if self._db is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._exclusive:
            self._lock()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {self.path} cannot be opened: {exc}") from exc
        self._db = db
        self._check_schema()
        (self.journal_length,) = db.execute(
            "SELECT (SELECT COUNT(*) FROM journal) "
            "+ (SELECT COALESCE(SUM(messages), 0) FROM journal_batch)"
        ).fetchone()
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _lock(self) -> None:
        """Hold ``<path>.lock`` so that no other daemon uses the file meanwhile.

        A daemon restarted while its predecessor is still saving its last checkpoint (a
        worker finishing after its coordinator was killed) waits for it, up to
        ``lock_timeout_s``; then start-up is refused, naming the file.
        """
        try:
            import fcntl
        except ImportError:  # not on this platform: no lock
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StateError(
                        f"state file {self.path} is in use by another FleetWatch process "
                        f"(it holds {lock_path}); stop it, or give this one another state path"
                    ) from None
                time.sleep(0.05)
                continue
            self._lock_fd = fd
            return

    def __enter__(self) -> StateStore:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateError("state store is not open")
        return self._db

    def _check_schema(self) -> None:
        row = self.db.execute("SELECT value FROM store_meta WHERE key = 'schema'").fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO store_meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
            return
        found = int(row[0])
        if found > SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema {found}, written by a newer FleetWatch; "
                f"this version reads up to schema {SCHEMA_VERSION}. Upgrade FleetWatch, or "
                "move the file away to start from empty state."
            )
        if found < SCHEMA_VERSION:
            # the schema's new tables exist already (CREATE IF NOT EXISTS); old rows stay readable
            self.db.execute(
                "UPDATE store_meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
            )

    # -- checkpoints --------------------------------------------------------------------

    def save_checkpoint(
        self, components: Mapping[str, dict[str, Any]], saved_at: float | None = None
    ) -> int:
        """Replace the checkpoint with ``components`` and empty the journal, atomically.

        Returns the number of bytes written.
        """
        at = time.time() if saved_at is None else saved_at
        rows = [(name, at, orjson.dumps(state)) for name, state in components.items()]
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM checkpoint")
            db.executemany(
                "INSERT INTO checkpoint (component, saved_at, data) VALUES (?, ?, ?)", rows
            )
            db.execute("DELETE FROM journal")
            db.execute("DELETE FROM journal_batch")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.journal_length = 0
        return sum(len(data) for _, _, data in rows)

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or ``None`` when the file holds none."""
        rows = self.db.execute("SELECT component, saved_at, data FROM checkpoint").fetchall()
        if not rows:
            return None
        components: dict[str, dict[str, Any]] = {}
        for name, _, data in rows:
            try:
                state = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise StateError(
                    f"checkpoint of {name!r} in {self.path} is corrupt: {exc}"
                ) from exc
            if not isinstance(state, dict):
                raise StateError(f"checkpoint of {name!r} in {self.path} is not an object")
            components[name] = state
        return Checkpoint(saved_at=max(row[1] for row in rows), components=components)

    # -- journal ------------------------------------------------------------------------

    def append_journal(self, messages: Sequence[RawMessage]) -> None:
        """Record processed messages (one transaction), before they are acknowledged."""
        if not messages:
            return
        db = self.db
        packed = cbor2.dumps(
            [(m.topic, m.payload, m.received_at, m.protocol, m.content_type) for m in messages]
        )
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT INTO journal_batch (messages, data) VALUES (?, ?)", (len(messages), packed)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.journal_length += len(messages)

    def journal(self) -> Iterator[RawMessage]:
        """The journaled messages, oldest first."""
        cursor = self.db.execute(
            "SELECT topic, payload, received_at, protocol, content_type FROM journal ORDER BY id"
        )
        for topic, payload, received_at, protocol, content_type in cursor:
            yield RawMessage(topic, bytes(payload), received_at, protocol, content_type)
        batches = self.db.execute("SELECT id, data FROM journal_batch ORDER BY id")
        for batch_id, data in batches:
            try:
                rows = cbor2.loads(data)
                messages = [
                    RawMessage(str(topic), bytes(payload), float(received_at), str(protocol),
                               None if content_type is None else str(content_type))
                    for topic, payload, received_at, protocol, content_type in rows
                ]  # fmt: skip
            except (cbor2.CBORDecodeError, TypeError, ValueError) as exc:
                raise StateError(
                    f"journal batch {batch_id} in {self.path} is corrupt: {exc!r}"
                ) from exc
            yield from messages

    # -- LwM2M registrations (protocols.lwm2m.registry) -------------------------------------

    def save_registration(self, registration_id: str, endpoint: str, data: bytes) -> None:
        """Store one LwM2M registration (replacing any of the same endpoint), committed."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM lwm2m_registration WHERE endpoint = ? AND id != ?",
                    (endpoint, registration_id),
                )
                db.execute(
                    "INSERT OR REPLACE INTO lwm2m_registration (id, endpoint, data) "
                    "VALUES (?, ?, ?)",
                    (registration_id, endpoint, data),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"cannot store LwM2M registration in {self.path}: {exc}") from exc

    def delete_registration(self, registration_id: str) -> None:
        """Forget one LwM2M registration."""
        try:
            self.db.execute("DELETE FROM lwm2m_registration WHERE id = ?", (registration_id,))
        except sqlite3.Error as exc:
            raise StateError(f"cannot delete LwM2M registration in {self.path}: {exc}") from exc

    def load_registrations(self) -> list[bytes]:
        """Every stored LwM2M registration (as :mod:`protocols.lwm2m.registry` wrote it)."""
        rows = self.db.execute("SELECT data FROM lwm2m_registration ORDER BY id").fetchall()
        return [bytes(data) for (data,) in rows]


@dataclass(slots=True)
class RestoreSummary:
    """What a start-up restored from the state store."""

    checkpoint_at: float | None = None
    devices: int = 0
    alerts_active: int = 0
    journaled: int = 0
    outbox: int = 0
    seconds: float = 0.0


OUTBOX_VERSION = 1


def outbox_state(items: Sequence[AlertRecord | DeadLetter]) -> dict[str, Any]:
    """Undelivered alert changes and dead letters as plain data, for a checkpoint."""
    alerts = [alert_to_state(item) for item in items if isinstance(item, AlertRecord)]
    letters = [
        {
            "topic": item.topic,
            "reason": item.reason,
            "detail": item.detail,
            "payload": base64.b64encode(item.payload).decode("ascii"),
            "received_at": item.received_at,
            "protocol": item.protocol,
            "device_id": item.device_id,
        }
        for item in items
        if isinstance(item, DeadLetter)
    ]
    return {"version": OUTBOX_VERSION, "alerts": alerts, "deadletters": letters}


def outbox_items(state: Mapping[str, Any]) -> list[AlertRecord | DeadLetter]:
    """The items :func:`outbox_state` saved, alerts first.

    >>> letter = DeadLetter("t", "malformed_json", "x", b"{", 1.0)
    >>> outbox_items(outbox_state([letter])) == [letter]
    True
    """
    if not state:
        return []
    check_state_version("outbox", state, OUTBOX_VERSION)
    items: list[AlertRecord | DeadLetter] = [alert_from_state(a) for a in state.get("alerts", [])]
    for row in state.get("deadletters", []):
        items.append(
            DeadLetter(
                topic=row["topic"],
                reason=row["reason"],
                detail=row["detail"],
                payload=base64.b64decode(row["payload"]),
                received_at=float(row["received_at"]),
                protocol=row.get("protocol", "mqtt"),
                device_id=row.get("device_id"),
            )
        )
    return items
