"""The service's HTTP API: health, status, Prometheus metrics and (with a token) job control.

Bound to 127.0.0.1 unless told otherwise. Endpoints:

- ``GET /health``: 200 while the scheduler runs and every job that had a fire due in its
  last two intervals has a cycle that succeeded since; else 503. JSON with each job's lag.
- ``GET /status``: jobs, market status of their exchanges, rate budget left, recent errors.
- ``GET /metrics``: Prometheus text format (:mod:`etl.metrics`).
- ``POST /jobs/NAME/pause``, ``/resume``, ``/run``: only when a token is configured;
  ``Authorization: Bearer TOKEN`` is required (401 without it).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clock import Clock
from db.jobs import JobDefinition, last_successes, recent_errors
from errors import MarketpollError
from etl.metrics import REGISTRY
from scheduler.jobs import MarketScheduler

__all__ = ["ServiceApi", "job_health"]

log = logging.getLogger(__name__)


def job_health(
    trigger, interval: timedelta, last_success: datetime | None, now: datetime, *, since: datetime | None = None
) -> tuple[bool, float | None]:
    """(healthy, lag seconds) of one job, pure.

    Unhealthy when a fire was due in the window [now - 2 intervals, now - interval/2] (a
    cycle had time to finish) and no cycle succeeded since that window began. ``since`` (when
    the job was scheduled, replaced or resumed) shortens the window: fires due before the job
    existed, or while it was paused, are not held against it. ``lag`` is the time since the
    last success (None if there was none).
    """
    lag = (now - last_success).total_seconds() if last_success else None
    window_start = now - 2 * interval if since is None else max(now - 2 * interval, since)
    due = trigger.get_next_fire_time(None, window_start)
    if due is None or due > now - interval / 2:
        return True, lag  # nothing was due lately (outside the session, or just scheduled)
    return (last_success is not None and last_success >= window_start - timedelta(seconds=1)), lag


class ServiceApi:
    """A threaded HTTP server in the background; ``close`` stops it."""

    def __init__(
        self,
        scheduler: MarketScheduler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        clock: Clock,
        budgets: Callable[[], dict] = dict,
    ) -> None:
        self.scheduler = scheduler
        self.token = token
        self.clock = clock
        self.budgets = budgets
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._guarded(self._get)

            def do_POST(self) -> None:  # noqa: N802
                self._guarded(self._post)

            def _guarded(self, fn) -> None:
                try:
                    fn()
                except Exception as exc:  # a bug must answer 500, not drop the connection
                    log.exception("api: %s %s failed", self.command, self.path)
                    self._json(500, {"error": type(exc).__name__})

            def _get(self) -> None:
                routes = {"/health": api.health, "/status": api.status}
                if self.path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif self.path in routes:
                    code, body = routes[self.path]()
                    self._json(code, body)
                else:
                    self._json(404, {"error": "not found"})

            def _post(self) -> None:
                parts = self.path.strip("/").split("/")
                if api.token is None or len(parts) != 3 or parts[0] != "jobs" or parts[2] not in ("pause", "resume", "run"):
                    self._json(404, {"error": "not found"})
                    return
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {api.token}".encode()):
                    self._json(401, {"error": "a valid 'Authorization: Bearer <token>' header is required"})
                    return
                code, body = api.control(parts[1], parts[2])
                self._json(code, body)

            def _json(self, code: int, body: dict) -> None:
                self._send(code, json.dumps(body, indent=2, default=str).encode(), "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                log.debug("api: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="api", daemon=True)
        self._thread.start()
        log.info("API on http://%s:%d (/health /status /metrics%s)", self.host, self.port, ", job control" if token else "")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- endpoints -------------------------------------------------------------------------

    def _jobs_health(self) -> tuple[bool, list[dict]]:
        now = self.clock.now()
        try:
            successes = last_successes(self.scheduler.store.engine)
        except MarketpollError as exc:
            return False, [{"error": f"database: {exc}"}]
        ok, out = True, []
        for job in self.scheduler.loaded_jobs():
            if job.paused:
                out.append({"name": job.name, "paused": True, "healthy": True})
                continue
            healthy, lag = job_health(self.scheduler.trigger_for(job), _interval(job), successes.get(job.name), now,
                                      since=job.updated_at)  # fmt: skip
            ok &= healthy
            out.append({"name": job.name, "healthy": healthy, "lag_seconds": round(lag, 1) if lag is not None else None})
        return ok, out

    def health(self) -> tuple[int, dict]:
        jobs_ok, jobs = self._jobs_health()
        healthy = self.scheduler.running and jobs_ok
        body = {"status": "ok" if healthy else "unhealthy", "scheduler_running": self.scheduler.running, "jobs": jobs}
        return (200 if healthy else 503), body

    def status(self) -> tuple[int, dict]:
        now = self.clock.now()
        try:
            jobs = self.scheduler.get_scheduled_jobs()
            errors = recent_errors(self.scheduler.store.engine)
        except MarketpollError as exc:
            return 503, {"error": f"database: {exc}"}
        exchanges = sorted({j["exchange"] for j in jobs})
        markets = {x: self.scheduler.calendars.get(x).status(now).as_dict() for x in exchanges}
        return 200, {"now": now.isoformat(), "scheduler_running": self.scheduler.running, "jobs": jobs, "markets": markets,
                     "rate_budget": self.budgets(), "recent_errors": errors}  # fmt: skip

    def control(self, name: str, action: str) -> tuple[int, dict]:
        store, now = self.scheduler.store, self.clock.now()
        if action == "run":
            if self.scheduler.run_now(name):
                return 202, {"job": name, "action": "run", "result": "started"}
            return 409, {"job": name, "error": "no such running job (unknown, paused, or not yet picked up)"}
        if not store.set_paused(name, action == "pause", now):
            return 404, {"job": name, "error": "no such job"}
        self.scheduler.sync()  # take effect now, not at the next table read
        return 200, {"job": name, "action": action, "result": "paused" if action == "pause" else "resumed"}


def _interval(job: JobDefinition) -> timedelta:
    return timedelta(minutes=job.interval_minutes)
