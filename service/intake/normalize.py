"""Normalization: codec records in, :class:`~service.records.Reading` objects out.

What it does to each record (one JSON object of FleetWatch's payload schema):

- numeric fields become metrics under their canonical names, with units in the name
  (``battery_v``, ``temperature_c`` ...); aliases such as ``batt``, ``vbat`` or
  ``battery_mv`` (scaled from millivolts) map onto them, and configuration adds more;
- known string fields (``firmware``, ``model``, ``gateway``, ``zone``, ``lat``/``lon`` ...)
  become metadata; so does any other string that is not a number and not in a metric's
  place. A numeric string is read as a number;
- ``ts`` may be ISO 8601, epoch seconds, milliseconds or microseconds; missing means the
  receive time; more than ``max_future_skew_s`` ahead of the receive time is corrected to
  the receive time (and counted); before ``oldest_valid_ts`` or unreadable is rejected;
- a reading older than the newest one already seen from the device is kept and marked
  ``late``; a reading seen before, by ``(device, seq, ts)`` or ``(device, ts)`` with the
  device's own ``ts`` (before a future one is corrected), is dropped as a duplicate (and
  counted).

A record that cannot be read is rejected alone, with a :class:`DecodeError` naming the
reason; the other records of the same message are kept.

>>> from service.records import MessageKind
>>> from service.intake.registry import DeviceRegistry
>>> norm = Normalizer(DeviceRegistry())
>>> out = norm.normalize([{"ts": 1700000000000, "batt": 3.7, "temp": "21.5", "fw": "1.2"}],
...                      device_id="d1", kind=MessageKind.TELEMETRY, received_at=1700000001.0,
...                      levels={"site": "a"}, protocol="mqtt")
>>> r = out.readings[0]
>>> r.ts, dict(r.metrics), r.meta["firmware"], r.site
(1700000000.0, {'battery_v': 3.7, 'temperature_c': 21.5}, '1.2', 'a')
>>> norm.normalize([{"ts": 1700000000000, "batt": 3.7}], device_id="d1",
...     kind=MessageKind.TELEMETRY, received_at=1700000002.0, levels={}, protocol="mqtt").duplicates
1
"""

from __future__ import annotations

import datetime as dt
import math
import re
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

from config.settings import IngestSettings, MetricAlias
from service.errors import DecodeError, check_state_version
from service.intake.registry import DeviceRegistry
from service.records import MessageKind, Reading

# alias -> (canonical metric, scale, offset)
DEFAULT_METRIC_ALIASES: dict[str, tuple[str, float, float]] = {
    "batt": ("battery_v", 1.0, 0.0),
    "batt_v": ("battery_v", 1.0, 0.0),
    "vbat": ("battery_v", 1.0, 0.0),
    "battery_voltage": ("battery_v", 1.0, 0.0),
    "battery_volts": ("battery_v", 1.0, 0.0),
    "battery_mv": ("battery_v", 0.001, 0.0),
    "vbat_mv": ("battery_v", 0.001, 0.0),
    "battery_level": ("battery_pct", 1.0, 0.0),
    "battery_percent": ("battery_pct", 1.0, 0.0),
    "temp": ("temperature_c", 1.0, 0.0),
    "temperature": ("temperature_c", 1.0, 0.0),
    "temp_c": ("temperature_c", 1.0, 0.0),
    "temperature_f": ("temperature_c", 5.0 / 9.0, -160.0 / 9.0),
    "temp_f": ("temperature_c", 5.0 / 9.0, -160.0 / 9.0),
    "humidity": ("humidity_pct", 1.0, 0.0),
    "rh": ("humidity_pct", 1.0, 0.0),
    "rssi": ("rssi_dbm", 1.0, 0.0),
    "snr": ("snr_db", 1.0, 0.0),
    "power_w": ("power_mw", 1000.0, 0.0),
    "power": ("power_mw", 1.0, 0.0),
    "current_ma": ("current_a", 0.001, 0.0),
    "voltage": ("voltage_v", 1.0, 0.0),
    "pressure_hpa": ("pressure_kpa", 0.1, 0.0),
    "pressure_pa": ("pressure_kpa", 0.001, 0.0),
}

# metadata of one message (an event), never merged into the device's profile
TRANSIENT_META = frozenset({"event", "from_version", "to_version", "code", "state", "status"})

# payload key -> metadata key
META_KEYS: dict[str, str] = {
    "firmware": "firmware",
    "fw": "firmware",
    "fw_version": "firmware",
    "firmware_version": "firmware",
    "model": "model",
    "device_model": "model",
    "gateway": "gateway",
    "gw": "gateway",
    "gateway_id": "gateway",
    "gatewayId": "gateway",
    "gateway_eui": "gateway",
    "gwid": "gateway",
    "site": "site",
    "zone": "zone",
    "line": "line",
    "facility": "facility",
    "region": "region",
    "status": "status",
    "event": "event",
    "from": "from_version",
    "to": "to_version",
    "version": "version",
    "code": "code",
    "bearer": "bearer",
    "technology": "bearer",
    "network": "bearer",
    "mode": "mode",
    "chemistry": "chemistry",
    "criticality": "criticality",
    "lat": "lat",
    "latitude": "lat",
    "lon": "lon",
    "lng": "lon",
    "longitude": "lon",
    "alt": "alt",
    "x": "pos_x",
    "y": "pos_y",
}

# keys with a meaning of their own, handled apart from metrics and metadata
_RESERVED = frozenset({"ts", "timestamp", "time", "seq", "device_id", "metrics", "meta"})
_UNIT_SUFFIXES = (
    "_v", "_mv", "_a", "_ma", "_c", "_f", "_k", "_pct", "_dbm", "_db", "_mw", "_w",
    "_kw", "_wh", "_kwh", "_hz", "_kpa", "_pa", "_ppm", "_lux", "_mps", "_g", "_s", "_ms",
)  # fmt: skip
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_META_VALUE = 256
# what a payload key is
_SKIP, _META, _METRIC, _IGNORE = range(4)
MAX_NAME_CACHE = 10_000
_MIN_MS = 1e11  # numbers above this are milliseconds (year 5138 in seconds)
_MIN_US = 1e14
_MAX_EXACT_SEQ = 2**53  # a whole number that a float holds exactly
_NONE_SEQ = 0.5  # a missing seq in the duplicate window's float arrays
MAX_PLANS = 256  # record key orders remembered, each with up to MAX_SHAPES value types
MAX_SHAPES = 8
PLAN_AFTER = 3  # records of one shape split field by field before the shape gets a plan
MAX_WORD = 64  # longest text remembered as not being a number
_NUMBER_TYPES = frozenset({float, int, bool})
_NONE_TYPE = type(None)
# a Reading from a tuple of its fields (a named tuple's own constructor, without its keywords)
_new_reading = partial(tuple.__new__, Reading)

# values, metrics, meta, words -> whether the record was split (else: field by field)
_PlannedSplit = Callable[[tuple[Any, ...], dict[str, float], dict[str, str], set[str]], bool]
# a shape's plan: the split, how many of its fields are ignored, whether a metadata name is
# transient
_Plan = tuple[_PlannedSplit, int, bool]


class DedupeWindow:
    """The keys ``(device, seq, ts)`` of the newest ``capacity`` readings, oldest first.

    Each device's keys sit in one flat array of floats, ``[head, newest ts, ts, seq, ts,
    seq ...]``, where ``head`` is the index of the device's oldest key still in the window
    and a missing seq is stored as 0.5 (no whole number equals it). A device with a seq
    that is not an ``int`` a float holds exactly keeps its keys in a list of the same layout,
    seqs as they came. A queue of device ids, one per key, gives the order across devices.
    A key whose ``ts`` is newer than every key of its device is new without a search.

    >>> window = DedupeWindow(capacity=2)
    >>> window.add("d1", 1, 10.0), window.add("d1", 1, 10.0), window.add("d2", None, 10.0)
    (True, False, True)
    >>> window.add("d1", 2, 11.0), list(window)
    (True, [('d2', None, 10.0), ('d1', 2, 11.0)])
    >>> window.add("d1", 1, 10.0), list(window)  # (d1, 1, 10.0) has left the window
    (True, [('d1', 2, 11.0), ('d1', 1, 10.0)])
    """

    __slots__ = ("_devices", "_order", "capacity")

    _FIRST = 2  # index of a device's first key in its array

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._devices: dict[str, array[float] | list[Any]] = {}
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[tuple[str, Any, float]]:
        """The keys, oldest first."""
        devices = self._devices
        cursors: dict[str, int] = {}
        for device_id in self._order:
            entries = devices[device_id]
            index = cursors.get(device_id)
            if index is None:
                index = int(entries[0])
            cursors[device_id] = index + 2
            seq = entries[index + 1]
            if type(entries) is not list:
                seq = None if seq == _NONE_SEQ else int(seq)
            yield (device_id, seq, entries[index])

    @staticmethod
    def _as_list(entries: array[float] | list[Any]) -> list[Any]:
        """The keys of ``entries`` in a list, seqs as they came."""
        keys: list[Any] = [int(entries[0]), entries[1]]
        for index in range(DedupeWindow._FIRST, len(entries), 2):
            seq = entries[index + 1]
            keys.append(entries[index])
            keys.append(None if seq == _NONE_SEQ else int(seq))
        return keys

    def _find(self, entries: array[float] | list[Any], seq: Any, ts: float) -> bool:
        code: Any = seq
        if type(entries) is not list:
            if seq is None:
                code = _NONE_SEQ
            elif type(seq) is not int or not -_MAX_EXACT_SEQ <= seq <= _MAX_EXACT_SEQ:
                # compared with the seqs as they came (1.0 equals 1)
                return self._find(self._as_list(entries), seq, ts)
        index = int(entries[0])
        find = entries.index
        while True:
            try:
                index = find(ts, index)
            except ValueError:
                return False
            if not index & 1 and entries[index + 1] == code:
                return True
            index += 1

    def _push(self, device_id: str, seq: Any, ts: float) -> None:
        devices = self._devices
        entries = devices.get(device_id)
        if seq is None:
            code: Any = _NONE_SEQ
        elif type(seq) is int and -_MAX_EXACT_SEQ <= seq <= _MAX_EXACT_SEQ:
            code = seq
        else:
            code = None  # kept as it came, in a list
        if entries is None:
            if code is None:
                devices[device_id] = [self._FIRST, ts, ts, seq]
            else:
                devices[device_id] = array("d", (self._FIRST, ts, ts, code))
        else:
            if type(entries) is list:
                code = seq
            elif code is None:
                entries = devices[device_id] = self._as_list(entries)
                code = seq
            entries.append(ts)
            entries.append(code)
            if ts > entries[1]:
                entries[1] = ts
        self._order.append(device_id)

    def _drop_oldest(self) -> None:
        device_id = self._order.popleft()
        entries = self._devices[device_id]
        head = int(entries[0]) + 2
        if head >= len(entries):
            del self._devices[device_id]
            return
        if head > 64 and head * 2 > len(entries):
            del entries[self._FIRST : head]
            head = self._FIRST
        entries[0] = head

    def add(self, device_id: str, seq: int | None, ts: float) -> bool:
        """Remember a key; False when it is in the window already."""
        entries = self._devices.get(device_id)
        newest = entries is not None and ts > entries[1]
        if entries is not None and not newest and self._find(entries, seq, ts):
            return False
        if not self.capacity:
            return True
        if (
            newest
            and entries is not None
            and type(entries) is not list
            and type(seq) is int
            and -_MAX_EXACT_SEQ <= seq <= _MAX_EXACT_SEQ
        ):  # the common case: the device's newest key, with a whole-number seq
            entries.append(ts)
            entries.append(seq)
            entries[1] = ts
            self._order.append(device_id)
        else:
            self._push(device_id, seq, ts)
        if len(self._order) > self.capacity:
            self._drop_oldest()
        return True

    def load(self, keys: Iterable[tuple[str, Any, float]]) -> None:
        """Replace the window with ``keys`` (oldest first), then keep the newest
        ``capacity`` of them (all of them when the capacity is 0)."""
        self._devices = {}
        self._order = deque()
        for device_id, seq, ts in keys:
            entries = self._devices.get(device_id)
            if entries is None or not self._find(entries, seq, ts):
                self._push(device_id, seq, ts)
        while self.capacity and len(self._order) > self.capacity:
            self._drop_oldest()


@dataclass(slots=True)
class NormalizeResult:
    """Readings made from one message, and what was rejected or dropped."""

    readings: list[Reading] = field(default_factory=list)
    rejected: list[DecodeError] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0
    corrected_future: int = 0
    ignored_fields: int = 0


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from ISO 8601 text, or from seconds, milliseconds or microseconds.

    >>> parse_timestamp("2024-01-01T00:00:00Z"), parse_timestamp(1704067200000)
    (1704067200.0, 1704067200.0)
    >>> parse_timestamp("2024-01-01T01:00:00+01:00")
    1704067200.0
    """
    if isinstance(value, bool):
        raise DecodeError("invalid_timestamp", "ts is a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                moment = dt.datetime.fromisoformat(text)
            except ValueError:
                raise DecodeError(
                    "invalid_timestamp", f"ts {value[:64]!r} is not ISO 8601"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            return moment.timestamp()
    else:
        raise DecodeError("invalid_timestamp", f"ts is a {type(value).__name__}")
    if not math.isfinite(number):
        raise DecodeError("invalid_timestamp", "ts is not finite")
    if number >= _MIN_US:
        return number / 1e6
    if number >= _MIN_MS:
        return number / 1e3
    return number


class Normalizer:
    """Turns codec records into readings for one device at a time.

    Parameters
    ----------
    registry
        The device registry; it is updated with every accepted reading.
    settings
        Ingest settings: limits, timestamp policy, dedupe capacity, metric aliases.
    """

    def __init__(self, registry: DeviceRegistry, settings: IngestSettings | None = None) -> None:
        self.registry = registry
        self.settings = settings or IngestSettings()
        aliases = dict(DEFAULT_METRIC_ALIASES)
        for alias, target in self.settings.aliases.items():
            if isinstance(target, MetricAlias):
                aliases[alias] = (target.metric, target.scale, target.offset)
            else:
                aliases[alias] = (target, 1.0, 0.0)
        self._aliases = aliases
        canonical = {name for name, _, _ in aliases.values()}
        self._metric_names = frozenset(canonical) | frozenset(aliases)
        self._classes: dict[str, tuple[int, str, float, float, bool]] = {}
        # record keys in order -> value types -> the shape's plan, None (split field by
        # field), or how many records of the shape have come while it had no plan yet
        self._plans: dict[tuple[Any, ...], dict[tuple[type, ...], _Plan | int | None]] = {}
        self._words: set[str] = set()  # texts that are not numbers
        self._seen = DedupeWindow(self.settings.dedupe_capacity)

    # -- checkpoints ----------------------------------------------------------------

    STATE_VERSION = 1

    def state_dict(self) -> dict[str, Any]:
        """The duplicate window, oldest first, as plain data."""
        return {"version": self.STATE_VERSION, "seen": [list(key) for key in self._seen]}

    def load_state(self, state: dict[str, Any]) -> None:
        check_state_version("normalizer", state, self.STATE_VERSION)
        self._seen.load((str(d), seq, float(ts)) for d, seq, ts in state.get("seen", []))

    # -- fields ---------------------------------------------------------------------

    def _classify(self, key: str) -> tuple[int, str, float, float, bool]:
        """What a payload key is: (kind, target name, scale, offset, strict number)."""
        cached = self._classes.get(key)
        if cached is not None:
            return cached
        found: tuple[int, str, float, float, bool]
        if key in _RESERVED:
            found = (_SKIP, key, 1.0, 0.0, False)
        elif key in META_KEYS:
            found = (_META, META_KEYS[key], 1.0, 0.0, False)
        elif key in self._aliases:
            canonical, scale, offset = self._aliases[key]
            found = (_METRIC, canonical, scale, offset, True)
        elif _METRIC_NAME.match(key):
            found = (_METRIC, key, 1.0, 0.0, self._looks_metric(key))
        else:
            found = (_IGNORE, key, 1.0, 0.0, False)
        if len(self._classes) < MAX_NAME_CACHE:
            self._classes[key] = found
        return found

    def _looks_metric(self, name: str) -> bool:
        return name in self._metric_names or name.endswith(_UNIT_SUFFIXES)

    def _split(
        self,
        record: Mapping[str, Any],
        metrics: dict[str, float],
        meta: dict[str, str],
        result: NormalizeResult,
    ) -> bool:
        """Put the fields of ``record`` into ``metrics`` and ``meta``; False when no field
        went to a key of :data:`TRANSIENT_META`.

        Records with the same keys in the same order and the same value types (a shape)
        are split by one plan, made when the shape has come ``PLAN_AFTER`` times; a record
        its plan cannot take as it is (a value out of range, a text that may be a number)
        is split field by field, with the same outcome.
        """
        keys = tuple(record)
        plans = self._plans
        shapes = plans.get(keys)
        if shapes is None:
            if len(plans) >= MAX_PLANS:
                plans.clear()
            shapes = plans[keys] = {}
        values = tuple(record.values())
        types = tuple(map(type, values))
        plan = shapes.get(types, 0)
        if type(plan) is int:  # records of this shape seen so far
            plan = self._plan(keys, types) if plan + 1 >= PLAN_AFTER else plan + 1
            if len(shapes) >= MAX_SHAPES:
                shapes.clear()
            shapes[types] = plan
        if type(plan) is tuple:
            planned, ignored, transient = plan
            if planned(values, metrics, meta, self._words):
                if ignored:
                    result.ignored_fields += ignored
                if len(metrics) > self.settings.max_metrics_per_reading:
                    limit = self.settings.max_metrics_per_reading
                    raise DecodeError(
                        "too_many_fields", f"more than {limit} metrics in one reading"
                    )
                return transient
        self._split_fields(record, metrics, meta, result)
        return True

    def _plan(self, keys: tuple[Any, ...], types: tuple[type, ...]) -> _Plan | None:
        """The plan for records with these keys and value types: a function that splits
        them as :meth:`_split_fields` does (or returns False, having changed nothing),
        how many fields they have that are ignored, and whether a metadata name is
        transient. None for keys that are not text.

        The function is written out field by field; its source holds only positions,
        names and values reach it as closure constants.
        """
        try:
            classes = [self._classes.get(key) or self._classify(key) for key in keys]
        except TypeError:
            return None
        constants: list[Any] = []

        def constant(value: Any) -> str:
            constants.append(value)
            return f"c{len(constants) - 1}"

        compute: list[str] = []  # may fail: then nothing is written
        checks: list[str] = []
        writes: list[str] = []
        metric_vars: list[str] = []
        meta_names: list[str] = []
        ignored = 0
        for i, (key, value_type, (kind, name, scale, offset, strict)) in enumerate(
            zip(keys, types, classes, strict=True)
        ):
            if kind == _METRIC:
                if value_type is float:
                    compute.append(f"m{i} = values[{i}] * {constant(scale)} + {constant(offset)}")
                elif value_type in _NUMBER_TYPES or (value_type is str and strict):
                    compute.append(
                        f"m{i} = float(values[{i}]) * {constant(scale)} + {constant(offset)}"
                    )
                elif value_type is str:  # a word, if it is known not to be a number
                    compute.append(f"w{i} = values[{i}]")
                    checks.append(f"if w{i} not in words: return False")
                    writes.append(f"meta[{constant(key)}] = w{i}")
                    meta_names.append(key)
                    continue
                else:
                    ignored += value_type is not _NONE_TYPE
                    continue
                metric_vars.append(f"m{i}")
                writes.append(f"metrics[{constant(name)}] = m{i}")
            elif kind == _META:
                if value_type is str:
                    writes.append(f"meta[{constant(name)}] = values[{i}][:{MAX_META_VALUE}]")
                elif value_type is float or value_type is int:
                    compute.append(f"r{i} = repr(values[{i}])")
                    writes.append(f"meta[{constant(name)}] = r{i}")
                else:
                    ignored += 1
                    continue
                meta_names.append(name)
            elif kind == _IGNORE:
                ignored += 1
        if metric_vars:
            checks.insert(0, f"total = {' + '.join(metric_vars)}")
            checks.insert(1, "if total - total != 0.0: return False")  # one is not finite
        body = ["try:", *(f"    {line}" for line in compute or ["pass"])]
        body += ["except (ValueError, OverflowError):", "    return False"]
        body += [*checks, *writes, "return True"]
        source = "\n".join(
            [
                "def make(constants):",
                f"    {''.join(f'c{n}, ' for n in range(len(constants)))}= constants"
                if constants
                else "",
                "    def planned(values, metrics, meta, words):",
                *(f"        {line}" for line in body),
                "    return planned",
            ]
        )
        namespace: dict[str, Any] = {}
        exec(compile(source, "<normalize plan>", "exec"), namespace)
        planned: _PlannedSplit = namespace["make"](tuple(constants))
        return planned, ignored, not TRANSIENT_META.isdisjoint(meta_names)

    def _split_fields(
        self,
        record: Mapping[str, Any],
        metrics: dict[str, float],
        meta: dict[str, str],
        result: NormalizeResult,
    ) -> None:
        """Split ``record`` one field at a time (what every plan does at once)."""
        classes = self._classes
        classify = self._classify
        words = self._words
        for key, value in record.items():
            kind, name, scale, offset, strict = classes.get(key) or classify(key)
            if kind == _METRIC:
                value_type = type(value)
                if value_type is float:
                    converted = value * scale + offset
                    if converted - converted != 0.0:
                        raise DecodeError("non_finite_number", f"{key!r} is not finite")
                    metrics[name] = converted
                    continue
                if value_type is int:
                    number = value
                elif value_type is str:
                    if not strict and value in words:
                        meta[key] = value
                        continue
                    try:
                        number = float(value)
                    except ValueError:
                        if strict:
                            raise DecodeError(
                                "non_numeric_value",
                                f"{key!r} should be a number, got {value[:32]!r}",
                            ) from None
                        if len(value) <= MAX_WORD:
                            if len(words) >= MAX_NAME_CACHE:
                                words.clear()
                            words.add(value)
                        meta[key] = value[:MAX_META_VALUE]
                        continue
                elif value_type is bool:
                    number = 1.0 if value else 0.0
                elif value is None:
                    continue
                else:
                    result.ignored_fields += 1
                    continue
                try:
                    converted = float(number) * scale + offset
                except OverflowError:
                    raise DecodeError("non_finite_number", f"{key!r} is out of range") from None
                if converted - converted != 0.0:
                    raise DecodeError("non_finite_number", f"{key!r} is not finite")
                metrics[name] = converted
            elif kind == _META:
                value_type = type(value)
                if value_type is str:
                    meta[name] = value[:MAX_META_VALUE]
                elif value_type is float or value_type is int:
                    meta[name] = repr(value)
                else:
                    result.ignored_fields += 1
            elif kind == _IGNORE:
                result.ignored_fields += 1
        if len(metrics) > self.settings.max_metrics_per_reading:
            limit = self.settings.max_metrics_per_reading
            raise DecodeError("too_many_fields", f"more than {limit} metrics in one reading")

    # -- records --------------------------------------------------------------------

    def normalize(
        self,
        records: list[dict[str, Any]],
        *,
        device_id: str,
        kind: MessageKind,
        received_at: float,
        levels: Mapping[str, str],
        protocol: str,
        result: NormalizeResult | None = None,
    ) -> NormalizeResult:
        """Normalize the records of one message from one device.

        Pass ``result`` to collect several messages into one result (a micro-batch).
        """
        if result is None:
            result = NormalizeResult()
        settings = self.settings
        oldest_valid_ts = settings.oldest_valid_ts
        newest_valid_ts = received_at + settings.max_future_skew_s
        observe = self.registry.observe
        remember = self._seen.add
        split = self._split
        append = result.readings.append
        rejected = result.rejected
        for record in records:
            try:
                get = record.get
                claimed = get("device_id")
                if claimed is not None and claimed != device_id:
                    raise DecodeError(
                        "device_mismatch",
                        f"payload names device {str(claimed)[:64]!r}, topic names {device_id!r}",
                        device_id=device_id,
                    )
                raw_ts = get("ts")
                if raw_ts is None:
                    raw_ts = get("timestamp")
                    if raw_ts is None:
                        raw_ts = get("time")
                if raw_ts is None:
                    ts = received_at
                else:
                    raw_type = type(raw_ts)
                    if (raw_type is float or raw_type is int) and raw_ts < _MIN_MS:
                        ts = float(raw_ts)
                    else:
                        ts = parse_timestamp(raw_ts)
                    if ts < oldest_valid_ts:
                        raise DecodeError(
                            "invalid_timestamp", f"ts {ts:.0f} is before the oldest valid time"
                        )
                # duplicates are recognised by the device's own ts, before any correction:
                # a fast clock's resent reading gets another receive time
                device_ts = ts
                if ts > newest_valid_ts:
                    ts = received_at
                    result.corrected_future += 1
                seq_value = get("seq")
                seq: int | None = None
                if type(seq_value) is int and -_MAX_EXACT_SEQ < seq_value < _MAX_EXACT_SEQ:
                    seq = seq_value
                elif seq_value is not None:
                    if isinstance(seq_value, bool) or not isinstance(seq_value, (int, float)):
                        raise DecodeError("invalid_seq", "seq must be a number")
                    if not math.isfinite(seq_value) or seq_value != int(seq_value):
                        raise DecodeError("invalid_seq", "seq must be a whole number")
                    seq = int(seq_value)
                metrics: dict[str, float] = {}
                meta: dict[str, str] = {}
                nested = get("metrics")
                nested_meta = get("meta")
                if nested is None and nested_meta is None:
                    transient = split(record, metrics, meta, result)
                else:
                    if isinstance(nested, dict):
                        split(nested, metrics, meta, result)
                    if isinstance(nested_meta, dict):
                        split(nested_meta, metrics, meta, result)
                    split(record, metrics, meta, result)
                    transient = True
            except DecodeError as exc:
                exc.device_id = device_id
                rejected.append(exc)
                continue
            # identity from the topic wins over the payload
            meta.update(levels)
            if "protocol" not in meta:
                meta["protocol"] = protocol
            if not remember(device_id, seq, device_ts if raw_ts is not None or seq is None else 0.0):
                result.duplicates += 1
                continue
            if not transient or meta.keys().isdisjoint(TRANSIENT_META):
                info = observe(device_id, received_at, ts, meta)
                reading_meta = info.meta
            else:
                # an event's fields belong to this message, not to the device's profile
                fields = {k: meta.pop(k) for k in TRANSIENT_META & meta.keys()}
                info = observe(device_id, received_at, ts, meta)
                reading_meta = MappingProxyType({**info.meta, **fields})
            # the device's newest ts before this reading is newer than ``ts`` exactly when
            # it still is after it
            late = ts < info.last_ts
            if late:
                result.late += 1
            append(
                _new_reading((device_id, ts, received_at, metrics, reading_meta, seq, kind, late))
            )
        return result
