"""The daemon's HTTP server: ``/metrics`` for Prometheus, ``/healthz``, ``/api/alerts``,
``/api/status``.

It binds to the configured address only (127.0.0.1 by default). Port 0 picks a free port;
:attr:`HttpServer.port` tells which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.model import AlertRecord


class HttpServer:
    """An aiohttp server (async context manager)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        healthy: Callable[[], bool] = lambda: True,
        active_alerts: Callable[[], Iterable[AlertRecord]] = lambda: (),
        status: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._healthy = healthy
        self._active_alerts = active_alerts
        self._status = status
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/api/alerts", self._alerts)
        app.router.add_get("/api/status", self._status_view)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        ok = self._healthy()
        return web.json_response({"status": "ok" if ok else "degraded"}, status=200 if ok else 503)

    async def _alerts(self, request: web.Request) -> web.Response:
        rows = [alert.to_json_dict() for alert in self._active_alerts()]
        rows.sort(key=lambda row: (row["kind"], row["subject"]))
        return web.Response(body=orjson.dumps({"active": rows}), content_type="application/json")

    async def _status_view(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self._status()), content_type="application/json")

    async def __aenter__(self) -> HttpServer:
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
