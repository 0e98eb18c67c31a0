"""Rate budgets against a loopback server that logs when each request arrived."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from clock import ManualClock
from db import RunLedger
from db.quota import QuotaStore
from errors import ConfigError, QuotaExhausted
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.ratelimit import RateBudget, RateSpec, key_id, parse_rates
from etl.retry import RetryPolicy
from models.run import RunStatus
from support import fixture, ok

BODY = fixture("alphavantage/intraday_1min_MSFT.json")


def test_parse_rates():
    assert parse_rates("1/second 25/day") == [RateSpec(1, "second"), RateSpec(25, "day")]
    assert parse_rates(["75/minute"]) == [RateSpec(75, "minute")]
    for bad in ("75", "0/second", "5/hour", "x/minute"):
        with pytest.raises(ConfigError):
            parse_rates(bad)


def test_key_id_hides_the_key():
    assert key_id("SECRET-KEY-1") != key_id("SECRET-KEY-2") and "SECRET" not in key_id("SECRET-KEY-1")


def test_requests_never_exceed_the_budget_and_stay_close_to_it(replay, sqlite_engine):
    arrivals: list[float] = []
    lock = threading.Lock()

    def route(_p, _q):
        with lock:
            arrivals.append(time.monotonic())
        return ok(BODY)

    srv = replay(route)
    provider = AlphaVantageProvider(AlphaVantageConfig(api_key="RATEKEY123", base_url=srv.url))
    provider.budget = RateBudget("alphavantage", key_id("RATEKEY123"), [RateSpec(5, "second")])
    pipeline = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), workers=4)
    t0 = time.monotonic()
    cycle = pipeline.run_cycle([f"S{i}" for i in range(15)], "1min", job_name="rate")
    elapsed = time.monotonic() - t0
    assert cycle.status is RunStatus.SUCCEEDED and len(arrivals) == 15
    # never above: no 0.95 s window (50 ms of loopback jitter allowed) holds more than 5 requests
    worst = max(sum(1 for t in arrivals if a <= t < a + 0.95) for a in arrivals)
    assert worst <= 5
    # and close to it: 15 requests at 5/s take 2 s after the first burst of 5, not much more
    assert 1.8 <= elapsed <= 3.5


def test_daily_quota_survives_a_restart_and_pauses_without_requests(replay, engine):
    srv = replay([ok(BODY)])
    now = ManualClock(datetime(2024, 3, 11, 15, tzinfo=UTC))
    rates = [RateSpec(3, "day")]

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

    restarted = pipeline()
    second = restarted.run_cycle(["A"], "1min", job_name="q")
    assert len(srv.requests) == 3 and second.status is RunStatus.FAILED  # the count came from the database
    third = restarted.run_cycle(["A", "B"], "1min", job_name="q")
    assert "paused" in third.error and third.outcomes == [] and len(srv.requests) == 3

    now.set(datetime(2024, 3, 12, 0, 0, 1, tzinfo=UTC))  # a new UTC day: the quota resets
    assert restarted.run_cycle(["A"], "1min", job_name="q").status is RunStatus.SUCCEEDED
    assert len(srv.requests) == 4


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


def test_exhausted_budget_raises_with_retry_after(sqlite_engine):
    clock = ManualClock(datetime(2024, 3, 11, 23, 0, tzinfo=UTC))
    budget = RateBudget("p", "k", [RateSpec(1, "day")], quota=QuotaStore(sqlite_engine), clock=clock)
    budget.acquire()
    with pytest.raises(QuotaExhausted) as info:
        budget.acquire()
    assert info.value.retry_after_seconds == 3600 and budget.remaining_today() == 0
