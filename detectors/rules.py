"""The rule engine: configurable threshold, range and rate-of-change rules per metric.

Each rule watches one canonical metric, optionally only on some device models or sites:

- ``above`` / ``below``: the value crosses ``threshold``;
- ``outside``: the value leaves ``[min, max]``;
- ``rate``: the value changes faster than ``max_rate_per_s`` (per second of device time,
  between consecutive readings of the device; late readings are not used for rates).

``for_s`` makes a condition hold that long (data time) before the rule fires, so a brief
excursion fires nothing. ``hysteresis`` is how far back past the limit the value must come
before the rule clears, so a value hovering at the limit does not flap. Signals are edge
triggered: one firing signal when a rule starts to hold for a device, one cleared signal
when it stops.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from config.settings import RuleSettings
from service.model import EMPTY, MessageKind, Reading, Severity, Signal, SubjectType

_DEFAULT_SUMMARY = {
    "above": "{device}: {metric} {value:.4g} above {limit:.4g}",
    "below": "{device}: {metric} {value:.4g} below {limit:.4g}",
    "outside": "{device}: {metric} {value:.4g} outside {limit}",
    "rate": "{device}: {metric} changing at {value:.4g}/s, over {limit:.4g}/s",
}
_DEFAULT_ACTION = {
    "above": "Check the device and its surroundings: {metric} is above its limit.",
    "below": "Check the device: {metric} is below its limit.",
    "outside": "Check the device: {metric} is outside its normal range.",
    "rate": "Check the sensor: {metric} is changing faster than it physically should.",
}
_WATCHED_KINDS = (MessageKind.TELEMETRY, MessageKind.BATCH)
_UNSEEN = array("d", (math.nan, -math.inf))  # a rate rule's row before any value


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. See the module docstring for the kinds and parameters."""

    name: str
    metric: str
    kind: str
    threshold: float | None = None
    min: float | None = None
    max: float | None = None
    max_rate_per_s: float | None = None
    for_s: float = 0.0
    hysteresis: float = 0.0
    severity: Severity = Severity.WARNING
    models: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    summary: str | None = None
    action: str | None = None

    def __post_init__(self) -> None:
        needed = {
            "above": ("threshold",),
            "below": ("threshold",),
            "outside": ("min", "max"),
            "rate": ("max_rate_per_s",),
        }.get(self.kind)
        if needed is None:
            raise ValueError(f"rule {self.name!r}: unknown kind {self.kind!r}")
        for parameter in needed:
            if getattr(self, parameter) is None:
                raise ValueError(f"rule {self.name!r} of kind {self.kind!r} needs {parameter}")
        if (
            self.kind == "outside"
            and self.min is not None
            and self.max is not None
            and self.min >= self.max
        ):
            raise ValueError(f"rule {self.name!r}: min must be below max")
        if self.for_s < 0 or self.hysteresis < 0:
            raise ValueError(f"rule {self.name!r}: for_s and hysteresis must not be negative")

    @classmethod
    def from_settings(cls, settings: RuleSettings) -> Rule:
        return cls(
            name=settings.name,
            metric=settings.metric,
            kind=settings.kind,
            threshold=settings.threshold,
            min=settings.min,
            max=settings.max,
            max_rate_per_s=settings.max_rate_per_s,
            for_s=settings.for_s,
            hysteresis=settings.hysteresis,
            severity=Severity.parse(settings.severity),
            models=settings.models,
            sites=settings.sites,
            summary=settings.summary,
            action=settings.action,
        )

    @property
    def signal_kind(self) -> str:
        return f"rule.{self.name}"

    def limit_text(self) -> Any:
        if self.kind == "outside":
            return f"[{self.min:.4g}, {self.max:.4g}]"
        if self.kind == "rate":
            return self.max_rate_per_s
        return self.threshold

    def breaches(self, value: float, firing: bool) -> bool:
        """Whether ``value`` breaks the rule; a firing rule clears only past the hysteresis."""
        slack = self.hysteresis if firing else 0.0
        if self.kind == "above":
            return value > self.threshold - slack  # type: ignore[operator]
        if self.kind == "below":
            return value < self.threshold + slack  # type: ignore[operator]
        if self.kind == "outside":
            return value < self.min + slack or value > self.max - slack  # type: ignore[operator]
        return abs(value) > self.max_rate_per_s - slack  # type: ignore[operator]

    def applies_to(self, reading: Reading) -> bool:
        if self.models and reading.meta.get("model") not in self.models:
            return False
        return not (self.sites and reading.meta.get("site") not in self.sites)


class _State:
    """A (rule, device) pair whose condition holds, or is held until ``for_s``, or fires.

    Pairs in neither state are not stored: they behave as a fresh pair would.
    """

    __slots__ = ("firing", "since")

    def __init__(self) -> None:
        self.firing = False
        self.since: float | None = None  # when the condition started to hold


class _Check:
    """One rule as the engine applies it: the limits a value must pass to start breaching,
    its open (rule, device) pairs, and for a rate rule each device's previous value."""

    __slots__ = ("active", "high", "index", "low", "previous", "rate", "rule")

    def __init__(self, index: int, rule: Rule) -> None:
        self.index = index
        self.rule = rule
        self.rate = rule.kind == "rate"
        # the limits of ``Rule.breaches`` for a pair that is not firing (no hysteresis)
        self.low, self.high = -math.inf, math.inf
        if rule.kind == "above":
            self.high = rule.threshold - 0.0  # type: ignore[operator]
        elif rule.kind == "below":
            self.low = rule.threshold + 0.0  # type: ignore[operator]
        elif rule.kind == "outside":
            self.low, self.high = rule.min + 0.0, rule.max - 0.0  # type: ignore[operator]
        else:
            self.high = rule.max_rate_per_s - 0.0  # type: ignore[operator]
        self.active: dict[str, _State] = {}  # device -> open pair
        # rate rules: previous value and its time per device row, two doubles a row
        self.previous = array("d")


_MAX_PLANS = 4096  # (model, site) pairs whose applicable rules are remembered


class RuleEngine:
    """Runs rules over readings.

    Parameters
    ----------
    rules
        The rules; their names must be unique.

    Examples
    --------
    >>> from service.model import Reading
    >>> engine = RuleEngine([Rule("hot", "temperature_c", "above", threshold=70.0,
    ...                           hysteresis=2.0)])
    >>> def reading(t, v):
    ...     return Reading("d1", t, t, {"temperature_c": v}, {"site": "a"})
    >>> for t, v in [(0, 65.0), (60, 71.0), (120, 69.0), (180, 67.5)]:
    ...     for s in engine.process([reading(t, v)]):
    ...         print(t, s.kind, "firing" if s.firing else "cleared", s.evidence["value"])
    60 rule.hot firing 71.0
    180 rule.hot cleared 67.5
    """

    name = "rules"

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        self._reset()

    def _reset(self) -> None:
        self._checks = tuple(_Check(index, rule) for index, rule in enumerate(self.rules))
        self._by_metric = self._plan(self._checks)
        self._metrics = frozenset(self._by_metric)
        self._filtered = any(rule.models or rule.sites for rule in self.rules)
        # (model, site) -> the rules that apply there, by metric
        self._plans: dict[tuple[str | None, str | None], dict[str, tuple[_Check, ...]]] = {}
        self._rows: dict[str, int] = {}  # device -> row of the rate rules' previous values

    @staticmethod
    def _plan(checks: Sequence[_Check]) -> dict[str, tuple[_Check, ...]]:
        by_metric: dict[str, list[_Check]] = {}
        for check in checks:
            by_metric.setdefault(check.rule.metric, []).append(check)
        return {metric: tuple(group) for metric, group in by_metric.items()}

    def _plan_for(self, model: str | None, site: str | None) -> dict[str, tuple[_Check, ...]]:
        """The rules that apply to devices of ``model`` at ``site``, decided once per pair."""
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        meta = {"model": model, "site": site}
        reading = Reading("", 0.0, 0.0, EMPTY, {k: v for k, v in meta.items() if v is not None})
        plan = self._plan([c for c in self._checks if c.rule.applies_to(reading)])
        self._plans[(model, site)] = plan
        return plan

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        watched = self._metrics
        plans = self._plans if self._filtered else None
        telemetry, batch_kind = _WATCHED_KINDS
        for reading in batch:
            device_id, ts, _, metrics, meta, _, kind, late = reading
            if kind is not telemetry and kind is not batch_kind:
                continue
            if watched.isdisjoint(metrics):
                continue
            by_metric = self._by_metric
            if plans is not None:
                model, site = meta.get("model"), meta.get("site")
                plan = plans.get((model, site))
                by_metric = self._plan_for(model, site) if plan is None else plan
            for metric, value in metrics.items():
                checks = by_metric.get(metric)
                if checks is None:
                    continue
                for check in checks:
                    observed = value
                    if check.rate:
                        if late:
                            continue  # late readings are not used for rates
                        row = self._rows.get(device_id)
                        if row is None:
                            row = self._rows[device_id] = len(self._rows)
                        previous = check.previous
                        at = 2 * row
                        if len(previous) <= at:
                            previous.extend(_UNSEEN * (row + 1 - len(previous) // 2))
                        last_value, last_ts = previous[at], previous[at + 1]
                        previous[at], previous[at + 1] = value, ts
                        dt = ts - last_ts
                        if dt <= 0 or math.isnan(last_value):
                            continue
                        observed = (value - last_value) / dt
                        active = check.active
                        state = active.get(device_id)
                        if state is None:
                            if not abs(observed) > check.high:
                                continue
                            state = active[device_id] = _State()
                    else:
                        active = check.active
                        state = active.get(device_id)
                        if state is None:
                            if not (observed > check.high or observed < check.low):
                                continue
                            state = active[device_id] = _State()
                    signal = self._judge(check.rule, state, reading, observed)
                    if not state.firing and state.since is None:
                        del active[device_id]
                    if signal is not None:
                        signals.append(signal)
        return signals

    def _judge(self, rule: Rule, state: _State, reading: Reading, observed: float) -> Signal | None:
        ts = reading.ts
        breached = rule.breaches(observed, state.firing)
        if breached:
            if state.firing:
                return None
            if state.since is None:
                state.since = ts
            if ts - state.since < rule.for_s:
                return None
            state.firing = True
            return self._signal(rule, reading, observed, True, state.since)
        state.since = None
        if state.firing:
            state.firing = False
            return self._signal(rule, reading, observed, False, None)
        return None

    def _signal(
        self, rule: Rule, reading: Reading, value: float, firing: bool, since: float | None
    ) -> Signal:
        limit = rule.limit_text()
        fields = {
            "device": reading.device_id,
            "metric": rule.metric,
            "value": value,
            "limit": limit,
        }
        template = rule.summary or _DEFAULT_SUMMARY[rule.kind]
        if not firing:
            template = (
                "{device}: {metric} back under {limit:.4g}/s"
                if rule.kind == "rate"
                else "{device}: {metric} back to normal ({value:.4g})"
            )
        try:
            summary = template.format(**fields)
        except (KeyError, ValueError, IndexError):
            summary = f"{reading.device_id}: rule {rule.name} on {rule.metric}"
        evidence: dict[str, Any] = {"rule": rule.name, "metric": rule.metric, "value": value}
        if rule.kind == "outside":
            evidence["min"], evidence["max"] = rule.min, rule.max
        elif rule.kind == "rate":
            evidence["rate_per_s"] = value
            evidence["limit"] = rule.max_rate_per_s
        else:
            evidence["limit"] = rule.threshold
        if rule.for_s:
            evidence["for_s"] = rule.for_s
        if since is not None:
            evidence["since"] = since
        action = (rule.action or _DEFAULT_ACTION[rule.kind]).replace("{metric}", rule.metric)
        return Signal(
            kind=rule.signal_kind,
            subject=reading.device_id,
            firing=firing,
            at=reading.ts,
            severity=rule.severity,
            subject_type=SubjectType.DEVICE,
            summary=summary,
            evidence=evidence,
            action=action,
            site=reading.meta.get("site"),
            zone=reading.meta.get("zone"),
        )

    def tick(self, now: float) -> list[Signal]:
        return []

    def state_dict(self) -> dict[str, Any]:
        """One row per (rule, device) pair that differs from a fresh pair: rule name,
        device, firing, since, and for rate rules the previous value and its time."""
        rows: list[list[Any]] = []
        for check in self._checks:
            name = check.rule.name
            if check.rate:
                previous = check.previous
                for device, row in self._rows.items():
                    at = 2 * row
                    if at >= len(previous):
                        break
                    state = check.active.get(device)
                    last_value = previous[at]
                    if state is None and math.isnan(last_value):
                        continue
                    rows.append(
                        [name, device, bool(state and state.firing), state and state.since,
                         last_value, previous[at + 1]]
                    )  # fmt: skip
            else:
                for device, state in check.active.items():
                    rows.append([name, device, state.firing, state.since, math.nan, -math.inf])
        return {"version": 1, "rules": [rule.name for rule in self.rules], "state": rows}

    def load_state(self, state: dict[str, Any]) -> None:
        self._reset()
        index_of = {rule.name: index for index, rule in enumerate(self.rules)}
        for name, device, firing, since, last_value, last_ts in state.get("state", []):
            index = index_of.get(name)
            if index is None:
                continue  # the rule was removed from the configuration
            check = self._checks[index]
            device = str(device)
            if firing or since is not None:
                entry = check.active[device] = _State()
                entry.firing = bool(firing)
                entry.since = since
            if check.rate:
                row = self._rows.get(device)
                if row is None:
                    row = self._rows[device] = len(self._rows)
                previous = check.previous
                if len(previous) <= 2 * row:
                    previous.extend(_UNSEEN * (row + 1 - len(previous) // 2))
                previous[2 * row] = math.nan if last_value is None else float(last_value)
                previous[2 * row + 1] = -math.inf if last_ts is None else float(last_ts)
