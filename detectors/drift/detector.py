"""The drift detector itself: :class:`DriftDetector` takes readings into its peer groups'
buckets, judges each sensor as a bucket closes, edge-triggers the signals, and saves and
loads its state as plain data."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any

from detectors.drift.change_tests import _Judge
from detectors.drift.config import _DAY, DriftConfig
from detectors.drift.containers import Bucket
from detectors.drift.peers import (
    _Device,
    _Group,
    bucket_voters,
    consensus_pools,
    peer_consensus,
    peer_resolution,
)
from detectors.drift.schedule import recalibration_schedule
from detectors.drift.sensor import (
    _ALONE_STREAK,
    _LAST_R,
    _LAST_REF,
    _LAST_VALUE,
    _LEVEL,
    _NONE,
    _NONE_BYTES,
    _PEER_STREAK,
    _PROF,
    _REF_SMOOTH,
    _RES,
    _RING,
    _SCALE,
    _SETTLE,
    _STUCK_HI,
    _STUCK_LO,
    _STUCK_RUN,
    _STUCK_VALUE,
    _TRACK,
    _Calibration,
    _pack,
    _Sensor,
)
from detectors.drift.signals import (
    _PRIORITY,
    _SEVERITY,
    DRIFT_KIND,
    FAULT_KIND,
    cleared_signal,
    firing_signal,
    sensor_evidence,
)
from service.records import MessageKind, Reading, Signal, iso_utc

_DATA_KINDS = (MessageKind.TELEMETRY, MessageKind.BATCH)
_UNSEEN = array("d", [math.nan])  # repeated to make room for a device's environment EWMAs
_CALIBRATION = MessageKind.CALIBRATION
# how fast a sensor's smoothed reference (what a stuck value is judged against) follows the
# reference: about a 4-bucket memory, which cuts a jittering consensus to a third
_STUCK_SMOOTHING = 0.25
_SMOOTHED_NOISE = math.sqrt(_STUCK_SMOOTHING / (2.0 - _STUCK_SMOOTHING))  # its noise / the raw's


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
    # previous drift and its noise and step windows; 3: and its resolution (``res``), its
    # typical magnitude (``mag``), the likelihood ratio of its last step-or-ramp decision
    # (``shape_lr``), the transient it is settling from (``settle``) and its smoothed reference
    # (``ref_smooth``). Versions 1 and 2 still load (a sensor without a resolution learns it
    # again from its next values; one without a magnitude judges its tolerance at each
    # bucket's until its next warm-up)
    STATE_VERSION = 3

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._watched = tuple(self.config.metrics)
        self._references = frozenset(self.config.reference_devices)
        config = self.config
        # each metric's tolerance, and the change tests (see detectors.drift.change_tests)
        self._judge = _Judge(config, self._watched)
        # how fast a stuck run's range of the reference forgets (over ~4 ``stuck_buckets``)
        self._stuck_leak = 0.25 / config.stuck_buckets
        self._group_by = tuple(config.group_by)
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
        low, high = config.ranges.get(group.metric, (-math.inf, math.inf))
        t_end = (index + 1) * config.bucket_s
        members, voters = bucket_voters(group, bucket, t_end, config.carry_s)
        pools = consensus_pools(
            voters, low, high, self._references, config.reference_weight, len(members)
        )
        min_peers = config.min_peers
        for sensor, device_id, value in members:
            consensus, peers = peer_consensus(pools, device_id, min_peers)
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
        judge = self._judge
        _, absolute, floor, _ = judge.params[s.metric]
        num = s.num  # (see _SENSOR_NUMBERS; reset_detection and add_track keep the array)
        previous = num[_LAST_VALUE]
        num[_LAST_VALUE] = value
        s.last_ts = t
        previous_index = s.bucket_index
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
        elif mode == "alone" and consensus is None and profile_ref is not None:
            reference = profile_ref
        else:
            reference = None
        s.last_peers = peers
        if reference is None:
            if len(num) > _LAST_REF:
                num[_LAST_REF] = _NONE
            judge.judge_faults(s, 0.0, stuck_now=False)
            return
        if len(num) < _TRACK:  # its first reference
            s.add_reference()
            num = s.num
        # its resolution: the smallest nonzero step between two of its values
        step = value - previous if value > previous else previous - value
        if step > 1e-9 * (value if value > 1.0 else (-value if value < -1.0 else 1.0)):
            res = num[_RES]
            if step < res or (res != res and _pack(res) == _NONE_BYTES):
                num[_RES] = step
        # (as judge.den)
        den = 1.0 if absolute else (reference if reference > floor else max(-reference, floor))
        effective = judge.effective(s, den)
        raw = value - reference
        r = raw / den
        # a transient (a defrost, a door, machines starting): the reference moved more than
        # ``transient_gate`` tolerances since the sensor's previous bucket, so its residual
        # says when within the bucket it reported and how fast it follows where it hangs, not
        # how well it reads; so for the next ``transient_buckets`` too
        before = num[_LAST_REF]
        gate = config.transient_gate
        if (
            gate > 0
            and mode == "peer"
            and before == before
            and (index - previous_index) * config.bucket_s <= config.carry_s
            and abs(reference - before) > gate * effective * den
        ):
            num[_SETTLE] = index + config.transient_buckets
            transient = True
        else:
            transient = index <= num[_SETTLE]
        num[_LAST_REF] = reference
        num[_LAST_R] = r
        # stuck: the same value while the reference moved; the reference smoothed over a few
        # buckets, so that a consensus jittering around a steady air does not count as moving
        smooth = num[_REF_SMOOTH]
        if smooth != smooth or (index - previous_index) * config.bucket_s > config.carry_s:
            smooth = reference
        else:
            smooth += _STUCK_SMOOTHING * (reference - smooth)
        num[_REF_SMOOTH] = smooth
        stuck_value = num[_STUCK_VALUE]
        if (stuck_value == stuck_value or _pack(stuck_value) != _NONE_BYTES) and abs(
            value - stuck_value
        ) <= 1e-9 * max(1.0, abs(value)):
            stuck_run = num[_STUCK_RUN] + 1.0
            # how far it moved lately (the range forgets over about 4 ``stuck_buckets``): a
            # steady room read for days must not add up its slow wander into a movement
            leak = self._stuck_leak
            lo = num[_STUCK_LO]
            lo = smooth if smooth < lo else lo + leak * (smooth - lo)
            hi = num[_STUCK_HI]
            hi = smooth if smooth > hi else hi + leak * (smooth - hi)
            num[_STUCK_LO] = lo
            num[_STUCK_HI] = hi
        else:
            num[_STUCK_VALUE] = value
            stuck_run = 1.0
            num[_STUCK_LO] = num[_STUCK_HI] = smooth
        num[_STUCK_RUN] = stuck_run
        stuck_now = False
        if stuck_run >= config.stuck_buckets * (1 if mode == "peer" else 3):
            # stuck only if the reference moved past what noise and quantisation explain: a
            # steady room read to one resolution step repeats its value too
            moved = (num[_STUCK_HI] - num[_STUCK_LO]) / den
            scale = num[_SCALE] if len(num) >= _RING else 0.0
            res = num[_RES]
            if res != res:  # it never changed: judged by its peers' resolution
                res = peer_resolution(s)
            grid = 0.0 if res != res else config.stuck_resolutions * res / den
            noise = 4.0 * _SMOOTHED_NOISE * scale  # 4 sigma of the smoothed reference
            stuck_now = moved >= max(0.5 * effective, noise, grid) and moved > grid
        if transient:
            judge.judge_faults(s, effective, stuck_now)
            return
        cal = s.cal
        if cal is not None and cal.verifying:
            if mode == "peer":
                judge.verify(cal, t, (raw - cal.verify_ref) / den, effective)
            else:
                cal.history.append([t, "no_peers_to_verify"])
                cal.verifying = False
        judge.track(s, index, t, raw, den, effective, stuck_now)

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
        judge = self._judge
        for kind in (DRIFT_KIND, FAULT_KIND):
            chosen = worst.get(kind)
            before = published.get(kind) if published is not None else None
            if chosen is None:
                if before is not None and published is not None:
                    del published[kind]
                    out.append(cleared_signal(device_id, device, kind, before, t, reason))
                continue
            s = chosen[2]
            shape = s.shape or ""
            # out of tolerance (ageing only), with a margin once reported, so it does not flap
            margin = 0.8 if before is not None and before[3] else 1.0
            out_of_tolerance = shape == "ageing" and abs(s.ewma) >= margin * judge.threshold(
                s, judge.effective(s)
            )
            now = [shape, int(_SEVERITY[shape]), s.metric, out_of_tolerance]
            if now != before:
                if published is None:
                    published = device.published = {}
                published[kind] = now
                out.append(firing_signal(judge, device_id, device, kind, s, t, flagged[kind]))

    # -- reports -------------------------------------------------------------------------------

    def sensor_status(self, device_id: str, metric: str) -> dict[str, Any] | None:
        """What is known about one sensor (evidence fields plus calibration history)."""
        device = self._devices.get(device_id)
        s = device.sensor(metric) if device is not None else None
        if s is None:
            return None
        judge = self._judge
        if s.baseline is not None:
            judge.refresh_rate(s)
            judge.predict(s, s.last_ts, judge.threshold(s, judge.effective(s)))
        status = sensor_evidence(judge, s)
        status["device"] = device_id
        status["warmed_up"] = s.baseline is not None
        status["calibration_history"] = [] if s.cal is None else [list(h) for h in s.cal.history]
        status["verifying"] = s.cal is not None and s.cal.verifying
        return status

    def report(self, now: float) -> dict[str, Any]:
        """The detector's published report: the recalibration schedule."""
        return self.recalibration_schedule(now)

    def recalibration_schedule(self, now: float) -> dict[str, Any]:
        """Which sensors need calibration when, by zone, and how drift relates to environment
        (see :func:`~detectors.drift.schedule.recalibration_schedule`)."""
        return recalibration_schedule(
            self._judge, self._sensors, self._devices, self._env_column, now
        )

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
                    "env": d.environment(self._env_column, env_metrics),
                }
                for device_id, d in self._devices.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version not in (1, 2, self.STATE_VERSION):
            raise ValueError(f"drift state format {version} is not {self.STATE_VERSION}, 2 or 1")
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
