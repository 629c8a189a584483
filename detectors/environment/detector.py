"""The environment detector (:class:`EnvironmentDetector`): readings into each device's
environment, stress, lost reports, battery fit and update outcomes; evaluations of the bands
into ``environment_risk`` signals; the report; the fleet summaries exchanged with the other
parts of a split fleet; checkpoints as plain data (and the older format they are read from)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from detectors.environment.comparisons import Sketch, _Counts, _drain, battery_type, drain_sketch
from detectors.environment.config import EnvironmentConfig
from detectors.environment.findings import _finding, _p_value
from detectors.environment.fleet import _GAPS, _Fleet
from service.records import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

_STRESS = ("temperature_c", "humidity_pct", "vibration_g")  # hot, humid, shaking
_SUCCEEDED = frozenset(("succeeded", "success"))
_FAILED = frozenset(("failed", "failure", "error"))


class EnvironmentDetector:
    """Outcomes by environmental band, per site and zone, with stated tests."""

    name = "environment"
    STATE_VERSION = 2

    def __init__(self, config: EnvironmentConfig | None = None) -> None:
        self.config = config or EnvironmentConfig()
        self._reset()

    def _reset(self) -> None:
        bands = tuple(self.config.bands)
        # the band metrics, then any stress metric without bands (only ever set from state)
        self._metrics = bands + tuple(m for m in _STRESS if m not in bands)
        self._stress_columns = tuple(self._metrics.index(m) for m in _STRESS)
        self._fleet = _Fleet(len(self._metrics))
        self._next_evaluation: float | None = None
        self._open: dict[str, dict[str, Any]] = {}  # zone subject -> finding
        # what the other parts of a split fleet gave at the last exchange (not saved: the
        # next exchange brings it back), and this detector's own summary, kept while fresh
        self._others: dict[str, Any] | None = None
        self._summary: dict[str, Any] | None = None
        self._summary_at = -math.inf  # the tick clock when it was made
        self._clock = -math.inf  # the latest tick's
        self._changed = True  # readings came since the summary was made

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        config = self.config
        alpha = config.smoothing
        fleet = self._fleet
        rows, names, metas, updates = fleet.rows, fleet.names, fleet.metas, fleet.updates
        values, counts, places, flags = fleet.values, fleet.counts, fleet.places, fleet.flags
        stride, width = fleet.stride, fleet.width
        flag_stride = width + 1
        at_last, at_interval, at_gaps = fleet.last_rx, fleet.interval, fleet.gaps
        at_battery, at_stress = fleet.battery, fleet.stress
        unpack_battery = fleet.battery_record.unpack_from
        pack_battery = fleet.battery_record.pack_into
        hot_env, humid_env, shaking_env = self._stress_columns
        hot_c, humid_pct, shaking_g = config.hot_c, config.humid_pct, config.shaking_g
        band_columns = tuple(enumerate(config.bands))
        firmware = MessageKind.FIRMWARE
        self._changed = True
        for device_id, ts, received, metrics, meta, _, kind, late in batch:
            row = rows.get(device_id)
            if row is None:
                row = fleet.add(device_id, received)
            base = row * stride
            at = base + at_last
            gap = received - values[at]
            if gap > 2.0 and not late:
                values[at] = received
                fb = row * flag_stride
                ring = flags[fb + width]  # the gap ring's state
                gaps = base + at_gaps
                if ring < _GAPS:
                    # filling: the rhythm is the median of the gaps so far, which stays put
                    # when an even count gains a gap above it or an odd count one below it
                    values[gaps + ring] = gap
                    count = ring + 1
                    flags[fb + width] = count
                    if ring == 0:
                        interval = values[base + at_interval] = gap
                    else:
                        interval = values[base + at_interval]
                        if gap > interval if ring & 1 else gap < interval:
                            interval = sorted(values[gaps : gaps + count])[count // 2]
                            values[base + at_interval] = interval
                else:
                    # the gap replaces the oldest; the median moves only when the two lie
                    # on different sides of it
                    oldest = ring - _GAPS
                    leaving = values[gaps + oldest]
                    values[gaps + oldest] = gap
                    flags[fb + width] = ring + 1 if oldest < _GAPS - 1 else _GAPS
                    count = _GAPS
                    interval = values[base + at_interval]
                    if (gap < interval and not leaving < interval) or (
                        gap > interval and not leaving > interval
                    ):
                        interval = sorted(values[gaps : gaps + _GAPS])[_GAPS // 2]
                        values[base + at_interval] = interval
                if count >= 5:
                    # the rhythm is the median of recent gaps: lost reports do not stretch it
                    share = gap / interval
                    cb = 2 * row
                    if share < 1.5:  # rounds to at most one interval: nothing missed
                        counts[cb + 1] += 1
                    else:
                        missed = max(0, round(share) - 1)
                        counts[cb] += missed
                        counts[cb + 1] += missed + 1
                limit = 2 * interval
                hours = (limit if limit < gap else gap) / 3600
                at = base + at_stress
                if hours - hours == 0.0:
                    if values[base + hot_env] > hot_c and flags[fb + hot_env]:
                        values[at] += hours
                    if values[base + humid_env] > humid_pct and flags[fb + humid_env]:
                        values[at + 1] += hours
                    if values[base + shaking_env] > shaking_g and flags[fb + shaking_env]:
                        values[at + 2] += hours
                else:
                    # hours * (condition) as a sum: an infinite hour count adds NaN when not hot
                    values[at] += hours * (flags[fb + hot_env] and values[base + hot_env] > hot_c)
                    values[at + 1] += hours * (
                        flags[fb + humid_env] and values[base + humid_env] > humid_pct
                    )
                    values[at + 2] += hours * (
                        flags[fb + shaking_env] and values[base + shaking_env] > shaking_g
                    )
            if meta is not metas[row]:
                # the registry hands out one (immutable) mapping while metadata is unchanged
                metas[row] = meta
                if meta:
                    at = 2 * row
                    current = names[places[at]]
                    site = meta.get("site", current)
                    if site is not current and site != current:
                        places[at] = fleet.code(site)
                    current = names[places[at + 1]]
                    zone = meta.get("zone", current)
                    if zone is not current and zone != current:
                        places[at + 1] = fleet.code(zone)
            fb = row * flag_stride
            for column, metric in band_columns:
                value = metrics.get(metric)
                if value is not None:
                    at = base + column
                    if flags[fb + column]:
                        old = values[at]
                        values[at] = old + alpha * (value - old)
                    else:
                        values[at] = value
                        flags[fb + column] = 1
            volts = metrics.get("battery_v")
            if volts is not None and not late:
                offset = 8 * (base + at_battery)
                first, _, last_volts, n, st, sv, stt, stv = unpack_battery(values, offset)
                if n == 0 or volts > last_volts + 0.3:
                    # first reading, or a new battery
                    first, n, st, sv, stt, stv = ts, 0.0, 0.0, 0.0, 0.0, 0.0
                days = (ts - first) / 86_400
                pack_battery(values, offset, first, ts, volts, n + 1, st + days, sv + volts,
                             stt + days * days, stv + days * volts)  # fmt: skip
            if kind is firmware:
                event = meta.get("event")
                if event in _SUCCEEDED:
                    updates.setdefault(row, [0, 0])[0] += 1
                elif event in _FAILED:
                    updates.setdefault(row, [0, 0])[1] += 1
        return []

    # -- evaluation ---------------------------------------------------------------------

    def tick(self, now: float) -> list[Signal]:
        self._clock = now
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

    def _candidates(self) -> dict[tuple[str, str, str, str], list[int]]:
        """The bands tested: (site, zone, metric, band) -> its devices' rows, for the bands
        with at least ``min_devices`` devices."""
        config = self.config
        fleet = self._fleet
        names = fleet.names
        bands = tuple(enumerate(config.bands.items()))
        groups: dict[tuple[str, str, str, str], list[int]] = {}
        places = fleet.place_record.iter_unpack(fleet.places)
        flag_rows = fleet.flag_record.iter_unpack(fleet.flags)
        environment = fleet.columns(0, fleet.width)
        for row, (values, (site_code, zone_code), flags) in enumerate(
            zip(environment, places, flag_rows, strict=True)
        ):
            site, zone = names[site_code], names[zone_code]
            if site is None or zone is None:
                continue
            for column, (metric, metric_bands) in bands:
                if not flags[column]:
                    continue
                value = values[column]
                for label, low, high in metric_bands:
                    if low <= value < high:
                        groups.setdefault((site, zone, metric, label), []).append(row)
                        break
        return {k: v for k, v in groups.items() if len(v) >= config.min_devices}

    def findings(self) -> list[dict[str, Any]]:
        """Significant bands, most significant first."""
        config = self.config
        fleet = self._fleet
        candidates = self._candidates()
        if not candidates:
            return []
        others = self._others
        tests = max(1, 3 * (len(candidates) + (others["candidates"] if others else 0)))
        out: list[dict[str, Any]] = []
        lost = _Counts(
            [fleet.lost_share(c) for c in fleet.count_record.iter_unpack(fleet.counts)],
            others["lost"] if others else None,
        )
        failures = _Counts(
            [fleet.failures(row) for row in range(len(fleet.rows))],
            others["failures"] if others else None,
        )
        drains = [fleet.drain_per_day(battery) for battery in fleet.columns(fleet.battery, 8)]
        drained: dict[str, list[tuple[int, float]]] = {}  # battery type -> (row, drain)
        for row, (drain, meta) in enumerate(zip(drains, fleet.metas, strict=True)):
            if drain is not None:
                drained.setdefault(battery_type(meta), []).append((row, drain))
        rest: Mapping[str, Sketch] = others["drains"] if others else {}
        for (site, zone, metric, label), members in candidates.items():
            inside = set(members)
            for outcome, result in (
                ("lost reports", lost.proportion(members)),
                ("update failures", failures.proportion(members)),
                ("battery drain", _drain(inside, drained, rest)),
            ):
                if result is None:
                    continue
                ratio, p_value, mine, theirs, n_rest = result
                if ratio >= config.min_ratio and p_value * tests < config.alpha:
                    out.append(_finding(site, zone, metric, label, outcome, ratio, p_value,
                                        mine, theirs, len(members), n_rest))  # fmt: skip
        out.sort(key=_p_value)
        return out

    def report(self, now: float) -> dict[str, Any]:
        config = self.config
        fleet = self._fleet
        names = fleet.names
        limit = config.report_limit
        stress = list(fleet.columns(fleet.stress, 3))
        totals = [sum(hours) for hours in stress]
        ordered = sorted(totals)
        median = ordered[len(ordered) // 2] if ordered else 0.0
        devices = list(fleet.rows)
        if any(t != t for t in totals):  # NaN: keep the order a full sort gives
            ranked = sorted(zip(totals, devices, range(len(devices)), strict=True),
                            key=lambda item: (-item[0], item[1]))  # fmt: skip
            top = ranked[:limit]
        else:
            # only the devices that can make the top ``limit`` are sorted
            cut = ordered[len(ordered) - limit] if 0 < limit < len(ordered) else -math.inf
            ranked = [(-t, devices[row], row) for row, t in enumerate(totals) if t >= cut]
            ranked.sort()
            top = [(-t, device_id, row) for t, device_id, row in ranked[:limit]]
        maintenance = [
            {"device_id": device_id, "site": names[fleet.places[2 * row]],
             "zone": names[fleet.places[2 * row + 1]], "stress_hours": round(total, 1),
             "hot_hours": round(stress[row][0], 1), "humid_hours": round(stress[row][1], 1),
             "shaking_hours": round(stress[row][2], 1),
             "vs_fleet_median": round(total / median, 1) if median > 0 else None}
            for total, device_id, row in top
            if total > 0
        ]  # fmt: skip
        findings = self.findings()
        return {
            "generated_at": iso_utc(now),
            "devices": len(fleet.rows),
            "tests": ("one-sided two-proportion z-test (lost reports, update failures), "
                      "one-sided Mann-Whitney U (battery drain), Bonferroni-corrected"),
            "findings": findings,
            "recommendations": [f["recommendation"] for f in findings],
            "maintenance_by_stress": maintenance,
        }  # fmt: skip

    # -- a fleet split over several detectors ---------------------------------------------

    def fleet_summary(self) -> dict[str, Any]:
        """What this detector's devices add to "the rest of the fleet": its number of
        candidate bands, ``lost`` and ``failures`` as (devices known, count, out of) summed,
        and its battery drains as a :func:`drain_sketch` (its own devices only).

        Made afresh when readings came since the last one, at most once per sixtieth of
        ``evaluate_every_s`` of the tick clock (a minute by default); in between, the last
        one is given again.
        """
        refresh = self.config.evaluate_every_s / 60.0
        fresh = not self._changed or self._clock - self._summary_at < refresh
        if self._summary is not None and fresh:
            return self._summary
        fleet = self._fleet
        lost = _Counts([fleet.lost_share(c) for c in fleet.count_record.iter_unpack(fleet.counts)])
        failures = _Counts([fleet.failures(row) for row in range(len(fleet.rows))])
        by_type: dict[str, list[tuple[float, int]]] = {}
        for battery, meta in zip(fleet.columns(fleet.battery, 8), fleet.metas, strict=True):
            drain = fleet.drain_per_day(battery)
            if drain is not None:
                by_type.setdefault(battery_type(meta), []).append((drain, 1))
        self._summary = {
            "candidates": len(self._candidates()),
            "lost": (lost.known, lost.total_k, lost.total_n),
            "failures": (failures.known, failures.total_k, failures.total_n),
            "drains": {kind: drain_sketch(pairs) for kind, pairs in sorted(by_type.items())},
        }
        self._summary_at = self._clock
        self._changed = False
        return self._summary

    @staticmethod
    def merge_fleet_summaries(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Several detectors' summaries as one: counts added, drains of each battery type
        sketched together.

        >>> a = {"candidates": 2, "lost": (5, 3, 900), "failures": (1, 1, 2),
        ...      "drains": {"li_ion": ((0.01, 2),)}}
        >>> b = {"candidates": 1, "lost": (4, 0, 800), "failures": (0, 0, 0),
        ...      "drains": {"li_ion": ((0.01, 1), (0.03, 1)), "alkaline_2aa": ((0.2, 1),)}}
        >>> EnvironmentDetector.merge_fleet_summaries([a, b])["drains"]
        {'alkaline_2aa': ((0.2, 1),), 'li_ion': ((0.01, 3), (0.03, 1))}
        """

        def added(key: str) -> tuple[int, int, int]:
            known, k, n = 0, 0, 0
            for summary in summaries:
                known, k, n = (a + int(b) for a, b in zip((known, k, n), summary[key], strict=True))
            return known, k, n

        return {
            "candidates": sum(int(summary["candidates"]) for summary in summaries),
            "lost": added("lost"),
            "failures": added("failures"),
            "drains": {
                kind: drain_sketch(
                    (float(value), int(count))
                    for summary in summaries
                    for value, count in summary["drains"].get(kind, ())
                )
                for kind in sorted({kind for summary in summaries for kind in summary["drains"]})
            },
        }

    def apply_fleet_summary(self, others: Mapping[str, Any]) -> None:
        """Take the other parts' summary (replacing what the previous exchange gave); the
        next evaluations test each band against this detector's devices and theirs."""
        self._others = self.merge_fleet_summaries([others])

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Per device: site, zone, environment, stress hours, last arrival, recent gaps, lost
        and expected reports, the battery fit (first ts, last ts, last volts, n, St, Sv,
        Stt, Stv) or ``None``, and (succeeded, failed) updates or ``None``."""
        fleet = self._fleet
        metrics, names, ring = self._metrics, fleet.names, fleet.gap_ring
        at_stress, at_battery = fleet.stress, fleet.battery
        devices = {}
        for (device_id, row), (values, (lost, expected), (site, zone), flags) in zip(
            fleet.rows.items(), fleet.records(), strict=True
        ):
            battery = values[at_battery : at_battery + 8]
            devices[device_id] = [
                names[site], names[zone],
                {m: values[k] for k, m in enumerate(metrics) if flags[k]},
                list(values[at_stress : at_stress + 3]), values[fleet.last_rx],
                fleet.gaps_of(values, flags[ring]), lost, expected,
                list(battery) if battery[3] else None, fleet.updates.get(row),
            ]  # fmt: skip
        return {
            "version": self.STATE_VERSION,
            "next_evaluation": self._next_evaluation,
            "open": self._open,
            "devices": devices,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version not in (1, self.STATE_VERSION):
            raise ValueError(f"environment state format {version} is not 1 or 2")
        self._reset()
        self._next_evaluation = state.get("next_evaluation")
        self._open = dict(state.get("open", {}))
        fleet = self._fleet
        column = {m: k for k, m in enumerate(self._metrics)}
        for device_id, saved in state["devices"].items():
            row_state = _from_v1(saved) if version == 1 else saved
            site, zone, env, stress, last_rx, gaps, lost, expected, battery, updates = row_state
            row = fleet.add(device_id, float(last_rx))
            values, flags = fleet.values, fleet.flags
            base, flag_base = row * fleet.stride, row * (fleet.width + 1)
            fleet.places[2 * row] = fleet.code(site)
            fleet.places[2 * row + 1] = fleet.code(zone)
            for metric, value in env.items():
                if metric in column:
                    values[base + column[metric]] = float(value)
                    flags[flag_base + column[metric]] = 1
            values[base + fleet.stress : base + fleet.stress + 3] = array("d", map(float, stress))
            recent = [float(g) for g in gaps][-_GAPS:]
            at = base + fleet.gaps
            values[at : at + len(recent)] = array("d", recent)
            flags[flag_base + fleet.gap_ring] = len(recent)
            if recent:
                values[base + fleet.interval] = sorted(recent)[len(recent) // 2]
            fleet.counts[2 * row] = int(lost)
            fleet.counts[2 * row + 1] = int(expected)
            if battery:
                at = base + fleet.battery
                values[at : at + 8] = array("d", map(float, battery))
            if updates is not None:
                fleet.updates[row] = [int(updates[0]), int(updates[1])]


def _from_v1(row: list[Any]) -> list[Any]:
    """A device saved in state format 1, in the layout of format 2."""
    (site, zone, env, stress, _first_rx, last_rx, _interval, _arrivals, b_first, b_last,
     updates, gaps, lost, expected, battery_sums) = row  # fmt: skip
    battery = None
    if b_first and b_last:
        battery = [b_first[0], b_last[0], b_last[1], *battery_sums]
    return [site, zone, env, stress, last_rx, gaps, lost, expected, battery,
            updates if updates[0] or updates[1] else None]  # fmt: skip
