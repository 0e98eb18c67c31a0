"""Rate budgets: one per provider API key, shared by every thread and job in the process.

Per-second and per-minute rates are enforced by pyrate-limiter: a request *waits* for
the budget instead of being throttled by the API. A per-day quota is counted in the
database (:class:`db.quota.QuotaStore`), so a restart does not reset it; when it is used
up, :meth:`RateBudget.acquire` raises :class:`~errors.QuotaExhausted` at once (no
request is made) until the next UTC day, and says so in one log line.

Shared budgets (a cluster)
--------------------------
With ``shared=SharedWindows(database_url, redis_url)`` the per-second/minute windows are
kept where every process sees them, so all nodes using one API key share one budget:
pyrate-limiter's PostgreSQL bucket (a table ``ratelimit___<provider>_<key id>``, one row per
request in the longest window, timestamps from the database's clock) or, with a Redis URL,
its Redis bucket (a sorted set ``marketpoll:ratelimit:<provider>:<key id>``, timestamps from
Redis' ``TIME``). Both are named by the key's hash (:func:`key_id`), never the key. One clock
for every node means skewed host clocks cannot widen the budget. Each window is
:data:`SHARED_GUARD_SECONDS` longer than its unit, so jitter between the budget's clock and
the request reaching the API cannot let a window of the API's own hold one request too many.
A request waits at most ``max_wait_seconds`` (then :class:`~errors.RateLimited`, transient)
and logs once when it waits over a second; when ``stop`` is set it is abandoned, unsent
(a terminal :class:`~errors.ExtractError`), rather than sent past the budget. The store
being unreachable is a transient :class:`~errors.LoadError`, like the daily quota's.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from time import monotonic as time_monotonic
from typing import TYPE_CHECKING

from pyrate_limiter import Duration, Limiter, Rate, RateItem

from clock import Clock, SystemClock
from errors import ConfigError, ExtractError, LoadError, QuotaExhausted, RateLimited

if TYPE_CHECKING:  # the database layer is not imported by a process that only shares a budget
    from db.quota import QuotaStore

__all__ = ["RateSpec", "parse_rates", "RateBudget", "SharedWindows", "key_id", "budget_for", "SHARED_GUARD_SECONDS"]

log = logging.getLogger(__name__)
_UNITS = {"second": Duration.SECOND, "minute": Duration.MINUTE, "day": Duration.DAY}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|day)s?\s*$", re.I)

#: Seconds added to each window of a shared budget (see the module docstring): ``5/second`` admits
#: five requests per 1.1 s of the budget's clock.
SHARED_GUARD_SECONDS = 0.1
#: Longest a request waits for a shared budget before giving up with RateLimited (seconds).
DEFAULT_MAX_WAIT_SECONDS = 300.0
#: How often a process deletes the entries older than the longest window from a shared bucket (seconds).
_LEAK_EVERY_SECONDS = 10.0


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


@dataclass(frozen=True)
class SharedWindows:
    """Where a budget's per-second/minute windows are kept so that every process shares them.

    ``database_url``: the PostgreSQL database of the cluster (SQLAlchemy or libpq URL);
    ``redis_url``: when set (``RATE_LIMIT_REDIS_URL``), the windows live in Redis instead. Both
    are secrets (passwords): never logged.
    """

    database_url: str = field(repr=False)
    redis_url: str | None = field(default=None, repr=False)


class _Shared:
    """A pyrate-limiter bucket kept in PostgreSQL or Redis, for one (provider, key id)."""

    def __init__(self, where: SharedWindows, provider: str, key: str, rates: list[Rate]) -> None:
        self.backend = "redis" if where.redis_url else "postgresql"
        name = re.sub(r"[^a-z0-9_]", "_", f"{provider}_{key}".lower())
        try:
            if where.redis_url:
                import redis
                from pyrate_limiter import RedisBucket
                from pyrate_limiter.buckets.redis_bucket import LuaScript

                # pyrate's script counts a window up to the item's own stamp: a request stamped a moment
                # earlier by another node, but counted after a later one went in, would not see it.
                # Count every entry from the window's start on (PostgreSQL's bucket does).
                counted = "redis.call('ZCOUNT', bucket, window_start, now)"
                if counted not in LuaScript.PUT_ITEM:
                    raise ConfigError("this pyrate-limiter's Redis bucket is not the one marketpoll adapts", name="redis")
                script = LuaScript.PUT_ITEM.replace(counted, "redis.call('ZCOUNT', bucket, window_start, '+inf')")

                class _RedisTimeBucket(RedisBucket):
                    def now(self) -> int:  # Redis' clock, the same for every node (pyrate uses the host's)
                        sec, usec = self.redis.time()
                        return int(sec) * 1000 + int(usec) // 1000

                self._conn = redis.Redis.from_url(where.redis_url, socket_timeout=5, socket_connect_timeout=5)
                bucket_key = f"marketpoll:ratelimit:{name}"
                self.bucket = _RedisTimeBucket(rates, self._conn, bucket_key, self._conn.script_load(script))
                self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
            else:
                import psycopg
                import psycopg_pool
                from pyrate_limiter import PostgresBucket

                scheme, sep, rest = where.database_url.partition("://")
                if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
                    raise ConfigError("shared rate budgets need PostgreSQL (or RATE_LIMIT_REDIS_URL)", name="database_url")
                conninfo = f"postgresql://{rest}"  # libpq's spelling of SQLAlchemy's postgresql+psycopg2://
                # UTC sessions: the bucket stores TIMESTAMP (no zone) converted with the session's zone
                self._conn = psycopg_pool.ConnectionPool(
                    conninfo, min_size=1, max_size=2, timeout=10, num_workers=1, open=True, name=f"ratelimit-{name}",
                    kwargs={"options": "-c TimeZone=UTC", "connect_timeout": 5},
                )  # fmt: skip
                self.bucket = PostgresBucket(self._conn, name, rates)
                self._errors = (psycopg.Error, psycopg_pool.PoolTimeout)
        except ConfigError:
            raise
        except Exception as exc:  # the message may hold the URL: only its type travels
            raise LoadError(f"shared rate budget: cannot open its {self.backend} store ({type(exc).__name__})",
                            transient=True) from None  # fmt: skip
        self._lock = threading.Lock()  # put() and waiting() share the bucket's verdict state
        self._next_leak = 0.0

    def try_take(self, key: str) -> float:
        """Take one request if the windows allow it: 0.0, else the seconds to wait before trying again."""
        try:
            with self._lock:
                now_ms = self.bucket.now()
                if time_monotonic() >= self._next_leak:
                    self._next_leak = time_monotonic() + _LEAK_EVERY_SECONDS
                    self.bucket.leak(now_ms)
                item = RateItem(key, now_ms)
                if self.bucket.put(item):
                    return 0.0
                wait_ms = self.bucket.waiting(item)
        except self._errors as exc:
            raise LoadError(f"shared rate budget: its {self.backend} store failed ({type(exc).__name__})",
                            transient=True) from None  # fmt: skip
        # another node held the table lock (wait 0) or the window is full: retry a little after,
        # with jitter so that waiting nodes do not retry in lockstep
        return max(0, wait_ms) / 1000 + random.uniform(0.005, 0.03)  # noqa: S311 - jitter, not crypto

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            log.debug("closing the shared rate budget's %s store failed", self.backend)


class RateBudget:
    """The request budget of one (provider, API key). Thread-safe.

    ``shared`` (a :class:`SharedWindows`) keeps the per-second/minute windows in PostgreSQL or
    Redis, shared by every process with the same provider and key; ``max_wait_seconds`` bounds
    one request's wait for a shared window.
    """

    def __init__(
        self,
        provider: str,
        key: str,
        rates: list[RateSpec],
        *,
        quota: QuotaStore | None = None,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        shared: SharedWindows | None = None,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        self.provider = provider
        self.key_id = key
        self.rates = rates
        self.max_wait_seconds = max_wait_seconds
        guard_ms = round(SHARED_GUARD_SECONDS * 1000) if shared is not None else 0
        short = sorted((Rate(r.limit, int(_UNITS[r.unit]) + guard_ms) for r in rates if r.unit != "day"),
                       key=lambda r: r.interval)  # fmt: skip
        self._shared = _Shared(shared, provider, key, short) if shared is not None and short else None
        self.backend = self._shared.backend if self._shared is not None else "process"
        self._limiter = Limiter(short) if short and self._shared is None else None
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
            if self._shared is not None:
                self._take_shared()
            elif self._limiter is not None:
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

    def _take_shared(self) -> None:
        """Wait for the shared windows (bounded by ``max_wait_seconds``, ended early by ``stop``)."""
        assert self._shared is not None
        start = time_monotonic()
        logged = False
        while True:
            if self.stop.is_set():  # never a request past the budget: the shutdown abandons this one
                raise ExtractError(f"{self.provider}: shutting down while waiting for the shared rate budget; "
                                   "request not sent", provider=self.provider)  # fmt: skip
            wait = self._shared.try_take(self.key_id)
            if wait <= 0:
                return
            waited = time_monotonic() - start
            if waited + wait > self.max_wait_seconds:
                raise RateLimited(f"{self.provider}: waited {waited:.0f} s for the shared rate budget "
                                  f"({self._short_text()}) without a turn", provider=self.provider)  # fmt: skip
            if not logged and waited + wait > 1.0:
                logged = True
                log.info("%s: waiting for the shared rate budget (%s, in %s) before the next request",
                         self.provider, self._short_text(), self.backend)  # fmt: skip
            self.stop.wait(wait)

    def _short_text(self) -> str:
        return " ".join(str(r) for r in self.rates if r.unit != "day")

    def close(self) -> None:
        """Release the shared store's connections (nothing to do for an in-process budget)."""
        if self._shared is not None:
            self._shared.close()

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


_BUDGETS: dict[tuple[str, str, SharedWindows | None], RateBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(provider: str, api_key: str | None, rates: list[RateSpec], *, shared: SharedWindows | None = None,
               **kw) -> RateBudget | None:  # fmt: skip
    """The process-wide budget of (provider, key): created on first use, then shared. None without rates.

    With ``shared`` its per-second/minute windows are also shared with every other process
    (see the module docstring); other keywords go to :class:`RateBudget`. Raises
    :class:`~errors.LoadError` (transient) when the shared store cannot be reached.
    """
    if not rates:
        return None
    k = key_id(api_key)
    slot = (provider, k, shared)
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(slot)
        if budget is None or budget.rates != rates:
            if budget is not None:
                budget.close()
            budget = _BUDGETS[slot] = RateBudget(provider, k, rates, shared=shared, **kw)
        return budget
