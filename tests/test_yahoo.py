"""Yahoo chart v8 (etl/providers/yahoo.py): the wire contract over loopback HTTP on our own fixtures
(tests/fixtures/yahoo/, see generate.py there), the parser on the real recordings, requests and
window limits, errors, and one run of main.py as a user runs it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from urllib.parse import unquote

import pytest

from clock import ManualClock
from contract import WireContract
from errors import ConfigError, HTTPError, InvalidSymbol, PayloadError, RateLimited
from etl.http import Response
from etl.providers.base import Request, provider_config
from etl.providers.yahoo import (
    BAD_ACTION,
    BAD_TIMESTAMP,
    MISSING_FIELD,
    NON_NUMERIC,
    YahooConfig,
    YahooProvider,
    decimal_text,
    trading_date,
)
from etl.retry import RetryPolicy
from etl.transform import validate_bars, zone
from models.action import CorporateAction
from settings import Settings
from support import ROOT, fixture, real

START = datetime(2024, 3, 11, 13, 30, tzinfo=UTC)  # first bar of chart_MSFT_1m.json (120 minutes, index 40 all-null)
CHART = "/v8/finance/chart/"
JSON = {"Content-Type": "application/json;charset=utf-8"}
ONCE = RetryPolicy(max_attempts=1)
MINUTES = json.loads(fixture("yahoo/chart_MSFT_1m.json"))
DAILY = json.loads(fixture("yahoo/chart_SAP.DE_1d.json"))
SERIES = {("MSFT", "1m"): MINUTES, ("SAP.DE", "1d"): DAILY}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def epoch(ts: datetime) -> int:
    return int(ts.timestamp())


def select(obj: dict, lo: int, hi: int) -> dict:
    """``obj`` (a chart reply) with only the bars stamped in [lo, hi], as Yahoo selects them."""
    out = json.loads(json.dumps(obj))
    res = out["chart"]["result"][0]
    keep = [i for i, t in enumerate(res["timestamp"]) if lo <= t <= hi]
    if not keep:
        del res["timestamp"]
        res["indicators"] = {"quote": [{}]}
        return out
    res["timestamp"] = [res["timestamp"][i] for i in keep]
    quote = res["indicators"]["quote"][0]
    for k in quote:
        quote[k] = [quote[k][i] for i in keep]
    return out


def yahoo_route(*, ignore_time: bool = False):
    """A replay route answering like Yahoo's chart API from our fixtures (``ignore_time``: the whole
    series whatever period1/period2 say, for a subprocess whose clock is the wall clock)."""

    def route(path: str, q: dict[str, str]):
        symbol = unquote(path.rsplit("/", 1)[-1])
        if symbol == "THROTTLED":
            return 429, {"Content-Type": "text/plain"}, b"Too Many Requests\r\n"
        series = SERIES.get((symbol, q.get("interval")))
        if series is None:
            known = any(s == symbol for s, _ in SERIES)
            name = "yahoo/error_bad_request.json" if known else "yahoo/error_not_found.json"
            return (400 if known else 404), JSON, fixture(name)
        if ignore_time:
            return 200, JSON, json.dumps(series).encode()
        return 200, JSON, json.dumps(select(series, int(q["period1"]), int(q["period2"]))).encode()

    return route


def make(url: str, *, clock=None, **cfg) -> YahooProvider:
    cfg.setdefault("retry", ONCE)
    return YahooProvider(YahooConfig(base_url=url, **cfg), clock=clock or ManualClock(START + timedelta(minutes=120)))


def parse(body: bytes, symbol: str, interval: str, period2: int | None = None, status: int = 200):
    params = {"period1": "0"} | ({"period2": str(period2)} if period2 is not None else {})
    return YahooProvider().parse(Response(status, body, "application/json", "http://x/chart", 0.0),
                                 Request("http://x/chart", params, symbol=symbol, interval=interval))  # fmt: skip


class TestYahooContract(WireContract):
    GOOD_SYMBOL, INTERVAL = "MSFT", "1min"
    KEY = None
    NOW = START + timedelta(minutes=120)
    PARTIAL_NOW = START + timedelta(minutes=119, seconds=30)
    UNKNOWN_SYMBOL = "NOSUCHSYM"
    WINDOW = (START + timedelta(minutes=10), START + timedelta(minutes=75))

    def make(self, base_url, clock, include_partial_bars=False):
        return make(base_url, clock=clock, include_partial_bars=include_partial_bars)

    def symbol_of(self, path, query):
        return unquote(path.rsplit("/", 1)[-1])

    def route(self, path, query):
        return yahoo_route()(path, query)

    def shuffled(self, body):
        obj = json.loads(body)
        res = obj["chart"]["result"][0]
        order = list(range(len(res["timestamp"])))
        random.Random(7).shuffle(order)
        order += order[:3]
        res["timestamp"] = [res["timestamp"][i] for i in order]
        quote = res["indicators"]["quote"][0]
        for k in quote:
            quote[k] = [quote[k][i] for i in order]
        return json.dumps(obj).encode()

    def test_all_null_minute_is_skipped_not_rejected(self, provider):
        result = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        stamps = [b.ts for b in result.bars]
        assert len(stamps) == 119 and START + timedelta(minutes=40) not in stamps and result.rejected == []

    def test_first_bar_exact_decimals(self, provider):
        first = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars[0]
        quote = MINUTES["chart"]["result"][0]["indicators"]["quote"][0]
        assert first.ts == START
        assert quote["open"][0] == 412.3399963378906 and first.open == "412.34"  # float32 artefact -> shortest text
        assert first.volume == str(quote["volume"][0])


# -- requests ----------------------------------------------------------------------------------------------


def test_latest_request_shape(replay):
    srv = replay(yahoo_route())
    now = START + timedelta(minutes=120)
    with make(srv.server.url, clock=ManualClock(now)) as p:
        p.fetch_bars("MSFT", "1min")
    assert srv.requests == [
        (
            f"{CHART}MSFT",
            {
                "interval": "1m",
                "period1": str(epoch(now - timedelta(days=5))),
                "period2": str(epoch(now)),
                "events": "div,splits",
                "includePrePost": "true",
            },
        )
    ]


def test_symbols_are_one_quoted_path_segment(replay):
    srv = replay(yahoo_route())
    with make(srv.server.url) as p:
        for symbol in ("^GSPC", "EURUSD=X", "BTC-USD", "A/B"):
            with pytest.raises(InvalidSymbol):
                p.fetch_bars(symbol, "1min")
    assert [path for path, _ in srv.requests] == [f"{CHART}%5EGSPC", f"{CHART}EURUSD%3DX", f"{CHART}BTC-USD", f"{CHART}A%2FB"]


def test_extended_hours_option_and_daily_requests():
    now = datetime(2024, 5, 1, tzinfo=UTC)
    regular = make("http://127.0.0.1:9", clock=ManualClock(now), extended_hours=False)
    assert regular.latest_request("AAPL", "5min", None).params["includePrePost"] == "false"
    daily = regular.latest_request("AAPL", "1day", None)
    assert "includePrePost" not in daily.params and daily.params["interval"] == "1d"
    assert daily.params["period1"] == str(epoch(now - timedelta(days=365)))


def test_extended_hours_from_env_and_command_line():
    env = provider_config(YahooProvider, Settings.from_env({"YAHOO_EXTENDED_HOURS": "false"}))
    assert env.extended_hours is False and env.api_key is None
    cli = provider_config(YahooProvider, Settings.from_env({}, provider_options={"extended_hours": False}))
    assert cli.extended_hours is False
    assert provider_config(YahooProvider, Settings.from_env({})).extended_hours is True
    with pytest.raises(ConfigError, match="outputsize"):
        provider_config(YahooProvider, Settings.from_env({}, provider_options={"outputsize": "full"}))


@pytest.mark.parametrize(
    ("interval", "since", "expected"),
    [
        ("1min", utc("2024-05-01T09:00:00"), utc("2024-05-01T09:00:00")),  # from the watermark
        ("1min", utc("2024-04-10T00:00:00"), utc("2024-04-24T13:00:00")),  # clamped: 7 days per 1m request (+1h margin)
        ("5min", utc("2024-01-01T00:00:00"), utc("2024-03-02T13:00:00")),  # clamped: 60 days
        ("60min", utc("2023-01-01T00:00:00"), utc("2023-01-01T00:00:00")),  # within 730 days
        ("1day", utc("2000-01-03T05:00:00"), utc("2000-01-02T05:00:00")),  # a day earlier: DST-slipped stamps
        ("5min", utc("2024-05-01T12:30:00"), utc("2024-05-01T11:55:00")),  # a watermark ahead of the clock
    ],
)
def test_latest_request_widens_back_to_the_watermark(interval, since, expected):
    now = utc("2024-05-01T12:00:00")
    req = make("http://127.0.0.1:9", clock=ManualClock(now)).latest_request("AAPL", interval, since)
    assert (int(req.params["period1"]), int(req.params["period2"])) == (epoch(expected), epoch(now))


def test_one_minute_ranges_are_split_into_seven_day_requests():
    now = utc("2024-05-01T12:00:00")
    start, end = utc("2024-04-05T00:00:00"), utc("2024-04-25T00:00:00")
    reqs = list(make("http://127.0.0.1:9", clock=ManualClock(now)).range_requests("AAPL", "1min", start, end))
    week = timedelta(days=7)
    assert [r.window for r in reqs] == [(start, start + week), (start + week, start + 2 * week), (start + 2 * week, end)]
    assert all(int(r.params["period2"]) - int(r.params["period1"]) <= 7 * 86400 for r in reqs)
    assert [(int(r.params["period1"]), int(r.params["period2"])) for r in reqs] == [(epoch(a), epoch(b)) for a, b in
                                                                                      (r.window for r in reqs)]  # fmt: skip


@pytest.mark.parametrize(("interval", "days"), [("5min", 59), ("30min", 59), ("60min", 729), ("60min", 300)])
def test_longer_intervals_fit_one_request_within_what_yahoo_keeps(interval, days):
    now = utc("2024-05-01T12:00:00")
    start = now - timedelta(days=days)
    reqs = list(make("http://127.0.0.1:9", clock=ManualClock(now)).range_requests("AAPL", interval, start, now))
    assert len(reqs) == 1 and reqs[0].window == (start, now)


def test_daily_range_is_one_wider_request():
    now = utc("2024-05-01T12:00:00")
    start, end = utc("1990-01-01T05:00:00"), utc("2024-01-01T05:00:00")
    (req,) = make("http://127.0.0.1:9", clock=ManualClock(now)).range_requests("AAPL", "1day", start, end)
    assert req.window == (start, end) and "includePrePost" not in req.params
    assert (int(req.params["period1"]), int(req.params["period2"])) == (epoch(start) - 86400, epoch(end) + 86400)


@pytest.mark.parametrize(("interval", "days"), [("1min", 31), ("5min", 61), ("15min", 61), ("60min", 731)])
def test_windows_older_than_yahoo_keeps_are_a_clear_error_before_any_request(replay, interval, days):
    srv = replay(yahoo_route())
    now = START + timedelta(minutes=120)
    with make(srv.server.url, clock=ManualClock(now)) as p, pytest.raises(ConfigError) as info:
        p.fetch_range("MSFT", interval, now - timedelta(days=days), now)
    assert f"last {days - 1} days" in str(info.value) and srv.requests == []


def test_range_over_the_fixture_chunks_and_reports_empty_windows(replay):
    srv = replay(yahoo_route())
    now = START + timedelta(days=9)
    with make(srv.server.url, clock=ManualClock(now)) as p:
        result = p.fetch_range("MSFT", "1min", START - timedelta(days=8), START + timedelta(days=8))
    assert len(srv.requests) == 3 and len(result.bars) == 119
    assert result.no_data == [(START - timedelta(days=8), START - timedelta(days=1)),
                              (START + timedelta(days=6), START + timedelta(days=8))]  # fmt: skip


def test_every_interval_is_mapped():
    assert YahooProvider.intervals == {"1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "60m", "1day": "1d"}
    assert YahooProvider.default_rate_limit == "1/second 30/minute" and YahooProvider.key_required is False
    assert YahooProvider.default_base_url == "https://query2.finance.yahoo.com"


# -- the wire format, on the real recordings ---------------------------------------------------------------


def test_real_1m_recording_bars_are_utc_starts_with_exact_decimals():
    page = parse(real("yahoo_chart_AAPL_1m_2024-10-02.json"), "AAPL", "1min", period2=1727913600)
    stamps = [b.ts for b in page.bars]
    # 391 timestamps: index 105 (15:15Z) is all-null and skipped, the last (2024-10-03 20:00Z, after
    # period2 = 2024-10-03 00:00Z) is Yahoo's latest quote appended after the window: dropped
    assert len(page.bars) == 389 and page.rejected == [] and not page.no_data
    assert stamps[0] == utc("2024-10-02T13:30:00") and stamps[-1] == utc("2024-10-02T19:59:00")
    assert utc("2024-10-02T15:15:00") not in stamps and utc("2024-10-03T20:00:00") not in stamps
    first = page.bars[0]
    assert (first.open, first.high, first.low, first.close, first.volume) == ("225.89", "226.11", "225.42", "225.7", "1205461")
    last = page.bars[-1]
    assert (last.open, last.high, last.low, last.close) == ("226.86", "226.9601", "226.6901", "226.81")
    good, bad = validate_bars(page.bars)
    assert bad == [] and len(good) == 389


def test_real_1m_recording_through_fetch_range(replay):
    body = real("yahoo_chart_AAPL_1m_2024-10-02.json")
    srv = replay([(200, JSON, body)])
    start, end = utc("2024-10-02T00:00:00"), utc("2024-10-03T00:00:00")
    with make(srv.server.url, clock=ManualClock(utc("2024-10-04T00:00:00"))) as p:
        result = p.fetch_range("AAPL", "1min", start, end)
    assert len(result.bars) == 389 and result.bars[-1].ts == utc("2024-10-02T19:59:00")
    assert srv.requests[0][1]["period1"] == "1727827200" and srv.requests[0][1]["period2"] == "1727913600"


def test_real_daily_recording_is_normalised_to_new_york_midnight():
    page = parse(real("yahoo_chart_AAPL_1d_2020-08-31_2020-11-07.json"), "AAPL", "1day", period2=1604707200)
    assert len(page.bars) == 49 and page.rejected == []
    by_day = {b.ts.astimezone(zone("America/New_York")).date(): b for b in page.bars}
    assert all(b.ts.astimezone(zone("America/New_York")).time().isoformat() == "00:00:00" for b in page.bars)
    assert page.bars[0].ts == utc("2020-08-31T04:00:00")  # stamped 13:30Z (EDT open): 00:00 EDT
    assert page.bars[-1].ts == utc("2020-11-06T05:00:00")  # stamped 14:30Z (EST open): 00:00 EST
    first = by_day[date(2020, 8, 31)]
    assert (first.open, first.high, first.low, first.close, first.volume) == ("127.58", "131", "126", "129.04", "225702700")
    assert first.adj_close == "125.82674"  # indicators.adjclose (splits and dividends), float32 artefact trimmed


def test_real_daily_recording_events_become_actions():
    page = parse(real("yahoo_chart_AAPL_1d_2020-08-31_2020-11-07.json"), "AAPL", "1day", period2=1604707200)
    assert sorted(page.actions) == [CorporateAction("yahoo", "AAPL", date(2020, 8, 31), "split", ratio="4"),
                                    CorporateAction("yahoo", "AAPL", date(2020, 11, 6), "dividend", amount="0.205")]  # fmt: skip


def test_real_crypto_daily_recording_is_utc_midnight():
    page = parse(real("yahoo_chart_BTC-USD_1d_2020-01-01_2020-01-03.json"), "BTC-USD", "1day", period2=1578009600)
    assert [b.ts for b in page.bars] == [utc("2020-01-01T00:00:00"), utc("2020-01-02T00:00:00"), utc("2020-01-03T00:00:00")]
    first = page.bars[0]
    assert (first.open, first.high, first.low, first.close, first.volume) == ("7194.892", "7254.3306", "7174.9443",
                                                                             "7200.1743", "18565664997")  # fmt: skip
    assert first.adj_close == "7200.1743" and page.actions == [] and page.rejected == []


# -- the wire format, on our fixtures ----------------------------------------------------------------------


def test_exchange_daily_bars_across_dst_and_a_slipped_stamp():
    page = parse(fixture("yahoo/chart_SAP.DE_1d.json"), "SAP.DE", "1day")
    assert [b.ts for b in page.bars] == [utc("2024-03-24T23:00:00"), utc("2024-03-25T23:00:00"), utc("2024-03-26T23:00:00"),
                                         utc("2024-03-27T23:00:00"), utc("2024-04-01T22:00:00"), utc("2024-04-02T22:00:00"),
                                         utc("2024-04-03T22:00:00")]  # fmt: skip
    assert sorted(page.actions) == [CorporateAction("yahoo", "SAP.DE", date(2024, 3, 27), "dividend", amount="2.2"),
                                    CorporateAction("yahoo", "SAP.DE", date(2024, 4, 4), "split", ratio="0.5")]  # fmt: skip


def chart_body(stamps, quote, meta=None, events=None) -> bytes:
    res = {"meta": {"symbol": "MSFT", "exchangeTimezoneName": "America/New_York", **(meta or {})}, "timestamp": stamps,
           "indicators": {"quote": [quote]}}  # fmt: skip
    if events is not None:
        res["events"] = events
    return json.dumps({"chart": {"result": [res], "error": None}}).encode()


def test_records_that_cannot_become_bars_are_rejections():
    t = epoch(START)
    quote = {"open": [1.5, None, "2", 1.5, 1.5, None], "high": [1.5, 2.0, 2.0, 1.5, 1.5, None],
             "low": [1.5, 1.0, 1.0, 1.5, 1.5, None], "close": [1.5, 1.5, 1.5, 1.5, 1.5, None],
             "volume": [10, 5, 5, None, 7, None]}  # fmt: skip
    page = parse(chart_body([t, t + 60, t + 120, t + 180, "x", t + 300], quote), "MSFT", "1min")
    assert [(r.key, r.reason) for r in page.rejected] == [(str(t + 60), MISSING_FIELD), (str(t + 120), NON_NUMERIC),
                                                          ("x", BAD_TIMESTAMP)]  # fmt: skip
    assert [(b.ts, b.volume) for b in page.bars] == [(START, "10"), (START + timedelta(minutes=3), None)]  # null volume: NULL
    assert all(len(r.excerpt) <= 200 and r.symbol == "MSFT" for r in page.rejected)


def test_no_volume_column_means_no_volume():
    t = epoch(START)
    page = parse(chart_body([t], {"open": [2.0], "high": [2.0], "low": [2.0], "close": [2.0]}), "MSFT", "1min")
    assert [(b.open, b.volume) for b in page.bars] == [("2", None)]


def test_malformed_events_are_rejections_not_actions():
    events = {"dividends": {"1": {"amount": "lots", "date": 1}}, "splits": {"2": {"date": 2, "numerator": 0, "denominator": 1}}}
    page = parse(chart_body([], {}, events=events), "MSFT", "1min")
    assert page.actions == [] and [r.reason for r in page.rejected] == [BAD_ACTION, BAD_ACTION]


def test_split_ratio_falls_back_to_split_ratio_text():
    events = {"splits": {"1598880600": {"date": 1598880600, "splitRatio": "3:2"}}}
    page = parse(chart_body([], {}, events=events), "MSFT", "1min")
    assert page.actions == [CorporateAction("yahoo", "MSFT", date(2020, 8, 31), "split", ratio="1.5")]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"chart": null}',
        b'{"chart": {"result": null, "error": null}}',
        b'{"chart": {"result": [{"timestamp": [1], "indicators": {"quote": [{}]}}], "error": null}}',
        chart_body([1, 2], {"open": [1.0], "high": [1.0, 1.0], "low": [1.0, 1.0], "close": [1.0, 1.0]}),
        chart_body([], {"open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0]}),
        chart_body([60], {"open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0]}, meta={"symbol": "AAPL"}),
        b"\xff\xfe not json",
    ],
)
def test_anything_not_the_documented_format_is_a_payload_error(body):
    with pytest.raises(PayloadError) as info:
        parse(body, "MSFT", "1min")
    assert info.value.provider == "yahoo" and info.value.symbol == "MSFT" and info.value.url == "http://x/chart"


def test_daily_bars_need_the_exchange_zone():
    body = json.dumps(
        {
            "chart": {
                "result": [
                    {
                        "meta": {"symbol": "MSFT"},
                        "timestamp": [60],
                        "indicators": {"quote": [{"open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0], "volume": [1]}]},
                    }
                ],
                "error": None,
            }
        }
    ).encode()
    with pytest.raises(PayloadError, match="time zone"):
        parse(body, "MSFT", "1day")
    assert parse(body, "MSFT", "1min").bars[0].ts == datetime(1970, 1, 1, 0, 1, tzinfo=UTC)  # intraday needs none


def test_a_result_without_timestamps_is_no_data():
    page = parse(fixture("yahoo/no_data.json"), "MSFT", "1min")
    assert page.no_data and page.bars == [] and page.rejected == []


def test_decimal_text():
    assert decimal_text(226.86000061035156) == "226.86"  # float32 artefact
    assert decimal_text(0.205) == "0.205"  # a float64 value stays as it is
    assert decimal_text(127.58) == "127.58" and decimal_text(131) == "131"
    assert decimal_text(1.2e-05) == "0.000012" and decimal_text(3.4e39) == "34" + "0" * 38
    assert decimal_text(-0.0) == "0" and decimal_text(0.0) == "0"
    assert decimal_text(True) is None and decimal_text("1.5") is None and decimal_text(float("nan")) is None


def test_trading_date_of_a_dst_slipped_stamp():
    berlin = zone("Europe/Berlin")
    assert trading_date(epoch(utc("2024-04-02T20:00:00")), berlin) == date(2024, 4, 3)  # 22:00 local: the next day's
    assert trading_date(epoch(utc("2024-04-02T19:59:00")), berlin) == date(2024, 4, 2)


# -- errors ------------------------------------------------------------------------------------------------


def test_unknown_symbol_is_invalid_symbol_with_yahoos_words(replay):
    srv = replay(yahoo_route())
    with make(srv.server.url) as p, pytest.raises(InvalidSymbol) as info:
        p.fetch_bars("NOSUCHSYM", "1min")
    err = info.value
    assert "No data found, symbol may be delisted" in str(err) and err.url.startswith(srv.server.url + CHART + "NOSUCHSYM")


def test_a_404_without_yahoos_error_body_is_not_an_invalid_symbol(replay):
    srv = replay([(404, {"Content-Type": "text/html"}, b"<html>Not here</html>")])
    with make(srv.server.url) as p, pytest.raises(HTTPError) as info:
        p.fetch_bars("MSFT", "1min")
    assert not isinstance(info.value, InvalidSymbol) and info.value.status == 404 and info.value.transient is False


@pytest.mark.parametrize(
    ("status", "name", "words"),
    [
        (422, "yahoo/error_unprocessable.json", "within the last 30 days"),
        (400, "yahoo/error_bad_request.json", "interval=7m is not supported"),
    ],
)
def test_client_errors_are_terminal_and_carry_yahoos_description(replay, status, name, words):
    srv = replay([(status, JSON, fixture(name))])
    with make(srv.server.url) as p, pytest.raises(HTTPError) as info:
        p.fetch_bars("MSFT", "1min")
    assert info.value.status == status and info.value.transient is False and words in str(info.value)
    assert len(srv.requests) == 1


def test_throttling_is_rate_limited_with_retry_after(replay):
    srv = replay([(429, {"Content-Type": "text/plain", "Retry-After": "7"}, b"Too Many Requests\r\n")])
    with make(srv.server.url) as p, pytest.raises(RateLimited) as info:
        p.fetch_bars("MSFT", "1min")
    assert info.value.transient and info.value.retry_after_seconds == 7.0 and info.value.symbol == "MSFT"


def test_chart_error_in_a_2xx_body():
    with pytest.raises(InvalidSymbol):
        parse(fixture("yahoo/error_not_found.json"), "MSFT", "1min")
    with pytest.raises(RateLimited):
        parse(b'{"chart": {"result": null, "error": {"code": "Too Many Requests", "description": ""}}}', "MSFT", "1min")
    with pytest.raises(HTTPError) as info:
        parse(fixture("yahoo/error_bad_request.json"), "MSFT", "1min")
    assert info.value.transient is False


# -- end to end: main.py as a user runs it -----------------------------------------------------------------


def run_cli(args, *, cwd, env):
    dropped = ("YAHOO", "ALPHA_VANTAGE", "DATABASE_URL", "STREAM_STATE")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_cli_polls_yahoo_daily_into_postgres(tmp_path, replay, pg_engine, pg_url):
    body = real("yahoo_chart_AAPL_1d_2020-08-31_2020-11-07.json")

    def route(path, q):  # the subprocess's clock is the wall clock: the whole recording, whatever the period
        if unquote(path) == f"{CHART}AAPL" and q.get("interval") == "1d":
            return 200, JSON, body
        return 404, JSON, fixture("yahoo/error_not_found.json")

    srv = replay(route)
    args = ["--continuous-poll", "--provider", "yahoo", "--symbols", "AAPL", "NOSUCHSYM", "--interval", "1day",
            "--poll-interval", "0.01", "--poll-max-iterations", "1"]  # fmt: skip
    r = run_cli(args, cwd=tmp_path, env={"YAHOO_BASE_URL": srv.server.url, "DATABASE_URL": pg_url})
    assert r.returncode == 1, r.stderr  # one symbol failed: partial
    assert "NOSUCHSYM" in r.stderr and "No data found, symbol may be delisted" in r.stderr
    with pg_engine.connect() as c:
        got = c.exec_driver_sql("SELECT provider, symbol, interval, count(*), min(ts), max(ts) FROM bars GROUP BY 1, 2, 3").all()
        first = c.exec_driver_sql("SELECT open::text, high::text, low::text, close::text, volume::text, adj_close::text "
                                  "FROM bars ORDER BY ts LIMIT 1").one()  # fmt: skip
        actions = c.exec_driver_sql("SELECT ex_date, kind, ratio::text, amount::text FROM corporate_actions "
                                    "WHERE provider = 'yahoo' AND symbol = 'AAPL' ORDER BY ex_date").all()  # fmt: skip
    assert got == [("yahoo", "AAPL", "1day", 49, utc("2020-08-31T04:00:00"), utc("2020-11-06T05:00:00"))]
    assert tuple(first) == ("127.58", "131", "126", "129.04", "225702700", "125.82674")
    assert [tuple(a) for a in actions] == [
        (date(2020, 8, 31), "split", "4", None),
        (date(2020, 11, 6), "dividend", None, "0.205"),
    ]
    path, q = next((p, q) for p, q in srv.requests if p.endswith("/AAPL"))
    assert q["interval"] == "1d" and q["events"] == "div,splits" and "includePrePost" not in q
