"""Firmware: what every device runs, what is vulnerable, how updates go, what nobody ordered.

Versions come from the ``firmware`` metadata of any reading (telemetry, status, LwM2M
3/0/3) and from firmware messages (``event``: ``started``, ``downloading``, ``succeeded``,
``failed`` with ``code``; ``from``/``to`` versions). Versions compare sensibly whether or not
they are semver (:func:`version_key`).

Signals:

- ``firmware_vulnerable``: the device runs a version an advisory lists for its model; the
  severity is the advisory's, the evidence its identifiers (CVE) and the fixed version.
  Advisories are replaced with :meth:`FirmwareDetector.set_advisories` (the daemon reloads
  the advisory file when it changes) and every device is judged again on the next tick.
- ``firmware_unexpected_change``: a version change with no campaign behind it, a downgrade,
  a version never seen for that model, or a change outside the maintenance windows; the
  reasons are in the evidence. It resolves when the device reaches a campaign target or
  goes back to the version it had.
- ``firmware_update_failed`` (resolved by a later success) and ``firmware_update_stuck``
  (in progress longer than ``stuck_after_s``).

"Never seen for that model" is judged against the whole fleet. When the fleet is split
over several detectors (worker processes, see :mod:`service.runtime.fleet_facts`), each gives the
versions it has seen per model (:meth:`FirmwareDetector.fleet_summary`) and takes those the
others have seen (:meth:`FirmwareDetector.apply_fleet_summary`); a version counts as seen
when this detector or another one had seen it by the last exchange.

:meth:`FirmwareDetector.report` gives devices by model, version and status, campaign
progress with the devices off target, consistency per model and site, the urgent updates,
and update success rates by model, site, version path and protocol.

>>> from service.records import Reading
>>> det = FirmwareDetector(FirmwareConfig(advisories=(Advisory.from_mapping({
...     "id": "FW-1", "models": ["TH-200"], "affected": ["<1.5.0"], "severity": "critical",
...     "fixed": "1.5.0", "cve": ["CVE-2026-0001"]}),)))
>>> [(s.kind, s.severity.label) for s in det.process([Reading("d1", 0.0, 0.0, {},
...     {"model": "TH-200", "firmware": "1.4.2"})])]
[('firmware_vulnerable', 'critical')]
>>> version_key("1.10.0") > version_key("1.9.3") > version_key("1.9.3-rc1")
True
"""

from __future__ import annotations

import datetime as dt
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from detectors.base import reject_unknown
from service.records import MessageKind, Reading, Severity, Signal, iso_utc

_PART = re.compile(r"\d+|[a-zA-Z]+")
_MAX_AFFECTED = 65_536  # (model, version) pairs whose advisories are remembered
_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def version_key(version: str) -> tuple[Any, ...]:
    """A sort key: numeric parts compare as numbers, a pre-release sorts before its release.

    >>> sorted(["2.0", "1.10", "1.9", "v1.9.1", "1.9.1-beta", "2021.03-build7"], key=version_key)
    ['1.9', '1.9.1-beta', 'v1.9.1', '1.10', '2.0', '2021.03-build7']
    """
    text = version.strip().lower()
    if text.startswith("v") and text[1:2].isdigit():
        text = text[1:]
    main, dash, pre = text.partition("-")
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in _PART.findall(main))
    while parts and parts[-1] == (0, 0):
        parts = parts[:-1]  # 1.0 == 1.0.0
    if not dash:
        return (parts, 1, ())
    pre_parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in _PART.findall(pre))
    # "build" suffixes are after the release, pre-releases (alpha, beta, rc) before it
    after = bool(pre_parts) and pre_parts[0] in ((1, "build"), (1, "b"), (1, "p"), (1, "patch"))
    return (parts, 2 if after else 0, pre_parts)


def _matches(version: str, constraint: str) -> bool:
    """``constraint``: comma-separated comparisons (``>=1.4.0,<1.5.0``) or one exact version."""
    key = version_key(version)
    for clause in filter(None, (c.strip() for c in constraint.split(","))):
        match = re.match(r"(<=|>=|==|!=|<|>)?\s*(.+)", clause)
        assert match is not None
        op, bound = match.group(1) or "==", version_key(match.group(2))
        ok = {
            "<": key < bound, "<=": key <= bound, ">": key > bound, ">=": key >= bound,
            "==": key == bound, "!=": key != bound,
        }[op]  # fmt: skip
        if not ok:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Advisory:
    """A published vulnerability: which models and versions, how bad, fixed where."""

    id: str
    affected: tuple[str, ...]
    severity: Severity = Severity.WARNING
    models: tuple[str, ...] = ()
    fixed: str | None = None
    cve: tuple[str, ...] = ()
    summary: str = ""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Advisory:
        if not data.get("id") or not data.get("affected"):
            raise ValueError("an advisory needs an id and affected version ranges")
        affected = data["affected"]
        return cls(
            id=str(data["id"]),
            affected=(affected,) if isinstance(affected, str) else tuple(map(str, affected)),
            severity=Severity.parse(str(data.get("severity", "warning"))),
            models=tuple(map(str, data.get("models", ()))),
            fixed=None if data.get("fixed") is None else str(data["fixed"]),
            cve=tuple(map(str, data.get("cve", ()))),
            summary=str(data.get("summary", "")),
        )

    def affects(self, model: str | None, version: str) -> bool:
        if self.models and model not in self.models:
            return False
        return any(_matches(version, constraint) for constraint in self.affected)


@dataclass(frozen=True, slots=True)
class Campaign:
    """An update campaign: the version a group of devices should reach."""

    name: str
    target: str
    models: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    deadline: float | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Campaign:
        deadline = data.get("deadline")
        if isinstance(deadline, str):
            deadline = dt.datetime.fromisoformat(deadline.replace("Z", "+00:00")).timestamp()
        elif isinstance(deadline, dt.datetime):
            deadline = deadline.timestamp()
        return cls(
            name=str(data["name"]),
            target=str(data["target"]),
            models=tuple(map(str, data.get("models", ()))),
            sites=tuple(map(str, data.get("sites", ()))),
            deadline=None if deadline is None else float(deadline),
        )

    def covers(self, model: str | None, site: str | None) -> bool:
        return (not self.models or model in self.models) and (not self.sites or site in self.sites)


def parse_window(text: str) -> tuple[int, int, int]:
    """``"Sat 00:00-06:00"`` (UTC) as (weekday, start minute, end minute).

    >>> parse_window("sun 22:00-23:30")
    (6, 1320, 1410)
    """
    day, _, span = text.strip().partition(" ")
    start, _, end = span.partition("-")

    def minutes(hhmm: str) -> int:
        hours, _, mins = hhmm.strip().partition(":")
        return int(hours) * 60 + int(mins or 0)

    weekday = _WEEKDAYS.get(day[:3].lower())
    if weekday is None or not end:
        raise ValueError(f"maintenance window {text!r} is not like 'Sat 00:00-06:00'")
    return weekday, minutes(start), minutes(end)


@dataclass(frozen=True, slots=True)
class FirmwareConfig:
    advisories: tuple[Advisory, ...] = ()
    campaigns: tuple[Campaign, ...] = ()
    maintenance_windows: tuple[str, ...] = ()
    stuck_after_s: float = 3_600.0
    history: int = 16
    report_limit: int = 200
    advisories_file: str | None = None
    windows: tuple[tuple[int, int, int], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "windows", tuple(parse_window(w) for w in self.maintenance_windows)
        )

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], advisories: Sequence[Advisory] = ()
    ) -> FirmwareConfig:
        known = {"campaigns", "maintenance_windows", "stuck_after_s", "history", "report_limit",
                 "advisories_file", "advisories"}  # fmt: skip
        reject_unknown(data, known, "firmware")
        inline = tuple(Advisory.from_mapping(a) for a in data.get("advisories", ()))
        return cls(
            advisories=tuple(advisories) + inline,
            campaigns=tuple(Campaign.from_mapping(c) for c in data.get("campaigns", ())),
            maintenance_windows=tuple(map(str, data.get("maintenance_windows", ()))),
            stuck_after_s=float(data.get("stuck_after_s", 3_600.0)),
            history=int(data.get("history", 16)),
            report_limit=int(data.get("report_limit", 200)),
            advisories_file=data.get("advisories_file"),
        )

    def in_window(self, ts: float) -> bool:
        if not self.windows:
            return True
        moment = dt.datetime.fromtimestamp(ts, dt.UTC)
        minute = moment.hour * 60 + moment.minute
        return any(
            moment.weekday() == day and start <= minute < end for day, start, end in self.windows
        )


class _Device:
    """One device's firmware state; its names are the detector's shared strings.

    ``history`` and ``alerts`` stay ``None`` until the device has a change or an open alert.
    """

    __slots__ = (
        "alerts", "history", "model", "previous", "protocol", "site", "update", "version", "zone",
    )  # fmt: skip

    def __init__(self) -> None:
        self.version: str | None = None
        self.previous: str | None = None  # the version before an unexpected change
        self.model: str | None = None
        self.site: str | None = None
        self.zone: str | None = None
        self.protocol: str | None = None
        self.history: deque[tuple[float, str | None, str]] | None = None
        self.update: tuple[float, str | None] | None = None  # (started, to version)
        self.alerts: dict[str, int] | None = None  # open alert kind -> severity

    def open_alerts(self) -> dict[str, int]:
        return self.alerts or {}


class FirmwareDetector:
    """Firmware inventory, advisories, campaigns, update outcomes and unexpected changes."""

    name = "firmware"
    STATE_VERSION = 1

    def __init__(self, config: FirmwareConfig | None = None) -> None:
        self.config = config or FirmwareConfig()
        self._advisories = self.config.advisories
        self._devices: dict[str, _Device] = {}
        self._strings: dict[str, str] = {}  # one copy of each model, site, zone, version ...
        self._updating: dict[str, _Device] = {}  # devices with an update in progress
        self._affected: dict[tuple[str | None, str], tuple[Advisory, ...]] = {}
        self._seen: dict[str | None, set[str]] = {}  # model -> versions seen in the fleet
        # model -> versions the other parts of a split fleet have seen (not saved: the next
        # exchange brings it back)
        self._others_seen: dict[str | None, frozenset[str]] = {}
        self._outcomes: dict[tuple[str, str], list[int]] = {}  # (dimension, value) -> [ok, failed]
        self._rejudge = False

    # -- configuration --------------------------------------------------------------------

    def set_advisories(self, advisories: Iterable[Advisory]) -> None:
        """Replace the advisories; every device is judged against them on the next tick."""
        self._advisories = tuple(advisories)
        self._affected = {}
        self._rejudge = True

    @property
    def advisories(self) -> tuple[Advisory, ...]:
        return self._advisories

    # -- readings ---------------------------------------------------------------------------

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        devices = self._devices
        strings = self._strings
        firmware = MessageKind.FIRMWARE
        for reading in batch:
            device_id, ts, _, _, meta, _, kind, _ = reading
            device = devices.get(device_id)
            if device is None:
                if "firmware" not in meta and kind is not firmware:
                    continue
                device = devices[device_id] = _Device()
            if meta:
                value = meta.get("model", device.model)
                if value is not device.model and value != device.model:
                    device.model = value if value is None else strings.setdefault(value, value)
                value = meta.get("site", device.site)
                if value is not device.site and value != device.site:
                    device.site = value if value is None else strings.setdefault(value, value)
                value = meta.get("zone", device.zone)
                if value is not device.zone and value != device.zone:
                    device.zone = value if value is None else strings.setdefault(value, value)
                value = meta.get("protocol", device.protocol)
                if value is not device.protocol and value != device.protocol:
                    device.protocol = value if value is None else strings.setdefault(value, value)
            version = meta.get("firmware")
            if kind is firmware:
                self._event(reading, device, signals)
                if meta.get("event") == "succeeded":
                    version = meta.get("to_version", version)
            if version is not None and version != device.version:
                version = strings.setdefault(version, version)
                self._change(device_id, device, version, ts, signals)
        return signals

    def _event(self, reading: Reading, device: _Device, out: list[Signal]) -> None:
        meta = reading.meta
        event = (meta.get("event") or meta.get("state") or "").lower()
        device_id = reading.device_id
        if event in ("started", "downloading", "downloaded", "updating", "installing"):
            if device.update is None:
                device.update = (reading.ts, meta.get("to_version"))
                self._updating[device_id] = device
        elif event in ("succeeded", "success", "updated"):
            self._count(
                device, meta.get("from_version", device.version), meta.get("to_version"), True
            )
            device.update = None
            self._updating.pop(device_id, None)
            for kind in ("firmware_update_failed", "firmware_update_stuck"):
                self._clear(device_id, device, kind, reading.ts, out, "the update succeeded")
        elif event in ("failed", "failure", "error"):
            self._count(
                device, meta.get("from_version", device.version), meta.get("to_version"), False
            )
            device.update = None
            self._updating.pop(device_id, None)
            code = meta.get("code")
            self._clear(device_id, device, "firmware_update_stuck", reading.ts, out, "it failed")
            self._fire(
                device_id, device, "firmware_update_failed", Severity.WARNING, reading.ts, out,
                summary=(f"{device_id}: update to {meta.get('to_version', '?')} failed"
                         + (f" (code {code})" if code else "")),
                evidence={"from": meta.get("from_version", device.version),
                          "to": meta.get("to_version"), "code": code},
                action="Retry the update; if it fails again, check storage, power and signal during download.",
            )  # fmt: skip

    def _count(self, device: _Device, from_v: str | None, to_v: str | None, ok: bool) -> None:
        dimensions = (
            ("model", device.model), ("site", device.site), ("protocol", device.protocol),
            ("path", f"{from_v or '?'} -> {to_v or '?'}"),
        )  # fmt: skip
        for dimension, value in dimensions:
            if value is None:
                continue
            tally = self._outcomes.setdefault((dimension, value), [0, 0])
            tally[0 if ok else 1] += 1

    def _expected(self, device: _Device, version: str) -> bool:
        return any(
            c.target == version and c.covers(device.model, device.site)
            for c in self.config.campaigns
        )

    def _change(
        self, device_id: str, device: _Device, version: str, ts: float, out: list[Signal]
    ) -> None:
        old = device.version
        seen = self._seen.setdefault(device.model, set())
        known_version = version in seen
        if not known_version and self._others_seen:
            known_version = version in self._others_seen.get(device.model, ())
        seen.add(version)
        device.version = version
        if old is None:
            self._judge_vulnerability(device_id, device, ts, out)
            return
        if device.history is None:
            device.history = deque(maxlen=self.config.history)
        device.history.append((ts, old, version))
        expected = self._expected(device, version)
        if expected or version == device.previous:
            device.previous = None
            self._clear(device_id, device, "firmware_unexpected_change", ts, out,
                        f"now on {version}" + (" (campaign target)" if expected else ""))  # fmt: skip
        else:
            reasons = []
            downgrade = version_key(version) < version_key(old)
            if downgrade:
                reasons.append("downgrade")
            if not known_version:
                reasons.append("version never seen for this model")
            reasons.append("no campaign targets this version")
            if not self.config.in_window(ts):
                reasons.append("outside the maintenance windows")
            severity = Severity.CRITICAL if downgrade or not known_version else Severity.WARNING
            if device.previous is None:
                device.previous = old
            self._fire(
                device_id, device, "firmware_unexpected_change", severity, ts, out,
                summary=f"{device_id}: firmware changed {old} -> {version} ({', '.join(reasons)})",
                evidence={"from": old, "to": version, "reasons": reasons, "model": device.model,
                          "at": iso_utc(ts)},
                action=("Find out who changed it: if nobody ordered it, isolate the device and "
                        "reflash a known-good version."),
            )  # fmt: skip
        self._judge_vulnerability(device_id, device, ts, out)

    def _judge_vulnerability(
        self, device_id: str, device: _Device, ts: float, out: list[Signal]
    ) -> None:
        version = device.version
        if version is None:
            return
        hits = self._hits(device.model, version)
        if not hits:
            self._clear(
                device_id, device, "firmware_vulnerable", ts, out, f"{version} is not affected"
            )
            return
        worst = max(hits, key=lambda a: a.severity)
        fixed = sorted({a.fixed for a in hits if a.fixed}, key=version_key)
        ids = [a.id for a in hits]
        cves = sorted({c for a in hits for c in a.cve})
        self._fire(
            device_id, device, "firmware_vulnerable", worst.severity, ts, out,
            summary=(f"{device_id} ({device.model}) runs {version}, affected by "
                     f"{', '.join(ids)}" + (f"; fixed in {fixed[-1]}" if fixed else "")),
            evidence={"version": version, "model": device.model, "advisories": ids, "cve": cves,
                      "fixed_in": fixed[-1] if fixed else None},
            action=(f"Update to {fixed[-1]} or later." if fixed
                    else "No fix yet: restrict the device's network access."),
        )  # fmt: skip

    def _hits(self, model: str | None, version: str) -> tuple[Advisory, ...]:
        """The advisories affecting ``version`` on ``model``, worked out once per pair."""
        key = (model, version)
        hits = self._affected.get(key)
        if hits is None:
            if len(self._affected) >= _MAX_AFFECTED:
                self._affected.clear()
            hits = tuple(a for a in self._advisories if a.affects(model, version))
            self._affected[key] = hits
        return hits

    def _fire(
        self, device_id: str, device: _Device, kind: str, severity: Severity, ts: float,
        out: list[Signal], *, summary: str, evidence: dict[str, Any], action: str,
    ) -> None:  # fmt: skip
        alerts = device.alerts
        if alerts is None:
            alerts = device.alerts = {}
        elif alerts.get(kind) == int(severity) and kind != "firmware_unexpected_change":
            return
        alerts[kind] = int(severity)
        out.append(
            Signal(kind=kind, subject=device_id, firing=True, at=ts, severity=severity,
                   summary=summary, evidence=evidence, action=action, site=device.site,
                   zone=device.zone)
        )  # fmt: skip

    def _clear(
        self, device_id: str, device: _Device, kind: str, ts: float, out: list[Signal], why: str
    ) -> None:
        alerts = device.alerts
        if alerts is None or alerts.pop(kind, None) is None:
            return
        if not alerts:
            device.alerts = None
        out.append(
            Signal(kind=kind, subject=device_id, firing=False, at=ts,
                   summary=f"{device_id}: {why}", site=device.site, zone=device.zone)
        )  # fmt: skip

    # -- time -------------------------------------------------------------------------------

    def device_view(self, device_id: str) -> dict[str, Any] | None:
        """The device's firmware, its history and any update in progress (plain data)."""
        device = self._devices.get(device_id)
        if device is None:
            return None
        return {
            "version": device.version,
            "previous": device.previous,
            "history": [{"at": iso_utc(at), "from": old, "to": new}
                        for at, old, new in device.history or ()],
            "update_in_progress": None if device.update is None
            else {"since": iso_utc(device.update[0]), "to": device.update[1]},
            "open_alerts": sorted(device.open_alerts()),
        }  # fmt: skip

    def tick(self, now: float) -> list[Signal]:
        signals: list[Signal] = []
        rejudge, self._rejudge = self._rejudge, False
        if rejudge:
            for device_id, device in self._devices.items():
                self._judge_vulnerability(device_id, device, now, signals)
                self._check_stuck(device_id, device, now, signals)
            return signals
        stuck_after = self.config.stuck_after_s
        stuck = [
            device_id
            for device_id, device in self._updating.items()
            if device.update is not None
            and now - device.update[0] > stuck_after
            and "firmware_update_stuck" not in device.open_alerts()
        ]
        if len(stuck) > 1:  # in the order the devices were first seen
            found = set(stuck)
            stuck = [device_id for device_id in self._devices if device_id in found]
        for device_id in stuck:
            self._check_stuck(device_id, self._devices[device_id], now, signals)
        return signals

    def _check_stuck(self, device_id: str, device: _Device, now: float, out: list[Signal]) -> None:
        if (
            device.update is not None
            and now - device.update[0] > self.config.stuck_after_s
            and "firmware_update_stuck" not in device.open_alerts()
        ):
            started, target = device.update
            self._fire(
                device_id, device, "firmware_update_stuck", Severity.WARNING, now, out,
                summary=(f"{device_id}: update to {target or '?'} in progress for "
                         f"{(now - started) / 3600:.1f} h"),
                evidence={"started_at": iso_utc(started), "to": target, "from": device.version},
                action="Check the device's connection and storage; restart the update.",
            )  # fmt: skip

    # -- report -----------------------------------------------------------------------------

    def report(self, now: float) -> dict[str, Any]:
        limit = self.config.report_limit
        inventory: dict[str, dict[str, int]] = {}
        by_group: dict[tuple[str, str], dict[str, int]] = {}
        urgent = []
        for device_id, d in self._devices.items():
            model = d.model or "unknown"
            version = d.version or "unknown"
            inventory.setdefault(model, {}).setdefault(version, 0)
            inventory[model][version] += 1
            group = by_group.setdefault((model, d.site or ""), {})
            group[version] = group.get(version, 0) + 1
            severity = d.alerts.get("firmware_vulnerable") if d.alerts else None
            if severity is not None:
                hits = self._hits(d.model, d.version) if d.version else ()
                fixed = [a.fixed for a in hits if a.fixed]
                urgent.append(
                    {"device_id": device_id, "model": d.model, "site": d.site, "version": d.version,
                     "severity": Severity(severity).label,
                     "update_to": max(fixed, key=version_key) if fixed else None}
                )  # fmt: skip
        urgent.sort(
            key=lambda u: (
                -Severity.parse(str(u["severity"])),
                str(u["model"]),
                str(u["device_id"]),
            )
        )
        campaigns = []
        for campaign in self.config.campaigns:
            scope = [(i, d) for i, d in self._devices.items() if campaign.covers(d.model, d.site)]
            done = [i for i, d in scope if d.version == campaign.target]
            off = sorted(i for i, d in scope if d.version != campaign.target)
            campaigns.append(
                {"name": campaign.name, "target": campaign.target, "devices": len(scope),
                 "on_target": len(done),
                 "progress": round(len(done) / len(scope), 4) if scope else None,
                 "deadline": iso_utc(campaign.deadline) if campaign.deadline else None,
                 "overdue": bool(campaign.deadline and now > campaign.deadline and off),
                 "off_target": off[:limit]}
            )  # fmt: skip
        consistency = [
            {"model": model, "site": site, "devices": sum(versions.values()),
             "versions": dict(sorted(versions.items(), key=lambda kv: version_key(kv[0]))),
             "consistent_share": round(max(versions.values()) / sum(versions.values()), 4)}
            for (model, site), versions in sorted(by_group.items())
        ]  # fmt: skip
        outcomes: dict[str, dict[str, Any]] = {}
        for (dimension, value), (ok, failed) in sorted(self._outcomes.items()):
            outcomes.setdefault(dimension, {})[value] = {
                "succeeded": ok, "failed": failed,
                "success_rate": round(ok / (ok + failed), 4),
            }  # fmt: skip
        return {
            "generated_at": iso_utc(now),
            "devices": len(self._devices),
            "inventory": inventory,
            "campaigns": campaigns,
            "consistency": consistency,
            "urgent_updates": urgent[:limit],
            "vulnerable_devices": len(urgent),
            "update_outcomes": outcomes,
            "stuck_updates": sorted(
                i
                for i, d in self._devices.items()
                if d.alerts and "firmware_update_stuck" in d.alerts
            )[:limit],
            "advisories": [a.id for a in self._advisories],
        }

    # -- a fleet split over several detectors ---------------------------------------------

    def fleet_summary(self) -> dict[str | None, frozenset[str]]:
        """What this detector adds to fleet-wide knowledge: the versions it has seen per
        model (its own devices' only, not what it was given by the others)."""
        return {model: frozenset(versions) for model, versions in self._seen.items()}

    @staticmethod
    def merge_fleet_summaries(
        summaries: Sequence[Mapping[str | None, frozenset[str]]],
    ) -> dict[str | None, frozenset[str]]:
        """Several detectors' summaries as one: the versions seen per model, united.

        >>> FirmwareDetector.merge_fleet_summaries([{"M": frozenset({"1.0"})},
        ...     {"M": frozenset({"1.1"}), None: frozenset({"2.0"})}])["M"] == {"1.0", "1.1"}
        True
        """
        merged: dict[str | None, set[str]] = {}
        for summary in summaries:
            for model, versions in summary.items():
                merged.setdefault(model, set()).update(versions)
        return {model: frozenset(versions) for model, versions in merged.items()}

    def apply_fleet_summary(self, others: Mapping[str | None, frozenset[str]]) -> None:
        """Take the versions every other part of the fleet has seen per model (replacing
        what the previous exchange gave)."""
        self._others_seen = {model: frozenset(versions) for model, versions in others.items()}

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "seen": {str(k): sorted(v) for k, v in self._seen.items()},
            "outcomes": [[d, v, ok, failed] for (d, v), (ok, failed) in self._outcomes.items()],
            "devices": {
                i: [d.version, d.previous, d.model, d.site, d.zone, d.protocol,
                    [list(h) for h in d.history or ()], list(d.update) if d.update else None,
                    d.open_alerts()]
                for i, d in self._devices.items()
            },
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"firmware state format {state.get('version')} is not 1")
        self._seen = {(None if k == "None" else k): set(v) for k, v in state["seen"].items()}
        self._outcomes = {(d, v): [int(ok), int(f)] for d, v, ok, f in state["outcomes"]}
        self._devices = {}
        self._updating = {}
        self._affected = {}
        strings = self._strings

        def shared(value: str | None) -> str | None:
            return value if value is None else strings.setdefault(value, value)

        for device_id, row in state["devices"].items():
            version, previous, model, site, zone, protocol, history, update, alerts = row
            device = _Device()
            device.version, device.previous = shared(version), shared(previous)
            device.model = shared(model)
            device.site, device.zone, device.protocol = shared(site), shared(zone), shared(protocol)
            if history:
                device.history = deque(
                    ((float(t), a, b) for t, a, b in history), maxlen=self.config.history
                )
            device.update = (float(update[0]), update[1]) if update else None
            if device.update is not None:
                self._updating[device_id] = device
            device.alerts = {str(k): int(v) for k, v in alerts.items()} or None
            self._devices[device_id] = device
