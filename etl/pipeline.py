"""One Extract-Transform-Load cycle over a list of symbols.

Symbols are fetched on a bounded thread pool (``workers``); each fetched batch is
validated on its worker thread, and the calling thread loads batches as they arrive,
every batch that has arrived since the last write in one group transaction (see
:meth:`etl.load.BarLoader.load_many`): a symbol's bars land all or none, and at most
``workers`` fetched batches wait in memory.

A symbol's failure (invalid symbol, throttled past the provider's retries, malformed
payload, a failed load) is recorded and the other symbols go on; rows already loaded are
never touched by a later failure. The cycle's ``etl_runs`` row is written at the start
(``running``) and at the end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime

from clock import Clock, SystemClock
from db.ledger import RunLedger
from db.queries import watermarks
from errors import ConfigError, LoadError, MarketpollError
from etl import metrics
from etl.load import BarLoader
from etl.providers.base import Provider
from etl.transform import validate_bars
from models.bar import Bar
from models.run import CycleResult, SymbolOutcome

__all__ = ["EtlPipeline", "RETRY_IN_CYCLE_MAX_WAIT_SECONDS"]

log = logging.getLogger(__name__)

#: A transient failure whose retry hint is longer than this (seconds; a daily quota) waits for a later cycle.
RETRY_IN_CYCLE_MAX_WAIT_SECONDS = 60.0


class EtlPipeline:
    """Runs cycles: ``provider`` → :func:`~etl.transform.validate_bars` → ``loader``, recorded by ``ledger``.

    - ``workers``: fetch threads (>= 1).
    - ``redact`` cleans every error text before it is logged or stored.
    - ``stop`` (an Event, set by a signal): start no new symbol; batches already fetched
      are still loaded, fetches still running after ``shutdown_timeout_seconds`` are
      abandoned, and the cycle is recorded as ``interrupted``.
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
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}", name="workers", value=workers)
        self.provider = provider
        self.loader = loader
        self.ledger = ledger
        self.clock = clock or SystemClock()
        self.redact = redact
        self.stop = stop or threading.Event()
        self.workers = workers
        self.shutdown_timeout_seconds = shutdown_timeout_seconds

    def run_cycle(
        self, symbols: Sequence[str], interval: str, *, job_name: str, retry_passes: int = 0, batch_size: int = 10
    ) -> CycleResult:
        """Fetch, validate and load every symbol. Never raises for a symbol's failure.

        After the first pass, symbols that failed with a transient error (throttled past the
        provider's own retries, a timeout, a dropped database connection) get up to
        ``retry_passes`` more passes. At most ``batch_size`` symbols are written per load
        transaction. If the ledger row cannot be written (database down)
        the cycle is ``failed`` with ``error`` set and nothing is fetched.
        """
        t0 = time.monotonic()
        cycle = CycleResult(job_name=job_name, provider=self.provider.name, started_at=self.clock.now())
        try:
            self.ledger.start(cycle, interval=interval, symbols_requested=len(symbols))
        except LoadError as exc:
            cycle.error = self.redact(str(exc))
            cycle.settle(self.clock.now())
            log.error("cycle %s: database unavailable, nothing fetched: %s", job_name, cycle.error)
            return cycle
        paused_until = self.provider.budget.exhausted_until() if self.provider.budget else None
        todo = list(symbols)
        if paused_until is not None:  # no request at all until the quota resets (logged once, by the budget)
            cycle.error = f"{self.provider.name} paused: daily quota used up until {paused_until.isoformat()}"
            todo = []
        since = self._watermarks(todo, interval) if todo else {}
        done: dict[str, SymbolOutcome] = {}
        for attempt in range(1 + retry_passes):
            if attempt:
                todo = [s for s in todo if s in done and done[s].retry_in_cycle and not done[s].ok]
                if not todo or self.stop.is_set():
                    break
                log.info("%s: another pass for %d symbol(s) with transient errors", job_name, len(todo))
            for outcome in self._process(todo, interval, batch_size, since):
                done[outcome.symbol] = outcome
        cycle.outcomes = [done[s] for s in symbols if s in done]
        cycle.settle(self.clock.now(), interrupted=self.stop.is_set())
        try:
            self.ledger.finish(cycle)
        except LoadError as exc:
            cycle.error = self.redact(f"could not record the cycle: {exc}")
            log.error("cycle %s: %s", job_name, cycle.error)
        metrics.observe_cycle(cycle)
        log.info(
            "cycle job=%s provider=%s interval=%s symbols=%d ok=%d failed=%d rows fetched=%d loaded=%d rejected=%d"
            " status=%s duration=%.3fs",
            job_name, self.provider.name, interval, len(symbols), len(cycle.outcomes) - len(cycle.failed),
            len(cycle.failed), cycle.rows_fetched, cycle.rows_loaded, cycle.rows_rejected, cycle.status.value,
            time.monotonic() - t0,
        )  # fmt: skip
        return cycle

    def _process(
        self, symbols: Sequence[str], interval: str, batch_size: int, since: dict[str, datetime]
    ) -> Iterator[SymbolOutcome]:
        """Fetch on the pool, load on this thread as batches arrive; yields each symbol's outcome.

        After ``stop`` is set no new fetch starts; fetches still running when the shutdown
        deadline passes are abandoned (their bars are never loaded) and reported as interrupted.
        """
        pending = iter(symbols)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fetch")
        in_flight: dict[Future, str] = {}
        deadline: float | None = None
        try:

            def refill() -> None:
                while len(in_flight) < self.workers and not self.stop.is_set():
                    symbol = next(pending, None)
                    if symbol is None:
                        return
                    in_flight[pool.submit(self._extract, symbol, interval, since.get(symbol))] = symbol

            refill()
            while in_flight:
                if self.stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self.shutdown_timeout_seconds
                    log.warning(
                        "shutdown: waiting up to %.0fs for %d fetch(es) in flight", self.shutdown_timeout_seconds, len(in_flight)
                    )
                finished, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                if not finished:
                    if deadline is not None and time.monotonic() >= deadline:
                        for fut, symbol in in_flight.items():
                            fut.cancel()
                            yield SymbolOutcome(
                                symbol, error="interrupted by shutdown before its fetch finished (nothing loaded)", transient=True
                            )
                        in_flight.clear()
                    continue
                for fut in finished:
                    del in_flight[fut]
                refill()  # keep fetching while this thread writes
                arrived = [f.result() for f in finished]
                loadable = [(o, b) for o, b in arrived if o.ok and b]
                for i in range(0, len(loadable), batch_size):
                    yield from self._load(loadable[i : i + batch_size])
                yield from (o for o, b in arrived if not (o.ok and b))
        finally:
            # never wait here for a fetch stuck in a slow HTTP read: it is abandoned
            pool.shutdown(wait=deadline is None, cancel_futures=True)

    def _extract(self, symbol: str, interval: str, since: datetime | None) -> tuple[SymbolOutcome, list[Bar]]:
        """Fetch and validate one symbol (runs on a worker thread)."""
        out = SymbolOutcome(symbol)
        try:
            fetched = self.provider.fetch_bars(symbol, interval, since=since)
        except MarketpollError as exc:
            out.error, out.transient = self.redact(str(exc)), exc.transient
            wait = getattr(exc, "retry_after_seconds", None)
            out.retry_in_cycle = exc.transient and (wait is None or wait <= RETRY_IN_CYCLE_MAX_WAIT_SECONDS)
            log.warning("%s: %s", symbol, out.error)
            return out, []
        good, rejected = validate_bars(fetched.bars)
        rejected = fetched.rejected + rejected
        out.rows_fetched = len(fetched.bars) + len(fetched.rejected)
        out.rows_rejected = len(rejected)
        out.newest_ts = good[-1].ts if good else None
        if rejected:
            r = rejected[0]
            log.warning("%s: rejected %d of %d bars, e.g. %s: %s", symbol, len(rejected), out.rows_fetched, r.key, r.reason)
        return out, good

    def _watermarks(self, symbols: Sequence[str], interval: str) -> dict[str, datetime]:
        """Each symbol's newest stored bar start (UTC): where an interrupted or late cycle resumes from."""
        try:
            return watermarks(self.ledger.engine, self.provider.name, interval, symbols)
        except LoadError as exc:  # not fatal: the provider then fetches its default window
            log.warning("could not read watermarks: %s", exc)
            return {}

    def _load(self, ready: list[tuple[SymbolOutcome, list[Bar]]]) -> list[SymbolOutcome]:
        if not ready:
            return []
        for (out, _), result in zip(ready, self.loader.load_many([bars for _, bars in ready]), strict=True):
            if isinstance(result, LoadError):
                out.error, out.transient = self.redact(str(result)), result.transient
                out.retry_in_cycle = result.transient
                log.warning("%s: %s", out.symbol, out.error)
            else:
                out.rows_loaded = result
        return [out for out, _ in ready]
