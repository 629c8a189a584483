"""The performance suite's cheapest pieces on tiny sizes, so it keeps working (no timing bars)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "bench" / "suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_suite"] = module
    spec.loader.exec_module(module)
    return module


def test_every_default_detector_has_a_positive_cost(suite: ModuleType) -> None:
    settings = suite.suite_settings()
    costs = suite.detector_costs(settings, 200, rounds=2)
    assert [c.name for c in costs] == list(settings.detectors.enabled)
    for cost in costs:
        assert cost.per_reading_us > 0, cost
        assert cost.tick_ms >= 0, cost


def test_fleet_round_is_time_ordered_and_covers_every_device(suite: ModuleType) -> None:
    metas = suite.device_metas(300, gateways=7)
    readings = suite.fleet_round(metas, 4)
    assert len({r.device_id for r in readings}) == 300
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(readings))
    assert {r.meta["gateway"] for r in readings} == {f"gw{i:04d}" for i in range(7)}
    assert all(r.seq == 4 for r in readings)


def test_connectivity_analysis_counts_what_it_fed(suite: ModuleType) -> None:
    result = suite.connectivity_analysis(100, days=2 * 300 / 86_400, gateways=5)
    assert result.readings == 200
    assert result.seconds > 0
    assert result.connectivity_report_ms >= 0 and result.gateway_report_ms >= 0


def test_memory_per_device_knows_every_device(suite: ModuleType) -> None:
    result = suite.memory_per_device(200, rounds=2)
    assert result["devices"] == 200
    assert result["readings_per_s"] > 0


def test_alert_latencies_from_mosquitto_sub_lines(suite: ModuleType) -> None:
    lines = [
        '1767225601.250000000 {"kind": "rule.hot", "state": "firing",'
        ' "updated_at": "2026-01-01T00:00:01.000Z", "resolved_at": null}',
        "1767225601.300000000 ",  # the retained clear of a resolved alert
        '1767225602.100000000 {"kind": "rule.hot", "state": "resolved",'
        ' "updated_at": "2026-01-01T00:00:01.000Z", "resolved_at": "2026-01-01T00:00:02.000Z"}',
        '1767225602.200000000 {"kind": "device_silent", "state": "firing",'
        ' "updated_at": "2026-01-01T00:00:00.000Z", "resolved_at": null}',
    ]
    latencies = suite.alert_latencies(lines, "rule.hot")
    assert latencies == pytest.approx([0.25, 0.1], abs=1e-6)
    assert suite.percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_table_has_one_row_per_figure_with_medians_and_ratios(suite: ModuleType) -> None:
    rows = [
        suite.Row("drain", "msg/s", [100.0, 300.0, 200.0], throughput=True),
        suite.Row("pipeline", "readings/s", [50.0, 40.0, 60.0], throughput=True),
        suite.Row("tick", "ms", [1.5]),
        suite.Row("skipped", "KiB", note="skipped: too big"),
    ]
    table = suite.format_table(rows, baseline=200.0).splitlines()
    assert table[0].startswith("| figure | median |")
    assert len(table) == 2 + len(rows)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert cells[0][:5] == ["drain", "200", "msg/s", "3 (100-300)", "1.00"]
    assert cells[1][1] == "50.0" and cells[1][4] == "0.25"
    assert cells[2][1:5] == ["1.50", "ms", "1", ""]
    assert cells[3][1] == "n/a" and cells[3][5] == "skipped: too big"
    assert "cores" in suite.machine() and "Python 3." in suite.machine()


@pytest.fixture(scope="module")
def profile_live() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(
        "bench_profile_live", ROOT / "bench" / "profile_live.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_profile_live"] = module
    spec.loader.exec_module(module)
    return module


def test_profile_shares_charge_builtins_to_their_callers(profile_live: ModuleType) -> None:
    process = ("/x/detectors/drift/detector.py", 10, "process")
    split = ("/x/service/intake/normalize.py", 20, "_split")
    get = ("~", 0, "<method 'get' of 'dict' objects>")
    stats = {
        process: (1, 1, 3.0, 5.0, {}),
        split: (1, 1, 1.0, 2.0, {}),
        # dict.get: 2 s in all, 1.5 s of it called from drift, 0.5 s from the normalizer
        get: (9, 9, 2.0, 2.0, {process: (6, 6, 1.5, 1.5), split: (3, 3, 0.5, 0.5)}),
    }
    shares = {share.component: share.seconds for share in profile_live.shares(stats)}
    assert shares == {"detector: drift": 4.5, "decode + normalize": 1.5}
    fractions = [share.fraction for share in profile_live.shares(stats)]
    assert fractions == [0.75, 0.25]
