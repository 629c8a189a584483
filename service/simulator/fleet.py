"""The simulated fleet: sites, zones, gateways, device models and their signals.

Everything is drawn from one ``random.Random(seed)``: the same seed gives the same fleet.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

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

    def battery_v(self, ts: float, start_ts: float) -> float:
        return max(3.0, self.battery_v0 - self.drain_v_per_s * (ts - start_ts))

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
                out[metric] = self.power_base * (1 + 0.05 * day) + rng.gauss(
                    0, self.power_base * 0.02
                )
            elif metric == "voltage_v":
                out[metric] = 230.0 + rng.gauss(0, 1.0)
            elif metric == "vibration_g":
                out[metric] = abs(0.3 + rng.gauss(0, 0.05))
        if self.model.battery:
            volts = self.battery_v(ts, start_ts) + rng.gauss(0, 0.005)
            out["battery_v"] = volts
            if self.model.reports_pct:
                out["battery_pct"] = max(0.0, min(100.0, (volts - 3.0) / 1.1 * 100.0))
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
) -> list[SimDevice]:
    """Spread ``devices`` over sites, zones and gateways with realistic variety."""
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
    return fleet
