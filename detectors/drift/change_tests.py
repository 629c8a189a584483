"""The change tests a sensor's drift goes through as its buckets close, and the shapes they
name: each sensor's effective tolerance (relative or absolute, never below the metric's
floor nor a multiple of the sensor's own noise and resolution), the drift rate (Theil-Sen)
and the date it leaves tolerance, the drift alarm (CUSUM and EWMA) and its shape (``ageing``
or ``step``: a likelihood-ratio test of a one-break step against a linear ramp), the fault
shapes (``out_of_range``, ``stuck``, ``noisy``, ``spikes``), and the verification against
the peers after a calibration."""

from __future__ import annotations

import math
from array import array
from itertools import pairwise
from typing import Any

import numpy as np

from detectors.drift.config import _DAY, DriftConfig
from detectors.drift.containers import ring_push
from detectors.drift.peers import peer_resolution
from detectors.drift.robust_stats import _MAD, _SQRT2, _mad, _median, theil_sen
from detectors.drift.sensor import (
    _BASELINE,
    _BUCKETS,
    _CNEG,
    _CPOS,
    _DRIFTS_AT,
    _DSCALE,
    _EWMA,
    _MAG,
    _NOISE_AGE,
    _NOISE_HITS,
    _NOISE_RATIO,
    _NONE_BYTES,
    _RATE_N,
    _RATE_PER_DAY,
    _RATE_SIG,
    _RATE_SLOT,
    _RATE_STALE,
    _RATE_SUM,
    _RATES_AT,
    _RES,
    _RING,
    _SCALE,
    _SHAPE_LR,
    _STEP_JUMP,
    _Calibration,
    _get,
    _history_size,
    _is_none,
    _pack,
    _Sensor,
)

STEP_TEST = "step_vs_ramp_lr"
"""The name the evidence gives the test that tells a step from a ramp (see
:meth:`_Judge.step_or_ramp`)."""
_MIN_SEGMENT = 3  # buckets on either side of a break the step test looks at, at least


def _lasting(config: DriftConfig) -> int:
    """How many buckets each level of a step must span: an eighth of ``step_window`` (an hour
    of 5-minute buckets), at least :data:`_MIN_SEGMENT`."""
    return max(_MIN_SEGMENT, config.step_window // 8)


class _Judge:
    """The change tests under one :class:`DriftConfig`: each watched metric's tolerance, and
    the tests run on a sensor (its numbers change in place; the shapes it ends with are
    ``drift_shape`` and ``fault_shape``)."""

    __slots__ = ("config", "early_samples", "ewma_z", "history", "params", "recheck", "references")

    def __init__(self, config: DriftConfig, metrics: tuple[str, ...]) -> None:
        self.config = config
        alpha = config.ewma_alpha
        # ``fire_z`` standard deviations of the EWMA, per unit of the drift's scale
        self.ewma_z = config.fire_z * math.sqrt(alpha / (2.0 - alpha))
        # metric -> (tolerance, whether it is absolute, floor of the relative residual's scale,
        # floor of the tolerance in the metric's unit)
        self.params = {
            metric: (
                *self.tolerance(metric),
                config.rel_floor.get(metric, config.default_rel_floor),
                config.tolerance_floor.get(metric, 0.0),
            )
            for metric in metrics
        }
        self.references = frozenset(config.reference_devices)
        self.history = _history_size(config)  # how many drifts a sensor keeps
        # every how many buckets a sensor judged ageing is tested for a step again (half the
        # time a step must have lasted, see step_or_ramp)
        self.recheck = max(1, _lasting(config) // 2)
        # an early warning's rate stands on two days of drift samples at least: over less, a
        # daily wave (a peer's value carried on the daily slope) passes for a trend
        self.early_samples = max(
            config.rate_min_samples, math.ceil(2 * _DAY / config.rate_sample_s)
        )

    def tolerance(self, metric: str) -> tuple[float, bool]:
        """The configured tolerance and whether it is absolute."""
        absolute = self.config.abs_tolerance.get(metric)
        if absolute is not None:
            return absolute, True
        return self.config.rel_tolerance, False

    def den(self, metric: str, reference: float | None) -> float:
        """What a residual of ``metric`` against ``reference`` is divided by: 1 for an absolute
        tolerance, else the reference's magnitude, at least the metric's ``rel_floor``."""
        _, absolute, floor, _ = self.params[metric]
        if absolute:
            return 1.0
        if reference is None:
            return floor
        return reference if reference > floor else max(-reference, floor)

    def magnitude(self, s: _Sensor, den: float | None = None) -> float:
        """The magnitude the tolerance of ``s`` is judged at: its typical one once its warm-up
        has learned it, else ``den`` (by default that of its last reference)."""
        num = s.num
        if len(num) >= _RING and num[_MAG] > 0.0:
            return num[_MAG]
        return self.den(s.metric, s.last_ref) if den is None else den

    def effective(self, s: _Sensor, den: float | None = None) -> float:
        """The tolerance ``s`` is judged with, in the units of its drift (relative to its
        typical magnitude, see :meth:`magnitude`): the configured one, but never below the
        metric's ``tolerance_floor``, nor ``resolution_tolerance`` times the sensor's
        resolution (all ``alone_factor`` times wider while alone), nor ``noise_tolerance``
        times its measured noise. (:meth:`tolerance_terms` without naming the term: what
        every bucket of every sensor asks.)"""
        config = self.config
        tolerance, _, _, floor = self.params[s.metric]
        num = s.num
        held = len(num)
        tracked = held >= _RING
        if tracked and num[_MAG] > 0.0:
            den = num[_MAG]
        elif den is None:
            den = self.den(s.metric, s.last_ref)
        effective = floor / den
        if effective < tolerance:
            effective = tolerance
        if held > _RES:
            res = num[_RES]
            if res == res:  # (unset: the NaN ``_NONE``)
                res = config.resolution_tolerance * res / den
                if res > effective:
                    effective = res
        if s.mode == "alone":
            effective *= config.alone_factor
        if tracked:
            noise = config.noise_tolerance * num[_SCALE]
            if noise > effective:
                effective = noise
        return effective

    def tolerance_terms(self, s: _Sensor, den: float | None = None) -> tuple[float, str]:
        """:meth:`effective` and which term sets it: ``"relative"`` or ``"absolute"`` (the
        configured tolerance), ``"floor"``, ``"resolution"`` or ``"noise"``."""
        config = self.config
        tolerance, absolute, _, floor = self.params[s.metric]
        den = self.magnitude(s, den)
        num = s.num
        effective, basis = tolerance, "absolute" if absolute else "relative"
        if floor / den > effective:
            effective, basis = floor / den, "floor"
        if len(num) > _RES:
            res = num[_RES]
            if not _is_none(res) and config.resolution_tolerance * res / den > effective:
                effective, basis = config.resolution_tolerance * res / den, "resolution"
        if s.mode == "alone":
            effective *= config.alone_factor
        if len(num) >= _RING and config.noise_tolerance * num[_SCALE] > effective:
            effective, basis = config.noise_tolerance * num[_SCALE], "noise"
        return effective, basis

    def threshold(self, s: _Sensor, effective: float) -> float:
        """How far the smoothed drift of ``s`` may go: the tolerance, or ``fire_z`` standard
        deviations of the EWMA where that is more."""
        limit = self.ewma_z * s.scale
        return effective if effective > limit else limit

    def verify(self, cal: _Calibration, t: float, r: float, tolerance: float) -> None:
        """One bucket of the verification after a calibration (``r``: the residual to the
        normal offset the sensor had before it)."""
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

    def track(
        self,
        s: _Sensor,
        index: int,
        t: float,
        raw: float,
        den: float,
        effective: float,
        stuck_now: bool,
    ) -> None:
        """One bucket of the drift track of ``s``, whose value is ``raw`` off its reference
        (``raw / den`` relative to it) in bucket ``index`` (ending at ``t``): while it warms
        up, learn its normal offset and noise; from then on, its drift (median-filtered over
        5 buckets), spikes, noise, EWMA and CUSUM, then the tests on them."""
        config = self.config
        num = s.num
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
                s.add_track()
                num[_MAG] = mag = _median(warm[1::2])
                effective = self.effective(s)  # at that magnitude, before its noise is known
                # a quantised residual's noise is not known finer than half a step of the
                # coarser of the sensor and its peers (the MAD of values on a grid may be 0)
                res = num[_RES]
                peers_res = peer_resolution(s)
                if res != res or peers_res > res:
                    res = peers_res
                floor_scale = max(0.05 * effective, 0.0 if res != res else 0.5 * res / mag)
                num[_SCALE] = max(_MAD * _mad(offsets, 0.0), floor_scale)
                diffs = [b - a for a, b in pairwise(offsets)]
                num[_DSCALE] = max(_MAD * _mad(diffs) / _SQRT2 if diffs else 0.0, floor_scale)
                s.warm = None
            self.judge_faults(s, effective, stuck_now)
            return
        if len(num) < _RING:
            s.add_track()
        num[_BUCKETS] += 1.0
        scale = num[_SCALE]
        d = (raw - baseline) / den
        # the drift history: a ring of the last ``history`` drifts after the numbers
        held = len(num) - _RING
        head = int(num[_DRIFTS_AT])
        windows = s.windows
        if windows is not None:  # loaded windows, appended to as they were
            if held:
                windows.diffs.append(d - num[_RING + head - 1 if head else -1])
            windows.left -= 1
        capacity = self.history
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
        limit = self.ewma_z * scale
        threshold = effective if effective > limit else limit
        self.track_rate(s, t, dm, threshold)
        self.judge_drift(s, t, threshold)
        self.judge_faults(s, effective, stuck_now)

    def track_rate(self, s: _Sensor, t: float, dm: float, threshold: float) -> None:
        """Collect ``rate_sample_s`` means of the drift; fit the slope when it matters (the
        drift is past a quarter of the threshold), else leave it for :meth:`refresh_rate`."""
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
                    self.refresh_rate(s)
            num[_RATE_SLOT] = slot
        num[_RATE_SUM] += dm
        num[_RATE_N] += 1.0
        self.predict(s, t, threshold)

    def refresh_rate(self, s: _Sensor) -> None:
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

    def predict(self, s: _Sensor, t: float, threshold: float) -> None:
        """When the drift leaves (or left) tolerance, from its smoothed size and its rate
        (significant, or of a sensor already judged ageing): only for a drift already
        ``predict_min_fraction`` of the way, moving further out."""
        num = s.num
        current = num[_EWMA]
        if abs(current) >= threshold:
            if s.out_since is None:
                s.out_since = t
            s.predicted_at = s.out_since
            return
        s.out_since = None
        # a sensor judged ageing keeps its date while a slow drift's rate dips below significance
        rate = _get(num[_RATE_PER_DAY]) if num[_RATE_SIG] or s.drift_shape == "ageing" else None
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

    def judge_drift(self, s: _Sensor, t: float, threshold: float) -> None:
        config = self.config
        num = s.num
        e = num[_EWMA]
        size = abs(e)
        if s.drift_shape is not None:
            if size < config.clear_fraction * threshold:
                if s.drift_shape == "ageing":
                    # ageing does not heal itself: clear only once the trend is gone too
                    self.refresh_rate(s)
                    rate = _get(num[_RATE_PER_DAY])
                    if s.rate_sig and rate is not None and (rate > 0) == (e > 0):
                        return
                s.drift_shape = None
            elif (
                s.drift_shape == "ageing"
                and num[_BUCKETS] % self.recheck == 0  # a step stays in the window for hours
                and self.step_or_ramp(s, threshold, size, 1.0) == "step"
            ):
                s.drift_shape = "step"
            return
        if s.device in self.references:
            return  # trusted: judged for faults only
        confirmed = num[_CPOS] >= config.cusum_h if e > 0 else num[_CNEG] >= config.cusum_h
        if not confirmed:
            return
        alone = s.mode == "alone"
        fire = size >= threshold
        if not fire and not alone and size >= config.early_fraction * threshold:
            self.refresh_rate(s)
            self.predict(s, t, threshold)
            rate = _get(num[_RATE_PER_DAY])
            predicted_at = s.predicted_at
            fire = (
                s.rate_sig
                and s.rates is not None
                and len(s.rates) >= 2 * self.early_samples
                and rate is not None
                and (rate > 0) == (e > 0)
                and predicted_at is not None
                and predicted_at - t <= config.horizon_s
            )
        if not fire:
            return
        shape = self.step_or_ramp(s, threshold, size, 0.5)
        if shape == "pending" or (alone and shape != "step"):
            # decided once the break has lasted; alone, the own level absorbs slow changes
            # (a front of weather), so only a step is a finding: ageing needs peers
            return
        s.drift_shape = "step" if shape == "step" else "ageing"

    def step_or_ramp(self, s: _Sensor, threshold: float, size: float, share: float) -> str:
        """Whether the drift of ``s`` came as a ``"step"`` or a ``"ramp"`` (:data:`STEP_TEST`),
        or ``"pending"``: a break too recent to tell a step from a transient yet.

        Over its last ``step_window`` drifts, two models with two coefficients each are fitted
        by least squares: a linear ramp, and a step (one level, then another, the break where
        it fits best). The statistic is the likelihood ratio ``(RSS_ramp - RSS_step) /
        sigma**2`` with ``sigma`` the robust scale (MAD) of the step model's residuals, at least
        the sensor's learned noise (so a spike does not hide a step, nor noise make one). A
        step has lasted: both its levels span at least an eighth of the window (an hour of
        5-minute buckets), so a defrost or a door is not one. It is a step when the ratio
        reaches ``step_lr`` and the jump is at least ``share`` of the threshold and half the
        drift's size (most of the drift came at once), and the level after it is flat (one
        that slopes back by half the jump or more is a transient fading); a steady ramp,
        however noisy or quantised, leaves the step model nothing to gain over the line. With
        ``share`` below 1 (a first alarm), a significant break in the last eighth, or a level
        sloping back, is ``"pending"``.
        Sets ``step_jump`` and ``shape_lr`` (of the split the decision was taken on).
        """
        num = s.num
        config = self.config
        values = s.recent_drifts(config.step_window)
        n = len(values)
        lasting = _lasting(config)
        if n < 2 * lasting:
            num[_STEP_JUMP] = num[_SHAPE_LR] = 0.0
            return "ramp"
        y = np.asarray(values, dtype=float)
        yc = y - y.mean()
        t = np.arange(n, dtype=float) - 0.5 * (n - 1)
        sty = float(t @ yc)
        ramp_gain = sty * sty / float(t @ t)  # RSS of a level less RSS of the ramp
        # each split's between-segment sum of squares (RSS of a level less RSS of the step)
        cum = np.cumsum(yc)
        n1 = np.arange(_MIN_SEGMENT, n - _MIN_SEGMENT + 1, dtype=float)
        s1 = cum[_MIN_SEGMENT - 1 : n - _MIN_SEGMENT]
        jumps = -s1 / (n - n1) - s1 / n1  # mean after the split less mean before
        gains = jumps * jumps * n1 * (n - n1) / n
        noise = num[_SCALE] if len(num) >= _RING else 0.0

        def ratio(at: int) -> float:
            split = _MIN_SEGMENT + at
            before, after = yc[:split], yc[split:]
            residuals = np.concatenate((before - before.mean(), after - after.mean()))
            sigma = _MAD * float(np.median(np.abs(residuals - np.median(residuals))))
            sigma = sigma if sigma > noise else noise
            lr = (float(gains[at]) - ramp_gain) / (sigma * sigma) if sigma > 0 else math.inf
            return lr if math.isfinite(lr) else 1e12

        step_lr = config.step_lr
        if share < 1.0:
            recent = int(np.argmax(gains))
            if n - _MIN_SEGMENT - recent < lasting and ratio(recent) >= step_lr:
                return "pending"
        low, high = lasting - _MIN_SEGMENT, n - lasting - _MIN_SEGMENT + 1
        best = low + int(np.argmax(gains[low:high]))
        jump = float(jumps[best])
        lr = ratio(best)
        num[_STEP_JUMP] = jump
        num[_SHAPE_LR] = lr
        step = lr >= step_lr and abs(jump) >= share * threshold and abs(jump) >= 0.5 * size
        if step:
            # a step stays where it jumped: a level that slopes back by half the jump or more
            # is a transient fading (a slow sensor after a defrost), not a new offset
            after = yc[_MIN_SEGMENT + best :]
            at = np.arange(len(after), dtype=float) - 0.5 * (len(after) - 1)
            back = float(at @ after) / float(at @ at) * (len(after) - 1)
            if back * jump < 0 and abs(back) >= 0.5 * abs(jump):
                return "pending" if share < 1.0 else "ramp"
        return "step" if step else "ramp"

    def shape_evidence(self, s: _Sensor) -> dict[str, Any]:
        """The numbers of the last step-or-ramp decision of ``s``, for its evidence."""
        return {
            "test": STEP_TEST,
            "likelihood_ratio": round(s.shape_lr, 3),
            "threshold": self.config.step_lr,
            "jump": s.step_jump,
            "window_buckets": self.config.step_window,
            "verdict": "step" if s.drift_shape == "step" else "ramp",
        }

    def judge_faults(self, s: _Sensor, effective: float, stuck_now: bool) -> None:
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
