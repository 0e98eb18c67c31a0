"""Rate budgets: one per provider API key, shared by every thread and job in the process.

Per-second and per-minute rates are enforced by pyrate-limiter: a request *waits* for
the budget instead of being throttled by the API. A per-day quota is counted in the
database (:class:`db.quota.QuotaStore`), so a restart does not reset it; when it is used
up, :meth:`RateBudget.acquire` raises :class:`~errors.QuotaExhausted` at once (no
request is made) until the next UTC day, and says so in one log line.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from time import monotonic as time_monotonic

from pyrate_limiter import Duration, Limiter, Rate

from clock import Clock, SystemClock
from db.quota import QuotaStore
from errors import ConfigError, QuotaExhausted

__all__ = ["RateSpec", "parse_rates", "RateBudget", "key_id", "budget_for"]

log = logging.getLogger(__name__)
_UNITS = {"second": Duration.SECOND, "minute": Duration.MINUTE, "day": Duration.DAY}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|day)s?\s*$", re.I)


@dataclass(frozen=True, slots=True)
class RateSpec:
    """``limit`` requests per ``unit`` (second, minute or day)."""

    limit: int
    unit: str

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"


def parse_rates(text: str | list[str] | None) -> list[RateSpec]:
    """``"75/minute"`` or ``"1/second 25/day"`` (or a list of such) → specs; raises ConfigError."""
    if not text:
        return []
    parts = text.split() if isinstance(text, str) else [p for t in text for p in t.split()]
    specs = []
    for part in parts:
        m = _SPEC.match(part)
        if not m or int(m.group(1)) < 1:
            raise ConfigError(f"bad rate limit {part!r} (use N/second, N/minute or N/day)", name="rate_limit", value=part)
        specs.append(RateSpec(int(m.group(1)), m.group(2).lower()))
    return specs


def key_id(api_key: str | None) -> str:
    """A stable, non-secret identifier of an API key (12 hex digits of its SHA-256)."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:12]


class RateBudget:
    """The request budget of one (provider, API key). Thread-safe."""

    def __init__(
        self,
        provider: str,
        key: str,
        rates: list[RateSpec],
        *,
        quota: QuotaStore | None = None,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.provider = provider
        self.key_id = key
        self.rates = rates
        short = [Rate(r.limit, _UNITS[r.unit]) for r in rates if r.unit != "day"]
        self._limiter = Limiter(sorted(short, key=lambda r: r.interval)) if short else None
        self.daily = min((r.limit for r in rates if r.unit == "day"), default=None)
        if self.daily is not None and quota is None:
            raise ConfigError("a per-day rate needs the database to keep its count", name="rate_limit")
        self._quota = quota
        self.clock = clock or SystemClock()
        self.stop = stop or threading.Event()
        self._paused_day = None
        self._lock = threading.Lock()
        self._hold_until = 0.0  # time.monotonic() before which no request of this key starts

    def _reset_at(self, now: datetime) -> datetime:
        return datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)

    def exhausted_until(self) -> datetime | None:
        """When the daily quota resets, if it is used up today; else None."""
        now = self.clock.now().astimezone(UTC)
        return self._reset_at(now) if self._paused_day == now.date() else None

    def acquire(self) -> None:
        """Wait for the per-second/minute budget, then count one request against the daily quota.

        Raises :class:`~errors.QuotaExhausted` (with ``retry_after_seconds`` to the next UTC
        midnight) when the daily quota is used up. A shutdown (``stop``) ends the wait early.
        """
        self._wait_out_hold()
        now = self.clock.now().astimezone(UTC)
        if self.daily is None or self._paused_day != now.date():
            if self._limiter is not None:
                waited = 0
                while not self._limiter.try_acquire(self.key_id, blocking=True, timeout=1):
                    waited += 1
                    if waited == 1:
                        log.info("%s: waiting for the rate budget (%s) before the next request", self.provider,
                                 " ".join(str(r) for r in self.rates if r.unit != "day"))  # fmt: skip
                    if self.stop.is_set():
                        break
            if self.daily is None:
                return
            now = self.clock.now().astimezone(UTC)
            if self._quota.take(self.provider, self.key_id, now.date(), self.daily):
                return
        reset = self._reset_at(now)
        with self._lock:
            if self._paused_day != now.date():
                self._paused_day = now.date()
                log.warning("%s: daily quota of %d requests used up; pausing its requests until %s",
                            self.provider, self.daily, reset.isoformat())  # fmt: skip
        raise QuotaExhausted(
            f"{self.provider}: daily quota of {self.daily} requests used up until {reset.isoformat()}",
            provider=self.provider,
            retry_after_seconds=(reset - now).total_seconds(),
        )

    def hold(self, seconds: float) -> None:
        """Make every request of this key wait ``seconds`` (the API said ``Retry-After``): all threads
        back off together, before the API escalates (Binance answers 418, an IP ban, to a client that
        keeps going after a 429)."""
        until = time_monotonic() + max(0.0, seconds)
        with self._lock:
            if until > self._hold_until:
                self._hold_until = until
                log.warning("%s: the API asked to wait %.0f s; holding every request of this key", self.provider, seconds)

    def _wait_out_hold(self) -> None:
        while True:
            left = self._hold_until - time_monotonic()
            if left <= 0 or self.stop.wait(min(left, 1.0)):
                return

    def remaining_today(self) -> int | None:
        if self.daily is None:
            return None
        now = self.clock.now().astimezone(UTC)
        return max(0, self.daily - self._quota.used(self.provider, self.key_id, now.date()))


_BUDGETS: dict[tuple[str, str], RateBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(provider: str, api_key: str | None, rates: list[RateSpec], **kw) -> RateBudget | None:
    """The process-wide budget of (provider, key): created on first use, then shared. None without rates."""
    if not rates:
        return None
    k = key_id(api_key)
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get((provider, k))
        if budget is None or budget.rates != rates:
            budget = _BUDGETS[(provider, k)] = RateBudget(provider, k, rates, **kw)
        return budget
