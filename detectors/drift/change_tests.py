"""The change tests a sensor's drift goes through as its buckets close, and the shapes they
name: the drift rate (Theil-Sen) and the date it leaves tolerance, the drift alarm (CUSUM and
EWMA) and its shape (``ageing`` or ``step``), the fault shapes (``out_of_range``, ``stuck``,
``noisy``, ``spikes``), and the verification against the peers after a calibration."""

from __future__ import annotations

import math
from array import array
from itertools import pairwise

from detectors.drift.config import _DAY, DriftConfig
from detectors.drift.containers import ring_push
from detectors.drift.robust_stats import _MAD, _SQRT2, _mad, _median, theil_sen
from detectors.drift.sensor import (
    _BASELINE,
    _BUCKETS,
    _CNEG,
    _CPOS,
    _DRIFTS_AT,
    _DSCALE,
    _EWMA,
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
    _RING,
    _SCALE,
    _STEP_JUMP,
    _Calibration,
    _get,
    _history_size,
    _pack,
    _Sensor,
)


class _Judge:
    """The change tests under one :class:`DriftConfig`: each watched metric's tolerance, and
    the tests run on a sensor (its numbers change in place; the shapes it ends with are
    ``drift_shape`` and ``fault_shape``)."""

    __slots__ = ("config", "ewma_z", "history", "params", "references")

    def __init__(self, config: DriftConfig, metrics: tuple[str, ...]) -> None:
        self.config = config
        alpha = config.ewma_alpha
        # ``fire_z`` standard deviations of the EWMA, per unit of the drift's scale
        self.ewma_z = config.fire_z * math.sqrt(alpha / (2.0 - alpha))
        # metric -> (tolerance, whether it is absolute, floor of the relative residual's scale)
        self.params = {
            metric: (
                *self.tolerance(metric),
                config.rel_floor.get(metric, config.default_rel_floor),
            )
            for metric in metrics
        }
        self.references = frozenset(config.reference_devices)
        self.history = _history_size(config)  # how many drifts a sensor keeps

    def tolerance(self, metric: str) -> tuple[float, bool]:
        """The tolerance and whether it is absolute."""
        absolute = self.config.abs_tolerance.get(metric)
        if absolute is not None:
            return absolute, True
        return self.config.rel_tolerance, False

    def effective(self, s: _Sensor) -> float:
        """The tolerance ``s`` is judged with (``alone_factor`` times wider while alone)."""
        tolerance, _ = self.tolerance(s.metric)
        return tolerance * (self.config.alone_factor if s.mode == "alone" else 1.0)

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
                floor_scale = 0.05 * effective
                s.add_track()
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
            elif s.drift_shape == "ageing":
                jump = self.best_jump(s, config.step_window)
                if abs(jump) >= threshold and abs(jump) >= 0.5 * size:
                    s.drift_shape = "step"
                    num[_STEP_JUMP] = jump
            return
        if s.device in self.references:
            return  # trusted: judged for faults only
        confirmed = num[_CPOS] >= config.cusum_h if e > 0 else num[_CNEG] >= config.cusum_h
        if not confirmed:
            return
        fire = size >= threshold
        if not fire and size >= config.early_fraction * threshold:
            self.refresh_rate(s)
            self.predict(s, t, threshold)
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
        jump = self.best_jump(s, config.step_window)
        if abs(jump) >= 0.5 * threshold and abs(jump) >= 0.5 * size:
            s.drift_shape = "step"
            num[_STEP_JUMP] = jump
        else:
            s.drift_shape = "ageing"

    @staticmethod
    def best_jump(s: _Sensor, size: int) -> float:
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
