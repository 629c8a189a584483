"""The online novelty scorer and the anomaly detector built on it."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from config.settings import Settings
from detectors import build_detectors
from detectors.anomaly import AnomalyConfig, AnomalyDetector, NoveltyScorer, ScorerConfig
from service.errors import ConfigError
from service.records import Reading, Signal

META = {"model": "PM-10", "site": "plant-a", "zone": "z1"}


def noisy(n: int, rng: random.Random, base: float = 100.0) -> list[float]:
    return [base + 5 * math.sin(i / 10) + rng.gauss(0, 1) for i in range(n)]


def test_warm_up_scores_nothing_and_familiar_values_stay_quiet() -> None:
    scorer = NoveltyScorer()
    scores = [scorer.score(v) for v in noisy(2000, random.Random(1))]
    assert scores[:150] == [0.0] * 150
    assert scorer.warmed_up
    assert sum(s >= 0.5 for s in scores) <= 2  # the odd noise tail, nothing more


def test_a_value_far_outside_the_seen_range_scores_high_once() -> None:
    scorer = NoveltyScorer()
    for v in noisy(500, random.Random(2)):
        scorer.score(v)
    assert scorer.score(160.0) > 0.99
    assert scorer.score(160.0) == 0.0  # learned: the same value is no longer new
    assert scorer.score(161.0) == 0.0  # same cell


def test_within_the_rest_period_only_a_wider_excursion_is_reported() -> None:
    scorer = NoveltyScorer(ScorerConfig(rest=50))
    for v in noisy(300, random.Random(3)):
        scorer.score(v)
    first = scorer.score(130.0)
    quiet = [scorer.score(v) for v in noisy(10, random.Random(4))]
    lesser = scorer.score(86.0)  # new territory below, but less far out than the first
    wider = scorer.score(200.0)
    assert first > 0.5 and quiet == [0.0] * 10
    assert lesser == 0.0
    assert wider > first


def test_scores_never_look_ahead() -> None:
    rng = random.Random(5)
    prefix = [*noisy(400, rng), 150.0, *noisy(100, rng)]
    futures = (noisy(200, rng, base=500.0), noisy(200, rng, base=-50.0))
    runs = []
    for future in futures:
        scorer = NoveltyScorer()
        runs.append([scorer.score(v) for v in prefix + future][: len(prefix)])
    assert runs[0] == runs[1]
    assert max(runs[0]) > 0.5


def test_state_round_trip_continues_identically() -> None:
    rng = random.Random(6)
    head, tail = noisy(400, rng), [*noisy(300, rng), 180.0, 20.0, *noisy(50, rng)]
    scorer = NoveltyScorer()
    for v in head:
        scorer.score(v)
    copy = NoveltyScorer.from_state(orjson.loads(orjson.dumps(scorer.state_dict())), ScorerConfig())
    assert [scorer.score(v) for v in tail] == [copy.score(v) for v in tail]


def test_bad_values_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot score"):
        NoveltyScorer().score(math.nan)
    with pytest.raises(ValueError, match="levels"):
        ScorerConfig(levels=1)
    with pytest.raises(ValueError, match="unknown anomaly settings"):
        AnomalyConfig.from_mapping({"levles": 8})
    with pytest.raises(ConfigError, match=r"detectors\.anomaly"):
        build_detectors(
            Settings.model_validate(
                {"detectors": {"enabled": ["anomaly"], "anomaly": {"threshold": 2.0}}}
            )
        )


def feed(detector: AnomalyDetector, series: dict[str, list[float]]) -> list[Signal]:
    signals: list[Signal] = []
    length = len(next(iter(series.values())))
    for i in range(length):
        t = 1_767_225_600.0 + i * 300.0
        batch = [Reading(d, t, t, {"power_mw": v[i]}, META) for d, v in series.items()]
        signals += detector.process(batch)
    return signals


def test_the_detector_flags_the_device_that_leaves_its_range_and_clears_it() -> None:
    rng = random.Random(7)
    series = {f"ok{i}": noisy(700, rng, base=1000.0) for i in range(5)}
    broken = noisy(700, rng, base=1000.0)
    broken[400:460] = [v * 2.5 for v in broken[400:460]]  # a short, then repaired
    series["pm-bad"] = broken
    detector = AnomalyDetector(AnomalyConfig(rest=100))
    signals = feed(detector, series)
    assert [(s.subject, s.firing) for s in signals] == [
        ("pm-bad/power_mw", True),
        ("pm-bad/power_mw", False),
    ]
    fire, clear = signals
    assert fire.at == 1_767_225_600.0 + 400 * 300.0
    assert fire.evidence["value"] > fire.evidence["seen_high"] and fire.site == "plant-a"
    assert clear.at > fire.at


def test_detector_state_round_trip_and_version_check() -> None:
    rng = random.Random(8)
    series = {"d1": [*noisy(300, rng, base=1000.0), 5000.0, *noisy(20, rng, base=1000.0)]}
    detector = AnomalyDetector()
    head = {"d1": series["d1"][:250]}
    feed(detector, head)
    copy = AnomalyDetector()
    copy.load_state(orjson.loads(orjson.dumps(detector.state_dict())))
    tail = {"d1": series["d1"][250:]}
    assert feed(detector, tail) == feed(copy, tail)
    with pytest.raises(ValueError, match="anomaly state format"):
        copy.load_state({"version": 99})


def test_the_anomaly_detector_is_available_by_name() -> None:
    settings = Settings.model_validate(
        {"detectors": {"enabled": ["anomaly"], "anomaly": {"metrics": ["temperature_c"]}}}
    )
    (detector,) = build_detectors(settings)
    assert isinstance(detector, AnomalyDetector)
    assert detector.config.metrics == ("temperature_c",)
