"""Coinbase Exchange candles (etl/providers/coinbase.py): the wire contract against our own fixtures
(tests/fixtures/coinbase/, served by a small stand-in for the API that enforces its limits), the parser
against the real recordings, requests and chunking, errors, and one run of main.py as a user runs it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import pytest

from clock import ManualClock
from contract import DECIMAL, WireContract
from errors import ConfigError, HTTPError, InvalidSymbol, PayloadError, RateLimited
from etl.providers.base import provider_config
from etl.providers.coinbase import (
    BAD_TIMESTAMP,
    BAD_VALUE,
    GRANULARITIES,
    MALFORMED_RECORD,
    OFF_GRID,
    CoinbaseProvider,
    parse_candles,
)
from etl.providers.wire import number_text
from etl.retry import RetryPolicy
from etl.transform import validate_bars
from settings import Settings
from support import ROOT, fixture, real

JSON = {"Content-Type": "application/json"}
GRANULARITY_SET = {"60", "300", "900", "3600", "21600", "86400"}
#: product -> granularity -> our fixture with that product's whole history.
HISTORY = {
    "BTC-USD": {"60": "coinbase/candles_BTC-USD_60.json", "86400": "coinbase/candles_BTC-USD_86400.json"},
    "ETH-USD": {"60": "coinbase/candles_ETH-USD_60.json"},
}
FIRST = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)  # the BTC-USD 1-minute fixture: 09:00-12:59Z
LAST = datetime(2024, 5, 6, 12, 59, tzinfo=UTC)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def lines_of(body: bytes) -> list[tuple[int, bytes]]:
    """(time, line bytes) of a one-candle-per-line array, the bytes exactly as in the file."""
    out = []
    for line in body.splitlines():
        line = line.strip().rstrip(b",")
        if line.startswith(b"[") and line.endswith(b"]") and line != b"[]" and b"," in line:
            out.append((json.loads(line)[0], line))
    return out


def array(lines: list[bytes]) -> bytes:
    return b"[\n  " + b",\n  ".join(lines) + b"\n]\n" if lines else b"[]"


def coinbase_route(*, ignore_time: bool = False):
    """A stand-in for ``GET /products/{id}/candles`` that answers as Coinbase documents it: an unknown
    product or path is 404 NotFound, a granularity outside the six is 400, a start/end span of more than
    300 buckets is 400, start and end are both inclusive, candles newest first, numbers as in the fixture
    (lines served byte for byte). ``THROTTLED`` gets 429 with Retry-After. ``ignore_time``: serve the whole
    history whatever start/end say (for a subprocess whose clock is the wall clock)."""

    def route(path: str, q: dict[str, str]):
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != "products" or parts[3] != "candles":
            return 404, JSON, fixture("coinbase/error_not_found.json")
        product = unquote(parts[2])
        if product == "THROTTLED":
            return 429, {**JSON, "Retry-After": "2"}, fixture("coinbase/error_rate_limit.json")
        if product not in HISTORY:
            return 404, JSON, fixture("coinbase/error_not_found.json")
        granularity = q.get("granularity", "60")
        if granularity not in GRANULARITY_SET:
            return 400, JSON, fixture("coinbase/error_unsupported_granularity.json")
        rows = lines_of(fixture(HISTORY[product][granularity])) if granularity in HISTORY[product] else []
        if "start" in q and "end" in q and not ignore_time:
            lo, hi = _time(q["start"]).timestamp(), _time(q["end"]).timestamp()
            if (hi - lo) / int(granularity) > 300:
                return 400, JSON, fixture("coinbase/error_too_many_candles.json")
            rows = [r for r in rows if lo <= r[0] <= hi]
        elif not ignore_time:
            rows = rows[:300]
        return 200, JSON, array([line for _, line in rows])

    return route


def make(base_url: str, clock, include_partial_bars: bool = False) -> CoinbaseProvider:
    cfg = CoinbaseProvider.Config(base_url=base_url, retry=RetryPolicy(max_attempts=1), include_partial_bars=include_partial_bars)
    return CoinbaseProvider(cfg, clock=clock)


class TestCoinbaseContract(WireContract):
    GOOD_SYMBOL, INTERVAL = "BTC-USD", "1min"
    KEY = None  # public candles: no key
    NOW = LAST + timedelta(minutes=1)
    PARTIAL_NOW = LAST + timedelta(seconds=30)
    UNKNOWN_SYMBOL = "NOSUCH-USD"
    THROTTLED_SYMBOL = "THROTTLED"
    LOOPING_SYMBOL = None  # no pagination: windows are chunked instead
    WINDOW = (datetime(2024, 5, 6, 10, 0, tzinfo=UTC), datetime(2024, 5, 6, 11, 30, tzinfo=UTC))

    def make(self, base_url, clock, include_partial_bars=False):
        return make(base_url, clock, include_partial_bars)

    def symbol_of(self, path, query):
        parts = path.split("/")
        return unquote(parts[2]) if len(parts) > 2 else ""

    def route(self, path, query):
        return coinbase_route()(path, query)

    def shuffled(self, body):
        rows = [line for _, line in lines_of(body)]
        random.Random(7).shuffle(rows)
        return array(rows + rows[:3])

    def test_latest_reaches_every_candle_of_the_fixture(self, provider, server):
        bars = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        assert len(bars) == 237 and bars[0].ts == FIRST and bars[-1].ts == LAST  # 240 minutes, 3 without trades
        assert len(server.requests) == 1

    def test_minutes_without_trades_are_gaps_not_errors(self, provider):
        result = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        missing = {FIRST + timedelta(minutes=i) for i in range(240)} - {b.ts for b in result.bars}
        assert sorted(missing) == [FIRST + timedelta(minutes=m) for m in (37, 38, 150)]
        assert result.rejected == []

    def test_an_empty_window_is_no_data_not_an_error(self, provider):
        start = datetime(2020, 1, 1, tzinfo=UTC)
        result = provider.fetch_range(self.GOOD_SYMBOL, self.INTERVAL, start, start + timedelta(hours=1))
        assert result.bars == [] and result.no_data == [(start, start + timedelta(hours=1))]


# -- the interval map and the configuration --------------------------------------------------------


def test_interval_map_is_coinbase_s_granularities():
    assert GRANULARITIES == {"1min": "60", "5min": "300", "15min": "900", "60min": "3600", "1day": "86400"}
    with pytest.raises(ConfigError, match="30min"):
        CoinbaseProvider().check_interval("30min")


def test_configuration_from_the_environment():
    settings = Settings.from_env({"COINBASE_BASE_URL": "http://127.0.0.1:9/", "COINBASE_RATE_LIMIT": "3/second"})
    p = CoinbaseProvider(provider_config(CoinbaseProvider, settings))
    assert p.base_url == "http://127.0.0.1:9" and p.rate_limit() == "3/second"
    default = CoinbaseProvider(provider_config(CoinbaseProvider, Settings.from_env({})))
    assert default.base_url == "https://api.exchange.coinbase.com" and default.rate_limit() == "10/second"
    assert default.secrets() == [] and CoinbaseProvider.key_required is False


# -- requests ----------------------------------------------------------------------------------------


def at(ts: datetime) -> CoinbaseProvider:
    return CoinbaseProvider(clock=ManualClock(ts))


def span_buckets(params) -> float:
    return (_time(params["end"]) - _time(params["start"])).total_seconds() / int(params["granularity"])


def test_latest_request_asks_for_the_newest_300_buckets():
    req = at(datetime(2024, 5, 6, 12, 0, 30, 123456, tzinfo=UTC)).latest_request("BTC-USD", "1min", None)
    assert req.url == "https://api.exchange.coinbase.com/products/BTC-USD/candles"
    assert dict(req.params) == {"granularity": "60", "start": "2024-05-06T07:01:00Z", "end": "2024-05-06T12:00:30Z"}
    assert span_buckets(req.params) < 300


def test_latest_request_starts_at_the_watermark_when_it_can():
    p = at(datetime(2024, 5, 6, 12, 0, 30, tzinfo=UTC))
    near = p.latest_request("BTC-USD", "5min", datetime(2024, 5, 6, 11, 50, tzinfo=UTC))
    assert near.params["start"] == "2024-05-06T11:50:00Z"
    far = p.latest_request("BTC-USD", "5min", datetime(2024, 4, 1, tzinfo=UTC))  # more than 300 buckets back
    assert far.params["start"] == "2024-05-05T11:05:00Z" and span_buckets(far.params) < 300
    ahead = p.latest_request("BTC-USD", "5min", datetime(2024, 5, 6, 13, 0, tzinfo=UTC))  # a clock behind the data
    assert ahead.params["start"] == "2024-05-06T12:00:00Z"


def test_latest_daily_request_is_on_utc_midnights():
    req = at(datetime(2024, 5, 6, 12, 0, tzinfo=UTC)).latest_request("BTC-USD", "1day", None)
    assert req.params["granularity"] == "86400" and req.params["start"] == "2023-07-12T00:00:00Z"


def test_symbols_are_used_verbatim_and_quoted_as_a_path_segment():
    req = at(datetime(2024, 5, 6, tzinfo=UTC)).latest_request("BTC/USD X", "1min", None)
    assert req.url.endswith("/products/BTC%2FUSD%20X/candles")


def test_range_requests_chunk_the_window_into_at_most_300_buckets():
    start, end = datetime(2024, 5, 6, 0, 0, 30, tzinfo=UTC), datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
    reqs = list(at(end).range_requests("ETH-USD", "1min", start, end))
    assert [r.window for r in reqs] == [
        (start, datetime(2024, 5, 6, 5, 0, tzinfo=UTC)),
        (datetime(2024, 5, 6, 5, 0, tzinfo=UTC), datetime(2024, 5, 6, 10, 0, tzinfo=UTC)),
        (datetime(2024, 5, 6, 10, 0, tzinfo=UTC), end),
    ]
    assert [(r.params["start"], r.params["end"]) for r in reqs] == [
        ("2024-05-06T00:00:30Z", "2024-05-06T04:59:59Z"),
        ("2024-05-06T05:00:00Z", "2024-05-06T09:59:59Z"),
        ("2024-05-06T10:00:00Z", "2024-05-06T11:59:59Z"),
    ]
    assert all(span_buckets(r.params) < 300 and r.params["granularity"] == "60" for r in reqs)


def test_daily_range_requests_cover_two_years_in_300_day_chunks():
    start, end = datetime(2022, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
    reqs = list(at(end).range_requests("BTC-USD", "1day", start, end))
    assert len(reqs) == 3 and reqs[0].window[0] == start and reqs[-1].window[1] == end
    assert all(a.window[1] == b.window[0] for a, b in zip(reqs, reqs[1:], strict=False))
    assert all(span_buckets(r.params) < 300 for r in reqs)


def test_fetch_range_over_many_chunks_returns_every_candle_once(replay):
    srv = replay(coinbase_route())
    start, end = datetime(2024, 5, 6, 0, 0, tzinfo=UTC), datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
    with make(srv.server.url, ManualClock(end + timedelta(hours=1))) as p:
        result = p.fetch_range("ETH-USD", "1min", start, end)
    assert len(srv.requests) == 3  # the stand-in answers 400 to any request wider than 300 buckets
    expected = sorted(t for t, _ in lines_of(fixture("coinbase/candles_ETH-USD_60.json")))
    assert [int(b.ts.timestamp()) for b in result.bars] == expected and len(expected) == 717
    assert validate_bars(result.bars)[1] == [] and result.no_data == []


# -- parsing -------------------------------------------------------------------------------------------


def parse(body: bytes, interval: str = "1min"):
    return parse_candles(body, symbol="BTC-USD", interval=interval, url="http://127.0.0.1/x")


def test_number_text_is_the_shortest_round_trip_without_exponent():
    assert [number_text(v) for v in (8131, 8131.69, 6106.1, 5e-07, 1.12117471e08, 1e16, 0.1, 13902.22947445)] == [
        "8131", "8131.69", "6106.1", "0.0000005", "112117471", "10000000000000000", "0.1", "13902.22947445"]  # fmt: skip
    assert [number_text(v) for v in (True, None, float("nan"), float("inf"), [1])] == [None] * 5
    assert number_text("8131.690", strings=True) == "8131.690" and number_text("8131.690") is None  # kept when allowed


def test_fields_are_read_in_coinbase_s_order_low_high_open_close():
    page = parse(b"[[1714953600, 1.5, 4, 2.25, 3, 10.125]]")
    (bar,) = page.bars
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == ("2.25", "4", "1.5", "3", "10.125")
    assert bar.ts == datetime(2024, 5, 6, tzinfo=UTC)


def test_exponent_volume_of_the_fixture_is_plain_decimal_text():
    page = parse(fixture("coinbase/candles_BTC-USD_60.json"))
    (tiny,) = [b for b in page.bars if b.ts == FIRST + timedelta(minutes=100)]
    assert tiny.volume == "0.0000005"
    assert any("." not in b.high for b in page.bars)  # whole values stay whole
    assert all(DECIMAL.match(v) for b in page.bars for v in b[4:9])


def test_records_that_cannot_become_bars_are_rejected_with_reasons():
    body = (b'[[1714953660, 1, 2, 1, 2, 3], [1714953720, 1, 2, 1, 2], "x", [1714953780, null, 2, 1, 2, 3],'
            b' ["1714953840", 1, 2, 1, 2, 3], [1714953870, 1, 2, 1, 2, 3], [1714953900, 1, 2, true, 2, 3],'
            b' [1714953960, 1, 2, 1, NaN, 3], [1e30, 1, 2, 1, 2, 3]]')  # fmt: skip
    page = parse(body)
    assert [b.ts for b in page.bars] == [datetime(2024, 5, 6, 0, 1, tzinfo=UTC)]
    assert [(r.key, r.reason) for r in page.rejected] == [
        ("1714953720", MALFORMED_RECORD), ("", MALFORMED_RECORD), ("1714953780", BAD_VALUE), ("1714953840", BAD_TIMESTAMP),
        ("1714953870", OFF_GRID), ("1714953900", BAD_VALUE), ("1714953960", BAD_VALUE), ("1E+30", BAD_TIMESTAMP),
    ]  # fmt: skip
    assert page.rejected[0].excerpt == "[1714953720,1,2,1,2]" and all(len(r.excerpt) <= 200 for r in page.rejected)


def test_daily_bars_are_normalised_to_utc_midnight():
    # 2024-05-06 00:00Z as sent, and a bucket of 2024-05-07 stamped 01:00Z by some gateway
    page = parse(b"[[1715043600, 1, 2, 1, 2, 3], [1714953600, 1, 2, 1, 2, 3]]", "1day")
    assert [b.ts for b in page.bars] == [datetime(2024, 5, 7, tzinfo=UTC), datetime(2024, 5, 6, tzinfo=UTC)]


def test_daily_fixture_through_the_api(replay):
    srv = replay(coinbase_route())
    with make(srv.server.url, ManualClock(datetime(2024, 4, 20, tzinfo=UTC))) as p:
        bars = p.fetch_bars("BTC-USD", "1day").bars
    assert len(bars) == 40 and bars[0].ts == datetime(2024, 3, 1, tzinfo=UTC) and bars[-1].ts == datetime(2024, 4, 9, tzinfo=UTC)
    assert all(b.ts.hour == b.ts.minute == 0 and b.ts.tzinfo is UTC for b in bars)
    assert srv.requests[0][1]["granularity"] == "86400"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"message": "NotFound"}', "NotFound"),  # an error sent with a 2xx status
        (b'{"candles": []}', "expected a JSON array"),
        (b"[1, 2", "malformed JSON"),
        (b"\xff\xfe[]", "malformed JSON"),
        (b"", "malformed JSON"),
    ],
)
def test_bodies_that_are_not_the_documented_format_are_payload_errors(body, needle):
    with pytest.raises(PayloadError, match=needle) as info:
        parse(body)
    assert info.value.transient is False and info.value.url == "http://127.0.0.1/x" and info.value.symbol == "BTC-USD"


def test_an_empty_array_is_no_data():
    page = parse(b"[]")
    assert page.no_data and page.bars == [] and page.rejected == []


# -- errors over HTTP -------------------------------------------------------------------------------------


def fetch_error(replay, reply, interval="1min"):
    srv = replay([reply])
    with make(srv.server.url, ManualClock(datetime(2024, 5, 6, tzinfo=UTC))) as p, pytest.raises(Exception) as info:
        p.fetch_bars("BTC-USD", interval)
    return info.value


def test_a_400_names_the_api_s_reason_and_is_terminal(replay):
    err = fetch_error(replay, (400, JSON, fixture("coinbase/error_too_many_candles.json")))
    assert type(err) is HTTPError and err.status == 400 and err.transient is False
    assert "Count of aggregations requested exceeds 300" in str(err) and err.provider == "coinbase" and err.url


def test_429_is_throttling_with_the_retry_after_hint(replay):
    err = fetch_error(replay, (429, {**JSON, "Retry-After": "2"}, fixture("coinbase/error_rate_limit.json")))
    assert isinstance(err, RateLimited) and err.transient and err.retry_after_seconds == 2.0


def test_a_404_without_coinbase_s_message_is_not_taken_for_an_unknown_product(replay):
    err = fetch_error(replay, (404, {"Content-Type": "text/html"}, b"<html>no such gateway route</html>"))
    assert type(err) is HTTPError and err.status == 404 and err.transient is False
    notfound = fetch_error(replay, (404, JSON, fixture("coinbase/error_not_found.json")))
    assert isinstance(notfound, InvalidSymbol) and "BTC-USD" in str(notfound)


# -- the real recordings ----------------------------------------------------------------------------------


def test_real_hourly_recording():
    body = real("coinbase_candles_BTC-USD_3600_2020-03-09_to_2020-03-21.json")
    page = parse(body, "60min")
    assert page.rejected == [] and len(page.bars) == 300
    bars = sorted(page.bars, key=lambda b: b.ts)
    assert bars[0].ts == datetime(2020, 3, 9, 1, 0, tzinfo=UTC) and bars[-1].ts == datetime(2020, 3, 21, 12, 0, tzinfo=UTC)
    assert all(b.ts - a.ts == timedelta(hours=1) for a, b in zip(bars, bars[1:], strict=False))
    # the first line, [1584792000, 6063.96, 6169.08, 6063.98, 6151.74, 13902.22947445]: low, high, open, close
    assert tuple(bars[-1][4:9]) == ("6063.98", "6169.08", "6063.96", "6151.74", "13902.22947445")
    whole = {b.ts: b.high for b in bars}[datetime(2020, 3, 21, 1, 0, tzinfo=UTC)]
    assert whole == "6657"  # written 6657 on the wire: no decimal point added
    good, rejected = validate_bars(page.bars)
    assert rejected == [] and len(good) == 300
    assert all(DECIMAL.match(v) for b in page.bars for v in b[4:9])


def test_real_minute_recording_through_fetch_range(replay):
    body = real("coinbase_candles_BTC-USD_60_2020-03-20T00.json")
    srv = replay([(200, JSON, body)])
    start, end = datetime(2020, 3, 20, 0, 0, tzinfo=UTC), datetime(2020, 3, 20, 5, 0, tzinfo=UTC)
    with make(srv.server.url, ManualClock(datetime(2024, 1, 1, tzinfo=UTC))) as p:
        result = p.fetch_range("BTC-USD", "1min", start, end)
    assert len(srv.requests) == 1  # 300 buckets: one request
    assert srv.requests[0][1] == {"granularity": "60", "start": "2020-03-20T00:00:00Z", "end": "2020-03-20T04:59:59Z"}
    assert [b.ts for b in result.bars] == [start + timedelta(minutes=i) for i in range(300)]  # oldest first, UTC starts
    assert result.rejected == [] and validate_bars(result.bars)[1] == []
    newest = result.bars[-1]  # the first line: [1584680340, 6221.99, 6222.01, 6221.99, 6222.01, 39.81861594]
    assert (newest.open, newest.high, newest.low, newest.close, newest.volume) == (
        "6221.99", "6222.01", "6221.99", "6222.01", "39.81861594")  # fmt: skip


# -- end to end: main.py as a user runs it -------------------------------------------------------------------


def test_cli_polls_coinbase_into_postgres(tmp_path, replay, pg_engine, pg_url):
    srv = replay(coinbase_route(ignore_time=True))  # the subprocess's clock is the wall clock: serve the whole fixture
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINBASE", "ALPHA_VANTAGE", "DATABASE_URL", "STREAM_STATE"))}
    env |= {"COINBASE_BASE_URL": srv.server.url, "DATABASE_URL": pg_url}
    r = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--continuous-poll", "--provider", "coinbase", "--symbols", "BTC-USD",
         "--interval", "1min", "--poll-interval", "0.01", "--poll-max-iterations", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    path, query = srv.requests[0]
    assert path == "/products/BTC-USD/candles" and query["granularity"] == "60" and set(query) == {"granularity", "start", "end"}
    with pg_engine.connect() as c:
        rows = c.exec_driver_sql(
            "SELECT ts, open::text, high::text, low::text, close::text, volume::text FROM bars "
            "WHERE provider = 'coinbase' AND symbol = 'BTC-USD' AND interval = '1min' ORDER BY ts"
        ).all()
    assert len(rows) == 237 and rows[0][0] == FIRST and rows[-1][0] == LAST
    by_ts = {row[0]: row[1:] for row in rows}
    # our fixture's line for 12:58Z is [1715000280, 63645.9, 63816, 63690.22, 63774.63, 30.74618608]
    assert by_ts[LAST - timedelta(minutes=1)] == ("63690.22", "63816", "63645.9", "63774.63", "30.74618608")
    assert by_ts[FIRST + timedelta(minutes=100)][4] == "0.0000005"  # sent as 5e-7
