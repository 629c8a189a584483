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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from config.settings import RuleSettings
from service.records import EMPTY, MessageKind, Reading, Severity, Signal, SubjectType

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

# A plan: the rules that apply to some devices, as (plain, rate) entries in rule order.
# plain: (metric, low, high, open pairs, check); rate: (metric, high, -high, open pairs,
# previous values, check).
_PlainEntry = tuple[str, float, float, dict[str, _State], _Check]
_RateEntry = tuple[str, float, float, dict[str, _State], "array[float]", _Check]
_Plan = tuple[tuple[_PlainEntry, ...], tuple[_RateEntry, ...]]


class RuleEngine:
    """Runs rules over readings.

    Parameters
    ----------
    rules
        The rules; their names must be unique.

    Examples
    --------
    >>> from service.records import Reading
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
        self._rate_checks = tuple(check for check in self._checks if check.rate)
        self._plan_all = self._plan(self._checks)
        self._filtered = any(rule.models or rule.sites for rule in self.rules)
        # (model, site) -> the rules that apply there
        self._plans: dict[tuple[str | None, str | None], _Plan] = {}
        # device -> row of the rate rules' previous values; every rate rule has a row for
        # every device here
        self._rows: dict[str, int] = {}
        self._open: dict[str, int] = {}  # device -> its open pairs, over every rule

    @staticmethod
    def _plan(checks: Sequence[_Check]) -> _Plan:
        plain: list[_PlainEntry] = []
        rate: list[_RateEntry] = []
        for check in checks:
            metric = check.rule.metric
            if check.rate:
                rate.append((metric, check.high, -check.high, check.active, check.previous, check))
            else:
                plain.append((metric, check.low, check.high, check.active, check))
        return tuple(plain), tuple(rate)

    def _plan_for(self, model: str | None, site: str | None) -> _Plan:
        """The rules that apply to devices of ``model`` at ``site``, decided once per pair."""
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        meta = {"model": model, "site": site}
        reading = Reading("", 0.0, 0.0, EMPTY, {k: v for k, v in meta.items() if v is not None})
        plan = self._plan([c for c in self._checks if c.rule.applies_to(reading)])
        self._plans[(model, site)] = plan
        return plan

    def _add_row(self, device_id: str) -> int:
        """A row of previous values, unseen in every rate rule, for a new device."""
        row = self._rows[device_id] = len(self._rows)
        for check in self._rate_checks:
            previous = check.previous
            previous.extend(_UNSEEN * (row + 1 - len(previous) // 2))
        return row

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        plain, rate = self._plan_all
        plans = self._plans if self._filtered else None
        rows, open_pairs = self._rows, self._open
        step = self._step
        telemetry, batch_kind = _WATCHED_KINDS
        for device_id, ts, _, metrics, meta, _, kind, late in batch:
            if kind is not telemetry and kind is not batch_kind:
                continue
            if plans is not None:
                model, site = meta.get("model"), meta.get("site")
                plan = plans.get((model, site))
                plain, rate = self._plan_for(model, site) if plan is None else plan
            found: list[tuple[str, int, Signal]] | None = None
            opened = device_id in open_pairs
            for metric, low, high, active, check in plain:
                if metric in metrics:
                    value = metrics[metric]
                    # a pair that is open, or a value past the limits, is judged in full
                    if value > high or value < low or (opened and device_id in active):
                        signal = step(check, active, device_id, ts, meta, value)
                        if signal is not None:
                            if found is None:
                                found = []
                            found.append((metric, check.index, signal))
            if rate and not late:  # late readings are not used for rates
                at = -1
                for metric, high, low, active, previous, check in rate:
                    if metric in metrics:
                        value = metrics[metric]
                        if at < 0:
                            try:
                                at = 2 * rows[device_id]
                            except KeyError:
                                at = 2 * self._add_row(device_id)
                        last_value, last_ts = previous[at], previous[at + 1]
                        previous[at] = value
                        previous[at + 1] = ts
                        dt = ts - last_ts
                        if dt <= 0 or last_value != last_value:
                            continue
                        observed = (value - last_value) / dt
                        if observed > high or observed < low or (opened and device_id in active):
                            signal = step(check, active, device_id, ts, meta, observed)
                            if signal is not None:
                                if found is None:
                                    found = []
                                found.append((metric, check.index, signal))
            if found is not None:
                if len(found) > 1:
                    # in the order of the reading's metrics, then of the rules
                    position = {metric: k for k, metric in enumerate(metrics)}
                    found.sort(key=lambda item: (position[item[0]], item[1]))
                signals.extend(signal for _, _, signal in found)
        return signals

    def _step(
        self,
        check: _Check,
        active: dict[str, _State],
        device_id: str,
        ts: float,
        meta: Mapping[str, str],
        observed: float,
    ) -> Signal | None:
        """Judge a pair that is open or whose value passed the limits of a fresh pair."""
        state = active.get(device_id)
        if state is None:
            if check.rate:
                if not abs(observed) > check.high:
                    return None
            elif not (observed > check.high or observed < check.low):
                return None
            state = active[device_id] = _State()
            self._open[device_id] = self._open.get(device_id, 0) + 1
        signal = self._judge(check.rule, state, device_id, ts, meta, observed)
        if not state.firing and state.since is None:
            del active[device_id]
            left = self._open.pop(device_id) - 1
            if left:
                self._open[device_id] = left
        return signal

    def _judge(
        self,
        rule: Rule,
        state: _State,
        device_id: str,
        ts: float,
        meta: Mapping[str, str],
        observed: float,
    ) -> Signal | None:
        breached = rule.breaches(observed, state.firing)
        if breached:
            if state.firing:
                return None
            if state.since is None:
                state.since = ts
            if ts - state.since < rule.for_s:
                return None
            state.firing = True
            return self._signal(rule, device_id, ts, meta, observed, True, state.since)
        state.since = None
        if state.firing:
            state.firing = False
            return self._signal(rule, device_id, ts, meta, observed, False, None)
        return None

    def _signal(
        self,
        rule: Rule,
        device_id: str,
        ts: float,
        meta: Mapping[str, str],
        value: float,
        firing: bool,
        since: float | None,
    ) -> Signal:
        limit = rule.limit_text()
        fields = {
            "device": device_id,
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
            summary = f"{device_id}: rule {rule.name} on {rule.metric}"
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
            subject=device_id,
            firing=firing,
            at=ts,
            severity=rule.severity,
            subject_type=SubjectType.DEVICE,
            summary=summary,
            evidence=evidence,
            action=action,
            site=meta.get("site"),
            zone=meta.get("zone"),
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
                self._open[device] = self._open.get(device, 0) + 1
            if check.rate:
                row = self._rows.get(device)
                if row is None:
                    row = self._rows[device] = len(self._rows)
                previous = check.previous
                if len(previous) <= 2 * row:
                    previous.extend(_UNSEEN * (row + 1 - len(previous) // 2))
                previous[2 * row] = math.nan if last_value is None else float(last_value)
                previous[2 * row + 1] = -math.inf if last_ts is None else float(last_ts)
        for check in self._rate_checks:
            previous = check.previous
            previous.extend(_UNSEEN * (len(self._rows) - len(previous) // 2))
