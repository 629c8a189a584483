"""The online connectivity detector: arrivals in order and the rhythm learned from them,
each device's loss rate and the gaps improbable under it, intermittent links (a Poisson test
of the gaps), fading signals, silence judged on a deadline wheel (devices offline, gateways
down) and checkpoints as plain data."""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

from detectors.connectivity.config import ConnectivityConfig
from detectors.connectivity.device import _Device
from detectors.connectivity.patterns import outage_report
from detectors.connectivity.trend import _trend
from detectors.wheel import SlotWheel
from service.errors import check_state_version
from service.records import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

# what a status message says when the device (or its broker's last will) announces it is gone
OFFLINE_STATES = frozenset({"offline", "disconnected", "lost", "dead"})

TECH_KEYS = ("radio", "technology", "network", "bearer")
SIGNAL_METRICS = (("rssi_dbm", -115.0), ("snr_db", -10.0), ("link_quality_pct", 10.0))

# how wide one slot of the deadline wheel is (seconds of receive time)
_SLOT_S = 30.0

# the most reports a silence is judged to have lost before a device is offline (a loss rate
# so high that more are ordinary is treated as this many)
_MAX_OFFLINE_LOST = 60

_INF = math.inf

# a device's standing in its gateway's tally
_UNCOUNTED, _ACTIVE, _SILENT = 0, 1, 2

_STATUS = MessageKind.STATUS
_WARNING = Severity.WARNING
_CRITICAL = Severity.CRITICAL


class ConnectivityDetector:
    """Offline devices, gateway outages, intermittent links and fading signals."""

    name = "connectivity"
    STATE_VERSION = 2

    def __init__(self, config: ConnectivityConfig | None = None) -> None:
        self.config = config or ConnectivityConfig()
        config = self.config
        # k reports lost in a row are improbable enough for a device to be offline when its
        # loss rate p is above _off_levels[k - 1] and at most _off_levels[k], that is
        # p**k <= offline_level < p**(k - 1) (a hair of tolerance for rounding)
        self._off_levels = [0.0] + [
            config.offline_level ** (1.0 / k) * (1.0 + 1e-9) for k in range(1, _MAX_OFFLINE_LOST)
        ]
        self._prior_lost = config.loss_prior * config.loss_prior_reports
        self._per_window_s = 1.0 / config.loss_window_s
        self._prior_reports = config.loss_prior_reports
        self._devices: dict[str, _Device] = {}
        self._new_columns()
        self._gateways: dict[str, list[str]] = {}  # gateway -> its devices, first joined first
        self._gateway_down: dict[str, float] = {}
        self._gateway_recovered: dict[str, float] = {}
        self.now = 0.0
        self._reset_deadlines()

    def _new_columns(self) -> None:
        """Per-device values kept unboxed, one row per device (its ``order``): when it was
        last heard, its expected interval between arrivals and how many arrivals it was learned
        from, the sum of its signal readings not yet averaged and when the first of them came,
        what it adds to its gateway's tally at the last tick (its standing), when its standing
        or offline state may next change (its due) and its row of signal points (``-1``: none).

        Signal rows are ``2 * signal_window`` floats each in one shared column, taken by a
        device once its window is full (see :meth:`_track_signal`).
        """
        self._last_rx = array("d")
        self._interval = array("d")
        self._count = array("q")
        # its newest device ts and seq (NaN: none yet) among readings in order, the reports
        # it lost and the reports expected from it (both forgetting over loss_window_s), and
        # how many lost in a row make it offline at its loss rate (see _off_levels)
        self._newest_ts = array("d")
        self._seq = array("d")
        self._lost = array("d")
        self._expected = array("d")
        self._off_k = bytearray()
        self._acc_sum = array("d")
        self._acc_t = array("d")
        self._standing = bytearray()
        self._due = array("d")
        self._signal_row = array("i")
        self._points = array("d")

    def _add_device(self, device_id: str, received: float) -> _Device:
        device = self._devices[device_id] = _Device(len(self._devices))
        self._last_rx.append(received)
        self._interval.append(0.0)
        self._count.append(0)
        self._newest_ts.append(-math.inf)
        self._seq.append(math.nan)
        self._lost.append(0.0)
        self._expected.append(0.0)
        self._off_k.append(self._offline_lost(self.config.loss_prior))
        self._acc_sum.append(0.0)
        self._acc_t.append(0.0)
        self._standing.append(_UNCOUNTED)
        self._due.append(math.inf)
        self._signal_row.append(-1)
        return device

    def _signal_points(self, device: _Device) -> array[float]:
        """The signal points of ``device``: (t, value) pairs, oldest first (a copy)."""
        row = self._signal_row[device.order]
        if row < 0:
            return array("d") if device.signal is None else device.signal[:]
        width = 2 * self.config.signal_window
        return self._points[row * width : (row + 1) * width]

    def _reset_deadlines(self) -> None:
        """Forget the silence bookkeeping; the next tick rebuilds it from the devices.

        Between ticks each device with two or more intervals learned has a standing: heard
        within ``active_window_s`` (active), and silent for ``gateway_factor`` intervals or
        not; the standings of a gateway's devices add up to its tally ``[active, silent]``.
        Each device waits on a wheel of ``_SLOT_S``-wide slots for ``due``: the first moment
        (receive time) its standing or offline state can change. A tick visits the slots
        that have come due, the devices being watched (silent long enough to be offline and
        not yet at their worst alert), and the gateways whose tally changed or that are down.
        """
        self._tally: dict[str, list[int]] = {}  # gateway -> [active, silent]
        self._wheel = SlotWheel()  # device ids by deadline slot (stale ones are skipped)
        self._watch: set[str] = set()
        self._dirty: set[str] = set()  # gateways whose tally changed since the last tick
        self._clock = -math.inf  # the last tick's time
        self._stale = True  # the bookkeeping must be rebuilt before it is used

    # -- learning -------------------------------------------------------------------

    def _follow_meta(self, device_id: str, device: _Device, meta: Mapping[str, str]) -> None:
        if meta is device.meta:
            return  # the same (immutable) metadata as last time: nothing to follow
        device.meta = meta
        gateway = meta.get("gateway")
        if gateway is not None and gateway != device.gateway:
            gateways = self._gateways
            if device.gateway is not None:
                old = gateways.get(device.gateway)
                if old is not None and device_id in old:
                    old.remove(device_id)
            members = gateways.get(gateway)
            if members is None:
                gateways[gateway] = [device_id]
            elif device_id not in members:
                members.append(device_id)
            standing = self._standing[device.order]
            if standing != _UNCOUNTED and not self._stale:
                self._set_standing(device, _UNCOUNTED)
                device.gateway = gateway
                self._set_standing(device, standing)
            else:
                device.gateway = gateway
        device.site = meta.get("site", device.site)
        device.zone = meta.get("zone", device.zone)
        for key in TECH_KEYS:
            tech = meta.get(key)
            if tech is not None:
                if device.tech is not None and tech != device.tech:
                    device.switches += 1
                device.tech = tech
                break

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        config = self.config
        burst = config.burst_s
        spacing = config.signal_spacing_s
        devices = self._devices
        acc_sums = self._acc_sum
        acc_ts = self._acc_t
        last_rx = self._last_rx
        newest_ts = self._newest_ts
        seqs = self._seq
        status = _STATUS
        signal_metrics = SIGNAL_METRICS
        signals: list[Signal] = []
        now = self.now
        for reading in batch:
            received = reading.received_at
            if received > now:
                now = self.now = received
            device_id = reading.device_id
            meta = reading.meta
            if (
                reading.kind is status
                and (meta.get("state") or meta.get("status")) in OFFLINE_STATES
            ):
                # a goodbye is not a sign of life: the silence clock keeps running
                continue
            device = devices.get(device_id)
            ts = reading.ts
            seq = reading.seq
            if device is None:
                device = self._add_device(device_id, received)
                self._follow_meta(device_id, device, meta)
                row = device.order
                newest_ts[row] = ts
                if seq is not None:
                    seqs[row] = seq
            else:
                if meta is not device.meta:
                    self._follow_meta(device_id, device, meta)
                row = device.order
                silence = received - last_rx[row]
                if (
                    (reading.late or ts < newest_ts[row])
                    and not (seq is not None and seq > seqs[row])
                    and silence <= 2.0 * self._interval[row]
                ):
                    # delivered out of order: old news, neither an arrival nor part of the
                    # rhythm; the report was counted lost when a newer one overtook it.
                    # (A device silent for two intervals whose readings all look old has had
                    # its clock put back: its readings are arrivals again.)
                    lost = self._lost[row]
                    self._lost[row] = lost - 1.0 if lost > 1.0 else 0.0
                else:
                    if silence > burst:
                        sent = ts - newest_ts[row]  # its own spacing (a clock skew cancels)
                        self._arrival(device_id, device, reading, silence, sent, signals)
                    newest_ts[row] = ts
                    if seq is not None:
                        seqs[row] = seq
            # the first signal metric present: averaged into one point per signal_spacing_s
            # (see _track_signal)
            metrics = reading.metrics
            for metric, loss_level in signal_metrics:
                value = metrics.get(metric)
                if value is None:
                    continue
                if device.acc_n == 0:
                    acc_ts[row] = received
                acc_sums[row] += value
                device.acc_n += 1
                if received - acc_ts[row] >= spacing:
                    self._track_signal(reading, device, metric, loss_level, signals)
                break
        return signals

    def _arrival(
        self,
        device_id: str,
        device: _Device,
        reading: Reading,
        silence: float,
        sent: float,
        out: list[Signal],
    ) -> None:
        """An arrival in order after ``silence`` (receive time), ``sent`` after the newest
        reading before it by the device's clock: judge the silence against the device's loss
        rate (an ordinary loss, or a gap), then learn from it."""
        config = self.config
        row = device.order
        intervals = self._interval
        interval = intervals[row]
        count = self._count[row]
        received = reading.received_at
        sample = silence
        gap = False
        if count and interval > 0.0:
            if 0.0 < sent < _INF and sent != silence:
                # the silence and the device's own spacing disagree when readings were held
                # back (a batch uploaded after a gap, and the reading right behind it) or
                # its clock was set: the rhythm is the one closer to the interval so far
                by_clock = sent / interval
                if by_clock < 1.0:
                    by_clock = 1.0 / by_clock
                by_silence = silence / interval
                if by_silence < 1.0:
                    by_silence = 1.0 / by_silence
                if by_clock < by_silence:
                    sample = sent
            if silence >= 1.5 * interval:
                # the reports the silence had room for that did not come
                lost = int(silence / interval + 0.5) - 1
                gap, sample = self._judge_silence(device, reading, silence, sent, sample, lost)
            else:
                # the common case, nothing lost (_count_loss, inlined)
                forget = 1.0 - silence * self._per_window_s
                if forget < 0.0:
                    forget = 0.0
                column = self._lost
                lost_w = column[row] = column[row] * forget
                column = self._expected
                expected_w = column[row] = column[row] * forget + 1.0
                if not count & 15:
                    # the rate falls slowly while nothing is lost: how many lost in a row
                    # make it offline is looked at again every 16 arrivals
                    p = (lost_w + self._prior_lost) / (expected_w + self._prior_reports)
                    k = self._off_k[row]
                    if k > 1 and p <= self._off_levels[k - 1]:
                        self._off_k[row] = self._offline_lost(p)
        elif silence < sent < _INF:
            sample = sent  # the longer, before there is an interval
        # learn the interval; long silences are outages, not the device's rhythm
        if count == 0:
            learned = sample
        else:
            clipped = 0.5 * interval
            if sample > clipped:
                clipped = sample
            if 2.0 * interval < clipped:
                clipped = 2.0 * interval
            weight = 0.5 if count < 4 else 0.1
            learned = interval + weight * (clipped - interval)
        intervals[row] = learned
        count = self._count[row] = count + 1
        self._last_rx[row] = received
        if count >= 2 and not self._stale:
            gap_limit = config.gateway_factor * learned
            factor = self._off_k[row] + 1.0  # (_offline_limit, inlined)
            if config.offline_factor > factor:
                factor = config.offline_factor
            offline_limit = factor * learned
            if config.min_offline_s > offline_limit:
                offline_limit = config.min_offline_s
            window = config.active_window_s
            if gap_limit >= 0.0 and offline_limit >= 0.0 and window >= 0.0:
                # just heard: active, not silent, not offline until the nearest limit
                if self._standing[row] != _ACTIVE:
                    self._set_standing(device, _ACTIVE)
                nearest = gap_limit
                if offline_limit < nearest:
                    nearest = offline_limit
                if window < nearest:
                    nearest = window
                due = received + nearest - 1e-12 * (abs(received) + abs(nearest)) - 1e-9
            else:
                self._reassess(device_id, device, received)
                due = self._next_due(device, received)
            self._due[row] = due
            if due < math.inf:
                self._wheel.push(device_id, int(due // _SLOT_S))
        if device.offline:
            device.offline = False
            if device.alerted:
                device.alerted = False
                out.append(
                    self._signal(
                        "device_offline", device_id, device, False, received,
                        summary=f"{device_id} is reporting again after {silence / 60:.0f} min",
                    )
                )  # fmt: skip
        if gap or device.intermittent:
            self._judge_intermittent(device_id, device, received, out)

    def _judge_silence(
        self,
        device: _Device,
        reading: Reading,
        silence: float,
        sent: float,
        sample: float,
        lost: int,
    ) -> tuple[bool, float]:
        """A silence that had room for ``lost`` reports: a gap when that many lost in a row
        are improbable at the device's loss rate, else ordinary loss (as many as its counter
        and clock agree were lost); counted into the loss rate. Returns whether it is a gap
        and the rhythm sample, shared among the reports its counter says it spanned."""
        config = self.config
        row = device.order
        interval = self._interval[row]
        seq = reading.seq
        step = seq - self._seq[row] if seq is not None else math.nan  # NaN: no counter
        gap = silence > config.gap_factor * interval and self._is_gap(row, lost)
        if gap:
            # improbable under independent loss: a gap. It counts as one lost report in the
            # loss rate (its first); the rest is an outage, not the channel's loss (and a
            # device that lost nothing for long learns from its first losses that they are
            # ordinary after all)
            if not device.gaps:
                device.gaps = deque(maxlen=config.history)
            # the gap starts when the first report went missing; it ends with this arrival
            # (a batch of buffered readings included)
            device.gaps.append((self._last_rx[row] + interval, silence))
        else:
            # fewer were lost if its counter or its clock says so (a report that was only
            # delayed, readings held back, a counter that skips)
            if 0.0 < step < lost + 1:
                lost = int(step) - 1
            if 0.0 < sent < lost * interval + 0.5 * interval:
                lost = max(0, int(sent / interval + 0.5) - 1)
        if step > 1.0:
            # the counter says how many reports the silence spanned: the rhythm is the
            # silence shared among them (a counter that skips is not believed beyond the
            # reports the time had room for)
            sample /= step if step < lost + 1 else lost + 1
        if gap:
            self._count_loss(row, 1, 2, silence)
        else:
            self._count_loss(row, lost, lost + 1, silence)
        return gap, sample

    # -- the loss rate ----------------------------------------------------------------

    def _loss_rate(self, row: int) -> float:
        """The device's rate of independent report loss: lost over expected reports (a gap
        counted as one lost report) over about ``loss_window_s``, starting from
        ``loss_prior``."""
        return (self._lost[row] + self._prior_lost) / (
            self._expected[row] + self.config.loss_prior_reports
        )

    def _is_gap(self, row: int, lost: int) -> bool:
        """Whether ``lost`` reports lost in a row are improbable (below ``gap_level``) if the
        device loses each report independently at its loss rate."""
        return bool(self._loss_rate(row) ** lost < self.config.gap_level)

    def _gap_lost(self, p: float) -> int:
        """The fewest reports lost in a row that make a gap at loss rate ``p``."""
        if p <= 0.0:
            return 1
        return max(1, math.floor(math.log(self.config.gap_level) / math.log(p)) + 1)

    def _offline_lost(self, p: float) -> int:
        """The fewest reports lost in a row that make a device offline at loss rate ``p``."""
        levels = self._off_levels
        k = 1
        while k < _MAX_OFFLINE_LOST - 1 and p > levels[k]:
            k += 1
        return k

    def _count_loss(self, row: int, lost: int, expected: int, span: float) -> None:
        """Count ``lost`` of ``expected`` reports over ``span`` seconds into the device's
        loss rate (what is older fades over ``loss_window_s``)."""
        forget = 1.0 - span * self._per_window_s
        if forget < 0.0:
            forget = 0.0
        self._lost[row] = self._lost[row] * forget + lost
        self._expected[row] = self._expected[row] * forget + expected
        p = self._loss_rate(row)
        # how many lost in a row make it offline, moved one level at a time as p moves
        levels = self._off_levels
        k = self._off_k[row]
        if p > levels[k]:
            while k < _MAX_OFFLINE_LOST - 1 and p > levels[k]:
                k += 1
            self._off_k[row] = k
        elif k > 1 and p <= levels[k - 1]:
            while k > 1 and p <= levels[k - 1]:
                k -= 1
            self._off_k[row] = k

    def _offline_limit(self, row: int) -> float:
        """How long the device may be silent before it is offline: long enough that the
        reports it missed are improbable at its loss rate (``offline_level``), and at least
        ``offline_factor`` intervals and ``min_offline_s``."""
        config = self.config
        factor = self._off_k[row] + 1.0
        if config.offline_factor > factor:
            factor = config.offline_factor
        limit = factor * self._interval[row]
        return limit if limit > config.min_offline_s else config.min_offline_s

    def _judge_intermittent(
        self, device_id: str, device: _Device, now: float, out: list[Signal]
    ) -> None:
        """Raise (or clear) ``intermittent_connectivity``: at least ``intermittent_gaps``
        gaps within the window, more than independent loss at the device's own rate
        explains (one-sided Poisson test at ``intermittent_alpha``)."""
        config = self.config
        since = now - config.intermittent_window_s
        recent = [gap for gap in device.gaps if gap[0] >= since]
        if not device.intermittent and len(recent) >= config.intermittent_gaps:
            p_value, test = self._gap_test(device, len(recent))
            if not p_value < config.intermittent_alpha:
                return
            device.intermittent = True
            mean_gap = sum(d for _, d in recent) / len(recent)
            out.append(
                self._signal(
                    "intermittent_connectivity", device_id, device, True, now,
                    summary=(f"{device_id}: {len(recent)} connection gaps in the last "
                             f"{config.intermittent_window_s / 3600:.0f} h "
                             f"(mean {mean_gap / 60:.1f} min) where independent loss at its "
                             f"{100 * test['loss_rate']:.2g} % explains "
                             f"{test['expected_gaps']:.2g}"),
                    evidence={"gaps": len(recent), "mean_gap_s": round(mean_gap, 1),
                              **test,
                              "expected_interval_s": round(self._interval[device.order], 1),
                              "technology": device.tech, "gateway": device.gateway},
                    action=("Check the radio link: antenna, distance to the gateway and "
                            "interference from machinery nearby."),
                )
            )  # fmt: skip
        elif device.intermittent and len(recent) < max(1, config.intermittent_gaps // 2):
            device.intermittent = False
            out.append(
                self._signal(
                    "intermittent_connectivity", device_id, device, False, now,
                    summary=f"{device_id}: connection is steady again",
                )
            )  # fmt: skip

    def _gap_test(self, device: _Device, gaps: int) -> tuple[float, dict[str, Any]]:
        """The one-sided Poisson test of ``gaps`` gaps in the window: under independent
        loss at rate p, a report starts a run of k or more lost (a gap) with probability
        (1 - p) p**k, so the window's expected reports n expect n (1 - p) p**k gaps.
        Returns the p-value and the test as evidence."""
        config = self.config
        row = device.order
        p = self._loss_rate(row)
        k = self._gap_lost(p)
        reports = config.intermittent_window_s / self._interval[row]
        expected = reports * (1.0 - p) * p**k
        p_value = float(stats.poisson.sf(gaps - 1, expected)) if expected > 0 else 0.0
        return p_value, {
            "test": "one-sided Poisson: gaps in the window vs independent loss",
            "loss_rate": round(p, 5), "gap_min_lost": k, "expected_reports": round(reports, 1),
            "expected_gaps": float(f"{expected:.3g}"), "observed_gaps": gaps,
            "p_value": float(f"{p_value:.3g}"), "alpha": config.intermittent_alpha,
        }  # fmt: skip

    def _track_signal(
        self, reading: Reading, device: _Device, metric: str, loss_level: float, out: list[Signal]
    ) -> None:
        """Close the signal point of ``device`` that ``reading`` completed and judge the trend.

        Readings of the first signal metric present are averaged into one point per
        ``signal_spacing_s``, so the trend spans hours whatever the reporting rate, and noise
        averages out.
        """
        row = device.order
        width = 2 * self.config.signal_window
        t, mean = self._acc_t[row], self._acc_sum[row] / device.acc_n
        self._acc_sum[row], device.acc_n = 0.0, 0
        at = self._signal_row[row]
        if at < 0:  # still filling its own window
            column = device.signal
            if column is None:
                column = device.signal = array("d")
            column.append(t)
            column.append(mean)
            start, used = 0, len(column)
            if used >= width:  # full: into a row of the shared column, exactly sized
                at = self._signal_row[row] = len(self._points) // width
                self._points.extend(column[used - width :])
                device.signal = None
                column, start, used = self._points, at * width, width
        else:  # full: the oldest point leaves
            column = self._points
            start = at * width
            end = start + width
            column[start : end - 2] = column[start + 2 : end]
            column[end - 2] = t
            column[end - 1] = mean
            used = width
        if used < self.config.signal_window:
            return
        if not device.signal_alert and (
            column[start + 1] - column[start + used - 1] < self.config.signal_min_drop_db / 2
        ):
            return  # not falling: no trend to fit
        flat = column[start : start + used]
        window = list(zip(flat[0::2], flat[1::2], strict=True))
        slope, level, t_stat = _trend(window)
        config = self.config
        now = reading.received_at
        degrading = False
        eta = math.inf
        if slope < 0 and level > loss_level:
            eta = (level - loss_level) / -slope
            drop = -slope * (window[-1][0] - window[0][0])
            degrading = (
                eta <= config.signal_horizon_s
                and drop >= config.signal_min_drop_db
                and t_stat <= -config.signal_min_t
            )
        if degrading and not device.signal_alert:
            device.signal_alert = True
            out.append(
                self._signal(
                    "signal_degrading", reading.device_id, device, True, now,
                    summary=(f"{reading.device_id}: {metric} falling "
                             f"{-slope * 3600:.1f}/h, link lost in about {eta / 3600:.1f} h"),
                    evidence={"metric": metric, "level": round(level, 1),
                              "slope_per_h": round(slope * 3600, 2),
                              "loss_level": loss_level,
                              "predicted_loss_at": iso_utc(now + eta),
                              "gateway": device.gateway, "technology": device.tech},
                    action=("Check what changed between the device and its gateway "
                            "(new obstruction, moved device, failing antenna)."),
                )
            )  # fmt: skip
        elif device.signal_alert and (slope >= 0 or eta > 2 * config.signal_horizon_s):
            device.signal_alert = False
            out.append(
                self._signal(
                    "signal_degrading", reading.device_id, device, False, now,
                    summary=f"{reading.device_id}: {metric} is stable again",
                )
            )  # fmt: skip

    # -- silence ----------------------------------------------------------------------

    def device_view(self, device_id: str) -> dict[str, Any] | None:
        """How the device's link behaves: rhythm, last contact, gaps, signal (plain data)."""
        device = self._devices.get(device_id)
        if device is None:
            return None
        signal = self._signal_points(device)
        return {
            "last_heard": iso_utc(self._last_rx[device.order]),
            "interval_s": round(self._interval[device.order], 3),
            "loss_rate": round(self._loss_rate(device.order), 5),
            "offline_after_s": round(self._offline_limit(device.order), 1),
            "offline": device.offline,
            "intermittent": device.intermittent,
            "recent_gaps": len(device.gaps),
            "gateway": device.gateway,
            "technology": device.tech,
            "gateway_switches": device.switches,
            "signal_dbm": round(signal[-1], 2) if len(signal) >= 2 else None,
        }

    def tick(self, now: float) -> list[Signal]:
        """Judge silence at ``now`` (receive-time clock): gateways first, then devices.

        Only what may have changed since the last tick is visited: the devices whose
        deadline has passed (their gateway tallies are brought up to date), the gateways
        whose tally changed or that are down, and the devices silent long enough to be
        offline. A tick earlier than the last one recounts every device.
        """
        if now < self.now:
            now = self.now  # never judge silence before the newest arrival
        if self._stale or not now >= self._clock or not math.isfinite(now):
            self._rebuild(now)
        else:
            self._advance(now)
        self._clock = now
        signals: list[Signal] = []
        self._judge_gateways(now, signals)
        self._judge_watched(now, signals)
        return signals

    def _set_standing(self, device: _Device, standing: int) -> None:
        row = device.order
        old = self._standing[row]
        if old == standing:
            return
        self._standing[row] = standing
        gateway = device.gateway
        if gateway is None:
            return
        tally = self._tally.get(gateway)
        if tally is None:
            tally = self._tally[gateway] = [0, 0]
        tally[0] += (standing != _UNCOUNTED) - (old != _UNCOUNTED)
        tally[1] += (standing == _SILENT) - (old == _SILENT)
        self._dirty.add(gateway)

    def _reassess(self, device_id: str, device: _Device, now: float) -> None:
        """Bring the device's standing up to ``now``; watch it once it may be offline."""
        config = self.config
        silence = now - self._last_rx[device.order]
        interval = self._interval[device.order]
        if silence > config.active_window_s:
            self._set_standing(device, _UNCOUNTED)
            offline = device.alerted
        else:
            silent = silence > config.gateway_factor * interval
            self._set_standing(device, _SILENT if silent else _ACTIVE)
            offline = silence > self._offline_limit(device.order)
        if offline:
            self._watch.add(device_id)

    def _next_due(self, device: _Device, now: float) -> float:
        """The first receive time after ``now`` at which the device's standing or offline
        state can change (a hair early, so rounding never makes it late)."""
        config = self.config
        silence = now - self._last_rx[device.order]
        interval = self._interval[device.order]
        nearest = math.inf
        for limit in (
            config.gateway_factor * interval,
            self._offline_limit(device.order),
            config.active_window_s,
        ):
            if silence <= limit < nearest:
                nearest = limit
        if nearest == math.inf:
            return math.inf
        last_rx = self._last_rx[device.order]
        due = last_rx + nearest
        return due - 1e-12 * (abs(last_rx) + abs(nearest)) - 1e-9

    def _advance(self, now: float) -> None:
        """Visit the devices whose deadline is at or before ``now``."""
        devices = self._devices
        due_at = self._due
        push = self._wheel.push
        current = int(now // _SLOT_S)
        later: dict[str, int] = {}  # devices still due in a slot that has come up
        for slot, device_ids in self._wheel.pop_through(current):
            for device_id in device_ids:
                device = devices[device_id]
                due = due_at[device.order]
                if due == math.inf or int(due // _SLOT_S) != slot:
                    continue  # superseded by a later deadline
                if due > now:
                    later[device_id] = slot
                    continue
                self._reassess(device_id, device, now)
                due = due_at[device.order] = self._next_due(device, now)
                if due < math.inf:
                    next_slot = int(due // _SLOT_S)
                    if next_slot <= current:
                        later[device_id] = next_slot
                    else:
                        push(device_id, next_slot)
        for device_id, slot in later.items():
            push(device_id, slot)

    def _rebuild(self, now: float) -> None:
        """Recount every device's standing at ``now`` and put it back on the wheel."""
        self._reset_deadlines()
        self._stale = False
        standing, due_at = self._standing, self._due
        for device_id, device in self._devices.items():
            standing[device.order] = _UNCOUNTED
            due_at[device.order] = math.inf
            if self._count[device.order] < 2:
                continue
            self._reassess(device_id, device, now)
            due = due_at[device.order] = self._next_due(device, now)
            if math.isfinite(due):
                self._wheel.push(device_id, int(due // _SLOT_S))
        self._dirty.update(self._tally)
        if not math.isfinite(now):
            self._stale = True  # no deadline can follow an infinite clock

    def _judge_watched(self, now: float, signals: list[Signal]) -> None:
        """Raise offline alerts for the watched devices, in the order they were first heard."""
        config = self.config
        active_window = config.active_window_s
        persistent = config.persistent_s
        down = self._gateway_down
        recovered_at = self._gateway_recovered
        devices = self._devices
        watch = self._watch
        order = sorted(watch, key=lambda d: devices[d].order) if len(watch) > 1 else list(watch)
        for device_id in order:
            device = devices[device_id]
            silence = now - self._last_rx[device.order]
            if silence > active_window:
                offline = device.alerted
            else:
                offline = silence > self._offline_limit(device.order)
            if not offline or self._count[device.order] < 2:
                watch.discard(device_id)
                continue
            device.offline = True
            if device.gateway in down:
                continue  # explained by the gateway outage
            recovered = recovered_at.get(device.gateway)  # type: ignore[arg-type]
            limit = self._offline_limit(device.order) + self._interval[device.order]
            if recovered is not None and now - recovered < limit:
                continue  # its gateway just came back: give the device time to report
            if device.intermittent and silence < persistent:
                continue  # explained by the open intermittent-connectivity alert
            severity = _CRITICAL if silence >= persistent else _WARNING
            if device.alerted and severity <= device.severity:
                if device.severity >= _CRITICAL:
                    watch.discard(device_id)  # at its worst: nothing more until it is heard
                continue
            device.alerted = True
            device.severity = severity
            signals.append(self._offline_signal(device_id, device, now, silence, severity))
            if severity >= _CRITICAL:
                watch.discard(device_id)

    def _offline_signal(
        self, device_id: str, device: _Device, now: float, silence: float, severity: Severity
    ) -> Signal:
        """The offline alert: *persistent* once silent ``persistent_s`` (critical), before
        that *intermittent* when the link had gaps in the window, else *ongoing*; the same
        alert is escalated (not a new one) when it becomes persistent."""
        config = self.config
        row = device.order
        interval = self._interval[row]
        recent = [g for g in device.gaps if g[0] >= now - config.intermittent_window_s]
        p = self._loss_rate(row)
        missed = int(silence / interval) if interval > 0 else 0
        expected = f"expected every {interval / 60:.1f} min"
        if silence >= config.persistent_s:
            shape = "persistent"
            summary = (f"{device_id} silent for {silence / 60:.0f} min ({expected}), "
                       f"persistent: over {config.persistent_s / 60:.0f} min")  # fmt: skip
            action = (
                "Visit the device: check power, the antenna and whether it was moved or removed."
            )
        else:
            shape = "intermittent" if len(recent) >= 2 else "ongoing"
            summary = (f"{device_id} silent for {silence / 60:.0f} min ({expected}): "
                       f"{missed} reports missed in a row, improbable at its "
                       f"{100 * p:.2g} % loss")  # fmt: skip
            action = (
                "The link keeps dropping: check the radio path and the gateway's coverage."
                if shape == "intermittent"
                else "If it stays silent, check its power and antenna and whether it was "
                "moved or removed."
            )
        return self._signal(
            "device_offline", device_id, device, True, now, severity=severity,
            summary=summary,
            evidence={"silent_s": round(silence, 1), "last_seen": iso_utc(self._last_rx[row]),
                      "expected_interval_s": round(interval, 1), "class": shape,
                      "missed_reports": missed, "loss_rate": round(p, 5),
                      "offline_after_s": round(self._offline_limit(row), 1),
                      "persistent_after_s": config.persistent_s,
                      "gaps_recent": len(recent), "gateway": device.gateway,
                      "technology": device.tech},
            action=action,
        )  # fmt: skip

    def _judge_gateways(self, now: float, out: list[Signal]) -> None:
        """Judge the gateways whose tally changed since the last tick, and those down.

        A gateway with no active device is not judged; gateway signals of one tick come in
        the order of each gateway's first-heard active device.
        """
        config = self.config
        down = self._gateway_down
        standing = self._standing
        last_rx = self._last_rx
        judged = self._dirty
        judged.update(down)
        self._dirty = set()
        raised: list[tuple[int, Signal]] = []
        for gateway in judged:
            tally = self._tally.get(gateway)
            if tally is None or tally[0] == 0:
                continue
            active, silent = tally
            since = down.get(gateway)
            if since is None:
                if (
                    active >= config.gateway_min_devices
                    and silent / active >= config.gateway_offline_fraction
                ):
                    self._gateway_down[gateway] = now
                    first_silent = min(
                        (
                            last_rx[d.order]
                            for d in self._members(gateway)
                            if standing[d.order] == _SILENT
                        ),
                        default=math.inf,
                    )
                    site = self._gateway_site(gateway)
                    raised.append((self._first_member(gateway),
                        Signal(
                            kind="gateway_down", subject=gateway, firing=True, at=now,
                            severity=Severity.CRITICAL, subject_type=SubjectType.GATEWAY,
                            summary=(f"gateway {gateway} down: {int(silent)} of its "
                                     f"{int(active)} devices silent since {iso_utc(first_silent)}"),
                            evidence={"devices_silent": int(silent), "devices": int(active),
                                      "silent_since": iso_utc(first_silent)},
                            action=("Check the gateway's power and backhaul; the devices behind "
                                    "it are held back from alerting one by one."),
                            site=site,
                        )
                    ))  # fmt: skip
                continue
            heard = sum(
                1
                for d in self._members(gateway)
                if standing[d.order] != _UNCOUNTED and last_rx[d.order] > since
            )
            if heard / active >= config.gateway_resolve_fraction:
                del self._gateway_down[gateway]
                self._gateway_recovered[gateway] = now
                self._dirty.add(gateway)  # judged again next tick, as a gateway that is up
                raised.append((self._first_member(gateway),
                    Signal(
                        kind="gateway_down", subject=gateway, firing=False, at=now,
                        severity=Severity.CRITICAL, subject_type=SubjectType.GATEWAY,
                        summary=f"gateway {gateway} is carrying traffic again",
                        site=self._gateway_site(gateway),
                    )
                ))  # fmt: skip
        raised.sort(key=lambda pair: pair[0])
        out.extend(signal for _, signal in raised)

    def _members(self, gateway: str) -> list[_Device]:
        devices = self._devices
        return [devices[device_id] for device_id in self._gateways.get(gateway, ())]

    def _first_member(self, gateway: str) -> int:
        """The first-heard position among the gateway's active devices."""
        return min(
            (d.order for d in self._members(gateway) if self._standing[d.order] != _UNCOUNTED),
            default=len(self._devices),
        )

    def _gateway_site(self, gateway: str) -> str | None:
        for device_id in self._gateways.get(gateway, ()):
            site = self._devices[device_id].site
            if site:
                return site
        return None

    def _signal(
        self,
        kind: str,
        device_id: str,
        device: _Device,
        firing: bool,
        at: float,
        *,
        severity: Severity = Severity.WARNING,
        summary: str = "",
        evidence: dict[str, Any] | None = None,
        action: str = "",
    ) -> Signal:
        return Signal(
            kind=kind, subject=device_id, firing=firing, at=at, severity=severity,
            summary=summary, evidence=evidence or {}, action=action,
            site=device.site, zone=device.zone,
        )  # fmt: skip

    # -- queries and patterns -----------------------------------------------------------

    @property
    def gateways_down(self) -> dict[str, float]:
        """Gateways currently down, with the time the outage was recognised."""
        return dict(self._gateway_down)

    def expected_interval(self, device_id: str) -> float | None:
        device = self._devices.get(device_id)
        if device is None or not self._count[device.order]:
            return None
        return self._interval[device.order]

    def report(self, now: float) -> dict[str, Any]:
        """Outage patterns over ``pattern_window_s``: by hour of day, zone and technology."""
        return outage_report(self._devices, self._gateway_down, self.config, now)

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "now": self.now,
            "gateways_down": self._gateway_down,
            "gateways_recovered": self._gateway_recovered,
            "devices": {
                device_id: [
                    self._last_rx[d.order], self._interval[d.order], self._count[d.order],
                    d.offline, d.alerted, int(d.severity), [list(g) for g in d.gaps], d.gateway,
                    d.site, d.zone, d.tech, d.switches, d.intermittent,
                    self._signal_points(d).tolist(), d.signal_alert, self._acc_sum[d.order],
                    d.acc_n, self._acc_t[d.order],
                    _plain(self._newest_ts[d.order]), _plain(self._seq[d.order]),
                    self._lost[d.order], self._expected[d.order], self._off_k[d.order],
                ]
                for device_id, d in self._devices.items()
            },
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint of this format or the one before (format 1 knew no loss
        rate: its devices start from ``loss_prior`` and the next reading is in order)."""
        check_state_version("connectivity", state, self.STATE_VERSION)
        version = state.get("version")
        if version not in (1, self.STATE_VERSION):
            raise ValueError(f"connectivity state format {version} is not {self.STATE_VERSION}")
        self._devices = {}
        self._new_columns()
        self._gateways = {}
        self._reset_deadlines()
        self.now = float(state.get("now", 0.0))
        self._gateway_down = {str(k): float(v) for k, v in state.get("gateways_down", {}).items()}
        self._gateway_recovered = {
            str(k): float(v) for k, v in state.get("gateways_recovered", {}).items()
        }
        for device_id, row in state.get("devices", {}).items():
            (last_rx, interval, intervals, offline, alerted, severity, gaps, gateway, site,
             zone, tech, switches, intermittent, signal, signal_alert, acc_sum, acc_n,
             acc_t) = row[:18]  # fmt: skip
            newest_ts, seq, lost, expected, off_k = (
                row[18:23] if len(row) >= 23 else (None, None, 0, 0, None)
            )
            device = self._add_device(device_id, float(last_rx))
            self._newest_ts[device.order] = -math.inf if newest_ts is None else float(newest_ts)
            self._seq[device.order] = math.nan if seq is None else float(seq)
            self._lost[device.order] = float(lost)
            self._expected[device.order] = float(expected)
            self._off_k[device.order] = (
                self._offline_lost(self._loss_rate(device.order))
                if off_k is None
                else min(max(1, int(off_k)), _MAX_OFFLINE_LOST - 1)
            )
            self._interval[device.order] = float(interval)
            self._count[device.order] = int(intervals)
            device.offline = bool(offline)
            device.alerted = bool(alerted)
            device.severity = Severity(int(severity))
            device.gaps = (
                deque(((float(a), float(b)) for a, b in gaps), maxlen=self.config.history)
                if gaps
                else ()
            )
            device.gateway, device.site, device.zone, device.tech = gateway, site, zone, tech
            device.switches = int(switches)
            device.intermittent = bool(intermittent)
            if signal:
                self._load_signal(device, [float(x) for x in signal])
            device.signal_alert = bool(signal_alert)
            self._acc_sum[device.order] = float(acc_sum)
            device.acc_n, self._acc_t[device.order] = int(acc_n), float(acc_t)
            if gateway is not None:
                members = self._gateways.setdefault(gateway, [])
                if device_id not in members:
                    members.append(device_id)

    def _load_signal(self, device: _Device, points: list[float]) -> None:
        """Give ``device`` a signal row holding ``points`` (the newest that fit)."""
        width = 2 * self.config.signal_window
        points = points[len(points) - width :] if len(points) > width else points
        if len(points) < width:
            device.signal = array("d", points)
        else:
            self._signal_row[device.order] = len(self._points) // width
            self._points.extend(array("d", points))


def _plain(value: float) -> float | None:
    """A float for a checkpoint: ``None`` for the not-yet-known (infinite or NaN)."""
    return value if math.isfinite(value) else None
