"""A finding in plain words: the numbers of a band that stands out, the sentence that
says it and the advice for its zone."""

from __future__ import annotations

import math
from typing import Any


def _p_value(finding: dict[str, Any]) -> float:
    p_value: float = finding["p_value"]
    return p_value


def _finding(site: str, zone: str, metric: str, band: str, outcome: str, ratio: float,
             p_value: float, mine: float, theirs: float, n: int, n_rest: int) -> dict[str, Any]:  # fmt: skip
    if outcome == "battery drain":
        numbers = (f"{mine:.2f} vs {theirs:.2f} times the median drain of the same battery "
                   "type elsewhere")
        verb = "drain their batteries"
        advice = (
            "batteries will need replacing sooner: plan shorter replacement rounds there, "
            "or shade/ventilate the devices"
        )
    elif outcome == "lost reports":
        numbers = f"{mine:.1%} vs {theirs:.1%} of reports lost"
        verb = "lose reports"
        advice = "check the radio path there (heat and machinery degrade links)"
    else:
        numbers = f"{mine:.1%} vs {theirs:.1%} of updates failed"
        verb = "fail updates"
        advice = "schedule updates when conditions there are milder, and check power during updates"
    text = (f"Devices in {site}/{zone} with {band} {verb} {ratio:.1f}x more than "
            f"the rest of the fleet ({numbers}; n={n} vs {n_rest}; p={p_value:.2g})")  # fmt: skip
    return {
        "site": site, "zone": zone, "zone_subject": f"{site}/{zone}", "metric": metric,
        "band": band, "outcome": outcome, "ratio": round(ratio, 2) if math.isfinite(ratio) else None,
        "p_value": p_value, "value": mine, "rest_value": theirs, "n": n, "n_rest": n_rest,
        "text": text, "recommendation": f"{site}/{zone}: {advice}.",
    }  # fmt: skip
