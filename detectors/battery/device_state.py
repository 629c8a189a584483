"""The battery detector's per-device state: a fixed array of unboxed floats, read and
written by name, plus a bounded battery swap history.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from typing import overload

_NEG_INF = -math.inf  # one shared float for every device's "nothing yet"

# the persisted float fields of a device, in order: their places in ``_Device.f``
_FLOATS = (
    "b_start", "b_end", "b_tsum", "b_top", "b_sum", "first_t", "last_t", "w", "w2", "mt",
    "my", "ctt", "cty", "cyy", "scale", "drift", "f0_level", "f1_level", "f1_t", "obs_level",
    "obs_v", "temp", "last_ts",
)  # fmt: skip
(_B_START, _B_END, _B_TSUM, _B_TOP, _B_SUM, _FIRST_T, _LAST_T, _W, _W2, _MT, _MY, _CTT, _CTY,
 _CYY, _SCALE, _DRIFT, _F0_LEVEL, _F1_LEVEL, _F1_T, _OBS_LEVEL, _OBS_V, _TEMP,
 _LAST_TS) = range(len(_FLOATS))  # fmt: skip
_NAN = math.nan
# a new device's floats (see _Device)
_FRESH = array("d", [_NAN, _NAN, 0.0, _NEG_INF, 0.0, _NAN, _NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                     0.0, _NAN, 0.0, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NEG_INF])  # fmt: skip


class _Float:
    """One of a device's floats, read and written by name (kept unboxed in ``_Device.f``)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    @overload
    def __get__(self, device: None, owner: type) -> _Float: ...
    @overload
    def __get__(self, device: _Device, owner: type) -> float: ...
    def __get__(self, device: _Device | None, owner: type) -> float | _Float:
        return self if device is None else device.f[self.index]

    def __set__(self, device: _Device, value: float) -> None:
        device.f[self.index] = value


class _Device:
    """Per-device state: a fixed number of floats plus a bounded swap history.

    The floats (``_FLOATS``) live unboxed in one array, 8 bytes each; the hot path indexes
    it, the rest reads and writes them by name.
    """

    __slots__ = (
        "b_cnt", "b_n", "b_pct", "charging", "chemistry", "f", "meta", "model", "n", "rejects",
        "severity", "site", "swaps", "zone",
    )  # fmt: skip

    b_start = _Float(_B_START)
    b_end = _Float(_B_END)
    b_tsum = _Float(_B_TSUM)  # sum of the open bucket's times
    b_top = _Float(_B_TOP)  # highest value (% or corrected V) in the bucket
    b_sum = _Float(_B_SUM)  # sum of the values within the sag margin of the top
    first_t = _Float(_FIRST_T)
    last_t = _Float(_LAST_T)  # days
    w = _Float(_W)
    w2 = _Float(_W2)
    mt = _Float(_MT)  # days
    my = _Float(_MY)
    ctt = _Float(_CTT)
    cty = _Float(_CTY)
    cyy = _Float(_CYY)
    scale = _Float(_SCALE)
    drift = _Float(_DRIFT)  # EW mean of the signed one-step residuals
    f0_level = _Float(_F0_LEVEL)  # the two previous bucket levels
    f1_level = _Float(_F1_LEVEL)
    f1_t = _Float(_F1_T)  # time of the previous bucket (days), awaiting its output
    obs_level = _Float(_OBS_LEVEL)  # latest bucket level
    obs_v = _Float(_OBS_V)  # its voltage (corrected), nan for battery_pct
    temp = _Float(_TEMP)  # smoothed temperature_c
    last_ts = _Float(_LAST_TS)  # latest reading used

    def __init__(self, chemistry: str) -> None:
        self.chemistry = chemistry
        self.site: str | None = None
        self.zone: str | None = None
        self.model: str | None = None
        self.meta: Mapping[str, str] | None = None  # latest meta, not persisted
        self.charging = False
        self.severity = 0  # 0: no active alert, else the Severity value
        self.swaps: tuple[float, ...] = ()  # battery swap times, oldest first
        self.f = array("d", _FRESH)
        self.b_n = 0
        self.b_cnt = 0  # count of the values within the sag margin of the top
        self.b_pct = False  # the bucket holds battery_pct values (else volts)
        self.n = 0  # buckets in the estimate
        self.rejects = 0

    def _reset_bucket(self) -> None:
        """Forget the open bucket and the median filter's buffer."""
        f = self.f
        f[_F0_LEVEL] = f[_F1_LEVEL] = f[_F1_T] = f[_B_START] = f[_B_END] = _NAN
        f[_B_TSUM] = f[_B_SUM] = 0.0
        f[_B_TOP] = _NEG_INF
        self.b_n = 0
        self.b_cnt = 0
        self.b_pct = False

    def reset_estimate(self) -> None:
        f = self.f
        self.n = 0
        f[_FIRST_T] = f[_LAST_T] = f[_SCALE] = _NAN
        f[_W] = f[_W2] = f[_MT] = f[_MY] = f[_CTT] = f[_CTY] = f[_CYY] = f[_DRIFT] = 0.0
        self.rejects = 0
