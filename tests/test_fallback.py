"""Fallback: a second provider serves the symbols the first fails terminally or cannot serve (paused on its
daily quota); rows land under the provider that served them; etl_runs and bars_preferred say who served what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clock import ManualClock
from db import RunLedger
from db.quota import QuotaStore
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.ratelimit import RateBudget, RateSpec
from etl.retry import RetryPolicy
from fakeprovider import START, FakexProvider, register, serve
from models.bar import Bar
from models.run import RunStatus
from support import fixture, ok

register()
NOW = START + timedelta(hours=3)
FAKEX_KEY = "FALLBACKKEY4R7T9"


def av_route(_path, q):
    if q["symbol"] == "ABC1":  # Alpha Vantage does not know it; Fakex does
        return ok(fixture("alphavantage/error_invalid_call.json"))
    body = fixture("alphavantage/intraday_1min_MSFT.json")
    return ok(body.replace(b'"2. Symbol": "MSFT"', f'"2. Symbol": "{q["symbol"]}"'.encode()))


@pytest.fixture
def providers(replay):
    av_srv = replay(av_route)
    fx_srv = replay(lambda path, q: serve(path, q, key=FAKEX_KEY))
    clock = ManualClock(NOW)
    av = AlphaVantageProvider(AlphaVantageConfig(api_key="PRIMARYKEY12345", base_url=av_srv.url,
                                                 retry=RetryPolicy(max_attempts=1)), clock=clock)  # fmt: skip
    fx = FakexProvider(FakexProvider.Config(base_url=fx_srv.server.url, api_key=FAKEX_KEY), clock=clock)
    yield av, fx, av_srv, fx_srv, clock
    av.close()
    fx.close()


def rows(engine, sql):
    with engine.connect() as c:
        return c.exec_driver_sql(sql).all()


def test_the_fallback_serves_what_the_primary_fails_and_rows_keep_their_provider(engine, providers):
    av, fx, _, fx_srv, clock = providers
    p = EtlPipeline(av, make_loader(engine), RunLedger(engine), clock=clock, fallback=fx)
    cycle = p.run_cycle(["ABC2", "ABC1"], "1min", job_name="fb")
    assert cycle.status is RunStatus.SUCCEEDED, cycle.error_summary()
    assert {o.symbol: o.served_by for o in cycle.outcomes} == {"ABC2": None, "ABC1": "fakex"}
    assert rows(engine, "SELECT provider, symbol, count(*) FROM bars GROUP BY provider, symbol ORDER BY symbol") == [
        ("fakex", "ABC1", 120), ("alphavantage", "ABC2", 100)]  # fmt: skip
    assert [q for _, q in fx_srv.requests][0]["interval"] == "60"  # the same symbol string went to the fallback
    assert rows(engine, "SELECT status, served_by FROM etl_runs") == [("succeeded", "ABC1=fakex")]


def test_bars_preferred_gives_one_row_per_bar_the_primarys_first(engine, providers):
    av, fx, *_, clock = providers
    p = EtlPipeline(av, make_loader(engine), RunLedger(engine), clock=clock, fallback=fx)
    p.run_cycle(["ABC1"], "1min", job_name="fb")  # records the ranking: alphavantage 0, fakex 1
    ts = START + timedelta(minutes=5)
    make_loader(engine).load([Bar("alphavantage", "ABC1", "1min", ts, "9", "9", "9", "9", "1")])
    picked = rows(engine, "SELECT provider, open FROM bars_preferred WHERE symbol = 'ABC1' ORDER BY ts")
    assert len(picked) == 120 and ("alphavantage", 9) in [(prov, int(o)) for prov, o in picked]
    assert sum(1 for prov, _ in picked if prov == "alphavantage") == 1


def test_a_primary_paused_on_its_daily_quota_hands_every_symbol_to_the_fallback(engine, providers):
    av, fx, av_srv, _, clock = providers
    av.budget = RateBudget("alphavantage", "k-fallback-test", [RateSpec(1, "day")], quota=QuotaStore(engine), clock=clock)
    p = EtlPipeline(av, make_loader(engine), RunLedger(engine), clock=clock, fallback=fx)
    first = p.run_cycle(["ABC2", "ABC3"], "1min", job_name="fb")  # the day's one request, then the quota is spent
    assert {o.symbol: o.served_by for o in first.outcomes} == {"ABC2": None, "ABC3": "fakex"}
    before = len(av_srv.requests)
    second = p.run_cycle(["ABC2", "ABC3"], "1min", job_name="fb")
    assert len(av_srv.requests) == before, "no request to the paused primary"
    assert second.status is RunStatus.SUCCEEDED and all(o.served_by == "fakex" for o in second.outcomes)


def test_without_a_fallback_a_terminal_failure_stays_a_failure(engine, providers):
    av, _, _, _, clock = providers
    cycle = EtlPipeline(av, make_loader(engine), RunLedger(engine), clock=clock).run_cycle(["ABC1"], "1min", job_name="t")
    assert cycle.status is RunStatus.FAILED and cycle.outcomes[0].served_by is None


def test_named_jobs_carry_their_fallback(sqlite_engine):
    from db.jobs import JobStore
    from scheduler.calendar import Calendars
    from scheduler.jobs import MarketScheduler

    sched = MarketScheduler(JobStore(sqlite_engine), pipeline_for=lambda _p, _f=None: None, calendars=Calendars(),
                            clock=ManualClock(datetime(2024, 3, 11, 12, tzinfo=UTC)))  # fmt: skip
    sched.schedule_market_hours_job("j", ["IBM"], 5, provider="alphavantage", fallback_provider="demo")
    (job,) = sched.get_scheduled_jobs()
    assert (job["provider"], job["fallback_provider"]) == ("alphavantage", "demo")
