"""Peer groups: the readings of a group's sensors aligned in time buckets (:class:`_Group`,
with :class:`~detectors.drift.containers.Bucket`), the devices they come from
(:class:`_Device`), and the consensus each sensor is judged against when a bucket closes."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from detectors.drift.containers import Bucket
from detectors.drift.robust_stats import _median_without, _weighted_median
from detectors.drift.sensor import _BASELINE, _LAST_VALUE, _NONE_BYTES, _RES, _pack, _Sensor


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
        # between devices with equal values; see :meth:`DriftDetector.process`)
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

    def environment(self, column: array[float], metrics: Sequence[str]) -> dict[str, float]:
        """Its environment EWMAs by metric (those seen), from the detector's ``column``."""
        at = self.env
        if at < 0:
            return {}
        env = column[at : at + len(metrics)]
        return {m: v for m, v in zip(metrics, env, strict=True) if v == v}


# -- consensus ---------------------------------------------------------------------------------

Entry = tuple[_Sensor, str, float]
"""A sensor's value in a bucket: the sensor, its device and the value."""
Pool = tuple[dict[str, int], list[float], list[tuple[float, float]] | None]
"""Candidates for a consensus: each device's position, the values sorted, and the
``(value, weight)`` pairs when a trusted reference device weighs more (else ``None``)."""


def bucket_voters(
    group: _Group, bucket: Bucket, t_end: float, carry_s: float
) -> tuple[list[Entry], list[Entry]]:
    """The entries of a closing ``bucket`` (judged in it) and those that vote on its consensus:
    they, and the peers that report less often than a bucket, with their latest value while
    it is recent (they are judged only in buckets they report in)."""
    members = [(s, s.device, v) for s, v in zip(bucket.sensors, bucket.data[1::2], strict=True)]
    carried = []
    if len(members) < len(group.members):
        horizon = t_end - carry_s
        present = set(bucket.sensors)
        for peer in group.members:
            if peer in present:
                continue
            if peer.last_ts >= horizon:
                last = peer.num[_LAST_VALUE]
                if last == last or _pack(last) != _NONE_BYTES:
                    carried.append((peer, peer.device, last))
    return members, members + carried if carried else members


def corrected(sensor: _Sensor, value: float) -> float:
    """``value`` of ``sensor`` less its learned offset to its peers (its baseline, in its
    unit), where it has one: what it says the shared air reads."""
    num = sensor.num
    if len(num) > _BASELINE:
        baseline = num[_BASELINE]
        if baseline == baseline:  # (unset: the NaN ``_NONE``)
            return value - baseline
    return value


def consensus_pools(
    voters: Sequence[Entry],
    low: float,
    high: float,
    references: frozenset[str],
    reference_weight: float,
    fresh: int | None = None,
) -> list[Pool]:
    """The values of ``voters`` within the physical range ``[low, high]``, each less its
    sensor's learned offset (see :func:`corrected`), as the pools a consensus is taken from:
    those of peers not currently flagged that reported in the bucket (the first ``fresh`` of
    ``voters``; the others carry an older value) and whose offset is known, then those of all
    peers not flagged, then (if that left any out) all of them.

    Corrected values all estimate the same air, so the consensus does not move when peers
    with different installation offsets leave the pool (flagged, silent, late, or not
    reporting in this bucket) or join it; a median of raw values would move by the offsets
    of those left. So the peers that read the air when the sensor did come first: a carried
    value may be minutes older, which in a defrost or with a door open is degrees."""
    fresh = len(voters) if fresh is None else fresh
    usable: list[tuple[float, str]] = []
    flagged: set[str] = set()
    recent: set[str] = set()  # (with carried values) reported in the bucket, offset known
    at = _BASELINE
    for s, d, v in voters[:fresh]:
        if s.drift_shape is not None or s.fault_shape is not None:
            flagged.add(d)
        if low <= v <= high:
            num = s.num
            if len(num) > at and num[at] == num[at]:  # (unset: the NaN ``_NONE``)
                v -= num[at]
                recent.add(d)
            usable.append((v, d))
    if fresh < len(voters):
        for s, d, v in voters[fresh:]:
            if s.drift_shape is not None or s.fault_shape is not None:
                flagged.add(d)
            if low <= v <= high:
                num = s.num
                if len(num) > at and num[at] == num[at]:
                    v -= num[at]
                usable.append((v, d))
    else:
        recent.clear()  # nothing carried: none to prefer
    usable.sort()
    clean = [x for x in usable if x[1] not in flagged] if flagged else usable
    choices = [clean]
    if recent:
        reported = [x for x in clean if x[1] in recent]
        if len(reported) < len(clean):
            choices.insert(0, reported)
    if len(clean) < len(usable):
        choices.append(usable)
    pools: list[Pool] = []
    for pool in choices:
        weighted = bool(references) and any(d in references for _, d in pool)
        pools.append(
            (
                {d: i for i, (_, d) in enumerate(pool)},
                [v for v, _ in pool],
                [(v, reference_weight if d in references else 1.0) for v, d in pool]
                if weighted
                else None,
            )
        )
    return pools


def peer_consensus(
    pools: Sequence[Pool], device_id: str, min_peers: int
) -> tuple[float | None, int]:
    """The consensus of the peers of ``device_id`` (the median of the first pool with at least
    ``min_peers`` values besides its own, weighted where references weigh more) and how many
    peers it stands on; ``(None, 0)`` when no pool has enough.

    >>> voters = [(_Sensor(d, "t"), d, v) for d, v in (("a", 1.0), ("b", 2.0), ("c", 9.0))]
    >>> pools = consensus_pools(voters, 0.0, 5.0, frozenset(), 3.0)
    >>> peer_consensus(pools, "a", 1), peer_consensus(pools, "c", 1), peer_consensus(pools, "a", 2)
    ((2.0, 1), (1.5, 2), (None, 0))
    """
    for positions, values, pairs in pools:
        position = positions.get(device_id, -1)
        count = len(values) - (1 if position >= 0 else 0)
        if count < min_peers:
            continue
        if pairs is not None:
            return _weighted_median(pairs, position), count
        return _median_without(values, position), count
    return None, 0


def peer_resolution(s: _Sensor) -> float:
    """The median resolution of the peers of ``s`` that have shown theirs (NaN: none has): what
    a sensor that has never changed is judged by, and how coarse its consensus is."""
    group = s.grp
    found = sorted(
        p.num[_RES]
        for p in (group.members if group is not None else ())
        if p is not s and len(p.num) > _RES and p.num[_RES] == p.num[_RES]
    )
    if not found:
        return math.nan
    return found[len(found) // 2]
