"""Rate budgets against a loopback server that logs when each request arrived."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime

import pytest

from db import RunLedger
from db.quota import QuotaStore
from errors import ConfigError, QuotaExhausted
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.ratelimit import RateBudget, RateSpec, key_id, parse_rates
from etl.retry import RetryPolicy
from models.run import RunStatus
from support import as_symbol, fixture, ok

BODY = fixture("alphavantage/intraday_1min_MSFT.json")


def test_parse_rates():
    assert parse_rates("1/second 25/day") == [RateSpec(1, "second"), RateSpec(25, "day")]
    assert parse_rates(["75/minute"]) == [RateSpec(75, "minute")]
    for bad in ("75", "0/second", "5/hour", "x/minute"):
        with pytest.raises(ConfigError):
            parse_rates(bad)


def test_key_id_hides_the_key():
    assert key_id("SECRET-KEY-1") != key_id("SECRET-KEY-2") and "SECRET" not in key_id("SECRET-KEY-1")


def sixes(arrivals: list[float]) -> list[float]:
    """For each run of six consecutive arrivals (sorted), the seconds from its first to its last.

    ``min(sixes(a)) >= w`` says that no window of ``w`` seconds holds more than five arrivals;
    ``max(sixes(a)) < w`` that from any arrival, five more come within ``w`` seconds.
    """
    t = sorted(arrivals)
    return [t[i + 5] - t[i] for i in range(len(t) - 5)]


def test_requests_never_exceed_the_budget_and_stay_close_to_it(replay, sqlite_engine, manual_clock):
    # pyrate-limiter keeps real time, so this is measured: the server logs when each request
    # arrived, and the assertions are about those instants, never about how long the cycle took.
    arrivals: list[float] = []
    lock = threading.Lock()

    def route(_p, q):
        with lock:
            arrivals.append(time.monotonic())
        return ok(as_symbol(BODY, q["symbol"]))

    srv = replay(route)
    provider = AlphaVantageProvider(AlphaVantageConfig(api_key="RATEKEY123", base_url=srv.url))
    provider.budget = RateBudget("alphavantage", key_id("RATEKEY123"), [RateSpec(5, "second")], clock=manual_clock)
    pipeline = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), clock=manual_clock, workers=4)
    cycle = pipeline.run_cycle([f"S{i}" for i in range(15)], "1min", job_name="rate")
    assert cycle.status is RunStatus.SUCCEEDED and len(arrivals) == 15
    # Never above: 5/second admits the 6th of any six requests >= 1 s after the 1st, so no six
    # arrive within 0.7 s (a request may take up to 300 ms longer than another to reach the
    # server). Without the limiter, 4 workers send all 15 within a few tens of milliseconds;
    # at 10/second a run of six spans about 0.5 s.
    assert min(sixes(arrivals)) >= 0.7, sorted(arrivals)
    # And close to it: from any arrival, five more come within 3 s (about 1 s at 5/second; 5 s
    # when requests go one a second). The 2 s of slack are for a loaded machine.
    assert max(sixes(arrivals)) < 3.0, sorted(arrivals)


def test_daily_quota_survives_a_restart_and_pauses_without_requests(replay, engine, manual_clock):
    srv = replay(lambda _p, q: ok(as_symbol(BODY, q["symbol"])))
    now = manual_clock  # the quota's UTC day is the clock's, not today's
    now.set(datetime(2024, 1, 31, 21, 0, tzinfo=UTC))  # the fixture's session (no catch-up of an older hole)
    rates = [RateSpec(3, "day")]
    used = QuotaStore(engine).used

    def pipeline():  # a fresh budget each time: what a restarted process has
        provider = AlphaVantageProvider(
            AlphaVantageConfig(api_key="QUOTAKEY99", base_url=srv.url, retry=RetryPolicy(max_attempts=1))
        )
        provider.budget = RateBudget("alphavantage", key_id("QUOTAKEY99"), rates, quota=QuotaStore(engine), clock=now)
        return EtlPipeline(provider, make_loader(engine), RunLedger(engine), clock=now)

    first = pipeline().run_cycle(["A", "B", "C", "D", "E"], "1min", job_name="q", retry_passes=2)
    assert len(srv.requests) == 3 and first.status is RunStatus.PARTIAL
    assert all(not o.retry_in_cycle for o in first.failed)  # no pointless retry passes
    assert "daily quota of 3 requests used up" in first.failed[0].error
    assert used("alphavantage", key_id("QUOTAKEY99"), date(2024, 1, 31)) == 3

    restarted = pipeline()
    second = restarted.run_cycle(["A"], "1min", job_name="q")
    assert len(srv.requests) == 3 and second.status is RunStatus.FAILED  # the count came from the database
    third = restarted.run_cycle(["A", "B"], "1min", job_name="q")
    assert "paused" in third.error and third.outcomes == [] and len(srv.requests) == 3

    now.set(datetime(2024, 2, 1, 0, 0, 1, tzinfo=UTC))  # a new UTC day: the quota resets
    assert restarted.run_cycle(["A"], "1min", job_name="q").status is RunStatus.SUCCEEDED
    assert len(srv.requests) == 4
    assert used("alphavantage", key_id("QUOTAKEY99"), date(2024, 2, 1)) == 1
    assert used("alphavantage", key_id("QUOTAKEY99"), date(2024, 1, 31)) == 3


def test_quota_store_is_atomic_under_threads(engine):
    store = QuotaStore(engine)
    day = datetime(2024, 3, 11).date()
    granted = []

    def take():
        for _ in range(10):
            granted.append(store.take("p", "k", day, 25))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 25 and store.used("p", "k", day) == 25


def test_exhausted_budget_raises_with_retry_after(sqlite_engine, manual_clock):
    manual_clock.set(datetime(2024, 3, 11, 23, 0, tzinfo=UTC))  # an hour before the UTC day ends
    budget = RateBudget("p", "k", [RateSpec(1, "day")], quota=QuotaStore(sqlite_engine), clock=manual_clock)
    budget.acquire()
    with pytest.raises(QuotaExhausted) as info:
        budget.acquire()
    assert info.value.retry_after_seconds == 3600 and budget.remaining_today() == 0
    assert budget.exhausted_until() == datetime(2024, 3, 12, tzinfo=UTC)
    manual_clock.advance(3600)  # midnight UTC: a new day's quota
    assert budget.exhausted_until() is None and budget.remaining_today() == 1
    budget.acquire()
