"""The API server: one Starlette app served by uvicorn on its own thread and event loop.

Bound to 127.0.0.1 unless told otherwise. Endpoints:

- ``GET /health``, ``GET /status`` (:mod:`api.status`; ``/status`` also merges each ``status_extras``
  dict and reports the live push under ``live``), ``GET /metrics`` (Prometheus text, :mod:`etl.metrics`);
- ``POST /jobs/NAME/pause``, ``/resume``, ``/run``: only when a token is configured;
  ``Authorization: Bearer TOKEN`` is required (401 without it);
- ``GET /events`` (:mod:`api.sse`) and ``WS /ws`` (:mod:`api.ws`): the bar events live;
- the dashboard's routes (``api.dashboard.routes(ctx)``, ``GET /``).

Loading never waits for the server, nor the server for loading: the server only reads the
database and the hub. Start-up binds the port first, in the caller's thread, so a busy port is a
:class:`~errors.ConfigError` (exit 2); :meth:`ApiServer.close` stops it within about
:data:`SHUTDOWN_SECONDS`. The LISTEN connection (PostgreSQL) opens and closes with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable

import sqlalchemy as sa
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from api.base import ApiContext, StatusSource
from api.events import EventHub
from api.listen import PgListener
from api.sse import events
from api.ws import FramesProtocol, Rooms, ws_endpoint
from clock import Clock
from db.engine import is_postgres
from errors import ConfigError, MarketpollError
from etl.metrics import REGISTRY

__all__ = ["ApiServer", "build_app", "START_TIMEOUT_SECONDS", "SHUTDOWN_SECONDS"]

log = logging.getLogger(__name__)

#: How long start-up may take before it is an error, in seconds.
START_TIMEOUT_SECONDS = 15.0
#: How long open connections (event streams, WebSockets) get to finish at shutdown, in seconds.
SHUTDOWN_SECONDS = 3.0


def _json(code: int, body: dict) -> Response:
    return Response(json.dumps(body, indent=2, default=str), status_code=code, media_type="application/json")


def build_app(ctx: ApiContext, *, token: str | None = None, listen: bool = False,
              started: threading.Event | None = None) -> Starlette:  # fmt: skip
    """The Starlette app over ``ctx``; ``listen``: hold the LISTEN connection (PostgreSQL) while it runs."""
    source = ctx.source

    async def health(request: Request) -> Response:
        return _json(*await run_in_threadpool(source.health))

    async def status(request: Request) -> Response:
        return _json(*await run_in_threadpool(ctx.status_response))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def control(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if token is None or action not in ("pause", "resume", "run"):
            return _json(404, {"error": "not found"})
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _json(401, {"error": "a valid 'Authorization: Bearer <token>' header is required"})
        return _json(*await run_in_threadpool(source.control, name, action))

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return _json(exc.status_code, {"error": "not found" if exc.status_code == 404 else str(exc.detail)})

    async def failed(request: Request, exc: Exception) -> Response:  # a bug answers 500, never drops the connection
        log.error("api: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _json(500, {"error": type(exc).__name__})

    rooms = Rooms(ctx.hub, ctx.engine, ctx.clock)
    ctx.live_stats = lambda: {**ctx.hub.stats(), **rooms.stats()}
    routes = [
        Route("/health", health),
        Route("/status", status),
        Route("/metrics", metrics),
        Route("/jobs/{name}/{action}", control, methods=["POST"]),
        Route("/events", events),
        WebSocketRoute("/ws", ws_endpoint),
    ]
    try:
        from api.dashboard import routes as dashboard_routes

        routes += dashboard_routes(ctx)
    except ImportError as exc:
        log.warning("api: no dashboard (%s)", exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        listener = PgListener(ctx.engine, ctx.hub) if listen else None
        feed = asyncio.create_task(rooms.run(), name="ws-rooms")
        if started is not None:
            started.set()
        try:
            yield
        finally:
            ctx.hub.close()
            feed.cancel()
            if listener is not None:
                await asyncio.to_thread(listener.close)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found, Exception: failed})
    app.state.hub, app.state.engine, app.state.rooms, app.state.ctx = ctx.hub, ctx.engine, rooms, ctx
    return app


class ApiServer:
    """Serves :func:`build_app` on ``host:port`` (0: any free port; see :attr:`port`) until :meth:`close`.

    ``source`` answers /health, /status and job control; ``hub`` carries the events (a new one if None);
    ``listen`` (default: the database is PostgreSQL) holds the ``LISTEN marketpoll_bars`` connection.
    Raises ConfigError when the port cannot be bound (in use, not permitted), MarketpollError when the
    server does not start within :data:`START_TIMEOUT_SECONDS`.
    """

    def __init__(
        self, source: StatusSource, *, engine: sa.Engine, clock: Clock, host: str = "127.0.0.1", port: int = 0,
        token: str | None = None, hub: EventHub | None = None, status_extras: Iterable[Callable[[], dict]] = (),
        calendars=None, listen: bool | None = None,
    ) -> None:  # fmt: skip
        self.hub = hub if hub is not None else EventHub(clock=clock)
        self.ctx = ApiContext(engine=engine, clock=clock, hub=self.hub, source=source, calendars=calendars,
                              status_extras=list(status_extras))  # fmt: skip
        self._sock = _bind(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        started = threading.Event()
        listen = is_postgres(engine) if listen is None else listen
        self.app = build_app(self.ctx, token=token, listen=listen, started=started)
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="on", ws=FramesProtocol,
                                ws_per_message_deflate=False, timeout_graceful_shutdown=SHUTDOWN_SECONDS)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT_SECONDS) or not self._thread.is_alive():
            self.close()
            raise MarketpollError(f"the API server on {host}:{self.port} did not start within {START_TIMEOUT_SECONDS:g} s")
        log.info("API on http://%s:%d (/health /status /metrics /events /ws%s)", self.host, self.port,
                 ", job control" if token else "")  # fmt: skip

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException:  # noqa: BLE001 - a dead server must be told, never kill the process
            log.exception("the API server stopped")

    def close(self) -> None:
        """Stop serving: end the event streams, close the connections, release the port."""
        self.hub.close()
        self._server.should_exit = True
        self._thread.join(timeout=SHUTDOWN_SECONDS + 10)
        self._sock.close()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--api-host {host}: {exc.strerror}", name="api_host", value=host) from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(256)
    except OSError as exc:
        sock.close()
        reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ConfigError(f"--api-port {port}: cannot listen on {host}:{port}: {reason}", name="api_port", value=port) from None
    sock.setblocking(False)
    return sock
