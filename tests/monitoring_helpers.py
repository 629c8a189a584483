"""Run Prometheus and Alertmanager (Debian packages) inside tests, and poll their APIs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from service.runtime.broker import free_port

T = TypeVar("T")


def find_binary(*names: str) -> str | None:
    """The first of ``names`` on PATH (or in /usr/bin, /usr/sbin)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for folder in ("/usr/bin", "/usr/sbin"):
            candidate = os.path.join(folder, name)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


PROMTOOL = find_binary("promtool")
PROMETHEUS = find_binary("prometheus")
ALERTMANAGER = find_binary("prometheus-alertmanager", "alertmanager")


async def poll(
    probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Call ``probe`` until it returns something other than ``None``; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = await probe()
        except (aiohttp.ClientError, TimeoutError) as exc:
            result, last_error = None, exc
        if result is not None:
            return result
        if loop.time() >= deadline:
            raise TimeoutError(f"{what} within {timeout} s (last error: {last_error!r})")
        await asyncio.sleep(interval)


async def get_json(url: str, **params: str) -> Any:
    """GET ``url`` and return its JSON body (raising on an error status)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session,
        session.get(url, params=params) as response,
    ):
        response.raise_for_status()
        return await response.json()


@contextlib.asynccontextmanager
async def running_process(
    argv: list[str], ready_url: str, log_path: Path, timeout: float = 20.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start ``argv``, wait until ``ready_url`` answers 200, terminate it on exit."""
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:

        async def ready() -> bool | None:
            if process.returncode is not None:
                raise RuntimeError(
                    f"{argv[0]} exited with {process.returncode}: {log_path.read_text()[-2000:]}"
                )
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session,
                session.get(ready_url) as response,
            ):
                return True if response.status == 200 else None

        try:
            await poll(ready, timeout, f"{argv[0]} ready at {ready_url}", interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log: {log_path.read_text()[-2000:]}") from None
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


def loopback_address() -> str:
    """``127.0.0.1:<a free port>``."""
    return f"127.0.0.1:{free_port()}"
