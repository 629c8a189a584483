"""Realism profiles: how a simulated fleet differs from a clean lab fleet.

A :class:`RealismProfile` holds documented *ranges*; each simulated device draws its own
values from them (its loss rate, its delay, its clock's skew, its sensor noise ...), so two
devices of one profile differ, and one profile's fleet differs from another's in the ranges
themselves. :data:`PROFILES` names the built-in ones:

- ``plant``: a factory floor (ambient halls, warm process zones near machines, a few cold
  rooms and yards), moderate loss, a few skewed clocks; the profile detectors are tuned on;
- ``cold-chain``: cold stores and freezers (-25..+8 °C), burstier loss through metal walls,
  more clock skew and late deliveries, other cells (more spread between vendors, alkaline
  packs, stronger cold sag); held out to report on.

:class:`service.simulator.field_run.FieldSimulator` turns a profile and a seed into a fleet,
its messages in receive order and the ground truth of what was planted; the same
``(profile, seed)`` always gives the same bytes.

>>> plant, cold = profile("plant"), profile("cold-chain")
>>> plant.loss_rate, cold.loss_rate
((0.004, 0.014), (0.004, 0.02))
>>> sorted(PROFILES)
['cold-chain', 'plant']
>>> lo, hi = plant.expected_loss(300.0)
>>> 0.002 < lo < hi < 0.05
True
"""

from __future__ import annotations

from dataclasses import dataclass, fields

Range = tuple[float, float]
"""A closed range ``(low, high)``; a device draws uniformly within it."""

DAY_S = 86_400.0

ZONE_KINDS = ("ambient", "process", "cold", "freezer", "outdoor")
"""Climates a zone can have: an indoor hall, warm air near machines, a cold store
(0..+8 °C), a freezer (-25..-18 °C), a yard outside."""


@dataclass(frozen=True, slots=True)
class Climate:
    """The ranges a zone of one kind draws its climate from."""

    setpoint_c: Range  # mean air temperature (°C)
    daily_c: Range  # amplitude of the daily cycle (°C)
    humidity_pct: Range  # mean relative humidity (%RH); noise on top may clip at 100


@dataclass(frozen=True, slots=True)
class RealismProfile:
    """Ranges a simulated field fleet draws from (frozen; see :data:`PROFILES`).

    Every ``Range`` is ``(low, high)``; shares are fractions of devices (0..1); rates per
    message are fractions of messages.
    """

    name: str  # the registry key
    summary: str  # one line: what kind of site this is
    site_prefix: str  # sites are named <prefix>-a, <prefix>-b ...
    # -- layout ---------------------------------------------------------------------------
    sites: int  # sites (plants, warehouses); each has its own zones and gateways
    zones_per_site: int  # zones per site; the sensors of one zone are peers
    gateways_per_site: int  # radio gateways per site
    zone_kinds: tuple[tuple[str, float], ...]  # climate kind -> share of zones
    climates: tuple[tuple[str, Climate], ...]  # climate kind -> its ranges
    models: tuple[tuple[str, float], ...]  # device model -> share of devices
    interval_factor: tuple[tuple[str, float], ...]  # model -> multiple of the base interval
    # -- power ----------------------------------------------------------------------------
    mains_share: float  # share of battery-model devices wired to mains instead (no battery_v)
    solar_share: float  # share of battery devices in outdoor zones with a solar panel
    solar_peak_c: Range  # a panel's charge current at noon, as a C-rate (capacity per hour)
    alkaline_share: float  # share of CT-40 loggers on two AA alkaline cells (else Li-SOCl2)
    vendors_per_chemistry: int  # cell vendors per chemistry, each with its own curve
    vendor_offset_v: Range  # a vendor's curve lies this much above the built-in one (V)
    vendor_tilt_v: Range  # ... plus this much more at full charge than at empty (V)
    vendor_warp: Range  # exponent on the charge axis: level' = 100 * (level / 100) ** warp
    vendor_cold_factor: Range  # a vendor's cold sag, multiple of the built-in coefficient
    capacity_spread: float  # cell-to-cell capacity, standard deviation as a share of nominal
    battery_life_days: Range  # a healthy battery device's lifetime on a full charge (days)
    start_level_pct: Range  # charge of a healthy device's battery at the start (%)
    sag_probability: Range  # share of readings taken while the radio transmits (fraction)
    sag_v: Range  # the voltage dip of such a reading (V)
    # -- channel --------------------------------------------------------------------------
    loss_rate: Range  # independent loss per message in the good state (fraction)
    burst_per_day: Range  # Gilbert-Elliott channel: bad states entered per device-day
    burst_messages: Range  # mean length of a bad state (messages)
    burst_loss: Range  # loss probability in the bad state (fraction)
    delay_s: Range  # a device's mean delivery delay (s); each delay is exponential
    late_share: Range  # share of messages delivered late (fraction)
    late_delay_s: Range  # how late such a message is (s), uniform: minutes, out of order
    duplicate_rate: Range  # share of messages delivered twice, same bytes (fraction)
    duplicate_delay_s: Range  # the second copy's extra delay (s)
    skewed_devices: Range  # share of devices whose clock is off (fraction; at least one)
    skew_s: Range  # by how much, fast or slow (s); their payload ts is off by it
    gap_per_day: Range  # short outages per device-day whose readings come later as a batch
    gap_s: Range  # length of such an outage (s)
    gateway_loss: float  # loss of a gateway's own status messages (fraction)
    # -- reporting ------------------------------------------------------------------------
    jitter: Range  # relative jitter of each reporting interval (fraction)
    interval_change_share: float  # share of devices whose duty cycle changes once (x2 or /2)
    # -- sensors --------------------------------------------------------------------------
    noise_factor: Range  # a device's sensor noise, multiple of its model's (ratio)
    install_offset_c: float  # installation offset of a temperature sensor, std dev (°C)
    install_offset_rh: float  # installation offset of a humidity sensor, std dev (%RH)
    rssi_dbm: Range  # a device's mean RSSI (dBm)
    rssi_sigma_db: Range  # RSSI noise from reading to reading (dB)
    cold_rssi_loss_db: float  # extra attenuation in cold stores and freezers (dB)
    defrost_every_h: Range  # cold stores and freezers defrost this often (h)
    defrost_rise_c: Range  # and warm up this much while they do (°C)
    door_per_hour: Range  # door openings per hour in cold zones (each 1-3 °C for minutes)
    shift_draw: Range  # mains devices draw this much more on shift, busier radio (fraction)
    # -- events that are not faults -------------------------------------------------------
    reboot_per_day: Range  # reboots per device-day: seq and uptime reset, clock unsynced once
    relocation_share: float  # share of devices moved to another zone (and gateway) once
    swap_share: float  # share of battery devices whose battery is replaced while healthy
    calibration_share: float  # share of sensors calibrated once (a calibration message)
    maintenance_gateways: int  # gateways taken down once for planned maintenance
    maintenance_s: Range  # length of such maintenance (s)
    update_fail_share: float  # share of campaign updates that fail once, then succeed
    # -- planted faults -------------------------------------------------------------------
    faulty_share: float  # share of devices with a planted fault; the rest stay healthy
    drift_pct_per_month: Range  # ageing sensors drift this much of the reading a month (%)

    def share(self, table: str, key: str) -> float:
        """A value of one of the ``(key, value)`` tables (0 when the key is absent).

        >>> profile("plant").share("models", "TH-200")
        0.45
        """
        return float(dict(getattr(self, table)).get(key, 0.0))

    def climate(self, kind: str) -> Climate:
        """The climate ranges of a zone kind."""
        return dict(self.climates)[kind]

    def expected_loss(self, interval_s: float) -> Range:
        """The range of a device's long-run loss on the channel alone (no faults, no
        outages), for a device reporting every ``interval_s``: the good state's loss plus
        the bad state's share times its loss, at the ranges' low and high ends.
        """

        def total(loss: float, per_day: float, length: float, burst: float) -> float:
            enter = per_day * interval_s / DAY_S
            bad = enter / (enter + 1.0 / length)
            return (1.0 - bad) * loss + bad * burst

        low = total(self.loss_rate[0], self.burst_per_day[0], self.burst_messages[0],
                    self.burst_loss[0])  # fmt: skip
        high = total(self.loss_rate[1], self.burst_per_day[1], self.burst_messages[1],
                     self.burst_loss[1])  # fmt: skip
        return (low, high)

    def ranges(self) -> dict[str, Range]:
        """Every range of the profile by field name (for tables and reports)."""
        out: dict[str, Range] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if (
                isinstance(value, tuple)
                and len(value) == 2
                and all(isinstance(x, (int, float)) for x in value)
            ):
                out[item.name] = (float(value[0]), float(value[1]))
        return out


_CLIMATES_PLANT: tuple[tuple[str, Climate], ...] = (
    ("ambient", Climate((19.0, 24.0), (1.0, 3.0), (35.0, 55.0))),
    ("process", Climate((28.0, 38.0), (2.0, 5.0), (25.0, 45.0))),
    ("cold", Climate((2.0, 6.0), (0.3, 1.0), (85.0, 95.0))),
    ("freezer", Climate((-24.0, -18.0), (0.2, 0.8), (75.0, 90.0))),
    ("outdoor", Climate((-2.0, 10.0), (3.0, 7.0), (70.0, 95.0))),
)

_CLIMATES_COLD: tuple[tuple[str, Climate], ...] = (
    ("ambient", Climate((12.0, 20.0), (1.0, 3.0), (40.0, 65.0))),
    ("process", Climate((24.0, 32.0), (2.0, 4.0), (30.0, 50.0))),
    ("cold", Climate((0.0, 8.0), (0.3, 1.2), (88.0, 98.0))),
    ("freezer", Climate((-25.0, -18.0), (0.2, 1.0), (80.0, 95.0))),
    ("outdoor", Climate((-6.0, 6.0), (3.0, 8.0), (75.0, 98.0))),
)

PLANT = RealismProfile(
    name="plant",
    summary="factory floor: halls, warm process zones, a few cold rooms and yards; moderate loss",
    site_prefix="plant",
    sites=4,
    zones_per_site=4,
    gateways_per_site=3,
    zone_kinds=(("ambient", 0.45), ("process", 0.35), ("cold", 0.1), ("outdoor", 0.1)),
    climates=_CLIMATES_PLANT,
    models=(("TH-200", 0.45), ("VB-31", 0.25), ("PM-10", 0.2), ("CT-40", 0.1)),
    interval_factor=(("TH-200", 1.0), ("VB-31", 1.0), ("PM-10", 1.0), ("CT-40", 2.0)),
    mains_share=0.1,
    solar_share=0.5,
    solar_peak_c=(0.002, 0.006),
    alkaline_share=0.0,
    vendors_per_chemistry=2,
    vendor_offset_v=(-0.02, 0.02),
    vendor_tilt_v=(-0.03, 0.03),
    vendor_warp=(0.85, 1.15),
    vendor_cold_factor=(0.6, 1.4),
    capacity_spread=0.04,
    battery_life_days=(400.0, 1200.0),
    start_level_pct=(45.0, 100.0),
    sag_probability=(0.01, 0.05),
    sag_v=(0.03, 0.1),
    loss_rate=(0.004, 0.014),
    burst_per_day=(0.02, 0.15),
    burst_messages=(1.2, 2.5),
    burst_loss=(0.3, 0.7),
    delay_s=(0.05, 1.5),
    late_share=(0.002, 0.01),
    late_delay_s=(60.0, 900.0),
    duplicate_rate=(0.002, 0.008),
    duplicate_delay_s=(0.5, 90.0),
    skewed_devices=(0.005, 0.01),
    skew_s=(120.0, 900.0),
    gap_per_day=(0.003, 0.02),
    gap_s=(600.0, 1800.0),
    gateway_loss=0.001,
    jitter=(0.005, 0.03),
    interval_change_share=0.03,
    noise_factor=(0.8, 1.5),
    install_offset_c=0.4,
    install_offset_rh=1.5,
    rssi_dbm=(-100.0, -60.0),
    rssi_sigma_db=(1.5, 3.0),
    cold_rssi_loss_db=3.0,
    defrost_every_h=(6.0, 8.0),
    defrost_rise_c=(2.0, 5.0),
    door_per_hour=(0.5, 2.0),
    shift_draw=(0.0, 0.08),
    reboot_per_day=(0.01, 0.05),
    relocation_share=0.02,
    swap_share=0.02,
    calibration_share=0.05,
    maintenance_gateways=1,
    maintenance_s=(900.0, 2700.0),
    update_fail_share=0.05,
    faulty_share=0.2,
    drift_pct_per_month=(2.0, 6.0),
)

COLD_CHAIN = RealismProfile(
    name="cold-chain",
    summary="cold stores and freezers (-25..+8 °C): burstier loss, more skew, other cells",
    site_prefix="store",
    sites=4,
    zones_per_site=5,
    gateways_per_site=3,
    zone_kinds=(
        ("cold", 0.35),
        ("freezer", 0.3),
        ("ambient", 0.2),
        ("process", 0.05),
        ("outdoor", 0.1),
    ),
    climates=_CLIMATES_COLD,
    models=(("TH-200", 0.25), ("VB-31", 0.15), ("PM-10", 0.15), ("CT-40", 0.45)),
    interval_factor=(("TH-200", 1.0), ("VB-31", 2.0), ("PM-10", 0.5), ("CT-40", 1.0)),
    mains_share=0.05,
    solar_share=0.3,
    solar_peak_c=(0.001, 0.004),
    alkaline_share=0.25,
    vendors_per_chemistry=3,
    vendor_offset_v=(-0.03, 0.03),
    vendor_tilt_v=(-0.04, 0.04),
    vendor_warp=(0.8, 1.25),
    vendor_cold_factor=(0.3, 1.8),
    capacity_spread=0.08,
    battery_life_days=(300.0, 900.0),
    start_level_pct=(35.0, 100.0),
    sag_probability=(0.02, 0.08),
    sag_v=(0.05, 0.15),
    loss_rate=(0.004, 0.02),
    burst_per_day=(0.3, 1.5),
    burst_messages=(2.0, 6.0),
    burst_loss=(0.6, 0.95),
    delay_s=(0.1, 3.0),
    late_share=(0.005, 0.02),
    late_delay_s=(120.0, 1800.0),
    duplicate_rate=(0.003, 0.012),
    duplicate_delay_s=(1.0, 300.0),
    skewed_devices=(0.01, 0.03),
    skew_s=(180.0, 1800.0),
    gap_per_day=(0.02, 0.1),
    gap_s=(900.0, 3600.0),
    gateway_loss=0.003,
    jitter=(0.01, 0.08),
    interval_change_share=0.06,
    noise_factor=(0.8, 2.5),
    install_offset_c=0.8,
    install_offset_rh=3.0,
    rssi_dbm=(-100.0, -62.0),
    rssi_sigma_db=(1.5, 3.5),
    cold_rssi_loss_db=5.0,
    defrost_every_h=(4.0, 8.0),
    defrost_rise_c=(3.0, 8.0),
    door_per_hour=(1.0, 4.0),
    shift_draw=(0.0, 0.15),
    reboot_per_day=(0.02, 0.1),
    relocation_share=0.03,
    swap_share=0.03,
    calibration_share=0.08,
    maintenance_gateways=2,
    maintenance_s=(1200.0, 3600.0),
    update_fail_share=0.1,
    faulty_share=0.2,
    drift_pct_per_month=(2.0, 6.0),
)

PROFILES: dict[str, RealismProfile] = {p.name: p for p in (PLANT, COLD_CHAIN)}
"""The built-in profiles by name: ``plant`` (tuning) and ``cold-chain`` (held out)."""


def profile(name: str) -> RealismProfile:
    """The built-in profile called ``name``.

    >>> profile("freezer-farm")
    Traceback (most recent call last):
    ...
    ValueError: unknown realism profile 'freezer-farm' (known: cold-chain, plant)
    """
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown realism profile {name!r} (known: {known})") from None
