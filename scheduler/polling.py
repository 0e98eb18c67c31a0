"""Polling: run ETL cycles repeatedly, the wait between them chosen by a strategy.

A strategy is a pure decision (see :class:`PollingStrategy`): given what happened
and ``now``, when is the next poll? :class:`PollingManager` owns the loop, the
clock and all I/O, and stops promptly when its ``stop`` event is set (a signal).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta

from clock import Clock, SystemClock
from errors import ConfigError
from etl.pipeline import EtlPipeline
from models.bar import INTERVALS
from models.run import CycleResult, PollingResults

__all__ = ["PollingConfig", "PollingStrategy", "ContinuousStrategy", "PollingManager"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PollingConfig:
    """What to poll and how often.

    - ``interval_minutes``: minutes between poll starts (fractions allowed, > 0).
    - ``max_iterations``: cycles to run, None = until stopped.
    - ``symbols``: tickers; ``interval``: bar interval (a key of :data:`models.INTERVALS`).
    - ``retry_on_failure`` / ``max_retries``: after a cycle's first pass, symbols that
      failed with a transient error (throttle, timeout) get up to ``max_retries`` more passes.
    - ``job_name``: the ``etl_runs.job_name``; None = the strategy's name.
    """

    interval_minutes: float = 5.0
    max_iterations: int | None = None
    symbols: tuple[str, ...] = ()
    interval: str = "5min"
    retry_on_failure: bool = True
    max_retries: int = 3
    job_name: str | None = None

    def __post_init__(self) -> None:
        if not self.interval_minutes > 0:
            raise ConfigError(
                f"poll interval must be > 0 minutes, got {self.interval_minutes}",
                name="interval_minutes",
                value=self.interval_minutes,
            )
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ConfigError(
                f"max iterations must be >= 1, got {self.max_iterations}", name="max_iterations", value=self.max_iterations
            )
        if not self.symbols:
            raise ConfigError("no symbols to poll", name="symbols")
        if self.interval not in INTERVALS:
            raise ConfigError(f"unknown bar interval {self.interval!r}", name="interval", value=self.interval)
        if self.max_retries < 0:
            raise ConfigError(f"max retries must be >= 0, got {self.max_retries}", name="max_retries", value=self.max_retries)

    @property
    def interval_seconds(self) -> float:
        return self.interval_minutes * 60.0


class PollingStrategy(ABC):
    """A pure scheduling policy. ``next_poll(last, now)`` returns the UTC instant of the next poll.

    ``last`` is the previous cycle (None before the first); implementations must not
    read the clock or do I/O, so they can be tested at any instant.
    """

    name: str

    def __init__(self, config: PollingConfig) -> None:
        self.config = config

    @abstractmethod
    def next_poll(self, last: CycleResult | None, now: datetime) -> datetime:
        """When to poll next (UTC-aware); a time <= ``now`` means at once."""


class ContinuousStrategy(PollingStrategy):
    """Poll at a fixed rate, around the clock: every ``interval_minutes`` from the previous poll's start.

    A cycle that overruns the interval is followed at once (no burst of catch-up polls).
    """

    name = "continuous"

    def next_poll(self, last: CycleResult | None, now: datetime) -> datetime:
        if last is None:
            return now
        return max(now, last.started_at + timedelta(seconds=self.config.interval_seconds))


class PollingManager:
    """Runs a strategy's polling loop over an :class:`~etl.pipeline.EtlPipeline`."""

    def __init__(self, pipeline: EtlPipeline, *, clock: Clock | None = None, stop: threading.Event | None = None) -> None:
        self.pipeline = pipeline
        self.clock = clock or pipeline.clock or SystemClock()
        self.stop = stop or pipeline.stop

    def continuous_polling(self, config: PollingConfig) -> dict:
        """Poll at a fixed interval; returns the results dict (see :meth:`PollingResults.as_dict`)."""
        return self.run(ContinuousStrategy(config)).as_dict()

    def run(self, strategy: PollingStrategy) -> PollingResults:
        cfg = strategy.config
        results = PollingResults(strategy=strategy.name, start_time=self.clock.now())
        last: CycleResult | None = None
        while not self.stop.is_set() and (cfg.max_iterations is None or len(results.cycles) < cfg.max_iterations):
            now = self.clock.now()
            due = strategy.next_poll(last, now)
            if last is not None:
                results.intervals_seconds.append((due - last.started_at).total_seconds())
            wait = (due - now).total_seconds()
            if wait > 0:
                log.debug("%s: next poll at %s (in %.1fs)", strategy.name, due.isoformat(), wait)
                if self.clock.sleep(wait, self.stop):
                    break
            last = self._cycle(cfg, strategy.name)
            results.cycles.append(last)
        results.interrupted = self.stop.is_set()
        results.end_time = self.clock.now()
        return results

    def _cycle(self, cfg: PollingConfig, strategy_name: str) -> CycleResult:
        return self.pipeline.run_cycle(
            cfg.symbols,
            cfg.interval,
            job_name=cfg.job_name or f"{strategy_name}_polling",
            retry_passes=cfg.max_retries if cfg.retry_on_failure else 0,
        )
