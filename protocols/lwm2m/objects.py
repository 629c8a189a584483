"""The LwM2M object model FleetWatch understands, and how resources become records.

A small table: per ``(object id, resource id)`` its name, data type and role. The role says
where the value goes in FleetWatch's payload schema (see the README): a canonical metric
(``battery_pct``, ``rssi_dbm`` ...), a metadata key (``firmware``, ``lat``, ``bearer`` ...),
or a firmware update state that becomes firmware events (``downloading``, ``succeeded``,
``failed`` ...). Resources not in the table are skipped.

=======================  ==========================================================
resource                  becomes
=======================  ==========================================================
3/0/0, 3/0/1, 3/0/2       ``manufacturer``, ``model``, ``serial`` (metadata)
3/0/3                     ``firmware`` (metadata)
3/0/6 + 3/0/7             power source voltage (mV): ``battery_v`` for a battery source
                          (internal 1, external 2; or instance 0 when 3/0/6 is unknown),
                          ``voltage_v`` otherwise
3/0/8                     current of that source (mA): ``current_a``
3/0/9                     ``battery_pct``
3/0/10, 3/0/21            ``memory_free_kb``, ``memory_total_kb``
3/0/11                    ``errors`` (metadata: ``none`` or names such as ``low_battery``)
4/0/0                     ``bearer`` (metadata: ``lte-fdd``, ``nb-iot``, ``wlan`` ...)
4/0/2, 4/0/3              ``rssi_dbm``, ``link_quality`` (as the device reports it)
4/0/8                     ``cell_id`` (metadata)
5/0/3, 5/0/5, 5/0/7       firmware events (state, update result, package version)
6/0/0, 6/0/1, 6/0/2       ``lat``, ``lon``, ``alt`` (metadata)
IPSO 5700 (5701 unit)     the sensor's canonical metric, converted from its unit
=======================  ==========================================================

IPSO sensors: 3301 illuminance ``illuminance_lux``, 3303 temperature ``temperature_c``,
3304 humidity ``humidity_pct``, 3315 barometer and 3323 pressure ``pressure_kpa``, 3316
voltage ``voltage_v``, 3317 current ``current_a``, 3328 power ``power_mw``. Instance 0
gives the canonical metric, instance *n* the metric with ``_n`` added
(``temperature_c_1``).

>>> memory = DeviceMemory()
>>> values = [ResourceValue((3303, 0, 5700), 21.5), ResourceValue((3, 0, 9), 87),
...           ResourceValue((3, 0, 3), "1.4.2"), ResourceValue((4, 0, 0), 6)]
>>> translate(values, memory).records
[{'firmware': '1.4.2', 'battery_pct': 87.0, 'bearer': 'lte-fdd', 'temperature_c': 21.5}]
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

ResourcePath = tuple[int, ...]
"""``(object, instance, resource)`` or ``(object, instance, resource, resource instance)``."""

Value = int | float | bool | str | bytes


class ResourceType(enum.StrEnum):
    """LwM2M data types (OMA LwM2M Core, appendix C)."""

    INTEGER = "integer"
    UNSIGNED = "unsigned"
    FLOAT = "float"
    BOOLEAN = "boolean"
    STRING = "string"
    TIME = "time"
    OPAQUE = "opaque"
    OBJLNK = "objlnk"


class Role(enum.Enum):
    """Where a resource's value goes."""

    IGNORE = enum.auto()  # typed (so decoders read it) but not mapped
    METRIC = enum.auto()
    META = enum.auto()
    POWER_SOURCE = enum.auto()
    POWER_VOLTAGE = enum.auto()
    POWER_CURRENT = enum.auto()
    ERROR_CODES = enum.auto()
    BEARER = enum.auto()
    FIRMWARE_STATE = enum.auto()
    FIRMWARE_RESULT = enum.auto()
    PACKAGE_VERSION = enum.auto()
    SENSOR_VALUE = enum.auto()
    SENSOR_UNITS = enum.auto()


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource of the object model."""

    object_id: int
    resource_id: int
    name: str
    type: ResourceType
    role: Role = Role.IGNORE
    target: str = ""  # metric name or metadata key
    scale: float = 1.0
    multiple: bool = False


@dataclass(frozen=True, slots=True)
class Quantity:
    """What an IPSO sensor object measures: its canonical metric and unit conversions.

    ``units`` maps a unit (as resource 5701 names it) to ``(scale, offset)`` into the
    canonical metric; ``default_unit`` applies when the device does not say.
    """

    object_id: int
    name: str
    metric: str
    default_unit: str
    units: Mapping[str, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class ResourceValue:
    """One decoded resource value; ``ts`` is device time when the payload carried one."""

    path: ResourcePath
    value: Value
    ts: float | None = None


_I, _U, _F, _B, _S, _T = (ResourceType.INTEGER, ResourceType.UNSIGNED, ResourceType.FLOAT,
                          ResourceType.BOOLEAN, ResourceType.STRING, ResourceType.TIME)  # fmt: skip

OBJECT_NAMES: Mapping[int, str] = MappingProxyType({
    1: "LwM2M Server", 3: "Device", 4: "Connectivity Monitoring", 5: "Firmware Update",
    6: "Location", 3301: "Illuminance", 3303: "Temperature", 3304: "Humidity",
    3315: "Barometer", 3316: "Voltage", 3317: "Current", 3323: "Pressure", 3328: "Power",
})  # fmt: skip

_CORE: tuple[Resource, ...] = (
    Resource(3, 0, "Manufacturer", _S, Role.META, "manufacturer"),
    Resource(3, 1, "Model Number", _S, Role.META, "model"),
    Resource(3, 2, "Serial Number", _S, Role.META, "serial"),
    Resource(3, 3, "Firmware Version", _S, Role.META, "firmware"),
    Resource(3, 6, "Available Power Sources", _I, Role.POWER_SOURCE, multiple=True),
    Resource(3, 7, "Power Source Voltage", _I, Role.POWER_VOLTAGE, scale=0.001, multiple=True),
    Resource(3, 8, "Power Source Current", _I, Role.POWER_CURRENT, scale=0.001, multiple=True),
    Resource(3, 9, "Battery Level", _I, Role.METRIC, "battery_pct"),
    Resource(3, 10, "Memory Free", _I, Role.METRIC, "memory_free_kb"),
    Resource(3, 11, "Error Code", _I, Role.ERROR_CODES, multiple=True),
    Resource(3, 13, "Current Time", _T),
    Resource(3, 14, "UTC Offset", _S),
    Resource(3, 15, "Timezone", _S),
    Resource(3, 16, "Supported Binding and Modes", _S),
    Resource(3, 17, "Device Type", _S),
    Resource(3, 18, "Hardware Version", _S, Role.META, "hardware"),
    Resource(3, 19, "Software Version", _S),
    Resource(3, 20, "Battery Status", _I),
    Resource(3, 21, "Memory Total", _I, Role.METRIC, "memory_total_kb"),
    Resource(4, 0, "Network Bearer", _I, Role.BEARER, "bearer"),
    Resource(4, 1, "Available Network Bearer", _I, multiple=True),
    Resource(4, 2, "Radio Signal Strength", _I, Role.METRIC, "rssi_dbm"),
    Resource(4, 3, "Link Quality", _I, Role.METRIC, "link_quality"),
    Resource(4, 4, "IP Addresses", _S, multiple=True),
    Resource(4, 5, "Router IP Addresses", _S, multiple=True),
    Resource(4, 6, "Link Utilization", _I),
    Resource(4, 7, "APN", _S, multiple=True),
    Resource(4, 8, "Cell ID", _I, Role.META, "cell_id"),
    Resource(4, 9, "SMNC", _I),
    Resource(4, 10, "SMCC", _I),
    Resource(5, 1, "Package URI", _S),
    Resource(5, 3, "State", _I, Role.FIRMWARE_STATE),
    Resource(5, 5, "Update Result", _I, Role.FIRMWARE_RESULT),
    Resource(5, 6, "PkgName", _S),
    Resource(5, 7, "PkgVersion", _S, Role.PACKAGE_VERSION),
    Resource(5, 8, "Firmware Update Protocol Support", _I, multiple=True),
    Resource(5, 9, "Firmware Update Delivery Method", _I),
    Resource(6, 0, "Latitude", _F, Role.META, "lat"),
    Resource(6, 1, "Longitude", _F, Role.META, "lon"),
    Resource(6, 2, "Altitude", _F, Role.META, "alt"),
    Resource(6, 3, "Radius", _F),
    Resource(6, 5, "Timestamp", _T),
    Resource(6, 6, "Speed", _F),
)

_TEMPERATURE = {"Cel": (1.0, 0.0), "C": (1.0, 0.0), "°C": (1.0, 0.0), "K": (1.0, -273.15),
                "Far": (5 / 9, -160 / 9), "F": (5 / 9, -160 / 9), "°F": (5 / 9, -160 / 9)}  # fmt: skip
_PRESSURE = {"Pa": (0.001, 0.0), "hPa": (0.1, 0.0), "kPa": (1.0, 0.0), "mbar": (0.1, 0.0),
             "bar": (100.0, 0.0)}  # fmt: skip

IPSO_SENSORS: Mapping[int, Quantity] = MappingProxyType({
    q.object_id: q
    for q in (
        Quantity(3301, "Illuminance", "illuminance_lux", "lx", {"lx": (1.0, 0.0), "lux": (1.0, 0.0)}),
        Quantity(3303, "Temperature", "temperature_c", "Cel", _TEMPERATURE),
        Quantity(3304, "Humidity", "humidity_pct", "%RH", {"%RH": (1.0, 0.0), "%": (1.0, 0.0)}),
        Quantity(3315, "Barometer", "pressure_kpa", "Pa", _PRESSURE),
        Quantity(3316, "Voltage", "voltage_v", "V", {"V": (1.0, 0.0), "mV": (0.001, 0.0)}),
        Quantity(3317, "Current", "current_a", "A", {"A": (1.0, 0.0), "mA": (0.001, 0.0)}),
        Quantity(3323, "Pressure", "pressure_kpa", "Pa", _PRESSURE),
        Quantity(3328, "Power", "power_mw", "W",
                 {"W": (1000.0, 0.0), "mW": (1.0, 0.0), "kW": (1e6, 0.0)}),
    )
})  # fmt: skip
"""IPSO sensor objects by object id."""


def _ipso(object_id: int) -> tuple[Resource, ...]:
    return (
        Resource(object_id, 5700, "Sensor Value", _F, Role.SENSOR_VALUE),
        Resource(object_id, 5701, "Sensor Units", _S, Role.SENSOR_UNITS),
        Resource(object_id, 5601, "Min Measured Value", _F),
        Resource(object_id, 5602, "Max Measured Value", _F),
        Resource(object_id, 5603, "Min Range Value", _F),
        Resource(object_id, 5604, "Max Range Value", _F),
        Resource(object_id, 5750, "Application Type", _S),
    )


RESOURCES: Mapping[tuple[int, int], Resource] = MappingProxyType({
    (r.object_id, r.resource_id): r
    for r in (*_CORE, *(r for o in IPSO_SENSORS for r in _ipso(o)))
})  # fmt: skip
"""The object model: ``(object id, resource id)`` -> :class:`Resource`."""

OBSERVED_OBJECTS: tuple[int, ...] = (3, 4, 5, 6, *IPSO_SENSORS)
"""The objects FleetWatch observes by default (those the model maps)."""

BEARERS: Mapping[int, str] = MappingProxyType({
    0: "gsm", 1: "td-scdma", 2: "wcdma", 3: "cdma2000", 4: "wimax", 5: "lte-tdd",
    6: "lte-fdd", 7: "nb-iot", 21: "wlan", 22: "bluetooth", 23: "ieee802.15.4",
    41: "ethernet", 42: "dsl", 43: "plc",
})  # fmt: skip
ERROR_CODES: Mapping[int, str] = MappingProxyType({
    0: "none", 1: "low_battery", 2: "external_power_off", 3: "gps_failure", 4: "low_signal",
    5: "out_of_memory", 6: "sms_failure", 7: "ip_connectivity_failure",
    8: "peripheral_malfunction",
})  # fmt: skip
FIRMWARE_STATES: Mapping[int, str] = MappingProxyType(
    {0: "idle", 1: "downloading", 2: "downloaded", 3: "updating"}
)
FIRMWARE_RESULTS: Mapping[int, str] = MappingProxyType({
    0: "initial", 1: "succeeded", 2: "not_enough_flash", 3: "out_of_ram",
    4: "connection_lost", 5: "integrity_check_failure", 6: "unsupported_package_type",
    7: "invalid_uri", 8: "update_failed", 9: "unsupported_protocol",
})  # fmt: skip
_BATTERY_SOURCES = frozenset({1, 2})  # internal battery, external battery


def resource_type(path: ResourcePath) -> ResourceType | None:
    """The data type of the resource at ``path``, ``None`` if the model does not know it.

    >>> resource_type((3303, 0, 5700)), resource_type((3, 0, 7, 1)), resource_type((9, 0, 1))
    (<ResourceType.FLOAT: 'float'>, <ResourceType.INTEGER: 'integer'>, None)
    """
    if len(path) < 3:
        return None
    spec = RESOURCES.get((path[0], path[2]))
    return None if spec is None else spec.type


@dataclass(slots=True)
class DeviceMemory:
    """What the translation remembers of one device between payloads.

    Power sources (3/0/6) and sensor units (5701) give meaning to later values; the last
    firmware version and update state/result turn state changes into firmware events. The
    firmware part is saved with the registration (:meth:`state` / :meth:`from_state`) so
    that an update that completes across a server restart still gives its event.
    """

    power_sources: dict[int, int] = field(default_factory=dict)
    units: dict[tuple[int, int], str] = field(default_factory=dict)
    firmware: str | None = None
    update_state: int | None = None
    update_result: int | None = None
    package_version: str | None = None

    def state(self) -> dict[str, Any]:
        """The part worth keeping across restarts, as plain data."""
        return {
            "firmware": self.firmware,
            "update_state": self.update_state,
            "update_result": self.update_result,
            "package_version": self.package_version,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DeviceMemory:
        """The memory :meth:`state` saved (unknown keys are ignored).

        >>> DeviceMemory.from_state(DeviceMemory(firmware="1.2").state()).firmware
        '1.2'
        """
        memory = cls()
        firmware = state.get("firmware")
        memory.firmware = firmware if isinstance(firmware, str) else None
        for name in ("update_state", "update_result"):
            value = state.get(name)
            setattr(memory, name, value if isinstance(value, int) else None)
        package = state.get("package_version")
        memory.package_version = package if isinstance(package, str) else None
        return memory


@dataclass(frozen=True, slots=True)
class Translation:
    """Records of one payload: telemetry records and firmware event records.

    A record without ``ts`` carried no device time; the server stamps it with the receive
    time. ``skipped`` counts values the model does not map.
    """

    records: list[dict[str, Any]]
    events: list[dict[str, Any]]
    skipped: int = 0


def _number(value: Value) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _integer(value: Value) -> int | None:
    number = _number(value)
    if number is None or number != int(number):
        return None
    return int(number)


def _text(value: Value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    return None


def _suffix(name: str, instance: int) -> str:
    return name if instance == 0 else f"{name}_{instance}"


def _power_instance(memory: DeviceMemory) -> tuple[int, bool]:
    """The power source instance whose voltage and current FleetWatch reports, and whether
    it is a battery."""
    sources = memory.power_sources
    for instance in sorted(sources):
        if sources[instance] in _BATTERY_SOURCES:
            return instance, True
    if not sources:
        return 0, True  # a constrained device reporting one source: its battery
    return min(sources), False


def translate(values: Sequence[ResourceValue], memory: DeviceMemory) -> Translation:
    """Map decoded resource values onto FleetWatch records (one per device time).

    ``memory`` is read and updated (power sources, units, firmware state).

    >>> memory = DeviceMemory(firmware="1.4.2", update_state=1, update_result=0)
    >>> out = translate([ResourceValue((5, 0, 3), 0), ResourceValue((5, 0, 5), 8),
    ...                  ResourceValue((5, 0, 7), "1.5.0")], memory)
    >>> out.records, out.events
    ([], [{'event': 'failed', 'code': '8', 'from': '1.4.2', 'to': '1.5.0'}])
    """
    ordered = sorted(values, key=lambda v: v.path)
    # what gives later values their meaning comes first
    for item in ordered:
        spec = RESOURCES.get((item.path[0], item.path[2])) if len(item.path) >= 3 else None
        if spec is None:
            continue
        if spec.role is Role.POWER_SOURCE:
            instance = item.path[3] if len(item.path) > 3 else 0
            source = _integer(item.value)
            if source is not None:
                memory.power_sources[instance] = source
        elif spec.role is Role.SENSOR_UNITS and isinstance(item.value, str):
            memory.units[(item.path[0], item.path[1])] = item.value.strip()
    power_instance, battery = _power_instance(memory)

    by_time: dict[float | None, dict[str, Any]] = {}
    errors: dict[float | None, list[str]] = {}
    update: dict[str, Any] = {}
    update_ts: float | None = None
    skipped = 0
    for item in ordered:
        path = item.path
        spec = RESOURCES.get((path[0], path[2])) if len(path) >= 3 else None
        if spec is None or spec.role is Role.IGNORE:
            skipped += 1
            continue
        role = spec.role
        instance = path[1]
        sub = path[3] if len(path) > 3 else 0
        value = item.value
        if role in (Role.POWER_SOURCE, Role.SENSOR_UNITS):
            continue
        if role in (Role.FIRMWARE_STATE, Role.FIRMWARE_RESULT, Role.PACKAGE_VERSION):
            update[role.name] = value
            update_ts = item.ts if update_ts is None else update_ts
            continue
        record = by_time.setdefault(item.ts, {})
        if role is Role.METRIC:
            number = _number(value)
            if number is None:
                skipped += 1
                continue
            record[_suffix(spec.target, sub if spec.multiple else 0)] = number * spec.scale
        elif role is Role.META:
            text = _text(value)
            if text is None:
                skipped += 1
                continue
            record[spec.target] = text
        elif role in (Role.POWER_VOLTAGE, Role.POWER_CURRENT):
            number = _number(value)
            if number is None or sub != power_instance:
                skipped += 1
                continue
            if role is Role.POWER_VOLTAGE:
                record["battery_v" if battery else "voltage_v"] = number * spec.scale
            else:
                record["current_a"] = number * spec.scale
        elif role is Role.ERROR_CODES:
            code = _integer(value)
            if code is None:
                skipped += 1
                continue
            errors.setdefault(item.ts, []).append(ERROR_CODES.get(code, f"code_{code}"))
            record.setdefault("errors", "none")
        elif role is Role.BEARER:
            code = _integer(value)
            record["bearer"] = BEARERS.get(code, f"bearer_{code}") if code is not None else None
            if record["bearer"] is None:
                del record["bearer"]
                skipped += 1
        elif role is Role.SENSOR_VALUE:
            quantity = IPSO_SENSORS[path[0]]
            unit = memory.units.get((path[0], instance), quantity.default_unit)
            conversion = quantity.units.get(unit)
            number = _number(value)
            if conversion is None or number is None:
                skipped += 1
                continue
            scale, offset = conversion
            record[_suffix(quantity.metric, instance)] = number * scale + offset
    for ts, names in errors.items():
        real = [name for name in names if name != "none"]
        by_time[ts]["errors"] = ",".join(real) if real else "none"

    events = _firmware_events(update, update_ts, memory)
    for record in by_time.values():
        firmware = record.get("firmware")
        if firmware is not None:
            memory.firmware = firmware
    records = [
        record if ts is None else {"ts": ts, **record} for ts, record in by_time.items() if record
    ]
    return Translation(records, events, skipped)


def _firmware_events(
    update: Mapping[str, Any], ts: float | None, memory: DeviceMemory
) -> list[dict[str, Any]]:
    """Firmware events from a change of the update state (5/0/3) or result (5/0/5).

    The first value seen of each is only remembered: an event needs a change.
    """
    package = update.get(Role.PACKAGE_VERSION.name)
    if isinstance(package, str):
        memory.package_version = package or None
    state = _integer(update.get(Role.FIRMWARE_STATE.name, ""))
    result = _integer(update.get(Role.FIRMWARE_RESULT.name, ""))
    found: list[dict[str, Any]] = []
    if state is not None:
        if memory.update_state is not None and state != memory.update_state and state > 0:
            found.append({"event": FIRMWARE_STATES.get(state, "updating")})
        memory.update_state = state
    if result is not None:
        if memory.update_result is not None and result != memory.update_result:
            if result == 1:
                found.append({"event": "succeeded"})
            elif result >= 2:
                found.append({"event": "failed", "code": str(result)})
        memory.update_result = result
    events: list[dict[str, Any]] = []
    for event in found:
        if memory.firmware is not None:
            event["from"] = memory.firmware
        if memory.package_version is not None:
            event["to"] = memory.package_version
        events.append(event if ts is None else {"ts": ts, **event})
    return events
