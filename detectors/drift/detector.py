"""Sensor drift and sensor faults, judged against the sensor's peers.

A sensor that ages reads a little more wrong every week; a broken one jumps, sticks, gets
noisy, spikes or leaves its physical range. Both show best against *peers*: the sensors of
the same metric in the same place (by default the same site and zone), which see the same
environment.

**Alignment.** Readings come at different moments and rates, so each peer group aligns them
into time buckets (``bucket_s``, 5 minutes by default), keeping each device's latest value
in the bucket. A bucket closes once the data of its group has passed its end by
``lateness_s`` (or ``tick(now)`` has passed it by ``idle_close_s``); readings for a closed
bucket are dropped.

**Residuals.** When a bucket closes, each device gets a *consensus*: the median of its peers'
values, excluding itself, excluding values outside the physical range, and excluding peers
currently flagged (unless that leaves fewer than ``min_peers``). Trusted reference devices
count ``reference_weight`` times in a weighted median. The residual is
``(value - consensus) / max(|consensus|, floor)`` (relative, the default) or
``value - consensus`` for metrics given an absolute tolerance. A whole group that moves
together moves its consensus, so residuals stay small: an environment change is not drift.

**Drift.** Each device learns its normal offset to the consensus (median of ``value -
consensus`` over the first ``warmup_buckets``, in the metric's unit: installation offsets are
additive) and its noise (MAD of the residual, and MAD of its bucket-to-bucket differences).
Drift is ``(value - consensus - offset)`` made relative, median-filtered over 5 buckets
(an isolated spike cannot move it), then followed by

- a two-sided CUSUM on the normalised drift (allowance of a quarter tolerance, threshold
  ``cusum_h``), which says a change *is* there; and
- an EWMA (``ewma_alpha``), which says how large it is. ``sensor_drift`` fires only when
  both agree: the CUSUM has alarmed *and* the EWMA is past the tolerance (2 % by default,
  and never less than ``fire_z`` standard errors of the EWMA itself), or past
  ``early_fraction`` of it with a significant rate that will take it out of tolerance within
  ``horizon_s`` (an early warning, ``out_of_tolerance: false`` in the evidence).

The drift rate is a Theil-Sen slope over the last ``rate_window`` means of
``rate_sample_s`` (4 h) each, significant when it is ``rate_min_t`` times its standard
error; it gives the rate per day and the date the sensor will leave tolerance.

**Shapes.** ``ageing`` (slow drift: the best split of the recent drift history shows no
jump), reported as ``sensor_drift`` (WARNING); the failures are reported as ``sensor_fault``:
``step`` (a sudden offset, WARNING), ``spikes`` (``spike_count`` isolated outliers of
``spike_z`` sigmas within ``spike_window_buckets``, WARNING), ``noisy`` (the robust noise of
the last ``recent_buckets`` is ``noisy_ratio`` times the learned one, WARNING), ``stuck``
(the same value for ``stuck_buckets`` while the consensus moved, CRITICAL) and
``out_of_range`` (outside the physical range, CRITICAL).

**No peers.** A device with fewer than ``min_peers`` peers for ``mode_switch_buckets`` is
compared with its own expectation: a local level (EWMA over ``alone_level_buckets``, which
follows the weather) plus an hour-of-day profile around it (24 EWMA bins). Its tolerance is
``alone_factor`` times larger, and slow changes are absorbed by the level, so only clear
faults are flagged (jumps, stuck, noisy, spikes, out of range); ageing needs peers.

**Calibration.** A reading of kind ``calibration`` (or with ``meta["event"] ==
"calibration"``; ``meta["metric"]`` may name the metrics, comma-separated) is recorded in the
device's calibration history, resets its baseline and drift state, clears its alerts and
starts a verification: ``verify_buckets`` consecutive buckets agreeing with the peers
(within tolerance of the old normal offset) record ``verified``; ``verify_max_buckets``
without record ``verification_failed``.

Signals are edge-triggered per ``(kind, device)``; when several metrics of a device are
flagged, the worst one gives the evidence and ``evidence["metrics"]`` lists them all.
:meth:`DriftDetector.recalibration_schedule` orders the sensors by the date they leave (or
left) tolerance and correlates drift rates with the environment the devices report.

>>> from service.records import Reading
>>> cfg = DriftConfig(metrics=("pressure_kpa",), bucket_s=60, lateness_s=0, warmup_buckets=20)
>>> det = DriftDetector(cfg)
>>> fired = []
>>> for i in range(120):
...     t = 60.0 * i
...     for d in range(5):
...         v = 100.0 + 0.1 * (i % 7) + 0.01 * ((i * (d + 3)) % 5)
...         if d == 0 and i >= 60:
...             v *= 1.05  # a +5 % step
...         meta = {"site": "s1", "zone": "z1"}
...         fired += det.process([Reading(f"p{d}", t + d, t + d, {"pressure_kpa": v}, meta)])
>>> [(s.subject, s.kind, s.evidence["shape"]) for s in fired]
[('p0', 'sensor_fault', 'step')]
"""

from __future__ import annotations

import math
import operator
import struct
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detectors.base import reject_unknown
from detectors.drift_state import Bucket, FloatRing, ring_ordered, ring_push
from service.records import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

_DAY = 86_400.0
_MAD = 1.4826
_SQRT2 = math.sqrt(2.0)
_DATA_KINDS = (MessageKind.TELEMETRY, MessageKind.BATCH)
_UNSEEN = array("d", [math.nan])  # repeated to make room for a device's environment EWMAs
_CALIBRATION = MessageKind.CALIBRATION
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


def _default_floors() -> dict[str, float]:
    return {"temperature_c": 10.0, "humidity_pct": 10.0}


def _default_ranges() -> dict[str, tuple[float, float]]:
    return {
        "temperature_c": (-40.0, 125.0),
        "humidity_pct": (0.0, 100.0),
        "pressure_kpa": (30.0, 110.0),
    }


def _default_bands() -> dict[str, tuple[float, ...]]:
    return {
        "temperature_c": (10.0, 25.0, 40.0),
        "humidity_pct": (40.0, 70.0),
        "vibration_g": (0.5, 1.0, 2.0),
    }


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Parameters of :class:`DriftDetector`; the defaults suit sensors reporting every 1-15 min.

    Tolerances are relative (``rel_tolerance`` of the reading, with the reading's magnitude
    taken as at least ``rel_floor[metric]``, else ``default_rel_floor``) unless the metric has an
    ``abs_tolerance`` (in its unit). Times are seconds of device time.
    """

    metrics: tuple[str, ...] = ("temperature_c", "humidity_pct", "pressure_kpa")
    rel_tolerance: float = 0.02
    abs_tolerance: Mapping[str, float] = field(default_factory=dict)
    rel_floor: Mapping[str, float] = field(default_factory=_default_floors)
    default_rel_floor: float = 1.0
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=_default_ranges)
    group_by: tuple[str, ...] = ("site", "zone")
    bucket_s: float = 300.0
    lateness_s: float = 300.0
    idle_close_s: float = 900.0
    max_open_buckets: int = 24
    carry_s: float = 1_800.0
    min_peers: int = 3
    reference_devices: tuple[str, ...] = ()
    reference_weight: float = 3.0
    warmup_buckets: int = 288
    ewma_alpha: float = 0.05
    cusum_h: float = 10.0
    fire_z: float = 5.0
    early_fraction: float = 1.0
    clear_fraction: float = 0.25
    horizon_s: float = 30 * _DAY
    rate_sample_s: float = 4 * 3_600.0
    rate_window: int = 42
    rate_min_samples: int = 6
    rate_min_t: float = 3.0
    predict_min_fraction: float = 0.25
    step_window: int = 96
    recent_buckets: int = 72
    noisy_ratio: float = 3.0
    spike_z: float = 8.0
    spike_count: int = 3
    spike_window_buckets: int = 288
    stuck_buckets: int = 12
    clear_buckets: int = 6
    mode_switch_buckets: int = 12
    alone_factor: float = 3.0
    profile_alpha: float = 0.02
    profile_min_count: int = 24
    alone_level_buckets: float = 36.0
    verify_buckets: int = 12
    verify_max_buckets: int = 288
    calibration_history: int = 16
    environment_metrics: tuple[str, ...] = ("temperature_c", "humidity_pct", "vibration_g")
    environment_bands: Mapping[str, tuple[float, ...]] = field(default_factory=_default_bands)
    environment_alpha: float = 0.01
    environment_min_n: int = 3

    def __post_init__(self) -> None:
        positive = ("rel_tolerance", "bucket_s", "ewma_alpha", "cusum_h", "rate_sample_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"drift setting {name} must be positive")
        if not 0 < self.ewma_alpha <= 1 or not 0 < self.profile_alpha <= 1:
            raise ValueError("drift settings ewma_alpha and profile_alpha must be in (0, 1]")
        if not 0 < self.clear_fraction < 1 or not 0 < self.early_fraction <= 1:
            raise ValueError("drift settings clear_fraction and early_fraction must be in (0, 1)")
        minimum_one = (
            "min_peers", "warmup_buckets", "rate_window", "step_window", "recent_buckets",
            "spike_count", "stuck_buckets", "clear_buckets", "mode_switch_buckets",
            "verify_buckets", "calibration_history", "max_open_buckets",
        )  # fmt: skip
        for name in minimum_one:
            if getattr(self, name) < 1:
                raise ValueError(f"drift setting {name} must be at least 1")
        if self.alone_level_buckets < 1:
            raise ValueError("drift setting alone_level_buckets must be at least 1")
        if self.lateness_s < 0 or self.idle_close_s < 0:
            raise ValueError("drift settings lateness_s and idle_close_s must not be negative")
        for metric, tolerance in self.abs_tolerance.items():
            if not tolerance > 0:
                raise ValueError(f"drift abs_tolerance for {metric} must be positive")
        for metric, (low, high) in self.ranges.items():
            if not low < high:
                raise ValueError(f"drift range for {metric} must have min below max")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DriftConfig:
        """Build from plain data (a TOML/JSON table); unknown keys are an error.

        >>> DriftConfig.from_mapping({"metrics": ["pressure_kpa"], "ranges": {"pressure_kpa":
        ...     [800, 1200]}, "abs_tolerance": {"pressure_kpa": 2.5}}).ranges
        {'pressure_kpa': (800.0, 1200.0)}
        """
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "drift")
        values: dict[str, Any] = dict(data)
        for name in ("metrics", "group_by", "reference_devices", "environment_metrics"):
            if name in values:
                raw = values[name]
                values[name] = (raw,) if isinstance(raw, str) else tuple(str(x) for x in raw)
        for name in ("abs_tolerance", "rel_floor"):
            if name in values:
                values[name] = {str(k): float(v) for k, v in dict(values[name]).items()}
        if "ranges" in values:
            ranges: dict[str, tuple[float, float]] = {}
            for metric, pair in dict(values["ranges"]).items():
                low, high = pair
                ranges[str(metric)] = (float(low), float(high))
            values["ranges"] = ranges
        if "environment_bands" in values:
            values["environment_bands"] = {
                str(k): tuple(sorted(float(x) for x in v))
                for k, v in dict(values["environment_bands"]).items()
            }
        return cls(**values)


def drift_config_from_dict(data: Mapping[str, Any]) -> DriftConfig:
    """:meth:`DriftConfig.from_mapping` as a function."""
    return DriftConfig.from_mapping(data)


# -- small robust statistics ---------------------------------------------------------------


def _median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _mad(values: Sequence[float], center: float | None = None) -> float:
    c = _median(values) if center is None else center
    return _median([abs(v - c) for v in values])


def _median_without(ordered: Sequence[float], skip: int) -> float:
    """Median of sorted ``ordered`` with index ``skip`` left out (``-1``: nothing left out)."""
    if skip < 0:
        n = len(ordered)
        return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    n = len(ordered) - 1
    low, high = (n - 1) // 2, n // 2
    a = ordered[low] if low < skip else ordered[low + 1]
    b = ordered[high] if high < skip else ordered[high + 1]
    return 0.5 * (a + b)


def _weighted_median(pairs: Sequence[tuple[float, float]], skip: int) -> float:
    """Weighted median of sorted ``(value, weight)`` pairs, leaving index ``skip`` out."""
    total = sum(w for i, (_, w) in enumerate(pairs) if i != skip)
    half = 0.5 * total
    acc = 0.0
    for i, (value, weight) in enumerate(pairs):
        if i == skip:
            continue
        acc += weight
        if acc > half:
            return value
        if acc == half:
            following = next((v for j, (v, _) in enumerate(pairs) if j > i and j != skip), value)
            return 0.5 * (value + following)
    return pairs[-1][0]


def theil_sen(t: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Theil-Sen slope, intercept and the slope's standard error (robust residual scale).

    >>> slope, intercept, se = theil_sen([0, 1, 2, 3, 4], [1.0, 3.0, 5.0, 7.0, 40.0])
    >>> round(slope, 6), round(intercept, 6)
    (2.0, 1.0)
    """
    tt = np.asarray(t, dtype=float)
    yy = np.asarray(y, dtype=float)
    dt = tt[None, :] - tt[:, None]
    dy = yy[None, :] - yy[:, None]
    upper = dt > 0
    slope = float(np.median(dy[upper] / dt[upper]))
    intercept = float(np.median(yy - slope * tt))
    residuals = yy - (intercept + slope * tt)
    scale = _MAD * float(np.median(np.abs(residuals - np.median(residuals))))
    spread = float(np.sum((tt - tt.mean()) ** 2))
    se = scale / math.sqrt(spread) if spread > 0 else math.inf
    return slope, intercept, se


def mann_whitney_greater(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """One-sided Mann-Whitney U test that ``a`` tends to exceed ``b`` (normal approximation
    with tie correction): returns ``(U, p)``.

    >>> u, p = mann_whitney_greater([5, 6, 7, 8], [1, 2, 3, 4, 5])
    >>> u, p < 0.05
    (19.5, True)
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = sorted([(float(v), 0) for v in a] + [(float(v), 1) for v in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = 0.5 * (i + j) + 1.0
        for k in range(i, j + 1):
            ranks[k] = rank
        count = j - i + 1
        ties += count**3 - count
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, pooled, strict=True) if g == 0)
    u = r1 - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return u, 1.0
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return u, 0.5 * math.erfc(z / _SQRT2)


# -- per-sensor state -------------------------------------------------------------------------

# A sensor's numbers are kept unboxed in one ``array('d')`` (``_Sensor.num``), which grows
# with what the sensor has come to need: its own numbers (``_SENSOR_NUMBERS``) from the
# start; those judged against a reference (``_REFERENCE_NUMBERS``) from its first bucket with
# one; its drift track's (``_TRACK_NUMBERS``) when its warm-up ends; then the ring of its
# last drifts (``_history_size``). A number past the end reads its default. Counts, indices
# and flags are exact in a double; an unset optional number holds ``_NONE``, a NaN that no
# arithmetic produces (a NaN computed from the data keeps its own bits).
_NONE_BITS = 0x7FF8_0000_D71F_7000
_NONE = struct.unpack("<d", _NONE_BITS.to_bytes(8, "little"))[0]
_pack = struct.Struct("<d").pack
_NONE_BYTES = _pack(_NONE)


def _is_none(value: float) -> bool:
    """Whether a stored number is the unset marker :data:`_NONE`.

    >>> _is_none(_NONE), _is_none(math.nan), _is_none(0.0)
    (True, False, False)
    """
    return value != value and _pack(value) == _NONE_BYTES


def _get(value: float) -> float | None:
    """A stored optional number as ``None`` or the float."""
    return None if value != value and _pack(value) == _NONE_BYTES else value


# (name, default) of the numbers every sensor has; a name ending in "#" is an int (a count or
# an index), in "?" a bool, else a float (``None`` where unset). Not among them: times, which
# keep their type (an int with an int ``bucket_s``), and ints that are small or shared with
# the open bucket they came from (plain attributes cost no more).
_SENSOR_NUMBERS = (
    ("last_value", math.nan), ("level", None), ("peer_streak#", 0), ("alone_streak#", 0),
    ("prof#", -1),
)  # fmt: skip
# ... of a sensor with a reference
_REFERENCE_NUMBERS = (
    ("last_ref", None), ("last_r", None), ("baseline", None), ("stuck_value", None),
    ("stuck_lo", 0.0), ("stuck_hi", 0.0), ("stuck_run#", 0),
)  # fmt: skip
# ... and of its drift track (what a sensor still warming up reads: these defaults)
_TRACK_NUMBERS = (
    ("scale", 0.0), ("dscale", 0.0), ("ewma", 0.0), ("cpos", 0.0), ("cneg", 0.0),
    ("noise_ratio", 1.0), ("rate_sum", 0.0), ("step_jump", 0.0), ("rate_per_day", None),
    ("rate_se", None), ("rate_sig?", False), ("rate_stale?", False), ("buckets#", 0),
    ("noise_age#", 0), ("noise_hits#", 0), ("rate_slot#", -1), ("rate_n#", 0),
    ("drifts_at#", 0), ("rates_at#", 0),
)  # fmt: skip
_NUMBERS = (*_SENSOR_NUMBERS, *_REFERENCE_NUMBERS, *_TRACK_NUMBERS)
(
    _LAST_VALUE, _LEVEL, _PEER_STREAK, _ALONE_STREAK, _PROF,
    _LAST_REF, _LAST_R, _BASELINE, _STUCK_VALUE, _STUCK_LO, _STUCK_HI, _STUCK_RUN,
    _SCALE, _DSCALE, _EWMA, _CPOS, _CNEG, _NOISE_RATIO, _RATE_SUM, _STEP_JUMP, _RATE_PER_DAY,
    _RATE_SE, _RATE_SIG, _RATE_STALE, _BUCKETS, _NOISE_AGE, _NOISE_HITS, _RATE_SLOT, _RATE_N,
    _DRIFTS_AT, _RATES_AT,
) = range(len(_NUMBERS))  # fmt: skip
_REFERENCE = len(_SENSOR_NUMBERS)  # where the numbers of a sensor with a reference start
_TRACK = _REFERENCE + len(_REFERENCE_NUMBERS)  # where the track's numbers start
_RING = _TRACK + len(_TRACK_NUMBERS)  # where the drift ring starts
_START = array("d", [_NONE if v is None else v for _, v in _NUMBERS])

# The saved layout of one sensor: these keys, in this order (see :meth:`_Sensor.to_state`).
# ``drifts`` is the drift history (oldest first) from which the noise and step windows
# follow; ``diffs`` and ``step_win`` are empty unless they were loaded from a version-1
# state and the history does not cover them yet (see :class:`_Windows`).
_STATE_KEYS = (
    "device", "metric", "group", "site", "zone", "mode", "peer_streak", "alone_streak",
    "warm", "baseline", "scale", "dscale", "ewma", "cpos", "cneg", "buckets",
    "noise_ratio", "noise_age", "noise_hits", "stuck_value", "stuck_run", "stuck_lo", "stuck_hi",
    "range_bad", "range_ok_run", "rate_slot", "rate_sum", "rate_n", "rate_per_day",
    "rate_se", "rate_sig", "rate_stale", "predicted_at", "out_since", "drift_shape", "fault_shape",
    "profile", "profile_n", "level", "last_value", "last_ref", "last_r", "last_peers", "last_ts",
    "verifying", "verify_run", "verify_n", "verify_ref", "step_jump", "bucket_index", "since",
    "drifts", "diffs", "step_win", "spikes", "rates", "history",
)  # fmt: skip
# Fields of a sensor's drift track saved under their own names (with their defaults)
_TRACK_PLAIN = {
    **{name.rstrip("#?"): value for name, value in _TRACK_NUMBERS[:-2]},
    "predicted_at": None,
    "out_since": None,
}
# Fields of a sensor saved under their own names
_SENSOR_PLAIN = (
    "device", "metric", "site", "zone", "mode", "peer_streak", "alone_streak", "baseline",
    "stuck_value", "stuck_run", "stuck_lo", "stuck_hi", "range_bad", "range_ok_run",
    "drift_shape", "fault_shape", "level", "last_value", "last_ref", "last_r", "last_peers",
    "last_ts", "bucket_index", "since",
)  # fmt: skip


def _history_size(config: DriftConfig) -> int:
    """How many drifts a sensor keeps: enough for its last ``recent_buckets`` differences and
    for the 5-bucket medians of its last ``step_window`` buckets."""
    return max(config.recent_buckets + 1, config.step_window + 4, 5)


class _Number:
    """A number of a sensor kept at ``index`` of its ``num`` array, read and written as the
    attribute it stands for (an int, a bool, or a float that may be ``None``); past the end
    of the array (a sensor that does not need it yet) it reads its default. The detector's
    hot path reads ``num`` directly."""

    __slots__ = ("default", "index", "kind")

    def __init__(self, index: int) -> None:
        self.index = index
        name, default = _NUMBERS[index]
        self.default: float | None = default
        self.kind = {"#": int, "?": bool}.get(name[-1])

    def __get__(self, sensor: _Sensor | None, owner: type | None = None) -> Any:
        if sensor is None:
            return self
        num = sensor.num
        if self.index >= len(num):
            return self.default
        value = num[self.index]
        kind = self.kind
        return _get(value) if kind is None else kind(value)

    def __set__(self, sensor: _Sensor, value: float | None) -> None:
        sensor.num[self.index] = _NONE if value is None else value


class _Windows:
    """The noise and step windows of a track loaded from a version-1 state, kept as they were
    loaded (and appended to) until ``left`` more drifts have replaced every value in them;
    from then on the sensor's drift history holds them."""

    __slots__ = ("diffs", "left", "steps")

    def __init__(self, config: DriftConfig, diffs: Iterable[float], steps: Iterable[float]):
        self.diffs = FloatRing(config.recent_buckets, diffs)
        self.steps = FloatRing(config.step_window, steps)
        self.left = max(config.recent_buckets, config.step_window)


class _Calibration:
    """A sensor's calibration history and verification (allocated at its first calibration)."""

    __slots__ = ("history", "verify_n", "verify_ref", "verify_run", "verifying")

    def __init__(self, config: DriftConfig) -> None:
        self.history: deque[list[Any]] = deque(maxlen=config.calibration_history)
        self.verifying = False
        self.verify_run = 0
        self.verify_n = 0
        self.verify_ref = 0.0


class _Sensor:
    """What is learned about one metric of one device (bounded: fixed-size windows).

    Its numbers are unboxed in ``num`` (see :data:`_SENSOR_NUMBERS`; each is also an
    attribute of the same name). The warm-up samples, the drift track (what it learns from
    its baseline on: drift, noise, spikes and rate) and the calibration record take room only
    once the sensor reaches the stage that needs them.

    The drifts of its last ``_history_size`` buckets are a ring at the end of ``num`` (oldest
    at ``drifts_at`` once full): the 5-bucket median filter, the bucket-to-bucket differences
    the noise is judged on and the filtered drifts a step is sought in are all recomputed from
    it, exactly as they were computed bucket by bucket. The drift's ``rate_sample_s`` means
    are a ring of ``(time in days, mean)`` pairs (``rates``, oldest at ``rates_at``).
    """

    __slots__ = (
        "bucket_index", "cal", "device", "drift_shape", "fault_shape", "grp", "last_peers",
        "last_ts", "metric", "mode", "next", "num", "out_since", "pend", "pend_pos",
        "predicted_at", "range_bad", "range_ok_run", "rates", "since", "site", "spikes", "warm",
        "windows", "zone",
    )  # fmt: skip

    last_value = _Number(_LAST_VALUE)
    last_ref = _Number(_LAST_REF)
    last_r = _Number(_LAST_R)
    level = _Number(_LEVEL)
    baseline = _Number(_BASELINE)
    stuck_value = _Number(_STUCK_VALUE)
    stuck_lo = _Number(_STUCK_LO)
    stuck_hi = _Number(_STUCK_HI)
    peer_streak = _Number(_PEER_STREAK)
    alone_streak = _Number(_ALONE_STREAK)
    stuck_run = _Number(_STUCK_RUN)
    # where its 24 hour-of-day offsets (and their counts) start in the detector's profile
    # columns; before its second bucket, none: -1, or ``-2 - hour`` once its first bucket
    # counted one (zero) offset at ``hour`` (see :func:`_profile_rows`)
    prof = _Number(_PROF)
    scale = _Number(_SCALE)
    dscale = _Number(_DSCALE)
    ewma = _Number(_EWMA)
    cpos = _Number(_CPOS)
    cneg = _Number(_CNEG)
    noise_ratio = _Number(_NOISE_RATIO)
    rate_sum = _Number(_RATE_SUM)
    step_jump = _Number(_STEP_JUMP)
    rate_per_day = _Number(_RATE_PER_DAY)
    rate_se = _Number(_RATE_SE)
    rate_sig = _Number(_RATE_SIG)
    rate_stale = _Number(_RATE_STALE)
    buckets = _Number(_BUCKETS)  # drifts computed (the first is number 0)
    noise_age = _Number(_NOISE_AGE)
    noise_hits = _Number(_NOISE_HITS)  # consecutive noise checks over the ratio
    rate_slot = _Number(_RATE_SLOT)
    rate_n = _Number(_RATE_N)
    drifts_at = _Number(_DRIFTS_AT)
    rates_at = _Number(_RATES_AT)

    def __init__(self, device: str, metric: str) -> None:
        self.device = device
        self.metric = metric
        self.grp: _Group | None = None
        self.next: _Sensor | None = None  # the next sensor of its device
        self.site: str | None = None
        self.zone: str | None = None
        self.mode: str | None = None  # "peer", "alone", or None until decided
        self.cal: _Calibration | None = None
        self.last_ts: float = 0.0
        self.last_peers = 0
        self.bucket_index = 0
        # the index of the bucket of its group with the highest index it has an entry in
        # (None: none open), and where in that bucket
        self.pend: int | None = None
        self.pend_pos = 0
        self.num = _START[:_REFERENCE]
        self.reset_detection()

    def reset_detection(self) -> None:
        """Forget the baseline and everything learned from it (not the profile or history)."""
        num = self.num
        self.range_ok_run = 0
        if len(num) > _REFERENCE:
            del num[_TRACK:]
            for at in (_BASELINE, _STUCK_VALUE, _STUCK_LO, _STUCK_HI, _STUCK_RUN):
                num[at] = _START[at]
        self.since: float | None = None
        self.warm: array[float] | None = None  # (value - reference, scale of it) pairs
        self.range_bad = False
        self.drift_shape: str | None = None
        self.fault_shape: str | None = None
        # the drift track beyond its numbers: bucket indices of spikes, at most
        # 4 * spike_count, oldest first (None: none)
        self.spikes: list[int] | None = None
        self.rates: array[float] | None = None
        self.windows: _Windows | None = None
        self.predicted_at: float | None = None
        self.out_since: float | None = None

    def add_reference(self) -> None:
        """Room for the numbers judged against a reference, at their defaults."""
        if len(self.num) < _TRACK:
            self.num = self.num + _START[len(self.num) : _TRACK]

    def add_track(self) -> None:
        """Room for the drift track, at its defaults (in place: ``num`` stays the array)."""
        num = self.num
        if len(num) < _RING:
            num.extend(_START[len(num) : _RING])

    @property
    def tracked(self) -> bool:
        return len(self.num) >= _RING

    @property
    def group(self) -> str:
        return self.grp.name if self.grp is not None else ""

    @property
    def flagged(self) -> bool:
        return self.drift_shape is not None or self.fault_shape is not None

    @property
    def shape(self) -> str | None:
        return self.fault_shape or self.drift_shape

    def drift_history(self) -> array[float]:
        """The drifts held, oldest first."""
        num = self.num
        if len(num) < _RING:
            return array("d")
        head = int(num[_DRIFTS_AT])
        return num[_RING + head :] + num[_RING : _RING + head]

    def rate_samples(self) -> tuple[list[float], list[float]]:
        """The drift samples' times (days) and means, oldest first."""
        if self.rates is None:
            return [], []
        pairs = ring_ordered(self.rates, int(self.num[_RATES_AT]))
        return pairs[0::2], pairs[1::2]

    def diff_window(self, size: int) -> Sequence[float]:
        """The bucket-to-bucket differences of the last ``size`` drifts (fewer while the
        history is shorter), in no particular order."""
        windows = self.windows
        if windows is not None:
            return windows.diffs.values()
        last = self.drift_history()[-size - 1 :]
        return list(map(operator.sub, last[1:], last[:-1]))

    def diff_count(self, size: int) -> int:
        """``len(self.diff_window(size))`` without building it."""
        if self.windows is not None:
            return len(self.windows.diffs)
        return max(0, min(size, len(self.num) - _RING - 1))

    def step_window(self, size: int) -> list[float]:
        """The 5-bucket median-filtered drifts of the last ``size`` buckets, oldest first
        (a drift among the first 4 of the track is its own filtered value)."""
        windows = self.windows
        if windows is not None:
            return windows.steps.ordered()
        drifts = self.drift_history()
        n = len(drifts)
        first = int(self.num[_BUCKETS]) - n  # the number of the oldest drift held
        start = max(0, n - size)
        # the first 4 of the track stand for themselves; past them, the median of 5
        out = [drifts[k] for k in range(start, min(4, n)) if first + k < 4]
        if n >= 5:
            windows_of_5 = sliding_window_view(np.frombuffer(drifts, dtype=np.float64), 5)
            medians = np.sort(windows_of_5[max(4, start) - 4 :], axis=1)[:, 2]
            out += medians.tolist()
        return out

    def to_state(self, profile: array[float], profile_n: array[int]) -> dict[str, Any]:
        values: dict[str, Any] = {name: getattr(self, name) for name in _SENSOR_PLAIN}
        values["group"] = self.group
        warm = self.warm
        values["warm"] = (
            [] if warm is None else [[warm[i], warm[i + 1]] for i in range(0, len(warm), 2)]
        )
        values["profile"], values["profile_n"] = _profile_rows(self.prof, profile, profile_n)
        for name in _TRACK_PLAIN:
            values[name] = getattr(self, name)
        values["drifts"] = self.drift_history().tolist()
        windows = self.windows
        values["diffs"] = [] if windows is None else windows.diffs.ordered()
        values["step_win"] = [] if windows is None else windows.steps.ordered()
        values["spikes"] = [] if self.spikes is None else list(self.spikes)
        times, means = self.rate_samples()
        values["rates"] = [[t, m] for t, m in zip(times, means, strict=True)]
        cal = self.cal
        values["verifying"] = cal.verifying if cal is not None else False
        values["verify_run"] = cal.verify_run if cal is not None else 0
        values["verify_n"] = cal.verify_n if cal is not None else 0
        values["verify_ref"] = cal.verify_ref if cal is not None else 0.0
        values["history"] = [] if cal is None else list(cal.history)
        return {name: values[name] for name in _STATE_KEYS}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: DriftConfig, version: int) -> _Sensor:
        """The sensor saved as ``state`` by :meth:`to_state` (or in the version-1 layout:
        the last 5 drifts, the noise and step windows, and the previous drift, which is the
        newest of the 5)."""
        sensor = cls(str(state["device"]), str(state["metric"]))
        for name in _SENSOR_PLAIN[2:]:
            if name not in state:
                continue
            value = state[name]
            field = getattr(cls, name)
            if isinstance(field, _Number) and field.index >= len(sensor.num):
                if value == field.default:
                    continue  # no room taken for what it has not needed yet
                sensor.add_reference()
            setattr(sensor, name, value)
        warm = state.get("warm") or []
        if warm:
            sensor.warm = array("d", [float(x) for pair in warm for x in pair[:2]])
        track = {name: state[name] for name in _TRACK_PLAIN if name in state}
        drifts = [float(x) for x in state.get("drifts" if version > 1 else "last5", [])]
        diffs = [float(x) for x in state.get("diffs", [])]
        steps = [float(x) for x in state.get("step_win", [])]
        spikes = [int(x) for x in state.get("spikes", [])]
        rates = [list(x) for x in state.get("rates", [])]
        learned = (
            sensor.baseline is not None
            or any(value != _TRACK_PLAIN[name] for name, value in track.items())
            or (version == 1 and state.get("prev_d") is not None)
        )
        if learned or drifts or diffs or steps or spikes or rates:
            sensor.add_track()
            for name, value in track.items():
                setattr(sensor, name, value)
            size = _history_size(config)
            num = sensor.num
            num.extend(drifts[-size:])
            if len(num) == _RING + size:
                sensor.num = array("d", num)
            if diffs or steps:
                sensor.windows = _Windows(config, diffs, steps)
            if spikes:
                sensor.spikes = spikes[max(0, len(spikes) - 4 * config.spike_count) :]
            if rates:
                capacity = 2 * config.rate_window
                buf, head = array("d"), 0
                for t, m in rates[-config.rate_window :]:
                    buf, head = ring_push(buf, head, capacity, float(t), float(m))
                sensor.rates, sensor.rates_at = buf, head
        history = state.get("history") or []
        verifying = bool(state.get("verifying", False))
        if history or verifying or state.get("verify_n") or state.get("verify_run"):
            cal = sensor.cal = _Calibration(config)
            cal.history.extend(list(x) if isinstance(x, list) else x for x in history)
            cal.verifying = verifying
            cal.verify_run = int(state.get("verify_run", 0))
            cal.verify_n = int(state.get("verify_n", 0))
            cal.verify_ref = state.get("verify_ref", 0.0)
        return sensor


def _profile_rows(
    at: int, profile: array[float], profile_n: array[int]
) -> tuple[list[float], list[int]]:
    """The 24 hour-of-day offsets and counts of a sensor whose profile is at ``at``.

    >>> _profile_rows(-5, array("d"), array("i"))[1][:4]
    [0, 0, 0, 1]
    """
    if at >= 0:
        return profile[at : at + 24].tolist(), profile_n[at : at + 24].tolist()
    counts = [0] * 24
    if at <= -2:
        counts[-2 - at] = 1
    return [0.0] * 24, counts


class _Group:
    """One peer group of one metric: its open buckets and how far its data has come."""

    __slots__ = ("buckets", "closed", "first_end", "key", "members", "metric", "name", "watermark")

    def __init__(self, metric: str, name: str) -> None:
        self.metric = metric
        self.name = name
        self.buckets: dict[int, Bucket] = {}
        self.first_end = math.inf  # the end of the oldest open bucket
        self.watermark = -math.inf
        self.closed = -(2**62)  # the last closed bucket index
        self.members: list[_Sensor] = []
        # group_by values (without a None) that name this group; None: not known yet
        self.key: tuple[Any, ...] | None = None


class _Device:
    __slots__ = ("env", "first", "key", "meta", "published", "site", "zone")

    def __init__(self) -> None:
        self.site: str | None = None
        self.zone: str | None = None
        # the metadata of its last data reading (read-only) and its group_by values (shared
        # between devices with equal values; see :meth:`DriftDetector._intern_key`)
        self.meta: Mapping[str, Any] | None = None
        self.key: tuple[Any, ...] = ()
        # kind -> [shape, severity, metric, out_of_tolerance]; allocated at the first signal
        self.published: dict[str, list[Any]] | None = None
        # where its EWMAs, one per environment metric (NaN: not seen), start in the
        # detector's environment column; -1 until its first value
        self.env = -1
        # its sensors, in the order they were first seen: the first, then each one's ``next``
        self.first: _Sensor | None = None

    @property
    def sensors(self) -> list[_Sensor]:
        found = []
        sensor = self.first
        while sensor is not None:
            found.append(sensor)
            sensor = sensor.next
        return found

    def sensor(self, metric: str) -> _Sensor | None:
        sensor = self.first
        while sensor is not None and sensor.metric != metric:
            sensor = sensor.next
        return sensor

    def add(self, sensor: _Sensor) -> None:
        """Append ``sensor`` to its sensors."""
        if self.first is None:
            self.first = sensor
            return
        last = self.first
        while last.next is not None:
            last = last.next
        last.next = sensor


_URGENCY = {"fault": 0, "out_of_tolerance": 0, "drifting": 1}


def schedule_order(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where a sensor stands in the recalibration schedule: faults and sensors out of
    tolerance before drifting ones, then by severity, then the soonest due first."""
    return (
        _URGENCY[entry["status"]],
        -int(Severity.parse(entry["severity"])),
        entry["predicted_out_of_tolerance_at"],
    )


class DriftDetector:
    """Peer-consensus drift and fault detection for environmental sensors.

    Parameters
    ----------
    config
        The parameters (:class:`DriftConfig`); the defaults watch temperature, humidity
        and pressure with a 2 % tolerance in 5-minute buckets, peers grouped by site+zone.
    """

    name = "drift"
    # 2: a sensor saves its drift history (``drifts``) instead of its last 5 drifts, the
    # previous drift and its noise and step windows; version 1 still loads
    STATE_VERSION = 2

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._watched = tuple(self.config.metrics)
        self._references = frozenset(self.config.reference_devices)
        config = self.config
        alpha = config.ewma_alpha
        self._ewma_z = config.fire_z * math.sqrt(alpha / (2.0 - alpha))
        self._params = {
            metric: (
                *self._tolerance(metric),
                config.rel_floor.get(metric, config.default_rel_floor),
            )
            for metric in self._watched
        }
        self._group_by = tuple(config.group_by)
        self._history = _history_size(config)
        # what each reading is searched for: (metric, its environment position or -1, watched)
        env_positions = {m: i for i, m in enumerate(config.environment_metrics)}
        self._plan = tuple(
            (m, env_positions.get(m, -1), m in self._watched)
            for m in dict.fromkeys((*self._watched, *config.environment_metrics))
        )
        self._reset()

    def _reset(self) -> None:
        self._groups: dict[tuple[str, str], _Group] = {}
        self._sensors: list[_Sensor] = []  # every sensor, in the order first seen
        # the sensors' hour-of-day profiles, 24 values (and counts) each (see _Sensor.prof)
        self._profile = array("d")
        # (unsigned 16-bit while every count fits, else 32-bit)
        self._profile_n = array("H")
        # each device's environment EWMAs (see _Device.env)
        self._env_column = array("d")
        self._devices: dict[str, _Device] = {}
        # group_by values by themselves: devices with equal values share one tuple
        self._keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.late_dropped = 0
        self.now = -math.inf

    # -- ingest ------------------------------------------------------------------------------

    def _tolerance(self, metric: str) -> tuple[float, bool]:
        """The tolerance and whether it is absolute."""
        absolute = self.config.abs_tolerance.get(metric)
        if absolute is not None:
            return absolute, True
        return self.config.rel_tolerance, False

    @staticmethod
    def _group_name(key: tuple[Any, ...], device_id: str) -> str:
        """The peer group of a reading whose ``group_by`` values are ``key``."""
        if None in key:
            return f"~{device_id}"  # no context: a group of its own
        return "/".join(key)

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        config = self.config
        bucket_s = config.bucket_s
        lateness = config.lateness_s
        max_open = config.max_open_buckets
        env_size = len(config.environment_metrics)
        env_alpha = config.environment_alpha
        plan = self._plan
        group_by = self._group_by
        devices = self._devices
        isfinite = math.isfinite
        calibration = _CALIBRATION
        data_kinds = _DATA_KINDS
        keys = self._keys
        env_column = self._env_column
        for reading in batch:
            kind = reading.kind
            if kind == calibration:
                signals.extend(self._calibrate(reading))
                continue
            meta = reading.meta
            device_id = reading.device_id
            device = devices.get(device_id)
            if device is None or meta is not device.meta:
                # metadata not seen on this device's last data reading: read it
                if meta.get("event") == "calibration":
                    signals.extend(self._calibrate(reading))
                    continue
                if kind not in data_kinds:
                    continue
                if device is None:
                    device = devices[device_id] = _Device()
                device.site = meta.get("site", device.site)
                device.zone = meta.get("zone", device.zone)
                device.meta = meta
                found = tuple(map(meta.get, group_by))
                device.key = keys.setdefault(found, found)
            elif kind not in data_kinds:
                continue
            site = device.site
            zone = device.zone
            key = device.key
            metrics = reading.metrics
            ts = reading.ts
            if ts > self.now:
                self.now = ts
            for metric, env_position, watched in plan:
                value = metrics.get(metric)
                if value is None or not isfinite(value):
                    continue
                if env_position >= 0:
                    at = device.env
                    if at < 0:
                        at = device.env = len(env_column)
                        env_column.extend(_UNSEEN * env_size)
                    at += env_position
                    previous = env_column[at]
                    env_column[at] = (
                        value if previous != previous else previous + env_alpha * (value - previous)
                    )
                if not watched:
                    continue
                sensor = device.first
                while sensor is not None and sensor.metric != metric:
                    sensor = sensor.next
                if sensor is None:
                    sensor = _Sensor(device_id, metric)
                    device.add(sensor)
                    self._sensors.append(sensor)
                group = sensor.grp
                if group is None or group.key is not key:
                    name = self._group_name(key, device_id)
                    if group is None or group.name != name:
                        group = self._move(sensor, metric, name)
                    if None not in key:  # the name follows from the key alone
                        group.key = key
                sensor.site = site
                sensor.zone = zone
                index = int(ts // bucket_s)
                if index <= group.closed or (index + 1) * bucket_s <= group.watermark - lateness:
                    self.late_dropped += 1
                    continue
                buckets = group.buckets
                bucket = buckets.get(index)
                if bucket is None:
                    bucket = buckets[index] = Bucket(index)
                    end = (index + 1) * bucket_s
                    if end < group.first_end:
                        group.first_end = end
                pend = sensor.pend
                if pend == index:  # (an index at or below ``closed`` never reopens)
                    position = 2 * sensor.pend_pos
                    data = bucket.data
                    if ts >= data[position]:
                        data[position] = ts
                        data[position + 1] = value
                elif pend is None or pend < index:
                    # past its newest entry in the group: not in this bucket yet
                    sensor.pend = bucket.index
                    sensor.pend_pos = len(bucket.sensors)
                    bucket.sensors.append(sensor)
                    data = bucket.data
                    data.append(ts)
                    data.append(value)
                else:
                    bucket.put(sensor, ts, value)
                if ts > group.watermark:
                    group.watermark = ts
                    if group.first_end <= ts - lateness or len(buckets) > max_open:
                        self._close_until(group, ts - lateness, signals)
                elif len(buckets) > max_open:
                    self._close_until(group, -math.inf, signals)
        return signals

    def _move(self, sensor: _Sensor, metric: str, group_name: str) -> _Group:
        """A sensor joins a (new) peer group: its offset to new peers must be learned anew."""
        old = sensor.grp
        if old is not None and sensor in old.members:
            old.members.remove(sensor)
        group = self._groups.get((metric, group_name))
        if group is None:
            group = self._groups[(metric, group_name)] = _Group(metric, group_name)
        group.members.append(sensor)
        if old is not None and old.name:
            sensor.reset_detection()
            sensor.mode = None
            sensor.peer_streak = sensor.alone_streak = 0
        sensor.grp = group
        sensor.pend = None
        if old is not None:  # it may still have entries in the new group's open buckets
            for index in sorted(group.buckets):
                position = group.buckets[index].position(sensor)
                if position >= 0:
                    sensor.pend = index
                    sensor.pend_pos = position
        return group

    def device_view(self, device_id: str) -> dict[str, Any] | None:
        """Each watched metric's drift state: peer or alone, rate, shape (plain data)."""
        device = self._devices.get(device_id)
        if device is None or device.first is None:
            return None
        metrics = {}
        for sensor in device.sensors:
            out_since = sensor.out_since
            metrics[sensor.metric] = {
                "mode": sensor.mode,
                "drift_per_day": sensor.rate_per_day,
                "drift_shape": sensor.drift_shape,
                "fault_shape": sensor.fault_shape,
                "out_of_tolerance_since": None if not out_since else iso_utc(float(out_since)),
                "reference": sensor.last_ref,
                "peers": sensor.last_peers,
            }
        return {"metrics": metrics}

    def tick(self, now: float) -> list[Signal]:
        """Close the buckets that ``now`` has passed by ``idle_close_s`` (quiet groups)."""
        signals: list[Signal] = []
        limit = now - self.config.idle_close_s
        max_open = self.config.max_open_buckets
        for group in list(self._groups.values()):
            if group.buckets and (group.first_end <= limit or len(group.buckets) > max_open):
                self._close_until(group, limit, signals)
        return signals

    def _close_until(self, group: _Group, limit: float, out: list[Signal]) -> None:
        """Close the buckets of ``group`` that end at or before ``limit`` (and the oldest while
        more than ``max_open_buckets`` are open)."""
        bucket_s = self.config.bucket_s
        buckets = group.buckets
        while buckets:
            index = min(buckets)
            if (index + 1) * bucket_s > limit and len(buckets) <= self.config.max_open_buckets:
                break
            bucket = buckets.pop(index)
            group.closed = index
            self._close_bucket(group, bucket, out)
        group.first_end = (min(buckets) + 1) * bucket_s if buckets else math.inf

    # -- one closed bucket ---------------------------------------------------------------------

    def _close_bucket(self, group: _Group, bucket: Bucket, out: list[Signal]) -> None:
        config = self.config
        index = bucket.index
        metric = group.metric
        low, high = config.ranges.get(metric, (-math.inf, math.inf))
        references = self._references
        members = [(s, s.device, v) for s, v in zip(bucket.sensors, bucket.data[1::2], strict=True)]
        t_end = (index + 1) * config.bucket_s
        # peers that report less often than a bucket: their latest value, while recent,
        # still counts in the consensus (they are judged only in buckets they report in)
        carried = []
        if len(members) < len(group.members):
            horizon = t_end - config.carry_s
            present = set(bucket.sensors)
            for peer in group.members:
                if peer in present:
                    continue
                if peer.last_ts >= horizon:
                    last = peer.num[_LAST_VALUE]
                    if last == last or _pack(last) != _NONE_BYTES:
                        carried.append((peer, peer.device, last))
        voters = members + carried if carried else members
        usable = sorted((v, d) for _, d, v in voters if low <= v <= high)
        flagged = {
            d for s, d, _ in voters if s.drift_shape is not None or s.fault_shape is not None
        }
        clean = [(v, d) for v, d in usable if d not in flagged] if flagged else usable
        min_peers = config.min_peers
        pools = []
        for pool in (clean, usable) if len(clean) < len(usable) else (usable,):
            weighted = bool(references) and any(d in references for _, d in pool)
            weight = config.reference_weight
            pools.append(
                (
                    {d: i for i, (_, d) in enumerate(pool)},
                    [v for v, _ in pool],
                    [(v, weight if d in references else 1.0) for v, d in pool]
                    if weighted
                    else None,
                )
            )
        for sensor, device_id, value in members:
            consensus: float | None = None
            peers = 0
            for positions, values, pairs in pools:
                position = positions.get(device_id, -1)
                count = len(values) - (1 if position >= 0 else 0)
                if count < min_peers:
                    continue
                peers = count
                if pairs is not None:
                    consensus = _weighted_median(pairs, position)
                else:
                    consensus = _median_without(values, position)
                break
            before = sensor.fault_shape or sensor.drift_shape
            self._update(sensor, index, t_end, value, consensus, peers, low, high)
            after = sensor.fault_shape or sensor.drift_shape
            if before is not None or after is not None:
                if before is None:
                    sensor.since = t_end
                elif after is None:
                    sensor.since = None
                self._publish(device_id, t_end, out)

    def _update(
        self,
        s: _Sensor,
        index: int,
        t: float,
        value: float,
        consensus: float | None,
        peers: int,
        low: float,
        high: float,
    ) -> None:
        config = self.config
        tolerance, absolute, floor = self._params[s.metric]
        num = s.num  # (see _SENSOR_NUMBERS; reset_detection and add_track keep the array)
        num[_LAST_VALUE] = value
        s.last_ts = t
        s.bucket_index = index
        # physical range
        if not low <= value <= high:
            s.range_bad = True
            s.range_ok_run = 0
            s.fault_shape = "out_of_range"
            s.last_peers = peers
            return
        if s.range_bad:
            s.range_ok_run += 1
            if s.range_ok_run >= config.clear_buckets:
                s.range_bad = False
        # mode: judged against peers, or alone against the own daily profile
        if consensus is not None:
            num[_PEER_STREAK] += 1.0
            num[_ALONE_STREAK] = 0.0
        else:
            num[_ALONE_STREAK] += 1.0
            num[_PEER_STREAK] = 0.0
        switch = config.mode_switch_buckets
        if s.mode != "peer" and num[_PEER_STREAK] >= switch:
            if s.mode is not None:
                s.reset_detection()
            s.mode = "peer"
        elif s.mode != "alone" and num[_ALONE_STREAK] >= switch:
            if s.mode is not None:
                s.reset_detection()
            s.mode = "alone"
        hour = int((t - 0.5 * config.bucket_s) % _DAY // 3_600)
        # own expectation: a local level (EWMA over ``alone_level_buckets``) plus the
        # hour-of-day shape around it
        stored = num[_LEVEL]
        level = None if stored != stored and _pack(stored) == _NONE_BYTES else stored
        profile_ref = None
        fault_shape = s.fault_shape
        learn = fault_shape is None or fault_shape == "noisy"
        at = int(num[_PROF])
        if level is None and at < 0:
            # the first bucket: its offset to the level just set is zero; only its hour is
            # counted until a second bucket needs the profile's room
            num[_LEVEL] = value
            if learn:
                if at == -1:
                    num[_PROF] = -2 - hour
                else:  # a second count, at this hour or another
                    num[_PROF] = at = self._first_profile(at)
                    self._learn_profile(num, at + hour, value, value)
        else:
            if at < 0:
                num[_PROF] = at = self._first_profile(at)
            at += hour
            if level is None:
                num[_LEVEL] = level = value
            elif self._profile_n[at] >= config.profile_min_count:
                profile_ref = level + self._profile[at]
            if learn:
                self._learn_profile(num, at, value, level)
        mode = s.mode
        if mode == "peer" and consensus is not None:
            reference: float | None = consensus
            effective = tolerance
        elif mode == "alone" and consensus is None and profile_ref is not None:
            reference = profile_ref
            effective = tolerance * config.alone_factor
        else:
            reference = None
            effective = tolerance
        s.last_peers = peers
        if reference is None:
            if len(num) > _LAST_REF:
                num[_LAST_REF] = _NONE
            self._judge_faults(s, effective, stuck_now=False)
            return
        if len(num) < _TRACK:  # its first reference
            s.add_reference()
            num = s.num
        den = 1.0 if absolute else (reference if reference > floor else max(-reference, floor))
        raw = value - reference
        r = raw / den
        num[_LAST_REF] = reference
        num[_LAST_R] = r
        # stuck: the same value while the reference moved
        stuck_value = num[_STUCK_VALUE]
        if (stuck_value == stuck_value or _pack(stuck_value) != _NONE_BYTES) and abs(
            value - stuck_value
        ) <= 1e-9 * max(1.0, abs(value)):
            stuck_run = num[_STUCK_RUN] + 1.0
            if reference < num[_STUCK_LO]:
                num[_STUCK_LO] = reference
            elif reference > num[_STUCK_HI]:
                num[_STUCK_HI] = reference
        else:
            num[_STUCK_VALUE] = value
            stuck_run = 1.0
            num[_STUCK_LO] = num[_STUCK_HI] = reference
        num[_STUCK_RUN] = stuck_run
        stuck_now = False
        if stuck_run >= config.stuck_buckets * (1 if mode == "peer" else 3):
            moved = (num[_STUCK_HI] - num[_STUCK_LO]) / den
            scale = num[_SCALE] if len(num) >= _RING else 0.0
            stuck_now = moved >= max(0.5 * effective, 4.0 * scale)
        cal = s.cal
        if cal is not None and cal.verifying:
            if mode == "peer":
                self._verify(cal, t, (raw - cal.verify_ref) / den, tolerance)
            else:
                cal.history.append([t, "no_peers_to_verify"])
                cal.verifying = False
        # warm-up: learn the normal offset and noise
        baseline = num[_BASELINE]
        if baseline != baseline and _pack(baseline) == _NONE_BYTES:  # warming up
            warm = s.warm
            if warm is None:
                warm = s.warm = array("d")
            warm.append(raw)
            warm.append(den)
            if len(warm) >= 2 * config.warmup_buckets:
                num[_BASELINE] = baseline = _median(warm[0::2])
                offsets = [(w - baseline) / d for w, d in zip(warm[0::2], warm[1::2], strict=True)]
                floor_scale = 0.05 * effective
                s.add_track()
                num[_SCALE] = max(_MAD * _mad(offsets, 0.0), floor_scale)
                diffs = [b - a for a, b in pairwise(offsets)]
                num[_DSCALE] = max(_MAD * _mad(diffs) / _SQRT2 if diffs else 0.0, floor_scale)
                s.warm = None
            self._judge_faults(s, effective, stuck_now)
            return
        if len(num) < _RING:
            s.add_track()
        num[_BUCKETS] += 1.0
        scale = num[_SCALE]
        d = (raw - baseline) / den
        # the drift history: a ring of the last ``_history`` drifts after the numbers
        held = len(num) - _RING
        head = int(num[_DRIFTS_AT])
        windows = s.windows
        if windows is not None:  # loaded windows, appended to as they were
            if held:
                windows.diffs.append(d - num[_RING + head - 1 if head else -1])
            windows.left -= 1
        capacity = self._history
        if held < capacity:
            num.append(d)
            held += 1
            if held == capacity:
                s.num = num = array("d", num)  # full: no room kept for growth
        else:
            num[_RING + head] = d
            head += 1
            if head == capacity:
                head = 0
            num[_DRIFTS_AT] = head
        if held >= 5:
            # the last 5 drifts, oldest first
            if head >= 5:
                last5 = num[_RING + head - 5 : _RING + head]
            elif head == 0:
                last5 = num[-5:]
            else:
                last5 = num[head - 5 :] + num[_RING : _RING + head]
            dm = sorted(last5)[2]
            limit = max(config.spike_z * scale, 0.5 * effective)
            if abs(last5[2] - dm) > limit:
                spikes = s.spikes
                if spikes is None:
                    spikes = s.spikes = []
                elif len(spikes) >= 4 * config.spike_count:
                    del spikes[0]
                spikes.append(index - 2)  # the middle bucket stands out
        else:
            dm = d
        if windows is not None:
            windows.steps.append(dm)
            if windows.left <= 0:
                s.windows = None
        noise_age = num[_NOISE_AGE] + 1.0
        recent = config.recent_buckets
        if noise_age >= 12.0 and s.diff_count(recent) >= recent // 2:
            noise_age = 0.0
            ratio = _MAD * _mad(s.diff_window(recent)) / _SQRT2 / num[_DSCALE]
            num[_NOISE_RATIO] = ratio
            num[_NOISE_HITS] = num[_NOISE_HITS] + 1 if ratio >= config.noisy_ratio else 0
        num[_NOISE_AGE] = noise_age
        ewma = num[_EWMA]
        num[_EWMA] = ewma + config.ewma_alpha * (dm - ewma)
        z = dm / scale
        k = 0.25 * effective / scale
        if k < 0.5:
            k = 0.5
        cap = 5.0 * config.cusum_h
        cpos = num[_CPOS] + z - k
        num[_CPOS] = 0.0 if cpos < 0.0 else (cap if cpos > cap else cpos)
        cneg = num[_CNEG] - z - k
        num[_CNEG] = 0.0 if cneg < 0.0 else (cap if cneg > cap else cneg)
        limit = self._ewma_z * scale
        threshold = effective if effective > limit else limit
        self._track_rate(s, t, dm, threshold)
        self._judge_drift(s, t, threshold)
        self._judge_faults(s, effective, stuck_now)

    def _learn_profile(self, num: array[float], at: int, value: float, level: float) -> None:
        """One bucket's offset into the profile cell ``at``, and the level (of the sensor whose
        numbers are ``num``) after it."""
        config = self.config
        profile = self._profile
        profile_n = self._profile_n
        n = profile_n[at] + 1
        if n > 65_535 and profile_n.typecode == "H":
            profile_n = self._profile_n = array("i", profile_n)
        profile_n[at] = min(n, 1_000_000)
        alpha = max(1.0 / n, config.profile_alpha)
        profile[at] += alpha * (value - level - profile[at])
        num[_LEVEL] = level + (value - profile[at] - level) / config.alone_level_buckets

    def _first_profile(self, at: int) -> int:
        """Room for the profile of a sensor whose ``prof`` is ``at`` (negative), with the one
        count its first bucket made."""
        start = self._new_profile()
        if at <= -2:
            self._profile_n[start - 2 - at] = 1
        return start

    def _new_profile(self, values: Sequence[float] = (), counts: Sequence[int] = ()) -> int:
        """Room for one sensor's hour-of-day profile (zeros unless given): where it starts."""
        at = len(self._profile_n)
        self._profile.extend(values if len(values) == 24 else [0.0] * 24)
        if self._profile_n.typecode == "H" and any(not 0 <= c <= 65_535 for c in counts):
            self._profile_n = array("i", self._profile_n)
        self._profile_n.extend(counts if len(counts) == 24 else [0] * 24)
        return at

    def _verify(self, cal: _Calibration, t: float, r: float, tolerance: float) -> None:
        cal.verify_n += 1
        if abs(r) <= tolerance:
            cal.verify_run += 1
        else:
            cal.verify_run = 0
        if cal.verify_run >= self.config.verify_buckets:
            cal.history.append([t, "verified"])
            cal.verifying = False
        elif cal.verify_n >= self.config.verify_max_buckets:
            cal.history.append([t, "verification_failed"])
            cal.verifying = False

    def _track_rate(self, s: _Sensor, t: float, dm: float, threshold: float) -> None:
        """Collect ``rate_sample_s`` means of the drift; fit the slope when it matters (the
        drift is past a quarter of the threshold), else leave it for :meth:`_refresh_rate`."""
        config = self.config
        num = s.num
        slot = int(t // config.rate_sample_s)
        rate_slot = num[_RATE_SLOT]
        if slot != rate_slot:
            if num[_RATE_N]:
                mid = (rate_slot + 0.5) * config.rate_sample_s
                rates = s.rates if s.rates is not None else array("d")
                s.rates, head = ring_push(
                    rates, int(num[_RATES_AT]), 2 * config.rate_window,
                    mid / _DAY, num[_RATE_SUM] / num[_RATE_N],
                )  # fmt: skip
                num[_RATES_AT] = head
                num[_RATE_SUM] = 0.0
                num[_RATE_N] = 0
                num[_RATE_STALE] = True
                if abs(num[_EWMA]) >= 0.25 * threshold or s.flagged:
                    self._refresh_rate(s)
            num[_RATE_SLOT] = slot
        num[_RATE_SUM] += dm
        num[_RATE_N] += 1.0
        self._predict(s, t, threshold)

    def _refresh_rate(self, s: _Sensor) -> None:
        """Fit the Theil-Sen slope of the drift samples, if new samples came in."""
        if not s.rate_stale:
            return
        s.rate_stale = False
        config = self.config
        if s.rates is None or len(s.rates) < 2 * config.rate_min_samples:
            return
        slope, _, se = theil_sen(*s.rate_samples())
        s.rate_per_day = slope
        s.rate_se = se if math.isfinite(se) else None
        s.rate_sig = slope != 0 and abs(slope) >= config.rate_min_t * se

    def _predict(self, s: _Sensor, t: float, threshold: float) -> None:
        """When the drift leaves (or left) tolerance, from its smoothed size and its rate: only
        for a drift already ``predict_min_fraction`` of the way, moving further out."""
        num = s.num
        current = num[_EWMA]
        if abs(current) >= threshold:
            if s.out_since is None:
                s.out_since = t
            s.predicted_at = s.out_since
            return
        s.out_since = None
        rate = _get(num[_RATE_PER_DAY]) if num[_RATE_SIG] else None
        if (
            rate is not None
            and rate != 0
            and (rate > 0) == (current > 0)
            and abs(current) >= self.config.predict_min_fraction * threshold
        ):
            days = (math.copysign(threshold, rate) - current) / rate
            s.predicted_at = t + days * _DAY if days > 0 else None
        else:
            s.predicted_at = None

    def _threshold(self, s: _Sensor, effective: float) -> float:
        limit = self._ewma_z * s.scale
        return effective if effective > limit else limit

    def _judge_drift(self, s: _Sensor, t: float, threshold: float) -> None:
        config = self.config
        num = s.num
        e = num[_EWMA]
        size = abs(e)
        if s.drift_shape is not None:
            if size < config.clear_fraction * threshold:
                if s.drift_shape == "ageing":
                    # ageing does not heal itself: clear only once the trend is gone too
                    self._refresh_rate(s)
                    rate = _get(num[_RATE_PER_DAY])
                    if s.rate_sig and rate is not None and (rate > 0) == (e > 0):
                        return
                s.drift_shape = None
            elif s.drift_shape == "ageing":
                jump = self._best_jump(s, config.step_window)
                if abs(jump) >= threshold and abs(jump) >= 0.5 * size:
                    s.drift_shape = "step"
                    num[_STEP_JUMP] = jump
            return
        if s.device in self._references:
            return  # trusted: judged for faults only
        confirmed = num[_CPOS] >= config.cusum_h if e > 0 else num[_CNEG] >= config.cusum_h
        if not confirmed:
            return
        fire = size >= threshold
        if not fire and size >= config.early_fraction * threshold:
            self._refresh_rate(s)
            self._predict(s, t, threshold)
            rate = _get(num[_RATE_PER_DAY])
            predicted_at = s.predicted_at
            fire = (
                s.rate_sig
                and rate is not None
                and (rate > 0) == (e > 0)
                and predicted_at is not None
                and predicted_at - t <= config.horizon_s
            )
        if not fire:
            return
        jump = self._best_jump(s, config.step_window)
        if abs(jump) >= 0.5 * threshold and abs(jump) >= 0.5 * size:
            s.drift_shape = "step"
            num[_STEP_JUMP] = jump
        else:
            s.drift_shape = "ageing"

    @staticmethod
    def _best_jump(s: _Sensor, size: int) -> float:
        """The largest difference of means across one split of the last ``size`` filtered
        drifts (segments of at least 6 buckets): large for a step, small for slow ageing."""
        values = s.step_window(size)
        n = len(values)
        if n < 12:
            return 0.0
        prefix = [0.0]
        for v in values:
            prefix.append(prefix[-1] + v)
        total = prefix[-1]
        best = 0.0
        for i in range(6, n - 5):
            jump = (total - prefix[i]) / (n - i) - prefix[i] / i
            if abs(jump) > abs(best):
                best = jump
        return best

    def _judge_faults(self, s: _Sensor, effective: float, stuck_now: bool) -> None:
        config = self.config
        num = s.num
        spikes = s.spikes
        if spikes is not None:
            oldest = s.bucket_index - config.spike_window_buckets
            while spikes and spikes[0] <= oldest:
                del spikes[0]
            if not spikes:
                spikes = s.spikes = None
        tracked = len(num) >= _RING
        current = s.fault_shape
        if s.range_bad:
            shape: str | None = "out_of_range"
        elif stuck_now or (current == "stuck" and s.stuck_run >= config.stuck_buckets):
            shape = "stuck"
        elif tracked and (
            num[_NOISE_HITS] >= 2
            or (current == "noisy" and num[_NOISE_RATIO] >= 0.67 * config.noisy_ratio)
        ):
            shape = "noisy"
        elif spikes is not None and (
            current == "spikes"
            or (
                len(spikes) >= config.spike_count
                and sum(1 for b in spikes if b > s.bucket_index - config.recent_buckets)
                < max(2, config.spike_count)
            )
        ):
            shape = "spikes"  # isolated outliers; many in a row is noise, judged above
        else:
            shape = None
        s.fault_shape = shape

    # -- calibration ---------------------------------------------------------------------------

    def _calibrate(self, reading: Reading) -> list[Signal]:
        named = reading.meta.get("metric") or reading.meta.get("metrics")
        if named:
            metrics = [m.strip() for m in named.split(",") if m.strip()]
        else:
            metrics = [m for m in reading.metrics if m in self._watched]
        if not metrics:
            metrics = list(self._watched)
        touched = False
        device = self._devices.get(reading.device_id)
        for metric in metrics:
            sensor = device.sensor(metric) if device is not None else None
            if sensor is None:
                continue
            touched = True
            cal = sensor.cal
            if cal is None:
                cal = sensor.cal = _Calibration(self.config)
            cal.history.append([reading.ts, "calibrated"])
            cal.verify_ref = sensor.baseline if sensor.baseline is not None else 0.0
            sensor.reset_detection()
            if sensor.mode == "alone":  # its own profile carries the old error
                at = sensor.prof
                if at >= 0:
                    self._profile[at : at + 24] = array("d", [0.0]) * 24
                    self._profile_n[at : at + 24] = array(self._profile_n.typecode, [0]) * 24
                else:
                    sensor.prof = -1
                sensor.level = None
            cal.verifying = True
            cal.verify_run = cal.verify_n = 0
        if not touched:
            return []
        signals: list[Signal] = []
        self._publish(reading.device_id, reading.ts, signals, reason="calibrated")
        return signals

    # -- signals -------------------------------------------------------------------------------

    def _publish(self, device_id: str, t: float, out: list[Signal], reason: str = "") -> None:
        device = self._devices.get(device_id)
        if device is None:
            return
        worst: dict[str, tuple[int, int, _Sensor]] = {}
        flagged: dict[str, list[list[str]]] = {}
        for metric in self._watched:
            s = device.sensor(metric)
            if s is None or s.shape is None:
                continue
            shape = s.shape
            kind = DRIFT_KIND if shape == "ageing" else FAULT_KIND
            rank = (int(_SEVERITY[shape]), _PRIORITY[shape], s)
            flagged.setdefault(kind, []).append([metric, shape])
            best = worst.get(kind)
            if best is None or rank[:2] > best[:2]:
                worst[kind] = rank
        published = device.published
        for kind in (DRIFT_KIND, FAULT_KIND):
            chosen = worst.get(kind)
            before = published.get(kind) if published is not None else None
            if chosen is None:
                if before is not None and published is not None:
                    del published[kind]
                    out.append(self._cleared(device_id, device, kind, before, t, reason))
                continue
            s = chosen[2]
            shape = s.shape or ""
            # out of tolerance (ageing only), with a margin once reported, so it does not flap
            margin = 0.8 if before is not None and before[3] else 1.0
            out_of_tolerance = shape == "ageing" and abs(s.ewma) >= margin * self._threshold(
                s, self._effective(s)
            )
            now = [shape, int(_SEVERITY[shape]), s.metric, out_of_tolerance]
            if now != before:
                if published is None:
                    published = device.published = {}
                published[kind] = now
                out.append(self._firing(device_id, device, kind, s, t, flagged[kind]))

    def _effective(self, s: _Sensor) -> float:
        tolerance, _ = self._tolerance(s.metric)
        return tolerance * (self.config.alone_factor if s.mode == "alone" else 1.0)

    def _evidence(self, s: _Sensor) -> dict[str, Any]:
        _, absolute = self._tolerance(s.metric)
        effective = self._effective(s)
        r = s.last_r
        threshold = self._threshold(s, effective) if s.baseline is not None else effective
        rate = s.rate_per_day
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
                else 100.0 * s.baseline / max(abs(s.last_ref), self._params[s.metric][2])
            ),
            "drift": s.ewma,
            "drift_pct": None if absolute else 100.0 * s.ewma,
            "tolerance": effective,
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
            "confidence": round(self._confidence(s, threshold), 3),
            "noise_ratio": s.noise_ratio,
            "stuck_buckets": s.stuck_run,
            "spikes": len(s.spikes or ()),
            "step": s.step_jump if s.shape == "step" else None,
            "last_calibration": self._last_calibration(s),
        }

    def _confidence(self, s: _Sensor, threshold: float) -> float:
        config = self.config
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
            0.6
            if s.mode != "peer"
            else min(1.0, 0.5 + s.last_peers / (2.0 * (config.min_peers + 2)))
        )
        return max(0.0, min(1.0, base * support))

    @staticmethod
    def _last_calibration(s: _Sensor) -> float | None:
        if s.cal is None:
            return None
        for ts, event in reversed(s.cal.history):
            if event == "calibrated":
                return float(ts)
        return None

    def _firing(
        self,
        device_id: str,
        device: _Device,
        kind: str,
        s: _Sensor,
        t: float,
        metrics: list[list[str]],
    ) -> Signal:
        evidence = self._evidence(s)
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
                action = (
                    f"Plan a recalibration of the {metric} sensor of {device_id} before {when}."
                )
        elif shape == "step":
            summary = f"{device_id}: {metric} jumped {drift_pct} away from {against}"
            action = f"Check the {metric} sensor of {device_id} (knock, moisture, wiring); recalibrate it, or replace it if the offset returns."
        elif shape == "stuck":
            summary = f"{device_id}: {metric} stuck at {s.last_value:.6g} for {s.stuck_run} buckets while {against} changed"
            action = f"Replace the {metric} sensor of {device_id} (or check its wiring and firmware): it repeats one value."
        elif shape == "noisy":
            summary = f"{device_id}: {metric} noise {s.noise_ratio:.1f}x its normal level"
            action = f"Replace the {metric} sensor of {device_id}: its readings have become noisy."
        elif shape == "spikes":
            summary = f"{device_id}: {metric} shows {len(s.spikes or ())} large spikes"
            action = f"Check the connections and shielding of the {metric} sensor of {device_id}; replace it if the spikes continue."
        else:
            low, high = self.config.ranges.get(metric, (-math.inf, math.inf))
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

    def _cleared(
        self, device_id: str, device: _Device, kind: str, before: list[Any], t: float, reason: str
    ) -> Signal:
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

    # -- reports -------------------------------------------------------------------------------

    def sensor_status(self, device_id: str, metric: str) -> dict[str, Any] | None:
        """What is known about one sensor (evidence fields plus calibration history)."""
        device = self._devices.get(device_id)
        s = device.sensor(metric) if device is not None else None
        if s is None:
            return None
        if s.baseline is not None:
            self._refresh_rate(s)
            self._predict(s, s.last_ts, self._threshold(s, self._effective(s)))
        status = self._evidence(s)
        status["device"] = device_id
        status["warmed_up"] = s.baseline is not None
        status["calibration_history"] = [] if s.cal is None else [list(h) for h in s.cal.history]
        status["verifying"] = s.cal is not None and s.cal.verifying
        return status

    def report(self, now: float) -> dict[str, Any]:
        """The detector's published report: the recalibration schedule."""
        return self.recalibration_schedule(now)

    def recalibration_schedule(self, now: float) -> dict[str, Any]:
        """Which sensors need calibration when, by zone, and how drift relates to environment.

        ``sensors`` lists the sensors that are out of tolerance or faulty first (earliest
        first), then those predicted to leave tolerance, by date; ``by_zone`` groups the same
        entries by ``site/zone``; ``environment`` compares drift rates per environmental band
        with the rest of the fleet (median ratio, one-sided Mann-Whitney U test).
        """
        entries: list[dict[str, Any]] = []
        healthy = 0
        warming = 0
        for s in self._sensors:
            if s.baseline is None:
                warming += 1
                continue
            effective = self._effective(s)
            threshold = self._threshold(s, effective)
            self._refresh_rate(s)
            self._predict(s, s.last_ts, threshold)
            if s.fault_shape is not None or s.drift_shape == "step":
                status = "fault"
            elif abs(s.ewma) >= threshold:
                status = "out_of_tolerance"
            elif s.predicted_at is not None:
                status = "drifting"
            else:
                healthy += 1
                continue
            if status == "drifting":
                due = s.predicted_at if s.predicted_at is not None else s.last_ts
            elif status == "fault":
                due = s.since if s.since is not None else s.last_ts
            else:
                due = s.out_since if s.out_since is not None else s.last_ts
            shape = s.shape
            severity = _SEVERITY[shape] if shape is not None else Severity.INFO
            _, absolute = self._tolerance(s.metric)
            rate = s.rate_per_day
            entries.append(
                {
                    "device": s.device,
                    "metric": s.metric,
                    "site": s.site,
                    "zone": s.zone,
                    "group": s.group,
                    "status": status,
                    "shape": shape,
                    "severity": severity.label,
                    "drift": s.ewma,
                    "drift_pct": None if absolute else 100.0 * s.ewma,
                    "rate_per_day": rate,
                    "rate_pct_per_day": None if rate is None or absolute else 100.0 * rate,
                    "predicted_out_of_tolerance_at": due,
                    "predicted_out_of_tolerance_iso": iso_utc(due),
                    "days_left": max(0.0, (due - now) / _DAY) if status == "drifting" else 0.0,
                    "action": "replace or repair" if status == "fault" else "recalibrate",
                    "last_calibration": self._last_calibration(s),
                }
            )
        entries.sort(key=schedule_order)
        by_zone: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            zone = f"{entry['site'] or '?'}/{entry['zone'] or '?'}"
            by_zone.setdefault(zone, []).append(entry)
        return {
            "generated_at": now,
            "generated_at_iso": iso_utc(now),
            "sensors": entries,
            "by_zone": by_zone,
            "healthy": healthy,
            "warming_up": warming,
            "environment": self._environment_report(),
        }

    def _environment_report(self) -> dict[str, Any]:
        """Drift rate (absolute, per day) per environmental band against the rest of the fleet."""
        config = self.config
        rows: list[tuple[float, str, dict[str, float]]] = []
        env_metrics = config.environment_metrics
        for s in self._sensors:
            if s.baseline is None:
                continue
            self._refresh_rate(s)
            if s.rate_per_day is None:
                continue
            device = self._devices.get(s.device)
            if device is None:
                continue
            zone = f"{s.site or '?'}/{s.zone or '?'}"
            rows.append((abs(s.rate_per_day), zone, self._env(device, env_metrics)))
        all_rates = [r for r, _, _ in rows]
        report: dict[str, Any] = {
            "statistic": "ratio of median |drift rate| in the band to the rest of the fleet; "
            "one-sided Mann-Whitney U test (normal approximation)",
            "fleet_median_rate_pct_per_day": 100.0 * _median(all_rates) if all_rates else None,
            "n": len(rows),
            "bands": [],
            "findings": [],
        }
        min_n = config.environment_min_n
        for env_metric in config.environment_metrics:
            edges = tuple(config.environment_bands.get(env_metric, ()))
            if not edges:
                continue
            unit = env_metric.rsplit("_", 1)[-1] if "_" in env_metric else ""
            with_env = [(r, z, e[env_metric]) for r, z, e in rows if env_metric in e]
            for band in range(len(edges) + 1):
                lo = edges[band - 1] if band > 0 else -math.inf
                hi = edges[band] if band < len(edges) else math.inf
                if band == 0:
                    label = f"{env_metric.split('_')[0]} below {edges[0]:g} {unit}"
                elif band == len(edges):
                    label = f"{env_metric.split('_')[0]} above {edges[-1]:g} {unit}"
                else:
                    label = f"{env_metric.split('_')[0]} {lo:g}-{hi:g} {unit}"
                inside = [(r, z) for r, z, v in with_env if lo <= v < hi]
                scopes: list[tuple[str, list[float], list[float]]] = [
                    (
                        "fleet",
                        [r for r, _ in inside],
                        [r for r, _, v in with_env if not lo <= v < hi],
                    )
                ]
                for zone in sorted({z for _, z in inside}):
                    chosen = [r for r, z in inside if z == zone]
                    rest = [r for r, z, v in with_env if not (z == zone and lo <= v < hi)]
                    scopes.append((zone, chosen, rest))
                for scope, a, b in scopes:
                    if len(a) < min_n or len(b) < min_n:
                        continue
                    med_a, med_b = _median(a), _median(b)
                    ratio = med_a / med_b if med_b > 0 else math.inf
                    u, p = mann_whitney_greater(a, b)
                    row = {
                        "metric": env_metric,
                        "band": label,
                        "scope": scope,
                        "n": len(a),
                        "n_rest": len(b),
                        "median_rate_pct_per_day": 100.0 * med_a,
                        "rest_median_rate_pct_per_day": 100.0 * med_b,
                        "ratio": ratio if math.isfinite(ratio) else None,
                        "u": u,
                        "p_value": p,
                    }
                    report["bands"].append(row)
                    if p < 0.05 and ratio >= 1.5:
                        where = "sensors" if scope == "fleet" else f"sensors in {scope}"
                        factor = f"{ratio:.1f}x" if math.isfinite(ratio) else "much"
                        report["findings"].append(
                            f"{where} with {label} drift {factor} faster than the rest "
                            f"(n={len(a)} vs {len(b)}, Mann-Whitney p={p:.2g})"
                        )
        return report

    def _env(self, device: _Device, env_metrics: Sequence[str]) -> dict[str, float]:
        """The environment EWMAs of ``device`` by metric (those seen)."""
        at = device.env
        if at < 0:
            return {}
        env = self._env_column[at : at + len(env_metrics)]
        return {m: v for m, v in zip(env_metrics, env, strict=True) if v == v}

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        env_metrics = self.config.environment_metrics
        return {
            "version": self.STATE_VERSION,
            "now": self.now if math.isfinite(self.now) else None,
            "late_dropped": self.late_dropped,
            "groups": [
                {
                    "metric": g.metric,
                    "name": g.name,
                    "watermark": g.watermark if math.isfinite(g.watermark) else None,
                    "closed": g.closed,
                    "members": sorted(s.device for s in g.members),
                    "buckets": {
                        str(index): {
                            s.device: [ts, v]
                            for s, ts, v in zip(b.sensors, b.data[0::2], b.data[1::2], strict=True)
                        }
                        for index, b in g.buckets.items()
                    },
                }
                for g in self._groups.values()
            ],
            "sensors": [s.to_state(self._profile, self._profile_n) for s in self._sensors],
            "devices": {
                device_id: {
                    "site": d.site,
                    "zone": d.zone,
                    "published": d.published if d.published is not None else {},
                    "env": self._env(d, env_metrics),
                }
                for device_id, d in self._devices.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version not in (1, self.STATE_VERSION):
            raise ValueError(f"drift state format {version} is not {self.STATE_VERSION} or 1")
        self._reset()
        config = self.config
        now = state.get("now")
        self.now = -math.inf if now is None else float(now)
        self.late_dropped = int(state.get("late_dropped", 0))
        rows = state.get("groups", [])
        for row in rows:
            group = _Group(str(row["metric"]), str(row["name"]))
            watermark = row.get("watermark")
            group.watermark = -math.inf if watermark is None else float(watermark)
            group.closed = int(row["closed"])
            self._groups[(group.metric, group.name)] = group
        env_metrics = config.environment_metrics
        for device_id, row in state.get("devices", {}).items():
            device = _Device()
            device.site = row.get("site")
            device.zone = row.get("zone")
            published = {str(k): list(v) for k, v in row.get("published", {}).items()}
            device.published = published or None
            env = {str(k): float(v) for k, v in row.get("env", {}).items()}
            if env:
                device.env = len(self._env_column)
                self._env_column.extend(array("d", [env.get(m, math.nan) for m in env_metrics]))
            self._devices[str(device_id)] = device
        by_key: dict[tuple[str, str], _Sensor] = {}
        for row in state.get("sensors", []):
            sensor = _Sensor.from_state(row, config, int(version))
            key = (sensor.device, sensor.metric)
            if sensor.metric not in self._watched or key in by_key:
                continue
            by_key[key] = sensor
            values = [float(x) for x in row.get("profile", ())]
            counts = [int(x) for x in row.get("profile_n", ())]
            if any(values) or any(counts):
                sensor.prof = self._new_profile(values, counts)
            group_key = (sensor.metric, str(row.get("group", "")))
            own = self._groups.get(group_key)
            if own is None:
                own = self._groups[group_key] = _Group(*group_key)
            sensor.grp = own
            holder = self._devices.get(sensor.device)
            if holder is None:  # a state without the device: keep the sensor all the same
                holder = self._devices[sensor.device] = _Device()
            holder.add(sensor)
            self._sensors.append(sensor)
        bucket_s = config.bucket_s
        for row in rows:
            group = self._groups[(str(row["metric"]), str(row["name"]))]
            for device_id in row.get("members", []):
                member = by_key.get((str(device_id), group.metric))
                if member is not None:
                    group.members.append(member)
            for index_text, entries in row.get("buckets", {}).items():
                bucket = group.buckets[int(index_text)] = Bucket(int(index_text))
                for device_id, (ts, v) in entries.items():
                    entry = by_key.get((str(device_id), group.metric))
                    if entry is not None:
                        bucket.add(entry, float(ts), float(v))
            for index in sorted(group.buckets):  # the newest entry of each member, for ingest
                bucket = group.buckets[index]
                for position, entry in enumerate(bucket.sensors):
                    if entry.grp is group:
                        entry.pend = bucket.index
                        entry.pend_pos = position
            if group.buckets:
                group.first_end = (min(group.buckets) + 1) * bucket_s
