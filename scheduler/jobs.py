"""Named jobs keyed to market sessions, run by APScheduler 3 (the seed's MarketScheduler).

Jobs live as plain rows in ``scheduled_jobs`` (see :mod:`db.jobs`): the CLI writes them,
and a running :meth:`MarketScheduler.run` re-reads the table every ``sync_seconds``, so a
job scheduled, replaced or removed from another process takes effect within seconds and
every job survives restarts. APScheduler keeps only an in-memory copy. A row that is not a
valid job (edited by hand: a sub-second interval, an unknown exchange) is skipped with one
error log line, and the service goes on with the others.

Each job fires at ``open + k * interval`` (k = 0, 1, ...) while the instant is inside its
session, the session's close included (that fire collects the last bar): never on a
holiday, never after an early close, right across DST because the instants come from the
calendar in UTC (:class:`SessionTrigger`), not from wall-clock cron fields (APScheduler's
CronTrigger has known DST bugs: agronholm/apscheduler#606, #1021).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.base import run_job as _aps_run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from clock import Clock, SystemClock
from db.jobs import InvalidJob, JobDefinition, JobStore, check_job_name
from db.ledger import RunLedger
from errors import ConfigError, MarketpollError
from etl.pipeline import EtlPipeline
from etl.redact import Redactor
from models.bar import normalize_symbol
from models.run import CycleResult
from scheduler.calendar import Calendars, MarketCalendar, Session

__all__ = ["SessionTrigger", "MarketScheduler", "JOB_SESSIONS", "define_job"]

log = logging.getLogger(__name__)

#: CLI flag -> session of the named job.
JOB_SESSIONS = {"market": Session.REGULAR, "pre_market": Session.PRE, "after_hours": Session.POST}

#: The fire (APScheduler's scheduled run time, UTC) that the job function on this thread runs.
_fire = threading.local()


def _run_at_fire(run, job, jobstore_alias, run_times, logger_name):
    """APScheduler's ``run_job``, telling the job function which fire it runs: the last of ``run_times``
    (jobs coalesce, so there is one). The slot claim keys on it, never on the node's ``now``."""
    _fire.time = run_times[-1]
    try:
        return run(job, jobstore_alias, run_times, logger_name)
    finally:
        _fire.time = None


class _FirePool:
    """Wraps the executor's thread pool so each submitted run goes through :func:`_run_at_fire`."""

    def __init__(self, pool) -> None:
        self._pool = pool

    def submit(self, run, *args):
        assert run is _aps_run_job, run
        return self._pool.submit(_run_at_fire, run, *args)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait)


class _FireExecutor(ThreadPoolExecutor):
    """APScheduler's thread pool executor whose job functions can read their scheduled fire time."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers)
        self._pool = _FirePool(self._pool)


class SessionTrigger(BaseTrigger):
    """Fires every ``interval`` from each ``session`` window's start, through its end (inclusive).

    ``get_next_fire_time`` is pure: a function of its arguments and the calendar.
    """

    def __init__(self, calendar: MarketCalendar, session: Session, interval: timedelta) -> None:
        if interval <= timedelta(0):
            raise ConfigError("job interval must be > 0", name="interval", value=interval)
        self.calendar = calendar
        self.session = session
        self.interval = interval

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        # like CronTrigger: continue after the previous fire (so misfires can be counted)
        t = previous_fire_time + timedelta(microseconds=1) if previous_fire_time else now
        t = t.astimezone(UTC)
        probe = t - timedelta(microseconds=1)  # a window that closed exactly at t still offers its end
        for _, start, end in self.calendar.windows_from(probe, frozenset({self.session})):
            if end < t:
                continue
            k = max(0, math.ceil((t - start) / self.interval))
            fire = start + k * self.interval
            if fire <= end:
                return fire
        return None  # no such session within the calendar's horizon

    def __str__(self) -> str:
        return f"session[{self.calendar.code} {self.session.value} every {self.interval}]"

    def __repr__(self) -> str:
        return f"<SessionTrigger {self}>"


def define_job(calendars: Calendars, now: datetime, name: str, session: Session, symbols, interval_minutes: float, *,
               exchange: str = "XNYS", provider: str = "demo", bar_interval: str = "5min",
               fallback_provider: str | None = None) -> JobDefinition:  # fmt: skip
    """A validated :class:`JobDefinition` (no database needed: the CLI checks before it connects).

    Raises :class:`~errors.ConfigError` for a bad name, symbol, interval or exchange and
    :class:`~errors.SchedulingError` for a session the exchange does not have.
    """
    name = check_job_name(name)
    try:
        syms = tuple(dict.fromkeys(normalize_symbol(s) for s in symbols))
    except ValueError as exc:
        raise ConfigError(str(exc), name="symbols") from None
    try:
        interval = float(interval_minutes)
    except (TypeError, ValueError):
        raise ConfigError(f"job interval must be a number of minutes, got {interval_minutes!r}", name="interval") from None
    # validates name, session, symbols and intervals before the (slow) calendar is built
    job = JobDefinition(name, Session(session).value, exchange, provider, syms, interval, bar_interval,
                        fallback_provider=fallback_provider)  # fmt: skip
    cal = calendars.get(exchange)  # validates the exchange code
    cal.next_window(now, frozenset({Session(session)}))  # the session exists
    return dataclasses.replace(job, exchange=cal.code)


class MarketScheduler:
    """Named, session-keyed ETL jobs on an APScheduler ``BackgroundScheduler``.

    ``pipeline_for(provider_name, fallback_name)`` returns the :class:`EtlPipeline` a job's cycles run on:
    the same route, retry passes and batch size as polling.
    Job options, chosen on purpose:

    - ``misfire_grace_time`` = half the job interval (at least 5 s): a fire delayed by load
      still runs, but one later than that is dropped, because the next fire is nearer than it
      was late (APScheduler's 1 s default drops fires under ordinary load).
    - ``coalesce=True``: after a stall (suspended VM, long GC, clock jump) a job runs once,
      not once per missed fire: the provider returns the latest bars anyway.
    - ``max_instances=1``: a job's cycles never overlap; an overrunning cycle makes the next
      fire wait (and it is logged as missed) instead of doubling requests against the rate budget.
    """

    def __init__(
        self,
        store: JobStore,
        pipeline_for: Callable[[str, str | None], EtlPipeline],
        *,
        calendars: Calendars | None = None,
        clock: Clock | None = None,
        max_concurrent_jobs: int = 4,
        dispatch: Callable[[JobDefinition, datetime | None], None] | None = None,
    ) -> None:
        """``dispatch(job, fire_time)``, when given (a cluster node: :meth:`scheduler.cluster.ClusterNode.dispatch`),
        claims a fire's slot and hands its symbols to the cluster's workers instead of running the cycle here."""
        self.dispatch = dispatch
        self.store = store
        self.pipeline_for = pipeline_for
        self.calendars = calendars or Calendars()
        self.clock = clock or SystemClock()
        self.max_concurrent_jobs = max_concurrent_jobs
        self._loaded: dict[str, JobDefinition] = {}
        self._rejected: dict[str, JobDefinition | InvalidJob] = {}  # skipped rows, each logged once
        self._scheduler: BackgroundScheduler | None = None
        self._sync_lock = threading.Lock()

    # -- the seed's scheduling API (writes rows) -----------------------------------------

    def schedule_job(self, name: str, session: Session, symbols, interval_minutes: float, *, exchange: str = "XNYS",
                     provider: str = "demo", bar_interval: str = "5min",
                     fallback_provider: str | None = None) -> bool:  # fmt: skip
        """Create or replace a named job; returns True if a job of that name was replaced.

        Raises :class:`~errors.ConfigError` for a bad name, symbol, interval or exchange and
        :class:`~errors.SchedulingError` for a session the exchange does not have (see :func:`define_job`).
        """
        job = define_job(self.calendars, self.clock.now(), name, session, symbols, interval_minutes,
                         exchange=exchange, provider=provider, bar_interval=bar_interval,
                         fallback_provider=fallback_provider)  # fmt: skip
        return self.store.put(job, self.clock.now())

    def schedule_market_hours_job(self, job_name: str, symbols, interval_minutes: float, **kw) -> bool:
        return self.schedule_job(job_name, Session.REGULAR, symbols, interval_minutes, **kw)

    def schedule_pre_market_job(self, job_name: str, symbols, interval_minutes: float, **kw) -> bool:
        return self.schedule_job(job_name, Session.PRE, symbols, interval_minutes, **kw)

    def schedule_after_hours_job(self, job_name: str, symbols, interval_minutes: float, **kw) -> bool:
        return self.schedule_job(job_name, Session.POST, symbols, interval_minutes, **kw)

    def remove_job(self, name: str) -> bool:
        return self.store.remove(name)

    def trigger_for(self, job: JobDefinition) -> SessionTrigger:
        return SessionTrigger(self.calendars.get(job.exchange), Session(job.session), timedelta(minutes=job.interval_minutes))

    def get_scheduled_jobs(self, *, include_invalid: bool = False) -> list[dict]:
        """Every job with its next run (UTC and exchange time) and its last run from ``etl_runs``.

        Rows that are not valid jobs (edited by hand) are left out, or with ``include_invalid``
        listed as ``{"name": ..., "error": ...}`` after the others.
        """
        now = self.clock.now()
        last = self.store.last_runs()
        jobs, invalid = self.store.load()
        out, bad = [], [{"name": row.name, "error": row.error} for row in invalid]
        for job in jobs:
            try:
                cal = self.calendars.get(job.exchange)
                nxt = None if job.paused else self.trigger_for(job).get_next_fire_time(None, now)
            except MarketpollError as exc:
                bad.append({"name": job.name, "error": str(exc)})
                continue
            run = last.get(job.name)
            out.append({
                "name": job.name, "session": job.session, "exchange": job.exchange, "provider": job.provider,
                "symbols": list(job.symbols), "interval_minutes": job.interval_minutes, "bar_interval": job.bar_interval,
                "paused": job.paused, "fallback_provider": job.fallback_provider,
                "next_run_utc": nxt.isoformat() if nxt else None,
                "next_run_exchange": nxt.astimezone(cal.tz).isoformat() if nxt else None,
                "last_run_status": run.status if run else None,
                "last_run_started_at": run.started_at.isoformat() if run else None,
            })  # fmt: skip
        return out + sorted(bad, key=lambda b: b["name"]) if include_invalid else out

    # -- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def loaded_jobs(self) -> list[JobDefinition]:
        """Jobs the running scheduler has read from the table (paused ones included, invalid rows not)."""
        return list(self._loaded.values())

    def scheduled_job_ids(self) -> list[str]:
        """Names of the jobs APScheduler holds right now (not paused, not skipped), sorted."""
        if self._scheduler is None:
            return []
        return sorted(job.id for job in self._scheduler.get_jobs())

    def next_run_time(self, name: str) -> datetime | None:
        """When APScheduler will next fire job ``name`` (UTC), or None if it does not hold it."""
        job = self._scheduler.get_job(name) if self._scheduler is not None else None
        return job.next_run_time.astimezone(UTC) if job is not None and job.next_run_time is not None else None

    def run_now(self, name: str) -> bool:
        """Fire job ``name`` at once (outside its schedule); False if it is not loaded or is paused."""
        job = self._loaded.get(name)
        if self._scheduler is None or job is None or job.paused:
            return False
        self._scheduler.add_job(self.run_job, args=[name], kwargs={"scheduled": False}, id=f"{name}:now",
                                name=f"{name} (run now)", replace_existing=True)  # fmt: skip
        return True

    def run_job(self, name: str, *, scheduled: bool = True) -> None:
        """One ETL cycle of job ``name`` (its etl_runs row carries the job's name).

        A scheduled fire first claims its slot (job name, APScheduler's fire time cut to the second) in
        ``etl_runs``: when several processes or nodes run the same jobs on one database, exactly one
        runs each slot, the others skip it (logged at DEBUG). ``scheduled=False`` (run now) claims none.
        """
        job = self._loaded.get(name)
        if job is None:
            return
        fire_time = getattr(_fire, "time", None) if scheduled else None
        try:
            pipeline = self.pipeline_for(job.provider, job.fallback_provider)
        except ConfigError as exc:  # a provider setting missing or bad here (a key): the fire fails, on the record
            log.error("job %s could not run: %s", job.name, exc)
            self._record_unrunnable(job, fire_time, f"job could not run: {exc}")
            return
        except MarketpollError as exc:  # e.g. the database, needed to build the provider's quota, is away
            log.error("job %s could not run: %s", job.name, exc)
            return
        try:
            budget = pipeline.provider.budget
            if budget is not None and budget.exhausted_until() is not None and pipeline.fallback is None:
                log.debug("job %s skipped: %s is paused until its daily quota resets", name, job.provider)
                return
            if self.dispatch is not None:
                self.dispatch(job, fire_time)
            else:
                pipeline.run_cycle(job.symbols, job.bar_interval, job_name=job.name, scheduled_for=fire_time)
        except MarketpollError as exc:  # a bad provider setting: report, keep the scheduler alive
            log.error("job %s could not run: %s", job.name, exc)

    def _record_unrunnable(self, job: JobDefinition, fire_time: datetime | None, error: str) -> None:
        """A ``failed`` etl_runs row for a fire that could not start (its slot claimed like any fire's), so
        ``--show-scheduled-jobs``, ``/status`` and SQL show why the job is not loading. Never raises."""
        now = self.clock.now()
        cycle = CycleResult(job_name=job.name, provider=job.provider, started_at=now, interval=job.bar_interval,
                            symbols_requested=len(job.symbols))  # fmt: skip
        ledger = RunLedger(self.store.engine, Redactor())  # masks credentials in URLs
        try:
            if ledger.start(cycle, interval=job.bar_interval, symbols_requested=len(job.symbols),
                            scheduled_for=fire_time) is None:  # fmt: skip
                return  # another node holds the slot
            cycle.error = error
            cycle.settle(now)
            ledger.finish(cycle)
        except MarketpollError as exc:
            log.warning("job %s: could not record the failed fire in etl_runs: %s", job.name, exc)

    def sync(self) -> None:
        """Make the APScheduler jobs match the table (adds, replacements, removals, pauses).

        Called by the run loop and by the API (pause/resume take effect at once): serialised.
        """
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        assert self._scheduler is not None
        try:
            jobs, invalid = self.store.load()
        except MarketpollError as exc:
            log.warning("could not read scheduled jobs (keeping the current set): %s", exc)
            return
        wanted = {j.name: j for j in jobs}
        broken = {row.name: row for row in invalid}
        for name in set(self._loaded) - set(wanted):
            self._unschedule(name)
            del self._loaded[name]
            if name not in broken:
                log.info("job %s removed", name)
        for name in set(self._rejected) - set(wanted) - set(broken):
            del self._rejected[name]  # the row was deleted
        for name, row in broken.items():
            self._reject(name, row, row.error)
        for name, job in wanted.items():
            if self._loaded.get(name) == job or self._rejected.get(name) == job:
                continue
            self._unschedule(name)
            self._loaded.pop(name, None)
            try:
                trigger = self.trigger_for(job)  # an unknown exchange fails here
                self._loaded[name] = job  # before add_job: a fire due at once must find its job
                if not job.paused:
                    grace = max(5, int(job.interval_minutes * 30))  # half the interval, in seconds
                    aps_job = self._scheduler.add_job(
                        self.run_job, trigger, args=[name], id=name, name=name,
                        misfire_grace_time=grace, coalesce=True, max_instances=1, replace_existing=True,
                    )  # fmt: skip
            except (MarketpollError, ValueError, OverflowError) as exc:
                self._loaded.pop(name, None)
                self._unschedule(name)
                self._reject(name, job, str(exc))
                continue
            self._rejected.pop(name, None)
            if job.paused:
                log.info("job %s is paused", name)
            else:
                log.info("job %s: %s %s %s every %g min, next run %s", name, job.exchange, job.session,
                         " ".join(job.symbols), job.interval_minutes, aps_job.next_run_time)  # fmt: skip

    def _reject(self, name: str, row: JobDefinition | InvalidJob, error: str) -> None:
        """Skip a row that is not a valid job; log it once (again only when the row changes)."""
        if self._rejected.get(name) == row:
            return
        self._unschedule(name)
        self._loaded.pop(name, None)
        self._rejected[name] = row
        log.error("job %r skipped: %s (fix it with the CLI, or delete its scheduled_jobs row)", name, error)

    def _unschedule(self, name: str) -> None:
        if self._scheduler.get_job(name) is not None:  # a paused job is loaded but not scheduled
            self._scheduler.remove_job(name)

    def run(self, stop: threading.Event, *, sync_seconds: float = 2.0, on_tick: Callable[[], None] | None = None) -> None:
        """Run jobs until ``stop`` is set; then start no new cycle and wait for running ones."""
        self._scheduler = BackgroundScheduler(timezone=UTC, executors={"default": _FireExecutor(self.max_concurrent_jobs)})
        self._scheduler.add_listener(self._missed, EVENT_JOB_MISSED)
        self._scheduler.start()
        log.info("scheduler running; re-reading scheduled_jobs every %gs", sync_seconds)
        try:
            while not stop.is_set():
                self.sync()
                if on_tick is not None:
                    on_tick()
                stop.wait(sync_seconds)
        finally:
            self._scheduler.shutdown(wait=True)  # running cycles finish and record themselves
            log.info("scheduler stopped")

    @staticmethod
    def _missed(event: JobExecutionEvent) -> None:
        log.warning("job %s missed its run at %s (the previous cycle overran or the process stalled)",
                    event.job_id, event.scheduled_run_time)  # fmt: skip
