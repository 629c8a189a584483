"""What the connectivity detector keeps per device outside its columns: alert states,
recent gaps, gateway, site, zone and radio technology, and the signal points of a window
not yet full."""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Mapping

from service.records import Severity


class _Device:
    __slots__ = (
        "acc_n", "alerted", "gaps", "gateway", "intermittent", "meta", "offline", "order",
        "severity", "signal", "signal_alert", "site", "switches", "tech", "zone",
    )  # fmt: skip

    def __init__(self, order: int = 0) -> None:
        self.offline = False
        self.alerted = False
        self.severity = Severity.WARNING
        self.gaps: deque[tuple[float, float]] | tuple[()] = ()  # a deque from the first gap
        self.gateway: str | None = None
        self.site: str | None = None
        self.zone: str | None = None
        self.tech: str | None = None
        self.switches = 0
        self.intermittent = False
        # its signal points, (t, value) pairs oldest first, until the window is full (then
        # they are in its row of the detector's signal column)
        self.signal: array[float] | None = None
        self.signal_alert = False
        self.acc_n = 0  # signal readings averaged so far (their sum and start: detector columns)
        # position among the detector's devices (first heard first), and its row in the
        # detector's per-device columns
        self.order = order
        self.meta: Mapping[str, str] | None = None  # the metadata last followed (read-only)
