"""An embedded MQTT broker for the demo and the tests.

:class:`EmbeddedBroker` starts a private broker on 127.0.0.1 and a free port: a
``mosquitto`` subprocess when the binary is installed (PATH or ``/usr/sbin``), otherwise
the pure-Python amqtt broker inside this process. It never touches a broker the machine
already runs.

Usage::

    async with EmbeddedBroker() as broker:   # doctest: +SKIP
        print(broker.url)                    # mqtt://127.0.0.1:40123
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from service.errors import BrokerUnavailableError

log = logging.getLogger(__name__)

Prefer = Literal["auto", "mosquitto", "amqtt"]


def find_mosquitto() -> str | None:
    """The mosquitto binary, if installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Wait until a TCP connection to ``host:port`` succeeds (bounded by ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(delay)
            delay = min(0.2, delay * 2)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class EmbeddedBroker:
    """A private MQTT broker (async context manager; reusable, not re-entrant).

    Parameters
    ----------
    host, port
        Where it listens; port 0 picks a free port (kept across :meth:`restart`).
    prefer
        ``"auto"`` (mosquitto if installed, else amqtt), ``"mosquitto"`` or ``"amqtt"``.
    persistence_dir
        With mosquitto, keep sessions and queued messages there across restarts.
    extra_config
        More mosquitto.conf lines.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        prefer: Prefer = "auto",
        persistence_dir: Path | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.prefer = prefer
        self.persistence_dir = persistence_dir
        self.extra_config = extra_config
        self.kind: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._amqtt: Any = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._running = False

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _choose(self) -> str:
        if self.prefer == "amqtt":
            return "amqtt"
        if find_mosquitto():
            return "mosquitto"
        if self.prefer == "mosquitto":
            raise BrokerUnavailableError("mosquitto is not installed (apt-get install mosquitto)")
        return "amqtt"

    def log_text(self) -> str:
        """The broker's log (mosquitto only)."""
        if self._tempdir is None:
            return ""
        path = Path(self._tempdir.name) / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self, directory: Path) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"log_dest file {directory / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "message_size_limit 0",
            "max_keepalive 65535",
            "persistent_client_expiration 1d",
        ]
        if self.persistence_dir is not None:
            self.persistence_dir.mkdir(parents=True, exist_ok=True)
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += list(self.extra_config)
        path = directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        if self._running:
            raise RuntimeError("broker already running")
        if self.port == 0:
            self.port = free_port(self.host)
        self.kind = self._choose()
        if self.kind == "mosquitto":
            await self._start_mosquitto()
        else:
            await self._start_amqtt()
        self._running = True
        log.info("embedded %s broker listening on %s", self.kind, self.url)

    async def _start_mosquitto(self) -> None:
        if self._tempdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="fleetwatch-broker-")
        config = self._write_config(Path(self._tempdir.name))
        binary = find_mosquitto()
        assert binary is not None
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        ready = asyncio.create_task(wait_for_port(self.host, self.port, 10.0))
        exited = asyncio.create_task(self._process.wait())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done or not ready.result():
            ready.cancel()
            exited.cancel()
            await self._kill_process()
            raise BrokerUnavailableError(
                f"mosquitto did not start on {self.url}: {self.log_text()[-2000:]}"
            )
        exited.cancel()

    async def _start_amqtt(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {},
            },
        }
        broker = Broker(config)
        await broker.start()
        self._amqtt = broker
        if not await wait_for_port(self.host, self.port, 10.0):
            raise BrokerUnavailableError(f"amqtt did not start on {self.url}")

    async def _kill_process(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        if not self._running:
            return
        self._running = False
        if self._process is not None:
            await self._kill_process()
        if self._amqtt is not None:
            broker, self._amqtt = self._amqtt, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.shutdown(), 5.0)

    async def kill(self) -> None:
        """Kill the broker abruptly (SIGKILL), as a crash would."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
            self._process = None
            self._running = False
        else:
            await self.stop()

    async def restart(self) -> None:
        """Stop and start again on the same port."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
