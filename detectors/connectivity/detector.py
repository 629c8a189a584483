"""The online connectivity detector: arrivals and the rhythm learned from them, gaps,
intermittent links, fading signals, silence judged on a deadline wheel (devices offline,
gateways down) and checkpoints as plain data."""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from detectors.connectivity.config import ConnectivityConfig
from detectors.connectivity.device import _Device
from detectors.connectivity.patterns import outage_report
from detectors.connectivity.trend import _trend
from detectors.wheel import SlotWheel
from service.records import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

# what a status message says when the device (or its broker's last will) announces it is gone
OFFLINE_STATES = frozenset({"offline", "disconnected", "lost", "dead"})

TECH_KEYS = ("radio", "technology", "network", "bearer")
SIGNAL_METRICS = (("rssi_dbm", -115.0), ("snr_db", -10.0), ("link_quality_pct", 10.0))

# how wide one slot of the deadline wheel is (seconds of receive time)
_SLOT_S = 30.0

# a device's standing in its gateway's tally
_UNCOUNTED, _ACTIVE, _SILENT = 0, 1, 2

_STATUS = MessageKind.STATUS
_WARNING = Severity.WARNING
_CRITICAL = Severity.CRITICAL


class ConnectivityDetector:
    """Offline devices, gateway outages, intermittent links and fading signals."""

    name = "connectivity"
    STATE_VERSION = 1

    def __init__(self, config: ConnectivityConfig | None = None) -> None:
        self.config = config or ConnectivityConfig()
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
            if device is None:
                device = self._add_device(device_id, received)
                self._follow_meta(device_id, device, meta)
            else:
                if meta is not device.meta:
                    self._follow_meta(device_id, device, meta)
                silence = received - last_rx[device.order]
                if silence > burst:
                    self._arrival(device_id, device, received, silence, signals)
            # the first signal metric present: averaged into one point per signal_spacing_s
            # (see _track_signal)
            metrics = reading.metrics
            for metric, loss_level in signal_metrics:
                value = metrics.get(metric)
                if value is None:
                    continue
                row = device.order
                if device.acc_n == 0:
                    acc_ts[row] = received
                acc_sums[row] += value
                device.acc_n += 1
                if received - acc_ts[row] >= spacing:
                    self._track_signal(reading, device, metric, loss_level, signals)
                break
        return signals

    def _arrival(
        self, device_id: str, device: _Device, received: float, silence: float, out: list[Signal]
    ) -> None:
        config = self.config
        row = device.order
        intervals = self._interval
        interval = intervals[row]
        count = self._count[row]
        if count and silence > config.gap_factor * interval:
            # the gap starts when the first report went missing
            if not device.gaps:
                device.gaps = deque(maxlen=config.history)
            device.gaps.append((self._last_rx[row] + interval, silence))
        # learn the interval; long silences are outages, not the device's rhythm
        if count == 0:
            learned = silence
        else:
            clipped = 0.5 * interval
            if silence > clipped:
                clipped = silence
            if 2.0 * interval < clipped:
                clipped = 2.0 * interval
            weight = 0.5 if count < 4 else 0.1
            learned = interval + weight * (clipped - interval)
        intervals[row] = learned
        count = self._count[row] = count + 1
        self._last_rx[row] = received
        if count >= 2 and not self._stale:
            gap_limit = config.gateway_factor * learned
            offline_limit = config.offline_factor * learned
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
        if device.gaps or device.intermittent or config.intermittent_gaps <= 0:
            self._judge_intermittent(device_id, device, received, out)

    def _judge_intermittent(
        self, device_id: str, device: _Device, now: float, out: list[Signal]
    ) -> None:
        config = self.config
        recent = [gap for gap in device.gaps if gap[0] >= now - config.intermittent_window_s]
        if not device.intermittent and len(recent) >= config.intermittent_gaps:
            device.intermittent = True
            mean_gap = sum(d for _, d in recent) / len(recent)
            out.append(
                self._signal(
                    "intermittent_connectivity", device_id, device, True, now,
                    summary=(f"{device_id}: {len(recent)} connection gaps in the last "
                             f"{config.intermittent_window_s / 3600:.0f} h "
                             f"(mean {mean_gap / 60:.1f} min)"),
                    evidence={"gaps": len(recent), "mean_gap_s": round(mean_gap, 1),
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
            offline = silence > config.offline_factor * interval and silence > config.min_offline_s
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
            max(config.offline_factor * interval, config.min_offline_s),
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
        offline_factor = config.offline_factor
        min_offline = config.min_offline_s
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
                offline = (
                    silence > offline_factor * self._interval[device.order]
                    and silence > min_offline
                )
            if not offline or self._count[device.order] < 2:
                watch.discard(device_id)
                continue
            device.offline = True
            if device.gateway in down:
                continue  # explained by the gateway outage
            recovered = recovered_at.get(device.gateway)  # type: ignore[arg-type]
            limit = offline_factor * self._interval[device.order]
            if recovered is not None and now - recovered < limit + self._interval[device.order]:
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
        config = self.config
        recent = [g for g in device.gaps if g[0] >= now - config.intermittent_window_s]
        shape = "persistent" if silence >= config.persistent_s or len(recent) < 2 else (
            "intermittent"
        )  # fmt: skip
        action = (
            "Visit the device: check power, the antenna and whether it was moved or removed."
            if shape == "persistent"
            else "The link keeps dropping: check the radio path and the gateway's coverage."
        )
        return self._signal(
            "device_offline", device_id, device, True, now, severity=severity,
            summary=(f"{device_id} silent for {silence / 60:.0f} min "
                     f"(expected every {self._interval[device.order] / 60:.1f} min), {shape}"),
            evidence={"silent_s": round(silence, 1), "last_seen": iso_utc(self._last_rx[device.order]),
                      "expected_interval_s": round(self._interval[device.order], 1), "class": shape,
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
                ]
                for device_id, d in self._devices.items()
            },
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version != self.STATE_VERSION:
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
             acc_t) = row  # fmt: skip
            device = self._add_device(device_id, float(last_rx))
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
