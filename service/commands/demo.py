"""``fleetwatch demo``: the whole of FleetWatch on an embedded default.

It starts a private broker (mosquitto if installed, else amqtt in-process), the daemon with
``/metrics``, and a simulated fleet with faults: batteries that fail (and are replaced),
devices that overheat (and cool down), a gateway that gets overloaded, a device that goes
silent and uploads its backlog when it returns, and a firmware change. Alerts are read back
from FleetWatch's own alert topics, as any alerting system would, and shown live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from config.settings import Settings, settings_from_mapping
from protocols.mqtt import MqttClient
from service.commands.console import AlertConsole, plain_printer
from service.runtime.broker import EmbeddedBroker
from service.runtime.daemon import Daemon
from service.runtime.shards import worker_count
from service.runtime.workers import Coordinator
from service.simulator import FaultSpec, SimulationConfig, Simulator, publish
from service.simulator.fleet import SITES

DEMO_FAULTS = (
    "battery_failing=3@3+40:collapse_s=6",
    "overheating=2@8+25:ramp_s=6",
    "gateway_overload=6@12",
    "silent=1@6+20",
    "firmware_change=1@10",
    "sensor_drift=2@0:rate_c_per_h=3600",
)

DEMO_RULES: list[dict[str, Any]] = [
    {"name": "battery_low", "metric": "battery_v", "kind": "below", "threshold": 3.3,
     "hysteresis": 0.05, "severity": "critical",
     "action": "Replace the battery on the next maintenance round."},
    {"name": "battery_warning", "metric": "battery_v", "kind": "below", "threshold": 3.5,
     "hysteresis": 0.05, "severity": "warning", "action": "Plan a battery replacement."},
    {"name": "overheating", "metric": "temperature_c", "kind": "above", "threshold": 60.0,
     "for_s": 4, "hysteresis": 2.0, "severity": "warning",
     "action": "Check the enclosure and the machine next to the device."},
    {"name": "weak_signal", "metric": "rssi_dbm", "kind": "below", "threshold": -105.0,
     "for_s": 6, "hysteresis": 3.0, "severity": "info",
     "action": "Check the gateway the device talks through, or move the device."},
    {"name": "temperature_jump", "metric": "temperature_c", "kind": "rate",
     "max_rate_per_s": 2.0, "severity": "warning",
     "action": "A jump this fast is rarely physical: check the sensor."},
]  # fmt: skip


# the simulator's facilities, grouped into regions for the status page's drill-down
DEMO_REGIONS = {"plant-a": "North", "plant-b": "Alps", "plant-c": "Alps", "plant-d": "North",
                "plant-e": "South"}  # fmt: skip
DEMO_SITES = {
    name: {"name": name.replace("-", " ").title(), "region": DEMO_REGIONS[name], "lat": lat,
           "lon": lon}
    for name, lat, lon in SITES
}  # fmt: skip


def demo_settings(host: str, port: int, http_port: int, state_path: Path) -> Settings:
    return settings_from_mapping(
        {
            "mqtt": {"host": host, "port": port, "client_id": "fleetwatch-demo",
                     "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
            "pipeline": {"tick_interval_s": 1.0, "shutdown_timeout_s": 5.0},
            "alerts": {"resolve_hold_s": 3.0},
            "http": {"port": http_port},
            "state": {"path": str(state_path), "checkpoint_interval_s": 10.0},
            "rules": DEMO_RULES,
            "fleetview": {"title": "FleetWatch demo", "sites": DEMO_SITES},
        }
    )  # fmt: skip


def add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run everything on an embedded default")
    demo.add_argument("--devices", type=int, default=60)
    demo.add_argument(
        "--interval", type=float, default=2.0, help="seconds between a device's reports"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--http-port", type=int, default=9108, help="0 picks a free port")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--no-live", action="store_true", help="print one line per alert change")
    demo.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    demo.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per core)"
    )
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(args))


async def run_demo(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    live_view = not args.no_live and console.is_terminal
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("amqtt", "transitions", "gmqtt"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    view = AlertConsole(on_event=None if live_view else plain_printer(console))
    state_dir = tempfile.TemporaryDirectory(prefix="fleetwatch-demo-")
    async with EmbeddedBroker(prefer=args.broker) as broker:
        http_port = args.http_port
        if http_port:
            from service.runtime.broker import free_port

            with contextlib.suppress(OSError):
                free_port_check(http_port)
            if not port_is_free(http_port):
                http_port = free_port()
        settings = demo_settings(
            broker.host, broker.port, http_port, Path(state_dir.name) / "state.db"
        )
        workers = worker_count(settings) if args.workers is None else args.workers
        daemon: Daemon | Coordinator = (
            Coordinator(settings, workers) if workers > 1 else Daemon(settings)
        )
        daemon_task = asyncio.create_task(daemon.run(), name="demo-daemon")
        await asyncio.wait_for(daemon.ready.wait(), 60)
        # totals for the header, refreshed from the daemon's status once a second
        totals: dict[str, Any] = {"messages": 0, "devices": 0}

        async def refresh_totals() -> None:
            while True:
                await refresh_totals_once(daemon, totals)
                await asyncio.sleep(1.0)

        def on_alert(
            topic: str, payload: bytes, qos: int, properties: Any, token: int | None
        ) -> None:
            view.handle(topic, payload)
            if token is not None:
                viewer.acknowledge([token])

        viewer = MqttClient(
            settings.mqtt, client_id="fleetwatch-demo-view", on_message=on_alert,
            subscriptions=[(f"{settings.topics.alerts_prefix}/#", 1)], persistent=False,
        )  # fmt: skip
        publisher = MqttClient(settings.mqtt, client_id="fleetwatch-demo-fleet", persistent=False)
        simulator = Simulator(
            SimulationConfig(
                devices=args.devices,
                # every facility on the map; two of the five are placed on another worker
                # than the other three (worker processes take whole sites)
                sites=len(SITES),
                interval_s=args.interval,
                seed=args.seed,
                start_ts=time.time(),
                faults=tuple(FaultSpec.parse(spec) for spec in DEMO_FAULTS),
            )
        )
        console.print(
            f"[bold]FleetWatch demo[/bold]: {args.devices} simulated devices on a private "
            f"{broker.kind} broker at {broker.url}\n"
            f"  page     http://127.0.0.1:{daemon.http_port}/ (map, drill-down, live alerts)\n"
            f"  api      http://127.0.0.1:{daemon.http_port}/api/devices "
            f"(OpenAPI at /api/openapi.json)\n"
            f"  metrics  http://127.0.0.1:{daemon.http_port}/metrics\n"
            f"  alerts   {settings.topics.alerts_prefix}/# (retained while active)\n"
            f"  faults   {', '.join(DEMO_FAULTS)}\n"
            f"  workers  {workers} process{'es' if workers > 1 else ''} (pipeline.workers)\n"
            "  Ctrl-C to stop"
        )
        async with viewer, publisher:

            async def send(topic: str, payload: bytes) -> None:
                publisher.publish(topic, payload, qos=1)

            duration = args.duration if args.duration is not None else 365 * 86_400.0
            fleet = asyncio.create_task(
                publish(simulator, send, duration_s=duration), name="demo-fleet"
            )
            fleet.add_done_callback(lambda _: stop.set())
            refresher = asyncio.create_task(refresh_totals(), name="demo-totals")
            started = time.monotonic()

            def header() -> str:
                processed = int(totals["messages"])
                elapsed = max(1e-9, time.monotonic() - started)
                return (
                    f"{time.strftime('%H:%M:%S')}  messages {processed}  "
                    f"({processed / elapsed:,.0f}/s)  devices {totals['devices']}  "
                    f"active alerts {len(view.active)}"
                )

            if live_view:
                with Live(view.render(header()), console=console, refresh_per_second=4) as live:
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.25)
                        live.update(view.render(header()))
            else:
                await stop.wait()
            fleet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fleet
            await refresh_totals_once(daemon, totals)
            refresher.cancel()
        daemon.stop()
        await asyncio.wait_for(daemon_task, 15)
    state_dir.cleanup()
    console.print(
        f"stopped cleanly: {totals['messages']} messages processed, "
        f"{view.fired} alerts fired, {view.resolved} resolved"
    )
    return 0


async def refresh_totals_once(daemon: Daemon | Coordinator, totals: dict[str, Any]) -> None:
    status = daemon.status()
    totals.update(await status if inspect.isawaitable(status) else status)


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_check(port: int) -> None:
    if not 0 < port < 65536:
        raise OSError(f"bad port {port}")
