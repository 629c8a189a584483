"""The statistical tests of a band against the rest of the fleet and what they compare:
counts per device (lost reports, failed updates) under a one-sided two-proportion z-test,
battery drains by battery type under a one-sided Mann-Whitney U test, and the drain sketch
in which other parts of a split fleet send their drains."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from scipy import stats

DRAIN_SKETCH = 1024
"""Most (drain, count) pairs in a fleet summary; more drains are sent as quantiles."""

Sketch = tuple[tuple[float, int], ...]
"""Battery drains (volts per day) as (value, count) pairs, by value."""


def drain_sketch(pairs: Iterable[tuple[float, int]], limit: int = DRAIN_SKETCH) -> Sketch:
    """(value, count) pairs sorted by value with equal values joined; more than ``limit``
    become ``limit`` quantiles, each the value at the middle of an equal share of the count.

    >>> drain_sketch([(0.2, 1), (0.1, 1), (0.2, 2)])
    ((0.1, 1), (0.2, 3))
    >>> drain_sketch([(float(v), 1) for v in range(10)], limit=2)
    ((2.0, 5), (7.0, 5))
    """
    joined: list[tuple[float, int]] = []
    for value, count in sorted(pairs):
        if joined and joined[-1][0] == value:
            joined[-1] = (value, joined[-1][1] + count)
        else:
            joined.append((value, count))
    if len(joined) <= limit:
        return tuple(joined)
    total = sum(count for _, count in joined)
    out: list[tuple[float, int]] = []
    taken = 0  # counts assigned to quantiles so far
    passed = 0  # counts of the pairs before ``index``
    index = 0
    for share in range(1, limit + 1):
        end = total * share // limit
        if end <= taken:
            continue
        middle = (taken + end) // 2  # the position whose value stands for the share
        while passed + joined[index][1] <= middle:
            passed += joined[index][1]
            index += 1
        out.append((joined[index][0], end - taken))
        taken = end
    return tuple(out)


class _Counts:
    """One (count, out of) pair per device, ``None`` where unknown, with fleet totals;
    ``others``: (devices known, count, out of) of devices elsewhere in the fleet."""

    __slots__ = ("known", "pairs", "total_k", "total_n")

    def __init__(
        self, pairs: list[tuple[int, int] | None], others: Sequence[int] | None = None
    ) -> None:
        self.pairs = pairs
        known = [c for c in pairs if c is not None]
        self.known = len(known)
        self.total_k = sum(c[0] for c in known)
        self.total_n = sum(c[1] for c in known)
        if others is not None:
            self.known += others[0]
            self.total_k += others[1]
            self.total_n += others[2]

    def proportion(self, members: Sequence[int]) -> tuple[float, float, float, float, int] | None:
        """Ratio of rates, one-sided z-test p-value, both rates, and the rest's size."""
        pairs = self.pairs
        mine = [c for c in (pairs[row] for row in members) if c is not None]
        n_theirs = self.known - len(mine)
        if len(mine) < 2 or n_theirs < 2:
            return None
        k1, n1 = sum(c[0] for c in mine), sum(c[1] for c in mine)
        k2, n2 = self.total_k - k1, self.total_n - n1
        if n1 == 0 or n2 == 0 or k1 == 0:
            return None
        p1, p2 = k1 / n1, k2 / n2
        pooled = (k1 + k2) / (n1 + n2)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        if se == 0:
            return None
        z = (p1 - p2) / se
        p_value = float(stats.norm.sf(z))
        ratio = p1 / p2 if p2 > 0 else math.inf
        return ratio, p_value, p1, p2, n_theirs


def battery_type(meta: Mapping[str, str] | None) -> str:
    """What a device's drain is compared within: its ``battery_chemistry``, else its model
    (``""`` when neither is known).

    >>> battery_type({"model": "TH-200", "battery_chemistry": "li_socl2"}), battery_type(None)
    ('li_socl2', '')
    """
    if meta is None:
        return ""
    return meta.get("battery_chemistry") or meta.get("model") or ""


def _drain(
    inside: set[int],
    drained: Mapping[str, Sequence[tuple[int, float]]],
    elsewhere: Mapping[str, Sketch] = {},
) -> tuple[float, float, float, float, int] | None:
    """Battery drain of a band's devices against the rest, battery type by battery type.

    Each drain is divided by the median drain of the devices of its battery type outside
    the band (this detector's and ``elsewhere``'s), so every device is compared only with
    cells of its own kind; then one-sided Mann-Whitney U on those ratios. A type with fewer
    than 3 devices outside the band is left out.
    """
    types = {kind for kind, rows in drained.items() for row, _ in rows if row in inside}
    mine: list[float] = []
    theirs: list[float] = []
    for kind in types:
        own = [d for row, d in drained[kind] if row not in inside]
        outside = own + [v for v, count in elsewhere.get(kind, ()) for _ in range(count)]
        if len(outside) < 3:
            continue
        outside.sort()
        scale = outside[len(outside) // 2]
        if scale <= 0:
            continue
        mine.extend(d / scale for row, d in drained[kind] if row in inside)
        theirs.extend(d / scale for d in outside)
    if len(mine) < 3 or len(theirs) < 3:
        return None
    median_mine = sorted(mine)[len(mine) // 2]
    median_theirs = sorted(theirs)[len(theirs) // 2]
    if median_theirs <= 0 or median_mine <= 0:
        return None
    result = stats.mannwhitneyu(mine, theirs, alternative="greater")
    return (
        median_mine / median_theirs,
        float(result.pvalue),
        median_mine,
        median_theirs,
        len(theirs),
    )
