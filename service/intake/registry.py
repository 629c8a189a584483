"""The device registry: what FleetWatch knows of every device it has heard from.

Per device it keeps when it was first and last heard (receive time), the newest device
timestamp, and its metadata (site, zone, gateway, model, firmware ...). Metadata is kept as
an immutable mapping that is replaced, never changed in place, so readings can share it
safely; a message whose metadata says nothing new reuses the same mapping.

Devices with the same metadata (same keys and values, in the same order) share one
mapping, and metadata strings are shared through an intern table; both tables are bounded
and start afresh when full, which only ends the sharing of what comes after.

>>> reg = DeviceRegistry()
>>> info = reg.observe("d1", received_at=10.0, ts=9.0, meta={"site": "a", "model": "m"})
>>> info.meta["model"], reg.observe("d1", 11.0, 10.0, {"site": "a"}).meta is info.meta
('m', True)
>>> reg.observe("d2", 10.0, 9.0, {"site": "a", "model": "m"}).meta is info.meta
True
>>> reg.count_active(since=10.5)
1
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

MAX_SHARED_STRINGS = 200_000
MAX_SHARED_METAS = 100_000


class _Meta(dict[str, str]):
    """A metadata dict that can key the table of shared mappings (hashed by its items in
    order). It is only ever reachable through a read-only mapping, so it never changes."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


@dataclass(slots=True)
class DeviceInfo:
    """Mutable per-device state owned by the registry."""

    device_id: str
    first_seen: float
    last_seen: float
    last_ts: float
    meta: Mapping[str, str]


class DeviceRegistry:
    """All known devices, by id."""

    def __init__(self) -> None:
        self._devices: dict[str, DeviceInfo] = {}
        self._strings: dict[str, str] = {}
        self._metas: dict[_Meta, Mapping[str, str]] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __iter__(self) -> Iterator[DeviceInfo]:
        return iter(self._devices.values())

    def get(self, device_id: str) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def _share(self, meta: Mapping[str, str]) -> Mapping[str, str]:
        """A read-only copy of ``meta``, the same object for every device with equal
        metadata in the same order; keys and values are interned."""
        strings = self._strings
        if len(strings) >= MAX_SHARED_STRINGS:
            strings.clear()
        fresh = _Meta()
        for key, value in meta.items():
            if type(key) is str:
                key = strings.setdefault(key, key)
            if type(value) is str:
                value = strings.setdefault(value, value)
            fresh[key] = value
        metas = self._metas
        try:
            shared = metas.get(fresh)
        except TypeError:  # a value that cannot be hashed: kept, not shared
            return MappingProxyType(fresh)
        if shared is not None and tuple(shared) == tuple(fresh):
            return shared
        if len(metas) >= MAX_SHARED_METAS:
            metas.clear()
        proxy: Mapping[str, str] = MappingProxyType(fresh)
        metas[fresh] = proxy
        return proxy

    def observe(
        self, device_id: str, received_at: float, ts: float, meta: Mapping[str, str]
    ) -> DeviceInfo:
        """Record that ``device_id`` was heard; merge its metadata; return its info."""
        info = self._devices.get(device_id)
        if info is None:
            info = DeviceInfo(device_id, received_at, received_at, ts, self._share(meta))
            self._devices[device_id] = info
            return info
        if received_at > info.last_seen:
            info.last_seen = received_at
        if ts > info.last_ts:
            info.last_ts = ts
        known = info.meta
        if meta.items() <= known.items():  # the common case: nothing new
            return info
        for key, value in meta.items():
            if known.get(key) != value:
                merged = dict(known)
                merged.update(meta)
                info.meta = self._share(merged)
                break
        return info

    def count_active(self, since: float) -> int:
        """How many devices were heard at or after ``since`` (receive time)."""
        return sum(1 for info in self._devices.values() if info.last_seen >= since)

    def export(self) -> list[dict[str, object]]:
        """Plain data for a checkpoint."""
        return [
            {
                "device_id": i.device_id,
                "first_seen": i.first_seen,
                "last_seen": i.last_seen,
                "last_ts": i.last_ts,
                "meta": dict(i.meta),
            }
            for i in self._devices.values()
        ]

    def restore(self, rows: list[dict[str, object]]) -> None:
        for row in rows:
            meta = row["meta"]
            assert isinstance(meta, dict)
            device_id = str(row["device_id"])
            self._devices[device_id] = DeviceInfo(
                device_id=device_id,
                first_seen=float(row["first_seen"]),  # type: ignore[arg-type]
                last_seen=float(row["last_seen"]),  # type: ignore[arg-type]
                last_ts=float(row["last_ts"]),  # type: ignore[arg-type]
                meta=self._share({str(k): str(v) for k, v in meta.items()}),
            )
