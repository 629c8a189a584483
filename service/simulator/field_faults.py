"""Faults planted on a field fleet, and the ground truth that says what was planted.

The sensor faults the catalogue of :mod:`service.simulator.faults` lacks are here
(:class:`StuckSensor`, :class:`StepSensor`, :class:`AgeingSensor`, :class:`NoisySensor`,
:class:`ClusteredOutages`, :class:`FirmwareRegression`); the others are that module's own
classes (``Silent``, ``FadingSignal``, ``BatteryFailing``, ``ShortCircuit``, ``SlowLeak``,
``RadioNoSleep``, ``Overheating``, ``GatewayOverload``, ``GatewayDown``).

Ground truth is a list of :class:`TruthRecord`: what (``fault``), on whom (``subject``:
a device, a gateway or a site), from when to when, which alert kinds count as detecting it
(:data:`FAULT_KINDS`, the table below), extra facts (the true drift rate, the true time the
battery is empty) and, for a gateway's trouble, the devices whose alerts it explains.
*Conditions* are records of true states that are not faults (a firmware version an advisory
lists, an update that failed, a gateway's planned maintenance): alerts about them are
expected, neither detections nor false alarms.

==================== ========= ==================================================== ========
fault / condition    subject   alert kinds that count as detecting it               grace
==================== ========= ==================================================== ========
gateway_outage       gateway   gateway_down                                         1 h
gateway_overload     gateway   gateway_overloaded                                   2 h
gateway_imbalance    site      gateway_imbalance                                    2 h
firmware_regression  device    firmware_unexpected_change                           1 h
stuck                device    sensor_fault                                         6 h
step                 device    sensor_fault                                         6 h
drift                device    sensor_drift                                         1 d
noisy                device    sensor_fault                                         6 h
offline              device    device_offline                                       2 h
intermittent         device    intermittent_connectivity, device_offline            2 h
fading_signal        device    signal_degrading, rule.weak_signal, device_offline   2 h
battery_failing      device    power_anomaly, battery_depletion, rule.battery_low   1 d
short_circuit        device    power_anomaly, battery_depletion                     1 d
slow_leak            device    power_anomaly, battery_depletion                     1 d
radio_no_sleep       device    power_anomaly, battery_depletion                     1 d
overheating          device    rule.overheating                                     1 h
battery_depletion    device    battery_depletion, rule.battery_low (15 d early ok)  1 d
vulnerable_firmware  device    firmware_vulnerable (condition)                      1 h
update_failed        device    firmware_update_failed, firmware_update_stuck (c.)   1 h
gateway_maintenance  gateway   gateway_down (condition)                             1 h
==================== ========= ==================================================== ========

An alert *episode* (firing to resolved) matches a record when its kind is one of the
record's, its subject is the record's, and it starts between ``start_ts - early_s`` and
``end_ts + grace_s``. ``battery_depletion`` starts 30 days before the true empty time
(the detector's warning horizon), so its delay is how late the warning came; a warning up
to 15 days earlier still counts.

>>> rec = TruthRecord("offline", "th-000001", "device", "plant-a", 100.0, 500.0,
...                   FAULT_KINDS["offline"].alert_kinds, grace_s=7200.0)
>>> rec.matches("device_offline", "th-000001", 400.0), rec.matches("device_offline", "x", 400.0)
(True, False)
>>> rec.matches("device_offline", "th-000001", 500.0 + 7201.0)
False
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from service.simulator.faults import Extra, Fault, FirmwareChange, Intermittent

HOUR_S = 3_600.0
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class FaultKind:
    """A row of the mapping table: what detects a fault kind, and how late it may come."""

    name: str
    subject_type: str  # "device", "gateway" or "site"
    alert_kinds: tuple[str, ...]  # alert kinds that count as detecting it
    grace_s: float  # an alert starting this long after the fault's end still counts
    early_s: float = 0.0  # ... or this long before its start
    condition: bool = False  # a true state that is not a fault
    what: str = ""


FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind("gateway_outage", "gateway", ("gateway_down",), HOUR_S,
                  what="a gateway dies for hours: one gateway alert, no per-device storm"),
        FaultKind("gateway_overload", "gateway", ("gateway_overloaded",), 2 * HOUR_S,
                  what="devices pile onto one gateway, which reports latency and loss"),
        FaultKind("gateway_imbalance", "site", ("gateway_imbalance",), 2 * HOUR_S,
                  what="the same move, seen as the site's loads out of balance"),
        FaultKind("firmware_regression", "device", ("firmware_unexpected_change",), HOUR_S,
                  what="a bad version nobody ordered; the device reboots every few hours"),
        FaultKind("stuck", "device", ("sensor_fault",), 6 * HOUR_S,
                  what="a sensor repeats one value"),
        FaultKind("step", "device", ("sensor_fault",), 6 * HOUR_S,
                  what="a sensor's offset jumps 6-15 % of the reading"),
        FaultKind("drift", "device", ("sensor_drift",), DAY_S,
                  what="an ageing sensor drifts at a steady rate (facts: rate_pct_per_day)"),
        FaultKind("noisy", "device", ("sensor_fault",), 6 * HOUR_S,
                  what="a sensor's noise grows several-fold"),
        FaultKind("offline", "device", ("device_offline",), 2 * HOUR_S,
                  what="the device dies and never reports again"),
        FaultKind("intermittent", "device", ("intermittent_connectivity", "device_offline"),
                  2 * HOUR_S, what="clustered outages of 15-60 min, several a day"),
        FaultKind("fading_signal", "device",
                  ("signal_degrading", "rule.weak_signal", "device_offline"), 2 * HOUR_S,
                  what="RSSI falls a few dB a day until the link is lost"),
        FaultKind("battery_failing", "device",
                  ("power_anomaly", "battery_depletion", "rule.battery_low"), DAY_S,
                  what="the cell collapses to empty within hours; replaced later"),
        FaultKind("short_circuit", "device", ("power_anomaly", "battery_depletion"), DAY_S,
                  what="the draw jumps 3-6x"),
        FaultKind("slow_leak", "device", ("power_anomaly", "battery_depletion"), DAY_S,
                  what="the draw grows 10-30 % of the healthy draw a day"),
        FaultKind("radio_no_sleep", "device", ("power_anomaly", "battery_depletion"), DAY_S,
                  what="a firmware update keeps the radio awake: 3-5x the draw"),
        FaultKind("overheating", "device", ("rule.overheating",), HOUR_S,
                  what="the device heats to 75-95 °C for hours, then cools down"),
        FaultKind("battery_depletion", "device", ("battery_depletion", "rule.battery_low"),
                  DAY_S, early_s=15 * DAY_S,
                  what="a low battery runs out naturally (facts: empty_at); starts 30 d before"),
        FaultKind("vulnerable_firmware", "device", ("firmware_vulnerable",), HOUR_S,
                  condition=True, what="runs a version an advisory lists, until updated"),
        FaultKind("update_failed", "device", ("firmware_update_failed", "firmware_update_stuck"),
                  HOUR_S, condition=True, what="a campaign update failed once; retried later"),
        FaultKind("gateway_maintenance", "gateway", ("gateway_down",), HOUR_S, condition=True,
                  what="a planned outage of one gateway for tens of minutes"),
    )
}  # fmt: skip
"""The mapping table, by fault kind (see the module's docstring)."""

DEVICE_FAULTS = tuple(k for k, v in FAULT_KINDS.items() if v.subject_type == "device"
                      and not v.condition)  # fmt: skip
"""Fault kinds planted on single devices."""


@dataclass(frozen=True, slots=True)
class TruthRecord:
    """One planted fault (or condition): what, on whom, when, and what detects it."""

    fault: str  # a key of FAULT_KINDS
    subject: str  # device id, gateway id or site
    subject_type: str  # "device", "gateway" or "site"
    site: str
    start_ts: float  # epoch s
    end_ts: float  # epoch s; the simulation's end when the fault lasts
    alert_kinds: tuple[str, ...]  # alert kinds that count as detecting it
    grace_s: float = HOUR_S  # an episode starting up to this long after end_ts counts
    early_s: float = 0.0  # ... or up to this long before start_ts
    condition: bool = False  # a true state, not a fault: its alerts are expected
    facts: tuple[tuple[str, float | str], ...] = ()  # e.g. ("rate_pct_per_day", 0.12)
    affected: tuple[str, ...] = ()  # devices whose alerts this explains (gateway trouble)

    def fact(self, name: str, default: Any = None) -> Any:
        """An extra fact by name (``default`` when absent)."""
        for key, value in self.facts:
            if key == name:
                return value
        return default

    def matches(self, kind: str, subject: str, started_at: float) -> bool:
        """Whether an alert episode of ``kind`` on ``subject`` starting at ``started_at``
        counts as detecting this record."""
        return (
            subject == self.subject
            and kind in self.alert_kinds
            and self.start_ts - self.early_s <= started_at <= self.end_ts + self.grace_s
        )


def truth(
    fault: str,
    subject: str,
    site: str,
    start_ts: float,
    end_ts: float,
    *,
    facts: dict[str, float | str] | None = None,
    affected: tuple[str, ...] = (),
) -> TruthRecord:
    """A record of ``fault`` with the mapping table's subject type, alert kinds and grace."""
    kind = FAULT_KINDS[fault]
    return TruthRecord(
        fault, subject, kind.subject_type, site, start_ts, end_ts, kind.alert_kinds,
        grace_s=kind.grace_s, early_s=kind.early_s, condition=kind.condition,
        facts=tuple(sorted((facts or {}).items())), affected=affected,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FieldEvent:
    """Something that happened that is not a fault (a reboot, a relocation ...)."""

    kind: str  # reboot, relocation, battery_swap, calibration, duty_cycle, buffered_gap,
    # firmware_update, gateway_maintenance
    subject: str  # device or gateway id
    ts: float  # when it started (epoch s)
    end_ts: float  # when it ended (the same as ts for an instant)


# -- sensor faults ---------------------------------------------------------------------------


class StuckSensor(Fault):
    """The sensor of ``metric`` repeats the value it read when the fault began."""

    name = "stuck"

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        metric = str(self.params["metric"])
        if metric in values:
            values[metric] = self.params.setdefault("value", values[metric])


class StepSensor(Fault):
    """The sensor of ``metric`` reads ``offset`` (in its unit) off from the start."""

    name = "step"

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        metric = str(self.params["metric"])
        if metric in values:
            values[metric] += self.param("offset", 0.0)


class AgeingSensor(Fault):
    """The sensor of ``metric`` drifts ``per_day`` (its unit per day) from the start."""

    name = "drift"

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        metric = str(self.params["metric"])
        if metric in values:
            values[metric] += self.param("per_day", 0.0) * (ts - self.start_ts) / DAY_S


class NoisySensor(Fault):
    """The sensor of ``metric`` gains noise of standard deviation ``sigma`` (its unit)."""

    name = "noisy"

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        metric = str(self.params["metric"])
        if metric in values:
            values[metric] += self.device.rng.gauss(0.0, self.param("sigma", 1.0))


class ClusteredOutages(Intermittent):
    """A link that drops in clusters: the report is lost inside any of ``windows``
    (a sorted tuple of ``(start, end)``), drawn so that outages come several a day."""

    name = "intermittent"

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        windows: tuple[tuple[float, float], ...] = self.params["windows"]
        index = int(self.params.get("at", 0))
        while index < len(windows) and windows[index][1] <= ts:
            index += 1
        self.params["at"] = index
        return index < len(windows) and windows[index][0] <= ts


class FirmwareRegression(FirmwareChange):
    """An update nobody ordered to a bad ``version``, after which the device reboots
    every ``period_s`` (its sequence counter and uptime start again)."""

    name = "firmware_regression"

    def on_start(self, ts: float) -> list[Extra]:
        self.params["last_boot"] = ts
        return super().on_start(ts)

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        if ts - float(self.params["last_boot"]) >= self.param("period_s", 4 * HOUR_S):
            self.params["last_boot"] = ts
            self.device.seq = 0
            meta["reboot"] = True


def outage_windows(
    rng: random.Random, start: float, end: float, per_day: tuple[float, float]
) -> tuple[tuple[float, float], ...]:
    """Outages of 15-60 min between ``start`` and ``end``, ``per_day`` of them a day on
    average, some in quick succession (clustered)."""
    windows: list[tuple[float, float]] = []
    rate = rng.uniform(*per_day) / DAY_S
    t = start + rng.expovariate(rate)
    while t < end:
        length = rng.uniform(900.0, 3600.0)
        windows.append((t, min(end, t + length)))
        # a link in trouble often drops again soon
        t += length + (rng.uniform(600.0, 3600.0) if rng.random() < 0.4 else rng.expovariate(rate))
    return tuple(windows)
