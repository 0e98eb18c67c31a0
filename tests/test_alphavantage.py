"""Alpha Vantage provider against a loopback server replaying real recorded responses."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from contract import ProviderContract
from errors import HTTPError, InvalidSymbol, PayloadError, PremiumRequired, QuotaExhausted, RateLimited
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider, parse_response
from etl.retry import RetryPolicy
from etl.transform import zone
from support import ok, real

KEY = "SECRETKEY123456"
NY = zone("US/Eastern")
FAST = RetryPolicy(max_attempts=3, initial_delay_seconds=0.01, max_delay_seconds=0.5, jitter_seconds=0.0)
BOM = b"\xef\xbb\xbf"


def make(url, *, sleeps=None, **cfg):
    cfg.setdefault("retry", FAST)
    sleep = sleeps.append if sleeps is not None else None
    return AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=url, **cfg), sleep=sleep)


def routed(path, q):
    if q.get("symbol") == "IBM":
        return ok(real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv"), "text/csv")
    return ok(real("alphavantage_error_invalid_api_call_BOP.json"))


class TestContract(ProviderContract):
    @pytest.fixture
    def provider(self, replay):
        with make(replay(routed).url) as p:
            yield p

    @pytest.fixture
    def unknown_symbol(self):
        return "NOSUCH"


# --- the wire format, on real recordings -------------------------------------------------


def test_intraday_json_real_recording():
    r = parse_response(real("alphavantage_intraday_1min_MSFT_compact_2017-12-18.json"), symbol="MSFT", interval="1min")
    assert len(r.bars) == 100 and r.rejected == []
    newest = r.bars[-1]
    # "2017-12-18 14:56:00" US/Eastern (EST) is 19:56Z; values kept as the exact decimal text
    assert newest.ts == datetime(2017, 12, 18, 19, 56, tzinfo=UTC)
    assert (newest.open, newest.high, newest.low, newest.close, newest.volume) == (
        "86.4900",
        "86.5000",
        "86.4750",
        "86.5000",
        "10494",
    )


def test_intraday_csv_real_recording_lf_and_crlf():
    lf = parse_response(real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv"), symbol="IBM", interval="5min")
    crlf = parse_response(real("alphavantage_intraday_5min_MSFT_compact_2019-04-18.csv"), symbol="MSFT", interval="5min")
    assert len(lf.bars) == 100 and len(crlf.bars) == 100
    assert lf.bars[-1].ts == datetime(2026, 5, 15, 23, 55, tzinfo=UTC)  # 19:55 EDT
    assert crlf.bars[-1].close == "123.3700"  # no stray carriage return


def test_daily_json_and_csv_start_at_new_york_midnight():
    js = parse_response(real("alphavantage_daily_MSFT_compact_2018-06-08.json"), symbol="MSFT", interval="1day")
    cs = parse_response(real("alphavantage_daily_IBM_compact_2026-05-15.csv"), symbol="IBM", interval="1day")
    assert js.bars[-1].ts == datetime(2018, 6, 8, 4, tzinfo=UTC)  # EDT midnight
    assert js.bars[0].ts == datetime(2018, 1, 17, 5, tzinfo=UTC)  # EST midnight
    assert cs.bars[-1].ts == datetime(2026, 5, 15, 4, tzinfo=UTC) and len(cs.bars) == 100


def test_byte_order_mark_is_ignored():
    body = real("alphavantage_intraday_1min_MSFT_compact_2017-12-18.json")
    assert (
        parse_response(BOM + body, symbol="MSFT", interval="1min").bars
        == parse_response(body, symbol="MSFT", interval="1min").bars
    )


def test_throttle_note_with_bom_is_rate_limited():
    body = real("alphavantage_throttle_note_5_per_minute.json")
    assert body.startswith(BOM)
    with pytest.raises(RateLimited) as info:
        parse_response(body, symbol="IBM", interval="5min")
    assert info.value.transient and not isinstance(info.value, QuotaExhausted)


def test_error_message_is_invalid_symbol():
    with pytest.raises(InvalidSymbol):
        parse_response(real("alphavantage_error_invalid_api_call_BOP.json"), symbol="IBM", interval="5min")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"Information": "Thank you for using Alpha Vantage! This is a premium endpoint. Subscribe..."}', PremiumRequired),
        (
            b'{"Information": "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day."}',
            QuotaExhausted,
        ),
        (
            b'{"Information": "Please consider spreading out your free API requests more sparingly (1 request per second)."}',
            RateLimited,
        ),
        (b'{"Meta Data": {"4. Interval": "5min"}, "Time Series (5min)": ', PayloadError),  # truncated
        (b'{"Global Quote": {}}', PayloadError),
        (b"<html>gateway error</html>", PayloadError),
        (b"", PayloadError),
        (b"\xff\xfe\x00", PayloadError),
    ],
)
def test_error_bodies_are_typed(body, error):
    with pytest.raises(error):
        parse_response(body, symbol="IBM", interval="5min")


def test_interval_mismatch_is_a_payload_error():
    with pytest.raises(PayloadError, match="asked for 5min"):
        parse_response(real("alphavantage_intraday_1min_MSFT_compact_2017-12-18.json"), symbol="MSFT", interval="5min")


def test_bad_rows_are_rejected_not_dropped():
    body = (
        b"timestamp,open,high,low,close,volume\r\n"
        b"2024-01-02 10:00:00,1,2,0.5,1.5,10\r\nnot-a-time,1,2,0.5,1.5,10\r\n2024-01-02 10:05:00,1,2\r\n"
    )
    r = parse_response(body, symbol="IBM", interval="5min")
    assert len(r.bars) == 1
    assert sorted(x.reason for x in r.rejected) == ["bad timestamp", "missing field"]


# --- bar labels: the evidence in the recordings ---------------------------------------


def _sessions(bars):
    days = defaultdict(list)
    for b in bars:
        local = b.ts.astimezone(NY)
        days[local.date()].append(local.time())
    return {d: (min(t), max(t), len(t)) for d, t in days.items()}


def test_2020_extended_recording_is_end_labelled():
    body = real("alphavantage_intraday_extended_1min_MSFT_year1month1.csv")
    as_end = _sessions(parse_response(body, symbol="MSFT", interval="1min", bar_label="end").bars)
    as_start = _sessions(parse_response(body, symbol="MSFT", interval="1min", bar_label="start").bars)
    # read as end labels, every bar starts inside the 04:00-20:00 extended session, and on
    # most days the first bar is 04:00-04:01 and the last 19:59-20:00
    assert all(lo.hour >= 4 and hi.hour < 20 for lo, hi, _ in as_end.values())
    assert sum(1 for lo, _, _ in as_end.values() if (lo.hour, lo.minute) == (4, 0)) >= 2 / 3 * len(as_end)
    assert sum(1 for _, hi, _ in as_end.values() if (hi.hour, hi.minute) == (19, 59)) >= 0.5 * len(as_end)
    # read as start labels, bars would begin at 20:00, after the session has closed
    assert any(hi.hour == 20 for _, hi, _ in as_start.values())


def test_2019_regular_session_recording_is_end_labelled():
    body = real("alphavantage_intraday_5min_MSFT_compact_2019-04-18.csv")
    days = _sessions(parse_response(body, symbol="MSFT", interval="5min", bar_label="end").bars)
    lo, hi, n = days[datetime(2019, 4, 18).date()]
    assert (lo.hour, lo.minute, hi.hour, hi.minute, n) == (9, 30, 15, 55, 78)  # 09:30-16:00 in 78 bars


def test_2026_recording_is_start_labelled():
    bars = parse_response(real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv"), symbol="IBM", interval="5min").bars
    regular = [b for b in bars if b.ts.astimezone(NY).hour < 17]
    auction = max(regular, key=lambda b: int(b.volume))
    # the 16:00:00 closing auction falls in the bar *starting* at 16:00; the last bar starts 19:55
    assert auction.ts.astimezone(NY).strftime("%H:%M") == "16:00"
    assert bars[-1].ts.astimezone(NY).strftime("%H:%M") == "19:55"


# --- the HTTP path: parameters, retries, timeouts, redaction ------------------------------


def test_request_parameters(replay):
    srv = replay([ok(real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv"), "text/csv")])
    make(srv.url, datatype="csv", outputsize="full", extended_hours=False, month="2026-05").fetch_bars("IBM", "5min")
    make(srv.url).fetch_bars("IBM", "1day")  # daily function (the CSV parses as dates too)
    (_, intraday), (_, daily) = srv.requests
    assert intraday == {
        "function": "TIME_SERIES_INTRADAY",
        "symbol": "IBM",
        "interval": "5min",
        "outputsize": "full",
        "extended_hours": "false",
        "month": "2026-05",
        "datatype": "csv",
        "apikey": KEY,
    }
    assert daily["function"] == "TIME_SERIES_DAILY" and "interval" not in daily


def test_throttle_payload_is_retried_then_succeeds(replay):
    note = ok(real("alphavantage_throttle_note_5_per_minute.json"))
    srv = replay([note, note, ok(real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv"), "text/csv")])
    sleeps = []
    assert len(make(srv.url, sleeps=sleeps).fetch_bars("IBM", "5min").bars) == 100
    assert len(srv.requests) == 3 and len(sleeps) == 2
    assert sleeps[1] > sleeps[0]  # exponential backoff


def test_throttle_beyond_attempts_raises_rate_limited(replay):
    srv = replay([ok(real("alphavantage_throttle_note_5_per_minute.json"))])
    with pytest.raises(RateLimited):
        make(srv.url, sleeps=[]).fetch_bars("IBM", "5min")
    assert len(srv.requests) == FAST.max_attempts


def test_http_429_honours_retry_after(replay):
    srv = replay([(429, {"Retry-After": "1"}, b"slow down"), ok(real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv"))])
    sleeps = []
    make(
        srv.url,
        sleeps=sleeps,
        retry=RetryPolicy(max_attempts=2, initial_delay_seconds=0.01, jitter_seconds=0, max_delay_seconds=5),
    ).fetch_bars("IBM", "5min")
    assert sleeps == [1.0]


def test_retry_after_longer_than_max_delay_is_not_waited_out(replay):
    srv = replay([(429, {"Retry-After": "3600"}, b"")])
    with pytest.raises(RateLimited) as info:
        make(srv.url, sleeps=[]).fetch_bars("IBM", "5min")
    assert info.value.retry_after_seconds == 3600 and len(srv.requests) == 1


@pytest.mark.parametrize(("status", "attempts"), [(503, 3), (500, 3), (404, 1), (403, 1)])
def test_server_errors_retried_client_errors_not(replay, status, attempts):
    srv = replay([(status, {}, b"nope")])
    with pytest.raises(HTTPError) as info:
        make(srv.url, sleeps=[]).fetch_bars("IBM", "5min")
    assert info.value.status == status and len(srv.requests) == attempts


def test_premium_and_invalid_symbol_are_not_retried(replay):
    srv = replay([ok(b'{"Information": "This is a premium endpoint."}')])
    with pytest.raises(PremiumRequired):
        make(srv.url, sleeps=[]).fetch_bars("IBM", "5min")
    assert len(srv.requests) == 1


def test_read_timeout_is_transient_and_redacted(replay, caplog):
    def slow(_p, _q):
        time.sleep(0.5)
        return ok(b"{}")

    srv = replay(slow)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HTTPError) as info:
        make(
            srv.url,
            sleeps=[],
            read_timeout_seconds=0.1,
            retry=RetryPolicy(max_attempts=2, initial_delay_seconds=0, jitter_seconds=0),
        ).fetch_bars("IBM", "5min")
    assert info.value.transient and "timeout" in str(info.value)
    assert KEY not in str(info.value) and "apikey=***" in info.value.url
    assert info.value.__cause__ is None and info.value.__suppress_context__  # the raw requests error (with the key) is dropped
    assert KEY not in caplog.text


def test_connection_refused_is_redacted():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(HTTPError) as info:
        make(f"http://127.0.0.1:{port}/query", sleeps=[]).fetch_bars("IBM", "5min")
    assert info.value.transient and KEY not in str(info.value) and "ConnectionError" in str(info.value)


def test_quota_exhausted_is_not_retried_in_cycle(replay):
    srv = replay([ok(b'{"Information": "Our standard API rate limit is 25 requests per day."}')])
    with pytest.raises(QuotaExhausted) as info:
        make(srv.url, sleeps=[]).fetch_bars("IBM", "5min")
    assert len(srv.requests) == 1
    assert 0 < info.value.retry_after_seconds <= timedelta(days=1, hours=1).total_seconds()


def test_watermark_gap_is_backfilled_with_full_output(replay):
    compact = real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv")  # 11:40-19:55 EDT
    full = b"timestamp,open,high,low,close,volume\r\n" + b"".join(
        f"2026-05-15 {h:02d}:{m:02d}:00,1,2,0.5,1.5,10\r\n".encode() for h in range(19, 3, -1) for m in range(55, -1, -5)
    )
    srv = replay(lambda _p, q: ok(full if q["outputsize"] == "full" else compact, "text/csv"))
    p = make(srv.url)
    recent = datetime(2026, 5, 15, 23, 50, tzinfo=UTC)  # inside the compact window: one request
    assert len(p.fetch_bars("IBM", "5min", since=recent).bars) == 100 and len(srv.requests) == 1
    old = datetime(2026, 5, 15, 12, 0, tzinfo=UTC)  # 08:00 EDT, before the compact window: backfill
    got = p.fetch_bars("IBM", "5min", since=old).bars
    assert [q["outputsize"] for _, q in srv.requests[1:]] == ["compact", "full"]
    assert got[0].ts == datetime(2026, 5, 15, 8, 0, tzinfo=UTC) and len(got) == 192


def test_proxy_from_the_environment_is_still_honoured(replay, monkeypatch):
    # the HTTP client resolves proxy settings once per endpoint instead of on every request
    proxy = replay([ok(real("alphavantage_intraday_5min_IBM_compact_2026-05-15.csv"), "text/csv")])
    monkeypatch.setenv("HTTP_PROXY", proxy.server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    bars = make("http://alphavantage.invalid/query").fetch_bars("IBM", "5min").bars  # only the proxy can answer
    assert len(bars) == 100 and proxy.requests[0][1]["symbol"] == "IBM"
