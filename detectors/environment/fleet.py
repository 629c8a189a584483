"""Every device's state as fixed-size rows in a few typed columns (:class:`_Fleet`): the
smoothed environment, hours of stress, the arrival rhythm and recent gaps, lost and expected
reports, the battery fit, site and zone, and update outcomes."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Mapping

_GAPS = 9  # the rhythm is the median of this many recent gaps
_ZEROS = array("q", (0, 0))
_ZEROS_I = array("I", (0, 0))


class _Fleet:
    """Every device's state as fixed-size rows in a few typed columns, in order of first
    sight (rows never move).

    ``values`` holds per row: the smoothed environment (one value per metric), hours of
    stress (hot, humid, shaking), the last arrival, the rhythm (the median of the recent
    gaps), the recent gaps (a ring, see :meth:`gaps`), and the battery fit (first ts, last
    ts, last volts, then n, St, Sv, Stt, Stv over days since the first ts). ``counts`` holds
    lost and expected reports; ``places`` the site and zone as codes into one shared table
    of names; ``flags`` a set flag per environment metric and the state of the gap ring
    (0-9: that many gaps, oldest first; 10-17: nine gaps, the oldest at that minus nine).
    ``metas`` is the metadata each device's site and zone were last read from. Update
    outcomes are kept only for the devices that reported an update.
    """

    __slots__ = (
        "battery", "battery_record", "blank_flags", "blank_values", "codes", "count_record",
        "counts", "flag_record", "flags", "gap_ring", "gaps", "interval", "last_rx", "metas",
        "names", "place_record", "places", "rows", "stress", "stride", "updates",
        "value_record", "values", "views", "width",
    )  # fmt: skip

    def __init__(self, width: int) -> None:
        self.width = width  # environment metrics per device
        # positions in a row of ``values``
        self.stress = width
        self.last_rx = width + 3
        self.interval = width + 4
        self.gaps = width + 5
        self.battery = self.gaps + _GAPS
        self.stride = self.battery + 8
        self.gap_ring = width  # position in a row of ``flags``
        self.value_record = struct.Struct(f"<{self.stride}d")
        self.count_record = struct.Struct("<2q")
        self.place_record = struct.Struct("<2I")
        self.flag_record = struct.Struct(f"<{width + 1}B")
        self.battery_record = struct.Struct("<8d")
        self.views: dict[tuple[int, int], struct.Struct] = {}
        self.blank_values = array("d", bytes(self.value_record.size))
        self.blank_flags = array("B", bytes(width + 1))
        self.values = array("d")
        self.counts = array("q")
        self.places = array("I")
        self.flags = array("B")
        self.metas: list[Mapping[str, str] | None] = []
        self.rows: dict[str, int] = {}  # device id -> row
        self.names: list[str | None] = [None]  # site and zone names by code
        self.codes: dict[str | None, int] = {None: 0}
        self.updates: dict[int, list[int]] = {}  # row -> [succeeded, failed]

    def add(self, device_id: str, last_rx: float) -> int:
        """A row for a new device, all zeros but its last arrival."""
        row = len(self.rows)
        self.rows[device_id] = row
        values = self.values
        values.extend(self.blank_values)
        values[row * self.stride + self.last_rx] = last_rx
        self.counts.extend(_ZEROS)
        self.places.extend(_ZEROS_I)
        self.flags.extend(self.blank_flags)
        self.metas.append(None)
        return row

    def code(self, name: str | None) -> int:
        """The code of a site or zone name; each distinct name is stored once."""
        code = self.codes.get(name)
        if code is None:
            code = self.codes[name] = len(self.names)
            self.names.append(name)
        return code

    def records(
        self,
    ) -> Iterator[tuple[tuple[float, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Each row as (values, counts, places, flags)."""
        return zip(
            self.value_record.iter_unpack(self.values),
            self.count_record.iter_unpack(self.counts),
            self.place_record.iter_unpack(self.places),
            self.flag_record.iter_unpack(self.flags),
            strict=True,
        )

    def columns(self, start: int, count: int) -> Iterator[tuple[float, ...]]:
        """Each row's ``count`` values from position ``start`` of a row of ``values``."""
        view = self.views.get((start, count))
        if view is None:
            after = self.stride - start - count
            view = self.views[(start, count)] = struct.Struct(f"<{8 * start}x{count}d{8 * after}x")
        return view.iter_unpack(self.values)

    def gaps_of(self, values: tuple[float, ...], ring: int) -> list[float]:
        """The recent gaps of a row, oldest first."""
        at = self.gaps
        if ring <= _GAPS:
            return list(values[at : at + ring])
        oldest = at + ring - _GAPS
        return list(values[oldest : at + _GAPS] + values[at:oldest])

    @staticmethod
    def lost_share(counts: tuple[int, ...]) -> tuple[int, int] | None:
        """(lost, expected) reports, or ``None`` before the interval is known."""
        lost, expected = counts
        if expected < 10:
            return None
        return lost, expected

    def failures(self, row: int) -> tuple[int, int] | None:
        """(failed, attempted) updates, or ``None`` before any."""
        tally = self.updates.get(row)
        if tally is None:
            return None
        ok, failed = tally
        return (failed, ok + failed) if ok + failed else None

    @staticmethod
    def drain_per_day(battery: tuple[float, ...]) -> float | None:
        """Volts lost per day: the least-squares slope over every reading of this battery."""
        first, last, _, n, st, sv, stt, stv = battery
        if n == 0 or last - first < 6 * 3600:
            return None
        denominator = n * stt - st * st
        if n < 3 or denominator <= 0:
            return None
        result: float = -(n * stv - st * sv) / denominator
        return result
