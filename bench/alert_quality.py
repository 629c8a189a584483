"""Alert quality against ground truth on realistic simulated fleets, per realism profile.

Each run simulates a field fleet (:class:`service.simulator.field_run.FieldSimulator`:
one realism profile, one seed), replays its messages in receive order through the real
pipeline (``service.replay.engine.replay`` with every detector the configuration enables),
collects every alert change, turns them into episodes (firing -> resolved) and matches the
episodes to the planted ground truth:

- an episode **detects** a fault when its subject is the fault's device, gateway or site,
  its kind is one of those the mapping table of :mod:`service.simulator.field_faults`
  lists for the fault, and it starts between the fault's start (less ``early_s``) and its
  end plus a grace (1 h to 1 day by kind; depletion warnings up to 15 days early count);
- an episode matching a *condition* (a firmware version an advisory lists, an update that
  failed, a gateway's planned maintenance) is **expected**: neither true nor false;
- an episode on a device behind a gateway that is down or overloaded (or on the gateway's
  own record), starting during that trouble or within its grace, belongs to that trouble's
  **storm**;
- any other episode on a faulty device is **other** (not counted as false);
- the rest are **false**: on healthy devices they are counted per 1,000 healthy
  device-days and as the share of healthy devices with at least one.

Battery time-to-empty error is read from the battery detector itself: for every device
whose battery runs out naturally, its forecast (:meth:`BatteryDetector.forecasts`, the
``empty_at`` the detector's report also gives) is taken as the replay passes 30, 7 and 1
days before the true empty time (within one pipeline tick: the messages before it have been
processed), and compared with the true time. Drift is judged from the ``sensor_drift``
evidence (``rate_pct_per_day``, ``predicted_out_of_tolerance_at``) against the true rate.

The first profile is the one detectors are **tuned** on, the others are **held-out**.
Prints one Markdown table (a column per profile) and writes the same numbers as JSON to
``bench/out/alert_quality.json``; progress goes to stderr.

    uv run python bench/alert_quality.py                       # plant + cold-chain, 3 seeds each
    uv run python bench/alert_quality.py --devices 120 --days 7 --seeds 1
    uv run python bench/alert_quality.py --profile cold-chain --config my.toml
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config.settings import EXAMPLE_CONFIG, Settings, load_settings  # noqa: E402
from detectors import build_detectors  # noqa: E402
from detectors.battery import BatteryDetector  # noqa: E402
from service.alerts.sinks import MemorySink  # noqa: E402
from service.records import AlertRecord, AlertState, RawMessage  # noqa: E402
from service.replay.engine import replay  # noqa: E402
from service.simulator.field_faults import FAULT_KINDS, TruthRecord  # noqa: E402
from service.simulator.field_run import FieldSimulator  # noqa: E402
from service.simulator.realism import PROFILES  # noqa: E402

DAY = 86_400.0
HORIZONS_D = (30.0, 7.0, 1.0)  # battery forecasts are judged this many days before empty
CAUSE_WINDOW_S = {  # a false episode this soon after a non-fault event is put down to it
    "reboot": 6 * 3600.0, "buffered_gap": 3600.0, "relocation": 2 * DAY,
    "battery_swap": 2 * DAY, "calibration": DAY, "duty_cycle": 3 * DAY,
    "firmware_update": DAY, "gateway_maintenance": 3600.0,
}  # fmt: skip
OUT = ROOT / "bench" / "out" / "alert_quality.json"
STORM_FAULTS = ("gateway_outage", "gateway_maintenance", "gateway_overload")


# -- episodes ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Episode:
    """One alert from firing to resolved (``end`` is None while still firing at the end)."""

    kind: str
    subject: str
    start: float
    end: float | None
    evidence: dict[str, Any] = field(default_factory=dict)  # the latest firing evidence
    first_evidence: dict[str, Any] = field(default_factory=dict)


def episodes(changes: Iterable[AlertRecord]) -> list[Episode]:
    """Alert changes (in the order they happened) as episodes: firing -> resolved.

    >>> from service.records import Severity, SubjectType
    >>> def rec(state, at):
    ...     return AlertRecord("i", "device_offline", "d1", SubjectType.DEVICE, None, None,
    ...         Severity.WARNING, state, 10.0, at, at if state is AlertState.RESOLVED else None,
    ...         "", {"n": at}, "")
    >>> eps = episodes([rec(AlertState.FIRING, 10.0), rec(AlertState.FIRING, 20.0),
    ...                 rec(AlertState.RESOLVED, 30.0), rec(AlertState.FIRING, 40.0)])
    >>> [(e.start, e.end, e.evidence["n"]) for e in eps]
    [(10.0, 30.0, 20.0), (10.0, None, 40.0)]
    """
    open_: dict[tuple[str, str], Episode] = {}
    out: list[Episode] = []
    for change in changes:
        key = (change.kind, change.subject)
        episode = open_.get(key)
        if change.state is AlertState.RESOLVED:
            if episode is not None:
                episode.end = (
                    change.resolved_at if change.resolved_at is not None else change.updated_at
                )
                del open_[key]
            continue
        if episode is None:
            evidence = dict(change.evidence)
            episode = Episode(change.kind, change.subject, change.started_at, None,
                              evidence, evidence)  # fmt: skip
            open_[key] = episode
            out.append(episode)
        else:
            episode.evidence = dict(change.evidence)
    return out


# -- one run ----------------------------------------------------------------------------------


def _sampled(
    messages: Iterator[RawMessage],
    samples: list[tuple[float, str, float, float]],
    battery: Any,
    forecasts: list[dict[str, Any]],
    clock: list[float],
) -> Iterator[RawMessage]:
    """Pass ``messages`` on; as their receive time passes each sample time, read the battery
    detector's forecast for that device. ``clock`` sums the time spent simulating (wall
    clock, then CPU)."""
    pending = sorted(samples)
    perf, cpu = time.perf_counter, time.process_time
    while True:
        t0, c0 = perf(), cpu()
        message = next(messages, None)
        clock[0] += perf() - t0
        clock[1] += cpu() - c0
        if message is None:
            return
        while pending and pending[0][0] <= message.received_at:
            at, device, horizon, empty_at = pending.pop(0)
            predicted = None
            if battery is not None:
                for fc in battery.forecasts():
                    if fc.device_id == device:
                        if fc.empty_at is not None:
                            predicted = fc.empty_at
                        elif fc.tte_s is not None:
                            predicted = fc.last_ts + fc.tte_s
            forecasts.append({"device": device, "horizon_d": horizon, "at": at,
                              "true_empty_at": empty_at, "predicted_empty_at": predicted})  # fmt: skip
        yield message


def run_one(
    profile: str,
    seed: int,
    devices: int,
    days: float,
    interval: float,
    config: Settings | str,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Simulate, replay and collect one (profile, seed): plain data, to send between
    processes. ``config`` is the settings, or the path of a settings file read with
    ``environ`` as its ``FLEETWATCH_...`` overrides (none by default: the file alone)."""
    started, cpu = time.perf_counter(), time.process_time()
    settings = (
        config
        if isinstance(config, Settings)
        else load_settings(Path(config), environ=environ or {})
    )
    sim = FieldSimulator(profile, seed, devices=devices, days=days, interval_s=interval)
    detectors = build_detectors(settings)
    battery = next((d for d in detectors if isinstance(d, BatteryDetector)), None)
    samples = []
    for rec in sim.truth:
        if rec.fault == "battery_depletion":
            empty_at = float(rec.fact("empty_at"))
            for horizon in HORIZONS_D:
                at = empty_at - horizon * DAY
                if sim.start_ts + 2 * DAY <= at < sim.end_ts:
                    samples.append((at, rec.subject, horizon, empty_at))
    sink = MemorySink()
    forecasts: list[dict[str, Any]] = []
    clock = [0.0, 0.0]
    messages = _progress(sim.raw_messages(), f"{profile} seed {seed}", sim.start_ts, days)
    replay_cpu = time.process_time()
    summary = replay(_sampled(messages, samples, battery, forecasts, clock), settings,
                     detectors=detectors, sinks=[sink])  # fmt: skip
    return {
        "profile": profile, "seed": seed, "devices": devices, "days": days,
        "truth": [_truth_dict(r) for r in sim.truth],
        "events": [(e.kind, e.subject, e.ts, e.end_ts) for e in sim.events],
        "healthy": sim.healthy_devices(), "faulty": sorted(sim.faulty_devices()),
        "device_ids": [d.device_id for d in sim.devices], "gateways": sorted(sim.fleet.gateways),
        "episodes": [(e.kind, e.subject, e.start, e.end, e.evidence) for e in episodes(sink.alerts)],
        "forecasts": forecasts,
        "messages": summary.messages, "readings": summary.readings,
        "duplicates": summary.duplicates, "rejected": summary.rejected,
        "simulate_s": clock[0], "replay_s": max(1e-9, summary.seconds - clock[0]),
        "simulate_cpu_s": clock[1],
        "replay_cpu_s": max(1e-9, time.process_time() - replay_cpu - clock[1]),
        "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
    }  # fmt: skip


def _truth_dict(r: TruthRecord) -> dict[str, Any]:
    return {"fault": r.fault, "subject": r.subject, "subject_type": r.subject_type,
            "start": r.start_ts, "end": r.end_ts, "kinds": list(r.alert_kinds),
            "grace": r.grace_s, "early": r.early_s, "condition": r.condition,
            "facts": dict(r.facts), "affected": list(r.affected)}  # fmt: skip


def _progress(
    messages: Iterator[RawMessage], label: str, start: float, days: float
) -> Iterator[RawMessage]:
    step = max(1.0, round(days / 7.0)) * DAY
    mark, began = start + step, time.perf_counter()
    for count, message in enumerate(messages, 1):
        if message.received_at >= mark:
            print(f"  {label}: day {(mark - start) / DAY:.0f}/{days:g}, {count:,} messages, "
                  f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
            mark += step
        yield message


# -- judging ----------------------------------------------------------------------------------


def judge(run: dict[str, Any]) -> dict[str, Any]:
    """Classify one run's episodes against its ground truth (see the module docstring)."""
    truth = run["truth"]
    faulty = set(run["faulty"])
    healthy = set(run["healthy"])
    gateways = set(run["gateways"])
    events: dict[str, list[tuple[str, float, float]]] = {}
    for kind, subject, ts, end in run["events"]:
        events.setdefault(subject, []).append((kind, ts, end))
    by_subject: dict[str, list[dict[str, Any]]] = {}
    troubles: list[dict[str, Any]] = []
    for rec in truth:
        by_subject.setdefault(rec["subject"], []).append(rec)
        if rec["affected"] and rec["fault"] in STORM_FAULTS:
            troubles.append(rec)
    detections: dict[int, list[float]] = {}
    rows: list[dict[str, Any]] = []
    for kind, subject, start, _end, evidence in run["episodes"]:
        verdict, record, cause = "false", None, None
        for rec in by_subject.get(subject, ()):
            if (
                kind in rec["kinds"]
                and rec["start"] - rec["early"] <= start <= rec["end"] + rec["grace"]
            ):
                verdict, record = ("expected" if rec["condition"] else "true"), rec
                if not rec["condition"]:
                    break
        if verdict == "false":
            for rec in troubles:
                if (subject in rec["affected"] or subject == rec["subject"]) and (
                    rec["start"] <= start <= rec["end"] + max(rec["grace"], 3600.0)
                ):
                    verdict, record = "storm", rec
                    break
        if verdict == "false" and subject in faulty:
            verdict = "other"
        if verdict == "false":
            cause = _cause(events.get(subject, ()), start)
        if verdict == "true" and record is not None:
            detections.setdefault(id(record), []).append(start)
        rows.append({"kind": kind, "subject": subject, "start": start, "verdict": verdict,
                     "fault": record["fault"] if record else None, "cause": cause,
                     "device": subject in healthy or subject in faulty,
                     "gateway": subject in gateways, "evidence": evidence, "record": record})  # fmt: skip
    return {"rows": rows, "detections": detections}


def _cause(events: Iterable[tuple[str, float, float]], start: float) -> str:
    best, best_gap = "none", float("inf")
    for kind, ts, until in events:
        window = CAUSE_WINDOW_S.get(kind, 0.0)
        if ts - 600.0 <= start <= max(ts, until) + window and abs(start - ts) < best_gap:
            best, best_gap = kind, abs(start - ts)
    return best


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of one profile over its runs (seeds)."""
    healthy_days = sum(len(r["healthy"]) * r["days"] for r in runs)
    healthy_devices = sum(len(r["healthy"]) for r in runs)
    kinds: dict[str, dict[str, Any]] = {}
    faults: dict[str, dict[str, Any]] = {
        k: {"planted": 0, "detected": 0, "delays_h": []}
        for k, v in FAULT_KINDS.items()
        if not v.condition
    }
    storms: dict[str, dict[str, Any]] = {}
    causes: dict[str, int] = {}
    false_any: set[tuple[int, str]] = set()
    false_det: set[tuple[int, str]] = set()
    drift = {"planted": 0, "reported": 0, "with_rate_and_date": 0, "rate_errors": []}
    for index, run in enumerate(runs):
        judged = judge(run)
        per_kind_false: dict[str, set[str]] = {}
        for row in judged["rows"]:
            k = kinds.setdefault(row["kind"], {"true": 0, "false": 0, "false_other_subjects": 0,
                                               "expected": 0, "storm": 0, "other": 0,
                                               "false_devices": 0})  # fmt: skip
            verdict = row["verdict"]
            if verdict == "false" and not row["device"]:
                k["false_other_subjects"] += 1
                continue
            k[verdict] += 1
            if verdict == "false":
                per_kind_false.setdefault(row["kind"], set()).add(row["subject"])
                false_any.add((index, row["subject"]))
                if not row["kind"].startswith("rule."):
                    false_det.add((index, row["subject"]))
                causes[row["cause"]] = causes.get(row["cause"], 0) + 1
            if verdict == "storm" and row["record"] is not None:
                rec = row["record"]
                s = storms.setdefault(rec["fault"], {"troubles": 0, "episodes": 0, "devices": 0,
                                                     "alerting": set()})  # fmt: skip
                s["episodes"] += 1
                s["alerting"].add((index, row["subject"]))
        for kind, subjects in per_kind_false.items():
            kinds[kind]["false_devices"] += len(subjects)
        for rec in run["truth"]:
            if rec["affected"] and rec["fault"] in STORM_FAULTS:
                s = storms.setdefault(rec["fault"], {"troubles": 0, "episodes": 0, "devices": 0,
                                                     "alerting": set()})  # fmt: skip
                s["troubles"] += 1
                s["devices"] += len(rec["affected"])
            if rec["condition"]:
                continue
            f = faults[rec["fault"]]
            f["planted"] += 1
            starts = judged["detections"].get(id(rec))
            if starts:
                f["detected"] += 1
                f["delays_h"].append((min(starts) - rec["start"]) / 3600.0)
            if rec["fault"] == "drift":
                drift["planted"] += 1
                _judge_drift(rec, judged["rows"], drift)
    for k in kinds.values():
        k["false_per_1k_device_days"] = 1000.0 * k["false"] / healthy_days if healthy_days else 0.0
        k["healthy_share_with_false"] = (
            k["false_devices"] / healthy_devices if healthy_devices else 0.0
        )
    for f in faults.values():
        f["recall"] = f["detected"] / f["planted"] if f["planted"] else None
        f["delay_median_h"] = _pct(f["delays_h"], 0.5)
        f["delay_p90_h"] = _pct(f["delays_h"], 0.9)
    for s in storms.values():
        s["alerting_devices"] = len(s.pop("alerting"))
    total_false = sum(k["false"] for k in kinds.values())
    detector_false = sum(k["false"] for name, k in kinds.items() if not name.startswith("rule."))
    return {
        "runs": len(runs), "devices": runs[0]["devices"], "days": runs[0]["days"],
        "healthy_device_days": healthy_days, "healthy_devices": healthy_devices,
        "alert_kinds": dict(sorted(kinds.items())), "faults": faults, "storms": storms,
        "false_per_1k_device_days": 1000.0 * total_false / healthy_days if healthy_days else 0.0,
        "false_per_1k_device_days_detectors": 1000.0 * detector_false / healthy_days if healthy_days else 0.0,
        "healthy_share_with_false": len(false_any) / healthy_devices if healthy_devices else 0.0,
        "healthy_share_with_false_detectors": len(false_det) / healthy_devices if healthy_devices else 0.0,
        "false_causes": dict(sorted(causes.items(), key=lambda kv: -kv[1])),
        "battery_tte": _battery(runs), "drift": _drift_summary(drift),
        "messages": sum(r["messages"] for r in runs), "readings": sum(r["readings"] for r in runs),
        "simulate_s": sum(r["simulate_s"] for r in runs), "replay_s": sum(r["replay_s"] for r in runs),
        "cpu_s": sum(r["cpu_s"] for r in runs),
        "replay_readings_per_s": sum(r["readings"] for r in runs) / sum(r["replay_s"] for r in runs),
        "replay_readings_per_cpu_s": (
            sum(r["readings"] for r in runs) / sum(r.get("replay_cpu_s", r["replay_s"]) for r in runs)
        ),
    }  # fmt: skip


def _judge_drift(rec: dict[str, Any], rows: list[dict[str, Any]], drift: dict[str, Any]) -> None:
    mine = [r for r in rows if r["record"] is rec and r["kind"] == "sensor_drift"]
    if not mine:
        return
    drift["reported"] += 1
    evidence = mine[0]["evidence"]
    rate, date = evidence.get("rate_pct_per_day"), evidence.get("predicted_out_of_tolerance_at")
    if rate is not None and date is not None:
        drift["with_rate_and_date"] += 1
    if rate is not None:
        true = float(rec["facts"]["rate_pct_per_day"])
        drift["rate_errors"].append(abs(float(rate) - true) / abs(true))


def _drift_summary(drift: dict[str, Any]) -> dict[str, Any]:
    errors = drift.pop("rate_errors")
    n = drift["planted"]
    return {**drift, "reported_share": drift["reported"] / n if n else None,
            "with_rate_and_date_share": drift["with_rate_and_date"] / n if n else None,
            "rate_error_median": _pct(errors, 0.5), "rate_error_p90": _pct(errors, 0.9),
            "rate_errors_n": len(errors)}  # fmt: skip


def _battery(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for horizon in HORIZONS_D:
        samples = [f for r in runs for f in r["forecasts"] if f["horizon_d"] == horizon]
        errors = [(f["predicted_empty_at"] - f["true_empty_at"]) / DAY for f in samples
                  if f["predicted_empty_at"] is not None]  # fmt: skip
        out[f"{horizon:g}d"] = {
            "n": len(samples), "no_forecast": len(samples) - len(errors),
            "abs_error_median_d": _pct([abs(e) for e in errors], 0.5),
            "abs_error_p90_d": _pct([abs(e) for e in errors], 0.9),
            "bias_median_d": _pct(errors, 0.5),
        }  # fmt: skip
    return out


# -- the table --------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """One Markdown table: a row per figure, a column per profile (tuned, then held-out)."""
    names = list(results)
    header = ["figure"] + [
        f"{n} ({'tuned' if i == 0 else 'held-out'})" for i, n in enumerate(names)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, cells: list[str]) -> None:
        lines.append("| " + label + " | " + " | ".join(cells) + " |")

    def section(label: str) -> None:
        row(f"**{label}**", [""] * len(names))

    res = [results[n] for n in names]
    row("devices x days x seeds", [f"{r['devices']} x {r['days']:g} x {r['runs']}" for r in res])
    row("healthy device-days", [f"{r['healthy_device_days']:,.0f}" for r in res])
    row("messages replayed · replay speed (wall clock · per CPU second)", [
        f"{r['messages']:,} · {r['replay_readings_per_s']:,.0f} · "
        f"{r['replay_readings_per_cpu_s']:,.0f} readings/s" for r in res])  # fmt: skip
    section("recall of planted faults · detection delay median / p90 (h)")
    for fault in (k for k, v in FAULT_KINDS.items() if not v.condition):
        cells = []
        for r in res:
            f = r["faults"][fault]
            if not f["planted"]:
                cells.append("-")
                continue
            cells.append(f"{f['recall']:.2f} ({f['detected']}/{f['planted']}) · "
                         f"{_num(f['delay_median_h'])} / {_num(f['delay_p90_h'])}")  # fmt: skip
        row(f"`{fault}` → {', '.join(FAULT_KINDS[fault].alert_kinds)}", cells)
    section(
        "episodes by alert kind: true · false on healthy devices (per 1,000 healthy device-days, share of healthy devices) · other"
    )
    kinds = sorted({k for r in res for k in r["alert_kinds"]})
    for kind in kinds:
        cells = []
        for r in res:
            k = r["alert_kinds"].get(kind)
            if k is None:
                cells.append("-")
                continue
            text = (f"{k['true']} true · {k['false']} false ({k['false_per_1k_device_days']:.1f}, "
                    f"{100 * k['healthy_share_with_false']:.1f} %)")  # fmt: skip
            extra = [f"{k[x]} {x}" for x in ("expected", "storm", "other") if k[x]]
            if k["false_other_subjects"]:
                extra.append(f"{k['false_other_subjects']} false on gateways/sites/zones")
            cells.append(" · ".join([text, *extra]))
        row(f"`{kind}`", cells)
    section("totals over device alert kinds")
    row("false episodes per 1,000 healthy device-days (all kinds · without `rule.*`)", [
        f"{r['false_per_1k_device_days']:.1f} · {r['false_per_1k_device_days_detectors']:.1f}"
        for r in res])  # fmt: skip
    row("healthy devices with at least one false alert (all kinds · without `rule.*`)", [
        f"{100 * r['healthy_share_with_false']:.1f} % · {100 * r['healthy_share_with_false_detectors']:.1f} %"
        for r in res])  # fmt: skip
    row(
        "false episodes on devices, by the non-fault event just before",
        [" · ".join(f"{c} {n}" for c, n in r["false_causes"].items()) or "-" for r in res],
    )
    section("storms: per-device alerts explained by a gateway in trouble")
    for trouble in STORM_FAULTS:
        cells = []
        for r in res:
            s = r["storms"].get(trouble)
            if not s or not s["troubles"]:
                cells.append("-")
                continue
            cells.append(f"{s['episodes']} episodes on {s['alerting_devices']} of "
                         f"{s['devices']} devices behind {s['troubles']} gateways "
                         f"({s['episodes'] / s['troubles']:.1f} per {trouble.split('_')[1]})")  # fmt: skip
        row(f"`{trouble}`", cells)
    section("battery time to empty: |error| median / p90 (d) · bias (d) · forecasts (none)")
    for horizon in HORIZONS_D:
        cells = []
        for r in res:
            b = r["battery_tte"][f"{horizon:g}d"]
            cells.append("-" if not b["n"] else
                         f"{_num(b['abs_error_median_d'])} / {_num(b['abs_error_p90_d'])} · "
                         f"{_num(b['bias_median_d'])} · {b['n'] - b['no_forecast']} ({b['no_forecast']})")  # fmt: skip
        row(f"{horizon:g} days before empty", cells)
    section("drift (ageing sensors, 2-6 % a month)")
    row("reported as `sensor_drift` · with a rate and a date", [
        f"{r['drift']['reported']}/{r['drift']['planted']} · {r['drift']['with_rate_and_date']}/{r['drift']['planted']}"
        for r in res])  # fmt: skip
    row("rate error |reported - true| / true: median / p90", [
        (f"{100 * r['drift']['rate_error_median']:.0f} % / {100 * r['drift']['rate_error_p90']:.0f} %"
         if r["drift"]["rate_errors_n"] else "-") for r in res])  # fmt: skip
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Alert quality against ground truth on realistic simulated fleets. The "
        "first profile is the tuned one, the others held-out.",
    )
    parser.add_argument("--profile", nargs="+", default=["plant", "cold-chain"],
                        choices=sorted(PROFILES),
                        help="realism profiles; the first is labelled tuned, the others "
                             "held-out (default: plant cold-chain)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="seeds per profile (default 3)")
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--days", type=float, default=21.0)
    parser.add_argument("--interval", type=float, default=300.0, help="base reporting interval (s)")
    parser.add_argument("--config", default=str(EXAMPLE_CONFIG),
                        help="FleetWatch settings (default: the example configuration)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 2),
                        help="runs in parallel, one process each (default: up to 2)")  # fmt: skip
    parser.add_argument("--out", default=str(OUT), help="where the JSON goes")
    args = parser.parse_args(argv)
    # one snapshot for every run: the settings are read once, and the detectors' code is
    # imported before the worker processes fork (a bad configuration stops here)
    settings = load_settings(Path(args.config), environ={})
    build_detectors(settings)
    jobs = [(p, s) for p in args.profile for s in range(1, args.seeds + 1)]
    began = time.perf_counter()
    print(f"alert quality: {len(jobs)} runs of {args.devices} devices x {args.days:g} days, "
          f"{args.jobs} at a time", file=sys.stderr, flush=True)  # fmt: skip
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = {
            pool.submit(run_one, p, s, args.devices, args.days, args.interval, settings): (p, s)
            for p, s in jobs
        }
        for future in as_completed(futures):
            run = future.result()
            runs[futures[future]] = run
            print(f"done {run['profile']} seed {run['seed']}: {run['messages']:,} messages, "
                  f"simulated in {run['simulate_s']:.0f} s, replayed in {run['replay_s']:.0f} s "
                  f"({run['readings'] / run['replay_s']:,.0f} readings/s; "
                  f"{run['readings'] / run['replay_cpu_s']:,.0f} per CPU second), "
                  f"{run['cpu_s']:.0f} s of CPU", file=sys.stderr, flush=True)  # fmt: skip
    results = {p: summarise([runs[(p, s)] for s in range(1, args.seeds + 1)]) for p in args.profile}
    wall = time.perf_counter() - began
    print(table(results))
    cpu = sum(r["cpu_s"] for r in runs.values())
    print(f"{len(jobs)} runs in {wall / 60:.1f} min on {args.jobs} processes ({cpu / 60:.1f} min "
          f"of CPU); configuration {args.config}", file=sys.stderr)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "config": args.config, "devices": args.devices, "days": args.days, "seeds": args.seeds,
        "interval_s": args.interval, "wall_s": wall,
        "cpu_s": sum(r["cpu_s"] for r in runs.values()),
        "profiles": {p: {"role": "tuned" if i == 0 else "held-out", **results[p]}
                     for i, p in enumerate(args.profile)},
    }  # fmt: skip
    out.write_text(json.dumps(document, indent=1, default=float))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
