"""Which worker process takes a message, and where each worker keeps its state.

With ``pipeline.workers`` above one, the daemon runs that many worker processes and gives
each a fixed share of the *sites*: every message of a site goes to the same worker, so a
site's peer groups and gateways stay whole in one process. The share is a stable hash of
the site name (the same in every process and every run); a topic without a ``{site}`` level
is placed by its ``{gateway}``, else by its device.

>>> router = ShardRouter(TopicRouter(["fleet/{site}/{device_id}/{kind}"]), 2)
>>> router.shard("fleet/plant-a/d1/telemetry") == router.shard("fleet/plant-a/d9/status")
True
>>> sorted({router.shard(f"fleet/site-{n}/d1/telemetry") for n in range(20)})
[0, 1]
>>> router.shard("no/such/topic/at/all")
0
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from config.settings import Settings
from service.errors import ConfigError, DecodeError
from service.intake.topics import TopicRouter

SHARD_LEVELS = ("site", "gateway")
"""Topic levels that place a message, in order of preference (else its device id)."""


def shard_of(key: str, count: int) -> int:
    """The worker (``0 .. count-1``) that takes ``key``: CRC-32 of its UTF-8, modulo ``count``.

    >>> shard_of("plant-a", 1), shard_of("plant-a", 4) == shard_of("plant-a", 4)
    (0, True)
    """
    if count <= 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % count


class ShardRouter:
    """Places each message topic on a worker, by its site (see the module docstring).

    A topic that no template matches goes to worker 0, whose pipeline dead-letters it as
    a single process would. Placements are cached per topic (bounded, like the router's).
    """

    def __init__(self, router: TopicRouter, count: int, cache_size: int = 200_000) -> None:
        self.router = router
        self.count = count
        self._cache: dict[str, int] = {}
        self._cache_size = cache_size

    def shard(self, topic: str) -> int:
        found = self._cache.get(topic)
        if found is not None:
            return found
        try:
            match = self.router.match(topic)
        except DecodeError:
            return 0
        key = match.device_id
        for level in SHARD_LEVELS:
            value = match.levels.get(level)
            if value:
                key = value
                break
        found = shard_of(key, self.count)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = found
        return found


def worker_count(settings: Settings, cores: int | None = None) -> int:
    """How many worker processes to run: ``pipeline.workers``, or with 0 one per core.

    One worker means no separate processes at all (the single-process daemon). CoAP and
    LwM2M are served by the single-process daemon only, so ``0`` resolves to one while
    either is enabled and an explicit count above one is refused.

    >>> from config.settings import settings_from_mapping
    >>> worker_count(settings_from_mapping({"pipeline": {"workers": 3}}))
    3
    >>> worker_count(settings_from_mapping({}), cores=4)
    4
    >>> worker_count(settings_from_mapping({"coap": {"enabled": True}}), cores=4)
    1
    """
    configured = settings.pipeline.workers
    udp = settings.coap.enabled or settings.lwm2m.enabled
    if configured == 0:
        return 1 if udp else max(1, cores if cores is not None else (os.cpu_count() or 1))
    if configured > 1 and udp:
        raise ConfigError(
            "pipeline.workers",
            "CoAP and LwM2M are served by a single process: set pipeline.workers = 1 "
            "(or 0) while coap or lwm2m is enabled",
        )
    return configured


def worker_state_path(path: Path, index: int, count: int) -> Path:
    """The state file of worker ``index`` of ``count``, beside the configured one.

    >>> worker_state_path(Path("/var/lib/fw/state.db"), 1, 2).name
    'state.worker-1-of-2.db'
    """
    return path.with_name(f"{path.stem}.worker-{index}-of-{count}{path.suffix}")


def check_state_layout(path: Path, count: int) -> None:
    """Refuse to start when saved state belongs to a different number of workers.

    Sites are placed by ``count``, so state saved by another count holds other sites'
    devices: starting anyway would leave it unread. The error names the files and the
    count they were saved with.
    """
    found: dict[int, list[Path]] = {}
    if path.exists():
        found.setdefault(1, []).append(path)
    for candidate in path.parent.glob(f"{path.stem}.worker-*-of-*{path.suffix}"):
        middle = candidate.name[len(path.stem) + len(".worker-") : len(candidate.name)]
        middle = middle[: len(middle) - len(path.suffix)] if path.suffix else middle
        index, sep, total = middle.partition("-of-")
        if sep and index.isdigit() and total.isdigit():
            found.setdefault(int(total), []).append(candidate)
    other = {saved: files for saved, files in found.items() if saved != count}
    if other:
        saved, files = sorted(other.items())[0]
        names = ", ".join(sorted(str(f) for f in files))
        raise ConfigError(
            "pipeline.workers",
            f"the state in {names} was saved by {saved} worker(s) but {count} are configured; "
            f"set pipeline.workers = {saved}, or move those files away to start afresh",
        )
