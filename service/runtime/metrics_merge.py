"""One ``/metrics`` for many processes: the same families from each, merged sample by sample.

With worker processes, each worker keeps its own :class:`~service.alerts.metrics.FleetMetrics`
over the devices it has; the coordinator keeps the transport's. A scrape collects every
process's families and merges samples with the same name and labels:

- counters, histograms (buckets, sums and counts) and most gauges **add up**: readings,
  devices, active alerts, queue depths and per-site or per-gateway gauges (a site is in
  one worker only, so its samples simply pass through);
- a few gauges are not amounts: ``fleetwatch_mqtt_connected`` takes the **minimum** (1 only
  while every connection is up), and the checkpoint duration takes the **maximum**
  (:data:`MAXIMUM_GAUGES`); ``_created`` timestamps the earliest. Gauges drawn from the detectors' reports are set by the
  coordinator alone, from the reports merged across workers.

>>> from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
>>> def process(readings, connected):
...     registry = CollectorRegistry()
...     Counter("fleetwatch_readings", "r", ["result"], registry=registry).labels(
...         result="accepted").inc(readings)
...     Gauge("fleetwatch_mqtt_connected", "c", registry=registry).set(connected)
...     return list(registry.collect())
>>> merged = merge_families([process(3, 1), process(4, 0)])
>>> text = generate_latest(FamiliesCollector(lambda: merged)).decode()
>>> 'fleetwatch_readings_total{result="accepted"} 7.0' in text
True
>>> "fleetwatch_mqtt_connected 0.0" in text
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

MINIMUM_GAUGES = frozenset({"fleetwatch_mqtt_connected"})
"""Gauges that are 1 only while every process says 1."""

MAXIMUM_GAUGES = frozenset({"fleetwatch_checkpoint_duration_seconds"})
"""Gauges that are a duration: the slowest process's value."""


def _combine(name: str, kind: str, sample: str, old: float, new: float) -> float:
    if sample.endswith("_created"):
        return min(old, new)  # when the first process started counting
    if kind == "gauge":
        if name in MINIMUM_GAUGES:
            return min(old, new)
        if name in MAXIMUM_GAUGES:
            return max(old, new)
    return old + new


def merge_families(processes: Sequence[Iterable[Metric]]) -> list[Metric]:
    """Merge each process's metric families (as ``registry.collect()`` yields them).

    Families keep the order in which they first appear; samples keep their first
    appearance order too, so the exposition is stable from scrape to scrape.
    """
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in processes:
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            table = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = table.get(key)
                table[key] = (
                    sample.value
                    if old is None
                    else _combine(family.name, family.type, sample.name, old, sample.value)
                )
    for name, target in merged.items():
        target.samples = [
            Sample(sample_name, dict(labels), value)
            for (sample_name, labels), value in values[name].items()
        ]
    return list(merged.values())


class FamiliesCollector(Collector):
    """A collector that yields whatever families ``source`` returns (already merged)."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source()
