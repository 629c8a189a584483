"""The online anomaly scorer on the Numenta Anomaly Benchmark (NAB), all three profiles.

Every one of NAB's 58 files is scored row by row, in file order, by a fresh
:class:`detectors.anomaly.NoveltyScorer` with the default configuration (the same for every
file; each value is scored before it is learned). The scores are written in NAB's
``timestamp,anomaly_score`` layout and judged by the independent NAB scorer, which picks one
corpus-wide threshold per profile.

    uv run python bench/nab.py [--nab ../shared/data/nab] [--scorer ../shared/tools/nab_score.py]

Published standard-profile scores for orientation: KNN-CAD 58.0, HTM 70.5, ARTime 74.9.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.anomaly import NoveltyScorer, ScorerConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"


def score_file(
    data_dir: Path, relative: str, out_dir: Path, config: ScorerConfig
) -> tuple[int, float]:
    """Score one data file into ``out_dir/relative``; the rows and the seconds spent."""
    with (data_dir / relative).open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    scorer = NoveltyScorer(config)
    started = time.perf_counter()
    scores = [scorer.score(float(value)) for _, value in rows]
    elapsed = time.perf_counter() - started
    target = out_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "anomaly_score"])
        writer.writerows((ts, f"{s:.9f}") for (ts, _), s in zip(rows, scores, strict=True))
    return len(rows), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nab", type=Path, default=SHARED / "data" / "nab")
    parser.add_argument("--scorer", type=Path, default=SHARED / "tools" / "nab_score.py")
    parser.add_argument("--keep", type=Path, help="write the score files here and keep them")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one scorer setting (sensitivity runs), e.g. rest=75",
    )
    args = parser.parse_args()
    data_dir = args.nab / "data"
    files = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.glob("*/*.csv"))
    if not files:
        sys.exit(f"no NAB data under {data_dir}")
    overrides = dict(item.split("=", 1) for item in args.set)
    config = ScorerConfig(
        **{name: type(getattr(ScorerConfig(), name))(value) for name, value in overrides.items()}
    )
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.keep or Path(scratch)
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(
                pool.map(score_file, [data_dir] * len(files), files, [out_dir] * len(files),
                         [config] * len(files))
            )  # fmt: skip
        report = subprocess.run(
            [sys.executable, str(args.scorer), str(out_dir), "--json", "--data", str(data_dir),
             "--labels", str(args.nab / "labels" / "combined_windows.json")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    result = json.loads(report.stdout)
    rows = sum(n for n, _ in results)
    seconds = sum(s for _, s in results)
    print(f"NAB: {len(files)} files, {result['windows']} windows, {rows:,} rows; "
          f"scorer {config}")  # fmt: skip
    print(f"{'profile':<22}{'score':>8}{'threshold':>11}{'windows hit':>13}{'FP rows':>9}")
    for name, profile in result["profiles"].items():
        print(
            f"{name:<22}{profile['normalised_score']:>8.1f}{profile['threshold']:>11.4g}"
            f"{profile['windows_detected']:>8}/{result['windows']:<4}"
            f"{profile['false_positive_rows']:>9}"
        )
    print(f"cost: {seconds / rows * 1e6:.2f} µs per value (score and learn)")


if __name__ == "__main__":
    main()
