"""The simulator: a deterministic stream of device messages in simulated time.

>>> sim = Simulator(SimulationConfig(devices=3, interval_s=60, seed=1, start_ts=1.767e9))
>>> msgs = list(sim.messages(until_ts=1.767e9 + 120))
>>> len(msgs), msgs[0].topic.endswith("/telemetry")
(5, True)
>>> msgs == list(Simulator(SimulationConfig(devices=3, interval_s=60, seed=1,
...                                         start_ts=1.767e9)).messages(1.767e9 + 120))
True
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from service.simulator.faults import FAULTS, Fault, FaultSpec, PlantedFault
from service.simulator.fleet import SimDevice, build_fleet


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate."""

    devices: int = 100
    sites: int = 3
    zones_per_site: int = 4
    gateways_per_site: int = 3
    interval_s: float = 60.0
    seed: int = 1
    start_ts: float = 1_767_225_600.0
    faults: tuple[FaultSpec, ...] = ()
    topic_prefix: str = ""
    network_delay_s: float = 0.05
    chemistries: tuple[str, ...] = ("li_ion",)  # battery devices get one of these


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message a device sends: topic, payload and the device time it was sent."""

    topic: str
    payload: bytes
    ts: float


class Simulator:
    """Generates the fleet's messages in time order."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self.devices = build_fleet(
            config.devices,
            sites=config.sites,
            zones_per_site=config.zones_per_site,
            gateways_per_site=config.gateways_per_site,
            interval_s=config.interval_s,
            start_ts=config.start_ts,
            rng=self._rng,
            chemistries=config.chemistries,
        )
        for device in self.devices:
            device.overrides["start_ts"] = config.start_ts
        self._faults: dict[str, list[Fault]] = {}
        self._planted: list[PlantedFault] = []
        self._plant(config.faults)
        prefix = config.topic_prefix.rstrip("/")
        self._prefix = f"{prefix}/" if prefix else ""

    def _plant(self, specs: tuple[FaultSpec, ...]) -> None:
        taken: set[str] = set()
        for spec in specs:
            cls = FAULTS[spec.name]
            start = self.config.start_ts + spec.start_s
            end = start + spec.duration_s if spec.duration_s is not None else None
            if cls.scope != "device":
                self._plant_group(cls, spec, start, end, taken)
                continue
            candidates = [d for d in self.devices if cls.eligible(d) and d.device_id not in taken]
            chosen = self._rng.sample(candidates, min(spec.count, len(candidates)))
            for device in sorted(chosen, key=lambda d: d.device_id):
                taken.add(device.device_id)
                fault = cls(device=device, start_ts=start, end_ts=end, params=dict(spec.params))
                self._faults.setdefault(device.device_id, []).append(fault)
                self._planted.append(
                    PlantedFault(spec.name, device.device_id, device.site, start, end)
                )

    def _plant_group(
        self, cls: type[Fault], spec: FaultSpec, start: float, end: float | None, taken: set[str]
    ) -> None:
        """A fault on a whole group: every device behind a gateway, in a zone, on a radio."""

        def group_of(device: SimDevice) -> str:
            if cls.scope == "gateway":
                return device.gateway
            if cls.scope == "zone":
                return f"{device.site}/{device.zone}"
            if cls.scope == "model":
                return device.model.name
            return device.model.radio

        groups: dict[str, list[SimDevice]] = {}
        for device in self.devices:
            if device.device_id not in taken:
                groups.setdefault(group_of(device), []).append(device)
        names = sorted(groups)
        forced = dict(spec.params).get("group")
        if forced is not None:
            if forced not in groups:
                raise ValueError(f"fault {spec.name}: no group {forced!r} (known: {names})")
            chosen = [str(forced)]
        else:
            chosen = self._rng.sample(names, min(spec.count, len(names)))
        for name in sorted(chosen):
            members = groups[name]
            if cls.scope == "gateway":
                # any device may roam onto the gateway: the fault follows the gateway
                members = [d for d in self.devices if d.device_id not in taken]
            spread = float(dict(spec.params).get("spread_s", 0.0))
            for device in members:
                params = {**dict(spec.params), "group": name}
                # a group fault may reach its members one by one over spread_s
                offset = self._rng.uniform(0.0, spread) if spread else 0.0
                fault = cls(
                    device=device,
                    start_ts=start + offset,
                    end_ts=None if end is None else end + offset,
                    params=params,
                )
                self._faults.setdefault(device.device_id, []).append(fault)
            taken.update(d.device_id for d in groups[name])
            self._planted.append(PlantedFault(spec.name, name, groups[name][0].site, start, end))

    def planted(self) -> list[PlantedFault]:
        """Every fault planted, with its device and times (ground truth)."""
        return list(self._planted)

    def _topic(self, device: SimDevice, kind: str) -> str:
        return f"{self._prefix}fleet/{device.site}/{device.device_id}/{kind}"

    def _report(self, device: SimDevice, ts: float) -> list[SimMessage]:
        out: list[SimMessage] = []
        values = device.values(ts, self.config.start_ts)
        meta: dict[str, Any] = {}
        for fault in self._faults.get(device.device_id, ()):
            if not fault.started and ts >= fault.start_ts:
                fault.started = True
                out.extend(SimMessage(self._topic(device, k), p, ts) for k, p in fault.on_start(ts))
            if fault.started and not fault.ended:
                if fault.end_ts is not None and ts >= fault.end_ts:
                    fault.ended = True
                    out.extend(
                        SimMessage(self._topic(device, k), p, ts) for k, p in fault.on_end(ts)
                    )
                    values = device.values(ts, self.config.start_ts)
                else:
                    fault.apply(ts, values, meta)
        if device.pack is not None and device.pack.empty:
            return out  # a flat battery: the device is dead until it gets a new one
        device.seq += 1
        record: dict[str, Any] = {"ts": round(ts, 3), "seq": device.seq}
        for name, value in values.items():
            record[name] = round(value, 4)
        record["model"] = device.model.name
        record["firmware"] = device.firmware
        record["gateway"] = meta.get("gateway", device.gateway)
        record["zone"] = device.zone
        record["lat"] = device.lat
        record["lon"] = device.lon
        record["radio"] = device.model.radio
        if device.pack is not None:
            record["battery_chemistry"] = device.pack.chemistry.name
        if "power_source" in meta:
            record["power_source"] = meta["power_source"]
        for fault in self._faults.get(device.device_id, ()):
            if fault.started and not fault.ended and fault.drops(ts, values):
                return out  # lost on the way: nothing buffered, nothing sent
        if device.silent:
            for fault in self._faults.get(device.device_id, ()):
                buffer = fault.params.get("buffer")
                if isinstance(buffer, list):
                    buffer.append(record)
            return out
        out.append(SimMessage(self._topic(device, "telemetry"), orjson.dumps(record), ts))
        return out

    def messages(self, until_ts: float) -> Iterator[SimMessage]:
        """All messages with device time before ``until_ts``, in time order."""
        heap = [(d.next_ts, index) for index, d in enumerate(self.devices)]
        heapq.heapify(heap)
        devices = self.devices
        while heap:
            ts, index = heap[0]
            if ts >= until_ts:
                break
            device = devices[index]
            yield from self._report(device, ts)
            device.next_ts = ts + device.interval_s
            heapq.heapreplace(heap, (device.next_ts, index))


PublishFn = Callable[[str, bytes], Awaitable[None]]


async def publish(
    simulator: Simulator,
    publish_fn: PublishFn,
    *,
    duration_s: float,
    max_messages: int | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Publish the simulation in real time for ``duration_s``; return how many were sent.

    The simulated clock is anchored to ``clock()`` at the start, so each device's ``ts``
    is the wall time at which it is published. Bounded by ``duration_s`` and
    ``max_messages``; it stops by itself.
    """
    loop = asyncio.get_running_loop()
    offset = clock() - simulator.config.start_ts
    if abs(offset) < 1.0:
        offset = 0.0  # anchored already: payloads go out as generated
    started = loop.time()
    sent = 0
    for message in simulator.messages(simulator.config.start_ts + duration_s):
        due = message.ts - simulator.config.start_ts
        delay = due - (loop.time() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        await publish_fn(message.topic, _shift(message, offset))
        sent += 1
        if max_messages is not None and sent >= max_messages:
            break
    return sent


def _shift(message: SimMessage, offset: float) -> bytes:
    """Move a payload's ``ts`` (object or array) by ``offset`` seconds."""
    if offset == 0:
        return message.payload
    body = orjson.loads(message.payload)
    items = body if isinstance(body, list) else [body]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("ts"), (int, float)):
            item["ts"] = round(item["ts"] + offset, 3)
    return orjson.dumps(body)
