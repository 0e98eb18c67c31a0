"""The strategies' decisions, at instants chosen to hurt: closes, weekends, DST, holidays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clock import ManualClock
from db import RunLedger
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.demo import DemoProvider
from models.run import CycleResult, SymbolOutcome
from scheduler.calendar import Calendars
from scheduler.polling import PollingConfig, PollingManager
from scheduler.strategies import AdaptiveStrategy, MarketHoursStrategy, adapt_interval

CALS = Calendars()


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


def cycle(at: str, *loaded: int, throttled: bool = False) -> CycleResult:
    c = CycleResult(job_name="j", provider="demo", started_at=utc(at))
    c.outcomes = [SymbolOutcome(f"S{i}", rows_loaded=n) for i, n in enumerate(loaded)]
    if throttled:
        c.outcomes.append(SymbolOutcome("T", error="throttled", transient=True))
    return c


def market_hours(minutes=5.0, sessions=("regular",), exchange="XNYS"):
    cfg = PollingConfig(interval_minutes=minutes, symbols=("IBM",), sessions=sessions, exchange=exchange)
    return MarketHoursStrategy(cfg, CALS.get(exchange))


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (None, "2024-03-11T15:00:00Z", "2024-03-11T15:00:00Z"),  # inside the session: at once
        (None, "2024-03-11T12:00:00Z", "2024-03-11T13:30:00Z"),  # pre-market: wait for the 09:30 EDT open
        ("2024-03-11T15:00:00Z", "2024-03-11T15:01:00Z", "2024-03-11T15:05:00Z"),  # fixed rate
        ("2024-03-11T19:55:00Z", "2024-03-11T19:56:00Z", "2024-03-11T20:00:00Z"),  # the close itself: last bar
        ("2024-03-11T20:00:00Z", "2024-03-11T20:00:05Z", "2024-03-12T13:30:00Z"),  # after the close: next open
        ("2024-03-08T21:00:00Z", "2024-03-08T21:00:01Z", "2024-03-11T13:30:00Z"),  # Friday EST -> Monday EDT
        ("2024-11-01T20:00:00Z", "2024-11-01T20:00:01Z", "2024-11-04T14:30:00Z"),  # Friday EDT -> Monday EST
        ("2024-07-03T17:00:00Z", "2024-07-03T17:00:01Z", "2024-07-05T13:30:00Z"),  # early close, holiday
        ("2024-11-29T17:55:00Z", "2024-11-29T17:56:00Z", "2024-11-29T18:00:00Z"),  # early close at 13:00 EST
        (None, "2024-03-09T12:00:00Z", "2024-03-11T13:30:00Z"),  # Saturday
    ],
)
def test_market_hours_next_poll(last, now, expected):
    prev = cycle(last) if last else None
    assert market_hours().next_poll(prev, utc(now)) == utc(expected)


def test_market_hours_with_extended_sessions_runs_into_the_night_utc():
    s = market_hours(minutes=30, sessions=("pre", "regular", "post"))
    assert s.next_poll(cycle("2024-03-11T23:30:00Z"), utc("2024-03-11T23:31:00Z")) == utc("2024-03-12T00:00:00Z")
    assert s.next_poll(cycle("2024-03-12T00:00:00Z"), utc("2024-03-12T00:00:01Z")) == utc("2024-03-12T08:00:00Z")


def test_market_hours_xwar_after_the_eu_switch():
    s = market_hours(exchange="XWAR")
    assert s.next_poll(cycle("2024-03-28T16:00:00Z"), utc("2024-03-28T16:00:01Z")) == utc("2024-04-02T07:00:00Z")


def test_market_hours_24_7_never_waits_for_an_open():
    s = market_hours(minutes=1, exchange="24/7")
    assert s.next_poll(cycle("2024-03-10T06:59:00Z"), utc("2024-03-10T06:59:30Z")) == utc("2024-03-10T07:00:00Z")


@pytest.mark.parametrize(
    ("loaded", "throttled", "expected"),
    [((5, 3), False, 150.0), ((0, 0), False, 600.0), ((5, 0), False, 300.0), ((5, 5), True, 600.0), ((), True, 600.0)],
)
def test_adapt_interval(loaded, throttled, expected):
    got = adapt_interval(300.0, cycle("2024-03-11T15:00:00Z", *loaded, throttled=throttled), min_seconds=60, max_seconds=2400)
    assert got == expected


def test_adapt_interval_is_bounded():
    busy = cycle("2024-03-11T15:00:00Z", 5)
    idle = cycle("2024-03-11T15:00:00Z", 0)
    assert adapt_interval(70.0, busy, min_seconds=60, max_seconds=2400) == 60
    assert adapt_interval(2000.0, idle, min_seconds=60, max_seconds=2400) == 2400


def test_adaptive_next_poll_by_session():
    cfg = PollingConfig(interval_minutes=4, symbols=("IBM",), sessions=("pre", "regular", "post"))
    s = AdaptiveStrategy(cfg, CALS.get("XNYS"))
    regular = cycle("2024-03-11T15:00:00Z", 1)
    assert s.next_poll(regular, utc("2024-03-11T15:00:10Z")) == utc("2024-03-11T15:04:00Z")
    pre = cycle("2024-03-11T12:00:00Z", 1)
    assert s.next_poll(pre, utc("2024-03-11T12:00:10Z")) == utc("2024-03-11T12:08:00Z")  # thin session: x2
    s.observe(cycle("2024-03-11T15:00:00Z", 0))  # nothing new: 4 -> 8 minutes
    assert s.next_poll(regular, utc("2024-03-11T15:00:10Z")) == utc("2024-03-11T15:08:00Z")
    # closed on Saturday: every max interval (32 min), not waiting idle until Monday
    sat = cycle("2024-03-09T12:00:00Z", 0)
    assert s.next_poll(sat, utc("2024-03-09T12:00:10Z")) == utc("2024-03-09T12:32:00Z")
    # closed 20 minutes before pre-market opens: at the open
    night = cycle("2024-03-11T07:40:00Z", 0)
    assert s.next_poll(night, utc("2024-03-11T07:40:10Z")) == utc("2024-03-11T08:00:00Z")


def test_market_hours_poll_sleeps_across_the_weekend_and_wakes_at_the_open(sqlite_engine):
    clock = ManualClock(utc("2024-03-08T20:58:00Z"))  # Friday 15:58 EST
    with DemoProvider(clock=clock) as provider:
        pipeline = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), clock=clock)
        manager = PollingManager(pipeline, calendars=CALS)
        results = manager.market_hours_polling(PollingConfig(interval_minutes=1, max_iterations=5, symbols=("IBM",)))
    starts = [c["started_at"] for c in _cycles(sqlite_engine)]
    assert starts == ["2024-03-08 20:58", "2024-03-08 20:59", "2024-03-08 21:00", "2024-03-11 13:30", "2024-03-11 13:31"]
    assert results["successful_cycles"] == 5
    # no busy waiting: the weekend was slept in a handful of bounded slices, ending exactly at the open
    weekend = [s for s in clock.sleeps if s > 60]
    assert sum(weekend) == pytest.approx((utc("2024-03-11T13:30:00Z") - utc("2024-03-08T21:00:00Z")).total_seconds())
    assert len(clock.sleeps) < 300 and max(clock.sleeps) <= 900
    assert results["intervals_seconds"][2] == (utc("2024-03-11T13:30:00Z") - utc("2024-03-08T21:00:00Z")).total_seconds()


def _cycles(engine):
    with engine.connect() as c:
        rows = c.exec_driver_sql("SELECT started_at FROM etl_runs ORDER BY id").all()
    return [{"started_at": str(r[0])[:16]} for r in rows]


def test_interval_seconds_are_recorded_for_adaptive(sqlite_engine):
    clock = ManualClock(utc("2024-03-11T15:00:00Z"))
    with DemoProvider(clock=clock) as provider:
        pipeline = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), clock=clock)
        results = PollingManager(pipeline, calendars=CALS).adaptive_polling(
            PollingConfig(interval_minutes=1, max_iterations=4, symbols=("IBM",), min_interval_minutes=0.5)
        )
    # first poll loads 100 new bars (1 min -> 30 s); the demo adds a 5-min bar only every 5 minutes,
    # so the next polls bring nothing new and the interval doubles
    assert results["intervals_seconds"] == [30.0, 60.0, 120.0]
    assert results["strategy"] == "adaptive"
    assert timedelta(seconds=sum(results["intervals_seconds"])) == utc(results["end_time"]) - utc(results["start_time"])
