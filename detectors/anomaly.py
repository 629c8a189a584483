"""Online univariate anomaly scoring: a value in territory the series has never visited.

:class:`NoveltyScorer` scores one stream of numbers, strictly online (each value is scored
before it is learned, nothing looks ahead):

1. **Warm-up.** The first ``warmup`` values set a grid: their range is cut into
   ``levels`` - 1 equal steps and the grid extends beyond it in both directions. Warm-up
   values score 0.
2. **Novelty.** A value whose grid cell has been seen fewer than ``min_count`` times is
   novel. Its score is ``0.5 + 0.5 * tanh(d)``, where ``d`` is how far it lies beyond the
   most extreme value seen so far, in half-ranges of the warm-up data (0 for a novel cell
   inside the seen extremes). Values in familiar cells score 0.
3. **Peaks only.** A score is reported only when it is higher than every score of the
   previous ``rest`` values; otherwise 0. One event then gives one detection, and a later,
   wider excursion inside the rest period is still reported.

A point is anomalous when its score reaches ``threshold`` (0.5: every novel value). The
same configuration, unchanged, is scored on the Numenta Anomaly Benchmark by
``bench/nab.py``.

:class:`AnomalyDetector` runs one scorer per device and metric (``metrics``, default the
power draw and current) and raises ``reading_anomaly`` when a score reaches its own
``threshold`` (0.75 by default: clearly beyond the range), with the value, the score and the
range the device had shown; the alert clears after ``rest`` ordinary values.

>>> scorer = NoveltyScorer()
>>> scores = [scorer.score(10.0 + (i % 7)) for i in range(300)]
>>> max(scores)
0.0
>>> round(scorer.score(40.0), 3)
1.0
>>> scorer.score(40.0)
0.0
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from detectors.base import reject_unknown
from service.records import Reading, Severity, Signal, iso_utc


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """How a :class:`NoveltyScorer` quantises, remembers and reports."""

    levels: int = 8
    warmup: int = 150
    rest: int = 100
    min_count: int = 1
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.levels < 2 or self.warmup < 2 or self.rest < 0 or self.min_count < 1:
            raise ValueError("levels and warmup must be at least 2, rest >= 0, min_count >= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")


class NoveltyScorer:
    """Scores each value in [0, 1] before learning it; see the module documentation."""

    __slots__ = ("_buffer", "_cells", "_center", "_config", "_half", "_high", "_index", "_low",
                 "_peaks", "_step")  # fmt: skip

    def __init__(self, config: ScorerConfig | None = None) -> None:
        self._config = config or ScorerConfig()
        self._buffer: array[float] | None = array("d")  # warm-up values, 8 bytes each
        self._center = 0.0
        self._half = 1.0
        self._step = 1.0
        self._low = math.inf
        self._high = -math.inf
        self._cells: dict[int, int] = {}
        self._index = 0
        # (index, score) of recent non-zero scores: the rest period's running maximum
        self._peaks: list[tuple[int, float]] = []  # few, and usually none

    @property
    def warmed_up(self) -> bool:
        return self._buffer is None

    @property
    def seen_range(self) -> tuple[float, float]:
        """The lowest and highest value learned so far."""
        return self._low, self._high

    def score(self, value: float) -> float:
        """The anomaly score of ``value`` given everything before it; then learn it."""
        if not math.isfinite(value):
            raise ValueError(f"cannot score {value!r}")
        self._index += 1
        if self._buffer is not None:
            self._buffer.append(value)
            if len(self._buffer) >= self._config.warmup:
                self._set_grid(self._buffer)
            return 0.0
        cell = self._cell(value)
        count = self._cells.get(cell, 0)
        raw = 0.0
        if count < self._config.min_count:
            beyond = max(value - self._high, self._low - value, 0.0) / self._half
            raw = 0.5 + 0.5 * math.tanh(beyond)
        self._cells[cell] = count + 1
        self._low = min(self._low, value)
        self._high = max(self._high, value)
        return self._peak(raw)

    def _set_grid(self, values: Sequence[float]) -> None:
        low, high = min(values), max(values)
        span = high - low
        if span <= 0.0:
            span = max(abs(low) * 0.1, 1.0)
        self._center = (low + high) / 2.0
        self._half = span / 2.0
        self._step = span / (self._config.levels - 1)
        self._buffer = None
        for value in values:
            cell = self._cell(value)
            self._cells[cell] = self._cells.get(cell, 0) + 1
        self._low, self._high = low, high

    def _cell(self, value: float) -> int:
        return math.floor((value - self._center + self._half) / self._step)

    def _peak(self, raw: float) -> float:
        peaks, index, rest = self._peaks, self._index, self._config.rest
        while peaks and peaks[0][0] <= index - rest - 1:
            peaks.pop(0)
        recent = max((score for _, score in peaks), default=0.0)
        if raw > 0.0:
            peaks.append((index, raw))
        return raw if raw > recent else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": None if self._buffer is None else list(self._buffer),
            "grid": [self._center, self._half, self._step],
            "seen": [self._low, self._high] if self._buffer is None else None,
            "cells": [[cell, count] for cell, count in self._cells.items()],
            "index": self._index,
            "peaks": [list(peak) for peak in self._peaks],
        }

    @classmethod
    def warming(cls, values: Sequence[float], config: ScorerConfig) -> NoveltyScorer:
        """A scorer that has scored ``values`` (at most ``warmup`` of them, all finite), the
        same as one fed them through :meth:`score`.

        >>> config = ScorerConfig(warmup=3)
        >>> fed = NoveltyScorer(config)
        >>> _ = [fed.score(v) for v in (1.0, 2.0, 4.0)]
        >>> NoveltyScorer.warming([1.0, 2.0, 4.0], config).state_dict() == fed.state_dict()
        True
        """
        if len(values) > config.warmup:
            raise ValueError(f"at most {config.warmup} warm-up values")
        scorer = cls(config)
        for value in values:
            if not math.isfinite(value):
                raise ValueError(f"cannot score {value!r}")
        scorer._index = len(values)
        scorer._buffer = array("d", values)
        if len(values) >= config.warmup:
            scorer._set_grid(scorer._buffer)
        return scorer

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: ScorerConfig) -> NoveltyScorer:
        scorer = cls(config)
        buffer = state["buffer"]
        scorer._buffer = None if buffer is None else array("d", (float(v) for v in buffer))
        scorer._center, scorer._half, scorer._step = (float(v) for v in state["grid"])
        if state["seen"] is not None:
            scorer._low, scorer._high = float(state["seen"][0]), float(state["seen"][1])
        scorer._cells = {int(cell): int(count) for cell, count in state["cells"]}
        scorer._index = int(state["index"])
        scorer._peaks = [(int(i), float(s)) for i, s in state["peaks"]]
        return scorer


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """The detector's scorer settings; its alert threshold asks for a value clearly beyond
    the seen range (0.75: about half the warm-up range past the extremes), not merely a
    new tail value of a noisy but steady series."""

    metrics: tuple[str, ...] = ("power_mw", "current_a")
    levels: int = 8
    warmup: int = 150
    rest: int = 100
    min_count: int = 1
    threshold: float = 0.75

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AnomalyConfig:
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "anomaly")
        values = dict(data)
        if "metrics" in values:
            values["metrics"] = tuple(str(m) for m in values["metrics"])
        config = cls(**values)
        config.scorer()  # validates the scorer's part
        return config

    def scorer(self) -> ScorerConfig:
        return ScorerConfig(self.levels, self.warmup, self.rest, self.min_count, self.threshold)


class _Series:
    __slots__ = ("quiet", "scorer")

    def __init__(self, scorer: NoveltyScorer) -> None:
        self.scorer = scorer
        self.quiet = -1  # ordinary values since the last anomaly; -1 when not flagged


class AnomalyDetector:
    """A :class:`NoveltyScorer` per device and metric, alerting on novel values."""

    name = "anomaly"
    STATE_VERSION = 1

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self._scorer_config = self.config.scorer()
        self._series: dict[tuple[str, str], _Series] = {}
        self._places: dict[str, tuple[str | None, str | None]] = {}

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        signals: list[Signal] = []
        metrics = self.config.metrics
        for reading in batch:
            if reading.late:
                continue
            for metric in metrics:
                value = reading.metrics.get(metric)
                if value is None or not math.isfinite(value):
                    continue
                key = (reading.device_id, metric)
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = _Series(NoveltyScorer(self._scorer_config))
                    self._places[reading.device_id] = (None, None)
                meta = reading.meta
                if "site" in meta or "zone" in meta:
                    self._places[reading.device_id] = (meta.get("site"), meta.get("zone"))
                low, high = series.scorer.seen_range
                score = series.scorer.score(value)
                if score >= self.config.threshold:
                    fresh = series.quiet < 0
                    series.quiet = 0
                    if fresh:
                        signals.append(self._firing(reading, metric, value, score, low, high))
                elif series.quiet >= 0:
                    series.quiet += 1
                    if series.quiet >= self.config.rest:
                        series.quiet = -1
                        signals.append(self._cleared(reading, metric))
        return signals

    def _firing(self, reading: Reading, metric: str, value: float, score: float, low: float,
                high: float) -> Signal:  # fmt: skip
        site, zone = self._places.get(reading.device_id, (None, None))
        return Signal(
            kind="reading_anomaly", subject=f"{reading.device_id}/{metric}", firing=True,
            at=reading.ts, severity=Severity.WARNING,
            summary=(f"{reading.device_id}: {metric} = {value:.4g}, outside anything it has "
                     f"shown ({low:.4g} to {high:.4g})"),
            evidence={"device": reading.device_id, "metric": metric, "value": value,
                      "score": round(score, 4), "seen_low": low, "seen_high": high,
                      "since": iso_utc(reading.ts)},
            action=("Check the device: a value it has never produced before often means a "
                    "fault in the sensor, the load it measures or its power supply."),
            site=site, zone=zone,
        )  # fmt: skip

    def _cleared(self, reading: Reading, metric: str) -> Signal:
        site, zone = self._places.get(reading.device_id, (None, None))
        return Signal(
            kind="reading_anomaly", subject=f"{reading.device_id}/{metric}", firing=False,
            at=reading.ts, summary=f"{reading.device_id}: {metric} back in familiar territory",
            site=site, zone=zone,
        )  # fmt: skip

    def tick(self, now: float) -> list[Signal]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "series": [
                [device, metric, series.quiet, series.scorer.state_dict()]
                for (device, metric), series in self._series.items()
            ],
            "places": {device: list(place) for device, place in self._places.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"anomaly state format {state.get('version')} is not 1")
        self._series = {}
        for device, metric, quiet, scorer in state["series"]:
            series = _Series(NoveltyScorer.from_state(scorer, self._scorer_config))
            series.quiet = int(quiet)
            self._series[(device, metric)] = series
        self._places = {device: (p[0], p[1]) for device, p in state["places"].items()}
