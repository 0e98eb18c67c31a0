"""``--backfill`` and polling with every real provider, each against a loopback server speaking its wire format.

Each :class:`Market` below answers one provider's API (format per the provider modules' docstrings and
the real recordings in shared/data/real): it has a bar at every step its ``trading`` rule allows, with
deterministic values, serves any window it is asked for within that API's limits (Binance: 1,000
klines a request; Coinbase: 300 candles, HTTP 400 beyond; Polygon: 60 results a page, then
``next_url``; Alpha Vantage: one ``month=YYYY-MM`` a request; Yahoo: ``period1``..``period2``
inclusive; Stooq: the whole history, whatever the dates asked), and logs the bar starts it served.
A backfill must store exactly the bars of [start, end), each fetched once, and a rerun must fetch nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import unquote

import pytest

from clock import ManualClock
from db.backfill import ChunkStore
from db.ledger import RunLedger
from etl.history import Backfill
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers import get_provider_class
from etl.retry import RetryPolicy
from etl.transform import date_to_utc, zone
from support import ROOT

NY = zone("America/New_York")
KEY = "BACKFILLPROVIDERSKEY7Q"
JSON = {"Content-Type": "application/json"}


def ohlcv(symbol: str, ts: datetime) -> tuple[str, str, str, str, str]:
    """Deterministic decimal text of one bar (two decimals: exact in every wire format)."""
    p = 100 + zlib.crc32(f"{symbol}{ts.timestamp()}".encode()) % 10_000 / 100
    return f"{p:.2f}", f"{p + 0.5:.2f}", f"{p - 0.5:.2f}", f"{p + 0.25:.2f}", str(100 + int(p) % 50)


def every_minute(_ts: datetime) -> bool:
    return True


@dataclass
class Market:
    """A market of ``symbol`` with a bar every ``step`` where ``trading(ts)`` (UTC starts); logs what it serves."""

    symbol: str
    step: timedelta
    trading: object = every_minute
    served: list[datetime] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stamps(self, lo: datetime, hi: datetime) -> list[datetime]:
        """Bar starts in UTC [lo, hi], on the step's grid from the epoch."""
        step_s = int(self.step.total_seconds())
        t = datetime.fromtimestamp(-(-int(lo.timestamp()) // step_s) * step_s, UTC)
        out = []
        while t <= hi:
            if self.trading(t):
                out.append(t)
            t += self.step
        return out

    def expected(self, start: datetime, end: datetime) -> list[datetime]:
        return [t for t in self.stamps(start, end) if t < end]

    def serve(self, stamps: list[datetime]) -> list[datetime]:
        with self.lock:
            self.served.extend(stamps)
        return stamps


def weekday_session(first: tuple[int, int], last: tuple[int, int]):
    """Weekdays, bar starts from ``first`` to ``last`` (UTC hour, minute), both included."""
    return lambda t: t.weekday() < 5 and first <= (t.hour, t.minute) <= last


class AlphaVantageMarket(Market):
    def route(self, _path: str, q: dict[str, str]):
        if q.get("apikey") != KEY or q.get("symbol") != self.symbol:
            return 200, JSON, json.dumps({"Error Message": "Invalid API call."}).encode()
        if "month" in q:  # one calendar month, New York time, whole
            y, m = map(int, q["month"].split("-"))
            lo = datetime(y, m, 1, tzinfo=NY)
            hi = datetime(y + m // 12, m % 12 + 1, 1, tzinfo=NY) - timedelta(seconds=1)
            stamps = self.stamps(lo.astimezone(UTC), hi.astimezone(UTC))
        else:  # compact: the latest 100 bars
            stamps = self.stamps(datetime.now(UTC) - 60 * self.step, datetime.now(UTC))[-100:]
        series = {t.astimezone(NY).strftime("%Y-%m-%d %H:%M:%S"): dict(zip(("1. open", "2. high", "3. low", "4. close",
                  "5. volume"), ohlcv(self.symbol, t), strict=True)) for t in reversed(self.serve(stamps))}  # fmt: skip
        meta = {"1. Information": "Intraday (60min) open, high, low, close prices and volume", "2. Symbol": self.symbol,
                "3. Last Refreshed": next(iter(series), ""), "4. Interval": "60min", "5. Output Size": "Full size",
                "6. Time Zone": "US/Eastern"}  # fmt: skip
        return 200, JSON, json.dumps({"Meta Data": meta, "Time Series (60min)": series}, indent=4).encode()


@dataclass
class PolygonMarket(Market):
    page_size: int = 60

    def route(self, path: str, q: dict[str, str]):
        parts = unquote(path).split("/")  # /v2/aggs/ticker/{T}/range/{mult}/{span}/{from}/{to}
        if path.startswith("/v3/reference/tickers/"):
            return 200, JSON, json.dumps({"status": "OK", "results": {"ticker": self.symbol}}).encode()
        if len(parts) != 10 or parts[4] != self.symbol:
            return 404, JSON, b'{"status": "NOT_FOUND", "message": "Ticker not found."}'
        lo, hi = (datetime.fromtimestamp(int(x) / 1000, UTC) for x in parts[8:10])
        stamps = self.stamps(lo, hi)
        page = self.serve(stamps[: self.page_size])
        results = ",".join(
            '{"v":%s,"vw":%s,"o":%s,"c":%s,"h":%s,"l":%s,"t":%d,"n":7}' % (v, c, o, c, h, lo_, t.timestamp() * 1000)  # noqa: UP031
            for t in page
            for o, h, lo_, c, v in [ohlcv(self.symbol, t)]
        )
        body = (f'{{"ticker":"{self.symbol}","queryCount":{len(page)},"resultsCount":{len(page)},"adjusted":true,'
                f'"results":[{results}],"status":"OK","request_id":"r1","count":{len(page)}')  # fmt: skip
        if len(stamps) > self.page_size:  # the rest, on the public host: the provider keeps its own base URL
            rest = int((page[-1] + self.step).timestamp() * 1000)
            body += f',"next_url":"https://api.polygon.io/v2/aggs/ticker/{self.symbol}/range/5/minute/{rest}/{parts[9]}?cursor=x"'
        return 200, JSON, (body + "}").encode()


class BinanceMarket(Market):
    def route(self, _path: str, q: dict[str, str]):
        if q.get("symbol") != self.symbol:
            return 400, JSON, b'{"code":-1121,"msg":"Invalid symbol."}'
        limit = min(int(q.get("limit", 500)), 1000)
        if "startTime" in q:
            lo = datetime.fromtimestamp(int(q["startTime"]) / 1000, UTC)
            hi = datetime.fromtimestamp(int(q["endTime"]) / 1000, UTC) if "endTime" in q else datetime.now(UTC)
            stamps = self.stamps(lo, hi)[:limit]
        else:
            stamps = self.stamps(datetime.now(UTC) - limit * self.step, datetime.now(UTC))[-limit:]
        step_ms = int(self.step.total_seconds() * 1000)
        rows = [[int(t.timestamp() * 1000), *ohlcv(self.symbol, t), int(t.timestamp() * 1000) + step_ms - 1, "1.0", 3, "0.5",
                 "0.6", "0"] for t in self.serve(stamps)]  # fmt: skip
        return 200, JSON, json.dumps(rows).encode()


class CoinbaseMarket(Market):
    def route(self, path: str, q: dict[str, str]):
        if unquote(path) != f"/products/{self.symbol}/candles":
            return 404, JSON, b'{"message":"NotFound"}'
        lo, hi = (datetime.fromisoformat(q[k].replace("Z", "+00:00")) for k in ("start", "end"))
        if (hi - lo) / self.step > 300:
            return 400, JSON, b'{"message":"granularity too small for the requested time range. Count of aggregations ' \
                              b'requested exceeds 300"}'  # fmt: skip
        rows = [f"[{int(t.timestamp())},{lo_},{h},{o},{c},{v}]" for t in reversed(self.serve(self.stamps(lo, hi)))
                for o, h, lo_, c, v in [ohlcv(self.symbol, t)]]  # newest first  # fmt: skip
        return 200, JSON, f"[{','.join(rows)}]".encode()


class YahooMarket(Market):
    def route(self, path: str, q: dict[str, str]):
        if unquote(path) != f"/v8/finance/chart/{self.symbol}":
            return 404, JSON, b'{"chart":{"result":null,"error":{"code":"Not Found","description":"No data found"}}}'
        lo, hi = (datetime.fromtimestamp(int(q[k]), UTC) for k in ("period1", "period2"))
        stamps = self.serve(self.stamps(lo, hi))
        bars = [(int(t.timestamp()), *map(float, ohlcv(self.symbol, t)[:4]), int(ohlcv(self.symbol, t)[4])) for t in stamps]
        bars.append((int(hi.timestamp()) + 7, None, None, None, None, None))  # an all-null bar, after the window too
        bars.append((int(hi.timestamp()) + 60, 1.0, 1.0, 1.0, 1.0, 0))  # Yahoo's latest quote, after the window
        cols = list(zip(*bars, strict=True))
        quote = dict(zip(("open", "high", "low", "close", "volume"), map(list, cols[1:]), strict=True))
        meta = {"symbol": self.symbol, "exchangeTimezoneName": "America/New_York", "gmtoffset": -18000, "dataGranularity": "1m"}
        body = {"chart": {"result": [{"meta": meta, "timestamp": list(cols[0]), "indicators": {"quote": [quote]}}],
                          "error": None}}  # fmt: skip
        return 200, JSON, json.dumps(body).encode()


class StooqMarket(Market):
    """Daily bars at 00:00 New York of each weekday from :attr:`first` to today: the whole history in one CSV."""

    first = date(2023, 6, 1)

    def stamps(self, lo: datetime, hi: datetime) -> list[datetime]:
        d, out = max(self.first, lo.astimezone(NY).date()), []
        while d <= hi.astimezone(NY).date():
            t = date_to_utc(d, NY)
            if d.weekday() < 5 and lo <= t <= hi:
                out.append(t)
            d += timedelta(days=1)
        return out

    def route(self, _path: str, q: dict[str, str]):
        if q.get("s", "").lower() != self.symbol or q.get("apikey") != KEY:  # Stooq's symbols ignore case
            return 200, {"Content-Type": "text/plain"}, b"No data"
        stamps = self.serve(self.stamps(date_to_utc(self.first, NY), datetime.now(UTC)))
        lines = ["Date,Open,High,Low,Close,Volume"]
        lines += [",".join((t.astimezone(NY).date().isoformat(), *ohlcv(self.symbol, t))) for t in stamps]
        return 200, {"Content-Type": "text/csv"}, ("\r\n".join(lines) + "\r\n").encode()


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


#: provider -> (its market, interval, backfill window, the window's chunks)
CASES = {
    "alphavantage": (lambda: AlphaVantageMarket("IBM", timedelta(hours=1), weekday_session((15, 0), (20, 0))), "60min",
                     (at(2024, 1, 29), at(2024, 3, 4, 18)), 3),  # months 2024-01, 02, 03
    "polygon": (lambda: PolygonMarket("AAPL", timedelta(minutes=5), weekday_session((14, 30), (20, 55))), "5min",
                (at(2024, 3, 11), at(2024, 3, 13, 15)), 1),  # one window, 3 pages
    "binance": (lambda: BinanceMarket("BNBUSDT", timedelta(minutes=1)), "1min",
                (at(2024, 3, 11, 0, 30), at(2024, 3, 11, 0, 30) + timedelta(minutes=2500)), 3),  # 1000 + 1000 + 500
    "coinbase": (lambda: CoinbaseMarket("BTC-USD", timedelta(minutes=1), lambda t: (t.minute * 7 + t.hour) % 13 != 0), "1min",
                 (at(2024, 3, 11, 0, 7), at(2024, 3, 11, 11, 47)), 3),  # 300-candle windows; minutes without trades
    "yahoo": (lambda: YahooMarket("MSFT", timedelta(minutes=1), weekday_session((14, 30), (14, 59))), "1min",
              (at(2024, 3, 4), at(2024, 3, 14)), 2),  # 7 days + 3 days
    "stooq": (lambda: StooqMarket("aapl.us", timedelta(days=1)), "1day", (at(2024, 1, 1), at(2024, 2, 1)), 1),
}  # fmt: skip
NOW = at(2024, 3, 20)  # every window's bars complete; Yahoo's 1m bars within its 30 days


def make_provider(name: str, base: str, clock):
    cls = get_provider_class(name)
    url = f"{base}/query" if name == "alphavantage" else base
    return cls(cls.Config(base_url=url, api_key=KEY, retry=RetryPolicy(max_attempts=1)), clock=clock)


def stored(engine, provider: str) -> dict[datetime, tuple]:
    with engine.connect() as c:
        rows = c.exec_driver_sql("SELECT ts, open, high, low, close, volume FROM bars WHERE provider = %s ORDER BY ts",
                                 (provider,)).all()  # fmt: skip
    return {ts.astimezone(UTC): tuple(v) for ts, *v in rows}


@pytest.mark.parametrize("name", list(CASES))
def test_backfill_stores_exactly_the_window_fetching_each_bar_once_and_a_rerun_fetches_nothing(name, pg_engine, replay):
    make_market, interval, (start, end), chunks = CASES[name]
    market = make_market()
    srv = replay(market.route)
    clock, stop = ManualClock(NOW), threading.Event()
    provider = make_provider(name, srv.server.url, clock)
    pipeline = EtlPipeline(provider, make_loader(pg_engine), RunLedger(pg_engine), clock=clock, stop=stop)
    runner = Backfill(pipeline, ChunkStore(pg_engine, clock.now), clock=clock, stop=stop)
    plan = runner.plan([market.symbol], interval, start, end)
    assert len(plan.chunks) == chunks
    res = runner.run(plan, interval)
    want = market.expected(start, end)
    assert (res.chunks_done, res.chunks_failed, res.bars_loaded) == (chunks, 0, len(want))
    got = stored(pg_engine, name)
    assert list(got) == want and len(want) > 20
    assert got == {t: tuple(map(Decimal, ohlcv(market.symbol, t))) for t in want}
    in_window = Counter(t for t in market.served if start <= t < end)
    assert set(in_window) == set(want) and set(in_window.values()) == {1}, "each bar of the window fetched once"
    requests = len(srv.requests)
    assert requests >= {"polygon": 3}.get(name, chunks)

    again = runner.plan([market.symbol], interval, start, end)
    assert again.chunks == [] and again.already_loaded == chunks
    runner.run(again, interval)
    assert len(srv.requests) == requests and stored(pg_engine, name) == got
    provider.close()


#: provider -> (its market, trading around the clock (Stooq: weekdays), interval, env naming the loopback server)
POLLS = {
    "alphavantage": (AlphaVantageMarket("IBM", timedelta(hours=1)), "60min",
                     {"ALPHA_VANTAGE_BASE_URL": "{url}/query", "ALPHA_VANTAGE_API_KEY": KEY}),
    "polygon": (PolygonMarket("AAPL", timedelta(minutes=5), page_size=100), "5min",  # a day back: 288 bars, 3 pages
                {"POLYGON_BASE_URL": "{url}", "POLYGON_API_KEY": KEY, "POLYGON_LOOKBACK_DAYS": "1",
                 "POLYGON_RATE_LIMIT": "50/second"}),
    "binance": (BinanceMarket("BNBUSDT", timedelta(minutes=1)), "1min", {"BINANCE_BASE_URL": "{url}"}),
    "coinbase": (CoinbaseMarket("BTC-USD", timedelta(minutes=1)), "1min", {"COINBASE_BASE_URL": "{url}"}),
    "yahoo": (YahooMarket("MSFT", timedelta(minutes=5)), "5min", {"YAHOO_BASE_URL": "{url}"}),
    "stooq": (StooqMarket("aapl.us", timedelta(days=1)), "1day", {"STOOQ_BASE_URL": "{url}", "STOOQ_API_KEY": KEY}),
}  # fmt: skip
_DROPPED = ("DATABASE_URL", "ALPHA_VANTAGE", "POLYGON", "BINANCE", "COINBASE", "YAHOO", "STOOQ", "STREAM_STATE")


@pytest.mark.parametrize("mode", ["--continuous-poll"])
def test_every_provider_polls_through_main(mode, tmp_path, pg_engine, pg_url, replay):
    """One poll of each provider through main.py, the six subprocesses at once (wall clock: 24/7 markets)."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}
    procs = {}
    for name, (market, interval, env) in POLLS.items():
        symbol, url = market.symbol, replay(market.route).server.url
        child_env = {**base_env, "DATABASE_URL": pg_url, **{k: v.format(url=url) for k, v in env.items()}}
        args = [mode, "--provider", name, "--symbols", symbol, "--interval", interval, "--poll-interval", "0.01",
                "--poll-max-iterations", "1", "--exchange", "24/7"]  # fmt: skip
        procs[name] = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, env=child_env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        assert json.loads(out)["successful_cycles"] == 1, name
        got = stored(pg_engine, name)
        assert got, f"{name} stored no bars"
        market = POLLS[name][0]
        assert all(v == tuple(map(Decimal, ohlcv(market.symbol, t))) for t, v in got.items()), name
        assert set(got) <= set(market.served), name
