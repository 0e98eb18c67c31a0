"""Retry policy for provider requests, built on tenacity.

Only errors marked ``transient`` (see :mod:`errors`) are retried. A throttle's
``retry_after_seconds`` hint is honoured; a hint longer than ``max_delay_seconds``
(a daily quota, say) is not waited out inside a cycle: the error goes up so the
scheduler can try again later.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from errors import ConfigError, MarketpollError

__all__ = ["RetryPolicy", "Retrier"]

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
            log.warning("retrying after %s (attempt %d/%d, waiting %.2fs)", err, state.attempt_number, policy.max_attempts, delay)
            if on_retry is not None and err is not None:
                on_retry(err, delay)

        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.max_attempts),
            wait=lambda state: policy.delay_for(state.attempt_number, state.outcome.exception() if state.outcome else None),
            retry=tenacity.retry_if_exception(policy.should_retry),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def __call__(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` until it returns, raises a terminal error, or attempts run out (then re-raises)."""
        return self._retrying(fn)
