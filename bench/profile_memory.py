"""Where the memory per device goes: traced heap by component, at first sight and warmed up.

The pipeline with every default detector (and the benchmarks' rules) is fed the suite's
5-minute rounds (``bench/suite.py``) for a small and a large fleet; the heap each component's
source files allocated and still hold (``tracemalloc``, one frame) is measured for both, and
the difference, divided by the extra devices, is the component's cost per device: fixed costs
(modules, caches bounded by count) cancel out.

The duplicate window (``ingest.dedupe_capacity`` keys, 500,000 by default) is bounded by its
capacity, not by the number of devices: it is turned off here (``dedupe_capacity = 0``) so
that how full it happens to be does not blur the per-device figures; what it holds at its
capacity is printed on its own.

Traced bytes are what Python objects and buffers take; resident memory (the suite's rows) is
larger by the allocator's overhead and fragmentation.

    uv run python bench/profile_memory.py                      # both: about 25 minutes (tracing is slow)
    uv run python bench/profile_memory.py --stage first --devices 20000 40000
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import suite  # noqa: E402

from config.settings import Settings, settings_from_mapping  # noqa: E402
from service.intake.normalize import DedupeWindow  # noqa: E402

# (component, path fragments); the first component whose fragment is in a file wins
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("detector: drift", ("detectors/drift",)),
    ("detector: connectivity", ("detectors/connectivity/", "detectors/wheel.py")),
    ("detector: power", ("detectors/power/", "detectors/anomaly.py")),
    ("detector: battery", ("detectors/battery/",)),
    ("detector: environment", ("detectors/environment/",)),
    ("detector: firmware", ("detectors/firmware.py",)),
    ("detector: gateway", ("detectors/gateway.py",)),
    ("detector: rules", ("detectors/rules.py",)),
    ("normalizer (metadata, duplicate keys)", ("service/intake/normalize.py", "<normalize plan>")),
    ("topic matches", ("service/intake/topics.py",)),
    ("device registry", ("service/intake/registry.py",)),
    ("alerts", ("service/alerts/lifecycle.py",)),
)

STAGES = {
    # stage -> (rounds of 5-minute readings, default fleet sizes)
    "first": (3, (50_000, 100_000)),
    "warmed": (576, (2_000, 4_000)),
}


def component_of(filename: str) -> str | None:
    """The component a source file's allocations count to (None: the benchmark's own)."""
    for component, fragments in COMPONENTS:
        if any(fragment in filename for fragment in fragments):
            return component
    if "bench/" in filename or "tracemalloc" in filename:
        return None
    return "other (libraries, interpreter)"


def profile_settings() -> Settings:
    """The suite's settings with the duplicate window off (see the module docstring)."""
    return settings_from_mapping(
        {"rules": suite.live_throughput.RULES, "ingest": {"dedupe_capacity": 0}}
    )


def held_by_component(devices: int, rounds: int) -> Counter[str]:
    """Traced bytes each component holds after ``rounds`` rounds from ``devices`` devices."""
    settings = profile_settings()
    size = settings.pipeline.max_batch
    suite.load_first_use(settings)
    pipeline = suite.bare_pipeline(settings)
    metas = suite.device_metas(devices)
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        suite._feed(pipeline, metas, rounds, size)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held: Counter[str] = Counter()
    for stat in after.compare_to(before, "filename"):
        component = component_of(stat.traceback[0].filename)
        if component is not None:
            held[component] += stat.size_diff
    del metas
    return held


def per_device(small: int, large: int, rounds: int) -> dict[str, float]:
    """Each component's traced bytes per extra device, ``large`` devices over ``small``."""
    low = held_by_component(small, rounds)
    high = held_by_component(large, rounds)
    extra = large - small
    return {name: (high[name] - low[name]) / extra for name in set(low) | set(high)}


def window_bytes(capacity: int, devices: int) -> int:
    """Traced bytes of a full duplicate window of ``capacity`` keys over ``devices`` devices."""
    tracemalloc.start(1)
    try:
        window = DedupeWindow(capacity)
        for n in range(capacity + capacity // 4):
            window.add(f"d{n % devices:07d}", n // devices, 1.0e9 + n)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return size


def table(stage: str, sizes: Sequence[int], rows: dict[str, float]) -> str:
    rounds = STAGES[stage][0]
    title = (
        f"{stage}: traced bytes per device, {sizes[1]:,} devices over {sizes[0]:,}, "
        f"{rounds} rounds of 5-minute readings"
    )
    total = sum(rows.values())
    lines = [title, "", "| component | bytes per device | share |", "|---|---:|---:|"]
    for name, value in sorted(rows.items(), key=lambda kv: -kv[1]):
        share = value / total if total else 0.0
        lines.append(f"| {name} | {value:,.0f} | {share:.0%} |")
    lines.append(f"| **all** | **{total:,.0f}** | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=[*STAGES, "both"], default="both")
    parser.add_argument("--devices", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                        help="the two fleet sizes (default: per stage)")  # fmt: skip
    args = parser.parse_args(argv)
    stages = list(STAGES) if args.stage == "both" else [args.stage]
    for stage in stages:
        rounds, default_sizes = STAGES[stage]
        sizes = tuple(args.devices) if args.devices else default_sizes
        print(table(stage, sizes, per_device(sizes[0], sizes[1], rounds)), flush=True)
        print()
    capacity = settings_from_mapping({}).ingest.dedupe_capacity
    full = window_bytes(capacity, 100_000)
    print(f"duplicate window at its capacity ({capacity:,} keys over 100,000 devices): "
          f"{full / 2**20:.1f} MiB traced, fixed (not per device)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
