"""What the drift detector says about a sensor: the signal kinds and each shape's severity,
the evidence of a sensor's signals and how sure they are, and the firing and cleared signals
with their summaries and actions for the operator."""

from __future__ import annotations

import math
from typing import Any

from detectors.drift.change_tests import _Judge
from detectors.drift.config import DriftConfig
from detectors.drift.peers import _Device
from detectors.drift.sensor import _Sensor
from service.records import Severity, Signal, SubjectType, iso_utc

# a device's signal of a kind names its worst flagged metric: by severity, then by this
_PRIORITY = {"out_of_range": 6, "stuck": 5, "noisy": 4, "spikes": 3, "step": 2, "ageing": 1}
_SEVERITY = {
    "out_of_range": Severity.CRITICAL,
    "stuck": Severity.CRITICAL,
    "noisy": Severity.WARNING,
    "spikes": Severity.WARNING,
    "step": Severity.WARNING,
    "ageing": Severity.WARNING,
}
DRIFT_KIND = "sensor_drift"
FAULT_KIND = "sensor_fault"


def sensor_evidence(judge: _Judge, s: _Sensor) -> dict[str, Any]:
    """What is known about ``s``: the evidence of its signals."""
    _, absolute = judge.tolerance(s.metric)
    den = judge.magnitude(s)
    effective, basis = judge.tolerance_terms(s, den)
    r = s.last_r
    threshold = judge.threshold(s, effective) if s.baseline is not None else effective
    rate = s.rate_per_day
    shape = s.shape
    res = s.res
    stuck = shape == "stuck"
    moved = s.stuck_hi - s.stuck_lo if stuck else None
    return {
        "metric": s.metric,
        "shape": s.shape,
        "value": s.last_value,
        "consensus": s.last_ref if s.mode == "peer" else None,
        "reference": s.last_ref,
        "mode": s.mode,
        "residual": r,
        "residual_pct": None if r is None or absolute else 100.0 * r,
        "baseline_offset": s.baseline,
        "baseline_offset_pct": (
            None
            if absolute or s.baseline is None or s.last_ref is None
            else 100.0 * s.baseline / max(abs(s.last_ref), judge.params[s.metric][2])
        ),
        "drift": s.ewma,
        "drift_pct": None if absolute else 100.0 * s.ewma,
        "tolerance": effective,
        # the tolerance in the metric's unit, and what sets it: the configured tolerance
        # ("relative" or "absolute"), the metric's "floor", the sensor's "resolution" or "noise"
        "tolerance_abs": effective * den,
        "tolerance_basis": basis,
        "resolution": res,
        "noise": s.scale * den if s.baseline is not None else None,
        "absolute": absolute,
        "out_of_tolerance": s.baseline is not None and abs(s.ewma) >= threshold,
        "rate_per_day": rate,
        "rate_pct_per_day": None if rate is None or absolute else 100.0 * rate,
        "rate_significant": s.rate_sig,
        "predicted_out_of_tolerance_at": s.predicted_at,
        "predicted_out_of_tolerance_iso": (
            iso_utc(s.predicted_at) if s.predicted_at is not None else None
        ),
        "peers_used": s.last_peers,
        "group": s.group,
        "confidence": round(confidence(judge.config, s, threshold), 3),
        "noise_ratio": s.noise_ratio,
        "stuck_buckets": s.stuck_run,
        # how far the reference moved while the value stood still (its unit, and in steps of
        # the sensor's resolution)
        "reference_moved": moved,
        "reference_moved_steps": moved / res if moved is not None and res else None,
        "spikes": len(s.spikes or ()),
        "step": s.step_jump if shape == "step" else None,
        "shape_test": judge.shape_evidence(s) if shape in ("step", "ageing") else None,
        "last_calibration": last_calibration(s),
    }


def confidence(config: DriftConfig, s: _Sensor, threshold: float) -> float:
    """How sure the shape of ``s`` is, from 0 to 1 (lower when judged against fewer peers,
    or alone)."""
    shape = s.shape
    if shape == "out_of_range":
        base = 1.0
    elif shape == "stuck":
        base = min(1.0, s.stuck_run / (2.0 * config.stuck_buckets))
    elif shape == "noisy":
        base = min(1.0, s.noise_ratio / (2.0 * config.noisy_ratio))
    elif shape == "spikes":
        base = min(1.0, len(s.spikes or ()) / (2.0 * config.spike_count))
    else:
        cusum = max(s.cpos, s.cneg) / config.cusum_h
        base = min(1.0, abs(s.ewma) / threshold) * min(1.0, 0.5 + 0.5 * cusum)
    support = (
        0.6 if s.mode != "peer" else min(1.0, 0.5 + s.last_peers / (2.0 * (config.min_peers + 2)))
    )
    return max(0.0, min(1.0, base * support))


def last_calibration(s: _Sensor) -> float | None:
    """When ``s`` was last calibrated (``None``: never)."""
    if s.cal is None:
        return None
    for ts, event in reversed(s.cal.history):
        if event == "calibrated":
            return float(ts)
    return None


def firing_signal(
    judge: _Judge,
    device_id: str,
    device: _Device,
    kind: str,
    s: _Sensor,
    t: float,
    metrics: list[list[str]],
) -> Signal:
    """The signal that ``kind`` fires for the device, on the shape of its sensor ``s``
    (``metrics``: each flagged ``[metric, shape]`` of the device)."""
    evidence = sensor_evidence(judge, s)
    evidence["metrics"] = metrics
    shape = s.shape or ""
    metric = s.metric
    drift_pct = f"{100.0 * s.ewma:+.2f} %"
    if evidence["absolute"]:
        drift_pct = f"{s.ewma:+.4g}"
    against = "its peers" if s.mode == "peer" else "its own daily profile"
    when = evidence["predicted_out_of_tolerance_iso"]
    if shape == "ageing":
        rate = evidence["rate_pct_per_day"]
        rate_text = f" ({rate:+.3f} %/day)" if rate is not None else ""
        if evidence["out_of_tolerance"]:
            summary = f"{device_id}: {metric} has drifted {drift_pct} from {against}{rate_text}, out of tolerance"
            action = f"Recalibrate the {metric} sensor of {device_id}: it reads {drift_pct} off {against}."
        else:
            summary = f"{device_id}: {metric} drifting {drift_pct} from {against}{rate_text}, out of tolerance by {when}"
            action = f"Plan a recalibration of the {metric} sensor of {device_id} before {when}."
    elif shape == "step":
        test = evidence["shape_test"]
        summary = f"{device_id}: {metric} jumped {drift_pct} away from {against} (a step, not a ramp: likelihood ratio {test['likelihood_ratio']:.0f} >= {test['threshold']:g})"
        action = f"Check the {metric} sensor of {device_id} (knock, moisture, wiring); recalibrate it, or replace it if the offset returns."
    elif shape == "stuck":
        moved = evidence["reference_moved"] or 0.0
        steps = evidence["reference_moved_steps"]
        by = f" by {moved:.3g}" + (f" ({steps:.0f} steps of its resolution)" if steps else "")
        summary = f"{device_id}: {metric} stuck at {s.last_value:.6g} for {s.stuck_run} buckets while {against} changed{by}"
        action = f"Replace the {metric} sensor of {device_id} (or check its wiring and firmware): it repeats one value."
    elif shape == "noisy":
        summary = f"{device_id}: {metric} noise {s.noise_ratio:.1f}x its normal level"
        action = f"Replace the {metric} sensor of {device_id}: its readings have become noisy."
    elif shape == "spikes":
        summary = f"{device_id}: {metric} shows {len(s.spikes or ())} large spikes"
        action = f"Check the connections and shielding of the {metric} sensor of {device_id}; replace it if the spikes continue."
    else:
        low, high = judge.config.ranges.get(metric, (-math.inf, math.inf))
        summary = f"{device_id}: {metric} reads {s.last_value:.6g}, outside its physical range [{low:g}, {high:g}]"
        action = f"Replace the {metric} sensor of {device_id}, or check its wiring: the value is physically impossible."
    return Signal(
        kind=kind,
        subject=device_id,
        firing=True,
        at=t,
        severity=_SEVERITY[shape],
        subject_type=SubjectType.DEVICE,
        summary=summary,
        evidence=evidence,
        action=action,
        site=device.site,
        zone=device.zone,
    )


def cleared_signal(
    device_id: str, device: _Device, kind: str, before: list[Any], t: float, reason: str
) -> Signal:
    """The signal that ``kind`` no longer fires for the device (``before``: what it published
    last, ``[shape, severity, metric, out_of_tolerance]``)."""
    shape, severity, metric, _ = before
    why = reason or "back within tolerance of its peers"
    if reason == "calibrated":
        why = "calibrated; verifying against its peers"
    return Signal(
        kind=kind,
        subject=device_id,
        firing=False,
        at=t,
        severity=Severity(int(severity)),
        subject_type=SubjectType.DEVICE,
        summary=f"{device_id}: {metric} {why}",
        evidence={"metric": metric, "shape": shape, "reason": reason or "recovered"},
        action="",
        site=device.site,
        zone=device.zone,
    )
