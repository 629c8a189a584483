"""LwM2M throughput: notifications (readings) per second the LwM2M path sustains.

The server side is what the daemon runs for LwM2M: the aiocoap server on 127.0.0.1 with the
LwM2M resources on its socket, registrations written to the SQLite state store, the intake
(bounded queue, micro-batches), the pipeline with the rules detector and the journal writing
every message before it counts as taken. The devices run in a separate process
(``python bench/lwm2m_throughput.py clients ...``): each is the test suite's aiocoap LwM2M
client simulator (``tests/lwm2m_client.py``) with its own UDP socket. They register, wait
until FleetWatch observes their temperature object, then change the value as fast as
aiocoap sends notifications (observe is lossy by design: a change made before the previous
notification left replaces it) for ``--seconds``; the server counts the readings the
pipeline accepted within that window. A second row does the same with LwM2M Send
(``POST /dp``, SenML CBOR, answered 2.04 after processing), one request in flight per
device. A third row times decoding and translation alone (TLV of an object 3 instance).
``server_cpu_pct`` is the server process's CPU time over the window (100 = one core busy):
with both processes on the same cores, it tells whether FleetWatch or the simulated devices
were the limit.

    uv run python bench/lwm2m_throughput.py --devices 100 --seconds 10 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from config.settings import settings_from_mapping
from detectors import build_detectors
from protocols.coap import CoapServer
from protocols.lwm2m import tlv
from protocols.lwm2m.content import decode
from protocols.lwm2m.objects import DeviceMemory, translate
from protocols.lwm2m.server import Lwm2mServer
from service.alerts.metrics import FleetMetrics
from service.alerts.sinks import MemorySink
from service.intake.pipeline import Intake, Pipeline
from service.state.store import StateStore

ROOT = Path(__file__).resolve().parents[1]
RULES = [{"name": "hot", "metric": "temperature_c", "kind": "above", "threshold": 70.0}]
SENSOR = {(3303, 0, 5700): 20.0, (3303, 0, 5701): "Cel"}


# -- the device side (its own process) -----------------------------------------------------


async def run_clients(port: int, devices: int, seconds: float, mode: str, prefix: str) -> None:
    # by file: an installed package named "tests" would shadow the repository's folder
    spec = importlib.util.spec_from_file_location("lwm2m_client", ROOT / "tests/lwm2m_client.py")
    assert spec is not None and spec.loader is not None
    simulator = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = simulator
    spec.loader.exec_module(simulator)
    Lwm2mClient, senml_cbor, senml_records = (
        simulator.Lwm2mClient, simulator.senml_cbor, simulator.senml_records
    )  # fmt: skip

    clients = [
        Lwm2mClient(f"bench-{prefix}{i:05d}", port, SENSOR, lifetime=3600) for i in range(devices)
    ]
    for client in clients:
        await client.__aenter__()
    started = time.perf_counter()
    await asyncio.gather(*(client.register() for client in clients))
    registered = time.perf_counter() - started
    deadline = time.monotonic() + 60
    while not all(client.observers((3303,)) for client in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("not every device was observed within 60 s")
        await asyncio.sleep(0.01)
    print(orjson.dumps({"event": "start", "registered_s": registered}).decode(), flush=True)
    sent = 0
    end = time.monotonic() + seconds
    if mode == "notify":
        value = 20.0
        while time.monotonic() < end:
            value += 0.01
            for client in clients:
                client.set({(3303, 0, 5700): round(value, 2)})
            sent += len(clients)
            await asyncio.sleep(0)  # let aiocoap send what it can
    else:

        async def sender(client: Any) -> int:
            count = 0
            ts = 1_767_225_600.0
            while time.monotonic() < end:
                ts += 1.0
                payload = senml_cbor(senml_records({(3303, 0, 5700): 21.0}, base_time=ts))
                response = await client.send(payload)
                count += response.code.is_successful()
            return count

        sent = sum(await asyncio.gather(*(sender(client) for client in clients)))
    print(orjson.dumps({"event": "end", "sent": sent}).decode(), flush=True)
    for client in clients:
        await client.__aexit__(None, None, None)


# -- the server side -----------------------------------------------------------------------


async def run_row(
    devices: int, seconds: float, mode: str, journal: bool, processes: int
) -> dict[str, Any]:
    settings = settings_from_mapping({
        "coap": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "lwm2m": {"enabled": True, "write_attributes": False, "observe": [3303]},
        "detectors": {"enabled": ["rules"]},
        "rules": RULES,
    })  # fmt: skip
    metrics = FleetMetrics(CollectorRegistry())
    pipeline = Pipeline.build(
        settings, detectors=build_detectors(settings), sinks=[MemorySink()], metrics=metrics
    )
    # per event name, per process: (wall time, readings accepted, server CPU time, payload)
    marks: dict[str, list[tuple[float, int, float, dict[str, Any]]]] = {"start": [], "end": []}

    async def follow(process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            event = orjson.loads(line)
            marks[event["event"]].append(
                (time.perf_counter(), pipeline.totals.accepted, time.process_time(), event)
            )
        await process.wait()

    with tempfile.TemporaryDirectory() as folder, StateStore(Path(folder) / "s.db") as store:
        intake = Intake(
            pipeline, queue_size=10_000, max_batch=2_000,
            journal=store.append_journal if journal else None,
        )  # fmt: skip
        holder: dict[str, CoapServer] = {}
        lwm2m = Lwm2mServer(settings.lwm2m, intake, context=lambda: holder["coap"].context,
                            storage=store)  # fmt: skip
        coap = holder["coap"] = CoapServer(settings.coap, intake, sites=lwm2m.sites)
        runner = asyncio.create_task(intake.run())
        async with coap, lwm2m:
            children = [
                await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "clients", "--port", str(coap.port),
                    "--devices", str(devices // processes), "--seconds", str(seconds),
                    "--mode", mode, "--prefix", f"p{index}-",
                    stdout=asyncio.subprocess.PIPE,
                )
                for index in range(processes)
            ]  # fmt: skip
            await asyncio.gather(*(follow(child) for child in children))
        runner.cancel()
    # the window in which every device process was loading
    t0, n0, c0, _ = max(marks["start"], key=lambda mark: mark[0])
    t1, n1, c1, _ = min(marks["end"], key=lambda mark: mark[0])
    registered = max(mark[3]["registered_s"] for mark in marks["start"])
    return {
        "mode": mode, "devices": devices, "device_processes": processes, "journal": journal,
        "readings_per_s": round((n1 - n0) / (t1 - t0)), "readings": n1 - n0,
        "client_changes_or_sends": sum(mark[3]["sent"] for mark in marks["end"]),
        "registrations_per_s": round(devices / processes / registered),
        "server_cpu_pct": round(100 * (c1 - c0) / (t1 - t0)),
    }  # fmt: skip


def decode_only(iterations: int) -> dict[str, Any]:
    payload = tlv.encode([
        tlv.resource(3, "1.4.2"), tlv.multiple(6, {0: 1}), tlv.multiple(7, {0: 3610}),
        tlv.resource(9, 87), tlv.resource(10, 15), tlv.multiple(11, {0: 0}),
    ])  # fmt: skip
    memory = DeviceMemory()
    started = time.perf_counter()
    for _ in range(iterations):
        translate(decode(payload, 11542, (3, 0), 1.7e9), memory)
    elapsed = time.perf_counter() - started
    return {"mode": "decode+translate (TLV, 6 resources)", "per_s": round(iterations / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="server", choices=["server", "clients"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mode", choices=["notify", "send"], default="notify")
    parser.add_argument("--processes", type=int, default=2, help="device processes")
    parser.add_argument("--prefix", default="")
    args = parser.parse_args()
    if args.role == "clients":
        asyncio.run(run_clients(args.port, args.devices, args.seconds, args.mode, args.prefix))
        return
    print(orjson.dumps(decode_only(20_000)).decode())
    rows = [("notify", True, 1), ("notify", True, args.processes),
            ("notify", False, args.processes), ("send", True, args.processes)]  # fmt: skip
    for mode, journal, processes in rows:
        row = asyncio.run(run_row(args.devices, args.seconds, mode, journal, processes))
        print(orjson.dumps(row).decode(), flush=True)


if __name__ == "__main__":
    main()
