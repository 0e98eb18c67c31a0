"""One Extract-Transform-Load cycle over a list of symbols.

Symbols are fetched on a bounded thread pool (``workers``); each fetched batch is
validated on its worker thread, and the calling thread loads batches as they arrive,
every batch that has arrived since the last write in one group transaction (see
:meth:`etl.load.BarLoader.load_many`): a symbol's bars land all or none, and at most
``workers`` fetched batches wait in memory.

A symbol's failure (invalid symbol, throttled past its retry budget, malformed payload,
a failed load) is recorded and the other symbols go on; rows already loaded are never
touched by a later failure. Bounded everywhere:

- each symbol has one :class:`~etl.retry.RetryBudget` per cycle (``retry_attempts``
  requests, ``retry_budget_seconds`` of waits), shared by the provider's retries and the
  cycle's extra passes;
- when a load fails because the database is unreachable, no further fetch starts: the
  symbols not yet fetched are reported as not attempted, instead of being fetched for nothing;
- a cycle that runs longer than :data:`PROGRESS_EVERY_SECONDS` logs its progress.

The ledger (``etl_runs``) is honest at every instant: the row is written at the start,
each load transaction adds its own counts to it as it commits, and the final status is
written at the end. A cycle that cannot be recorded (database down) is kept by the
ledger and recorded when the database returns. Rejected records go to ``rejected_bars``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from clock import Clock, SystemClock
from db.actions import ActionStore
from db.engine import translate_db_errors
from db.ledger import RunLedger
from db.preference import record_preference
from db.queries import watermarks
from db.rejects import RejectStore
from errors import ConfigError, LoadError, MarketpollError, QuotaExhausted
from etl.events import LoadEvent, MetricsListener, PipelineListener
from etl.history import fetch_caught_up
from etl.load import BarLoader, Credit
from etl.providers.base import Provider
from etl.retry import RetryBudget, human_seconds, retry_budget
from etl.transform import Rejection, validate_bars
from models.bar import Bar
from models.run import CycleResult, SymbolOutcome

__all__ = ["EtlPipeline", "PROGRESS_EVERY_SECONDS"]

log = logging.getLogger(__name__)

#: A cycle still running after this many seconds logs its progress, and again as often.
PROGRESS_EVERY_SECONDS = 5.0

_Fetched = tuple[SymbolOutcome, list[Bar], list[Rejection]]


@dataclass(slots=True)
class _CycleState:
    """What one cycle knows while it runs (several cycles may share a pipeline: named jobs run in parallel)."""

    job: str
    run_id: int | None = None
    paused: bool = False  # the provider is paused on its daily quota: the fallback serves every symbol
    db_down: bool = False  # a load found the database unreachable: no new fetch starts
    window: tuple[datetime, datetime] | None = None  # a history window (backfill) instead of the latest bars


class EtlPipeline:
    """Runs cycles: ``provider`` → :func:`~etl.transform.validate_bars` → ``loader``, recorded by ``ledger``.

    - ``workers``: fetch threads (>= 1).
    - ``retry_attempts`` / ``retry_budget_seconds``: each symbol's retry budget per cycle
      (requests, and seconds of retry waits).
    - ``redact`` cleans every error text before it is logged or stored.
    - ``stop`` (an Event, set by a signal): start no new symbol; batches already fetched
      are still loaded, fetches still running after ``shutdown_timeout_seconds`` are
      abandoned, and the cycle is recorded as ``interrupted`` if any symbol was left undone.
    - ``retry_passes`` / ``batch_size``: defaults of :meth:`run_cycle`, so polling, named jobs
      and backfill run their cycles the same way.
    - ``fallback``: a second provider for the symbols ``provider`` fails terminally (an unknown
      symbol, a malformed reply) or cannot serve while paused on its daily quota; its rows
      land under its own name, and the cycle records which provider served which symbol.
    - ``listeners``: told of each committed load (per series) and each cycle
      (:mod:`etl.events`); metrics is always the first.
    """

    def __init__(
        self,
        provider: Provider,
        loader: BarLoader,
        ledger: RunLedger,
        *,
        clock: Clock | None = None,
        redact: Callable[[str], str] = lambda s: s,
        stop: threading.Event | None = None,
        workers: int = 1,
        shutdown_timeout_seconds: float = 30.0,
        retry_attempts: int = 4,
        retry_budget_seconds: float = 60.0,
        retry_passes: int = 0,
        batch_size: int = 10,
        rejects: RejectStore | None = None,
        fallback: Provider | None = None,
        listeners: Sequence[PipelineListener] = (),
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}", name="workers", value=workers)
        if retry_attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {retry_attempts}", name="retry_attempts", value=retry_attempts)
        self.provider = provider
        self.loader = loader
        self.ledger = ledger
        self.clock = clock or SystemClock()
        self.redact = redact
        self.stop = stop or threading.Event()
        self.workers = workers
        self.shutdown_timeout_seconds = shutdown_timeout_seconds
        self.retry_attempts = retry_attempts
        self.retry_budget_seconds = retry_budget_seconds
        self.rejects = rejects if rejects is not None else RejectStore(ledger.engine)
        self.actions = ActionStore(ledger.engine)
        self.retry_passes = retry_passes
        self.batch_size = batch_size
        self.fallback = fallback
        self.listeners: list[PipelineListener] = [MetricsListener(), *listeners]

    def run_cycle(
        self, symbols: Sequence[str], interval: str, *, job_name: str, retry_passes: int | None = None,
        batch_size: int | None = None, window: tuple[datetime, datetime] | None = None,
        scheduled_for: datetime | None = None,
    ) -> CycleResult | None:  # fmt: skip
        """Fetch, validate and load every symbol. Never raises for a symbol's failure.

        ``scheduled_for`` (a named job's fire time, UTC): the cycle first claims that slot in
        ``etl_runs`` (see :meth:`db.ledger.RunLedger.start`); if another process or node holds it,
        nothing runs and None is returned.

        After the first pass, symbols that failed with a transient error (throttled, a
        timeout, a dropped database connection) get up to ``retry_passes`` more passes, as far
        as their retry budget allows. At most ``batch_size`` symbols are written per load
        transaction. With ``window`` (UTC start, end exclusive) the cycle fetches that history
        window (:meth:`~etl.providers.base.Provider.fetch_range`) instead of the latest bars: a
        backfill chunk runs the same route. If the ledger row cannot be written (database down) the cycle is
        ``failed`` with ``error`` set, nothing is fetched, and the ledger keeps the cycle to
        record it when the database returns.
        """
        retry_passes = self.retry_passes if retry_passes is None else retry_passes
        batch_size = self.batch_size if batch_size is None else batch_size
        t0 = time.monotonic()
        cycle = CycleResult(job_name=job_name, provider=self.provider.name, started_at=self.clock.now(),
                            interval=interval, symbols_requested=len(symbols))  # fmt: skip
        try:
            if self.ledger.start(cycle, interval=interval, symbols_requested=len(symbols), scheduled_for=scheduled_for) is None:
                log.debug("job %s: slot %s already claimed elsewhere: skipped", job_name, scheduled_for)
                return None
        except LoadError as exc:
            cycle.error = self.redact(f"database unavailable, nothing fetched: {exc}")
            cycle.settle(self.clock.now())
            self.ledger.defer(cycle)
            log.error("cycle %s: %s (kept to be recorded when the database returns)", job_name, cycle.error)
            self._tell_cycle(cycle)
            return cycle
        cycle.outcomes, cycle.error = self.run_symbols(symbols, interval, run_id=cycle.run_id, job_name=job_name,
                                                       retry_passes=retry_passes, batch_size=batch_size, window=window,
                                                       t0=t0)  # fmt: skip
        cycle.settle(self.clock.now(), interrupted=self.stop.is_set())
        try:
            self.ledger.finish(cycle)
        except LoadError as exc:
            self.ledger.defer(cycle)
            log.error("cycle %s: could not record its end (%s); kept to be recorded when the database returns",
                      job_name, self.redact(str(exc)))  # fmt: skip
        self.report_cycle(cycle, time.monotonic() - t0)
        return cycle

    def run_symbols(
        self, symbols: Sequence[str], interval: str, *, run_id: int | None, job_name: str, retry_passes: int | None = None,
        batch_size: int | None = None, window: tuple[datetime, datetime] | None = None, t0: float | None = None,
    ) -> tuple[list[SymbolOutcome], str | None]:  # fmt: skip
        """The body of a cycle whose ``etl_runs`` row (``run_id``) exists: fetch, validate and load
        ``symbols`` with the retry passes; each load credits the row. Returns the outcomes in
        ``symbols`` order (a symbol left undone by a shutdown has none) and a cycle-wide error (the
        provider is paused on its daily quota) or None. A clustered cycle's chunk runs this on a worker.
        """
        retry_passes = self.retry_passes if retry_passes is None else retry_passes
        batch_size = self.batch_size if batch_size is None else batch_size
        t0 = time.monotonic() if t0 is None else t0
        error = None
        paused_until = self.provider.budget.exhausted_until() if self.provider.budget else None
        todo = list(symbols)
        st = _CycleState(job_name, run_id=run_id, paused=paused_until is not None and self.fallback is not None,
                         window=window)  # fmt: skip
        if paused_until is not None and self.fallback is None:  # no request at all until the quota resets
            error = f"{self.provider.name} paused: daily quota used up until {paused_until.isoformat()}"
            todo = []
        if self.fallback is not None:
            try:
                record_preference(self.ledger.engine, self.provider.name, self.fallback.name, todo, interval)
            except LoadError as exc:
                log.warning("could not record %s as the preferred provider: %s", self.provider.name, exc)
        since = self._watermarks(todo, interval) if todo and window is None else {}
        budgets = {s: RetryBudget(self.retry_attempts, self.retry_budget_seconds) for s in todo}
        done: dict[str, SymbolOutcome] = {}
        progress = _Progress(job_name, len(todo), t0)
        for attempt in range(1 + retry_passes):
            if attempt:
                todo = [s for s in todo if s in done and not done[s].ok and done[s].retry_in_cycle and budgets[s].attempts > 0]
                if not todo or self.stop.is_set() or st.db_down:
                    break
                log.info("%s: another pass for %d symbol(s) with transient errors", job_name, len(todo))
            for outcome in self._process(todo, interval, batch_size, since, budgets, st):
                done[outcome.symbol] = outcome
                progress.tick(outcome, final=attempt == 0)
        return [done[s] for s in symbols if s in done], error

    def report_cycle(self, cycle: CycleResult, duration_seconds: float) -> None:
        """Tell the listeners (metrics first) of a settled cycle and log its one INFO line."""
        self._tell_cycle(cycle)
        rejected = f" ({cycle.rows_rejected} rejected: see rejected_bars)" if cycle.rows_rejected else ""
        fallback = [f"{o.symbol}={o.served_by}" for o in cycle.outcomes if o.served_by]
        rejected += f" (served by the fallback: {' '.join(fallback)})" if fallback else ""
        log.info(
            "cycle job=%s provider=%s interval=%s symbols=%d ok=%d failed=%d rows fetched=%d loaded=%d rejected=%d"
            " status=%s duration=%.3fs%s",
            cycle.job_name, cycle.provider, cycle.interval, cycle.symbols_requested, len(cycle.outcomes) - len(cycle.failed),
            len(cycle.failed), cycle.rows_fetched, cycle.rows_loaded, cycle.rows_rejected, cycle.status.value,
            duration_seconds, rejected,
        )  # fmt: skip

    def _process(
        self, symbols: Sequence[str], interval: str, batch_size: int, since: dict[str, datetime],
        budgets: dict[str, RetryBudget], st: _CycleState,
    ) -> Iterator[SymbolOutcome]:  # fmt: skip
        """Fetch on the pool, load on this thread as batches arrive; yields each symbol's outcome.

        After ``stop`` is set, or once the database is found unreachable, no new fetch starts;
        fetches still running when the shutdown deadline passes are abandoned (their bars are
        never loaded) and reported as interrupted.
        """
        pending = iter(symbols)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fetch")
        in_flight: dict[Future, str] = {}
        deadline: float | None = None
        try:

            def refill() -> None:
                while len(in_flight) < self.workers and not self.stop.is_set() and not st.db_down:
                    symbol = next(pending, None)
                    if symbol is None:
                        return
                    fut = pool.submit(self._extract, symbol, interval, since.get(symbol), budgets[symbol], st)
                    in_flight[fut] = symbol

            refill()
            while in_flight:
                if self.stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self.shutdown_timeout_seconds
                    log.warning("shutdown: waiting up to %s for %d fetch(es) in flight",
                                human_seconds(self.shutdown_timeout_seconds), len(in_flight))  # fmt: skip
                finished, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                if not finished:
                    if deadline is not None and time.monotonic() >= deadline:
                        for fut in in_flight:
                            fut.cancel()
                            yield SymbolOutcome(in_flight[fut], error="interrupted by shutdown before its fetch finished "
                                                "(nothing loaded)", transient=True, interrupted=True)  # fmt: skip
                        in_flight.clear()
                    continue
                for fut in finished:
                    del in_flight[fut]
                refill()  # keep fetching while this thread writes
                arrived = [f.result() for f in finished]
                self._record_rejections(arrived, interval, st.run_id)
                loadable = [(o, b) for o, b, _ in arrived if o.ok and b]
                for i in range(0, len(loadable), batch_size):
                    yield from self._load(loadable[i : i + batch_size], st)
                yield from (o for o, b, _ in arrived if not (o.ok and b))
            if st.db_down:
                for symbol in pending:
                    yield SymbolOutcome(symbol, error="not fetched: the database became unreachable during the cycle",
                                        transient=True)  # fmt: skip
        finally:
            # never wait here for a fetch stuck in a slow HTTP read: it is abandoned
            pool.shutdown(wait=deadline is None, cancel_futures=True)

    def _extract(self, symbol: str, interval: str, since: datetime | None, budget: RetryBudget, st: _CycleState) -> _Fetched:
        """Fetch and validate one symbol (runs on a worker thread), within its retry budget; the
        fallback provider (if any) serves a symbol the provider fails terminally or cannot serve."""
        out = SymbolOutcome(symbol)
        try:
            with retry_budget(budget):
                if st.paused:
                    raise QuotaExhausted(f"{self.provider.name} paused on its daily quota", provider=self.provider.name,
                                         symbol=symbol)  # fmt: skip
                if st.window is not None:
                    fetched = self.provider.fetch_range(symbol, interval, *st.window)
                else:
                    # a watermark beyond one ordinary request: the hole is fetched as a window first
                    fetched = fetch_caught_up(self.provider, symbol, interval, since, self.clock.now(),
                                              window_budget=self._window_budget)  # fmt: skip
        except MarketpollError as exc:
            if self.fallback is not None and (not exc.transient or isinstance(exc, QuotaExhausted)):
                return self._extract_fallback(symbol, interval, budget, st, reason=self.redact(str(exc)))
            out.error, out.transient = self.redact(str(exc)), exc.transient
            hint = getattr(exc, "retry_after_seconds", None)
            out.retry_in_cycle = exc.transient and budget.fits(hint or 0.0)
            if exc.transient and not out.retry_in_cycle:
                out.error += " (deferred to the next cycle: its retry budget for this cycle is spent)"
            log.warning("%s: %s", symbol, out.error)
            return out, [], []
        return self._validated(out, fetched)

    def _extract_fallback(self, symbol: str, interval: str, budget: RetryBudget, st: _CycleState, *, reason: str) -> _Fetched:
        out = SymbolOutcome(symbol, served_by=self.fallback.name)
        log.info("%s: %s failed (%s); asking the fallback %s", symbol, self.provider.name, reason, self.fallback.name)
        try:
            with retry_budget(RetryBudget(max(1, budget.attempts), budget.wait_seconds)):
                if st.window is not None:
                    fetched = self.fallback.fetch_range(symbol, interval, *st.window)
                else:
                    fetched = self.fallback.fetch_bars(symbol, interval)
        except MarketpollError as exc:
            out.error, out.transient = self.redact(f"{reason}; fallback {self.fallback.name}: {exc}"), exc.transient
            out.retry_in_cycle = False
            log.warning("%s: %s", symbol, out.error)
            return out, [], []
        return self._validated(out, fetched)

    def _validated(self, out: SymbolOutcome, fetched) -> _Fetched:
        symbol = out.symbol
        if fetched.actions:
            try:
                self.actions.record(fetched.actions, seen_at=self.clock.now())
            except (LoadError, ValueError) as exc:
                log.warning("%s: could not record %d corporate action(s): %s", symbol, len(fetched.actions), exc)
        good, rejected = validate_bars(fetched.bars, now=self.clock.now())
        rejected = fetched.rejected + rejected
        out.rows_fetched = len(fetched.bars) + len(fetched.rejected)
        out.rows_rejected = len(rejected)
        out.newest_ts = good[-1].ts if good else None
        out.no_data = list(fetched.no_data)
        if rejected:
            r = rejected[0]
            log.warning("%s: rejected %d of %d bars, e.g. %s: %s", symbol, len(rejected), out.rows_fetched, r.key, r.reason)
        return out, good, rejected

    def _record_rejections(self, arrived: list[_Fetched], interval: str, run_id: int | None) -> None:
        """Write the arrived symbols' rejections to ``rejected_bars`` (a failure there is logged, never fatal)."""
        for out, _, rejected in arrived:
            if not rejected:
                continue
            try:
                self.rejects.record(rejected, provider=out.served_by or self.provider.name, interval=interval,
                                    seen_at=self.clock.now(), run_id=run_id)  # fmt: skip
            except LoadError as exc:
                log.warning("%s: could not record %d rejected bar(s) in rejected_bars: %s", out.symbol, len(rejected),
                            self.redact(str(exc)))  # fmt: skip

    def _window_budget(self) -> RetryBudget:
        """A fresh retry budget for one history window of a catch-up (as a backfill chunk's cycle has)."""
        return RetryBudget(self.retry_attempts, self.retry_budget_seconds)

    def _watermarks(self, symbols: Sequence[str], interval: str) -> dict[str, datetime]:
        """Each symbol's newest stored bar start (UTC): where an interrupted or late cycle resumes from."""
        try:
            return watermarks(self.ledger.engine, self.provider.name, interval, symbols)
        except LoadError as exc:  # not fatal: the provider then fetches its default window
            log.warning("could not read watermarks: %s", exc)
            return {}

    def _database_reachable(self) -> bool:
        try:
            with translate_db_errors("probing the database"), self.ledger.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except LoadError:
            return False

    def _load(self, ready: list[tuple[SymbolOutcome, list[Bar]]], st: _CycleState) -> list[SymbolOutcome]:
        run_id = st.run_id
        if not ready:
            return []
        credits = [Credit(run_id, o.rows_fetched, o.rows_rejected) if run_id is not None else None for o, _ in ready]
        results = self.loader.load_many([bars for _, bars in ready], credits=credits)
        for (out, _), result in zip(ready, results, strict=True):
            if isinstance(result, LoadError):
                out.error, out.transient = self.redact(str(result)), result.transient
                out.retry_in_cycle = result.transient
                log.warning("%s: %s", out.symbol, out.error)
            else:
                out.rows_loaded = result
        for (out, bars), result in zip(ready, results, strict=True):
            if not isinstance(result, LoadError) and result > 0:
                self._tell_load(LoadEvent(bars[-1].provider, out.symbol, bars[-1].interval, bars[-1], result, st.job))
        if any(isinstance(r, LoadError) and r.transient for r in results) and not st.db_down:
            if not self._database_reachable():
                st.db_down = True
                log.error("the database is unreachable: no further fetch starts in this cycle")
        return [out for out, _ in ready]

    def _tell_load(self, event: LoadEvent) -> None:
        for listener in self.listeners:
            try:
                listener.on_load(event)
            except Exception:  # noqa: BLE001 - a listener never breaks loading
                log.exception("listener %r failed on a load event", listener)

    def _tell_cycle(self, cycle: CycleResult) -> None:
        for listener in self.listeners:
            try:
                listener.on_cycle(cycle)
            except Exception:  # noqa: BLE001 - a listener never breaks loading
                log.exception("listener %r failed on a cycle", listener)


class _Progress:
    """Logs a long cycle's progress about every :data:`PROGRESS_EVERY_SECONDS` (symbols done/total, rows)."""

    def __init__(self, job: str, total: int, t0: float) -> None:
        self.job, self.total, self.t0 = job, total, t0
        self.done = self.loaded = self.failed = 0
        self.next_at = t0 + PROGRESS_EVERY_SECONDS

    def tick(self, outcome: SymbolOutcome, *, final: bool) -> None:
        if final:
            self.done += 1
            self.loaded += outcome.rows_loaded
            self.failed += 0 if outcome.ok else 1
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + PROGRESS_EVERY_SECONDS
            log.info("cycle %s: %d/%d symbols done, %d rows loaded, %d failed, %s elapsed", self.job, self.done, self.total,
                     self.loaded, self.failed, human_seconds(now - self.t0))  # fmt: skip
