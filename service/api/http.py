"""The daemon's HTTP server: ``/metrics`` for Prometheus, ``/healthz``, ``/api/alerts``,
``/api/status`` and, with a :class:`~service.api.fleetapi.FleetApi`, the fleet API and the status
page at ``/``; optionally behind basic auth (all but ``/healthz``) and over TLS.

It binds to the configured address only (127.0.0.1 by default). Port 0 picks a free port;
:attr:`HttpServer.port` tells which.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.api.fleetapi import FleetApi
from service.records import AlertRecord


class HttpServer:
    """An aiohttp server (async context manager).

    ``active_alerts`` and ``status`` may be coroutines; ``exposition``, when given, makes
    ``/metrics`` serve what it returns instead of the registry (several processes merged).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        healthy: Callable[[], bool] = lambda: True,
        active_alerts: Callable[[], Iterable[AlertRecord] | Awaitable[Iterable[AlertRecord]]] = (
            lambda: ()
        ),
        status: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]] = dict,
        credentials: tuple[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        fleet_api: FleetApi | None = None,
        exposition: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._healthy = healthy
        self._active_alerts = active_alerts
        self._status = status
        self._credentials = credentials
        self._ssl = ssl_context
        self._fleet_api = fleet_api
        self._exposition = exposition
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _authenticate(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if self._credentials is not None and request.path != "/healthz":
            given = _basic_credentials(request.headers.get("Authorization", ""))
            expected_user, expected_password = self._credentials
            if (
                given is None
                or not hmac.compare_digest(given[0].encode(), expected_user.encode())
                or not hmac.compare_digest(given[1].encode(), expected_password.encode())
            ):
                return web.json_response(
                    {"error": "authentication required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Basic realm="fleetwatch"'},
                )
        return await handler(request)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/api/status", self._status_view)
        if self._fleet_api is not None:
            app.router.add_get("/api/alerts", self._fleet_api.alerts)
            self._fleet_api.add_routes(app)
        else:
            app.router.add_get("/api/alerts", self._alerts)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._exposition is not None:
            body = await self._exposition()
        else:
            body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        ok = self._healthy()
        return web.json_response({"status": "ok" if ok else "degraded"}, status=200 if ok else 503)

    async def _alerts(self, request: web.Request) -> web.Response:
        active = self._active_alerts()
        if inspect.isawaitable(active):
            active = await active
        rows = [alert.to_json_dict() for alert in active]
        rows.sort(key=lambda row: (row["kind"], row["subject"]))
        return web.Response(body=orjson.dumps({"active": rows}), content_type="application/json")

    async def _status_view(self, request: web.Request) -> web.Response:
        status = self._status()
        if inspect.isawaitable(status):
            status = await status
        return web.Response(body=orjson.dumps(status), content_type="application/json")

    async def __aenter__(self) -> HttpServer:
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl)
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
        if self._fleet_api is not None:
            self._fleet_api.events.close()  # open event streams end now, not at a timeout
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """User and password from a basic ``Authorization`` header, or ``None``.

    >>> _basic_credentials("Basic dXNlcjpwYXNz")
    ('user', 'pass')
    >>> _basic_credentials("Bearer x") is None, _basic_credentials("Basic !!") is None
    (True, True)
    """
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def server_ssl_context(cert_file: Path, key_file: Path | None) -> ssl.SSLContext:
    """A TLS context for serving HTTPS with the given certificate (and key)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context
