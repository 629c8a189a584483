"""The fault catalogue: what can go wrong with a simulated device.

A fault is switched on for ``count`` devices at ``start_s`` seconds into the simulation
and, with a ``duration_s``, ends again (the battery is replaced, the device cools down,
the device comes back). ``FAULTS`` maps each name to its class: a new fault is a class
and one line there.

>>> spec = FaultSpec.parse("battery_failing=3@60+600")
>>> spec.name, spec.count, spec.start_s, spec.duration_s
('battery_failing', 3, 60.0, 600.0)
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from service.simulator.fleet import SimDevice

Extra = tuple[str, bytes]  # (topic suffix kind, payload)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Which fault, on how many devices, from when, for how long, with what parameters."""

    name: str
    count: int = 1
    start_s: float = 0.0
    duration_s: float | None = None
    params: tuple[tuple[str, float | str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """Parse ``NAME[=COUNT][@START_S][+DURATION_S][:key=value,...]``."""
        head, _, options = text.partition(":")
        params: list[tuple[str, float | str]] = []
        for item in filter(None, options.split(",")):
            key, _, raw = item.partition("=")
            try:
                params.append((key.strip(), float(raw)))
            except ValueError:
                params.append((key.strip(), raw.strip()))
        duration: float | None = None
        if "+" in head:
            head, _, duration_text = head.partition("+")
            duration = float(duration_text)
        start = 0.0
        if "@" in head:
            head, _, start_text = head.partition("@")
            start = float(start_text)
        name, _, count_text = head.partition("=")
        name = name.strip()
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(sorted(FAULTS))})")
        count = int(count_text) if count_text else 1
        if count < 0 or start < 0 or (duration is not None and duration <= 0):
            raise ValueError(f"bad fault spec {text!r}")
        return cls(name, count, start, duration, tuple(params))


@dataclass(frozen=True, slots=True)
class PlantedFault:
    """Ground truth: a fault planted on a device, for benchmarks and tests."""

    fault: str
    device_id: str
    site: str
    start_ts: float
    end_ts: float | None


@dataclass
class Fault:
    """Base class: a fault active on one device between ``start_ts`` and ``end_ts``."""

    name: ClassVar[str] = "fault"
    scope: ClassVar[str] = "device"  # or "gateway", "zone", "radio", "model": COUNT groups
    needs: ClassVar[tuple[str, ...]] = ()  # metrics an eligible device must report
    needs_battery: ClassVar[bool] = False

    device: SimDevice
    start_ts: float
    end_ts: float | None
    params: dict[str, Any] = field(default_factory=dict)
    started: bool = False
    ended: bool = False

    @classmethod
    def eligible(cls, device: SimDevice) -> bool:
        if cls.needs_battery and not device.model.battery:
            return False
        return all(metric in device.model.metrics for metric in cls.needs)

    def param(self, key: str, default: float) -> float:
        return float(self.params.get(key, default))

    def on_start(self, ts: float) -> list[Extra]:
        return []

    def on_end(self, ts: float) -> list[Extra]:
        return []

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        """Change the reading the device is about to send."""

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        """Whether the report at ``ts`` is lost on the way (connectivity faults)."""
        return False


class BatteryFailing(Fault):
    """The battery collapses to its empty voltage within ``collapse_s``; at the end it is
    replaced."""

    name = "battery_failing"
    needs_battery = True

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        pack = self.device.pack
        if "battery_v" not in values or pack is None:
            return
        progress = min(1.0, (ts - self.start_ts) / max(1.0, self.param("collapse_s", 60.0)))
        floor = pack.chemistry.volts_at(0.0)
        volts = values["battery_v"] - (values["battery_v"] - floor) * progress
        values["battery_v"] = volts
        if "battery_pct" in values:
            values["battery_pct"] = pack.chemistry.level(volts)

    def on_end(self, ts: float) -> list[Extra]:
        if self.device.pack is not None:
            self.device.pack.replace(ts)
        return []


def _draws_power(device: SimDevice) -> bool:
    return device.pack is not None or "power_mw" in device.model.metrics


class ShortCircuit(Fault):
    """A short circuit: the device draws ``factor`` (default 2) times its current from the
    start; at the end it is repaired."""

    name = "short_circuit"

    @classmethod
    def eligible(cls, device: SimDevice) -> bool:
        return _draws_power(device)

    def on_start(self, ts: float) -> list[Extra]:
        self.device.draw_factor *= self.param("factor", 2.0)
        return []

    def on_end(self, ts: float) -> list[Extra]:
        self.device.draw_factor /= self.param("factor", 2.0)
        return []


class SlowLeak(Fault):
    """A slow leak (a failing capacitor, moisture): the draw grows by ``per_day`` (default
    0.05, 5% of the healthy draw) every day; at the end it is repaired."""

    name = "slow_leak"

    @classmethod
    def eligible(cls, device: SimDevice) -> bool:
        return _draws_power(device)

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        days = (ts - self.start_ts) / 86_400.0
        self.device.extra_draw = self.param("per_day", 0.05) * days

    def on_end(self, ts: float) -> list[Extra]:
        self.device.extra_draw = 0.0
        return []


class RadioNoSleep(Fault):
    """A firmware update (to ``version``, default the current one with ``-r2``) whose bug
    keeps the radio awake: the draw is ``factor`` (default 4) times higher; at the end a
    fixed firmware (``fixed``, default ``-r3``) puts it back to sleep."""

    name = "radio_no_sleep"

    @classmethod
    def eligible(cls, device: SimDevice) -> bool:
        return _draws_power(device)

    def _update(self, ts: float, version: str) -> list[Extra]:
        old = self.device.firmware
        self.device.firmware = version
        event = {"ts": round(ts, 3), "event": "succeeded", "from": old, "to": version}
        return [("firmware", orjson.dumps(event))]

    def on_start(self, ts: float) -> list[Extra]:
        self.params.setdefault("base_firmware", self.device.firmware)
        self.device.draw_factor *= self.param("factor", 4.0)
        version = str(self.params.get("version", f"{self.params['base_firmware']}-r2"))
        return self._update(ts, version)

    def on_end(self, ts: float) -> list[Extra]:
        self.device.draw_factor /= self.param("factor", 4.0)
        version = str(self.params.get("fixed", f"{self.params['base_firmware']}-r3"))
        return self._update(ts, version)


class Charger(Fault):
    """The device is on a charger (``power_source`` = ``charging``), which puts back
    ``rate_c`` (default 0.2) of the capacity per hour; at the end it is unplugged."""

    name = "charger"
    needs_battery = True

    def on_start(self, ts: float) -> list[Extra]:
        pack = self.device.pack
        if pack is not None:
            pack.advance(ts, self.device.draw_ma)
            pack.charging_ma = self.param("rate_c", 0.2) * pack.capacity_mah
        return []

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        meta["power_source"] = "charging"

    def on_end(self, ts: float) -> list[Extra]:
        pack = self.device.pack
        if pack is not None:
            pack.advance(ts, self.device.draw_ma)
            pack.charging_ma = 0.0
        return []


class BatterySwap(Fault):
    """The battery is replaced with a fresh one at the start."""

    name = "battery_swap"
    needs_battery = True

    def on_start(self, ts: float) -> list[Extra]:
        if self.device.pack is not None:
            self.device.pack.replace(ts)
        return []


class TemperatureCycle(Fault):
    """The device's surroundings swing ``amplitude_c`` (default 15 °C) either way over
    ``period_s`` (default a day); the cold lowers the battery's voltage."""

    name = "temperature_cycle"
    needs = ("temperature_c",)

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        phase = 2 * math.pi * (ts - self.start_ts) / self.param("period_s", 86_400.0)
        before = values["temperature_c"]
        after = before + self.param("amplitude_c", 15.0) * math.sin(phase)
        values["temperature_c"] = after
        pack = self.device.pack
        if pack is not None and "battery_v" in values:
            coef = pack.chemistry.temp_coef_v_per_c
            values["battery_v"] -= coef * (max(0.0, 20.0 - after) - max(0.0, 20.0 - before))


class SensorDrift(Fault):
    """The temperature reading drifts away at ``rate_c_per_h`` (default 1 °C per hour)."""

    name = "sensor_drift"
    needs = ("temperature_c",)

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        hours = (ts - self.start_ts) / 3600.0
        values["temperature_c"] += self.param("rate_c_per_h", 1.0) * hours


class Overheating(Fault):
    """The temperature climbs to ``peak_c`` over ``ramp_s``; at the end it cools down."""

    name = "overheating"
    needs = ("temperature_c",)

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        progress = min(1.0, (ts - self.start_ts) / max(1.0, self.param("ramp_s", 20.0)))
        base = values["temperature_c"]
        values["temperature_c"] = base + (self.param("peak_c", 85.0) - base) * progress


class GatewayOverload(Fault):
    """The device is moved onto its site's first gateway, whose signal suffers; at the end
    it goes back to its own gateway."""

    name = "gateway_overload"
    needs = ("rssi_dbm",)

    def on_start(self, ts: float) -> list[Extra]:
        self.params["home"] = self.device.gateway
        self.device.gateway = f"gw-{self.device.site}-01"
        return []

    def on_end(self, ts: float) -> list[Extra]:
        self.device.gateway = str(self.params.get("home", self.device.gateway))
        return []

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        values["rssi_dbm"] -= self.param("rssi_loss_db", 25.0)


class FirmwareChange(Fault):
    """An update nobody ordered: the firmware changes to ``version``."""

    name = "firmware_change"

    def on_start(self, ts: float) -> list[Extra]:
        old = self.device.firmware
        new = str(self.params.get("version", "9.9.9-unknown"))
        self.device.firmware = new
        event = {"ts": round(ts, 3), "event": "succeeded", "from": old, "to": new}
        return [("firmware", orjson.dumps(event))]


class Silent(Fault):
    """The device stops reporting; when it comes back it uploads what it buffered."""

    name = "silent"

    def on_start(self, ts: float) -> list[Extra]:
        self.device.silent = True
        self.params.setdefault("buffer", [])
        if self.params.get("graceful"):
            return [("status", orjson.dumps({"ts": round(ts, 3), "status": "offline"}))]
        return []

    def on_end(self, ts: float) -> list[Extra]:
        self.device.silent = False
        buffered: list[dict[str, Any]] = self.params.get("buffer", [])
        extras: list[Extra] = [("status", orjson.dumps({"ts": round(ts, 3), "status": "online"}))]
        if buffered:
            extras.append(("batch", orjson.dumps(buffered[-100:])))
        return extras


class GatewayDown(Fault):
    """A gateway dies (COUNT gateways): every device behind it goes unheard, nothing is
    buffered; at the end the gateway is back."""

    name = "gateway_down"
    scope = "gateway"

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        return bool(self.device.gateway == self.params["group"])


class Intermittent(Fault):
    """The link drops for ``outage_s`` (default 240 s) every ``period_s`` (default 2 h)."""

    name = "intermittent"

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        period = self.param("period_s", 7200.0)
        return (ts - self.start_ts) % period < self.param("outage_s", 240.0)


class FadingSignal(Fault):
    """RSSI falls ``rate_db_per_h`` (default 2 dB/h) until the link is lost below
    ``loss_dbm`` (default -120 dBm)."""

    name = "fading_signal"
    needs = ("rssi_dbm",)

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        hours = (ts - self.start_ts) / 3600.0
        values["rssi_dbm"] -= self.param("rate_db_per_h", 2.0) * hours

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        return values.get("rssi_dbm", 0.0) < self.param("loss_dbm", -120.0)


class ShiftDropout(Fault):
    """A machine runs in a zone (COUNT zones) from ``from_h`` to ``to_h`` UTC every day
    (default 14-15): devices there drop out with probability ``p`` (default 0.9)."""

    name = "shift_dropout"
    scope = "zone"

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        hour = (ts % 86_400.0) / 3600.0
        if not self.param("from_h", 14.0) <= hour < self.param("to_h", 15.0):
            return False
        return self.device.rng.random() < self.param("p", 0.9)


class FlakyRadio(Fault):
    """A radio technology (COUNT of them) drops every device for ``outage_s`` (default
    240 s) every ``period_s`` (default 3 h), each device at its own phase."""

    name = "flaky_radio"
    scope = "radio"

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        period = self.param("period_s", 10_800.0)
        phase = (zlib.crc32(self.device.device_id.encode()) & 0xFFFF) / 0xFFFF * period
        return (ts - self.start_ts + phase) % period < self.param("outage_s", 240.0)


class FirmwareCampaign(Fault):
    """An update campaign for a model (COUNT models): each device starts downloading
    ``version`` (default 9.0.0) at its own time within ``spread_s`` and after the duration
    succeeds, or fails with probability ``p_fail`` (default 0.1; ``p_fail_site`` for devices
    at ``weak_site``, the first site by default, default 0.5)."""

    name = "firmware_campaign"
    scope = "model"

    def on_start(self, ts: float) -> list[Extra]:
        target = str(self.params.get("version", "9.0.0"))
        event = {"ts": round(ts, 3), "event": "started", "from": self.device.firmware, "to": target}
        return [("firmware", orjson.dumps(event))]

    def on_end(self, ts: float) -> list[Extra]:
        target = str(self.params.get("version", "9.0.0"))
        weak = str(self.params.get("weak_site", "plant-a"))
        p_fail = self.param("p_fail_site", 0.5) if self.device.site == weak else self.param(
            "p_fail", 0.1
        )  # fmt: skip
        old = self.device.firmware
        if self.device.rng.random() < p_fail:
            event = {"ts": round(ts, 3), "event": "failed", "from": old, "to": target, "code": 17}
        else:
            self.device.firmware = target
            event = {"ts": round(ts, 3), "event": "succeeded", "from": old, "to": target}
        return [("firmware", orjson.dumps(event))]


class HotZone(Fault):
    """A zone (COUNT zones) runs ``extra_c`` (default 20 °C) hotter: batteries drain
    ``drain_factor`` (default 3) times faster and reports drop with probability ``p_drop``
    (default 0.1)."""

    name = "hot_zone"
    scope = "zone"

    def on_start(self, ts: float) -> list[Extra]:
        if self.device.pack is not None:
            self.device.draw_factor *= self.param("drain_factor", 3.0)
        return []

    def on_end(self, ts: float) -> list[Extra]:
        if self.device.pack is not None:
            self.device.draw_factor /= self.param("drain_factor", 3.0)
        return []

    def apply(self, ts: float, values: dict[str, float], meta: dict[str, Any]) -> None:
        if "temperature_c" in values:
            values["temperature_c"] += self.param("extra_c", 20.0)

    def drops(self, ts: float, values: dict[str, float]) -> bool:
        return self.device.rng.random() < self.param("p_drop", 0.1)


FAULTS: dict[str, type[Fault]] = {
    cls.name: cls
    for cls in (
        BatteryFailing,
        SensorDrift,
        Overheating,
        GatewayOverload,
        FirmwareChange,
        Silent,
        GatewayDown,
        Intermittent,
        FadingSignal,
        ShiftDropout,
        FlakyRadio,
        FirmwareCampaign,
        HotZone,
        ShortCircuit,
        SlowLeak,
        RadioNoSleep,
        Charger,
        BatterySwap,
        TemperatureCycle,
    )
}
