"""Catch-up after downtime (issue #9): a stale series' hole is filled in the same cycle, for every provider;
then the named jobs' coverage in /metrics and /status.

The loopback servers below answer in each provider's documented wire format (Coinbase candles,
Binance klines, Polygon aggregates) for any window, from a deterministic price per bar start, and
serve only bars that exist at the test's fixed "now" (and, for the stock, only inside XNYS's
regular sessions, from the calendar). Every request is logged, so the tests see which windows
were asked for.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from clock import ManualClock
from db import RunLedger
from db.coverage import CoverageLedger
from db.jobs import JobDefinition, JobStore
from db.tables import bars
from etl import metrics
from etl.history import catch_up_window
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.providers.binance import BinanceConfig, BinanceProvider
from etl.providers.coinbase import CoinbaseProvider
from etl.providers.polygon import PolygonConfig, PolygonProvider
from etl.providers.yahoo import YahooProvider
from etl.redact import Redactor
from etl.retry import RetryPolicy
from reports.coverage_status import CoverageMonitor
from scheduler.calendar import Calendars, Session

NOW = datetime(2024, 3, 14, 18, 0, tzinfo=UTC)  # Thursday, 14:00 New York
STALE = NOW - timedelta(days=3)  # the watermark: Monday 14:00 New York
JSON = {"Content-Type": "application/json"}
REGULAR = frozenset({Session.REGULAR})
NO_RETRY = RetryPolicy(max_attempts=1)


def price(t: int) -> str:
    """A deterministic price for the bar starting at Unix second ``t``."""
    return f"{100 + (t // 60) % 97 / 10:.2f}"


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _iso(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def coinbase_route(gaps: frozenset[int] = frozenset()):
    """``GET /products/{id}/candles``: start and end inclusive, at most 300 buckets, newest first,
    ``[time, low, high, open, close, volume]``; buckets starting at ``gaps`` (Unix s) have no trades."""

    def route(path: str, q: dict[str, str]):
        step = int(q["granularity"])
        lo, hi = _iso(q["start"]), min(_iso(q["end"]), int(NOW.timestamp()) - step)
        if (_iso(q["end"]) - lo) / step > 300:
            return 400, JSON, b'{"message":"granularity too small for the requested time range"}'
        first = lo + (-lo % step)
        rows = [[t, float(price(t)) - 0.5, float(price(t)) + 0.5, float(price(t)), float(price(t)), 12.5]
                for t in range(first, hi + 1, step) if t not in gaps]  # fmt: skip
        return 200, JSON, json.dumps(rows[::-1]).encode()

    return route


def binance_route(path: str, q: dict[str, str]):
    """``GET /api/v3/klines``: startTime/endTime inclusive on the open time; with startTime the first
    ``limit`` klines from it, else the latest ``limit`` (the newest still forming is left out here)."""
    step = 60_000
    limit = int(q.get("limit", 500))
    newest = _ms(NOW) - step
    lo = int(q.get("startTime", newest - (limit - 1) * step))
    hi = min(int(q.get("endTime", newest)), newest)
    first = lo + (-lo % step)
    opens = list(range(first, hi + 1, step))[:limit]
    rows = [[o, price(o // 1000), price(o // 1000), price(o // 1000), price(o // 1000), "3.5", o + step - 1, "1.0", 7, "1.0",
             "1.0", "0"] for o in opens]  # fmt: skip
    return 200, JSON, json.dumps(rows).encode()


def polygon_route(calendars: Calendars):
    """``GET /v2/aggs/ticker/{T}/range/5/minute/{from_ms}/{to_ms}``: 5-minute bars of XNYS's regular sessions."""
    cal = calendars.get("XNYS")

    def route(path: str, q: dict[str, str]):
        parts = path.split("/")
        ticker, lo, hi = parts[4], int(parts[8]) // 1000, int(parts[9]) // 1000
        results = []
        d = datetime.fromtimestamp(lo, UTC).date() - timedelta(days=1)
        while d <= datetime.fromtimestamp(hi, UTC).date():
            td = cal.trading_day(d)
            if td is not None:
                t = int(td.open.timestamp())
                while t < int(td.close.timestamp()) and t + 300 <= NOW.timestamp():
                    if lo <= t <= hi:
                        results.append({"v": 1000, "vw": 1.0, "o": float(price(t)), "c": float(price(t)),
                                        "h": float(price(t)) + 1, "l": float(price(t)) - 1, "t": t * 1000, "n": 9})  # fmt: skip
                    t += 300
            d += timedelta(days=1)
        body = {"ticker": ticker, "queryCount": len(results), "resultsCount": len(results), "adjusted": True,
                "results": results, "status": "OK", "request_id": "x", "count": len(results)}  # fmt: skip
        return 200, JSON, json.dumps(body).encode()

    return route


@pytest.fixture(scope="module")
def calendars() -> Calendars:
    return Calendars()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def pipeline(engine, provider, clock, listeners=()) -> EtlPipeline:
    redactor = Redactor()
    return EtlPipeline(provider, make_loader(engine), RunLedger(engine, redactor), clock=clock, redact=redactor,
                       listeners=listeners)  # fmt: skip


def seed(engine, provider: str, symbol: str, interval: str, starts) -> None:
    """Bars already stored before the downtime (the loader's rows, written directly)."""
    rows = [{"provider": provider, "symbol": symbol, "interval": interval, "ts": ts, "open": "1", "high": "1", "low": "1",
             "close": "1", "volume": "1", "ingested_at": STALE} for ts in starts]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(bars), rows)


def minutes(start: datetime, end: datetime, step: int = 60) -> list[datetime]:
    return [start + timedelta(seconds=s) for s in range(0, int((end - start).total_seconds()), step)]


def coverage(engine, calendars, provider, symbols, interval, start, exchange):
    ledger = CoverageLedger(engine, calendars, ManualClock(NOW))
    return ledger.compute(provider, symbols, interval, start, NOW.date(), exchange=exchange, sessions=REGULAR)


# -- the reach each provider declares, and the decision (pure) -------------------------------------


def test_each_provider_declares_how_far_one_ordinary_request_reaches(clock):
    coinbase = CoinbaseProvider(clock=clock)
    assert coinbase.latest_reach("1min") == timedelta(minutes=300)  # 300 candles a request
    assert coinbase.latest_reach("1day") == timedelta(days=300)
    assert BinanceProvider(clock=clock).latest_reach("1min") == timedelta(minutes=1000)  # one page of `limit` klines
    assert BinanceProvider(BinanceConfig(limit=100), clock=clock).latest_reach("5min") == timedelta(minutes=500)
    polygon = PolygonProvider(PolygonConfig(api_key="k"), clock=clock)
    assert polygon.latest_reach("5min") == timedelta(minutes=50_000)  # `limit` base aggregates (minutes)
    av = AlphaVantageProvider(AlphaVantageConfig(api_key="k"), clock=clock)
    assert av.latest_reach("5min") == timedelta(days=29)  # compact, then outputsize=full: the trailing 30 days
    assert av.latest_reach("1day") is None  # daily full: 20+ years
    yahoo = YahooProvider(clock=clock)
    assert yahoo.latest_reach("1min") == timedelta(days=7, hours=-1)  # 7 days a 1m request, less the margin
    assert yahoo.latest_reach("1day") is None


def test_catch_up_window_only_for_a_watermark_beyond_reach(clock):
    coinbase = CoinbaseProvider(clock=clock)
    assert catch_up_window(coinbase, "1min", STALE, NOW) == (STALE, NOW)
    assert catch_up_window(coinbase, "1min", NOW - timedelta(minutes=300), NOW) is None  # the ordinary request reaches it
    assert catch_up_window(coinbase, "1min", None, NOW) is None  # never loaded: the ordinary request only
    assert catch_up_window(polygon := PolygonProvider(PolygonConfig(api_key="k"), clock=clock), "5min", STALE, NOW) is None
    assert catch_up_window(polygon, "5min", NOW - timedelta(days=40), NOW) == (NOW - timedelta(days=40), NOW)
    # a hole longer than a cycle catches up is cut to its newest max_bars intervals (the rest: --fill-gaps)
    assert catch_up_window(coinbase, "1min", STALE, NOW, max_bars=60) == (NOW - timedelta(hours=1), NOW)
    assert catch_up_window(polygon, "5min", NOW - timedelta(days=400), NOW) == (NOW - timedelta(minutes=5 * 50_000), NOW)


# -- one cycle fills a 3-day hole ----------------------------------------------------------------------


def test_a_series_three_days_stale_is_filled_in_one_cycle_for_every_provider(pg_engine, replay, calendars, clock):
    day0 = STALE.date()
    seeded_crypto = minutes(datetime(2024, 3, 11, tzinfo=UTC), STALE + timedelta(minutes=1))
    cb_srv, bn_srv, pg_srv = replay(coinbase_route()), replay(binance_route), replay(polygon_route(calendars))

    # Coinbase: 300 candles reach 5 hours; the 3-day hole is fetched as windows first
    seed(pg_engine, "coinbase", "BTC-USD", "1min", seeded_crypto)
    cb = CoinbaseProvider(CoinbaseProvider.Config(base_url=cb_srv.server.url, retry=NO_RETRY), clock=clock)
    cycle = pipeline(pg_engine, cb, clock).run_cycle(["BTC-USD"], "1min", job_name="cb")
    assert cycle.status.value == "succeeded" and cycle.outcomes[0].ok
    windows = [(q["start"], q["end"]) for _, q in cb_srv.requests]
    assert windows[0] == ("2024-03-11T18:00:00Z", "2024-03-11T22:59:59Z")  # from the watermark, 300 buckets
    assert len(windows) == 15 + 1  # 4,320 minutes in windows of 300, then the ordinary request
    assert windows[-1][1] == "2024-03-14T18:00:00Z"

    # Binance: a page of 1,000 klines reaches 16 h 40 min; the hole is fetched in windows of 1,000 first
    seed(pg_engine, "binance", "BTCUSDT", "1min", seeded_crypto)
    bn = BinanceProvider(BinanceConfig(base_url=bn_srv.server.url, retry=NO_RETRY), clock=clock)
    assert pipeline(pg_engine, bn, clock).run_cycle(["BTCUSDT"], "1min", job_name="bn").status.value == "succeeded"
    asked = [(int(q["startTime"]), q.get("endTime")) for _, q in bn_srv.requests]
    assert asked[0] == (_ms(STALE), str(_ms(STALE) + 1000 * 60_000 - 1)) and len(asked) == 5 + 1
    assert asked[-1][1] is None  # then the ordinary request, from the newest bar of the hole

    # Polygon: 50,000 base minutes reach 34 days: its one ordinary request spans the hole
    td = calendars.get("XNYS").trading_day(day0)
    seed(pg_engine, "polygon", "AAPL", "5min", minutes(td.open, STALE + timedelta(minutes=5), 300))
    pg = PolygonProvider(PolygonConfig(api_key="k", base_url=pg_srv.server.url, retry=NO_RETRY), clock=clock)
    assert pipeline(pg_engine, pg, clock).run_cycle(["AAPL"], "5min", job_name="pg").status.value == "succeeded"
    assert len(pg_srv.requests) == 1

    crypto = [r for p, s in (("coinbase", "BTC-USD"), ("binance", "BTCUSDT"))
              for r in coverage(pg_engine, calendars, p, [s], "1min", day0, "24/7")]  # fmt: skip
    stock = coverage(pg_engine, calendars, "polygon", ["AAPL"], "5min", day0, "XNYS")
    crypto_days = [(date(2024, 3, d), 1440, 0) for d in (11, 12, 13)] + [(date(2024, 3, 14), 1080, 0)]  # to 18:00 UTC
    stock_days = [(date(2024, 3, d), 78, 0) for d in (11, 12, 13)] + [(date(2024, 3, 14), 54, 0)]  # to 14:00 New York
    assert [(r.session_date, r.expected, r.missing) for r in crypto] == 2 * crypto_days
    assert [(r.session_date, r.expected, r.missing) for r in stock] == stock_days


def test_a_series_within_reach_or_never_loaded_gets_the_ordinary_request_only(pg_engine, replay, clock):
    srv = replay(coinbase_route())
    seed(pg_engine, "coinbase", "BTC-USD", "1min", [NOW - timedelta(hours=2)])
    cb = CoinbaseProvider(CoinbaseProvider.Config(base_url=srv.server.url, retry=NO_RETRY), clock=clock)
    cycle = pipeline(pg_engine, cb, clock).run_cycle(["BTC-USD", "ETH-USD"], "1min", job_name="cb")
    assert cycle.status.value == "succeeded"
    assert sorted(q["start"] for _, q in srv.requests) == ["2024-03-14T13:01:00Z", "2024-03-14T16:00:00Z"]
    assert {o.symbol: o.rows_loaded for o in cycle.outcomes} == {"BTC-USD": 120, "ETH-USD": 299}


# -- coverage after each named-job cycle: /metrics and /status ------------------------------------------


def test_named_job_coverage_in_metrics_and_status(pg_engine, replay, calendars, clock):
    hole = datetime(2024, 3, 14, 10, 0, tzinfo=UTC)
    gaps = frozenset(int((hole + timedelta(minutes=m)).timestamp()) for m in range(3))
    srv = replay(coinbase_route(gaps))
    for sym in ("BTC-USD", "ETH-USD"):  # loaded until 17:00, ETH-USD without 10:00-10:02 today
        stored = minutes(datetime(2024, 3, 13, tzinfo=UTC), NOW - timedelta(hours=1))
        seed(pg_engine, "coinbase", sym, "1min", [t for t in stored if sym == "BTC-USD" or int(t.timestamp()) not in gaps])
    store = JobStore(pg_engine)
    store.put(JobDefinition("crypto", "regular", "24/7", "coinbase", ("BTC-USD", "ETH-USD"), 1.0, "1min"), NOW)
    monitor = CoverageMonitor(lambda: CoverageLedger(pg_engine, calendars, clock), store.all)
    cb = CoinbaseProvider(CoinbaseProvider.Config(base_url=srv.server.url, retry=NO_RETRY), clock=clock)
    pipe = pipeline(pg_engine, cb, clock, listeners=[monitor])

    pipe.run_cycle(["BTC-USD"], "1min", job_name="not-a-job")  # polling: no check
    assert monitor.coverage_status() == {"coverage": {"missing_by_job": {}, "checked_at": {}, "worst": []}}
    pipe.run_cycle(["BTC-USD", "ETH-USD"], "1min", job_name="crypto")

    text = generate_latest(metrics.REGISTRY).decode()
    assert 'marketpoll_missing_bars{job="crypto"} 3.0' in text
    status = monitor.coverage_status()["coverage"]
    assert status["missing_by_job"] == {"crypto": 3} and status["checked_at"] == {"crypto": NOW.isoformat()}
    assert [(w["job"], w["symbol"], w["session_date"], w["missing"], w["first_missing"]) for w in status["worst"]] == [
        ("crypto", "ETH-USD", "2024-03-14", 3, hole.isoformat())
    ]

    seed(pg_engine, "coinbase", "ETH-USD", "1min", [hole + timedelta(minutes=m) for m in range(3)])  # the hole filled
    pipe.run_cycle(["BTC-USD", "ETH-USD"], "1min", job_name="crypto")
    assert 'marketpoll_missing_bars{job="crypto"} 0.0' in generate_latest(metrics.REGISTRY).decode()
    assert monitor.coverage_status()["coverage"]["worst"] == []


def test_catch_up_windows_without_data_become_no_data_not_missing(pg_engine, replay, calendars, clock):
    """A thin pair: no trade for the first 300 minutes after the watermark. Coinbase answers that window
    with ``[]``; the job's check records it as no data, so it is not fetched forever as missing."""
    since = NOW - timedelta(hours=6)
    quiet = frozenset(int((since + timedelta(minutes=m)).timestamp()) for m in range(300))
    srv = replay(coinbase_route(quiet))
    seed(pg_engine, "coinbase", "SOL-USD", "1min", minutes(datetime(2024, 3, 13, tzinfo=UTC), since + timedelta(minutes=1)))
    store = JobStore(pg_engine)
    store.put(JobDefinition("thin", "regular", "24/7", "coinbase", ("SOL-USD",), 1.0, "1min"), NOW)
    monitor = CoverageMonitor(lambda: CoverageLedger(pg_engine, calendars, clock), store.all)
    cb = CoinbaseProvider(CoinbaseProvider.Config(base_url=srv.server.url, retry=NO_RETRY), clock=clock)
    cycle = pipeline(pg_engine, cb, clock, listeners=[monitor]).run_cycle(["SOL-USD"], "1min", job_name="thin")
    assert cycle.outcomes[0].no_data == [(since, since + timedelta(minutes=300))]
    (today,) = [r for r in monitor.check(store.all()[0]) if r.session_date == NOW.date()]
    assert (today.expected, today.loaded, today.no_data, today.missing) == (1080, 1080 - 299, 299, 0)
    assert monitor.coverage_status()["coverage"]["missing_by_job"] == {"thin": 0}
