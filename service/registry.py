"""The device registry: what FleetWatch knows of every device it has heard from.

Per device it keeps when it was first and last heard (receive time), the newest device
timestamp, and its metadata (site, zone, gateway, model, firmware ...). Metadata is kept as
an immutable mapping that is replaced, never changed in place, so readings can share it
safely; a message whose metadata says nothing new reuses the same mapping.

>>> reg = DeviceRegistry()
>>> info = reg.observe("d1", received_at=10.0, ts=9.0, meta={"site": "a", "model": "m"})
>>> info.meta["model"], reg.observe("d1", 11.0, 10.0, {"site": "a"}).meta is info.meta
('m', True)
>>> reg.count_active(since=10.5)
1
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class DeviceInfo:
    """Mutable per-device state owned by the registry."""

    device_id: str
    first_seen: float
    last_seen: float
    last_ts: float
    meta: Mapping[str, str]
    last_update: dict[str, str] | None = None  # the last metadata a message carried


class DeviceRegistry:
    """All known devices, by id."""

    def __init__(self) -> None:
        self._devices: dict[str, DeviceInfo] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __iter__(self) -> Iterator[DeviceInfo]:
        return iter(self._devices.values())

    def get(self, device_id: str) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def observe(
        self, device_id: str, received_at: float, ts: float, meta: Mapping[str, str]
    ) -> DeviceInfo:
        """Record that ``device_id`` was heard; merge its metadata; return its info."""
        info = self._devices.get(device_id)
        if info is None:
            info = DeviceInfo(device_id, received_at, received_at, ts, MappingProxyType(dict(meta)))
            self._devices[device_id] = info
            return info
        if received_at > info.last_seen:
            info.last_seen = received_at
        if ts > info.last_ts:
            info.last_ts = ts
        if meta == info.last_update:  # the common case: nothing new
            return info
        info.last_update = dict(meta)
        known = info.meta
        for key, value in meta.items():
            if known.get(key) != value:
                merged = dict(known)
                merged.update(meta)
                info.meta = MappingProxyType(merged)
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
                meta=MappingProxyType({str(k): str(v) for k, v in meta.items()}),
            )
