"""The Stooq provider (etl/providers/stooq.py): the wire contract over loopback HTTP with our own
fixtures (tests/fixtures/stooq/), the parser on the real recordings, and one CLI run into PostgreSQL."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from clock import ManualClock
from contract import WireContract
from errors import ConfigError, InvalidSymbol, PayloadError, QuotaExhausted
from etl.providers import get_provider_class
from etl.providers.stooq import (
    BAD_DATE,
    MISSING_FIELD,
    TOO_MANY_FIELDS,
    StooqConfig,
    StooqProvider,
    exchange_zone,
    parse_response,
)
from etl.retry import RetryPolicy
from etl.transform import EXCERPT_MAX_CHARS, validate_bars
from settings import Settings
from support import ROOT, fixture, real

NY = ZoneInfo("America/New_York")
KEY = "stq4Hx9KpQ2mW7vZ"
AAPL_CSV = fixture("stooq/aapl.us_d.csv")  # 52 rows, 2024-01-02 .. 2024-03-15, English header, LF
SPX_PL_CSV = fixture("stooq/spx_index_pl_d.csv")  # Polish header, CRLF, 1789 rows without volume
KEY_PAGE = fixture("stooq/apikey_page.html")
CSV_TYPE = {"Content-Type": "text/csv; charset=utf-8"}
HTML_TYPE = {"Content-Type": "text/html; charset=utf-8"}


def rows_between(body: bytes, d1: str | None, d2: str | None) -> bytes:
    """``body`` (a Stooq CSV) cut to the rows dated d1..d2 (YYYYMMDD, inclusive), or Stooq's ``No data``."""
    header, *rows = body.decode().splitlines()
    lo = f"{d1[:4]}-{d1[4:6]}-{d1[6:]}" if d1 else "0000"
    hi = f"{d2[:4]}-{d2[4:6]}-{d2[6:]}" if d2 else "9999"
    kept = [r for r in rows if lo <= r[:10] <= hi]
    return ("\n".join([header, *kept]) + "\n").encode() if kept else b"No data"


def stooq_route(key: str | None):
    """A replay route answering like Stooq: the CSV of aapl.us within d1..d2, ``No data`` for other symbols,
    the daily-limit text for ``quota.us``, HTTP 429 for ``throttled.us``, and the HTML key page when the
    ``apikey`` is missing or wrong."""

    def route(path: str, q: dict[str, str]):
        if path != "/q/d/l/":
            return 404, HTML_TYPE, b"<html><body>not found</body></html>"
        if key is not None and q.get("apikey") != key:
            return 200, HTML_TYPE, KEY_PAGE
        if q.get("i") != "d":
            return 200, CSV_TYPE, b"No data"
        symbol = q.get("s", "").lower()  # Stooq is case-insensitive
        if symbol == "throttled.us":
            return 429, {"Retry-After": "1", "Content-Type": "text/plain"}, b"Too Many Requests"
        if symbol == "quota.us":
            return 200, HTML_TYPE, b"Exceeded the daily hits limit"
        if symbol == "aapl.us":
            return 200, CSV_TYPE, rows_between(AAPL_CSV, q.get("d1"), q.get("d2"))
        return 200, CSV_TYPE, b"No data"

    return route


class TestStooqContract(WireContract):
    GOOD_SYMBOL, INTERVAL = "aapl.us", "1day"
    KEY = KEY
    NOW = datetime(2024, 3, 18, 15, 0, tzinfo=UTC)  # Monday; the last bar (Fri 2024-03-15 00:00 New York) has ended
    PARTIAL_NOW = datetime(2024, 3, 15, 20, 0, tzinfo=UTC)  # Friday afternoon: that bar is still forming
    UNKNOWN_SYMBOL = "nosuch.us"
    THROTTLED_SYMBOL = "throttled.us"
    LOOPING_SYMBOL = None  # one CSV per request, no pages
    WINDOW = (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
    MALFORMED_BODY = b"Date;Open;High;Low;Close;Volume\n2024-01-02;1;2;0.5;1.5;100\n"  # CSV, but not Stooq's

    def make(self, base_url, clock, include_partial_bars=False, api_key=KEY):
        cfg = StooqConfig(base_url=base_url, api_key=api_key, retry=RetryPolicy(max_attempts=1),
                          include_partial_bars=include_partial_bars)  # fmt: skip
        return StooqProvider(cfg, clock=clock)

    def symbol_of(self, path, query):
        return query.get("s", "")

    def route(self, path, query):
        return stooq_route(self.KEY)(path, query)

    def shuffled(self, body):
        header, *rows = body.decode().splitlines()
        random.Random(7).shuffle(rows)
        return ("\n".join([header, *rows, *rows[:3]]) + "\n").encode()

    # The contract checks ts % 86400 == 0, i.e. UTC midnight. Daily bars start at 00:00 in the
    # exchange's zone (base.py, models/bar.py): 05:00Z / 04:00Z for New York. Same intent, right zone.
    def test_bar_starts_lie_on_the_interval_grid(self, provider):
        bars = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        assert bars and all(b.ts.astimezone(NY).time() == time(0) for b in bars)
        by_day = {b.ts.astimezone(NY).date().isoformat(): b.ts for b in bars}
        assert by_day["2024-03-08"] == datetime(2024, 3, 8, 5, tzinfo=UTC)  # EST
        assert by_day["2024-03-11"] == datetime(2024, 3, 11, 4, tzinfo=UTC)  # EDT from 2024-03-10

    def test_latest_request_reaches_back_lookback_days_to_today_with_the_key(self, provider, server):
        bars = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        assert len(bars) == 52 and bars[0].close == "181.18" and bars[-1].ts == datetime(2024, 3, 15, 4, tzinfo=UTC)
        assert server.requests == [("/q/d/l/", {"s": "aapl.us", "i": "d", "d1": "20231209", "d2": "20240318", "apikey": KEY})]

    def test_latest_request_starts_at_the_watermark_date(self, provider, server):
        since = datetime(2024, 3, 8, 5, tzinfo=UTC)  # the stored bar of 2024-03-08 (New York)
        bars = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL, since=since).bars
        assert server.requests[0][1]["d1"] == "20240308" and server.requests[0][1]["d2"] == "20240318"
        assert [b.ts.astimezone(NY).day for b in bars] == [8, 11, 12, 13, 14, 15]

    def test_symbols_are_sent_verbatim_and_kept_as_given(self, provider, server):
        bars = provider.fetch_bars("AAPL.US", self.INTERVAL).bars  # the CLI upper-cases symbols
        assert server.requests[0][1]["s"] == "AAPL.US"
        assert len(bars) == 52 and {b.symbol for b in bars} == {"AAPL.US"}
        assert bars[0].ts == datetime(2024, 1, 2, 5, tzinfo=UTC)

    def test_range_request_asks_for_the_dates_starting_in_the_window(self, provider, server):
        start, end = datetime(2024, 2, 1, 12, tzinfo=UTC), datetime(2024, 2, 6, 5, tzinfo=UTC)
        bars = provider.fetch_range(self.GOOD_SYMBOL, self.INTERVAL, start, end).bars
        # Feb 1 started at 05:00Z, before the window; Feb 6 starts at 05:00Z = end (exclusive)
        assert server.requests[0][1] | {"apikey": "-"} == {"s": "aapl.us", "i": "d", "d1": "20240202", "d2": "20240205",
                                                            "apikey": "-"}  # fmt: skip
        assert [b.ts for b in bars] == [datetime(2024, 2, 2, 5, tzinfo=UTC), datetime(2024, 2, 5, 5, tzinfo=UTC)]

    def test_a_window_no_day_starts_in_asks_nothing(self, provider, server):
        start = datetime(2024, 2, 1, 6, tzinfo=UTC)  # after Feb 1's 05:00Z start, before Feb 2's
        result = provider.fetch_range(self.GOOD_SYMBOL, self.INTERVAL, start, start + timedelta(hours=20))
        assert result.bars == [] and result.no_data == [] and server.requests == []

    def test_an_empty_window_is_no_data_not_an_error(self, provider):
        start, end = datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC)
        result = provider.fetch_range(self.GOOD_SYMBOL, self.INTERVAL, start, end)
        assert result.bars == [] and result.no_data == [(start, end)]

    def test_an_unknown_symbol_in_a_window_is_no_data(self, provider):
        # Stooq's "No data" cannot tell an unknown symbol from an empty range: with a window it is no_data
        start, end = self.WINDOW
        result = provider.fetch_range(self.UNKNOWN_SYMBOL, self.INTERVAL, start, end)
        assert result.bars == [] and result.no_data == [(start, end)]

    def test_html_page_without_a_key_names_the_variable(self, server):
        with self.make(server.server.url, ManualClock(self.NOW), api_key=None) as p:
            with pytest.raises(PayloadError) as info:
                p.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        err = info.value
        assert "HTML page" in str(err) and "set STOOQ_API_KEY" in str(err)
        assert err.transient is False and err.provider == "stooq" and err.symbol == "aapl.us" and err.url
        assert "apikey" not in server.requests[0][1]  # no key configured: none sent
        assert p.secrets() == []

    def test_html_page_with_a_rejected_key_says_the_key_is_set_and_never_shows_it(self, server):
        wrong = "WRONGKEY98765432"
        with self.make(server.server.url, ManualClock(self.NOW), api_key=wrong) as p:
            with pytest.raises(PayloadError) as info:
                p.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        err = info.value
        assert "HTML page" in str(err) and "STOOQ_API_KEY is set" in str(err)
        assert server.requests[0][1]["apikey"] == wrong
        assert wrong not in str(err) and wrong not in (err.url or "") and "apikey=***" in err.url

    def test_the_daily_hits_limit_is_quota_exhausted_until_warsaw_midnight(self, provider):
        with pytest.raises(QuotaExhausted) as info:
            provider.fetch_bars("quota.us", self.INTERVAL)
        err = info.value
        # NOW = 16:00 in Warsaw (CET): the next midnight there is 8 hours away
        assert err.transient is True and err.retry_after_seconds == 8 * 3600 and err.symbol == "quota.us"


# -- the parser on the real recordings ---------------------------------------------------------------


def test_real_english_lf_recording():
    body = real("stooq_daily_aapl.us_en.csv")
    assert b"\r" not in body
    page = parse_response(body, symbol="aapl.us")
    assert page.rejected == [] and len(page.bars) == 10432 and not page.no_data
    first, last = page.bars[0], page.bars[-1]
    assert first.ts == datetime(1984, 9, 7, 4, tzinfo=UTC)  # 00:00 EDT
    assert first[4:9] == ("0.0992653", "0.100484", "0.0980668", "0.0992653", "99149603")  # exact text
    assert last.ts == datetime(2026, 2, 3, 5, tzinfo=UTC) and last[4:9] == ("269.2", "271.875", "267.61", "269.48", "64394655")
    assert all(b.ts.tzinfo is UTC and b.ts.astimezone(NY).time() == time(0) for b in page.bars)
    good, rejected = validate_bars(page.bars)
    assert rejected == [] and len(good) == 10432


def test_real_polish_crlf_recording_from_1789():
    body = real("stooq_daily_spx_index_pl.csv")
    assert body.startswith(b"Data,Otwarcie,Najwyzszy,Najnizszy,Zamkniecie,Wolumen\r\n")
    page = parse_response(body, symbol="^spx")
    assert page.rejected == [] and len(page.bars) == 38905
    first = page.bars[0]
    assert first.ts.astimezone(NY).replace(tzinfo=None) == datetime(1789, 5, 1)  # 00:00 New York (LMT: 04:56:02Z)
    assert first.ts == datetime(1789, 5, 1, 4, 56, 2, tzinfo=UTC) and first[4:9] == ("0.51", "0.51", "0.51", "0.51", None)
    before = [b for b in page.bars if b.ts.year < 1950]
    assert len(before) == 20397 and all(b.volume is None for b in before)  # 5-field rows
    assert all(b.volume is not None for b in page.bars if b.ts.year >= 1950)
    by_day = {b.ts.astimezone(NY).date().isoformat(): b for b in page.bars}
    assert by_day["2022-08-01"].volume == "2290404134.7576"  # fractional split-adjusted volume, as sent
    assert by_day["2023-03-17"][4:9] == ("3958.69", "3958.91", "3901.27", "3916.64", "5740077852")
    assert not any("\r" in v for b in page.bars for v in b[4:9] if v)
    good, rejected = validate_bars(page.bars)
    assert rejected == [] and len(good) == 38905


# -- the parser on our fixtures and crafted bodies -----------------------------------------------------


def test_polish_header_crlf_rows_without_volume():
    page = parse_response(SPX_PL_CSV, symbol="^SPX")
    assert page.rejected == [] and [b.volume for b in page.bars] == [None, None, None, None, "1260000", "1890000",
                                                                     "2978356081.5012", "7753670000"]  # fmt: skip
    assert page.bars[0].ts == datetime(1789, 5, 1, 4, 56, 2, tzinfo=UTC) and page.bars[0].symbol == "^SPX"
    assert page.bars[-1].ts == datetime(2024, 3, 15, 4, tzinfo=UTC) and page.bars[-1].close == "5117.09"


def test_a_five_column_header_and_empty_volume_mean_no_volume():
    page = parse_response(b"Date,Open,High,Low,Close\n2024-01-02,1.1,1.2,1.0,1.15\n", symbol="eurusd")
    assert [b[4:9] for b in page.bars] == [("1.1", "1.2", "1.0", "1.15", None)]
    page = parse_response(b"Date,Open,High,Low,Close,Volume\n2024-01-02,1.1,1.2,1.0,1.15,\n", symbol="eurusd")
    assert page.bars[0].volume is None


def test_records_that_cannot_become_bars_are_rejected_with_their_line():
    body = (b"Date,Open,High,Low,Close,Volume\n"
            b"2024-01-02,1.1,1.2,1.0,1.15,100\n"
            b"\n"
            b"2024-01-03,1.1,1.2,1.0\n"  # 4 fields
            b"2024-01-04,1.1,,1.0,1.15,100\n"  # empty high
            b"2024-01-05,1.1,1.2,1.0,1.15,100,7\n"  # 7 fields
            b"20240108,1.1,1.2,1.0,1.15,100\n"  # not YYYY-MM-DD
            b"2024-02-30,1.1,1.2,1.0,1.15,100\n"  # no such day
            b"2024-01-09," + b"9" * 300 + b",1.2,1.0,1.15,100\n"
            b"2024-01-10,1.1,1.2,1.0,1.15\n")  # fmt: skip
    page = parse_response(body, symbol="abc.us")
    assert [(r.key, r.reason) for r in page.rejected] == [("2024-01-03", MISSING_FIELD), ("2024-01-04", MISSING_FIELD),
                                                          ("2024-01-05", TOO_MANY_FIELDS), ("20240108", BAD_DATE),
                                                          ("2024-02-30", BAD_DATE)]  # fmt: skip
    assert page.rejected[2].excerpt == "2024-01-05,1.1,1.2,1.0,1.15,100,7" and page.rejected[0].symbol == "abc.us"
    assert [b.ts.astimezone(NY).day for b in page.bars] == [2, 9, 10] and page.bars[-1].volume is None
    long = parse_response(b"Date,Open,High,Low,Close\n2024-01-02," + b"1," * 300 + b"\n", symbol="x")
    assert long.rejected[0].reason == TOO_MANY_FIELDS and len(long.rejected[0].excerpt) == EXCERPT_MAX_CHARS


def test_a_header_without_rows_is_no_data():
    assert parse_response(b"Date,Open,High,Low,Close,Volume\r\n", symbol="aapl.us").no_data is True
    assert parse_response(AAPL_CSV, symbol="aapl.us").no_data is False


@pytest.mark.parametrize("body", [b"No data", b"No data\n", b"  no data\r\n", b"Brak danych"])
def test_no_data_is_no_data_for_a_window_and_an_unknown_symbol_otherwise(body):
    assert parse_response(body, symbol="zzz.us", windowed=True).no_data is True
    with pytest.raises(InvalidSymbol) as info:
        parse_response(body, symbol="zzz.us", windowed=False, url="http://127.0.0.1/q/d/l/?s=zzz.us&apikey=***")
    assert info.value.symbol == "zzz.us" and info.value.provider == "stooq" and info.value.url.endswith("apikey=***")


@pytest.mark.parametrize(
    "body",
    [
        KEY_PAGE,
        b"\xef\xbb\xbf<!DOCTYPE html><html><body>key needed</body></html>",
        b"\n\n  <html><head><script>/* proof of work */</script></head></html>",
        b"Please wait <script>solve()</script>",  # an interstitial that does not start with a tag
    ],
)
def test_an_html_page_is_a_payload_error_naming_the_key_variable(body):
    with pytest.raises(PayloadError) as info:
        parse_response(body, symbol="aapl.us", url="http://127.0.0.1/q/d/l/?s=aapl.us")
    assert "HTML page" in str(info.value) and "set STOOQ_API_KEY" in str(info.value)
    assert info.value.transient is False and info.value.url == "http://127.0.0.1/q/d/l/?s=aapl.us"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty body"),
        (b"  \r\n", "empty body"),
        (b"\xff\xfe D\x00a\x00t\x00e\x00", "not UTF-8"),
        (b"Warning: Division by zero in download.inc on line 102\nDate,Open,High,Low,Close,Volume\n", "not Stooq's CSV"),
        (b"timestamp,open,high,low,close,volume\n2024-01-02,1,2,0.5,1.5,9\n", "not Stooq's CSV"),
        (b"Date,Open,High,Low,Close,Volume,OpenInt\n2024-01-02,1,2,0.5,1.5,9,3\n", "not Stooq's CSV"),
        (b'Date,Open,High,Low,Close,Volume\n2024-01-02,"1.1,1.2,1.0,1.15,9\n2024-01-03,1,2,0.5,1.5,9\n', "malformed CSV"),
    ],
)
def test_anything_else_is_a_payload_error(body, needle):
    with pytest.raises(PayloadError) as info:
        parse_response(body, symbol="aapl.us")
    assert needle in str(info.value) and "HTML" not in str(info.value)


@pytest.mark.parametrize(
    ("symbol", "zone"),
    [
        ("aapl.us", "America/New_York"), ("AAPL.US", "America/New_York"), ("bmw.de", "Europe/Berlin"),
        ("vod.uk", "Europe/London"), ("7203.jp", "Asia/Tokyo"), ("700.hk", "Asia/Hong_Kong"), ("otp.hu", "Europe/Budapest"),
        ("^spx", "America/New_York"), ("^DJI", "America/New_York"), ("^ndq", "America/New_York"), ("^dax", "Europe/Berlin"),
        ("^ukx", "Europe/London"), ("^nkx", "Asia/Tokyo"), ("^hsi", "Asia/Hong_Kong"),
        ("pko", "Europe/Warsaw"), ("cdr.pl", "Europe/Warsaw"), ("wig20", "Europe/Warsaw"),
        ("btc.v", "Europe/Warsaw"), ("^nosuchindex", "Europe/Warsaw"),
    ],
)  # fmt: skip
def test_exchange_zone_from_the_symbol(symbol, zone):
    assert exchange_zone(symbol) == zone


def test_daily_bars_start_at_local_midnight_of_their_exchange():
    body = b"Date,Open,High,Low,Close,Volume\n2024-07-01,1,2,0.5,1.5,9\n"
    starts = {s: parse_response(body, symbol=s).bars[0].ts for s in ("x.us", "x.de", "x.uk", "x.jp", "x.hk", "pko")}
    assert starts == {
        "x.us": datetime(2024, 7, 1, 4, tzinfo=UTC),
        "x.de": datetime(2024, 6, 30, 22, tzinfo=UTC),
        "x.uk": datetime(2024, 6, 30, 23, tzinfo=UTC),
        "x.jp": datetime(2024, 6, 30, 15, tzinfo=UTC),
        "x.hk": datetime(2024, 6, 30, 16, tzinfo=UTC),
        "pko": datetime(2024, 6, 30, 22, tzinfo=UTC),
    }


def test_declaration():
    cls = get_provider_class("stooq")
    assert cls is StooqProvider and cls.intervals == {"1day": "d"} and cls.env_prefix == "STOOQ"
    assert cls.key_required is False and cls.default_rate_limit == "1/second" and cls.default_base_url == "https://stooq.com"
    assert StooqProvider().base_url == "https://stooq.com" and StooqProvider().rate_limit() == "1/second"
    with pytest.raises(ConfigError):
        StooqProvider().latest_request("aapl.us", "60min", None)
    for bad in (0, -5, True, "100"):
        with pytest.raises(ConfigError):
            StooqConfig(lookback_days=bad)


def test_settings_from_stooq_variables():
    env = {"STOOQ_BASE_URL": "http://127.0.0.1:9", "STOOQ_API_KEY": KEY, "STOOQ_RATE_LIMIT": "2/second",
           "STOOQ_LOOKBACK_DAYS": "30"}  # fmt: skip
    p = StooqProvider.from_settings(Settings.from_env(env))
    assert (p.base_url, p.rate_limit(), p.secrets(), p.config.lookback_days) == ("http://127.0.0.1:9", "2/second", [KEY], 30)
    with pytest.raises(ConfigError) as info:
        StooqProvider.from_settings(Settings.from_env({"STOOQ_LOOKBACK_DAYS": "0"}))
    assert info.value.name == "STOOQ_LOOKBACK_DAYS"


def test_lookback_days_moves_the_first_date():
    p = StooqProvider(StooqConfig(lookback_days=7), clock=ManualClock(datetime(2024, 3, 18, 3, tzinfo=UTC)))
    req = p.latest_request("7203.jp", "1day", None)  # 12:00 in Tokyo, 23:00 of the 17th in New York
    assert (req.params["d1"], req.params["d2"], req.window) == ("20240311", "20240318", None) and "apikey" not in req.params
    assert p.latest_request("aapl.us", "1day", None).params["d2"] == "20240317"


# -- end to end: the CLI into PostgreSQL ---------------------------------------------------------------


def test_cli_polls_stooq_into_postgres(tmp_path, replay, pg_engine, pg_url):
    def route(path, q):  # the whole fixture, whatever d1/d2 (the run's clock is the real one)
        if path != "/q/d/l/" or q.get("apikey") != KEY or q.get("i") != "d":
            return 200, HTML_TYPE, KEY_PAGE
        return 200, CSV_TYPE, AAPL_CSV if q.get("s", "").lower() == "aapl.us" else b"No data"

    server = replay(route)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL", "STREAM_STATE", "STOOQ"))}
    env |= {"STOOQ_BASE_URL": server.server.url, "STOOQ_API_KEY": KEY, "DATABASE_URL": pg_url}
    args = ["--continuous-poll", "--provider", "stooq", "--symbols", "aapl.us", "--interval", "1day", "--poll-interval", "0.01",
            "--poll-max-iterations", "1"]  # fmt: skip
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["successful_cycles"] == 1
    assert [q["s"] for _, q in server.requests] == ["AAPL.US"] and KEY not in r.stderr
    with pg_engine.connect() as c:
        sql = "SELECT provider, symbol, interval, ts, open, high, low, close, volume FROM bars ORDER BY ts"
        rows = c.exec_driver_sql(sql).all()
    assert len(rows) == 52 and {row[:3] for row in rows} == {("stooq", "AAPL.US", "1day")}
    assert rows[0][3] == datetime(2024, 1, 2, 5, tzinfo=UTC) and rows[-1][3] == datetime(2024, 3, 15, 4, tzinfo=UTC)
    assert rows[0][4:] == (Decimal("182.81"), Decimal("183.59"), Decimal("180.2"), Decimal("181.18"), Decimal("59011281"))
    by_day = {row[3].astimezone(NY).date().isoformat(): row for row in rows}
    assert by_day["2024-01-09"][8] == Decimal("69368542.3067")  # a fractional volume, exact
