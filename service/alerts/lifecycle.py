"""The alert lifecycle: signals in, alert changes out.

One active alert per ``(kind, subject)``. A firing signal opens an alert, or escalates the
open one when its severity is higher; a cleared signal resolves it. Two hold times, in
data time, keep alerts from flapping:

- ``fire_hold_s``: a condition must hold this long before its alert opens (a signal
  cleared within that time opens nothing);
- ``resolve_hold_s``: a cleared condition must stay clear this long before its alert
  resolves (firing again within that time keeps the alert open, and is counted as a flap).

Holds are settled by later signals and by :meth:`AlertManager.tick`. Every change (opened,
escalated, resolved) is returned as an :class:`~service.records.AlertRecord` for sinks.

>>> from service.records import Signal, Severity
>>> am = AlertManager(fire_hold_s=0, resolve_hold_s=60)
>>> [c.transition.value for c in am.apply([Signal("rule.hot", "d1", True, at=100.0)])]
['opened']
>>> am.apply([Signal("rule.hot", "d1", False, at=110.0)])  # clear is held for 60 s
[]
>>> am.apply([Signal("rule.hot", "d1", True, at=120.0)])  # fired again: same alert, no flap
[]
>>> am.apply([Signal("rule.hot", "d1", False, at=130.0)])
[]
>>> [(c.transition.value, c.record.state.value) for c in am.tick(200.0)]
[('resolved', 'resolved')]
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from service.errors import check_state_version
from service.records import (
    AlertRecord,
    AlertState,
    Signal,
    alert_from_state,
    alert_to_state,
    signal_from_state,
    signal_to_state,
)


class Transition(enum.StrEnum):
    OPENED = "opened"
    ESCALATED = "escalated"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One change of one alert; ``record`` is the alert as it now stands."""

    transition: Transition
    record: AlertRecord


@dataclass(slots=True)
class _Pending:
    signal: Signal
    since: float


@dataclass(slots=True)
class _Open:
    record: AlertRecord
    clearing_since: float | None = None
    clear_signal: Signal | None = None


def alert_id(kind: str, subject: str, started_at: float) -> str:
    """A stable id: the same alert gets the same id in every replay.

    >>> alert_id("rule.hot", "d1", 100.0)
    '6138bee173e0c3a3'
    """
    text = f"{kind}\x1f{subject}\x1f{started_at:.3f}".encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


class AlertManager:
    """Owns every open alert.

    Parameters
    ----------
    fire_hold_s
        How long (data time) a condition must hold before its alert opens.
    resolve_hold_s
        How long a cleared condition must stay clear before its alert resolves.
    recent_capacity
        How many resolved alerts to keep for queries.
    """

    def __init__(
        self, fire_hold_s: float = 0.0, resolve_hold_s: float = 0.0, recent_capacity: int = 1000
    ) -> None:
        self.fire_hold_s = fire_hold_s
        self.resolve_hold_s = resolve_hold_s
        self.recent_capacity = recent_capacity
        self._reset()

    def _reset(self) -> None:
        self._open: dict[tuple[str, str], _Open] = {}
        # open alerts' keys by the first level of their subject (a device, for device alerts)
        self._open_by_head: dict[str, dict[tuple[str, str], None]] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self.recent: deque[AlertRecord] = deque(maxlen=self.recent_capacity)
        self.flaps_suppressed = 0
        self.fired_total = 0
        self.resolved_total = 0

    # -- queries --------------------------------------------------------------------

    def active(self) -> Iterator[AlertRecord]:
        return (entry.record for entry in self._open.values())

    def about(self, head: str) -> list[AlertRecord]:
        """Open alerts whose subject is ``head`` or lies under it (``head/...``), oldest first.

        >>> from service.records import Signal
        >>> manager = AlertManager()
        >>> _ = manager.apply([Signal("battery_low", "d1", True, 10.0),
        ...                    Signal("sensor_drift", "d1/temperature_c", True, 10.0),
        ...                    Signal("battery_low", "d10", True, 10.0)])
        >>> sorted(alert.subject for alert in manager.about("d1"))
        ['d1', 'd1/temperature_c']
        """
        keys = self._open_by_head.get(head)
        if not keys:
            return []
        return [self._open[key].record for key in keys]

    def _index(self, key: tuple[str, str]) -> None:
        head = key[1].split("/", 1)[0]
        self._open_by_head.setdefault(head, {})[key] = None

    def _unindex(self, key: tuple[str, str]) -> None:
        head = key[1].split("/", 1)[0]
        keys = self._open_by_head.get(head)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._open_by_head[head]

    def get(self, kind: str, subject: str) -> AlertRecord | None:
        entry = self._open.get((kind, subject))
        return entry.record if entry else None

    def __len__(self) -> int:
        return len(self._open)

    # -- transitions ----------------------------------------------------------------

    def _open_alert(self, signal: Signal, started_at: float) -> AlertChange:
        record = AlertRecord(
            id=alert_id(signal.kind, signal.subject, started_at),
            kind=signal.kind,
            subject=signal.subject,
            subject_type=signal.subject_type,
            site=signal.site,
            zone=signal.zone,
            severity=signal.severity,
            state=AlertState.FIRING,
            started_at=started_at,
            updated_at=signal.at,
            resolved_at=None,
            summary=signal.summary,
            evidence=dict(signal.evidence),
            action=signal.action,
        )
        key = (signal.kind, signal.subject)
        self._open[key] = _Open(record)
        self._index(key)
        self.fired_total += 1
        return AlertChange(Transition.OPENED, record)

    def _resolve(self, key: tuple[str, str], at: float, signal: Signal | None) -> AlertChange:
        entry = self._open.pop(key)
        self._unindex(key)
        evidence: Any = entry.record.evidence
        summary = entry.record.summary
        if signal is not None:
            evidence = {**entry.record.evidence, **signal.evidence}
            summary = signal.summary or summary
        record = replace(
            entry.record,
            state=AlertState.RESOLVED,
            updated_at=at,
            resolved_at=at,
            evidence=evidence,
            summary=summary,
        )
        self.recent.append(record)
        self.resolved_total += 1
        return AlertChange(Transition.RESOLVED, record)

    def apply(self, signals: Iterable[Signal]) -> list[AlertChange]:
        """Apply detector signals; return the alert changes they cause."""
        changes: list[AlertChange] = []
        for signal in signals:
            key = (signal.kind, signal.subject)
            entry = self._open.get(key)
            if signal.firing:
                if entry is not None:
                    if entry.clearing_since is not None:
                        entry.clearing_since = None
                        entry.clear_signal = None
                        self.flaps_suppressed += 1
                    if signal.severity > entry.record.severity:
                        entry.record = replace(
                            entry.record,
                            severity=signal.severity,
                            updated_at=signal.at,
                            summary=signal.summary or entry.record.summary,
                            evidence=dict(signal.evidence),
                            action=signal.action or entry.record.action,
                        )
                        changes.append(AlertChange(Transition.ESCALATED, entry.record))
                    continue
                pending = self._pending.get(key)
                if self.fire_hold_s <= 0:
                    changes.append(self._open_alert(signal, signal.at))
                elif pending is None:
                    self._pending[key] = _Pending(signal, signal.at)
                elif signal.at - pending.since >= self.fire_hold_s:
                    del self._pending[key]
                    worst = signal if signal.severity >= pending.signal.severity else pending.signal
                    changes.append(self._open_alert(replace(worst, at=signal.at), pending.since))
                elif signal.severity > pending.signal.severity:
                    pending.signal = signal
            else:
                self._pending.pop(key, None)
                if entry is None:
                    continue
                if self.resolve_hold_s <= 0:
                    changes.append(self._resolve(key, signal.at, signal))
                elif entry.clearing_since is None:
                    entry.clearing_since = signal.at
                    entry.clear_signal = signal
        return changes

    def tick(self, now: float) -> list[AlertChange]:
        """Settle holds that have run out by ``now``; return the changes."""
        changes: list[AlertChange] = []
        if self._pending:
            for key, pending in list(self._pending.items()):
                if now - pending.since >= self.fire_hold_s:
                    del self._pending[key]
                    changes.append(self._open_alert(replace(pending.signal, at=now), pending.since))
        if self.resolve_hold_s > 0:
            for key, entry in list(self._open.items()):
                if (
                    entry.clearing_since is not None
                    and now - entry.clearing_since >= self.resolve_hold_s
                ):
                    changes.append(self._resolve(key, now, entry.clear_signal))
        return changes

    # -- checkpoints ----------------------------------------------------------------

    STATE_VERSION = 2

    def state_dict(self) -> dict[str, Any]:
        """Open alerts, pending ones, recent history and totals, as plain data."""
        return {
            "version": self.STATE_VERSION,
            "open": [
                {
                    "record": alert_to_state(entry.record),
                    "clearing_since": entry.clearing_since,
                    "clear_signal": (
                        None if entry.clear_signal is None else signal_to_state(entry.clear_signal)
                    ),
                }
                for entry in self._open.values()
            ],
            "pending": [
                {"signal": signal_to_state(p.signal), "since": p.since}
                for p in self._pending.values()
            ],
            "recent": [alert_to_state(record) for record in self.recent],
            "fired_total": self.fired_total,
            "resolved_total": self.resolved_total,
            "flaps_suppressed": self.flaps_suppressed,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        check_state_version("alerts", state, self.STATE_VERSION)
        self._reset()
        for row in state.get("open", []):
            record = alert_from_state(row["record"])
            clear = row.get("clear_signal")
            self._open[record.key] = _Open(
                record,
                clearing_since=row.get("clearing_since"),
                clear_signal=None if clear is None else signal_from_state(clear),
            )
            self._index(record.key)
        for row in state.get("pending", []):
            signal = signal_from_state(row["signal"])
            self._pending[(signal.kind, signal.subject)] = _Pending(signal, float(row["since"]))
        self.recent.extend(alert_from_state(row) for row in state.get("recent", []))
        self.fired_total = int(state.get("fired_total", 0))
        self.resolved_total = int(state.get("resolved_total", 0))
        self.flaps_suppressed = int(state.get("flaps_suppressed", 0))
