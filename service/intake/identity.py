"""Which devices and sites may report: an optional allow-list of shell-style patterns.

An empty list allows everything. A message from a device or site outside the list is
refused as ``not_allowed`` (counted and dead-lettered), so a stray or hostile publisher
cannot plant devices in the fleet. Decisions are cached per device and site.

>>> allow = AllowList(devices=("TH-*", "gw-0?"), sites=())
>>> allow.permits("TH-200-17", "plant-a"), allow.permits("intruder", "plant-a")
(True, False)
>>> AllowList().permits("anything", None)
True
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class AllowList:
    """Device and site patterns; an empty side allows all."""

    def __init__(
        self, devices: Sequence[str] = (), sites: Sequence[str] = (), cache_size: int = 100_000
    ) -> None:
        self._devices = _compile(devices)
        self._sites = _compile(sites)
        self._cache: dict[tuple[str, str | None], bool] = {}
        self._cache_size = cache_size

    @property
    def open(self) -> bool:
        """True when everything is allowed."""
        return self._devices is None and self._sites is None

    def permits(self, device_id: str, site: str | None) -> bool:
        key = (device_id, site)
        decision = self._cache.get(key)
        if decision is None:
            decision = (self._devices is None or self._devices.match(device_id) is not None) and (
                self._sites is None or (site is not None and self._sites.match(site) is not None)
            )
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = decision
        return decision
