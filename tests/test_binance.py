"""Binance spot klines (etl/providers/binance.py): the wire contract over loopback HTTP on our own
fixtures (tests/fixtures/binance/), the parser on the real recordings, paging, errors, and the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from clock import ManualClock
from contract import WireContract
from errors import ConfigError, HTTPError, InvalidSymbol, PayloadError, RateLimited
from etl.providers import get_provider_class
from etl.providers.base import provider_config
from etl.providers.binance import (
    BAD_TIMESTAMP,
    BINANCE_INTERVALS,
    CLOSE_MISMATCH,
    MALFORMED_RECORD,
    MISSING_FIELD,
    OFF_GRID,
    BinanceConfig,
    BinanceProvider,
    parse_klines,
)
from etl.ratelimit import parse_rates
from etl.retry import RetryPolicy
from etl.transform import validate_bars
from settings import Settings
from support import ROOT, fixture, real

SYMBOL = "BNBUSDT"
MINUTE_START = datetime(2024, 3, 11, 12, 0, tzinfo=UTC)  # first kline of klines_BNBUSDT_1m.json (300 of them)
DAY_START = datetime(2024, 1, 1, tzinfo=UTC)  # first kline of klines_BNBUSDT_1d.json (60 of them)
KLINES = "/api/v3/klines"
JSON = {"Content-Type": "application/json;charset=UTF-8"}
FIXTURES = {"1m": "binance/klines_BNBUSDT_1m.json", "1d": "binance/klines_BNBUSDT_1d.json"}


def ms(ts: datetime) -> int:
    return int(ts.timestamp()) * 1000


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def select(rows: list[list], q: dict[str, str], *, cap: int = 1000) -> list[list]:
    """Binance's documented selection: startTime/endTime inclusive on the open time; with startTime the
    first ``limit`` klines from it, otherwise the most recent ``limit``. ``cap``: a gateway's own maximum."""
    limit = min(int(q.get("limit", 500)), 1000, cap)
    lo, hi = int(q.get("startTime", -1)), int(q.get("endTime", 2**62))
    rows = [r for r in rows if lo <= r[0] <= hi]
    return rows[:limit] if "startTime" in q else rows[-limit:]


def binance_route(*, cap: int = 1000):
    """A replay route answering like api.binance.com from our fixtures (loaded once, here, not in the handler)."""
    data = {interval: json.loads(fixture(name)) for interval, name in FIXTURES.items()}
    invalid, throttled, banned = (fixture(f"binance/{n}.json") for n in ("error_invalid_symbol", "error_too_many_requests",
                                                                          "error_ip_banned"))  # fmt: skip

    def route(path: str, q: dict[str, str]):
        if path != KLINES:
            return 404, {"Content-Type": "text/html"}, b"<html>Not Found</html>"
        symbol = q.get("symbol", "")
        if symbol == "THROTTLED":
            return 429, {**JSON, "Retry-After": "7"}, throttled
        if symbol == "BANNED":
            return 418, {**JSON, "Retry-After": "120"}, banned
        if symbol == "BANNEDNOHEADER":
            return 418, JSON, banned
        if symbol == "LOOPY":  # a broken API: ignores startTime, always the same first page
            return 200, JSON, json.dumps(data["1m"][:50]).encode()
        if symbol != SYMBOL:
            return 400, JSON, invalid
        if q.get("interval") not in data:
            return 400, JSON, b'{"code":-1120,"msg":"Invalid interval."}'
        return 200, JSON, json.dumps(select(data[q["interval"]], q, cap=cap)).encode()

    return route


ROUTE = binance_route()


def make(base_url: str, clock=None, **kw) -> BinanceProvider:
    cfg = BinanceConfig(base_url=base_url, retry=RetryPolicy(max_attempts=1), **kw)
    return BinanceProvider(cfg, clock=clock or ManualClock(MINUTE_START + timedelta(days=1)))


class TestBinanceContract(WireContract):
    GOOD_SYMBOL, INTERVAL = SYMBOL, "1min"
    KEY = None  # public market data: Binance needs no key
    NOW = MINUTE_START + timedelta(minutes=300)
    PARTIAL_NOW = MINUTE_START + timedelta(minutes=299, seconds=30)
    UNKNOWN_SYMBOL = "NOSUCHSYM"
    LOOPING_SYMBOL = "LOOPY"
    WINDOW = (MINUTE_START + timedelta(minutes=10), MINUTE_START + timedelta(minutes=75))

    def make(self, base_url, clock, include_partial_bars=False):
        return make(base_url, clock, include_partial_bars=include_partial_bars)

    def symbol_of(self, path, query):
        return query.get("symbol", "")

    def route(self, path, query):
        return ROUTE(path, query)

    def shuffled(self, body):
        rows = json.loads(body)
        random.Random(7).shuffle(rows)
        return json.dumps(rows + rows[:3]).encode()

    def test_the_looping_symbol_really_asks_for_a_second_page(self, provider, server):
        start, end = self.WINDOW
        provider.fetch_range(self.LOOPING_SYMBOL, self.INTERVAL, start, end)
        starts = [q["startTime"] for _, q in server.requests]
        assert starts == [str(ms(start)), str(ms(MINUTE_START + timedelta(minutes=50)))]


# -- declaration and requests -------------------------------------------------------------------


def test_declaration():
    assert get_provider_class("binance") is BinanceProvider
    assert BINANCE_INTERVALS == {"1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "1h", "1day": "1d"}
    assert BinanceProvider.default_base_url == "https://api.binance.com" and BinanceProvider.key_required is False
    assert [str(r) for r in parse_rates(BinanceProvider.default_rate_limit)] == ["10/second", "600/minute"]
    # 600 requests x weight 2 = 1,200 of Binance's 6,000 weight per minute per IP
    assert 600 * 2 <= 6000 // 5


def test_settings_from_the_environment():
    env = {"BINANCE_BASE_URL": "http://127.0.0.1:1", "BINANCE_LIMIT": "250", "BINANCE_RATE_LIMIT": "2/second"}
    cfg = provider_config(BinanceProvider, Settings.from_env(env))
    assert (cfg.base_url, cfg.limit, cfg.rate_limit) == ("http://127.0.0.1:1", 250, "2/second")
    assert BinanceProvider(cfg).rate_limit() == "2/second"
    for bad in ("0", "1001", "many"):
        with pytest.raises(ConfigError) as info:
            provider_config(BinanceProvider, Settings.from_env({"BINANCE_LIMIT": bad}))
        assert info.value.name == "BINANCE_LIMIT"


def test_request_parameters(replay):
    srv = replay(binance_route())
    with make(srv.server.url) as p, pytest.raises(HTTPError) as info:
        p.fetch_bars(SYMBOL, "60min")  # our server has no 1h fixture: it answers -1120 like Binance
    assert srv.requests == [(KLINES, {"symbol": SYMBOL, "interval": "1h", "limit": "1000"})]
    assert info.value.transient is False and "-1120" in str(info.value)


def test_latest_without_watermark_is_one_request_for_the_newest_klines(replay):
    srv = replay(binance_route())
    with make(srv.server.url) as p:
        result = p.fetch_bars(SYMBOL, "1min")
    assert srv.requests == [(KLINES, {"symbol": SYMBOL, "interval": "1m", "limit": "1000"})]
    assert len(result.bars) == 300 and result.bars[0].ts == MINUTE_START


def test_latest_with_watermark_starts_there_and_follows_full_pages(replay):
    srv = replay(binance_route())
    with make(srv.server.url, limit=100) as p:
        result = p.fetch_bars(SYMBOL, "1min", since=MINUTE_START)
        starts = [q["startTime"] for _, q in srv.requests]
        assert starts == [str(ms(MINUTE_START + timedelta(minutes=m))) for m in (0, 100, 200, 300)]
        assert all("endTime" not in q for _, q in srv.requests)
        assert [b.ts for b in result.bars] == [MINUTE_START + timedelta(minutes=m) for m in range(300)]
        srv.requests.clear()
        recent = p.fetch_bars(SYMBOL, "1min", since=MINUTE_START + timedelta(minutes=270))
    assert len(srv.requests) == 1 and len(recent.bars) == 30  # a page that is not full is the newest


def test_range_is_chunked_by_limit_with_inclusive_end_time(replay):
    srv = replay(binance_route())
    start, end = MINUTE_START, MINUTE_START + timedelta(minutes=300)
    with make(srv.server.url, limit=100) as p:
        result = p.fetch_range(SYMBOL, "1min", start, end)
    chunks = [(int(q["startTime"]), int(q["endTime"])) for _, q in srv.requests]
    edges = [ms(start + timedelta(minutes=m)) for m in (0, 100, 200, 300)]
    assert chunks == [(edges[i], edges[i + 1] - 1) for i in range(3)]
    assert [b.ts for b in result.bars] == [start + timedelta(minutes=m) for m in range(300)]
    assert result.no_data == []


def test_range_start_off_the_grid_asks_from_the_next_bar(replay):
    srv = replay(binance_route())
    start, end = MINUTE_START + timedelta(minutes=5, seconds=30), MINUTE_START + timedelta(minutes=9)
    with make(srv.server.url) as p:
        bars = p.fetch_range(SYMBOL, "1min", start, end).bars
    assert srv.requests[0][1]["startTime"] == str(ms(MINUTE_START + timedelta(minutes=6)))
    assert [b.ts for b in bars] == [MINUTE_START + timedelta(minutes=m) for m in (6, 7, 8)]


def test_a_gateway_returning_short_pages_is_followed_to_the_end_of_the_window(replay):
    srv = replay(binance_route(cap=40))
    start, end = MINUTE_START + timedelta(minutes=10), MINUTE_START + timedelta(minutes=110)
    with make(srv.server.url) as p:
        bars = p.fetch_range(SYMBOL, "1min", start, end).bars
    starts = [int(q["startTime"]) for _, q in srv.requests]
    assert starts == [ms(start + timedelta(minutes=m)) for m in (0, 40, 80)]  # last open + interval
    assert {q["endTime"] for _, q in srv.requests} == {str(ms(end) - 1)}
    assert [b.ts for b in bars] == [start + timedelta(minutes=m) for m in range(100)]


def test_window_reaching_past_the_data_stops_at_an_empty_page_and_records_no_data(replay):
    srv = replay(binance_route())
    start, end = MINUTE_START + timedelta(minutes=250), MINUTE_START + timedelta(minutes=360)
    with make(srv.server.url) as p:
        result = p.fetch_range(SYMBOL, "1min", start, end)
    assert len(result.bars) == 50 and len(srv.requests) == 2
    assert result.no_data == [(MINUTE_START + timedelta(minutes=300), end)]


def test_an_empty_window_is_no_data_not_an_error(replay):
    srv = replay(binance_route())
    start = datetime(2020, 1, 1, tzinfo=UTC)
    with make(srv.server.url) as p:
        result = p.fetch_range(SYMBOL, "1min", start, start + timedelta(hours=1))
    assert result.bars == [] and result.no_data == [(start, start + timedelta(hours=1))] and len(srv.requests) == 1


# -- daily bars -----------------------------------------------------------------------------------


def test_daily_klines_start_at_utc_midnight(replay):
    srv = replay(binance_route())
    with make(srv.server.url, clock=ManualClock(DAY_START + timedelta(days=60))) as p:
        result = p.fetch_bars(SYMBOL, "1day")
        window = p.fetch_range(SYMBOL, "1day", DAY_START + timedelta(days=3), DAY_START + timedelta(days=5))
    assert srv.requests[0][1]["interval"] == "1d"
    assert [b.ts for b in result.bars] == [DAY_START + timedelta(days=d) for d in range(60)]
    assert all(b.ts.hour == 0 and b.ts.minute == 0 and b.ts.tzinfo is UTC for b in result.bars)
    assert [b.ts for b in window.bars] == [DAY_START + timedelta(days=3), DAY_START + timedelta(days=4)]


def test_a_daily_kline_not_at_utc_midnight_is_rejected_not_moved():
    day = 86_400_000
    shifted = ms(datetime(2024, 3, 10, 16, 0, tzinfo=UTC))  # bucketed in UTC+8 (timeZone=8): not a UTC day
    body = json.dumps([[shifted, "1.0", "1.1", "0.9", "1.05", "10", shifted + day - 1, "10.5", 3, "5", "5.2", "0"]]).encode()
    page = parse_klines(body, symbol=SYMBOL, interval="1day")
    assert page.bars == [] and [(r.key, r.reason) for r in page.rejected] == [(str(shifted), OFF_GRID)]


# -- the parser -----------------------------------------------------------------------------------


def kline(t: datetime, step_ms: int = 60_000, *values) -> list:
    o, h, lo, c, v = values or ("1.00000000", "1.20000000", "0.90000000", "1.10000000", "5.00000000")
    return [ms(t), o, h, lo, c, v, ms(t) + step_ms - 1, "5.50000000", 7, "2.00000000", "2.20000000", "0"]


def test_fixture_values_are_kept_verbatim_and_volume_is_the_base_asset_volume():
    rows = json.loads(fixture(FIXTURES["1m"]))
    page = parse_klines(fixture(FIXTURES["1m"]), symbol=SYMBOL, interval="1min", url="http://x/api/v3/klines")
    first = page.bars[0]
    assert (first.ts, first.open, first.high, first.low, first.close, first.volume) == (MINUTE_START, *rows[0][1:6])
    assert first.volume != rows[0][7]  # not the quote-asset volume
    assert page.rejected == [] and page.next is None and page.no_data is False


def test_records_that_cannot_become_bars_are_rejected_with_reason_and_excerpt():
    t = MINUTE_START
    good = kline(t)
    bad = [
        {"openTime": ms(t)},  # not an array
        [ms(t + timedelta(minutes=1)), "1.0", "1.1"],  # too short
        [str(ms(t + timedelta(minutes=2))), *good[1:6], ms(t) + 119_999, *good[7:]],  # open time as a string
        [ms(t) + 30_000, *good[1:6], ms(t) + 89_999, *good[7:]],  # off the minute grid
        [ms(t + timedelta(minutes=4)), *good[1:6], ms(t + timedelta(minutes=9)) - 1, *good[7:]],  # a 5m kline
        kline(t + timedelta(minutes=5), 60_000, "1.0", None, "0.9", "1.0", "3"),  # null high
        kline(t + timedelta(minutes=6), 60_000, "1.0", "1.1", "0.9", "1.0", ""),  # empty volume
        [True, *good[1:]],  # a boolean open time
        kline(t + timedelta(minutes=8), 60_000, "9" * 300, "1.1", "0.9", "1.0", None),  # null volume, a long record
        kline(t + timedelta(minutes=9), 60_000, "1.0", "1.2", "0.9", "1.1", "9" * 300),  # a huge volume is still a number
    ]
    page = parse_klines(json.dumps([good, *bad]).encode(), symbol=SYMBOL, interval="1min")
    assert [b.ts for b in page.bars] == [t, t + timedelta(minutes=9)]
    reasons = [r.reason for r in page.rejected]
    assert reasons == [MALFORMED_RECORD, MALFORMED_RECORD, BAD_TIMESTAMP, OFF_GRID, CLOSE_MISMATCH, MISSING_FIELD,
                       MISSING_FIELD, BAD_TIMESTAMP, MISSING_FIELD]  # fmt: skip
    assert page.rejected[2].key == str(ms(t + timedelta(minutes=2))) and page.rejected[3].key == str(ms(t) + 30_000)
    assert page.rejected[0].excerpt == json.dumps(bad[0], separators=(",", ":"))
    assert all(r.symbol == SYMBOL and 0 < len(r.excerpt) <= 200 for r in page.rejected)
    assert len(page.rejected[-1].excerpt) == 200 and page.rejected[-1].excerpt.startswith(f'[{ms(t + timedelta(minutes=8))},"999')
    good_bars, rejected = validate_bars(page.bars)
    assert [b.ts for b in good_bars] == [t, t + timedelta(minutes=9)] and rejected == []


def test_json_numbers_become_exact_decimal_text_without_exponent():
    t = ms(MINUTE_START)
    body = f'[[{t}, 412.5, 413, 4.1e2, 412.50000000, 1.12117471e+08, {t + 59_999}, "0", 1, "0", "0", "0"]]'.encode()
    bar = parse_klines(body, symbol=SYMBOL, interval="1min").bars[0]
    assert bar[4:9] == ("412.5", "413", "410", "412.50000000", "112117471")
    assert Decimal(bar.volume) == Decimal("1.12117471e+08")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", PayloadError),
        (b"<html>gateway</html>", PayloadError),
        (b'{"klines": []}', PayloadError),
        (b'"ok"', PayloadError),
        (b'{"code": -1121, "msg": "Invalid symbol."}', InvalidSymbol),
        (b'{"code": -1003, "msg": "Too many requests."}', RateLimited),
        (b'{"code": -1000, "msg": "An unknown error occurred."}', PayloadError),
    ],
)
def test_bodies_that_are_not_klines_raise_typed_errors(body, error):
    with pytest.raises(error) as info:
        parse_klines(body, symbol="XYZUSDT", interval="1min", url="http://127.0.0.1/api/v3/klines?symbol=XYZUSDT")
    assert (info.value.provider, info.value.symbol) == ("binance", "XYZUSDT") and info.value.url.startswith("http://127.0.0.1")


def test_an_empty_array_is_no_data():
    page = parse_klines(b"[]", symbol=SYMBOL, interval="1min")
    assert page.no_data is True and page.bars == [] and page.rejected == []


# -- HTTP errors ------------------------------------------------------------------------------------


class FakeBudget:
    def __init__(self):
        self.acquired, self.holds = 0, []

    def acquire(self):
        self.acquired += 1

    def hold(self, seconds):
        self.holds.append(seconds)


@pytest.mark.parametrize(("symbol", "retry_after"), [("THROTTLED", 7.0), ("BANNED", 120.0), ("BANNEDNOHEADER", 300.0)])
def test_429_and_418_are_rate_limited_and_hold_the_whole_budget(replay, symbol, retry_after):
    srv = replay(binance_route())
    clock = ManualClock(datetime(2024, 3, 11, 12, 55, tzinfo=UTC))  # the 418 body says "banned until" 13:00Z
    with make(srv.server.url, clock=clock) as p:
        p.budget = FakeBudget()
        with pytest.raises(RateLimited) as info:
            p.fetch_bars(symbol, "1min")
    err = info.value
    assert err.transient and err.retry_after_seconds == retry_after and err.symbol == symbol and err.provider == "binance"
    assert p.budget.holds == [retry_after] and p.budget.acquired == 1
    assert err.url.startswith(srv.server.url + KLINES)


def test_a_throttle_is_retried_after_its_retry_after(replay):
    ok = json.dumps(json.loads(fixture(FIXTURES["1m"]))[:5]).encode()
    srv = replay([(429, {**JSON, "Retry-After": "2"}, fixture("binance/error_too_many_requests.json")), (200, JSON, ok)])
    slept = []
    cfg = BinanceConfig(base_url=srv.server.url, retry=RetryPolicy(max_attempts=3))
    with BinanceProvider(cfg, clock=ManualClock(MINUTE_START + timedelta(hours=1)), sleep=slept.append) as p:
        bars = p.fetch_bars(SYMBOL, "1min").bars
    assert len(bars) == 5 and len(srv.requests) == 2 and slept == [2.0]


ILLEGAL_SYMBOL = json.dumps({"code": -1100, "msg": "Illegal characters found in parameter 'symbol'; legal range is "
                             "'^[A-Z0-9-_.]{1,20}$'."}).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "error", "transient", "needle"),
    [
        (400, b'{"code":-1121,"msg":"Invalid symbol."}', InvalidSymbol, False, "-1121"),
        (400, ILLEGAL_SYMBOL, InvalidSymbol, False, "-1100"),
        (400, b'{"code":-1120,"msg":"Invalid interval."}', HTTPError, False, "Invalid interval"),
        (403, b"<html>WAF</html>", HTTPError, False, "HTTP 403"),
        (451, b'{"code":0,"msg":"Service unavailable from a restricted location."}', HTTPError, False, "restricted"),
        (503, b'{"code":-1008,"msg":"Server is currently overloaded."}', HTTPError, True, "HTTP 503"),
    ],
)
def test_http_errors_are_typed(replay, status, body, error, transient, needle):
    srv = replay([(status, JSON, body)])
    with make(srv.server.url) as p, pytest.raises(error) as info:
        p.fetch_bars("ABCUSDT", "1min")
    err = info.value
    assert type(err) is error and err.transient is transient and needle in str(err)
    assert (err.provider, err.symbol) == ("binance", "ABCUSDT") and err.url
    assert len(srv.requests) == 1


# -- real recordings (shared/data/real) ----------------------------------------------------------------


def test_real_recording_500_one_minute_klines():
    body = real("binance_klines_spot_1m_limit500_2024-11-16.json")
    page = parse_klines(body, symbol="ANYUSDT", interval="1min")  # the pair was not recorded
    assert page.rejected == [] and len(page.bars) == 500
    stamps = [b.ts for b in page.bars]
    assert stamps[0] == utc("2024-11-16T09:07:00") and stamps[-1] == utc("2024-11-16T17:26:00")
    assert stamps == [stamps[0] + timedelta(minutes=i) for i in range(500)] and all(t.tzinfo is UTC for t in stamps)
    first = page.bars[0]
    assert first[4:9] == ("0.72270000", "0.72560000", "0.72270000", "0.72440000", "574761.50000000")  # volume = field 5
    good, rejected = validate_bars(page.bars, now=utc("2024-11-16T17:30:00"))
    assert len(good) == 500 and rejected == []


def test_real_recording_btcusdt_pretty_printed():
    page = parse_klines(real("binance_klines_spot_BTCUSDT_1m_2021-10-22.json"), symbol="BTCUSDT", interval="1min")
    assert page.rejected == [] and len(page.bars) == 10
    assert [b.ts for b in page.bars] == [utc("2021-10-22T23:03:00") + timedelta(minutes=i) for i in range(10)]
    assert page.bars[0][4:9] == ("60685.22000000", "60729.84000000", "60670.90000000", "60719.27000000", "21.63272000")
    assert page.bars[0].volume != "1313200.01340410"  # the quote-asset volume is not the bar volume


def test_real_recording_served_drops_the_kline_still_forming(replay):
    body = real("binance_klines_spot_BTCUSDT_1m_2021-10-22.json")
    srv = replay([(200, JSON, body)])
    with make(srv.server.url, clock=ManualClock(utc("2021-10-22T23:12:40"))) as p:
        result = p.fetch_bars("BTCUSDT", "1min")
    assert len(result.bars) == 9 and result.partial_dropped == 1 and result.bars[-1].ts == utc("2021-10-22T23:11:00")


# -- the command line, as a user runs it -----------------------------------------------------------------


def run_cli(args, *, cwd, env):
    dropped = ("BINANCE", "ALPHA_VANTAGE", "DATABASE_URL", "STREAM_STATE")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_cli_polls_binance_into_postgres(tmp_path, replay, pg_engine, pg_url):
    srv = replay(binance_route())
    args = ["--continuous-poll", "--provider", "binance", "--symbols", SYMBOL, "NOSUCHSYM", "--interval", "1min",
            "--poll-interval", "0.01", "--poll-max-iterations", "1"]  # fmt: skip
    r = run_cli(args, cwd=tmp_path, env={"BINANCE_BASE_URL": srv.server.url, "DATABASE_URL": pg_url})
    assert r.returncode == 1, r.stderr  # one symbol failed: partial
    assert "NOSUCHSYM" in r.stderr and "invalid symbol" in r.stderr
    rows = json.loads(fixture(FIXTURES["1m"]))
    with pg_engine.connect() as c:
        got = c.exec_driver_sql("SELECT provider, symbol, interval, count(*), min(ts), max(ts) FROM bars GROUP BY 1, 2, 3").all()
        first = c.exec_driver_sql("SELECT open::text, high::text, low::text, close::text, volume::text FROM bars "
                                  "ORDER BY ts LIMIT 1").one()  # fmt: skip
    assert got == [("binance", SYMBOL, "1min", 300, MINUTE_START, MINUTE_START + timedelta(minutes=299))]
    assert tuple(first) == tuple(rows[0][1:6])
    assert (KLINES, {"symbol": SYMBOL, "interval": "1m", "limit": "1000"}) in srv.requests
