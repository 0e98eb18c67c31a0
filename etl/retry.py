"""Retry policy for provider requests, built on tenacity, and the per-symbol retry budget.

Only errors marked ``transient`` (see :mod:`errors`) are retried. A throttle's
``retry_after_seconds`` hint is honoured; a hint longer than ``max_delay_seconds``
(a daily quota, say) is not waited out inside a cycle: the error goes up so the
scheduler can try again later.

A :class:`RetryBudget` bounds one symbol in one cycle across *every* retry loop it goes
through (the provider's own retries and the cycle's extra passes): at most
``attempts`` requests, and at most ``wait_seconds`` spent waiting between them. The
pipeline opens one with :func:`retry_budget` around each fetch; a retry whose wait would
not fit in what is left is not made, and the symbol waits for the next cycle.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity

from errors import ConfigError, MarketpollError

__all__ = ["RetryPolicy", "Retrier", "RetryBudget", "retry_budget", "human_seconds"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    ``max_attempts`` counts the first try; delays are in seconds:
    ``initial_delay_seconds * backoff ** (attempt - 1)`` plus up to ``jitter_seconds``,
    capped at ``max_delay_seconds``.
    """

    max_attempts: int = 4
    initial_delay_seconds: float = 1.0
    backoff: float = 2.0
    max_delay_seconds: float = 60.0
    jitter_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be >= 1", name="max_attempts", value=self.max_attempts)
        if self.initial_delay_seconds < 0 or self.max_delay_seconds < 0 or self.jitter_seconds < 0:
            raise ConfigError("retry delays must be >= 0", name="retry", value=self)
        if self.backoff < 1:
            raise ConfigError("backoff must be >= 1", name="backoff", value=self.backoff)

    def delay_for(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        hint = getattr(error, "retry_after_seconds", None)
        if hint is not None:
            return min(float(hint), self.max_delay_seconds)
        delay = self.initial_delay_seconds * self.backoff ** (attempt - 1)
        return min(delay + random.uniform(0, self.jitter_seconds), self.max_delay_seconds)

    def should_retry(self, error: BaseException) -> bool:
        if not (isinstance(error, MarketpollError) and error.transient):
            return False
        hint = getattr(error, "retry_after_seconds", None)
        return hint is None or hint <= self.max_delay_seconds


def human_seconds(seconds: float) -> str:
    """``48 s``, ``2 min 5 s``, ``3 h 10 min``, ``2 d 4 h``: a duration for people, not parsers."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    s = round(s)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if s >= size:
            major, rest = divmod(s, size)
            minor = rest // sub_size
            return f"{major} {unit} {minor} {sub}" if minor else f"{major} {unit}"
    return f"{s} s"


@dataclass
class RetryBudget:
    """What one symbol may still spend in one cycle: ``attempts`` failed requests, ``wait_seconds`` of retry waits.

    Shared by the provider's retry loop and the pipeline's extra passes. Thread-safe.
    """

    attempts: int
    wait_seconds: float
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take_attempt(self) -> bool:
        """Count one request; False (nothing counted) when none is left."""
        with self._lock:
            if self.attempts <= 0:
                return False
            self.attempts -= 1
            return True

    def refund(self) -> None:
        """Give back one request: it succeeded. Only failures use the budget up, so a fetch of many
        pages (a catch-up, a backfill window) is not cut short by its own successful requests."""
        with self._lock:
            self.attempts += 1

    def fits(self, wait_seconds: float) -> bool:
        """Could one more request be made after waiting ``wait_seconds``?"""
        return self.attempts > 0 and wait_seconds <= self.wait_seconds

    def spend_wait(self, wait_seconds: float) -> None:
        with self._lock:
            self.wait_seconds = max(0.0, self.wait_seconds - wait_seconds)


_BUDGET: ContextVar[RetryBudget | None] = ContextVar("marketpoll_retry_budget", default=None)


@contextmanager
def retry_budget(budget: RetryBudget | None) -> Iterator[RetryBudget | None]:
    """Make ``budget`` the one every :class:`Retrier` call in this context (thread) draws on."""
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


class _BudgetSpent(MarketpollError):
    """The retry budget had no request left before the first one (the pipeline never asks then)."""

    transient = True

    def __init__(self) -> None:
        super().__init__("its retry budget for this cycle is spent (RETRY_MAX_ATTEMPTS failed requests)")


class Retrier:
    """A reusable, thread-safe retry loop for one :class:`RetryPolicy` (tenacity keeps each
    call's state in a thread-local, so one instance serves every worker thread; building a
    ``tenacity.Retrying`` per call cost ~0.3 ms).

    ``sleep`` is injectable (tests, or an interruptible wait for shutdown);
    ``on_retry(error, delay_seconds)`` is told of each retry (metrics, logs).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> None:
        self.policy = policy

        def before_sleep(state: tenacity.RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            budget = _BUDGET.get()
            if budget is not None:
                budget.spend_wait(delay)
            log.warning("retrying in %s: %s (attempt %d of at most %d)", human_seconds(delay), err, state.attempt_number + 1,
                        policy.max_attempts)  # fmt: skip
            if on_retry is not None and err is not None:
                on_retry(err, delay)

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= policy.max_attempts:
                return True
            budget = _BUDGET.get()
            if budget is not None and not budget.fits(state.upcoming_sleep):
                err = state.outcome.exception() if state.outcome else None
                log.info("not retrying %s in this cycle: its retry budget (%d request(s), %s of waits) has no room for "
                         "a wait of %s", err, budget.attempts, human_seconds(budget.wait_seconds),
                         human_seconds(state.upcoming_sleep))  # fmt: skip
                return True
            return False

        self._retrying = tenacity.Retrying(
            stop=stop,
            wait=lambda state: policy.delay_for(state.attempt_number, state.outcome.exception() if state.outcome else None),
            retry=tenacity.retry_if_exception(policy.should_retry),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def __call__(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` until it returns, raises a terminal error, or attempts run out (then re-raises).

        Each call of ``fn`` takes one request of the current :class:`RetryBudget` (if any), given back
        when it succeeds (only failures use the budget up); when the budget has none left, the last
        error stands (or ``fn`` is not called at all the first time, and the budget's exhaustion is
        raised as a transient error by the caller's pipeline).
        """
        last: list[BaseException] = []

        def attempt() -> T:
            budget = _BUDGET.get()
            if budget is not None and not budget.take_attempt():
                raise last[-1] if last else _BudgetSpent()
            try:
                result = fn()
            except BaseException as exc:
                last.append(exc)
                raise
            if budget is not None:
                budget.refund()
            return result

        return self._retrying(attempt)
