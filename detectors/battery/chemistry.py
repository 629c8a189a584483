"""Battery chemistries: discharge curves (volts -> percent) and their uncertainty, the
built-in curves (:data:`CHEMISTRIES`), and how a device's chemistry is chosen. Shared by the
battery and power detectors and the simulator.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any


@dataclass(frozen=True, slots=True)
class Chemistry:
    """A battery chemistry: its discharge curve and how its voltage misleads.

    ``curve`` is ``(volts, percent)`` points with ascending volts and non-decreasing percent;
    levels are interpolated linearly between points and clamped outside them.

    >>> c = Chemistry("x", ((3.0, 0.0), (4.0, 100.0)), voltage_sigma_v=0.05)
    >>> c.level(3.5), c.level(5.0), round(c.level_sigma(3.5), 6)
    (50.0, 100.0, 5.0)
    """

    name: str
    curve: tuple[tuple[float, float], ...]
    voltage_sigma_v: float = 0.02
    temp_coef_v_per_c: float = 0.002
    _volts: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _pcts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        points = tuple((float(v), float(p)) for v, p in self.curve)
        if len(points) < 2:
            raise ValueError(f"chemistry {self.name!r}: a curve needs at least two points")
        for (v0, p0), (v1, p1) in pairwise(points):
            if v1 <= v0 or p1 < p0:
                raise ValueError(
                    f"chemistry {self.name!r}: curve volts must ascend and percent not descend"
                )
        if self.voltage_sigma_v < 0:
            raise ValueError(f"chemistry {self.name!r}: voltage_sigma_v must not be negative")
        object.__setattr__(self, "curve", points)
        object.__setattr__(self, "_volts", tuple(v for v, _ in points))
        object.__setattr__(self, "_pcts", tuple(p for _, p in points))

    def level(self, volts: float) -> float:
        """State of charge (%) at ``volts`` (temperature-corrected)."""
        vs = self._volts
        i = bisect_right(vs, volts)
        if i == 0:
            return self._pcts[0]
        if i == len(vs):
            return self._pcts[-1]
        v0 = vs[i - 1]
        p0 = self._pcts[i - 1]
        return p0 + (self._pcts[i] - p0) * (volts - v0) / (vs[i] - v0)

    def volts_at(self, level: float) -> float:
        """The resting voltage at ``level`` percent (the curve read backwards).

        >>> Chemistry("x", ((3.0, 0.0), (4.0, 100.0))).volts_at(25.0)
        3.25
        """
        pcts = self._pcts
        if level <= pcts[0]:
            return self._volts[0]
        if level >= pcts[-1]:
            return self._volts[-1]
        i = bisect_right(pcts, level)
        p0, p1 = pcts[i - 1], pcts[i]
        v0, v1 = self._volts[i - 1], self._volts[i]
        return v0 + (v1 - v0) * (level - p0) / (p1 - p0) if p1 > p0 else v1

    def level_sigma(self, volts: float) -> float:
        """How far the level moves for ``voltage_sigma_v`` either way (% points)."""
        s = self.voltage_sigma_v
        return 0.5 * (self.level(volts + s) - self.level(volts - s))

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any]) -> Chemistry:
        known = {"curve", "voltage_sigma_v", "temp_coef_v_per_c"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"chemistry {name!r}: unknown settings {', '.join(sorted(unknown))}")
        curve = tuple((float(v), float(p)) for v, p in data["curve"])
        return cls(
            name=name,
            curve=curve,
            voltage_sigma_v=float(data.get("voltage_sigma_v", 0.02)),
            temp_coef_v_per_c=float(data.get("temp_coef_v_per_c", 0.002)),
        )


def power_source_settings(values: dict[str, Any]) -> None:
    """Convert the plain-data ``model_chemistry`` and ``charging_sources`` settings shared by
    the battery and power detectors, in place.

    >>> values = {"model_chemistry": {"TH-9": "li_socl2"}, "charging_sources": "mains"}
    >>> power_source_settings(values); values
    {'model_chemistry': {'TH-9': 'li_socl2'}, 'charging_sources': ('mains',)}
    """
    if "model_chemistry" in values:
        values["model_chemistry"] = {
            str(k): str(v) for k, v in dict(values["model_chemistry"]).items()
        }
    if "charging_sources" in values:
        raw = values["charging_sources"]
        values["charging_sources"] = (raw,) if isinstance(raw, str) else tuple(str(x) for x in raw)


def chemistry_name(
    model: str | None,
    meta: Mapping[str, str],
    by_model: Mapping[str, str],
    known: Mapping[str, Chemistry],
    default: str,
) -> str:
    """A device's battery chemistry: configured for its model, else named by its
    ``battery_chemistry`` metadata (when known), else the default.

    >>> chemistry_name("TH-9", {}, {"TH-9": "li_socl2"}, CHEMISTRIES, "li_ion")
    'li_socl2'
    >>> chemistry_name(None, {"battery_chemistry": "nimh"}, {}, CHEMISTRIES, "li_ion")
    'li_ion'
    """
    if model is not None and model in by_model:
        return by_model[model]
    named = meta.get("battery_chemistry")
    if named is not None and named in known:
        return named
    return default


CHEMISTRIES: dict[str, Chemistry] = {
    "li_ion": Chemistry(
        "li_ion",
        ((3.00, 0.0), (3.30, 3.0), (3.50, 8.0), (3.60, 15.0), (3.70, 35.0), (3.80, 55.0),
         (3.90, 70.0), (4.00, 82.0), (4.10, 92.0), (4.20, 100.0)),
        voltage_sigma_v=0.02,
        temp_coef_v_per_c=0.002,
    ),
    "li_socl2": Chemistry(
        "li_socl2",
        ((3.00, 0.0), (3.20, 1.0), (3.35, 3.0), (3.45, 6.0), (3.50, 10.0), (3.55, 25.0),
         (3.60, 70.0), (3.65, 95.0), (3.67, 100.0)),
        voltage_sigma_v=0.02,
        temp_coef_v_per_c=0.0015,
    ),
    "alkaline_2aa": Chemistry(
        "alkaline_2aa",
        ((2.00, 0.0), (2.20, 5.0), (2.40, 15.0), (2.60, 35.0), (2.80, 60.0), (3.00, 85.0),
         (3.20, 100.0)),
        voltage_sigma_v=0.03,
        temp_coef_v_per_c=0.004,
    ),
}  # fmt: skip
