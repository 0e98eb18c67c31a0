"""Polling: run ETL cycles repeatedly, the wait between them chosen by a strategy.

:class:`PollingManager` owns the loop, the clock and all I/O; the strategies in
:mod:`scheduler.strategies` only decide when the next poll is due. The loop sleeps on
the ``stop`` event (a signal wakes it at once), in slices of at most
:data:`MAX_SLEEP_SECONDS` after which it re-asks the strategy, so a wall-clock jump
(NTP, a suspended VM) cannot make it oversleep an open.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from clock import Clock, SystemClock
from errors import ConfigError
from etl.pipeline import EtlPipeline
from etl.retry import human_seconds
from models.bar import INTERVALS
from models.run import CycleResult, PollingResults
from scheduler.calendar import Calendars, Session
from scheduler.strategies import AdaptiveStrategy, ContinuousStrategy, MarketHoursStrategy, PollingStrategy

__all__ = ["PollingConfig", "PollingManager", "MAX_SLEEP_SECONDS"]

log = logging.getLogger(__name__)

#: Longest single sleep, in seconds, before the loop re-evaluates the next poll time.
MAX_SLEEP_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class PollingConfig:
    """What to poll and how often (the seed's PollingConfig, plus exchange and sessions).

    - ``interval_minutes``: minutes between poll starts (fractions allowed, > 0); the
      adaptive strategy's starting interval.
    - ``max_iterations``: cycles to run, None = until stopped.
    - ``symbols``: tickers; ``interval``: bar interval (a key of :data:`models.INTERVALS`).
    - ``batch_size``: at most this many symbols' batches are written per load transaction.
    - ``retry_on_failure`` / ``max_retries``: after a cycle's first pass, symbols that
      failed with a transient error (throttle, timeout) get up to ``max_retries`` more passes.
    - ``exchange``: calendar code (XNYS, XNAS, XWAR, XNSE, 24/7, or any library code);
      ``sessions``: which of pre / regular / post to poll in (market-hours and adaptive).
    - ``min_interval_minutes`` / ``max_interval_minutes``: the adaptive strategy's bounds
      (default: a quarter of, and eight times, ``interval_minutes``).
    - ``job_name``: the ``etl_runs.job_name``; None = ``<strategy>_polling``.
    """

    interval_minutes: float = 5.0
    max_iterations: int | None = None
    symbols: tuple[str, ...] = ()
    interval: str = "5min"
    batch_size: int = 10
    retry_on_failure: bool = True
    max_retries: int = 3
    exchange: str = "XNYS"
    sessions: tuple[str, ...] = ("regular",)
    min_interval_minutes: float | None = None
    max_interval_minutes: float | None = None
    job_name: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ConfigError:
            return ConfigError(message, name=name, value=getattr(self, name))

        if not self.interval_minutes > 0:
            raise bad("interval_minutes", f"poll interval must be > 0 minutes, got {self.interval_minutes}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise bad("max_iterations", f"max iterations must be >= 1, got {self.max_iterations}")
        if not self.symbols:
            raise bad("symbols", "no symbols to poll")
        if self.interval not in INTERVALS:
            raise bad("interval", f"unknown bar interval {self.interval!r}")
        if self.max_retries < 0:
            raise bad("max_retries", f"max retries must be >= 0, got {self.max_retries}")
        if self.batch_size < 1:
            raise bad("batch_size", f"batch size must be >= 1, got {self.batch_size}")
        unknown = [s for s in self.sessions if s not in ("pre", "regular", "post")]
        if not self.sessions or unknown:
            raise bad("sessions", f"sessions must be among pre, regular, post; got {list(self.sessions)}")
        if not 0 < self.min_interval_seconds <= self.max_interval_seconds:
            raise bad(
                "min_interval_minutes",
                "--min-poll-interval must be > 0 and at most --max-poll-interval "
                f"(got {self.min_interval_seconds / 60:g} and {self.max_interval_seconds / 60:g} min)",
            )

    @property
    def interval_seconds(self) -> float:
        return self.interval_minutes * 60.0

    @property
    def min_interval_seconds(self) -> float:
        return (self.min_interval_minutes if self.min_interval_minutes is not None else self.interval_minutes / 4) * 60.0

    @property
    def max_interval_seconds(self) -> float:
        return (self.max_interval_minutes if self.max_interval_minutes is not None else self.interval_minutes * 8) * 60.0

    @property
    def session_set(self) -> frozenset[Session]:
        return frozenset(Session(s) for s in self.sessions)


class PollingManager:
    """The seed's PollingManager: three strategies over an :class:`~etl.pipeline.EtlPipeline`.

    Each ``*_polling`` method runs until ``max_iterations`` cycles or ``stop`` and returns
    the results dict (:meth:`models.PollingResults.as_dict`).
    """

    def __init__(
        self,
        pipeline: EtlPipeline,
        *,
        calendars: Calendars | None = None,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.calendars = calendars or Calendars()
        self.clock = clock or pipeline.clock or SystemClock()
        self.stop = stop or pipeline.stop

    def continuous_polling(self, config: PollingConfig, **hooks) -> dict:
        """Poll every ``interval_minutes``, around the clock."""
        return self.run(ContinuousStrategy(config), **hooks).as_dict()

    def market_hours_polling(self, config: PollingConfig, **hooks) -> dict:
        """Poll every ``interval_minutes`` inside ``config.sessions`` of ``config.exchange`` only."""
        return self.run(MarketHoursStrategy(config, self.calendars.get(config.exchange)), **hooks).as_dict()

    def adaptive_polling(self, config: PollingConfig, **hooks) -> dict:
        """Poll at an interval that follows data arrival, sessions and throttling."""
        return self.run(AdaptiveStrategy(config, self.calendars.get(config.exchange)), **hooks).as_dict()

    def run(
        self,
        strategy: PollingStrategy,
        *,
        on_cycle: Callable[[CycleResult], None] | None = None,
        on_wait: Callable[[datetime], None] | None = None,
    ) -> PollingResults:
        """Poll until ``max_iterations`` or ``stop``; ``on_cycle(cycle)`` after each cycle,
        ``on_wait(due)`` before each wait (the streaming service publishes both)."""
        cfg = strategy.config
        results = PollingResults(strategy=strategy.name, start_time=self.clock.now())
        last: CycleResult | None = None
        announced: datetime | None = None
        while not self.stop.is_set() and (cfg.max_iterations is None or results.total_iterations < cfg.max_iterations):
            now = self.clock.now()
            due = strategy.next_poll(last, now)
            wait = (due - now).total_seconds()
            if wait > 0:
                if on_wait is not None:
                    on_wait(due)
                if due != announced:  # once per wait, not once per slice of it
                    announced = due
                    log.info("%s: next poll in %s (%s): %s", strategy.name, human_seconds(wait), due.isoformat(), strategy.reason)
                if self.clock.sleep(min(wait, MAX_SLEEP_SECONDS), self.stop):
                    break
                continue  # re-evaluate: the wait may have been sliced, or the clock jumped
            cycle = self.pipeline.run_cycle(
                cfg.symbols,
                cfg.interval,
                job_name=cfg.job_name or f"{strategy.name}_polling",
                retry_passes=cfg.max_retries if cfg.retry_on_failure else 0,
                batch_size=cfg.batch_size,
            )
            results.add(cycle, (cycle.started_at - last.started_at).total_seconds() if last is not None else None)
            strategy.observe(cycle)
            if on_cycle is not None:
                on_cycle(cycle)
            last = cycle
        results.interrupted = self.stop.is_set()
        results.end_time = self.clock.now()
        return results
