"""Alpha Vantage provider: the parser, and the HTTP path against a loopback server.

Behaviour is tested on our own payloads (tests/fixtures/alphavantage, see generate.py there);
the facts about Alpha Vantage itself (number formats, bar labels) on the real recordings,
which skip without ../shared.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from contract import ProviderContract
from errors import HTTPError, InvalidSymbol, PayloadError, PremiumRequired, QuotaExhausted, RateLimited
from etl.providers.alphavantage import (
    BAD_TIMESTAMP,
    MISSING_FIELD,
    REPEATED_FIELD,
    REPEATED_KEY,
    AlphaVantageConfig,
    AlphaVantageProvider,
    parse_response,
)
from etl.retry import RetryPolicy
from etl.transform import AMBIGUOUS_LOCAL_TIME, NONEXISTENT_LOCAL_TIME, local_to_utc, validate_bars, zone
from support import fixture, ok, real

KEY = "SECRETKEY123456"
NY = zone("US/Eastern")
FAST = RetryPolicy(max_attempts=3, initial_delay_seconds=0.01, max_delay_seconds=0.5, jitter_seconds=0.0)
BOM = b"\xef\xbb\xbf"


def make(url, *, sleeps=None, **cfg):
    cfg.setdefault("retry", FAST)
    sleep = sleeps.append if sleeps is not None else None
    return AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=url, **cfg), sleep=sleep)


IBM_CSV = "alphavantage/intraday_5min_IBM.csv"  # 2024-01-31 11:40-19:55 New York (EST), 100 bars


def routed(path, q):
    if q.get("symbol") == "IBM":
        return ok(fixture(IBM_CSV), "text/csv")
    return ok(fixture("alphavantage/error_invalid_call.json"))


class TestContract(ProviderContract):
    @pytest.fixture
    def provider(self, replay):
        with make(replay(routed).url) as p:
            yield p

    @pytest.fixture
    def unknown_symbol(self):
        return "NOSUCH"

    @pytest.fixture
    def api_secrets(self):
        return [KEY]


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


def test_daily_real_recordings_start_at_new_york_midnight():
    js = parse_response(real("alphavantage_daily_MSFT_compact_2018-06-08.json"), symbol="MSFT", interval="1day")
    cs = parse_response(real("alphavantage_daily_IBM_compact_2026-05-15.csv"), symbol="IBM", interval="1day")
    assert js.bars[-1].ts == datetime(2018, 6, 8, 4, tzinfo=UTC)  # EDT midnight
    assert js.bars[0].ts == datetime(2018, 1, 17, 5, tzinfo=UTC)  # EST midnight
    assert cs.bars[-1].ts == datetime(2026, 5, 15, 4, tzinfo=UTC) and len(cs.bars) == 100


# --- the wire format, on our own payloads -------------------------------------------------


def test_intraday_json_and_csv_lf_and_crlf():
    js = parse_response(fixture("alphavantage/intraday_1min_MSFT.json"), symbol="MSFT", interval="1min")
    lf = parse_response(fixture(IBM_CSV), symbol="IBM", interval="5min")
    crlf = parse_response(fixture("alphavantage/intraday_5min_IBM_crlf.csv"), symbol="IBM", interval="5min")
    assert len(js.bars) == len(lf.bars) == 100 and js.rejected == lf.rejected == []
    assert js.bars[-1].ts == datetime(2024, 1, 31, 21, 0, tzinfo=UTC)  # 16:00 EST
    assert lf.bars[-1].ts == datetime(2024, 2, 1, 0, 55, tzinfo=UTC)  # 19:55 EST
    assert crlf.bars == lf.bars and not crlf.bars[-1].volume.endswith("\r")


def test_daily_json_and_csv_start_at_new_york_midnight():
    js = parse_response(fixture("alphavantage/daily_MSFT.json"), symbol="MSFT", interval="1day")
    cs = parse_response(fixture("alphavantage/daily_IBM.csv"), symbol="IBM", interval="1day")
    assert js.bars[-1].ts == cs.bars[-1].ts == datetime(2024, 1, 31, 5, tzinfo=UTC)  # EST midnight
    assert js.bars[0].ts == cs.bars[0].ts == datetime(2023, 9, 14, 4, tzinfo=UTC)  # EDT midnight
    assert len(js.bars) == len(cs.bars) == 100


def test_byte_order_mark_is_ignored():
    body = fixture("alphavantage/intraday_1min_MSFT.json")
    assert (
        parse_response(BOM + body, symbol="MSFT", interval="1min").bars
        == parse_response(body, symbol="MSFT", interval="1min").bars
    )


def test_throttle_note_with_bom_is_rate_limited():
    body = fixture("alphavantage/throttle_note.json")
    assert body.startswith(BOM)
    with pytest.raises(RateLimited) as info:
        parse_response(body, symbol="IBM", interval="5min")
    assert info.value.transient and not isinstance(info.value, QuotaExhausted)


def test_real_throttle_note_with_bom_is_rate_limited():
    with pytest.raises(RateLimited):
        parse_response(real("alphavantage_throttle_note_5_per_minute.json"), symbol="IBM", interval="5min")


def test_error_message_is_invalid_symbol():
    with pytest.raises(InvalidSymbol):
        parse_response(fixture("alphavantage/error_invalid_call.json"), symbol="IBM", interval="5min")


def test_real_error_message_is_invalid_symbol():
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
        (b"timestamp,open,high,low,close,volume\r\n2024-01-02 10:00:00,1,2,0.5,1.5,10\r2024-01-02 10:05:00,1\n", PayloadError),
    ],
)
def test_error_bodies_are_typed(body, error):
    with pytest.raises(error):
        parse_response(body, symbol="IBM", interval="5min")


def test_interval_mismatch_is_a_payload_error():
    with pytest.raises(PayloadError, match="asked for 5min"):
        parse_response(fixture("alphavantage/intraday_1min_MSFT.json"), symbol="MSFT", interval="5min")


def test_bad_rows_are_rejected_not_dropped():
    body = (
        b"timestamp,open,high,low,close,volume\r\n"
        b"2024-01-02 10:00:00,1,2,0.5,1.5,10\r\nnot-a-time,1,2,0.5,1.5,10\r\n2024-01-02 10:05:00,1,2\r\n"
    )
    r = parse_response(body, symbol="IBM", interval="5min")
    assert len(r.bars) == 1
    assert [(x.key, x.reason, x.excerpt) for x in r.rejected] == [
        ("not-a-time", BAD_TIMESTAMP, "not-a-time,1,2,0.5,1.5,10"),
        ("2024-01-02 10:05:00", MISSING_FIELD, "2024-01-02 10:05:00,1,2"),
    ]


# --- integrity: nothing guessed, nothing conflicting, nothing about another symbol -------


def test_spring_forward_gap_is_rejected_not_mapped_onto_the_real_hour():
    # 00:00-04:55 New York every 5 minutes on 2024-03-10: 02:00-02:55 never existed
    body = fixture("alphavantage/intraday_5min_IBM_spring_forward.json")
    r = parse_response(body, symbol="IBM", interval="5min")
    gap = [f"2024-03-10 02:{m:02d}:00" for m in range(55, -1, -5)]  # newest first, as in the payload
    assert [(x.key, x.reason) for x in r.rejected] == [(k, NONEXISTENT_LOCAL_TIME) for k in gap]
    assert r.rejected[0].excerpt.startswith('{"2024-03-10 02:55:00":{"1. open":"')
    # the 48 real bars, each once, and 03:00-03:55 EDT (07:00-07:55Z) keep their own values
    series = json.loads(body)["Time Series (5min)"]
    assert len(r.bars) == 48 and len({b.ts for b in r.bars}) == 48
    for b in r.bars:
        local = b.ts.astimezone(NY).strftime("%Y-%m-%d %H:%M:%S")
        assert series[local]["4. close"] == b.close, local
    assert validate_bars(r.bars)[1] == []


def test_fall_back_hour_is_rejected_as_ambiguous_in_both_copies():
    # real instants 04:00-08:55Z in New York time: 01:00-01:55 appears twice (EDT, then EST)
    r = parse_response(fixture("alphavantage/intraday_5min_IBM_fall_back.csv"), symbol="IBM", interval="5min")
    assert len(r.rejected) == 24 and {x.reason for x in r.rejected} == {AMBIGUOUS_LOCAL_TIME}
    assert sorted({x.key for x in r.rejected}) == [f"2024-11-03 01:{m:02d}:00" for m in range(0, 60, 5)]
    assert r.rejected[0].excerpt.startswith("2024-11-03 01:55:00,") and r.rejected[0].excerpt.count(",") == 5
    stamps = [b.ts for b in r.bars]
    expected = [datetime(2024, 11, 3, 4, tzinfo=UTC) + timedelta(minutes=5 * k) for k in range(60)]
    assert stamps == [t for t in expected if not datetime(2024, 11, 3, 5) <= t.replace(tzinfo=None) < datetime(2024, 11, 3, 7)]
    assert len(stamps) == 36  # 00:00-00:55 EDT and 02:00-03:55 EST


def test_repeated_json_keys_with_different_values_are_rejected_identical_ones_kept_once():
    r = parse_response(fixture("alphavantage/intraday_1min_MSFT_repeated_keys.json"), symbol="MSFT", interval="1min")
    assert [(x.key, x.reason) for x in r.rejected] == [("2024-01-31 15:59:00", REPEATED_KEY)] * 2
    assert r.rejected[0].excerpt == (
        '{"2024-01-31 15:59:00":{"1. open":"397.9000","2. high":"398.1000","3. low":"397.8000",'
        '"4. close":"398.0000","5. volume":"12345"}}'
    )
    assert r.rejected[1].excerpt != r.rejected[0].excerpt and r.rejected[1].excerpt.startswith('{"2024-01-31 15:59:00":')
    local = [b.ts.astimezone(NY).strftime("%H:%M") for b in r.bars]
    assert local == ["15:51", "15:52", "15:53", "15:54", "15:55", "15:56", "15:57", "15:58", "16:00"]
    assert validate_bars(r.bars) == (r.bars, [])


def _series_json(records: str, symbol: str = "IBM", meta_extra: str = "") -> bytes:
    """A small intraday JSON body written as text, so that keys may repeat."""
    meta = f'"2. Symbol": "{symbol}", "4. Interval": "5min", {meta_extra}"6. Time Zone": "US/Eastern"'
    return f'{{"Meta Data": {{{meta}}}, "Time Series (5min)": {{{records}}}}}'.encode()


GOOD = '{"1. open": "1.5", "2. high": "2", "3. low": "1", "4. close": "1.5", "5. volume": "10"}'


def test_a_field_repeated_with_different_values_rejects_the_record():
    body = _series_json(
        '"2024-01-02 10:05:00": {"1. open": "1.5", "1. open": "1.9", "2. high": "2", "3. low": "1", "4. close": "1.5",'
        ' "5. volume": "10"}, "2024-01-02 10:00:00": ' + GOOD
    )
    r = parse_response(body, symbol="IBM", interval="5min")
    assert [b.ts for b in r.bars] == [datetime(2024, 1, 2, 15, 0, tzinfo=UTC)]
    assert [(x.key, x.reason) for x in r.rejected] == [("2024-01-02 10:05:00", REPEATED_FIELD)]


def test_a_field_repeated_identically_is_harmless():
    body = _series_json('"2024-01-02 10:00:00": {"1. open": "1.5", ' + GOOD[1:])
    r = parse_response(body, symbol="IBM", interval="5min")
    assert len(r.bars) == 1 and r.rejected == []


def test_meta_data_repeating_the_symbol_differently_is_a_payload_error():
    body = _series_json('"2024-01-02 10:00:00": ' + GOOD, meta_extra='"2. Symbol": "MSFT", ')
    with pytest.raises(PayloadError, match="repeated with different values"):
        parse_response(body, symbol="IBM", interval="5min")


@pytest.mark.parametrize("asked", ["IBM", "MSFT.LON", "MSF"])
def test_a_reply_about_another_symbol_fails_and_returns_nothing(asked):
    with pytest.raises(PayloadError) as info:
        parse_response(
            fixture("alphavantage/intraday_1min_MSFT.json"), symbol=asked, interval="1min", url="http://x/q?apikey=***"
        )
    err = info.value
    assert not err.transient and (err.provider, err.symbol, err.url) == ("alphavantage", asked, "http://x/q?apikey=***")
    assert "'MSFT'" in str(err) and asked in str(err)


def test_the_symbol_check_ignores_case_and_padding():
    body = fixture("alphavantage/intraday_1min_MSFT.json").replace(b'"2. Symbol": "MSFT"', b'"2. Symbol": " msft "')
    assert len(parse_response(body, symbol="MSFT", interval="1min").bars) == 100


def test_a_reply_about_another_symbol_is_not_retried_and_loads_nothing(replay):
    srv = replay([ok(fixture("alphavantage/intraday_1min_MSFT.json"))])
    with pytest.raises(PayloadError) as info:
        make(srv.url, sleeps=[]).fetch_bars("IBM", "1min")
    assert len(srv.requests) == 1 and info.value.symbol == "IBM" and "apikey=***" in info.value.url


def test_json_numbers_and_odd_records_are_rejected_not_crashing():
    body = _series_json(
        '"2024-01-02 10:10:00": "junk", "2024-01-02 10:05:00": {"1. open": 1.5, "2. high": 2, "3. low": 1,'
        ' "4. close": 1.5, "5. volume": 10}, "2024-01-02 10:00:00": ' + GOOD
    )
    r = parse_response(body, symbol="IBM", interval="5min")
    junk = ("2024-01-02 10:10:00", MISSING_FIELD, '{"2024-01-02 10:10:00":"junk"}')
    assert [(x.key, x.reason, x.excerpt) for x in r.rejected] == [junk]
    good, rejected = validate_bars(r.bars)
    assert len(good) == 1 and [x.reason for x in rejected] == ["non-numeric value"]


def test_local_times_of_the_reply_zone_follow_its_rules():
    # a reply in another zone is converted with that zone's switches (Warsaw: 2024-03-31 02:00-02:59 never existed)
    body = _series_json(f'"2024-03-31 02:30:00": {GOOD}, "2024-03-31 01:55:00": {GOOD}').replace(b"US/Eastern", b"Europe/Warsaw")
    r = parse_response(body, symbol="IBM", interval="5min")
    assert [x.reason for x in r.rejected] == [NONEXISTENT_LOCAL_TIME]
    assert [b.ts for b in r.bars] == [local_to_utc("2024-03-31 01:55:00", zone("Europe/Warsaw"))]


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
    srv = replay([ok(fixture(IBM_CSV), "text/csv")])
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
    note = ok(fixture("alphavantage/throttle_note.json"))
    srv = replay([note, note, ok(fixture(IBM_CSV), "text/csv")])
    sleeps = []
    assert len(make(srv.url, sleeps=sleeps).fetch_bars("IBM", "5min").bars) == 100
    assert len(srv.requests) == 3 and len(sleeps) == 2
    assert sleeps[1] > sleeps[0]  # exponential backoff


def test_throttle_beyond_attempts_raises_rate_limited(replay):
    srv = replay([ok(fixture("alphavantage/throttle_note.json"))])
    with pytest.raises(RateLimited):
        make(srv.url, sleeps=[]).fetch_bars("IBM", "5min")
    assert len(srv.requests) == FAST.max_attempts


def test_http_429_honours_retry_after(replay):
    srv = replay([(429, {"Retry-After": "1"}, b"slow down"), ok(fixture(IBM_CSV))])
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
    compact = fixture(IBM_CSV)  # 11:40-19:55 EST
    full = b"timestamp,open,high,low,close,volume\r\n" + b"".join(
        f"2024-01-31 {h:02d}:{m:02d}:00,1,2,0.5,1.5,10\r\n".encode() for h in range(19, 3, -1) for m in range(55, -1, -5)
    )
    srv = replay(lambda _p, q: ok(full if q["outputsize"] == "full" else compact, "text/csv"))
    p = make(srv.url)
    recent = datetime(2024, 2, 1, 0, 50, tzinfo=UTC)  # 19:50 EST, inside the compact window: one request
    assert len(p.fetch_bars("IBM", "5min", since=recent).bars) == 100 and len(srv.requests) == 1
    old = datetime(2024, 1, 31, 13, 0, tzinfo=UTC)  # 08:00 EST, before the compact window: backfill
    got = p.fetch_bars("IBM", "5min", since=old).bars
    assert [q["outputsize"] for _, q in srv.requests[1:]] == ["compact", "full"]
    assert got[0].ts == datetime(2024, 1, 31, 9, 0, tzinfo=UTC) and len(got) == 192


def test_proxy_from_the_environment_is_still_honoured(replay, monkeypatch):
    # the HTTP client resolves proxy settings once per endpoint instead of on every request
    proxy = replay([ok(fixture(IBM_CSV), "text/csv")])
    monkeypatch.setenv("HTTP_PROXY", proxy.server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    bars = make("http://alphavantage.invalid/query").fetch_bars("IBM", "5min").bars  # only the proxy can answer
    assert len(bars) == 100 and proxy.requests[0][1]["symbol"] == "IBM"


# -- TIME_SERIES_DAILY_ADJUSTED (--adjusted) ---------------------------------------------------------

ADJ_JSON, ADJ_CSV = "alphavantage/daily_adjusted_IBM.json", "alphavantage/daily_adjusted_IBM.csv"


def test_adjusted_json_and_csv_carry_adj_close_dividends_and_splits():
    from_json = parse_response(fixture(ADJ_JSON), symbol="IBM", interval="1day", adjusted=True)
    from_csv = parse_response(fixture(ADJ_CSV), symbol="IBM", interval="1day", adjusted=True)
    assert from_json.bars == from_csv.bars and from_json.actions == from_csv.actions
    assert len(from_json.bars) == 30 and from_json.rejected == []
    assert validate_bars(from_json.bars)[1] == []
    by_day = {b.ts.astimezone(NY).date().isoformat(): b for b in from_json.bars}
    assert by_day["2024-01-10"][4:] == ("160.1102", "160.4315", "160.0272", "160.3595", "3227979", "80.17975")
    assert by_day["2024-01-31"].adj_close == "160.8915" and by_day["2024-01-31"].ts == datetime(2024, 1, 31, 5, tzinfo=UTC)
    assert [(a.ex_date.isoformat(), a.kind, a.ratio, a.amount) for a in from_json.actions] == [
        ("2024-01-10", "dividend", None, "1.6600"),
        ("2024-01-22", "split", "2", None),
    ]
    plain = parse_response(fixture("alphavantage/daily_MSFT.json"), symbol="MSFT", interval="1day")
    assert {b.adj_close for b in plain.bars} == {None} and plain.actions == []


def test_adjusted_real_recordings():
    compact = parse_response(real("alphavantage_daily_adjusted_IBM_compact_2026-05-15.csv"), symbol="IBM", interval="1day",
                             adjusted=True)  # fmt: skip
    assert len(compact.bars) == 100 and compact.rejected == [] and validate_bars(compact.bars)[1] == []
    by_day = {b.ts.astimezone(NY).date().isoformat(): b for b in compact.bars}
    assert by_day["2026-02-10"][7:] == ("291.76", "3837343", "289.62962886152513")  # close, volume, adjusted close
    assert [(a.ex_date.isoformat(), a.kind, a.amount) for a in compact.actions] == [
        ("2026-02-10", "dividend", "1.6800"),
        ("2026-05-08", "dividend", "1.6900"),
    ]
    full = parse_response(real("alphavantage_daily_adjusted_IBM_full_1999-2020.csv"), symbol="IBM", interval="1day",
                          adjusted=True)  # fmt: skip
    assert len(full.bars) == 5309 and full.rejected == []
    assert full.bars[0].ts == datetime(1999, 11, 1, 5, tzinfo=UTC) and full.bars[0].adj_close == "61.5351215744"
    assert {a.kind for a in full.actions} == {"dividend"} and len(full.actions) == 85  # no split since 1999-11


def test_adjusted_without_a_premium_plan_names_the_flag(replay):
    srv = replay([ok(fixture("alphavantage/information_premium.json"))])
    with make(srv.url, adjusted=True) as p, pytest.raises(PremiumRequired) as info:
        p.fetch_bars("IBM", "1day")
    assert "--adjusted" in str(info.value) and "TIME_SERIES_DAILY_ADJUSTED" in str(info.value)
    assert info.value.transient is False and len(srv.requests) == 1
    assert srv.requests[0][1]["function"] == "TIME_SERIES_DAILY_ADJUSTED"


def test_adjusted_is_for_daily_bars_only():
    import cli
    from errors import ConfigError

    with make("http://127.0.0.1:9/query", adjusted=True) as p, pytest.raises(ConfigError, match="daily bars"):
        p.fetch_bars("IBM", "5min")
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--continuous-poll", "--symbols", "IBM", "--adjusted", "--interval", "5min"])
    assert info.value.code == 2
    args = cli.parse_args(["--continuous-poll", "--symbols", "IBM", "--adjusted", "--interval", "daily"])
    assert cli.provider_options(args) == {"adjusted": True}


def test_adjusted_close_loads_a_revision_is_an_update_and_an_unchanged_one_no_write(engine, replay):
    from clock import ManualClock
    from db import RunLedger
    from etl.load import make_loader
    from etl.pipeline import EtlPipeline

    body = {"json": json.loads(fixture(ADJ_JSON))}

    def route(_path, q):
        if q["function"] == "TIME_SERIES_DAILY":
            return ok(fixture("alphavantage/daily_MSFT.json"))
        return ok(json.dumps(body["json"]).encode())

    srv = replay(route)
    clock = ManualClock(datetime(2024, 2, 5, tzinfo=UTC))

    def cycle(provider, symbol):
        pipeline = EtlPipeline(provider, make_loader(engine), RunLedger(engine), clock=clock)
        return pipeline.run_cycle([symbol], "1day", job_name="t").rows_loaded

    def stored(symbol):
        with engine.connect() as c:
            rows = c.exec_driver_sql(f"SELECT ts, adj_close FROM bars WHERE symbol = '{symbol}' ORDER BY ts").all()  # noqa: S608
        return [(ts if isinstance(ts, datetime) else datetime.fromisoformat(ts), a) for ts, a in rows]

    with make(srv.url, adjusted=True) as adjusted:
        pipeline = EtlPipeline(adjusted, make_loader(engine), RunLedger(engine), clock=clock)
        assert pipeline.run_cycle(["IBM"], "1day", job_name="t").rows_loaded == 30
        assert pipeline.run_cycle(["IBM"], "1day", job_name="t").rows_loaded == 0  # unchanged: no write
        body["json"]["Time Series (Daily)"]["2024-01-30"]["5. adjusted close"] = "160.11"  # a revision
        assert pipeline.run_cycle(["IBM"], "1day", job_name="t").rows_loaded == 1
        assert cycle(adjusted, "IBM") == 0  # a fresh loader compares with the database: nothing to write
    rows = stored("IBM")
    assert len(rows) == 30 and {str(a) for _, a in rows if a is not None} >= {"160.11", "80.17975", "160.8915"}
    with engine.connect() as c:
        actions = c.exec_driver_sql("SELECT ex_date, kind, ratio, amount FROM corporate_actions ORDER BY ex_date").all()
    assert [(str(d), k, r and float(r), a and float(a)) for d, k, r, a in actions] == [
        ("2024-01-10", "dividend", None, 1.66),
        ("2024-01-22", "split", 2.0, None),
    ]
    with make(srv.url) as plain:  # TIME_SERIES_DAILY: no adjusted close, stored as NULL
        assert cycle(plain, "MSFT") == 100
    assert {a for _, a in stored("MSFT")} == {None}
