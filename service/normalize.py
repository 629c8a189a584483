"""Normalization: codec records in, :class:`~service.model.Reading` objects out.

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
  ``late``; a reading seen before, by ``(device, seq, ts)`` or ``(device, ts)``, is dropped
  as a duplicate (and counted).

A record that cannot be read is rejected alone, with a :class:`DecodeError` naming the
reason; the other records of the same message are kept.

>>> from service.model import MessageKind
>>> from service.registry import DeviceRegistry
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
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from config.settings import IngestSettings, MetricAlias
from service.errors import DecodeError, check_state_version
from service.model import MessageKind, Reading
from service.registry import DeviceRegistry

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


class DedupeWindow:
    """The keys ``(device, seq, ts)`` of the newest ``capacity`` readings, oldest first.

    Each device's keys sit in one flat list, ``[device, head, newest ts, ts, seq, ts,
    seq ...]``, where ``head`` is the index of the device's oldest key still in the window;
    a queue of those lists, one entry per key, gives the order across devices. A key whose
    ``ts`` is newer than every key of its device is new without a search.

    >>> window = DedupeWindow(capacity=2)
    >>> window.add("d1", 1, 10.0), window.add("d1", 1, 10.0), window.add("d2", None, 10.0)
    (True, False, True)
    >>> window.add("d1", 2, 11.0), list(window)
    (True, [('d2', None, 10.0), ('d1', 2, 11.0)])
    >>> window.add("d1", 1, 10.0), list(window)  # (d1, 1, 10.0) has left the window
    (True, [('d1', 2, 11.0), ('d1', 1, 10.0)])
    """

    __slots__ = ("_devices", "_order", "capacity")

    _FIRST = 3  # index of a device's first key in its list

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._devices: dict[str, list[Any]] = {}
        self._order: deque[list[Any]] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[tuple[str, Any, float]]:
        """The keys, oldest first."""
        cursors: dict[int, int] = {}
        for entries in self._order:
            index = cursors.get(id(entries), entries[1])
            cursors[id(entries)] = index + 2
            yield (entries[0], entries[index + 1], entries[index])

    def _find(self, entries: list[Any], seq: int | None, ts: float) -> bool:
        index = entries[1]
        find = entries.index
        while True:
            try:
                index = find(ts, index)
            except ValueError:
                return False
            if index & 1 and entries[index + 1] == seq:
                return True
            index += 1

    def _push(self, device_id: str, seq: int | None, ts: float) -> None:
        entries = self._devices.get(device_id)
        if entries is None:
            entries = self._devices[device_id] = [device_id, self._FIRST, ts, ts, seq]
        else:
            entries.append(ts)
            entries.append(seq)
            if ts > entries[2]:
                entries[2] = ts
        self._order.append(entries)

    def _drop_oldest(self) -> None:
        oldest = self._order.popleft()
        head = oldest[1] + 2
        if head >= len(oldest):
            del self._devices[oldest[0]]
            return
        if head > 64 and head * 2 > len(oldest):
            del oldest[self._FIRST : head]
            head = self._FIRST
        oldest[1] = head

    def add(self, device_id: str, seq: int | None, ts: float) -> bool:
        """Remember a key; False when it is in the window already."""
        entries = self._devices.get(device_id)
        if entries is not None and not ts > entries[2] and self._find(entries, seq, ts):
            return False
        if self.capacity:
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
    ) -> None:
        classes = self._classes
        classify = self._classify
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
                    try:
                        number = float(value)
                    except ValueError:
                        if strict:
                            raise DecodeError(
                                "non_numeric_value",
                                f"{key!r} should be a number, got {value[:32]!r}",
                            ) from None
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
        registry = self.registry
        remember = self._seen.add
        split = self._split
        append = result.readings.append
        reading_kind = kind
        for record in records:
            try:
                claimed = record.get("device_id")
                if claimed is not None and claimed != device_id:
                    raise DecodeError(
                        "device_mismatch",
                        f"payload names device {str(claimed)[:64]!r}, topic names {device_id!r}",
                        device_id=device_id,
                    )
                raw_ts = record.get("ts")
                if raw_ts is None:
                    raw_ts = record.get("timestamp")
                    if raw_ts is None:
                        raw_ts = record.get("time")
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
                    if ts > newest_valid_ts:
                        ts = received_at
                        result.corrected_future += 1
                seq_value = record.get("seq")
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
                nested = record.get("metrics")
                if isinstance(nested, dict):
                    split(nested, metrics, meta, result)
                nested_meta = record.get("meta")
                if isinstance(nested_meta, dict):
                    split(nested_meta, metrics, meta, result)
                split(record, metrics, meta, result)
            except DecodeError as exc:
                exc.device_id = device_id
                result.rejected.append(exc)
                continue
            # identity from the topic wins over the payload
            meta.update(levels)
            if "protocol" not in meta:
                meta["protocol"] = protocol
            if not remember(device_id, seq, ts if raw_ts is not None or seq is None else 0.0):
                result.duplicates += 1
                continue
            previous = registry.get(device_id)
            late = previous is not None and ts < previous.last_ts
            if late:
                result.late += 1
            if meta.keys().isdisjoint(TRANSIENT_META):
                info = registry.observe(device_id, received_at, ts, meta)
                reading_meta = info.meta
            else:
                # an event's fields belong to this message, not to the device's profile
                transient = {k: meta.pop(k) for k in TRANSIENT_META & meta.keys()}
                info = registry.observe(device_id, received_at, ts, meta)
                reading_meta = MappingProxyType({**info.meta, **transient})
            append(
                Reading(device_id, ts, received_at, metrics, reading_meta, seq, reading_kind, late)
            )
        return result
