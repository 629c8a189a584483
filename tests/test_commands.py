"""The commands as a user runs them: ``fleetwatch demo`` and ``fleetwatch run --config``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest

from service.state.store import StateStore

pytestmark = pytest.mark.broker

FLEETWATCH = [sys.executable, "-m", "service.commands.cli"]


async def read_until(stream: asyncio.StreamReader, needle: bytes, timeout: float) -> bytes:
    """Read lines until one contains ``needle``; return everything read."""
    seen = b""

    async def scan() -> bytes:
        nonlocal seen
        while True:
            line = await stream.readline()
            if not line:
                raise EOFError(f"stream ended before {needle!r}: {seen[-2000:]!r}")
            seen += line
            if needle in line:
                return seen

    return await asyncio.wait_for(scan(), timeout)


async def test_demo_shows_alerts_and_stops_cleanly_on_ctrl_c() -> None:
    process = await asyncio.create_subprocess_exec(
        *FLEETWATCH, "demo", "--devices", "30", "--interval", "1", "--no-live", "--http-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        output = await read_until(process.stdout, b"FIRING", 120)
        assert b"metrics  http://127.0.0.1:" in output
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert b"stopped cleanly" in rest


async def test_run_with_a_config_file(tmp_path: Path, broker, topic_prefix, mqtt_client) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "fleetwatch.toml"
    config.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "fw-{topic_prefix}"
[[mqtt.subscriptions]]
filter = "{topic_prefix}/fleet/+/+/+"
[topics]
templates = ["{topic_prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"]
alerts_prefix = "{topic_prefix}/alerts"
status = "{topic_prefix}/status"
deadletter = "{topic_prefix}/deadletter"
[http]
port = 0
[pipeline]
tick_interval_s = 0.2
workers = 1
[state]
path = "{tmp_path / "state.db"}"
[[rules]]
name = "hot"
metric = "temperature_c"
kind = "above"
threshold = 50
"""
    )
    await mqtt_client.subscribe(f"{topic_prefix}/#")
    process = await asyncio.create_subprocess_exec(
        *FLEETWATCH, "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "FLEETWATCH_MQTT__PASSWORD": "not-logged"},
    )  # fmt: skip
    try:
        await mqtt_client.expect(f"{topic_prefix}/status", lambda p: p == b"online", timeout=30)
        await mqtt_client.publish(
            f"{topic_prefix}/fleet/s1/dev1/telemetry", b'{"temperature_c": 80}'
        )
        _, payload, _retained = await mqtt_client.expect(
            f"{topic_prefix}/alerts/rule.hot/dev1", timeout=10
        )
        assert orjson.loads(payload)["state"] == "firing"
        process.send_signal(signal.SIGTERM)
        await mqtt_client.expect(f"{topic_prefix}/status", lambda p: p == b"offline", timeout=15)
        output, _ = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert b"FleetWatch stopped" in output
    # the shutdown checkpoint holds the alert that is still active
    with StateStore(tmp_path / "state.db") as store:
        checkpoint = store.load_checkpoint()
    assert checkpoint is not None
    assert [row["record"]["subject"] for row in checkpoint.components["alerts"]["open"]] == ["dev1"]
    assert b"not-logged" not in output


async def test_run_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[pipeline]\nqueue_size = 0\n")
    process = await asyncio.create_subprocess_exec(
        *FLEETWATCH, "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"pipeline.queue_size" in output


@pytest.mark.parametrize(
    "target, signum",
    [("daemon", signal.SIGTERM), ("group", signal.SIGTERM), ("group", signal.SIGINT)],
    ids=["sigterm-to-daemon", "sigterm-to-group", "ctrl-c"],
)
async def test_run_with_workers_stops_cleanly(
    tmp_path: Path, broker, topic_prefix, mqtt_client, target, signum
) -> None:  # type: ignore[no-untyped-def]
    """``docker stop`` signals the daemon only; systemd and Ctrl-C signal every process.
    Either way each worker saves its state and the daemon exits 0."""
    config = tmp_path / "fleetwatch.toml"
    config.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "fw-{topic_prefix}"
[[mqtt.subscriptions]]
filter = "{topic_prefix}/fleet/+/+/+"
[topics]
templates = ["{topic_prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"]
alerts_prefix = "{topic_prefix}/alerts"
status = "{topic_prefix}/status"
[http]
port = 0
[pipeline]
workers = 2
[state]
path = "{tmp_path / "state.db"}"
[[rules]]
name = "hot"
metric = "temperature_c"
kind = "above"
threshold = 50
"""
    )
    await mqtt_client.subscribe(f"{topic_prefix}/#")
    process = await asyncio.create_subprocess_exec(
        *FLEETWATCH, "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        await mqtt_client.expect(f"{topic_prefix}/status", lambda p: p == b"online", timeout=60)
        # sites s1 and s4 are placed on different workers
        for site, device in (("s1", "dev1"), ("s4", "dev2")):
            await mqtt_client.publish(
                f"{topic_prefix}/fleet/{site}/{device}/telemetry", b'{"temperature_c": 80}'
            )
        for device in ("dev1", "dev2"):
            await mqtt_client.expect(f"{topic_prefix}/alerts/rule.hot/{device}", timeout=10)
        if target == "group":
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        await mqtt_client.expect(f"{topic_prefix}/status", lambda p: p == b"offline", timeout=20)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode == 0, output[-3000:]
    assert b"FleetWatch stopped" in output
    subjects = []
    for index in (0, 1):
        with StateStore(tmp_path / f"state.worker-{index}-of-2.db") as store:
            checkpoint = store.load_checkpoint()
            assert list(store.journal()) == []
        assert checkpoint is not None
        subjects.append(
            [row["record"]["subject"] for row in checkpoint.components["alerts"]["open"]]
        )
    assert subjects == [["dev1"], ["dev2"]]
