"""The field fleet: device models and their payload dialects, zone climates, cell vendors,
and the device itself with its radio channel.

A :class:`FieldModel` says what a model measures, how it is powered, how fine its sensors
are (quantisation steps, noise) and how its payload spells things: some models use the
canonical names, others the documented aliases (``temp``, ``temp_f``, ``vbat_mv``, ``rh``,
``rssi``, ``fw``, ``gw``, ``power_w``), each with its own time format.

A :class:`ZoneClimate` is the air the sensors of one zone share: a set-point with a daily
cycle, machine heat on shifts in process zones, defrost cycles and door openings in cold
stores and freezers, weather outside; relative humidity clips at 100 %RH.

:func:`vendor_chemistry` perturbs a built-in discharge curve (:data:`CHEMISTRIES`) the way
a cell vendor's differs from it: offset, tilt, a warped charge axis and its own cold sag.

:class:`FieldDevice` extends :class:`service.simulator.fleet.SimDevice` (so the fault
classes of :mod:`service.simulator.faults` work on it unchanged) with its climate, sensor
offsets and noise, clock skew, solar panel and a two-state Gilbert-Elliott
:class:`Channel`.

>>> curve = vendor_chemistry(CHEMISTRIES["li_ion"], offset_v=0.02, tilt_v=0.0, warp=1.0,
...                          cold_factor=0.5)
>>> round(curve.volts_at(50.0) - CHEMISTRIES["li_ion"].volts_at(50.0), 3)
0.02
>>> quantise(21.437, 0.1), quantise(21.437, 0.0625)
(21.4, 21.4375)
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors.battery import CHEMISTRIES, Chemistry
from service.simulator.fleet import BatteryPack, DeviceModel, SimDevice
from service.simulator.realism import RealismProfile

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
EPOCH_THURSDAY = 3  # 1970-01-01 was a Thursday: day index 0 is weekday 3 (Mon = 0)


def quantise(value: float, step: float) -> float:
    """``value`` on a grid of ``step`` (a sensor's resolution), rounded for printing."""
    if step <= 0:
        return value
    return round(round(value / step) * step, 6)


@dataclass(frozen=True, slots=True)
class Key:
    """How one canonical metric is spelled in a payload: key, unit conversion, grid."""

    metric: str  # canonical metric (temperature_c, battery_v ...)
    key: str  # payload field
    scale: float = 1.0  # payload value = metric * scale + offset
    offset: float = 0.0
    step: float = 0.0  # the sensor's resolution, in the payload's unit (0: none)
    integer: bool = False  # sent as an integer


@dataclass(frozen=True, slots=True)
class FieldModel:
    """A device model in the field: what it measures, its cells, sensors and dialect."""

    model: DeviceModel  # name, metrics, battery or not, firmware versions, radio
    keys: tuple[Key, ...]  # canonical metric -> payload spelling
    firmware_key: str = "firmware"  # firmware / fw / fw_version
    gateway_key: str = "gateway"  # gateway / gw
    ts_format: str = "iso"  # "iso" (ISO 8601 Z), "ms" (epoch ms), "s" (epoch seconds)
    chemistries: tuple[str, ...] = ()  # cells it takes; the first is the usual one
    sends_chemistry: bool = False  # names its chemistry (battery_chemistry)
    noise: Mapping[str, float] = field(default_factory=dict)  # sensor noise, canonical units
    capacity_mah: float = 2600.0  # nominal cell capacity (mAh)

    @property
    def name(self) -> str:
        return self.model.name

    def key(self, metric: str) -> Key | None:
        for key in self.keys:
            if key.metric == metric:
                return key
        return None


CATALOGUE: dict[str, FieldModel] = {
    m.name: m
    for m in (
        FieldModel(  # temperature and humidity, canonical names, 0.1 °C / 0.5 %RH
            DeviceModel("TH-200", ("temperature_c", "humidity_pct", "rssi_dbm"), True,
                        ("1.4.2",), radio="lorawan"),
            (Key("temperature_c", "temperature_c", step=0.1),
             Key("humidity_pct", "humidity_pct", step=0.5),
             Key("battery_v", "battery_v", step=0.001),
             Key("rssi_dbm", "rssi_dbm", integer=True)),
            chemistries=("li_ion",),
            noise={"temperature_c": 0.08, "humidity_pct": 0.6},
        ),
        FieldModel(  # vibration on machines, compact aliases, 1/16 °C, battery in mV and %
            DeviceModel("VB-31", ("vibration_g", "temperature_c", "rssi_dbm"), True,
                        ("2.0.1",), reports_pct=True, radio="wifi"),
            (Key("vibration_g", "vibration_g", step=0.01),
             Key("temperature_c", "temp", step=0.0625),
             Key("battery_v", "vbat_mv", scale=1000.0, integer=True),
             Key("battery_pct", "battery_pct", step=1.0),
             Key("rssi_dbm", "rssi", integer=True)),
            firmware_key="fw", gateway_key="gw", ts_format="ms",
            chemistries=("li_ion",),
            noise={"temperature_c": 0.15, "vibration_g": 0.03},
        ),
        FieldModel(  # power meter on mains, imperial: temp_f in 0.5 °F steps, power in W
            DeviceModel("PM-10", ("power_mw", "voltage_v", "temperature_c", "rssi_dbm"), False,
                        ("3.3.1",), radio="cellular"),
            (Key("power_mw", "power_w", scale=0.001, step=0.1),
             Key("voltage_v", "voltage_v", step=0.1),
             Key("temperature_c", "temp_f", scale=1.8, offset=32.0, step=0.5),
             Key("rssi_dbm", "rssi", integer=True)),
            firmware_key="fw_version", gateway_key="gw", ts_format="s",
            noise={"temperature_c": 0.3},
        ),
        FieldModel(  # cold-chain logger: temp / rh aliases, 1 %RH steps, names its cell
            DeviceModel("CT-40", ("temperature_c", "humidity_pct", "rssi_dbm"), True,
                        ("4.2.0",), radio="lorawan"),
            (Key("temperature_c", "temp", step=0.1),
             Key("humidity_pct", "rh", step=1.0),
             Key("battery_v", "vbat_mv", scale=1000.0, integer=True),
             Key("rssi_dbm", "rssi", integer=True)),
            firmware_key="fw", gateway_key="gw", ts_format="iso",
            chemistries=("li_socl2", "alkaline_2aa"), sends_chemistry=True,
            noise={"temperature_c": 0.1, "humidity_pct": 0.8}, capacity_mah=3600.0,
        ),
    )
}  # fmt: skip
"""The field models by name. TH-200 and VB-31 carry Li-ion cells (as the example
configuration's ``model_chemistry`` says), CT-40 names its Li-SOCl2 or alkaline pack in
``battery_chemistry``, PM-10 is on mains."""

CAPACITY_MAH = {"li_ion": 2600.0, "li_socl2": 3600.0, "alkaline_2aa": 2500.0}


def vendor_chemistry(
    base: Chemistry, *, offset_v: float, tilt_v: float, warp: float, cold_factor: float
) -> Chemistry:
    """A vendor's cell of ``base``'s chemistry: its curve shifted by ``offset_v``, tilted
    by ``tilt_v`` (more at full than at empty), with the charge axis warped
    (``level' = 100 (level/100) ** warp``) and ``cold_factor`` times the cold sag.

    The name stays the chemistry's (a device names its chemistry, not its vendor).
    """
    points = []
    for volts, pct in base.curve:
        level = 100.0 * (pct / 100.0) ** warp if pct > 0 else 0.0
        points.append((volts + offset_v + tilt_v * pct / 100.0, level))
    return Chemistry(
        base.name,
        tuple(points),
        voltage_sigma_v=base.voltage_sigma_v,
        temp_coef_v_per_c=base.temp_coef_v_per_c * cold_factor,
    )


def _hash01(a: int, b: int) -> float:
    """A cheap deterministic pseudo-random number in [0, 1) from two integers."""
    x = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    x = (x * 0x297A2D39) & 0xFFFFFFFF
    x ^= x >> 15
    return x / 4_294_967_296.0


def on_shift(ts: float) -> bool:
    """Machines run Monday to Friday, 06:00-22:00 UTC."""
    weekday = (int(ts // DAY_S) + EPOCH_THURSDAY) % 7
    hour = (ts % DAY_S) / 3600.0
    return weekday < 5 and 6.0 <= hour < 22.0


@dataclass(slots=True)
class ZoneClimate:
    """The air one zone's sensors share (temperature °C, relative humidity %RH)."""

    site: str
    zone: str
    kind: str  # one of realism.ZONE_KINDS
    setpoint_c: float
    daily_c: float
    phase: float  # radians
    humidity_pct: float
    seed: int
    defrost_period_s: float = 0.0  # cold zones: defrost every ... (0: never)
    defrost_s: float = 1800.0
    defrost_rise_c: float = 0.0
    door_p: float = 0.0  # probability that a door opens in a 10-minute slot
    shift_heat_c: float = 0.0  # process zones: machines add this while on shift

    def at(self, ts: float) -> tuple[float, float]:
        """Temperature and relative humidity of the zone's air at ``ts``."""
        day = math.sin(2 * math.pi * (ts % DAY_S) / DAY_S + self.phase)
        temp = self.setpoint_c + self.daily_c * day
        if self.kind == "outdoor":  # weather: fronts over a few days
            temp += 3.0 * math.sin(2 * math.pi * ts / (3.7 * DAY_S) + self.seed % 7)
        if self.shift_heat_c and on_shift(ts):
            temp += self.shift_heat_c
        if self.defrost_period_s:
            into = (ts + self.seed % 10_000) % self.defrost_period_s
            if into < self.defrost_s:
                temp += self.defrost_rise_c * math.sin(math.pi * into / self.defrost_s)
        if self.door_p:
            slot = int(ts // 600.0)
            if _hash01(self.seed, slot) < self.door_p:
                temp += 1.0 + 2.0 * _hash01(self.seed + 1, slot)
        humidity = self.humidity_pct - 1.2 * self.daily_c * day
        return temp, humidity


class Channel:
    """A Gilbert-Elliott channel: a good state losing ``loss`` of the messages and a bad
    state (entered with ``p_enter`` per message, left with ``p_leave``) losing
    ``burst_loss`` of them.

    >>> rng = random.Random(1)
    >>> ch = Channel(loss=0.0, p_enter=0.0, p_leave=1.0, burst_loss=1.0)
    >>> any(ch.lost(rng) for _ in range(1000))
    False
    """

    __slots__ = ("bad", "burst_loss", "loss", "p_enter", "p_leave")

    def __init__(self, loss: float, p_enter: float, p_leave: float, burst_loss: float) -> None:
        self.loss = loss
        self.p_enter = p_enter
        self.p_leave = p_leave
        self.burst_loss = burst_loss
        self.bad = False

    def lost(self, rng: random.Random) -> bool:
        """Whether the next message is lost (and move the channel's state on)."""
        if self.bad:
            if rng.random() < self.p_leave:
                self.bad = False
        elif rng.random() < self.p_enter:
            self.bad = True
        return rng.random() < (self.burst_loss if self.bad else self.loss)


@dataclass(slots=True)
class FieldDevice(SimDevice):
    """A :class:`SimDevice` in the field: its zone's air, its sensors, clock and radio."""

    field_model: FieldModel | None = None
    climate: ZoneClimate | None = None
    offsets: dict[str, float] = field(default_factory=dict)  # installation offsets
    noise: dict[str, float] = field(default_factory=dict)  # sensor noise, canonical units
    skew_s: float = 0.0  # the device clock is this far ahead (negative: behind)
    solar_ma: float = 0.0  # a solar panel's current at noon (0: none)
    mains: bool = False  # wired to mains (no battery)
    vibration_g: float = 0.3  # machine vibration on shift
    shift_draw: float = 0.05  # a mains device draws this much more on shift (fraction)
    vendor: str = ""  # the cell's vendor (its curve differs from the built-in one)
    sag_p: float = 0.03
    sag_v: float = 0.08
    channel: Channel | None = None
    delay_mean_s: float = 0.5
    late_p: float = 0.0
    dup_p: float = 0.0
    jitter: float = 0.01
    boot_ts: float = 0.0  # last (re)boot, for uptime_s
    unsynced: bool = False  # rebooted: the next report carries no ts
    gap_until: float = 0.0  # a short outage: readings are kept until then
    buffer: list[dict[str, Any]] = field(default_factory=list)
    dead: bool = False

    def values(self, ts: float, start_ts: float) -> dict[str, float]:
        """The device's true readings at ``ts``, with sensor noise, before any fault."""
        rng = self.rng
        climate = self.climate
        assert climate is not None
        air, humidity = climate.at(ts)
        temperature = air + self.offsets.get("temperature_c", 0.0)
        noise = self.noise
        out: dict[str, float] = {}
        for metric in self.model.metrics:
            if metric == "temperature_c":
                out[metric] = temperature + rng.gauss(0.0, noise.get(metric, 0.1))
            elif metric == "humidity_pct":
                rh = humidity + self.offsets.get(metric, 0.0)
                out[metric] = rh + rng.gauss(0.0, noise.get(metric, 0.5))
            elif metric == "rssi_dbm":
                out[metric] = self.rssi_base + rng.gauss(0.0, noise.get(metric, 2.0))
            elif metric == "power_mw":  # the device's own draw: a busier radio on shift
                busy = 1.0 + self.shift_draw if on_shift(ts) else 1.0
                draw = self.draw_factor + self.extra_draw
                out[metric] = self.power_base * busy * draw * (1.0 + rng.gauss(0.0, 0.02))
            elif metric == "voltage_v":
                out[metric] = 230.0 + rng.gauss(0.0, 1.0)
            elif metric == "vibration_g":
                base = self.vibration_g if on_shift(ts) else 0.05
                out[metric] = abs(base + rng.gauss(0.0, noise.get(metric, 0.03)))
        pack = self.pack
        if pack is not None:
            if self.solar_ma:
                hour = (ts % DAY_S) / 3600.0
                sun = max(0.0, math.sin(math.pi * (hour - 7.5) / 9.0)) if 7.5 < hour < 16.5 else 0.0
                cloud = 0.2 + 0.8 * _hash01(climate.seed, int(ts // DAY_S))
                pack.charging_ma = self.solar_ma * sun * cloud
            volts = self.battery_v(ts, air) + rng.gauss(0.0, 0.004)
            if rng.random() < self.sag_p:
                volts -= self.sag_v
            out["battery_v"] = volts
            if self.model.reports_pct:
                out["battery_pct"] = pack.level_pct
        return out

    def finish(self, values: dict[str, float]) -> None:
        """What the sensors can say: humidity within 0..100 %RH (saturation clips)."""
        rh = values.get("humidity_pct")
        if rh is not None:
            values["humidity_pct"] = min(100.0, max(0.0, rh))

    def delay(self) -> float:
        """How long the next message takes to arrive (s)."""
        return 0.01 + self.rng.expovariate(1.0 / self.delay_mean_s)


@dataclass(slots=True)
class FieldFleet:
    """The devices, their zones' climates and the gateways of one simulated field fleet."""

    devices: list[FieldDevice]
    climates: dict[tuple[str, str], ZoneClimate]  # (site, zone) -> climate
    gateways: dict[str, str]  # gateway id -> site
    vendors: dict[str, list[Chemistry]]  # chemistry -> one curve per vendor

    def zone_gateway(self, site: str, zone: str) -> str:
        """The gateway that covers ``zone`` best (its home gateway)."""
        names = sorted(g for g, s in self.gateways.items() if s == site)
        return names[(int(zone[1:]) - 1) % len(names)]


_SITE_PLACES = ((52.37, 4.90), (48.14, 11.58), (45.46, 9.19), (51.51, -0.13), (41.39, 2.17))
_PREFERRED = {  # zone kinds a model is installed in, when the site has them
    "VB-31": ("process", "ambient"),
    "CT-40": ("cold", "freezer"),
    "PM-10": ("process", "ambient", "cold"),
    "TH-200": ("ambient", "process", "cold", "freezer", "outdoor"),
}


def _u(rng: random.Random, span: tuple[float, float]) -> float:
    return rng.uniform(span[0], span[1])


def _allocate(weights: tuple[tuple[str, float], ...], total: int) -> list[str]:
    """``total`` names in proportion to their weights (largest remainder), in order."""
    weight_sum = sum(w for _, w in weights) or 1.0
    exact = [(name, total * w / weight_sum) for name, w in weights]
    counts = {name: int(x) for name, x in exact}
    rest = total - sum(counts.values())
    for name, _ in sorted(exact, key=lambda item: -(item[1] - int(item[1])))[:rest]:
        counts[name] += 1
    return [name for name, _ in weights for _ in range(counts[name])]


def build_field_fleet(
    profile: RealismProfile, devices: int, *, interval_s: float, start_ts: float, rng: random.Random
) -> FieldFleet:
    """Draw a fleet of ``devices`` from ``profile``: zones and their climates, gateways, cell
    vendors, then each device (model, zone, gateway, sensors, channel, battery)."""
    sites = [f"{profile.site_prefix}-{chr(ord('a') + i)}" for i in range(profile.sites)]
    kinds = _allocate(profile.zone_kinds, profile.sites * profile.zones_per_site)
    rng.shuffle(kinds)
    climates: dict[tuple[str, str], ZoneClimate] = {}
    for s, site in enumerate(sites):
        for z in range(profile.zones_per_site):
            kind = kinds[s * profile.zones_per_site + z]
            ranges = profile.climate(kind)
            cold = kind in ("cold", "freezer")
            climates[(site, f"z{z + 1}")] = ZoneClimate(
                site=site, zone=f"z{z + 1}", kind=kind,
                setpoint_c=_u(rng, ranges.setpoint_c), daily_c=_u(rng, ranges.daily_c),
                phase=rng.uniform(-0.4, 0.4), humidity_pct=_u(rng, ranges.humidity_pct),
                seed=rng.getrandbits(30),
                defrost_period_s=_u(rng, profile.defrost_every_h) * 3600.0 if cold else 0.0,
                defrost_s=rng.uniform(1200.0, 2400.0),
                defrost_rise_c=_u(rng, profile.defrost_rise_c) if cold else 0.0,
                door_p=_u(rng, profile.door_per_hour) / 6.0 if cold else 0.0,
                shift_heat_c=rng.uniform(2.0, 6.0) if kind == "process" else 0.0,
            )  # fmt: skip
    gateways = {
        f"gw-{site}-{g + 1:02d}": site for site in sites for g in range(profile.gateways_per_site)
    }
    vendors: dict[str, list[Chemistry]] = {}
    for name in ("li_ion", "li_socl2", "alkaline_2aa"):
        vendors[name] = [
            vendor_chemistry(
                CHEMISTRIES[name],
                offset_v=_u(rng, profile.vendor_offset_v),
                tilt_v=_u(rng, profile.vendor_tilt_v),
                warp=_u(rng, profile.vendor_warp),
                cold_factor=_u(rng, profile.vendor_cold_factor),
            )
            for _ in range(profile.vendors_per_chemistry)
        ]
    fleet = FieldFleet([], climates, gateways, vendors)
    models = _allocate(profile.models, devices)
    rng.shuffle(models)
    for index, model_name in enumerate(models):
        fleet.devices.append(
            _device(profile, fleet, index, CATALOGUE[model_name], sites[index % len(sites)],
                    interval_s=interval_s, start_ts=start_ts, rng=rng)
        )  # fmt: skip
    return fleet


def _device(
    profile: RealismProfile,
    fleet: FieldFleet,
    index: int,
    spec: FieldModel,
    site: str,
    *,
    interval_s: float,
    start_ts: float,
    rng: random.Random,
) -> FieldDevice:
    zones = [z for (s, z), c in fleet.climates.items() if s == site]
    kinds = {z: fleet.climates[(site, z)].kind for z in zones}
    preferred = [z for z in zones if kinds[z] in _PREFERRED[spec.name]]
    zone = rng.choice(preferred or zones)
    climate = fleet.climates[(site, zone)]
    # the zone's home gateway unless it already carries clearly more than the others
    load = {g: 0 for g, s in fleet.gateways.items() if s == site}
    for other in fleet.devices:
        if other.site == site:
            load[other.gateway] += 1
    home = fleet.zone_gateway(site, zone)
    least = min(sorted(load), key=lambda g: load[g])
    gateway = home if load[home] <= load[least] + 2 and rng.random() < 0.8 else least
    interval = interval_s * profile.share("interval_factor", spec.name) * rng.uniform(0.98, 1.02)
    lat0, lon0 = _SITE_PLACES[(ord(site[-1]) - ord("a")) % len(_SITE_PLACES)]
    cold = climate.kind in ("cold", "freezer")
    noise = {m: s * _u(rng, profile.noise_factor) for m, s in spec.noise.items()}
    noise["rssi_dbm"] = _u(rng, profile.rssi_sigma_db)
    per_message = interval / DAY_S
    device = FieldDevice(
        device_id=f"{spec.name.split('-')[0].lower()}-{index:06d}",
        site=site, zone=zone, gateway=gateway, model=spec.model,
        firmware=spec.model.firmware[0],
        lat=round(lat0 + rng.uniform(-0.01, 0.01), 6), lon=round(lon0 + rng.uniform(-0.01, 0.01), 6),
        interval_s=interval, next_ts=start_ts + rng.uniform(0.0, interval),
        battery_v0=0.0, drain_v_per_s=0.0, temp_offset=0.0, phase=0.0,
        rssi_base=_u(rng, profile.rssi_dbm) - (profile.cold_rssi_loss_db if cold else 0.0),
        power_base=rng.uniform(800.0, 1500.0),
        rng=random.Random(rng.getrandbits(64)),
        field_model=spec, climate=climate,
        offsets={"temperature_c": rng.gauss(0.0, profile.install_offset_c),
                 "humidity_pct": rng.gauss(0.0, profile.install_offset_rh)},
        noise=noise,
        vibration_g=rng.uniform(0.2, 0.6), shift_draw=_u(rng, profile.shift_draw),
        sag_p=_u(rng, profile.sag_probability), sag_v=_u(rng, profile.sag_v),
        channel=Channel(
            loss=_u(rng, profile.loss_rate),
            p_enter=_u(rng, profile.burst_per_day) * per_message,
            p_leave=1.0 / _u(rng, profile.burst_messages),
            burst_loss=_u(rng, profile.burst_loss),
        ),
        delay_mean_s=_u(rng, profile.delay_s), late_p=_u(rng, profile.late_share),
        dup_p=_u(rng, profile.duplicate_rate), jitter=_u(rng, profile.jitter),
        boot_ts=start_ts - rng.uniform(0.0, 30 * DAY_S),
    )  # fmt: skip
    if spec.model.battery and rng.random() >= profile.mains_share:
        chemistry = spec.chemistries[0]
        if len(spec.chemistries) > 1 and rng.random() < profile.alkaline_share:
            chemistry = spec.chemistries[1]
        vendor = rng.randrange(len(fleet.vendors[chemistry]))
        capacity = CAPACITY_MAH[chemistry] * max(0.5, rng.gauss(1.0, profile.capacity_spread))
        level = _u(rng, profile.start_level_pct)
        device.pack = BatteryPack(
            fleet.vendors[chemistry][vendor], capacity, capacity * level / 100.0, start_ts
        )
        device.base_ma = capacity / (_u(rng, profile.battery_life_days) * 24.0)
        device.vendor = f"{chemistry}-v{vendor + 1}"
        if climate.kind == "outdoor" and rng.random() < profile.solar_share:
            device.solar_ma = _u(rng, profile.solar_peak_c) * capacity
    else:
        device.mains = True
    return device
