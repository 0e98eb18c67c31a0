"""Polling strategies: pure decisions of *when* to poll next.

Each strategy's ``next_poll(last, now)`` is a function of the previous cycle, ``now``
and the market calendar (no clock reads, no I/O), so tests stand at any instant.
A session window includes its end instant: the poll at the close collects the
session's last bar.

- ``continuous``: every ``interval_minutes`` from the previous poll's start, around the clock.
- ``market_hours``: the same, but only inside the chosen sessions; outside them the next
  poll is the next session's open (nights, weekends, holidays, early closes).
- ``adaptive``: the interval follows what polls bring: halved while every symbol brings
  new bars, doubled when none does or when the provider throttles, doubled again in the
  thin pre-market and after-hours sessions; while the market is closed it polls every
  ``max_interval_minutes`` and at the next open; always within [min, max].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from errors import ConfigError
from registry import Registry
from scheduler.calendar import MarketCalendar, Session

if TYPE_CHECKING:
    from models.run import CycleResult
    from scheduler.polling import PollingConfig

__all__ = [
    "PollingStrategy",
    "ContinuousStrategy",
    "MarketHoursStrategy",
    "AdaptiveStrategy",
    "adapt_interval",
    "STRATEGIES",
    "strategy_class",
]

#: Interval multipliers by session for the adaptive strategy (thin sessions poll less often).
SESSION_FACTORS = {Session.REGULAR: 1.0, Session.PRE: 2.0, Session.POST: 2.0}


class PollingStrategy(ABC):
    """A pure scheduling policy. ``next_poll(last, now)`` returns the UTC instant of the next poll.

    ``last`` is the previous cycle (None before the first). Implementations must not read
    the clock or do I/O; ``observe`` is told of each finished cycle (for stateful policies).
    """

    name: str
    #: True when the policy reads sessions: constructing it without a calendar is a ConfigError.
    needs_calendar: bool = False

    def __init__(self, config: PollingConfig, calendar: MarketCalendar | None = None) -> None:
        if self.needs_calendar and calendar is None:
            raise ConfigError(f"{self.name} polling needs an exchange calendar", name="exchange")
        self.config = config
        self.calendar = calendar
        #: why the last :meth:`next_poll` chose its instant, for the log line of the wait ("no new bars")
        self.reason = "first poll"

    def _local(self, when: datetime) -> str:
        """``when`` in the exchange's zone, for people (``Mon 09:30 EDT``)."""
        tz = self.calendar.tz if self.calendar is not None else None
        return when.astimezone(tz).strftime("%a %H:%M %Z") if tz is not None else when.isoformat()

    @abstractmethod
    def next_poll(self, last: CycleResult | None, now: datetime) -> datetime:
        """When to poll next (UTC-aware); a time <= ``now`` means at once."""

    def observe(self, cycle: CycleResult) -> None:  # noqa: B027 - optional hook
        """Learn from a finished cycle (the adaptive strategy adjusts its interval)."""


class ContinuousStrategy(PollingStrategy):
    """Fixed rate around the clock; a cycle that overruns the interval is followed at once."""

    name = "continuous"

    def next_poll(self, last: CycleResult | None, now: datetime) -> datetime:
        if last is None:
            return now
        due = last.started_at + timedelta(seconds=self.config.interval_seconds)
        self.reason = f"every {self.config.interval_minutes:g} min" if due > now else "the last cycle outlasted the interval"
        return max(now, due)


class MarketHoursStrategy(PollingStrategy):
    """Fixed rate inside the chosen sessions (``config.sessions``); otherwise wait for the next open."""

    name = "market_hours"
    needs_calendar = True

    def next_poll(self, last: CycleResult | None, now: datetime) -> datetime:
        sessions = self.config.session_set
        step = timedelta(seconds=self.config.interval_seconds)
        # a window that has just closed still counts at its end instant (the last bar)
        _, start, end = self.calendar.next_window(now - timedelta(microseconds=1), sessions)
        names = "/".join(sorted(s.value for s in sessions))
        if last is None or last.started_at < start:
            due = max(now, start)  # first poll of this window: at its open (or now, if inside)
            self.reason = f"{self.calendar.code} {names} session opens {self._local(start)}" if start > now else "session open"
        else:
            due = max(now, last.started_at + step)
            self.reason = f"every {self.config.interval_minutes:g} min in the {names} session"
        if due > end:
            _, start, _ = self.calendar.next_window(end + timedelta(microseconds=1), sessions)
            due = start
            self.reason = f"{self.calendar.code} {names} session closed; next opens {self._local(start)}"
        return due


def adapt_interval(seconds: float, cycle: CycleResult, *, min_seconds: float, max_seconds: float) -> float:
    """The adaptive base interval after ``cycle`` (pure).

    Throttled (a transient failure) → x2; every successful symbol loaded new or revised
    rows → /2; none did → x2; a mix → unchanged. Clamped to [min_seconds, max_seconds].
    """
    ok = [o for o in cycle.outcomes if o.ok]
    if any(o.transient for o in cycle.outcomes if not o.ok):
        seconds *= 2
    elif ok and all(o.rows_loaded > 0 for o in ok):
        seconds /= 2
    elif ok and all(o.rows_loaded == 0 for o in ok):
        seconds *= 2
    return min(max(seconds, min_seconds), max_seconds)


def _adaptive_reason(cycle: CycleResult, before: float, after: float) -> str:
    ok = [o for o in cycle.outcomes if o.ok]
    if any(o.transient for o in cycle.outcomes if not o.ok):
        what = "throttled or a transient error"
    elif ok and all(o.rows_loaded > 0 for o in ok):
        what = "every symbol brought new bars"
    elif ok and all(o.rows_loaded == 0 for o in ok):
        what = "no new bars"
    else:
        what = "some symbols brought new bars"
    verb = "halved" if after < before else "doubled" if after > before else "kept"
    return f"{what}: interval {verb} to {after:g} s"


class AdaptiveStrategy(PollingStrategy):
    """The interval follows data arrival, the session and throttling (see module docstring)."""

    name = "adaptive"
    needs_calendar = True

    def __init__(self, config: PollingConfig, calendar: MarketCalendar | None = None) -> None:
        super().__init__(config, calendar)
        self.base_seconds = config.interval_seconds

    def observe(self, cycle: CycleResult) -> None:
        cfg = self.config
        before = self.base_seconds
        self.base_seconds = adapt_interval(
            self.base_seconds, cycle, min_seconds=cfg.min_interval_seconds, max_seconds=cfg.max_interval_seconds
        )
        self._why = _adaptive_reason(cycle, before, self.base_seconds)

    def next_poll(self, last: CycleResult | None, now: datetime) -> datetime:
        if last is None:
            return now
        cfg = self.config
        session = self.calendar.session_at(now)
        if session not in cfg.session_set or session is Session.CLOSED:
            _, next_open, _ = self.calendar.next_window(now, cfg.session_set)
            self.reason = f"{self.calendar.code} closed for the polled sessions; next opens {self._local(next_open)}"
            return max(now, min(next_open, last.started_at + timedelta(seconds=cfg.max_interval_seconds)))
        wait = min(max(self.base_seconds * SESSION_FACTORS[session], cfg.min_interval_seconds), cfg.max_interval_seconds)
        thin = f", x{SESSION_FACTORS[session]:g} in the thin {session.value} session" if SESSION_FACTORS[session] != 1 else ""
        self.reason = getattr(self, "_why", "adaptive interval") + thin
        return max(now, last.started_at + timedelta(seconds=wait))


#: Strategies by name (the CLI's --*-poll flags map onto these).
STRATEGIES: Registry[PollingStrategy] = Registry(PollingStrategy, "polling strategy")
for _cls in (ContinuousStrategy, MarketHoursStrategy, AdaptiveStrategy):
    STRATEGIES.register(_cls)
strategy_class = STRATEGIES.get
