"""Environmental correlation: which operating conditions go with which trouble.

For every device, online and in constant memory: its environment (exponentially weighted
temperature, humidity and vibration from its own readings), the stress it has accumulated
(hours above ``hot_c``, above ``humid_pct``, above ``shaking_g``), and its outcomes:

- **lost reports**: reports missing between arrivals, judged against its own rhythm (the
  median of its recent gaps);
- **battery drain**: volts per day, the least-squares slope over the battery's readings;
- **update failures**: failed against attempted firmware updates.

Every ``evaluate_every_s`` (data time) the devices are put in environmental bands (e.g.
temperature above 40 °C) per site and zone, and each band is compared with the rest of the
fleet with a stated test: a one-sided two-proportion z-test for lost reports and update
failures, a one-sided Mann-Whitney U test for battery drain. A band whose outcome is at least
``min_ratio`` times worse at ``p < alpha`` (Bonferroni-corrected over the bands tried) is a
finding, reported in plain words with its numbers, and raises ``environment_risk`` on its
zone until it no longer holds. The report also ranks devices by accumulated stress, the
ones to maintain first.

>>> from service.model import Reading
>>> det = EnvironmentDetector(EnvironmentConfig(min_devices=2))
>>> hot = [Reading(f"h{i}", 0.0, 0.0, {"temperature_c": 50.0}, {"site": "s", "zone": "z1"})
...        for i in range(3)]
>>> _ = det.process(hot)
>>> det.report(0.0)["devices"]
3
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from scipy import stats

from detectors.base import reject_unknown
from service.model import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

_BANDS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "temperature_c": (("below 0 °C", -math.inf, 0.0), ("0-30 °C", 0.0, 30.0),
                      ("30-40 °C", 30.0, 40.0), ("above 40 °C", 40.0, math.inf)),
    "humidity_pct": (("below 30 %RH", -math.inf, 30.0), ("30-70 %RH", 30.0, 70.0),
                     ("above 70 %RH", 70.0, math.inf)),
    "vibration_g": (("below 0.5 g", -math.inf, 0.5), ("0.5-1 g", 0.5, 1.0),
                    ("above 1 g", 1.0, math.inf)),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class EnvironmentConfig:
    bands: Mapping[str, tuple[tuple[str, float, float], ...]] = field(
        default_factory=lambda: dict(_BANDS)
    )
    smoothing: float = 0.05
    hot_c: float = 40.0
    humid_pct: float = 80.0
    shaking_g: float = 1.0
    evaluate_every_s: float = 3_600.0
    min_devices: int = 5
    min_ratio: float = 1.5
    alpha: float = 0.01
    report_limit: int = 50

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EnvironmentConfig:
        known = {f.name for f in fields(cls)} - {"bands"}
        reject_unknown(data, known, "environment")
        return cls(**dict(data))


class _Device:
    __slots__ = (
        "arrivals", "battery_first", "battery_last", "battery_sums", "env", "expected", "first_rx", "gaps",
        "interval", "last_rx", "lost", "site", "stress", "updates", "zone",
    )  # fmt: skip

    def __init__(self, received: float) -> None:
        self.site: str | None = None
        self.zone: str | None = None
        self.env: dict[str, float] = {}
        self.stress = [0.0, 0.0, 0.0]  # hours hot, humid, shaking
        self.first_rx = received
        self.last_rx = received
        self.interval = 0.0
        self.arrivals = 1
        self.gaps: list[float] = []
        self.lost = 0
        self.expected = 0
        self.battery_first: tuple[float, float] | None = None
        self.battery_last: tuple[float, float] | None = None
        # least squares of volts against days since battery_first: n, St, Sv, Stt, Stv
        self.battery_sums = [0.0, 0.0, 0.0, 0.0, 0.0]
        self.updates = [0, 0]  # succeeded, failed

    def lost_share(self) -> tuple[int, int] | None:
        """(lost, expected) reports, or ``None`` before the interval is known."""
        if self.expected < 10:
            return None
        return self.lost, self.expected

    def drain_per_day(self) -> float | None:
        """Volts lost per day: the least-squares slope over every reading of this battery."""
        if self.battery_first is None or self.battery_last is None:
            return None
        if self.battery_last[0] - self.battery_first[0] < 6 * 3600:
            return None
        n, st, sv, stt, stv = self.battery_sums
        denominator = n * stt - st * st
        if n < 3 or denominator <= 0:
            return None
        return -(n * stv - st * sv) / denominator


class EnvironmentDetector:
    """Outcomes by environmental band, per site and zone, with stated tests."""

    name = "environment"
    STATE_VERSION = 1

    def __init__(self, config: EnvironmentConfig | None = None) -> None:
        self.config = config or EnvironmentConfig()
        self._devices: dict[str, _Device] = {}
        self._next_evaluation: float | None = None
        self._open: dict[str, dict[str, Any]] = {}  # zone subject -> finding

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        config = self.config
        alpha = config.smoothing
        for reading in batch:
            device = self._devices.get(reading.device_id)
            received = reading.received_at
            if device is None:
                device = self._devices[reading.device_id] = _Device(received)
            elif received - device.last_rx > 2.0 and not reading.late:
                gap = received - device.last_rx
                # the rhythm is the median of recent gaps: lost reports do not stretch it
                recent = device.gaps
                recent.append(gap)
                if len(recent) > 9:
                    del recent[0]
                device.interval = sorted(recent)[len(recent) // 2]
                if len(recent) >= 5:
                    missed = max(0, round(gap / device.interval) - 1)
                    device.lost += missed
                    device.expected += missed + 1
                device.arrivals += 1
                hours = min(gap, 2 * device.interval) / 3600
                env = device.env
                device.stress[0] += hours * (env.get("temperature_c", -math.inf) > config.hot_c)
                device.stress[1] += hours * (env.get("humidity_pct", -math.inf) > config.humid_pct)
                device.stress[2] += hours * (env.get("vibration_g", -math.inf) > config.shaking_g)
                device.last_rx = received
            meta = reading.meta
            device.site = meta.get("site", device.site)
            device.zone = meta.get("zone", device.zone)
            metrics = reading.metrics
            for metric in config.bands:
                value = metrics.get(metric)
                if value is not None:
                    old = device.env.get(metric)
                    device.env[metric] = value if old is None else old + alpha * (value - old)
            volts = metrics.get("battery_v")
            if volts is not None and not reading.late:
                point = (reading.ts, volts)
                if device.battery_first is None or (
                    device.battery_last is not None and volts > device.battery_last[1] + 0.3
                ):
                    device.battery_first = point  # first reading, or a new battery
                    device.battery_sums = [0.0, 0.0, 0.0, 0.0, 0.0]
                device.battery_last = point
                days = (reading.ts - device.battery_first[0]) / 86_400
                sums = device.battery_sums
                sums[0] += 1
                sums[1] += days
                sums[2] += volts
                sums[3] += days * days
                sums[4] += days * volts
            if reading.kind is MessageKind.FIRMWARE:
                event = meta.get("event")
                if event in ("succeeded", "success"):
                    device.updates[0] += 1
                elif event in ("failed", "failure", "error"):
                    device.updates[1] += 1
        return []

    # -- evaluation ---------------------------------------------------------------------

    def tick(self, now: float) -> list[Signal]:
        if self._next_evaluation is None:
            self._next_evaluation = now + self.config.evaluate_every_s
            return []
        if now < self._next_evaluation:
            return []
        self._next_evaluation = now + self.config.evaluate_every_s
        findings = self.findings()
        signals: list[Signal] = []
        current: dict[str, dict[str, Any]] = {}
        for finding in findings:
            current.setdefault(finding["zone_subject"], finding)
        for subject, finding in current.items():
            if subject not in self._open:
                signals.append(
                    Signal(
                        kind="environment_risk", subject=subject, firing=True, at=now,
                        severity=Severity.WARNING, subject_type=SubjectType.ZONE,
                        summary=finding["text"], evidence=finding,
                        action=finding["recommendation"], site=finding["site"],
                        zone=finding["zone"],
                    )
                )  # fmt: skip
        for subject in set(self._open) - set(current):
            old = self._open[subject]
            signals.append(
                Signal(
                    kind="environment_risk", subject=subject, firing=False, at=now,
                    subject_type=SubjectType.ZONE, summary=f"{subject}: no longer stands out",
                    site=old["site"], zone=old["zone"],
                )
            )  # fmt: skip
        self._open = current
        return signals

    def findings(self) -> list[dict[str, Any]]:
        """Significant bands, most significant first."""
        config = self.config
        groups: dict[tuple[str, str, str, str], list[_Device]] = {}
        for device in self._devices.values():
            if device.site is None or device.zone is None:
                continue
            for metric, bands in config.bands.items():
                value = device.env.get(metric)
                if value is None:
                    continue
                for label, low, high in bands:
                    if low <= value < high:
                        groups.setdefault((device.site, device.zone, metric, label), []).append(
                            device
                        )
                        break
        candidates = {k: v for k, v in groups.items() if len(v) >= config.min_devices}
        tests = max(1, 3 * len(candidates))
        out: list[dict[str, Any]] = []
        everyone = list(self._devices.values())
        for (site, zone, metric, label), members in candidates.items():
            inside = set(map(id, members))
            rest = [d for d in everyone if id(d) not in inside]
            for outcome, result in (
                ("lost reports", _proportion(members, rest, _lost)),
                ("update failures", _proportion(members, rest, _failures)),
                ("battery drain", _drain(members, rest)),
            ):
                if result is None:
                    continue
                ratio, p_value, mine, theirs, n_rest = result
                if ratio >= config.min_ratio and p_value * tests < config.alpha:
                    out.append(_finding(site, zone, metric, label, outcome, ratio, p_value,
                                        mine, theirs, len(members), n_rest))  # fmt: skip
        out.sort(key=lambda f: f["p_value"])
        return out

    def report(self, now: float) -> dict[str, Any]:
        config = self.config
        by_stress = sorted(
            ((sum(d.stress), device_id, d) for device_id, d in self._devices.items()),
            key=lambda item: (-item[0], item[1]),
        )
        stresses = sorted(s for s, _, _ in by_stress)
        median = stresses[len(stresses) // 2] if stresses else 0.0
        maintenance = [
            {"device_id": device_id, "site": d.site, "zone": d.zone,
             "stress_hours": round(total, 1),
             "hot_hours": round(d.stress[0], 1), "humid_hours": round(d.stress[1], 1),
             "shaking_hours": round(d.stress[2], 1),
             "vs_fleet_median": round(total / median, 1) if median > 0 else None}
            for total, device_id, d in by_stress[: config.report_limit]
            if total > 0
        ]  # fmt: skip
        findings = self.findings()
        return {
            "generated_at": iso_utc(now),
            "devices": len(self._devices),
            "tests": ("one-sided two-proportion z-test (lost reports, update failures), "
                      "one-sided Mann-Whitney U (battery drain), Bonferroni-corrected"),
            "findings": findings,
            "recommendations": [f["recommendation"] for f in findings],
            "maintenance_by_stress": maintenance,
        }  # fmt: skip

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "next_evaluation": self._next_evaluation,
            "open": self._open,
            "devices": {
                i: [d.site, d.zone, d.env, d.stress, d.first_rx, d.last_rx, d.interval,
                    d.arrivals, d.battery_first, d.battery_last, d.updates, d.gaps, d.lost,
                    d.expected, d.battery_sums]
                for i, d in self._devices.items()
            },
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"environment state format {state.get('version')} is not 1")
        self._next_evaluation = state.get("next_evaluation")
        self._open = dict(state.get("open", {}))
        self._devices = {}
        for device_id, row in state["devices"].items():
            (site, zone, env, stress, first_rx, last_rx, interval, arrivals, b_first, b_last,
             updates, gaps, lost, expected, battery_sums) = row  # fmt: skip
            device = _Device(float(first_rx))
            device.site, device.zone = site, zone
            device.env = {k: float(v) for k, v in env.items()}
            device.stress = [float(x) for x in stress]
            device.last_rx, device.interval = float(last_rx), float(interval)
            device.arrivals = int(arrivals)
            device.battery_first = (float(b_first[0]), float(b_first[1])) if b_first else None
            device.battery_last = (float(b_last[0]), float(b_last[1])) if b_last else None
            device.updates = [int(updates[0]), int(updates[1])]
            device.gaps = [float(g) for g in gaps]
            device.lost, device.expected = int(lost), int(expected)
            device.battery_sums = [float(x) for x in battery_sums]
            self._devices[device_id] = device


def _lost(device: _Device) -> tuple[int, int] | None:
    return device.lost_share()


def _failures(device: _Device) -> tuple[int, int] | None:
    ok, failed = device.updates
    return (failed, ok + failed) if ok + failed else None


def _proportion(
    members: Sequence[_Device], rest: Sequence[_Device], count: Any
) -> tuple[float, float, float, float, int] | None:
    """Ratio of rates, one-sided z-test p-value, both rates, and the rest's size."""
    mine = [c for c in map(count, members) if c is not None]
    theirs = [c for c in map(count, rest) if c is not None]
    if len(mine) < 2 or len(theirs) < 2:
        return None
    k1, n1 = sum(c[0] for c in mine), sum(c[1] for c in mine)
    k2, n2 = sum(c[0] for c in theirs), sum(c[1] for c in theirs)
    if n1 == 0 or n2 == 0 or k1 == 0:
        return None
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None
    z = (p1 - p2) / se
    p_value = float(stats.norm.sf(z))
    ratio = p1 / p2 if p2 > 0 else math.inf
    return ratio, p_value, p1, p2, len(theirs)


def _drain(
    members: Sequence[_Device], rest: Sequence[_Device]
) -> tuple[float, float, float, float, int] | None:
    mine = [d for d in (m.drain_per_day() for m in members) if d is not None]
    theirs = [d for d in (r.drain_per_day() for r in rest) if d is not None]
    if len(mine) < 3 or len(theirs) < 3:
        return None
    median_mine = sorted(mine)[len(mine) // 2]
    median_theirs = sorted(theirs)[len(theirs) // 2]
    if median_theirs <= 0 or median_mine <= 0:
        return None
    result = stats.mannwhitneyu(mine, theirs, alternative="greater")
    return (
        median_mine / median_theirs,
        float(result.pvalue),
        median_mine,
        median_theirs,
        len(theirs),
    )


def _finding(site: str, zone: str, metric: str, band: str, outcome: str, ratio: float,
             p_value: float, mine: float, theirs: float, n: int, n_rest: int) -> dict[str, Any]:  # fmt: skip
    if outcome == "battery drain":
        numbers = f"{mine * 1000:.1f} vs {theirs * 1000:.1f} mV/day"
        verb = "drain their batteries"
        advice = (
            "batteries will need replacing sooner: plan shorter replacement rounds there, "
            "or shade/ventilate the devices"
        )
    elif outcome == "lost reports":
        numbers = f"{mine:.1%} vs {theirs:.1%} of reports lost"
        verb = "lose reports"
        advice = "check the radio path there (heat and machinery degrade links)"
    else:
        numbers = f"{mine:.1%} vs {theirs:.1%} of updates failed"
        verb = "fail updates"
        advice = "schedule updates when conditions there are milder, and check power during updates"
    text = (f"Devices in {site}/{zone} with {band} {verb} {ratio:.1f}x more than "
            f"the rest of the fleet ({numbers}; n={n} vs {n_rest}; p={p_value:.2g})")  # fmt: skip
    return {
        "site": site, "zone": zone, "zone_subject": f"{site}/{zone}", "metric": metric,
        "band": band, "outcome": outcome, "ratio": round(ratio, 2) if math.isfinite(ratio) else None,
        "p_value": p_value, "value": mine, "rest_value": theirs, "n": n, "n_rest": n_rest,
        "text": text, "recommendation": f"{site}/{zone}: {advice}.",
    }  # fmt: skip
