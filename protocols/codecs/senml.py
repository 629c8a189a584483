"""SenML (RFC 8428) in JSON and CBOR: a pack of records becomes FleetWatch records.

Each SenML record is resolved against the base fields before it (``bn``, ``bt``, ``bu``,
``bv``, ``bs``): name = base name + name, time = base time + time, unit = unit or base
unit. Records with the same resolved time become one FleetWatch record, so a pack that a
device buffered over several times becomes several readings. The name's last part (after
``/``, ``:`` or ``;``; the device itself is named by the topic or the CoAP path) and the unit
give the field: ``temperature`` in ``Cel`` is ``temperature_c``, ``batt`` in ``V`` is
``batt_v`` (an alias of ``battery_v``), a level in ``%EL`` is ``..._pct``. ``v`` is a
number, ``vb`` a boolean (as 0/1), ``vs`` a string (metadata such as a firmware version),
``s`` a sum (``<name>_sum``); ``vd`` (opaque data) is skipped. Times below 2**28 are
relative to the receive time (RFC 8428 section 4.5.3).

>>> codec = SenmlJsonCodec()
>>> codec.decode(b'[{"bn": "urn:dev:ow:10e2:", "bt": 1700000000, "n": "temperature",'
...              b' "u": "Cel", "v": 23.1}, {"n": "batt", "u": "V", "v": 3.61},'
...              b' {"n": "temperature", "u": "Cel", "v": 23.4, "t": 60}]', DecodeContext())
[{'ts': 1700000000.0, 'temperature_c': 23.1, 'batt_v': 3.61}, {'ts': 1700000060.0, 'temperature_c': 23.4}]
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import orjson

from protocols.codecs.base import DecodeContext, Record
from protocols.codecs.cbor import load_cbor
from service.errors import DecodeError

# RFC 8428 section 6: CBOR labels
_CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs", 0: "n", 1: "u",
                2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}  # fmt: skip
_UNIT_SUFFIX = {
    "Cel": "_c", "V": "_v", "A": "_a", "W": "_w", "Pa": "_pa", "%RH": "_pct", "%": "_pct",
    "%EL": "_pct", "dBm": "_dbm", "dB": "_db", "Hz": "_hz", "s": "_s", "m/s2": "_ms2",
    "m": "_m", "kg": "_kg", "lx": "_lx", "J": "_j", "Wh": "_wh", "ppm": "_ppm", "g": "_g",
}  # fmt: skip
_RELATIVE_LIMIT = 2**28
_SPLIT = re.compile(r"[/:;]")


@functools.lru_cache(maxsize=65_536)  # the same names arrive again and again
def field_name(name: str, unit: str | None) -> str:
    """The FleetWatch field for a SenML name and unit.

    >>> field_name("urn:dev:ow:10e2:temperature", "Cel"), field_name("rssi", "dBm")
    ('temperature_c', 'rssi_dbm')
    >>> field_name("lat", "lat"), field_name("humidity_pct", "%RH")
    ('lat', 'humidity_pct')
    """
    parts = [p for p in _SPLIT.split(name) if p]
    base = (parts[-1] if parts else name).strip().lower().replace(" ", "_").replace("-", "_")
    if unit in ("lat", "lon"):
        return unit
    suffix = _UNIT_SUFFIX.get(unit or "", "")
    if suffix and not base.endswith(suffix):
        return base + suffix
    return base


def _number(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("bad_senml", f"{label} is {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise DecodeError("non_finite_number", f"{label} is NaN or infinite")
    return float(value)


def text_labels(pack: Any) -> Any:
    """A SenML CBOR pack with its integer labels as the text labels of SenML JSON.

    >>> text_labels([{-2: "urn:dev:1:", 0: "temp", 2: 21.5}])
    [{'bn': 'urn:dev:1:', 'n': 'temp', 'v': 21.5}]
    """
    if not isinstance(pack, list):
        return pack  # the resolver says what is wrong with it
    return [
        {_CBOR_LABELS.get(k, str(k)): v for k, v in entry.items()}
        if isinstance(entry, dict)
        else entry
        for entry in pack
    ]


def resolve_pack(pack: Any, context: DecodeContext) -> list[Record]:
    """Resolve a SenML pack (a list of record maps with text labels) into records."""
    if not isinstance(pack, list):
        raise DecodeError("bad_senml", f"a SenML pack is an array, not a {type(pack).__name__}")
    if len(pack) > context.max_records:
        raise DecodeError(
            "too_many_records",
            f"pack of {len(pack)} records exceeds the limit of {context.max_records}",
        )
    base_name, base_time, base_unit, base_value, base_sum = "", 0.0, None, 0.0, 0.0
    by_time: dict[float | None, Record] = {}
    for index, entry in enumerate(pack):
        if not isinstance(entry, dict):
            raise DecodeError("bad_senml", f"record {index} is {type(entry).__name__}")
        if "bn" in entry:
            base_name = str(entry["bn"])
        if "bt" in entry:
            base_time = _number(entry["bt"], "bt")
        if "bu" in entry:
            base_unit = str(entry["bu"])
        if "bv" in entry:
            base_value = _number(entry["bv"], "bv")
        if "bs" in entry:
            base_sum = _number(entry["bs"], "bs")
        name = base_name + str(entry.get("n", ""))
        if not ("v" in entry or "vs" in entry or "vb" in entry or "vd" in entry or "s" in entry):
            continue
        if not name:
            raise DecodeError("bad_senml", f"record {index} has a value but no name")
        time = base_time + (_number(entry["t"], "t") if "t" in entry else 0.0)
        key: float | None = time if time >= _RELATIVE_LIMIT else None
        if key is None and time != 0.0:
            key = (context.received_at or 0.0) + time
        record = by_time.get(key)
        if record is None:
            record = by_time[key] = {} if key is None else {"ts": key}
        unit = str(entry["u"]) if "u" in entry else base_unit
        numeric = "v" in entry or "s" in entry
        field = field_name(name, unit if numeric else None)
        if "v" in entry:
            record[field] = base_value + _number(entry["v"], "v")
        elif "vb" in entry:
            if not isinstance(entry["vb"], bool):
                raise DecodeError("bad_senml", f"record {index}: vb is not a boolean")
            record[field] = 1 if entry["vb"] else 0
        elif "vs" in entry:
            record[field] = str(entry["vs"])
        if "s" in entry:
            record[field + "_sum"] = base_sum + _number(entry["s"], "s")
    return list(by_time.values())


class SenmlJsonCodec:
    """SenML JSON (content format 110)."""

    name: str = "senml+json"
    content_types: tuple[str, ...] = ("application/senml+json",)
    needs_receive_time = True

    def decode(self, payload: bytes, context: DecodeContext) -> list[Record]:
        try:
            pack = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("malformed_json", str(exc)) from exc
        return resolve_pack(pack, context)


class SenmlCborCodec:
    """SenML CBOR (content format 112): integer labels (RFC 8428 section 6)."""

    name: str = "senml+cbor"
    content_types: tuple[str, ...] = ("application/senml+cbor",)
    needs_receive_time = True

    def decode(self, payload: bytes, context: DecodeContext) -> list[Record]:
        return resolve_pack(text_labels(load_cbor(payload)), context)
