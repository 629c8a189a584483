"""The field simulator: a realistic fleet's messages in the order FleetWatch receives them.

Each device samples its sensors on its own schedule (its model's interval, jittered, now and
then changed), faults and events change what it reads and sends, and its radio channel
decides what arrives, when, and how often:

- lost: independently and in bursts (a Gilbert-Elliott channel per device), behind a dead
  gateway, or on a device that died;
- late: every message takes its own delay, a few take minutes and arrive after later ones;
- twice: a few are delivered again, same bytes (an MQTT QoS 1 redelivery);
- batched: after a short outage the device uploads what it kept as one ``batch`` message;
- skewed: a few device clocks run minutes fast or slow, so their payload ``ts`` is off; after
  a reboot the first report carries no ``ts`` at all (the clock is not synced yet).

Gateways report their own status (``role = gateway``: cpu, memory, queue, uplink latency,
packet loss) every five minutes, so an overloaded gateway says so.

Messages come out in receive order (:meth:`FieldSimulator.messages`), as
:class:`service.records.RawMessage` ready for ``replay``
(:meth:`FieldSimulator.raw_messages`); :attr:`FieldSimulator.truth` is the ground truth and
:attr:`FieldSimulator.events` what happened that is not a fault.

>>> sim = FieldSimulator("plant", seed=1, devices=12, days=0.05)
>>> msgs = list(sim.raw_messages())
>>> times = [m.received_at for m in msgs]
>>> times == sorted(times), len({m.topic.split("/")[2] for m in msgs}) >= 12
(True, True)
>>> [m.payload for m in msgs] == [m.payload for m in
...     FieldSimulator("plant", seed=1, devices=12, days=0.05).raw_messages()]
True
"""

from __future__ import annotations

import heapq
import random
import time
from bisect import insort
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from service.records import RawMessage
from service.simulator.field_faults import FieldEvent, TruthRecord
from service.simulator.field_fleet import DAY_S, FieldDevice, FieldFleet, build_field_fleet
from service.simulator.field_plan import make_plan
from service.simulator.realism import RealismProfile, profile

START_TS = 1_767_225_600.0  # 2026-01-01 00:00 UTC, a Thursday
GATEWAY_INTERVAL_S = 300.0


@dataclass(frozen=True, slots=True)
class FieldMessage:
    """One delivered message: where, what, when it was received, when it was sent."""

    topic: str
    payload: bytes
    received_at: float
    sent_at: float


@dataclass(slots=True)
class FieldStats:
    """What the simulation did to the readings (counts of readings unless said)."""

    sampled: int = 0  # readings the devices took while alive
    delivered: int = 0  # readings delivered at least once (telemetry or batch)
    lost_channel: int = 0  # lost on the radio channel
    lost_fault: int = 0  # lost to a fault (dead gateway, dead device, clustered outage)
    buffered: int = 0  # kept during a short outage and uploaded later in a batch
    duplicates: int = 0  # messages delivered a second time
    late: int = 0  # messages delivered minutes late
    messages: int = 0  # messages delivered, all kinds, duplicates included


def _iso(ts: float) -> str:
    whole = int(ts)
    ms = round((ts - whole) * 1000.0)
    if ms == 1000:
        whole, ms = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


class FieldSimulator:
    """A field fleet under a realism profile, deterministic from ``(profile, seed)``.

    Parameters
    ----------
    realism
        A :class:`RealismProfile` or the name of a built-in one (``plant``, ``cold-chain``).
    seed
        Everything random is drawn from it.
    devices, days
        Fleet size and simulated time.
    interval_s
        Base reporting interval; each model reports at its multiple of it
        (``interval_factor``), jittered.
    faults, events
        Plant the faults (with ground truth), and the events that are not faults (reboots,
        gaps, relocations, campaign ...). Without either the channel alone shapes the stream.
    start_ts
        Simulated start (epoch seconds).
    """

    def __init__(
        self,
        realism: RealismProfile | str,
        seed: int = 1,
        *,
        devices: int = 400,
        days: float = 21.0,
        interval_s: float = 300.0,
        faults: bool = True,
        events: bool = True,
        start_ts: float = START_TS,
    ) -> None:
        self.profile = profile(realism) if isinstance(realism, str) else realism
        self.seed = seed
        self.start_ts = start_ts
        self.end_ts = start_ts + days * DAY_S
        self.interval_s = interval_s
        rng = random.Random(f"{self.profile.name}:{seed}")
        self.fleet: FieldFleet = build_field_fleet(
            self.profile, devices, interval_s=interval_s, start_ts=start_ts, rng=rng
        )
        self.plan = make_plan(self.fleet, self.profile, rng, start_ts, self.end_ts,
                              faults=faults, events=events)  # fmt: skip
        self.truth: list[TruthRecord] = self.plan.truth
        self.events: list[FieldEvent] = self.plan.events
        self.stats = FieldStats()
        self._gateway_rng = random.Random(rng.getrandbits(64))
        self._gateway_base = {
            g: (rng.uniform(40.0, 250.0), rng.uniform(0.2, 2.0), rng.uniform(10.0, 40.0))
            for g in sorted(self.fleet.gateways)
        }
        self._used = False
        self._out: list[tuple[float, int, str, bytes, float]] = []  # to deliver, by receive time
        self._order = 0  # ties in receive time keep the order of sending

    # -- what the fleet is ------------------------------------------------------------------

    @property
    def devices(self) -> list[FieldDevice]:
        return self.fleet.devices

    def faulty_devices(self) -> set[str]:
        """Devices with a planted fault of their own."""
        return set(self.plan.faulty)

    def healthy_devices(self) -> list[str]:
        """Devices without a planted fault (they may still sit behind a gateway in trouble)."""
        return [d.device_id for d in self.devices if d.device_id not in self.plan.faulty]

    # -- the stream -------------------------------------------------------------------------

    def raw_messages(self) -> Iterator[RawMessage]:
        """:meth:`messages` as raw messages for ``replay`` (received at the delivery time)."""
        for m in self.messages():
            yield RawMessage(m.topic, m.payload, m.received_at)

    def messages(self) -> Iterator[FieldMessage]:
        """Every message delivered before the end, in receive order (a simulator runs once)."""
        if self._used:
            raise RuntimeError("a FieldSimulator produces its messages once; make another")
        self._used = True
        devices = self.devices
        gateways = sorted(self.fleet.gateways)
        heap: list[tuple[float, int]] = [(d.next_ts, i) for i, d in enumerate(devices)]
        gateway_rng = self._gateway_rng
        heap += [(self.start_ts + gateway_rng.uniform(0.0, GATEWAY_INTERVAL_S), len(devices) + i)
                 for i in range(len(gateways))]  # fmt: skip
        heapq.heapify(heap)
        out = self._out
        end = self.end_ts
        while heap:
            ts, index = heap[0]
            if ts >= end:
                break
            while out and out[0][0] < ts:
                recv, _, topic, payload, sent = heapq.heappop(out)
                yield FieldMessage(topic, payload, recv, sent)
            if index < len(devices):
                device = devices[index]
                self._report(device, ts)
                step = device.interval_s * (1.0 + device.rng.uniform(-device.jitter, device.jitter))
            else:
                self._gateway_status(gateways[index - len(devices)], ts)
                step = GATEWAY_INTERVAL_S
            heapq.heapreplace(heap, (ts + step, index))
        while out and out[0][0] < end:  # what arrives after the end is not seen
            recv, _, topic, payload, sent = heapq.heappop(out)
            yield FieldMessage(topic, payload, recv, sent)

    def _emit(self, topic: str, payload: bytes, sent: float, recv: float) -> None:
        self._order += 1
        self.stats.messages += 1
        heapq.heappush(self._out, (recv, self._order, topic, payload, sent))

    def _send(self, device: FieldDevice, kind: str, payload: bytes, ts: float) -> None:
        """Hand a message to the network at ``ts``: delay, lateness, duplicates."""
        rng = device.rng
        topic = f"fleet/{device.site}/{device.device_id}/{kind}"
        delay = device.delay()
        if rng.random() < device.late_p:
            delay += rng.uniform(*self.profile.late_delay_s)
            self.stats.late += 1
        self._emit(topic, payload, ts, ts + delay)
        if rng.random() < device.dup_p:
            self.stats.duplicates += 1
            self._emit(
                topic, payload, ts, ts + delay + rng.uniform(*self.profile.duplicate_delay_s)
            )

    def _gateway_status(self, gateway: str, ts: float) -> None:
        for t0, t1 in self.plan.down.get(gateway, ()):
            if t0 <= ts < t1:
                return  # a gateway that is down says nothing
        rng = self._gateway_rng
        if rng.random() < self.profile.gateway_loss:
            return
        latency, loss, cpu = self._gateway_base[gateway]
        queue = rng.uniform(0.0, 20.0)
        for t0, t1, strained_latency, strained_loss in self.plan.strain.get(gateway, ()):
            if t0 <= ts < t1:
                latency, loss, cpu, queue = strained_latency, strained_loss, 85.0, 400.0
        record = {
            "ts": _iso(ts), "role": "gateway",
            "cpu_pct": round(cpu + rng.gauss(0.0, 3.0), 1),
            "mem_pct": round(45.0 + rng.gauss(0.0, 2.0), 1),
            "queue_depth": round(queue),
            "uplink_latency_ms": round(latency * rng.uniform(0.8, 1.25), 1),
            "packet_loss_pct": round(max(0.0, loss * rng.uniform(0.7, 1.3)), 2),
        }  # fmt: skip
        site = self.fleet.gateways[gateway]
        recv = ts + 0.05 + rng.expovariate(5.0)
        self._emit(f"fleet/{site}/{gateway}/telemetry", orjson.dumps(record), ts, recv)

    # -- one report --------------------------------------------------------------------------

    def _device_ts(self, device: FieldDevice, ts: float) -> Any:
        """The payload ``ts`` of a reading sampled at ``ts`` by ``device``'s clock."""
        local = ts + device.skew_s
        spec = device.field_model
        assert spec is not None
        if spec.ts_format == "ms":
            return int(local * 1000.0)
        if spec.ts_format == "s":
            return round(local, 1)
        return _iso(local)

    def _scheduled(self, device: FieldDevice, ts: float) -> None:
        """Run the device's planned events due by ``ts`` (sent with this report)."""
        items = self.plan.schedule.get(device.device_id)
        if not items:
            return
        while items and items[0][0] <= ts:
            at, kind, params = items.pop(0)
            if kind == "reboot":
                self._reboot(device, at, ts)
            elif kind == "gap":
                device.gap_until = max(device.gap_until, float(params["until"]))
            elif kind == "relocate":
                device.zone = str(params["zone"])
                device.gateway = str(params["gateway"])
                device.climate = self.fleet.climates[(device.site, device.zone)]
            elif kind == "calibrate":
                metric = str(params["metric"])
                device.offsets[metric] = device.offsets.get(metric, 0.0) * 0.2
                body = {"ts": self._device_ts(device, at), "event": "calibration",
                        "metric": metric}  # fmt: skip
                self._send(device, "calibration", orjson.dumps(body), ts)
            elif kind == "duty":
                factor = float(params["factor"])
                device.interval_s *= factor
                device.base_ma *= 0.3 + 0.7 / factor  # the radio's share follows the rate
            elif kind == "update":
                self._update(device, at, ts, params)

    def _reboot(self, device: FieldDevice, at: float, ts: float) -> None:
        device.seq = 0
        device.boot_ts = at
        device.unsynced = True
        self._send(device, "status", orjson.dumps({"status": "online"}), ts)

    def _update(self, device: FieldDevice, at: float, ts: float, params: dict[str, Any]) -> None:
        """A campaign update: ``started`` now, the result (a planned event) minutes later."""
        new = str(params["version"])
        if "from" not in params:
            started = {"ts": self._device_ts(device, at), "event": "started",
                       "from": device.firmware, "to": new}  # fmt: skip
            self._send(device, "firmware", orjson.dumps(started), ts)
            done = at + float(params["minutes"]) * 60.0
            insort(self.plan.schedule[device.device_id],
                   (done, "update", {**params, "from": device.firmware}), key=lambda x: x[0])  # fmt: skip
            return
        old = str(params["from"])
        if params["fail"]:
            body = {"ts": self._device_ts(device, at), "event": "failed", "from": old, "to": new,
                    "code": 17}  # fmt: skip
        else:
            device.firmware = new
            body = {"ts": self._device_ts(device, at), "event": "succeeded", "from": old,
                    "to": new}  # fmt: skip
            device.seq = 0  # the update restarts the device
            device.boot_ts = at
        self._send(device, "firmware", orjson.dumps(body), ts)

    def _report(self, device: FieldDevice, ts: float) -> None:
        if device.dead:
            return
        self._scheduled(device, ts)
        values = device.values(ts, self.start_ts)
        meta: dict[str, Any] = {}
        faults = self.plan.faults.get(device.device_id, ())
        for fault in faults:
            if not fault.started and ts >= fault.start_ts:
                fault.started = True
                self._extras(device, fault.on_start(ts), ts)
            if fault.started and not fault.ended:
                if fault.end_ts is not None and ts >= fault.end_ts:
                    fault.ended = True
                    self._extras(device, fault.on_end(ts), ts)
                    values = device.values(ts, self.start_ts)
                else:
                    fault.apply(ts, values, meta)
        if meta.get("reboot"):
            self._reboot(device, ts, ts)
        if device.pack is not None and device.pack.empty:
            device.dead = True  # a flat battery: the device is gone
            return
        device.finish(values)
        device.seq += 1
        stats = self.stats
        stats.sampled += 1
        record = self._record(device, ts, values, meta)
        for fault in faults:
            if fault.started and not fault.ended and fault.drops(ts, values):
                stats.lost_fault += 1
                return
        if device.silent:
            for fault in faults:
                buffer = fault.params.get("buffer")
                if isinstance(buffer, list):
                    buffer.append(record)
                    del buffer[:-200]
            stats.lost_fault += 1
            return
        if ts < device.gap_until:
            device.buffer.append(record)
            stats.buffered += 1
            return
        if device.buffer:
            self._send(device, "batch", orjson.dumps(device.buffer), ts)
            stats.delivered += len(device.buffer)
            device.buffer = []
        channel = device.channel
        assert channel is not None
        if channel.lost(device.rng):
            stats.lost_channel += 1
            return
        stats.delivered += 1
        self._send(device, "telemetry", orjson.dumps(record), ts)

    def _extras(self, device: FieldDevice, extras: list[tuple[str, bytes]], ts: float) -> None:
        """Messages a fault sends (firmware and status events, a batch): device clock applied."""
        for kind, payload in extras:
            if kind != "batch":
                body = orjson.loads(payload)
                if "ts" in body:
                    body["ts"] = self._device_ts(device, float(body["ts"]))
                payload = orjson.dumps(body)
            else:
                self.stats.delivered += len(orjson.loads(payload))
            self._send(device, kind, payload, ts)

    def _record(
        self, device: FieldDevice, ts: float, values: dict[str, float], meta: dict[str, Any]
    ) -> dict[str, Any]:
        """The payload of one reading, in the model's dialect."""
        spec = device.field_model
        assert spec is not None
        record: dict[str, Any] = {}
        if device.unsynced:
            device.unsynced = False  # no ts: FleetWatch takes the receive time
        else:
            record["ts"] = self._device_ts(device, ts)
        record["seq"] = device.seq
        for key in spec.keys:
            value = values.get(key.metric)
            if value is None:
                continue
            out = value * key.scale + key.offset
            if key.integer:
                record[key.key] = round(out)
            else:
                step = key.step
                record[key.key] = round(round(out / step) * step, 4) if step else round(out, 4)
        record["uptime_s"] = int(max(0.0, ts - device.boot_ts))
        record["model"] = device.model.name
        record[spec.firmware_key] = device.firmware
        record[spec.gateway_key] = device.gateway
        record["zone"] = device.zone
        if device.pack is not None and spec.sends_chemistry:
            record["battery_chemistry"] = device.pack.chemistry.name
        if device.mains:
            record["power_source"] = "mains"
        elif device.solar_ma:
            record["power_source"] = "solar"
        if "power_source" in meta:
            record["power_source"] = meta["power_source"]
        return record
