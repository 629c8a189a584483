"""Fleet-wide knowledge for detectors that see only part of the fleet.

With ``pipeline.workers`` above one, each worker process runs every detector over its own
sites (:mod:`service.runtime.workers`). A detector whose *signals* compare a device with devices
elsewhere in the fleet (its model, its radio technology, "the rest of the fleet") would
then compare it with its worker's devices only. Such a detector offers two methods and one
static method:

- ``fleet_summary() -> summary``: what its own devices add to the fleet-wide knowledge, as
  picklable plain data of counts, sums and sets (never statistics derived from them), of a
  size bounded by models, versions and bands, never by devices;
- ``merge_fleet_summaries(summaries) -> summary`` (static): several summaries as one;
- ``apply_fleet_summary(others)``: the merged summary of every *other* worker, which it
  combines with its own devices whenever it compares; each call replaces the previous one.

The coordinator runs an exchange every ``pipeline.tick_interval_s``: it asks every worker
for its summaries (``facts.summaries``), merges for each worker those of all the others
(:func:`others_for`) and hands them back (``facts.apply``); :func:`exchange` does all three.
In single-process mode nothing calls them: a detector that was never given a summary judges
exactly as before. What a detector was given is not saved with its state: the next exchange
after a restart brings it back, and until then it judges over its own devices.

Timing. A worker knows the others' devices as of the last exchange, so what happened
elsewhere since then (a version first installed in another worker a second ago) is not yet
known: the comparisons converge, after an exchange and with no new data, to those one
detector over the whole fleet makes, exactly except where noted below. Summaries that
visit every device are made afresh less often than the exchange runs (power: its weights
once per ``bucket_s`` of the tick clock; environment: once per sixtieth of
``evaluate_every_s``, and only after new readings).

Wiring. In a worker, these calls sit beside the others of
:func:`service.runtime.workers.worker_calls`; the coordinator runs :func:`exchange` every
``pipeline.tick_interval_s`` (a failed round is skipped: the detectors keep what they were
given last).

Which signals depend on devices at other sites, detector by detector, and what is done:

- ``firmware``: ``firmware_unexpected_change`` gives the reason "version never seen for this
  model" and is CRITICAL when the new version had never been seen on any device of the same
  model (``_seen``). **Exchanged**: the versions seen per model (sets); a version counts as
  seen when any worker had seen it by the last exchange. Exact after an exchange. Update
  outcomes per model, site, path and protocol are in the report only (merged exactly by
  :mod:`service.runtime.report_merge`); no signal compares a version's failures with its model's.
- ``power``: the ``fleet_outlier`` shape of ``power_anomaly`` (own baseline at least
  ``fleet_ratio`` times the baseline of its model and mode, once ``fleet_min_devices``
  devices were judged against it), its clearing and the ``model_baseline`` evidence.
  **Exchanged**: per (model, mode, source), devices judged, and the baseline's weight
  (devices that fed it within ``baseline_half_life_h``, i.e. its share of the model's
  points) and weight times baseline. The device count is exact; the baseline is the weighted
  mean of the workers' baselines, each of which forgets as fast per point of its own as one
  detector does over the whole model's points arriving meanwhile. One detector's baseline
  is an exponentially weighted mean over points in arrival order, which depends on how the
  workers' points interleave, so the two agree closely (on a simulated fleet in two
  workers: within 0.2 % for half the judgements, 1 % for nine in ten) but not to the last
  digit: decisions agree unless a level is that close to the threshold.
- ``environment``: ``environment_risk`` tests a zone's environmental band against the rest
  of the fleet: lost reports and update failures (two-proportion z-tests on fleet totals),
  battery drain (Mann-Whitney U against every other device's drain), Bonferroni-corrected
  over the fleet's number of candidate bands. **Exchanged**: candidate bands counted, lost
  and expected reports and failed and attempted updates summed (with the number of devices
  known), and each battery type's drains as (value, count) pairs (a drain is judged
  relative to its type's fleet-wide median). Exact after an exchange while the other
  workers' drains have at most ``DRAIN_SKETCH`` (1024) distinct values; beyond that they are
  sent as that many equal-count quantiles and the drain test is approximate. Its report's
  ``findings`` become fleet-wide too; ``maintenance_by_stress[].vs_fleet_median`` (the
  median stress of all devices, report only) is not exchanged.
- ``connectivity``: every device signal (offline, intermittent, signal degrading) uses the
  device's own arrivals only. ``gateway_down`` counts the silent devices behind a gateway:
  devices of one gateway in several workers (a gateway serving several sites, or devices
  whose topics name no site, placed by gateway or device) split its tally. Not exchanged: a gateway outage is
  judged on the tally of this very tick, which an exchange one interval late cannot give
  (it would raise or clear outages late); gateways are local to a site. Patterns by
  technology (against the rest of the fleet), zone and hour are in the report only (merged
  by :mod:`service.runtime.report_merge`, ``by_technology`` approximately).
- ``gateway``: a gateway is overloaded against its site's mean load and imbalance is per
  site: a site is in one worker. Gateways that report no site form one group (site ``""``)
  per worker. Not exchanged, for the same reason as above.
- ``battery``: per device only: its own regression, its chemistry from configuration or
  metadata (no curve is learned across devices). Nothing to exchange.
- ``anomaly``, ``rules``: per device (and metric, rule) only. Nothing to exchange.
- ``drift``: peer groups are per ``group_by`` (site and zone by default, so in one worker;
  a ``group_by`` without ``site`` splits groups over workers, whose consensus per time
  bucket no summary can carry), and the correlation of drift rates with the environment
  (Mann-Whitney against the rest of the fleet) is in the report only. Not exchanged.
- ``connectivity.history``: an analysis of stored history, not a pipeline detector.

>>> from types import SimpleNamespace
>>> from detectors.firmware import FirmwareDetector
>>> from service.records import Reading
>>> def worker():
...     return SimpleNamespace(pipeline=SimpleNamespace(detectors=[FirmwareDetector()]))
>>> workers = [worker(), worker()]
>>> def reading(device, version, ts):
...     return Reading(device, ts, ts, {}, {"model": "TH-200", "firmware": version})
>>> _ = workers[0].pipeline.detectors[0].process([reading("a1", "1.4.0", 0.0),
...                                               reading("a2", "1.5.0", 0.0)])
>>> _ = workers[1].pipeline.detectors[0].process([reading("b1", "1.4.0", 0.0)])
>>> per_worker = [WORKER_CALLS["facts.summaries"](w) for w in workers]
>>> for index, w in enumerate(workers):
...     _ = WORKER_CALLS["facts.apply"](w, others_for(index, per_worker))
>>> [s.evidence["reasons"] for s in workers[1].pipeline.detectors[0].process(
...     [reading("b1", "1.5.0", 60.0)])]
[['no campaign targets this version']]
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

EXCHANGED: dict[str, str] = {
    "firmware": "detectors.firmware:FirmwareDetector",
    "power": "detectors.power:PowerDetector",
    "environment": "detectors.environment:EnvironmentDetector",
}
"""Detector name -> the class (``module:Class``) whose ``merge_fleet_summaries`` merges its
summaries."""


def _merger(name: str) -> Callable[[Sequence[Any]], Any]:
    where = EXCHANGED.get(name)
    if where is None:
        known = ", ".join(EXCHANGED)
        raise ValueError(f"detector {name!r} has no fleet summary (known: {known})")
    module, _, cls = where.partition(":")
    detector = getattr(importlib.import_module(module), cls)
    merge: Callable[[Sequence[Any]], Any] = detector.merge_fleet_summaries
    return merge


def merge_summaries(name: str, summaries: Sequence[Any]) -> Any:
    """The summaries of detector ``name`` from several workers as one (none: an empty one).

    >>> merged = merge_summaries("firmware", [{"M": frozenset({"1.0"})}, {"M": frozenset({"2.0"})}])
    >>> sorted(merged["M"])
    ['1.0', '2.0']
    >>> merge_summaries("power", [])
    {}
    """
    return _merger(name)(summaries)


def others_for(index: int, per_worker: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """For worker ``index``: per detector name, the merged summaries of every other worker.

    ``per_worker`` holds each worker's ``facts.summaries`` answer, in worker order. Every
    name some worker summarised is present (merged from no summary when only ``index`` has
    it); names this module does not know are left out.

    >>> per_worker = [{"firmware": {"M": frozenset({"1.0"})}},
    ...               {"firmware": {"M": frozenset({"1.1"})}},
    ...               {"firmware": {"N": frozenset({"3.0"})}}]
    >>> others_for(0, per_worker)
    {'firmware': {'M': frozenset({'1.1'}), 'N': frozenset({'3.0'})}}
    """
    names = dict.fromkeys(name for summaries in per_worker for name in summaries)
    return {
        name: merge_summaries(
            name,
            [
                summaries[name]
                for other, summaries in enumerate(per_worker)
                if other != index and name in summaries
            ],
        )
        for name in names
        if name in EXCHANGED
    }


# -- the worker side ----------------------------------------------------------------------


def _summaries(daemon: Any) -> dict[str, Any]:
    summaries: dict[str, Any] = {}
    for detector in daemon.pipeline.detectors:
        summarise = getattr(detector, "fleet_summary", None)
        if summarise is None or detector.name not in EXCHANGED:
            continue
        try:
            summaries[detector.name] = summarise()
        except Exception:  # one detector's bug must not stop the others' exchange
            log.exception("detector %s could not summarise its devices", detector.name)
    return summaries


def _apply(daemon: Any, others: Mapping[str, Any]) -> list[str]:
    applied: list[str] = []
    for detector in daemon.pipeline.detectors:
        apply = getattr(detector, "apply_fleet_summary", None)
        if apply is None or detector.name not in others:
            continue
        try:
            apply(others[detector.name])
        except Exception:
            log.exception("detector %s could not take the fleet summary", detector.name)
        else:
            applied.append(detector.name)
    return applied


WORKER_CALLS: dict[str, Callable[..., Any]] = {
    "facts.summaries": _summaries,
    "facts.apply": _apply,
}
"""What the coordinator calls in each worker, as ``fn(daemon, *args)``:

- ``facts.summaries()``: ``{detector name: its fleet_summary()}`` for the worker's
  detectors that have one;
- ``facts.apply(others)``: gives each detector ``others[its name]`` (the merged summary of
  every other worker); returns the names of the detectors that took one.
"""


# -- the coordinator side -----------------------------------------------------------------


async def exchange(
    call_all: Callable[[str, tuple[Any, ...]], Awaitable[list[Any]]],
    call_one: Callable[[int, str, tuple[Any, ...]], Awaitable[Any]],
) -> list[dict[str, Any]]:
    """One exchange: every worker's summaries, then each worker its others'.

    ``call_all(name, args)`` calls one of :data:`WORKER_CALLS` in every worker and returns
    the answers in worker order; ``call_one(index, name, args)`` calls it in worker
    ``index``. Returns what each worker was given.

    >>> from types import SimpleNamespace
    >>> from detectors.power import PowerDetector
    >>> workers = [SimpleNamespace(pipeline=SimpleNamespace(detectors=[PowerDetector()]))
    ...            for _ in range(2)]
    >>> async def call_all(name, args):
    ...     return [WORKER_CALLS[name](w, *args) for w in workers]
    >>> async def call_one(index, name, args):
    ...     return WORKER_CALLS[name](workers[index], *args)
    >>> asyncio.run(exchange(call_all, call_one))
    [{'power': {}}, {'power': {}}]
    """
    per_worker = await call_all("facts.summaries", ())
    given = [others_for(index, per_worker) for index in range(len(per_worker))]
    await asyncio.gather(
        *(call_one(index, "facts.apply", (others,)) for index, others in enumerate(given))
    )
    return given


__all__: Sequence[str] = (
    "EXCHANGED",
    "WORKER_CALLS",
    "exchange",
    "merge_summaries",
    "others_for",
)
