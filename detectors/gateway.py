"""Gateway load: who carries how much, which gateways are overloaded, how to rebalance.

Which gateway a device talks through comes from its readings' ``gateway`` metadata (from the
payload, the topic template or LoRaWAN-style metadata mapped onto it); a device that roams
is counted where it was heard last. A gateway's own status messages (readings whose device
is a known gateway, or that carry ``role = gateway``) give what it says about itself:
``cpu_pct``, ``mem_pct``, ``queue_depth``, ``uplink_latency_ms``, ``packet_loss_pct``.

Per gateway, at each tick: active devices (heard within ``active_window_s``) and message
rate (an exponentially weighted rate over ticks). Devices whose readings name no gateway
may be mapped in configuration (``device_gateways``). A gateway is **overloaded** when it
carries more than its capacity (``capacity_devices``, per gateway in ``capacities``), or
when what it reports shows strain (loss or latency over their limits, or latency that rises
with load: Pearson r over the last ``load_history`` ticks) while it carries more than its
site's mean. Per site, **imbalance** is the coefficient of variation of the
gateways' loads with max/mean; when it is high, the detector recommends concrete moves: how
many devices from which gateway to which, receivers chosen within the same site, preferring
gateways that already serve the same zones, never beyond a receiver's capacity. A gateway
that has devices none of which (nor the gateway itself) has been heard for ``down_after_s``
is down (one whose devices all moved to other gateways is empty, not down): it is left out
of its site's balance, so an outage is never read as imbalance and no move
points at a gateway that is down (the outage itself is the connectivity detector's
``gateway_down``).

>>> from service.records import Reading
>>> det = GatewayDetector(GatewayConfig(capacity_devices=3, min_site_devices=2,
...                                     min_excess_devices=1))
>>> batch = [Reading(f"d{i}", 0.0, 0.0, {}, {"gateway": "gw1", "site": "s"}) for i in range(5)]
>>> batch += [Reading("e1", 0.0, 0.0, {}, {"gateway": "gw2", "site": "s"})]
>>> _ = det.process(batch)
>>> [(s.kind, s.subject) for s in det.tick(60.0)]
[('gateway_overloaded', 'gw1'), ('gateway_imbalance', 's')]
>>> det.report(60.0)["sites"]["s"]["moves"][0]["devices"]
2
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from detectors.base import reject_unknown
from detectors.wheel import SlotWheel
from service.records import MessageKind, Reading, Severity, Signal, SubjectType, iso_utc

GATEWAY_METRICS = ("cpu_pct", "mem_pct", "queue_depth", "uplink_latency_ms", "packet_loss_pct")

# how wide one slot of the wheel of last-heard times is (seconds of receive time)
_SLOT_S = 60.0

# shared by gateways that have reported no status of their own; never written
_NO_STATUS: dict[str, float] = {}


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Capacities and limits; defaults suit LoRaWAN/Wi-Fi gateways of a few hundred devices."""

    capacity_devices: int = 250
    capacities: Mapping[str, int] = field(default_factory=dict)
    device_gateways: Mapping[str, str] = field(default_factory=dict)
    active_window_s: float = 3_600.0
    max_latency_ms: float = 500.0
    max_loss_pct: float = 5.0
    imbalance_cv: float = 0.3
    imbalance_max_over_mean: float = 1.5
    min_site_devices: int = 10
    min_excess_devices: int = 20
    rate_smoothing: float = 0.2
    resolve_margin: float = 0.9
    load_history: int = 48
    load_correlation: float = 0.7
    down_after_s: float = 1_800.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GatewayConfig:
        known = {f.name for f in fields(cls)}
        reject_unknown(data, known, "gateway")
        return cls(**dict(data))

    def capacity(self, gateway: str) -> int:
        return int(self.capacities.get(gateway, self.capacity_devices))


class _Gateway:
    __slots__ = (
        "active", "arrivals", "devices", "history", "last_heard", "last_tick", "overloaded",
        "rate", "severity", "site", "status",
    )  # fmt: skip

    def __init__(self) -> None:
        self.devices: dict[str, tuple[float, str | None]] = {}  # device -> (last rx, zone)
        self.active = 0  # devices heard at or after the detector's horizon
        self.arrivals = 0
        self.rate = 0.0
        self.last_tick: float | None = None
        self.last_heard = -math.inf  # newest receive time of the gateway or a device on it
        self.site: str | None = None
        self.status = _NO_STATUS  # made with the gateway's first status metric
        self.overloaded = False
        self.severity = Severity.WARNING
        # devices and latency per tick, flat pairs (the last ``load_history`` ticks); made
        # with the first latency the gateway reports
        self.history: array[float] | None = None

    def load_pairs(self) -> list[tuple[int, float]]:
        """The (devices, latency) history, oldest first."""
        h = self.history
        if h is None:
            return []
        return [(int(h[i]), h[i + 1]) for i in range(0, len(h), 2)]

    def remember(self, load: int, latency: float, keep: int) -> None:
        """Add one tick's (devices, latency), keeping the last ``keep`` ticks."""
        h = self.history
        if h is None:
            h = self.history = array("d")
        h.append(load)
        h.append(latency)
        extra = len(h) - 2 * keep
        if extra > 0:
            del h[:extra]


class GatewayDetector:
    """Per-gateway load and status, per-site imbalance, rebalancing recommendations."""

    name = "gateway"
    STATE_VERSION = 1

    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.config = config or GatewayConfig()
        self._gateways: dict[str, _Gateway] = {}
        self._device_gateway: dict[str, str] = {}
        self._imbalanced: set[str] = set()
        self._reset_active()

    def _reset_active(self) -> None:
        """Forget the active-device bookkeeping; it is rebuilt when next needed.

        Each gateway's ``active`` counts its devices last heard at or after ``_horizon``
        (the latest ``now - active_window_s`` judged). Every counted device waits on a wheel
        of ``_SLOT_S``-wide slots, by last-heard time, for the horizon to pass it, so moving
        the horizon visits only the devices that fall out of the window.
        """
        self._horizon = -math.inf
        self._wheel = SlotWheel()  # device ids by last-heard slot (stale ones are skipped)
        self._stale = True

    def _gateway(self, name: str) -> _Gateway:
        gateway = self._gateways.get(name)
        if gateway is None:
            gateway = self._gateways[name] = _Gateway()
        return gateway

    def process(self, batch: Sequence[Reading]) -> list[Signal]:
        gateways = self._gateways
        device_gateway = self._device_gateway
        configured = self.config.device_gateways
        counting = not self._stale
        horizon = self._horizon
        for reading in batch:
            meta = reading.meta
            device_id = reading.device_id
            role = meta.get("role")
            if role == "gateway" or device_id in gateways:
                own = self._gateway(device_id)
                own.site = meta.get("site", own.site)
                for metric in GATEWAY_METRICS:
                    value = reading.metrics.get(metric)
                    if value is not None:
                        if own.status is _NO_STATUS:
                            own.status = {}
                        own.status[metric] = value
                if reading.received_at > own.last_heard:
                    own.last_heard = reading.received_at
                if reading.kind is MessageKind.STATUS or role == "gateway":
                    continue
            name = meta.get("gateway") or configured.get(device_id)
            if name is None:
                continue
            previous = device_gateway.get(device_id)
            if previous != name:
                if previous is not None:
                    gone = gateways[previous].devices.pop(device_id, None)
                    if counting and gone is not None and gone[0] >= horizon:
                        gateways[previous].active -= 1
                device_gateway[device_id] = name
            gateway = gateways.get(name) or self._gateway(name)
            devices = gateway.devices
            received = reading.received_at
            old = devices.get(device_id)
            devices[device_id] = (received, meta.get("zone"))
            if received > gateway.last_heard:
                gateway.last_heard = received
            if counting:
                if old is not None and old[0] >= horizon:  # counted until now
                    if received < old[0]:  # out of order: heard earlier than its last
                        if received < horizon:
                            gateway.active -= 1
                        else:  # it must wait in a slot no later than its last-heard time
                            self._wheel.push(device_id, int(received // _SLOT_S))
                elif received >= horizon:  # counted from now on
                    gateway.active += 1
                    self._wheel.push(device_id, int(received // _SLOT_S))
            gateway.arrivals += 1
            if gateway.site is None:
                gateway.site = meta.get("site")
        return []

    # -- judging ----------------------------------------------------------------------

    def _active(self, gateway: _Gateway, now: float) -> int:
        """Devices heard within ``active_window_s`` before ``now`` (a full count)."""
        horizon = now - self.config.active_window_s
        return sum(1 for last, _ in gateway.devices.values() if last >= horizon)

    def _loads(self, now: float) -> dict[str, int]:
        """Each gateway's active devices at ``now``.

        The counts kept between ticks are moved forward to ``now``; a ``now`` earlier than
        the last one judged is counted in full (the kept counts are left as they are).
        """
        horizon = now - self.config.active_window_s
        if horizon != horizon:
            return {name: self._active(g, now) for name, g in self._gateways.items()}
        if self._stale:
            self._rebuild(horizon)
        elif horizon < self._horizon:
            return {name: self._active(g, now) for name, g in self._gateways.items()}
        else:
            self._advance(horizon)
        return {name: g.active for name, g in self._gateways.items()}

    def _rebuild(self, horizon: float) -> None:
        self._reset_active()
        self._stale = False
        self._horizon = horizon
        for gateway in self._gateways.values():
            active = 0
            for device_id, (last, _) in gateway.devices.items():
                if last >= horizon:
                    active += 1
                    if last < math.inf:
                        self._wheel.push(device_id, int(last // _SLOT_S))
            gateway.active = active

    def _advance(self, horizon: float) -> None:
        """Move the horizon forward, uncounting the devices it passes.

        A counted device waits in the slot of the time it was counted from; when that slot
        comes up and the device has been heard since, it moves to the slot of its last-heard
        time, so a device heard often is handled once per window, not once per reading.
        """
        if horizon == -math.inf:
            return
        old = self._horizon
        gateways, device_gateway = self._gateways, self._device_gateway
        wheel = self._wheel
        current = int(horizon // _SLOT_S) if horizon < math.inf else (wheel.latest() or 0)
        seen: set[str] = set()
        kept: list[tuple[str, int]] = []
        for _slot, device_ids in wheel.pop_through(current):
            for device_id in device_ids:
                if device_id in seen:
                    continue
                seen.add(device_id)
                name = device_gateway.get(device_id)
                entry = None if name is None else gateways[name].devices.get(device_id)
                if entry is None or entry[0] < old:
                    continue  # not counted
                last = entry[0]
                if last < horizon:
                    gateways[name].active -= 1  # type: ignore[index]
                    continue
                slot = int(last // _SLOT_S) if last < math.inf else current
                if slot <= current:
                    kept.append((device_id, slot))
                else:
                    wheel.push(device_id, slot)
        for device_id, slot in kept:
            wheel.push(device_id, slot)
        self._horizon = horizon

    def tick(self, now: float) -> list[Signal]:
        config = self.config
        signals: list[Signal] = []
        loads = self._loads(now)
        by_site: dict[str, list[str]] = {}
        for name, gateway in self._gateways.items():
            if gateway.last_tick is not None and now > gateway.last_tick:
                current = gateway.arrivals / (now - gateway.last_tick)
                gateway.rate += config.rate_smoothing * (current - gateway.rate)
            if gateway.last_tick is None or now > gateway.last_tick:
                gateway.arrivals = 0
                gateway.last_tick = now
            latency = gateway.status.get("uplink_latency_ms")
            if latency is not None:
                gateway.remember(loads[name], latency, config.load_history)
            by_site.setdefault(gateway.site or "", []).append(name)
        for site, names in by_site.items():
            up = self._up(names, now)
            site_loads = [loads[n] for n in up]
            mean = sum(site_loads) / len(site_loads) if site_loads else 0.0
            for name in names:
                signals.extend(self._judge_gateway(name, loads[name], mean, now))
            signals.extend(self._judge_site(site, up, loads, now))
        return signals

    def _down(self, gateway: _Gateway, now: float) -> bool:
        """Devices are on it and none has been heard for ``down_after_s`` (a gateway whose
        devices all moved to others is empty, not down: a receiver for rebalancing)."""
        return bool(gateway.devices) and gateway.last_heard < now - self.config.down_after_s

    def _up(self, names: list[str], now: float) -> list[str]:
        """``names`` less the gateways that are down at ``now``."""
        gateways = self._gateways
        return [n for n in names if not self._down(gateways[n], now)]

    def _strain(self, gateway: _Gateway) -> list[str]:
        config = self.config
        reasons = []
        latency = gateway.status.get("uplink_latency_ms")
        loss = gateway.status.get("packet_loss_pct")
        if latency is not None and latency > config.max_latency_ms:
            reasons.append(f"uplink latency {latency:.0f} ms")
        if loss is not None and loss > config.max_loss_pct:
            reasons.append(f"packet loss {loss:.1f}%")
        rising = None
        if gateway.history is not None:
            rising = _latency_rises_with_load(gateway.load_pairs(), config.load_correlation)
        if rising is not None:
            reasons.append(f"uplink latency rises with load (r={rising:.2f})")
        return reasons

    def _judge_gateway(self, name: str, load: int, site_mean: float, now: float) -> list[Signal]:
        config = self.config
        gateway = self._gateways[name]
        capacity = config.capacity(name)
        over_capacity = load > capacity
        if not (
            over_capacity
            or load > site_mean
            or (gateway.overloaded and load <= config.resolve_margin * capacity)
        ):
            return []  # neither overloaded nor able to resolve, whatever its strain
        strain = self._strain(gateway)
        strained = bool(strain) and load > site_mean
        if over_capacity or strained:
            severity = (
                Severity.CRITICAL
                if load > 1.2 * capacity or (over_capacity and strain)
                else Severity.WARNING
            )
            if gateway.overloaded and severity <= gateway.severity:
                return []
            gateway.overloaded = True
            gateway.severity = severity
            reasons = [f"{load} devices for a capacity of {capacity}"] if over_capacity else []
            reasons += strain
            return [
                Signal(
                    kind="gateway_overloaded", subject=name, firing=True, at=now,
                    severity=severity, subject_type=SubjectType.GATEWAY,
                    summary=f"gateway {name} overloaded: {', '.join(reasons)}",
                    evidence={"devices": load, "capacity": capacity,
                              "site_mean_devices": round(site_mean, 1),
                              "messages_per_s": round(gateway.rate, 3), **gateway.status},
                    action=("Move devices to other gateways of the site (see the gateway report "
                            "for which and how many), or add a gateway."),
                    site=gateway.site,
                )
            ]  # fmt: skip
        if gateway.overloaded and load <= config.resolve_margin * capacity and not strain:
            gateway.overloaded = False
            gateway.severity = Severity.WARNING
            return [
                Signal(
                    kind="gateway_overloaded", subject=name, firing=False, at=now,
                    subject_type=SubjectType.GATEWAY, site=gateway.site,
                    summary=f"gateway {name} carries {load} devices, within capacity",
                )
            ]  # fmt: skip
        return []

    def _judge_site(
        self, site: str, names: list[str], loads: Mapping[str, int], now: float
    ) -> list[Signal]:
        config = self.config
        stats = _imbalance([loads[n] for n in names])
        total = sum(loads[n] for n in names)
        imbalanced = (
            len(names) >= 2
            and total >= config.min_site_devices
            and stats["cv"] > config.imbalance_cv
            and stats["max_over_mean"] > config.imbalance_max_over_mean
            and max(loads[n] for n in names) - stats["mean"] >= config.min_excess_devices
        )
        if imbalanced and site not in self._imbalanced:
            self._imbalanced.add(site)
            moves = self._moves(names, loads, now)
            summary_moves = "; ".join(
                f"{m['devices']} from {m['from']} to {m['to']}" for m in moves[:3]
            )
            return [
                Signal(
                    kind="gateway_imbalance", subject=site, firing=True, at=now,
                    severity=Severity.WARNING, subject_type=SubjectType.SITE,
                    summary=(f"site {site}: gateway load uneven (CV {stats['cv']:.2f}, "
                             f"max/mean {stats['max_over_mean']:.2f})"),
                    evidence={**stats, "loads": {n: loads[n] for n in names}, "moves": moves},
                    action=f"Rebalance: move {summary_moves}." if moves else "Rebalance the site.",
                    site=site or None,
                )
            ]  # fmt: skip
        if not imbalanced and site in self._imbalanced and stats["cv"] < 0.8 * config.imbalance_cv:
            self._imbalanced.discard(site)
            return [
                Signal(
                    kind="gateway_imbalance", subject=site, firing=False, at=now,
                    subject_type=SubjectType.SITE, site=site or None,
                    summary=f"site {site}: gateway load balanced again",
                )
            ]  # fmt: skip
        return []

    def _moves(
        self, names: list[str], loads: Mapping[str, int], now: float
    ) -> list[dict[str, Any]]:
        """Greedy moves from gateways above the site's target load to those below it."""
        config = self.config
        total = sum(loads[n] for n in names)
        capacity_total = sum(config.capacity(n) for n in names)
        # each gateway's fair share: proportional to its capacity
        target = {n: total * config.capacity(n) / capacity_total for n in names}
        excess = {n: loads[n] - math.ceil(target[n]) for n in names}
        room = {
            n: min(math.floor(target[n]) - loads[n], config.capacity(n) - loads[n]) for n in names
        }
        zones = {n: {zone for _, zone in self._gateways[n].devices.values() if zone} for n in names}
        moves: list[dict[str, Any]] = []
        horizon = now - config.active_window_s
        for donor in sorted(names, key=lambda n: -excess[n]):
            if excess[donor] <= 0:
                continue
            members = [
                (zone or "", device)
                for device, (last, zone) in self._gateways[donor].devices.items()
                if last >= horizon
            ]
            for receiver in sorted(names, key=lambda n: (-len(zones[n] & zones[donor]), -room[n])):
                count = min(excess[donor], room[receiver])
                if receiver == donor or count <= 0:
                    continue
                shared = zones[receiver] & zones[donor]
                members.sort(key=lambda m: (m[0] not in shared, m[0], m[1]))
                chosen, members = members[:count], members[count:]
                excess[donor] -= count
                room[receiver] -= count
                moves.append(
                    {
                        "from": donor,
                        "to": receiver,
                        "devices": count,
                        "zones": sorted({zone for zone, _ in chosen if zone}),
                        "device_ids": sorted(device for _, device in chosen)[:50],
                    }
                )
                if excess[donor] <= 0:
                    break
        return moves

    # -- report -----------------------------------------------------------------------

    def report(self, now: float) -> dict[str, Any]:
        sites: dict[str, dict[str, Any]] = {}
        loads = self._loads(now)
        for name, gateway in sorted(self._gateways.items()):
            site = sites.setdefault(gateway.site or "", {"gateways": {}})
            site["gateways"][name] = {
                "devices": loads[name],
                "down": self._down(gateway, now),
                "capacity": self.config.capacity(name),
                "messages_per_s": round(gateway.rate, 3),
                "overloaded": gateway.overloaded,
                "status": dict(gateway.status),
            }
        for site in sites.values():
            names = self._up(list(site["gateways"]), now)
            site.update(_imbalance([loads[n] for n in names]))
            site["moves"] = self._moves(names, loads, now) if len(names) >= 2 else []
        return {"generated_at": iso_utc(now), "gateways": len(self._gateways), "sites": sites}

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "imbalanced": sorted(self._imbalanced),
            "gateways": {
                name: {
                    "devices": {d: [last, zone] for d, (last, zone) in g.devices.items()},
                    "arrivals": g.arrivals, "rate": g.rate, "last_tick": g.last_tick,
                    "site": g.site, "status": dict(g.status), "overloaded": g.overloaded,
                    "severity": int(g.severity),
                    "history": [list(h) for h in g.load_pairs()],
                }
                for name, g in self._gateways.items()
            },
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"gateway state format {state.get('version')} is not 1")
        self._gateways = {}
        self._device_gateway = {}
        self._reset_active()
        self._imbalanced = set(state.get("imbalanced", []))
        for name, row in state.get("gateways", {}).items():
            gateway = self._gateway(name)
            gateway.devices = {d: (float(last), zone) for d, (last, zone) in row["devices"].items()}
            gateway.arrivals = int(row["arrivals"])
            gateway.rate = float(row["rate"])
            gateway.last_tick = row["last_tick"]
            gateway.site = row["site"]
            if row["status"]:
                gateway.status = {k: float(v) for k, v in row["status"].items()}
            gateway.overloaded = bool(row["overloaded"])
            gateway.severity = Severity(int(row.get("severity", Severity.WARNING)))
            for n, lat in row.get("history", [])[-self.config.load_history :]:
                gateway.remember(int(n), float(lat), self.config.load_history)
            for device in gateway.devices:
                self._device_gateway[device] = name
            gateway.last_heard = max((last for last, _ in gateway.devices.values()),
                                     default=-math.inf)  # fmt: skip


def _latency_rises_with_load(
    history: Sequence[tuple[int, float]], threshold: float
) -> float | None:
    """Pearson r of latency against load when it is above ``threshold`` and latency at
    the highest loads is at least 1.5x that at the lowest; else ``None``.

    >>> _latency_rises_with_load([(n, 50.0 + 2 * n) for n in range(50, 150, 10)], 0.7)
    1.0
    """
    if len(history) < 10:
        return None
    loads = [float(n) for n, _ in history]
    latencies = [lat for _, lat in history]
    mean_n, mean_l = sum(loads) / len(loads), sum(latencies) / len(latencies)
    sxx = sum((n - mean_n) ** 2 for n in loads)
    syy = sum((lat - mean_l) ** 2 for lat in latencies)
    if sxx <= 0 or syy <= 0:
        return None
    r = sum((n - mean_n) * (lat - mean_l) for n, lat in history) / math.sqrt(sxx * syy)
    ordered = sorted(history)
    quarter = max(1, len(ordered) // 4)
    low = sum(lat for _, lat in ordered[:quarter]) / quarter
    high = sum(lat for _, lat in ordered[-quarter:]) / quarter
    return round(r, 3) if r >= threshold and high >= 1.5 * low else None


def _imbalance(loads: Sequence[int]) -> dict[str, float]:
    """Coefficient of variation and max/mean of gateway loads.

    >>> _imbalance([10, 10, 40])
    {'mean': 20.0, 'cv': 0.707, 'max_over_mean': 2.0}
    """
    if not loads:
        return {"mean": 0.0, "cv": 0.0, "max_over_mean": 0.0}
    mean = sum(loads) / len(loads)
    if mean == 0:
        return {"mean": 0.0, "cv": 0.0, "max_over_mean": 0.0}
    variance = sum((x - mean) ** 2 for x in loads) / len(loads)
    return {
        "mean": round(mean, 2),
        "cv": round(math.sqrt(variance) / mean, 3),
        "max_over_mean": round(max(loads) / mean, 3),
    }
