"""Health, status and job control: named jobs (:class:`SchedulerStatus`) or a polling run (:class:`PollingStatus`).

Both are :class:`api.base.StatusSource`\\ s. Endpoints (served by :mod:`api.server`):

- ``GET /health``: named jobs: 200 while the scheduler runs and every job that had a fire due in
  its last two intervals has a cycle that succeeded since; else 503. JSON with each job's lag.
  A polling run: 200 while its loop runs and its last finished cycle did not fail outright.
- ``GET /status``: jobs (or the polling run), market status of their exchanges, rate budget left,
  recent errors.
- ``POST /jobs/NAME/pause``, ``/resume``, ``/run``: named jobs only, with a token (see :mod:`api.server`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from clock import Clock
from db.jobs import JobDefinition, last_successes, recent_errors
from errors import MarketpollError
from models.run import CycleResult, RunStatus
from scheduler.jobs import MarketScheduler

__all__ = ["job_health", "SchedulerStatus", "PollingStatus"]


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


class SchedulerStatus:
    """Named jobs (``--run-scheduled-jobs``): health and status from the scheduler and ``etl_runs``; job control."""

    def __init__(self, scheduler: MarketScheduler, *, clock: Clock, budgets: Callable[[], dict] = dict) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.budgets = budgets

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


class PollingStatus:
    """A polling run (``--continuous-poll``, ``--market-hours-poll``, ``--adaptive-poll``, ``--stream``).

    A :class:`etl.events.PipelineListener` of the run's pipeline (cycles of ``job_name`` only) and the
    ``on_wait`` hook of its loop. ``/health`` is 200 while the loop runs (between :meth:`started` and
    :meth:`stopped`) and its last finished cycle was not ``failed`` (no cycle yet counts as healthy; a
    ``partial`` one is healthy, its failures are in ``/status``); a stopped loop is 503. The market state
    is reported for ``exchange`` when the strategy follows one. ``next_poll_at`` (optional) overrides the
    hook, for a loop that publishes it elsewhere (``--stream``'s state file).
    """

    def __init__(
        self, *, mode: str, job_name: str, provider: str, symbols: tuple[str, ...], interval: str, clock: Clock,
        engine, exchange: str | None = None, calendars=None, budgets: Callable[[], dict] = dict,
        next_poll_at: Callable[[], str | None] | None = None,
    ) -> None:  # fmt: skip
        self.mode, self.job_name, self.provider, self.symbols, self.interval = mode, job_name, provider, symbols, interval
        self.clock, self.engine, self.exchange, self.calendars, self.budgets = clock, engine, exchange, calendars, budgets
        self._next_poll_at = next_poll_at
        self._lock = threading.Lock()
        self._running = False
        self._started_at: datetime | None = None
        self._cycles = 0
        self._succeeded = 0
        self._last: dict | None = None
        self._next_due: datetime | None = None

    # -- the loop's hooks -----------------------------------------------------------------

    def started(self) -> None:
        with self._lock:
            self._running, self._started_at = True, self.clock.now()

    def stopped(self) -> None:
        with self._lock:
            self._running, self._next_due = False, None

    def on_wait(self, due: datetime) -> None:
        with self._lock:
            self._next_due = due

    def on_load(self, event) -> None:
        pass

    def on_cycle(self, cycle: CycleResult) -> None:
        if cycle.job_name != self.job_name:
            return
        last = {"started_at": cycle.started_at.isoformat(),
                "finished_at": cycle.finished_at.isoformat() if cycle.finished_at else None,
                "status": cycle.status.value, "rows_fetched": cycle.rows_fetched, "rows_loaded": cycle.rows_loaded,
                "rows_rejected": cycle.rows_rejected, "failed_symbols": [o.symbol for o in cycle.failed],
                "error": cycle.error_summary()}  # fmt: skip
        with self._lock:
            self._cycles += 1
            self._succeeded += cycle.status == RunStatus.SUCCEEDED
            self._last, self._next_due = last, None

    # -- StatusSource ---------------------------------------------------------------------

    def _run(self) -> dict:
        with self._lock:
            next_due = self._next_due.isoformat() if self._next_due else None
            run = {"mode": self.mode, "job": self.job_name, "provider": self.provider, "symbols": list(self.symbols),
                   "interval": self.interval, "polling_running": self._running,
                   "started_at": self._started_at.isoformat() if self._started_at else None,
                   "cycles": self._cycles, "successful_cycles": self._succeeded, "last_cycle": self._last,
                   "next_poll_at": next_due}  # fmt: skip
        if self._next_poll_at is not None and run["polling_running"]:
            run["next_poll_at"] = self._next_poll_at()
        return run

    def health(self) -> tuple[int, dict]:
        run = self._run()
        last = run["last_cycle"]
        healthy = run["polling_running"] and (last is None or last["status"] != RunStatus.FAILED.value)
        body = {"status": "ok" if healthy else "unhealthy", "polling_running": run["polling_running"], "job": self.job_name,
                "last_cycle_status": last["status"] if last else None}  # fmt: skip
        return (200 if healthy else 503), body

    def status(self) -> tuple[int, dict]:
        now = self.clock.now()
        try:
            errors = [e for e in recent_errors(self.engine) if e["job_name"] == self.job_name]
        except MarketpollError as exc:
            return 503, {"error": f"database: {exc}"}
        markets = {}
        if self.exchange is not None and self.calendars is not None:
            markets[self.exchange] = self.calendars.get(self.exchange).status(now).as_dict()
        return 200, {"now": now.isoformat(), "polling": self._run(), "jobs": [], "markets": markets,
                     "rate_budget": self.budgets(), "recent_errors": errors}  # fmt: skip

    def control(self, name: str, action: str) -> tuple[int, dict]:
        return 404, {"job": name, "error": f"no named jobs in {self.mode} mode (job control is for --run-scheduled-jobs)"}


def _interval(job: JobDefinition) -> timedelta:
    return timedelta(minutes=job.interval_minutes)
