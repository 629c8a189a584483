"""The simulated fleet: sites, zones, gateways, device models and their signals.

Everything is drawn from one ``random.Random(seed)``: the same seed gives the same fleet.

Battery devices carry a :class:`BatteryPack`: a chemistry (its discharge curve), a capacity
and a charge that the device's draw runs down. The draw is the device's base current times
``draw_factor`` plus ``extra_draw`` (a share of the base), which faults change: a short
circuit doubles it, a leak grows it, a radio that stops sleeping multiplies it. Mains
devices show the same factors in ``power_mw``. The reported voltage is the curve's voltage
at the remaining charge, lowered in the cold and, now and then, by sag under load; a flat
battery stops the device.

>>> from detectors.battery import CHEMISTRIES
>>> pack = BatteryPack(CHEMISTRIES["li_socl2"], capacity_mah=2600.0, charge_mah=2600.0,
...                    updated_ts=0.0)
>>> pack.advance(86_400.0 * 10, draw_ma=1.0)  # ten days at 1 mA
>>> round(pack.level_pct, 2), round(pack.volts(20.0), 3)
(90.77, 3.642)
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

from detectors.battery import CHEMISTRIES, Chemistry

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """A kind of device: what it measures and how it is powered."""

    name: str
    metrics: tuple[str, ...]
    battery: bool
    firmware: tuple[str, ...]
    reports_pct: bool = False
    radio: str = "lorawan"


MODELS: tuple[DeviceModel, ...] = (
    DeviceModel(
        "TH-200",
        ("temperature_c", "humidity_pct", "rssi_dbm"),
        True,
        ("1.4.2", "1.5.0"),
        radio="lorawan",
    ),
    DeviceModel(
        "VB-31",
        ("vibration_g", "temperature_c", "rssi_dbm"),
        True,
        ("2.0.1",),
        True,
        radio="wifi",
    ),
    DeviceModel(
        "PM-10",
        ("power_mw", "voltage_v", "temperature_c", "rssi_dbm"),
        False,
        ("3.2.0", "3.3.1"),
        radio="cellular",
    ),
)


# typical capacities (mAh) of the cells each chemistry comes in on field devices
CAPACITY_MAH = {"li_ion": 2600.0, "li_socl2": 3600.0, "alkaline_2aa": 2500.0}
SAG_PROBABILITY = 0.03  # share of readings taken while the radio transmits
SAG_V = 0.08


@dataclass(slots=True)
class BatteryPack:
    """A battery: chemistry, capacity and remaining charge; drained and charged over time."""

    chemistry: Chemistry
    capacity_mah: float
    charge_mah: float
    updated_ts: float
    charging_ma: float = 0.0  # a charger's current while one is connected

    def advance(self, ts: float, draw_ma: float) -> None:
        """Run the charge forward to ``ts`` at ``draw_ma`` (less any charging current)."""
        hours = max(0.0, ts - self.updated_ts) / 3600.0
        charge = self.charge_mah + (self.charging_ma - draw_ma) * hours
        self.charge_mah = min(self.capacity_mah, max(0.0, charge))
        self.updated_ts = max(self.updated_ts, ts)

    @property
    def level_pct(self) -> float:
        return 100.0 * self.charge_mah / self.capacity_mah

    @property
    def empty(self) -> bool:
        return self.charge_mah <= 0.0

    def volts(self, temperature_c: float) -> float:
        """Resting voltage at the remaining charge; the cold lowers it."""
        cold = max(0.0, 20.0 - temperature_c) * self.chemistry.temp_coef_v_per_c
        return self.chemistry.volts_at(self.level_pct) - cold

    def replace(self, ts: float) -> None:
        """A fresh battery of the same kind."""
        self.charge_mah = self.capacity_mah
        self.updated_ts = ts


@dataclass(slots=True)
class SimDevice:
    """One simulated device and its evolving state."""

    device_id: str
    site: str
    zone: str
    gateway: str
    model: DeviceModel
    firmware: str
    lat: float
    lon: float
    interval_s: float
    next_ts: float
    battery_v0: float
    drain_v_per_s: float
    temp_offset: float
    phase: float
    rssi_base: float
    power_base: float
    seq: int = 0
    silent: bool = False
    rng: random.Random = field(default_factory=random.Random)
    overrides: dict[str, Any] = field(default_factory=dict)
    pack: BatteryPack | None = None
    base_ma: float = 0.0  # average current when healthy (battery devices)
    draw_factor: float = 1.0  # faults multiply the draw ...
    extra_draw: float = 0.0  # ... or add to it, as a share of the base

    @property
    def draw_ma(self) -> float:
        return self.base_ma * (self.draw_factor + self.extra_draw)

    def fit_battery(self, chemistry: Chemistry, start_ts: float) -> None:
        """Give the device a pack of ``chemistry``, charged and drawn as its initial voltage
        and voltage drain rate (on a Li-ion curve) imply."""
        capacity = CAPACITY_MAH.get(chemistry.name, 2600.0)
        reference = CHEMISTRIES["li_ion"]
        level = reference.level(self.battery_v0)
        days_full = 1.1 / (self.drain_v_per_s * DAY_S)
        self.pack = BatteryPack(chemistry, capacity, capacity * level / 100.0, start_ts)
        self.base_ma = capacity / (days_full * 24.0)

    def battery_v(self, ts: float, temperature_c: float) -> float:
        pack = self.pack
        assert pack is not None
        pack.advance(ts, self.draw_ma)
        return pack.volts(temperature_c)

    def values(self, ts: float, start_ts: float) -> dict[str, float]:
        """The device's true readings at ``ts`` before any fault."""
        rng = self.rng
        day = math.sin(2 * math.pi * ((ts % DAY_S) / DAY_S) + self.phase)
        temperature = 21.0 + 4.0 * day + self.temp_offset + rng.gauss(0, 0.15)
        out: dict[str, float] = {}
        for metric in self.model.metrics:
            if metric == "temperature_c":
                out[metric] = temperature
            elif metric == "humidity_pct":
                out[metric] = max(5.0, 48.0 - 1.5 * (temperature - 21.0) + rng.gauss(0, 0.8))
            elif metric == "rssi_dbm":
                out[metric] = self.rssi_base + rng.gauss(0, 2.0)
            elif metric == "power_mw":
                out[metric] = self.power_base * (self.draw_factor + self.extra_draw) * (
                    1 + 0.05 * day
                ) + rng.gauss(0, self.power_base * 0.02)
            elif metric == "voltage_v":
                out[metric] = 230.0 + rng.gauss(0, 1.0)
            elif metric == "vibration_g":
                out[metric] = abs(0.3 + rng.gauss(0, 0.05))
        if self.pack is not None:
            volts = self.battery_v(ts, temperature) + rng.gauss(0, 0.005)
            if rng.random() < SAG_PROBABILITY:
                volts -= SAG_V
            out["battery_v"] = volts
            if self.model.reports_pct:
                out["battery_pct"] = self.pack.level_pct  # the gauge counts charge
        return out


SITES = (
    ("plant-a", 52.37, 4.90),
    ("plant-b", 48.14, 11.58),
    ("plant-c", 45.46, 9.19),
    ("plant-d", 51.51, -0.13),
    ("plant-e", 41.39, 2.17),
)


def build_fleet(
    devices: int,
    *,
    sites: int,
    zones_per_site: int,
    gateways_per_site: int,
    interval_s: float,
    start_ts: float,
    rng: random.Random,
    chemistries: tuple[str, ...] = ("li_ion",),
) -> list[SimDevice]:
    """Spread ``devices`` over sites, zones and gateways with realistic variety.

    Battery devices get a pack of one of ``chemistries`` (chosen by device id).
    """
    fleet: list[SimDevice] = []
    zone_phase: dict[tuple[str, str], float] = {}
    site_count = max(1, min(sites, len(SITES) * 20))
    for index in range(devices):
        site_name, lat0, lon0 = SITES[index % site_count % len(SITES)]
        if site_count > len(SITES):
            site_name = f"{site_name}-{index % site_count // len(SITES)}"
        zone = f"z{rng.randrange(zones_per_site) + 1}"
        gateway = f"gw-{site_name}-{rng.randrange(gateways_per_site) + 1:02d}"
        model = MODELS[rng.randrange(len(MODELS))]
        firmware = model.firmware[rng.randrange(len(model.firmware))]
        jitter = interval_s * rng.uniform(0.9, 1.1)
        fleet.append(
            SimDevice(
                device_id=f"{model.name.split('-')[0].lower()}-{index:06d}",
                site=site_name,
                zone=zone,
                gateway=gateway,
                model=model,
                firmware=firmware,
                lat=round(lat0 + rng.uniform(-0.01, 0.01), 6),
                lon=round(lon0 + rng.uniform(-0.01, 0.01), 6),
                interval_s=jitter,
                next_ts=start_ts + rng.uniform(0, jitter),
                battery_v0=rng.uniform(3.8, 4.1),
                drain_v_per_s=rng.uniform(0.2, 0.8) / (180 * DAY_S),
                temp_offset=rng.gauss(0, 1.0),
                # sensors in one zone share its daily cycle (they measure the same air)
                phase=zone_phase.setdefault((site_name, zone), rng.uniform(-0.3, 0.3))
                + rng.gauss(0, 0.01),
                rssi_base=rng.uniform(-95, -55),
                power_base=rng.uniform(800, 1500),
                rng=random.Random(rng.getrandbits(64)),
            )
        )
        device = fleet[-1]
        if model.battery:
            pick = zlib.crc32(device.device_id.encode()) % len(chemistries)
            device.fit_battery(CHEMISTRIES[chemistries[pick]], start_ts)
    return fleet
