"""What the drift detector keeps per sensor (one metric of one device), compactly: the
numbers of :class:`_Sensor` unboxed in one ``array('d')`` (the ``_NUMBERS`` layout, with
``_NONE`` marking an unset number), its drift history ring, its calibration record, and its
saved layout (:meth:`_Sensor.to_state`, :meth:`_Sensor.from_state`)."""

from __future__ import annotations

import math
import operator
import struct
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detectors.drift.config import DriftConfig
from detectors.drift.containers import FloatRing, ring_ordered, ring_push

if TYPE_CHECKING:
    from detectors.drift.peers import _Group

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
    ("stuck_lo", 0.0), ("stuck_hi", 0.0), ("stuck_run#", 0), ("res", None), ("settle#", 0),
    ("ref_smooth", None),
)  # fmt: skip
# ... and of its drift track (what a sensor still warming up reads: these defaults)
_TRACK_NUMBERS = (
    ("scale", 0.0), ("dscale", 0.0), ("ewma", 0.0), ("cpos", 0.0), ("cneg", 0.0),
    ("noise_ratio", 1.0), ("rate_sum", 0.0), ("step_jump", 0.0), ("shape_lr", 0.0),
    ("mag", 0.0), ("rate_per_day", None),
    ("rate_se", None), ("rate_sig?", False), ("rate_stale?", False), ("buckets#", 0),
    ("noise_age#", 0), ("noise_hits#", 0), ("rate_slot#", -1), ("rate_n#", 0),
    ("drifts_at#", 0), ("rates_at#", 0),
)  # fmt: skip
_NUMBERS = (*_SENSOR_NUMBERS, *_REFERENCE_NUMBERS, *_TRACK_NUMBERS)
(
    _LAST_VALUE, _LEVEL, _PEER_STREAK, _ALONE_STREAK, _PROF,
    _LAST_REF, _LAST_R, _BASELINE, _STUCK_VALUE, _STUCK_LO, _STUCK_HI, _STUCK_RUN, _RES, _SETTLE,
    _REF_SMOOTH,
    _SCALE, _DSCALE, _EWMA, _CPOS, _CNEG, _NOISE_RATIO, _RATE_SUM, _STEP_JUMP, _SHAPE_LR,
    _MAG, _RATE_PER_DAY,
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
    "drifts", "diffs", "step_win", "spikes", "rates", "history", "res", "shape_lr", "mag",
    "settle", "ref_smooth",
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
    "last_ts", "bucket_index", "since", "res", "settle", "ref_smooth",
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
    # its resolution: the smallest nonzero step between two of its bucket values (None: it
    # has not changed yet); a property of the sensor, kept through calibrations
    res = _Number(_RES)
    # the last bucket index of the transient it is settling from (see DriftConfig.transient_gate)
    settle = _Number(_SETTLE)
    # its reference smoothed over a few buckets (what a stuck value is judged against: how far
    # the air moved, not how much the consensus jittered)
    ref_smooth = _Number(_REF_SMOOTH)
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
    # the likelihood ratio of a step against a ramp at the last shape decision
    shape_lr = _Number(_SHAPE_LR)
    # the typical magnitude its relative drift is taken against (the median of its warm-up's;
    # 0: not known), at which the tolerance's floors in the metric's unit are judged
    mag = _Number(_MAG)
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

    def recent_drifts(self, size: int) -> Sequence[float]:
        """The drifts of the last ``size`` buckets, oldest first (for a track loaded from a
        version-1 state whose history does not cover them yet: its loaded 5-bucket medians)."""
        windows = self.windows
        if windows is not None:
            return windows.steps.ordered()
        return self.drift_history()[-size:]

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
