"""Coverage of the named jobs, kept in memory for ``/metrics`` and ``/status`` (issue #9).

:class:`CoverageMonitor` is a pipeline listener (:mod:`etl.events`). After each cycle of a named
job (a row of ``scheduled_jobs``; polling and backfill cycles are not named jobs) it

1. records the windows the cycle's providers said hold no data (a catch-up's history windows,
   :func:`etl.history.fetch_caught_up`) in the ledger's ``no_data_ranges``;
2. checks the job's series (its provider, symbols and bar interval) on the job's session over its
   :data:`RECENT_SESSION_DATES` latest session dates up to today (exchange dates: yesterday's and
   today's on a weekday), with :meth:`db.coverage.CoverageLedger.compute`. That is cheap: two dates a
   series, and a settled (complete) date is not counted again;
3. keeps the result: ``marketpoll_missing_bars{job}`` (:data:`etl.metrics.MISSING_BARS`) is set to
   the job's missing bars, and :meth:`CoverageMonitor.coverage_status` gives the worst series.

Bars are counted only once they have ended (the ledger's clock), so an open session is not "missing"
its forming bar. A failure to check is logged (warning) and leaves the previous result in place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from db.coverage import CoverageLedger, CoverageRow, session_dates
from db.jobs import JobDefinition
from errors import MarketpollError
from etl import metrics
from etl.events import LoadEvent
from models.run import CycleResult
from scheduler.calendar import Session

__all__ = ["CoverageMonitor", "RECENT_SESSION_DATES", "WORST_LIMIT"]

log = logging.getLogger(__name__)

#: Session dates checked after each named-job cycle: the latest ones up to today's.
RECENT_SESSION_DATES = 2
#: Series (one session date each) listed as the worst in ``/status``.
WORST_LIMIT = 10
#: How far back the latest session dates are looked for (a long holiday run fits).
_LOOKBACK = timedelta(days=14)


class CoverageMonitor:
    """Checks each named job's recent coverage after its cycles; thread-safe (jobs run in parallel).

    ``ledger()`` and ``jobs()`` are factories (the wiring opens the database lazily): the coverage
    ledger, and the named jobs now defined (``JobStore.all``).
    """

    def __init__(self, ledger: Callable[[], CoverageLedger], jobs: Callable[[], Sequence[JobDefinition]]) -> None:
        self._ledger_factory = ledger
        self._ledger: CoverageLedger | None = None
        self._jobs = jobs
        self._lock = threading.Lock()
        self._rows: dict[str, list[CoverageRow]] = {}  # job -> its series' rows on the recent dates
        self._checked: dict[str, datetime] = {}

    @property
    def ledger(self) -> CoverageLedger:
        if self._ledger is None:
            self._ledger = self._ledger_factory()
        return self._ledger

    # -- listener ------------------------------------------------------------------------------

    def on_load(self, event: LoadEvent) -> None:
        pass

    def on_cycle(self, cycle: CycleResult) -> None:
        try:
            job = next((j for j in self._jobs() if j.name == cycle.job_name), None)
            if job is None or job.provider != cycle.provider or job.bar_interval != cycle.interval:
                return  # not a named job's cycle (polling, backfill, or the job was changed meanwhile)
            self._record_no_data(cycle)
            self.check(job)
        except MarketpollError as exc:
            log.warning("coverage of job %s not checked: %s", cycle.job_name, exc)

    # -- the check ---------------------------------------------------------------------------

    def check(self, job: JobDefinition) -> list[CoverageRow]:
        """Compute ``job``'s coverage on its recent session dates, keep it and set its gauge; the rows.

        Raises :class:`~errors.ConfigError` (bad exchange or interval) and
        :class:`~errors.LoadError` (database) from the ledger.
        """
        ledger = self.ledger
        cal = ledger.calendars.get(job.exchange)
        now = ledger.clock.now()
        today = now.astimezone(cal.tz).date()
        days = session_dates(cal, today - _LOOKBACK, today)[-RECENT_SESSION_DATES:]
        rows: list[CoverageRow] = []
        if days:
            rows = ledger.compute(job.provider, list(job.symbols), job.bar_interval, days[0], days[-1],
                                  exchange=job.exchange, sessions=frozenset({Session(job.session)}))  # fmt: skip
        missing = sum(r.missing for r in rows)
        with self._lock:
            self._rows[job.name] = rows
            self._checked[job.name] = now
        metrics.MISSING_BARS.labels(job.name).set(missing)
        if missing:
            log.info("job %s: %d bar(s) missing over %s..%s", job.name, missing, days[0], days[-1])
        return rows

    def _record_no_data(self, cycle: CycleResult) -> None:
        for out in cycle.outcomes:
            for lo, hi in out.no_data:
                if hi > lo:
                    self.ledger.record_no_data(out.served_by or cycle.provider, out.symbol, cycle.interval, lo, hi)

    # -- what /status and /metrics show --------------------------------------------------------

    def coverage_status(self) -> dict:
        """``{"coverage": {"missing_by_job": {job: bars}, "checked_at": {job: UTC ISO 8601}, "worst": [row, ...]}}``.

        ``worst``: up to :data:`WORST_LIMIT` series-dates with missing bars, most missing first (ties:
        latest date), each :meth:`~db.coverage.CoverageRow.as_dict` plus its ``job``. Only what the
        last checks found (memory, no database access): empty before a named job has run.
        """
        with self._lock:
            items = [(job, r) for job, rows in self._rows.items() for r in rows if r.missing > 0]
            missing = {job: sum(r.missing for r in rows) for job, rows in sorted(self._rows.items())}
            checked = {job: at.isoformat() for job, at in sorted(self._checked.items())}
        items.sort(key=lambda jr: (-jr[1].missing, -jr[1].session_date.toordinal(), jr[0], jr[1].symbol))
        worst = [{"job": job, **r.as_dict()} for job, r in items[:WORST_LIMIT]]
        return {"coverage": {"missing_by_job": missing, "checked_at": checked, "worst": worst}}
