"""One Extract-Transform-Load cycle over a list of symbols.

For each symbol: fetch (the provider retries transient errors), validate, load in
its own transaction. A symbol's failure (invalid symbol, throttled past the retry
budget, malformed payload, a failed load) is recorded and the other symbols go on;
rows already loaded are never touched by a later failure. The cycle's ``etl_runs``
row is written at the start (``running``) and at the end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from clock import Clock, SystemClock
from db.ledger import RunLedger
from errors import LoadError, MarketpollError
from etl.load import BarLoader
from etl.providers.base import Provider
from etl.transform import validate_bars
from models.run import CycleResult, SymbolOutcome

__all__ = ["EtlPipeline"]

log = logging.getLogger(__name__)


class EtlPipeline:
    """Runs cycles: ``provider`` → :func:`~etl.transform.validate_bars` → ``loader``, recorded by ``ledger``.

    ``redact`` cleans every error text before it is logged or stored.
    ``stop`` (an Event) makes a running cycle start no new symbol; the cycle is then marked ``interrupted``.
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
    ) -> None:
        self.provider = provider
        self.loader = loader
        self.ledger = ledger
        self.clock = clock or SystemClock()
        self.redact = redact
        self.stop = stop or threading.Event()

    def run_cycle(self, symbols: Sequence[str], interval: str, *, job_name: str, retry_passes: int = 0) -> CycleResult:
        """Fetch, validate and load every symbol. Never raises for a symbol's failure.

        After the first pass, symbols that failed with a transient error (throttled past
        the provider's own retries, a timeout) get up to ``retry_passes`` more passes.

        If the ledger row cannot be written (database down) the cycle is ``failed`` with
        ``error`` set and nothing is fetched.
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
        for symbol in symbols:
            if self.stop.is_set():
                break
            cycle.outcomes.append(self._one(symbol, interval))
        for _ in range(retry_passes):
            again = [i for i, o in enumerate(cycle.outcomes) if o.transient and not o.ok]
            if not again or self.stop.is_set():
                break
            log.info("%s: another pass for %d symbol(s) with transient errors", job_name, len(again))
            for i in again:
                if self.stop.is_set():
                    break
                cycle.outcomes[i] = self._one(cycle.outcomes[i].symbol, interval)
        cycle.settle(self.clock.now(), interrupted=self.stop.is_set())
        try:
            self.ledger.finish(cycle)
        except LoadError as exc:
            cycle.error = self.redact(f"could not record the cycle: {exc}")
            log.error("cycle %s: %s", job_name, cycle.error)
        log.info(
            "cycle job=%s provider=%s interval=%s symbols=%d ok=%d failed=%d rows fetched=%d loaded=%d rejected=%d"
            " status=%s duration=%.3fs",
            job_name,
            self.provider.name,
            interval,
            len(symbols),
            len(cycle.outcomes) - len(cycle.failed),
            len(cycle.failed),
            cycle.rows_fetched,
            cycle.rows_loaded,
            cycle.rows_rejected,
            cycle.status.value,
            time.monotonic() - t0,
        )
        return cycle

    def _one(self, symbol: str, interval: str) -> SymbolOutcome:
        out = SymbolOutcome(symbol)
        try:
            fetched = self.provider.fetch_bars(symbol, interval)
            good, rejected = validate_bars(fetched.bars)
            rejected = fetched.rejected + rejected
            out.rows_fetched = len(fetched.bars) + len(fetched.rejected)
            out.rows_rejected = len(rejected)
            if rejected:
                log.warning(
                    "%s: rejected %d of %d bars, e.g. %s: %s",
                    symbol,
                    len(rejected),
                    out.rows_fetched,
                    rejected[0].key,
                    rejected[0].reason,
                )
            out.rows_loaded = self.loader.load(good)
            out.newest_ts = good[-1].ts if good else None
        except MarketpollError as exc:
            out.error = self.redact(str(exc))
            out.transient = exc.transient
            log.warning("%s: %s", symbol, out.error)
        return out
