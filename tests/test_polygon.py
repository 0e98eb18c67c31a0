"""Polygon aggregates (etl/providers/polygon.py): the wire contract over loopback HTTP on our own
fixtures (tests/fixtures/polygon/), the parser on the real recordings, daily stamps per market,
the Bearer header and ``next_url`` (never a key in a URL or a log), errors, and the settings."""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

import pytest

from clock import ManualClock
from contract import WireContract
from errors import ConfigError, HTTPError, InvalidSymbol, PayloadError, PremiumRequired, RateLimited
from etl.http import Response
from etl.providers import get_provider_class
from etl.providers.base import Request, provider_config
from etl.providers.polygon import (
    BAD_TIMESTAMP,
    BAD_VALUE,
    DAILY_NOT_UTC_MIDNIGHT,
    DAILY_STAMP_UNCLEAR,
    MALFORMED_RECORD,
    MISSING_FIELD,
    OFF_GRID,
    POLYGON_INTERVALS,
    PolygonConfig,
    PolygonProvider,
    parse_aggs,
)
from etl.providers.wire import number_text
from etl.ratelimit import parse_rates
from etl.retry import RetryPolicy
from etl.transform import validate_bars
from settings import Settings
from support import fixture, real

KEY = "pK7dQ2xW9eR4tY6uI8oP0aS3dF5gH1jK"  # real-looking: a leak would show
NY = ZoneInfo("America/New_York")
JSON = {"Content-Type": "application/json"}
MINUTE_START = datetime(2024, 3, 11, 13, 30, tzinfo=UTC)  # first bar of aggs_AAPL_1min (09:30 EDT); 388 bars to 16:00
MISSING_MINUTES = (17, 245)  # minutes without a bar in that fixture
DAY_NOW = datetime(2024, 3, 16, 12, tzinfo=UTC)  # after the daily fixtures' last day
POLYGON_HOST = "https://api.polygon.io"  # where the real API's next_url points
FIXTURES = {
    ("AAPL", "1/minute"): "polygon/aggs_AAPL_1min_2024-03-11.json",
    ("AAPL", "1/day"): "polygon/aggs_AAPL_1day_2024-02-26_2024-03-15.json",
    ("I:NDX", "1/day"): "polygon/aggs_I-NDX_1day_2024-02-26_2024-03-15.json",
    ("X:BTCUSD", "1/day"): "polygon/aggs_X-BTCUSD_1day_2024-03-01_2024-03-14.json",
}


def ms(ts: datetime) -> int:
    return int(ts.timestamp()) * 1000


# -- JSON with the numbers kept as written (1.12117471e+08 stays so when our server re-serves a slice) --------


class Raw(str):
    """A JSON number's text, written back unquoted."""


def load_raw(body: bytes):
    return json.loads(body, parse_float=Raw, parse_int=Raw)


def dump_raw(obj) -> str:
    if isinstance(obj, Raw):
        return str(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump_raw(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(dump_raw(v) for v in obj) + "]"
    return json.dumps(obj)


# -- a server answering like api.polygon.io from our fixtures ------------------------------------------------


def polygon_route(*, next_host: str = POLYGON_HOST, key_in_next: str | None = None):
    """A replay route for ``/v2/aggs/ticker/...`` and ``/v3/reference/tickers/...``, as Polygon answers:

    - a ticker with a fixture: the records whose ``t`` lies in [from, to] (dates: trading dates in
      the market's zone; digits: milliseconds), the first ``limit`` of them, and a ``next_url`` on
      ``next_host`` (with ``&apiKey=<key_in_next>`` when given) for the rest;
    - any other ticker: HTTP 200 with ``resultsCount`` 0 and no ``results`` (an unknown ticker and
      a quiet window look the same); its reference lookup is HTTP 404 ``NOT_FOUND``;
    - ``THROTTLED``: HTTP 429; ``LOOPY``: a broken API whose ``next_url`` always serves page one again.
    """
    data = {k: load_raw(fixture(name)) for k, name in FIXTURES.items()}
    names = ("empty_AAPL", "error_ticker_not_found", "error_too_many_requests", "ticker_AAPL")
    empty, not_found, throttled, ticker = (fixture(f"polygon/{n}.json") for n in names)
    known = {t for t, _ in FIXTURES} | {"LOOPY"}

    def select(symbol: str, lo: str, hi: str, records: list[dict]) -> list[dict]:
        if lo.isdigit():
            return [r for r in records if int(lo) <= int(r["t"]) <= int(hi)]
        tz = UTC if symbol.startswith("X:") else NY
        day = lambda r: datetime.fromtimestamp(int(r["t"]) / 1000, tz).date().isoformat()  # noqa: E731
        return [r for r in records if lo <= day(r) <= hi]

    def route(path: str, q: dict[str, str]):
        parts = [unquote(p) for p in path.split("/")]
        if path.startswith("/v3/reference/tickers/"):
            if parts[4] in known:
                return 200, JSON, ticker.replace(b'"AAPL"', json.dumps(parts[4]).encode())
            return 404, JSON, not_found
        if not path.startswith("/v2/aggs/ticker/") or len(parts) != 10:
            return 404, {"Content-Type": "text/plain"}, b"404 page not found"
        symbol, span, lo, hi = parts[4], f"{parts[6]}/{parts[7]}", parts[8], parts[9]
        if symbol == "THROTTLED":
            return 429, JSON, throttled
        cursor = dict(parse_qs(base64.urlsafe_b64decode(q["cursor"] + "==").decode())) if "cursor" in q else {}
        limit = int(cursor.get("limit", [q.get("limit", "5000")])[0])
        adjusted = cursor.get("adjusted", [q.get("adjusted", "true")])[0]
        if symbol == "LOOPY":
            records, nxt_from = data[("AAPL", "1/minute")]["results"][:50], lo
            obj = {"ticker": symbol, "adjusted": True, "results": records, "status": "OK"}
        elif (symbol, span) in data:
            whole = data[(symbol, span)]
            chosen = select(symbol, lo, hi, whole["results"])
            records, rest = chosen[:limit], chosen[limit:]
            nxt_from = rest[0]["t"] if rest else None
            obj = {k: v for k, v in whole.items() if k not in ("results", "resultsCount", "queryCount", "count")}
            obj |= {"queryCount": Raw(len(records)), "results": records, "count": Raw(len(records))}
            if "resultsCount" in whole:
                obj["resultsCount"] = Raw(len(records))
            if adjusted == "false" and "adjusted" in obj:
                obj["adjusted"] = False
            if not records:
                obj.pop("results")
        else:
            return 200, JSON, empty.replace(b'"AAPL"', json.dumps(symbol).encode())
        if nxt_from is not None:
            token = base64.urlsafe_b64encode(f"adjusted={adjusted}&limit={limit}&sort=asc".encode()).decode().rstrip("=")
            obj["next_url"] = f"{next_host}/v2/aggs/ticker/{symbol}/range/{span}/{nxt_from}/{hi}?cursor={token}"
            if key_in_next:
                obj["next_url"] += f"&apiKey={key_in_next}"
        return 200, JSON, dump_raw(obj).encode()

    return route


ROUTE = polygon_route()


class HeaderServer:
    """A loopback server like the ``replay`` one that also records each request's headers (the key's place)."""

    def __init__(self, route) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                outer.requests.append((parts.path, query, dict(self.headers.items())))
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    status, headers, body = 401, JSON, fixture("polygon/error_unknown_api_key.json")
                else:
                    status, headers, body = route(parts.path, query)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def header_server():
    servers: list[HeaderServer] = []

    def make(route=ROUTE) -> HeaderServer:
        servers.append(HeaderServer(route))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def make(base_url: str, clock=None, *, key: str | None = KEY, retry=None, **kw) -> PolygonProvider:
    cfg = PolygonConfig(base_url=base_url, api_key=key, retry=retry or RetryPolicy(max_attempts=1), **kw)
    return PolygonProvider(cfg, clock=clock or ManualClock(MINUTE_START + timedelta(days=1)))


class TestPolygonContract(WireContract):
    GOOD_SYMBOL, INTERVAL = "AAPL", "1min"
    KEY = KEY
    NOW = MINUTE_START + timedelta(minutes=390)
    PARTIAL_NOW = MINUTE_START + timedelta(minutes=389, seconds=30)
    UNKNOWN_SYMBOL = "NOSUCHSYM"
    LOOPING_SYMBOL = "LOOPY"
    WINDOW = (MINUTE_START + timedelta(minutes=10), MINUTE_START + timedelta(minutes=75))

    def make(self, base_url, clock, include_partial_bars=False):
        return make(base_url, clock, include_partial_bars=include_partial_bars)

    def symbol_of(self, path, query):
        return unquote(path.split("/")[4]) if path.count("/") >= 4 else ""

    def route(self, path, query):
        return ROUTE(path, query)

    def shuffled(self, body):
        obj = load_raw(body)
        rows = obj["results"]
        random.Random(7).shuffle(rows)
        obj["results"] = rows + rows[:3]
        return dump_raw(obj).encode()

    def test_the_unknown_ticker_is_told_by_the_reference_lookup(self, provider, server):
        with pytest.raises(InvalidSymbol, match="Ticker not found"):
            provider.fetch_bars(self.UNKNOWN_SYMBOL, self.INTERVAL)
        assert [p.split("/")[1:3] for p, _ in server.requests] == [["v2", "aggs"], ["v3", "reference"]]

    def test_the_looping_symbol_really_asks_for_a_second_page(self, provider, server):
        start, end = self.WINDOW
        provider.fetch_range(self.LOOPING_SYMBOL, self.INTERVAL, start, end)
        assert len(server.requests) == 2 and "cursor" in server.requests[1][1]


# -- declaration and settings --------------------------------------------------------------------------------


def test_declaration():
    assert get_provider_class("polygon") is PolygonProvider
    assert POLYGON_INTERVALS == {"1min": "1/minute", "5min": "5/minute", "15min": "15/minute", "30min": "30/minute",
                                 "60min": "1/hour", "1day": "1/day"}  # fmt: skip
    assert PolygonProvider.default_base_url == "https://api.polygon.io" and PolygonProvider.key_required is True
    assert [str(r) for r in parse_rates(PolygonProvider.default_rate_limit)] == ["5/minute"]  # the free plan


def test_the_key_is_required():
    with pytest.raises(ConfigError) as info:
        provider_config(PolygonProvider, Settings.from_env({}))
    assert info.value.name == "POLYGON_API_KEY"
    with pytest.raises(ConfigError):
        PolygonProvider(PolygonConfig())


def test_settings_from_the_environment():
    env = {"POLYGON_API_KEY": KEY, "POLYGON_BASE_URL": "http://127.0.0.1:1", "POLYGON_ADJUSTED": "false",
           "POLYGON_LIMIT": "1000", "POLYGON_LOOKBACK_DAYS": "3", "POLYGON_VERIFY_TICKERS": "no"}  # fmt: skip
    cfg = provider_config(PolygonProvider, Settings.from_env(env))
    assert (cfg.api_key, cfg.base_url, cfg.adjusted, cfg.limit, cfg.lookback_days, cfg.verify_tickers) == (
        KEY, "http://127.0.0.1:1", False, 1000, 3, False)  # fmt: skip
    defaults = provider_config(PolygonProvider, Settings.from_env({"POLYGON_API_KEY": KEY}))
    assert (defaults.adjusted, defaults.limit, defaults.verify_tickers) == (True, 50_000, True)
    assert PolygonProvider(defaults).rate_limit() == "5/minute" and KEY not in repr(defaults)
    for var, bad in (("POLYGON_LIMIT", "0"), ("POLYGON_LIMIT", "50001"), ("POLYGON_ADJUSTED", "maybe"),
                     ("POLYGON_LOOKBACK_DAYS", "-1")):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            provider_config(PolygonProvider, Settings.from_env({"POLYGON_API_KEY": KEY, var: bad}))
        assert info.value.name == var


# -- requests ------------------------------------------------------------------------------------------------


def test_requests_carry_the_key_in_a_bearer_header_and_never_in_the_url():
    p = make("https://api.polygon.io", ManualClock(DAY_NOW))
    req = p.latest_request("AAPL", "1min", MINUTE_START)
    assert req.url == f"https://api.polygon.io/v2/aggs/ticker/AAPL/range/1/minute/{ms(MINUTE_START)}/{ms(DAY_NOW)}"
    assert req.params == {"adjusted": "true", "sort": "asc", "limit": "50000"}
    assert req.headers == {"Authorization": f"Bearer {KEY}"}
    assert KEY not in req.url and KEY not in json.dumps(dict(req.params))
    assert KEY not in repr(req)  # a Request in a log line or a traceback shows no key


def test_daily_requests_name_trading_dates_in_the_markets_zone():
    p = make("https://api.polygon.io", ManualClock(datetime(2024, 3, 16, 2, tzinfo=UTC)))  # Mar 15, 22:00 New York
    stock = p.latest_request("AAPL", "1day", datetime(2024, 3, 11, 4, tzinfo=UTC))
    crypto = p.latest_request("X:BTCUSD", "1day", datetime(2024, 3, 11, tzinfo=UTC))
    first = p.latest_request("I:NDX", "1day", None)  # no watermark: the last lookback_days (10)
    assert stock.url.endswith("/AAPL/range/1/day/2024-03-11/2024-03-15")
    assert crypto.url.endswith("/X:BTCUSD/range/1/day/2024-03-11/2024-03-16")  # UTC dates
    assert first.url.endswith("/I:NDX/range/1/day/2024-03-05/2024-03-15")
    start, end = datetime(2024, 3, 4, 5, tzinfo=UTC), datetime(2024, 3, 9, 5, tzinfo=UTC)
    (window,) = p.range_requests("AAPL", "1day", start, end)
    assert window.url.endswith("/AAPL/range/1/day/2024-03-04/2024-03-08") and window.window == (start, end)  # end exclusive


def test_unadjusted_bars_are_asked_for_when_configured(replay):
    srv = replay(ROUTE)
    with make(srv.server.url, ManualClock(DAY_NOW), adjusted=False) as p:
        bars = p.fetch_bars("AAPL", "1day").bars
    assert srv.requests[0][1]["adjusted"] == "false"
    assert [b.ts.astimezone(NY).day for b in bars] == [6, 7, 8, 11, 12, 13, 14, 15]  # the last 10 days


def test_an_interval_is_spelled_as_multiplier_and_timespan():
    p = make("https://api.polygon.io", ManualClock(DAY_NOW))
    for interval, span in (("5min", "5/minute"), ("30min", "30/minute"), ("60min", "1/hour")):
        assert f"/AAPL/range/{span}/" in p.latest_request("AAPL", interval, MINUTE_START).url


# -- the Bearer header and next_url, over a server that records headers ---------------------------------------


def _no_key_anywhere(requests) -> None:
    for path, query, headers in requests:
        assert headers.get("Authorization") == f"Bearer {KEY}", path
        assert KEY not in path and not any(k.lower() == "apikey" or KEY in v for k, v in query.items()), (path, query)


def test_next_url_is_followed_with_the_header_on_our_host(header_server, caplog):
    srv = header_server()
    caplog.set_level(logging.DEBUG, logger="etl")
    with make(srv.url, ManualClock(DAY_NOW), limit=100) as p:
        result = p.fetch_bars("AAPL", "1min", since=MINUTE_START)
    assert len(result.bars) == 388 and result.bars[0].ts == MINUTE_START and result.rejected == []
    assert len(srv.requests) == 4  # 100 + 100 + 100 + 88, each page on next_url (which names api.polygon.io)
    assert all(len(q) == 1 and "cursor" in q for _, q, _ in srv.requests[1:])
    _no_key_anywhere(srv.requests)
    assert KEY not in caplog.text and caplog.text.count("GET http://127.0.0.1") == 4


def test_a_key_in_next_url_is_stripped_and_never_logged(header_server, caplog):
    srv = header_server(polygon_route(key_in_next=KEY))
    caplog.set_level(logging.DEBUG, logger="etl")
    start, end = MINUTE_START, MINUTE_START + timedelta(minutes=390)
    with make(srv.url, ManualClock(DAY_NOW), limit=150) as p:
        result = p.fetch_range("AAPL", "1min", start, end)
    assert len(result.bars) == 388 and len(srv.requests) == 3 and result.no_data == []
    _no_key_anywhere(srv.requests)
    assert KEY not in caplog.text and KEY not in repr(result)


def test_next_url_on_another_host_is_brought_back_to_the_configured_one(header_server):
    srv = header_server(polygon_route(next_host="https://elsewhere.example"))
    with make(srv.url, ManualClock(DAY_NOW), limit=200) as p:
        bars = p.fetch_bars("AAPL", "1min", since=MINUTE_START).bars
    assert len(bars) == 388 and len(srv.requests) == 2
    _no_key_anywhere(srv.requests)


def test_a_wrong_key_is_a_terminal_error_naming_the_variable(header_server):
    srv = header_server()
    with make(srv.url, ManualClock(DAY_NOW), key="WRONGKEY1234") as p, pytest.raises(HTTPError) as info:
        p.fetch_bars("AAPL", "1min", since=MINUTE_START)
    err = info.value
    assert err.status == 401 and err.transient is False
    assert "POLYGON_API_KEY" in str(err) and "Unknown API Key" in str(err) and "WRONGKEY1234" not in str(err)


def test_next_url_for_another_ticker_is_refused():
    req = Request("http://127.0.0.1:9/v2/aggs/ticker/AAPL/range/1/minute/1/2", symbol="AAPL", interval="1min")
    other = f"{POLYGON_HOST}/v2/aggs/ticker/MSFT/range/1/minute/1/2?cursor=x"
    body = json.dumps({"ticker": "AAPL", "status": "OK", "results": [rec(ms(MINUTE_START))], "next_url": other}).encode()
    with pytest.raises(PayloadError, match="next_url"):
        make("http://127.0.0.1:9").parse(Response(200, body, "application/json", req.url, 0.0), req)


# -- paging, windows, no data, the ticker check ----------------------------------------------------------------


def test_range_is_one_request_paged_by_next_url(replay):
    srv = replay(ROUTE)
    start, end = MINUTE_START + timedelta(minutes=10), MINUTE_START + timedelta(minutes=310)
    with make(srv.server.url, ManualClock(DAY_NOW), limit=120) as p:
        result = p.fetch_range("AAPL", "1min", start, end)
    first = srv.requests[0]
    assert first[0] == f"/v2/aggs/ticker/AAPL/range/1/minute/{ms(start)}/{ms(end) - 1}"
    assert len(srv.requests) == 3 and result.no_data == []
    expected = [start + timedelta(minutes=m) for m in range(300) if m + 10 not in MISSING_MINUTES]
    assert [b.ts for b in result.bars] == expected


def test_an_empty_window_is_no_data_and_asks_nothing_else(replay):
    srv = replay(ROUTE)
    start = datetime(2024, 3, 9, 14, tzinfo=UTC)  # a Saturday
    with make(srv.server.url, ManualClock(DAY_NOW)) as p:
        result = p.fetch_range("AAPL", "1min", start, start + timedelta(hours=2))
    assert result.bars == [] and result.no_data == [(start, start + timedelta(hours=2))] and len(srv.requests) == 1


def test_a_quiet_first_poll_of_a_known_ticker_is_no_data_after_the_reference_check(replay):
    srv = replay(ROUTE)
    with make(srv.server.url, ManualClock(datetime(2025, 1, 1, tzinfo=UTC))) as p:
        first = p.fetch_bars("AAPL", "1min")
        assert first.bars == [] and [q[0].split("/")[1] for q in srv.requests] == ["v2", "v3"]
        srv.requests.clear()
        later = p.fetch_bars("AAPL", "1min", since=MINUTE_START + timedelta(days=300))  # stored bars: no check
    assert later.bars == [] and len(srv.requests) == 1


def test_the_reference_check_can_be_turned_off(replay):
    srv = replay(ROUTE)
    with make(srv.server.url, ManualClock(DAY_NOW), verify_tickers=False) as p:
        result = p.fetch_bars("NOSUCHSYM", "1min")
    assert result.bars == [] and len(srv.requests) == 1


def test_bars_still_forming_are_dropped_daily_too(replay):
    srv = replay(ROUTE)
    with make(srv.server.url, ManualClock(datetime(2024, 3, 15, 18, tzinfo=UTC))) as p:  # Friday 14:00 New York
        result = p.fetch_bars("AAPL", "1day", since=datetime(2024, 3, 11, 4, tzinfo=UTC))
    assert [b.ts.astimezone(NY).day for b in result.bars] == [11, 12, 13, 14] and result.partial_dropped == 1


# -- daily bars per market ------------------------------------------------------------------------------------


def test_stock_days_start_at_new_york_midnight_across_the_dst_switch(replay):
    srv = replay(ROUTE)
    with make(srv.server.url, ManualClock(DAY_NOW)) as p:
        bars = p.fetch_range("AAPL", "1day", datetime(2024, 2, 26, tzinfo=UTC), datetime(2024, 3, 16, tzinfo=UTC)).bars
    assert len(bars) == 15 and {b.ts.astimezone(NY).time().isoformat() for b in bars} == {"00:00:00"}
    assert bars[4].ts == datetime(2024, 3, 1, 5, tzinfo=UTC) and bars[5].ts == datetime(2024, 3, 4, 5, tzinfo=UTC)
    assert bars[10].ts == datetime(2024, 3, 11, 4, tzinfo=UTC)  # EDT
    assert bars[0].volume == "72521472"  # sent as 7.2521472e+07


def test_index_days_are_moved_to_new_york_midnight_and_have_no_volume(replay):
    srv = replay(ROUTE)
    with make(srv.server.url, ManualClock(DAY_NOW)) as p:
        bars = p.fetch_bars("I:NDX", "1day", since=datetime(2024, 2, 26, 5, tzinfo=UTC)).bars
    raw = [r["t"] for r in json.loads(fixture(FIXTURES[("I:NDX", "1/day")]))["results"]]
    assert datetime.fromtimestamp(raw[0] / 1000, UTC).hour == 6 and datetime.fromtimestamp(raw[-1] / 1000, UTC).hour == 5
    assert len(bars) == 15 and {b.ts.astimezone(NY).time().isoformat() for b in bars} == {"00:00:00"}
    assert [b.ts.astimezone(NY).date() for b in bars] == [datetime.fromtimestamp(t / 1000, NY).date() for t in raw]
    assert {b.volume for b in bars} == {None}
    good, rejected = validate_bars(bars)
    assert len(good) == 15 and rejected == []


def test_crypto_days_start_at_utc_midnight_with_fractional_volume(replay):
    srv = replay(ROUTE)
    with make(srv.server.url, ManualClock(DAY_NOW)) as p:
        bars = p.fetch_bars("X:BTCUSD", "1day", since=datetime(2024, 3, 1, tzinfo=UTC)).bars
    assert [b.ts for b in bars] == [datetime(2024, 3, 1, tzinfo=UTC) + timedelta(days=d) for d in range(14)]
    assert all(re.fullmatch(r"\d+\.\d+", b.volume) for b in bars)
    assert validate_bars(bars)[1] == []


# -- the wire format, on the real recordings ---------------------------------------------------------------


def test_real_aapl_daily_recording():
    page, next_url = parse_aggs(real("polygon_aggs_AAPL_1day_2023-01-01_2023-01-10.json"), symbol="AAPL", interval="1day",
                                adjusted=True)  # fmt: skip
    assert next_url is None and page.rejected == [] and len(page.bars) == 6
    first = page.bars[0]
    assert first.ts == datetime(2023, 1, 3, 5, tzinfo=UTC)  # 00:00 New York (EST)
    assert first[4:9] == ("130.28", "130.9", "124.17", "125.07", "112117471")  # v was 1.12117471e+08
    assert page.bars[-1].ts == datetime(2023, 1, 10, 5, tzinfo=UTC)


def test_real_2005_recording_crosses_the_dst_switch():
    page, _ = parse_aggs(real("polygon_aggs_AAPL_1day_2005-04-01_2005-04-04.json"), symbol="AAPL", interval="1day")
    assert [b.ts for b in page.bars] == [datetime(2005, 4, 1, 5, tzinfo=UTC), datetime(2005, 4, 4, 4, tzinfo=UTC)]
    assert [b.volume for b in page.bars] == ["642646396", "578172308"]  # sent as 642646396.0


def test_real_crypto_recording_keeps_utc_days_and_fractional_volume():
    page, _ = parse_aggs(real("polygon_aggs_X-BTCUSD_1day_2023-01-01_2023-01-10.json"), symbol="X:BTCUSD", interval="1day")
    assert [b.ts for b in page.bars] == [datetime(2023, 1, 1, tzinfo=UTC) + timedelta(days=d) for d in range(10)]
    assert page.bars[0][4:9] == ("16532", "16644", "16490", "16611.58", "12300.315533316923")
    assert validate_bars(page.bars)[1] == []


def test_real_recordings_are_refused_for_another_ticker_or_adjustment():
    body = real("polygon_aggs_AAPL_1day_2023-01-01_2023-01-10.json")
    with pytest.raises(PayloadError, match="the reply is for 'AAPL'"):
        parse_aggs(body, symbol="MSFT", interval="1day")
    with pytest.raises(PayloadError, match="adjusted=false"):
        parse_aggs(body, symbol="AAPL", interval="1day", adjusted=False)


# -- the parser on our own payloads ---------------------------------------------------------------------------


def agg_body(*records, ticker="AAPL", **envelope) -> bytes:
    return json.dumps({"ticker": ticker, "adjusted": True, "status": "OK", **envelope, "results": list(records)}).encode()


def rec(t, **over) -> dict:
    return {"v": 100, "vw": 1.05, "o": 1.0, "h": 1.1, "l": 0.9, "c": 1.05, "t": t, "n": 3} | over


def test_numbers_become_exact_decimal_text():
    from decimal import Decimal

    cases = {
        1: "1",
        Decimal("1.12117471e+08"): "112117471",
        Decimal("642646396.0"): "642646396",
        Decimal("5e-7"): "0.0000005",
        Decimal("12300.315533316923"): "12300.315533316923",
        Decimal("130.90"): "130.90",
    }
    assert {k: number_text(k) for k in cases} == cases
    assert [number_text(x) for x in ("1.5", True, None, Decimal("NaN"))] == [None] * 4  # a string is no JSON number


def test_bad_records_are_rejected_with_a_reason():
    t = ms(MINUTE_START)
    body = agg_body(rec(t), rec(t + 60_000, v=None), rec(t + 120_000, o="1.0"), rec(None),
                    rec(t + 30_000), rec(str(t + 240_000)), rec(t + 300_000, c=True), ["not", "an", "object"],
                    rec(t + 360_000, h=float("nan")))  # fmt: skip
    page, _ = parse_aggs(body, symbol="AAPL", interval="1min")
    assert [b.ts for b in page.bars] == [MINUTE_START]
    assert [(r.key, r.reason) for r in page.rejected] == [
        (str(t + 60_000), MISSING_FIELD), (str(t + 120_000), BAD_VALUE), ("", MISSING_FIELD), (str(t + 30_000), OFF_GRID),
        (str(t + 240_000), BAD_TIMESTAMP), (str(t + 300_000), BAD_VALUE), ("", MALFORMED_RECORD),
        (str(t + 360_000), BAD_VALUE)]  # fmt: skip
    assert all(r.excerpt.startswith(("{", "[")) for r in page.rejected)


def test_a_daily_stamp_is_never_guessed_at():
    evening = ms(datetime(2024, 3, 11, 20, tzinfo=NY))  # 20:00 New York: the 11th or the 12th?
    page, _ = parse_aggs(agg_body(rec(evening)), symbol="AAPL", interval="1day")
    assert page.bars == [] and [r.reason for r in page.rejected] == [DAILY_STAMP_UNCLEAR]
    shifted = ms(datetime(2024, 3, 11, 5, tzinfo=UTC))  # a crypto day not at 00:00 UTC
    page, _ = parse_aggs(agg_body(rec(shifted), ticker="X:BTCUSD"), symbol="X:BTCUSD", interval="1day")
    assert page.bars == [] and [r.reason for r in page.rejected] == [DAILY_NOT_UTC_MIDNIGHT]
    forex = ms(datetime(2024, 3, 11, tzinfo=UTC))
    page, _ = parse_aggs(agg_body(rec(forex), ticker="C:EURUSD"), symbol="C:EURUSD", interval="1day")
    assert [b.ts for b in page.bars] == [datetime(2024, 3, 11, tzinfo=UTC)]


def test_only_an_index_may_lack_volume():
    t = ms(datetime(2024, 3, 11, 6, tzinfo=UTC))
    no_v = {"o": 1.0, "h": 1.1, "l": 0.9, "c": 1.05, "t": t}
    index, _ = parse_aggs(agg_body(no_v, ticker="I:SPX"), symbol="I:SPX", interval="1day")
    stock, _ = parse_aggs(agg_body(no_v), symbol="AAPL", interval="1day")
    assert [b.volume for b in index.bars] == [None] and index.bars[0].ts == datetime(2024, 3, 11, 4, tzinfo=UTC)
    assert stock.bars == [] and [r.reason for r in stock.rejected] == [MISSING_FIELD]


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (b'{"ticker":"AAPL","queryCount":0,"resultsCount":0,"adjusted":true,"status":"OK"}', None, None),
        (b'{"ticker":"AAPL","resultsCount":3,"status":"OK"}', PayloadError, "carries none"),
        (b'{"ticker":"AAPL","status":"OK","results":{"t":1}}', PayloadError, "not a list"),
        (b'{"ticker":"AAPL","status":"OK","results":[],"next_url":7}', PayloadError, "next_url"),
        (b'{"status":"NOT_FOUND","request_id":"x","message":"Ticker not found."}', InvalidSymbol, "Ticker not found"),
        (
            b'{"status":"NOT_AUTHORIZED","request_id":"x","message":"You are not entitled to this data."}',
            PremiumRequired,
            "not entitled",
        ),
        (b'{"status":"ERROR","request_id":"x","error":"Could not parse the time parameter: from"}', PayloadError, "parse"),
        (b"[]", PayloadError, "JSON object"),
        (b"<html>gateway</html>", PayloadError, "malformed JSON"),
        (b"\xff\xfe", PayloadError, "malformed JSON"),
    ],
)
def test_reply_envelopes(body, error, match):
    if error is None:
        page, next_url = parse_aggs(body, symbol="AAPL", interval="1min")
        assert page.no_data and page.bars == [] and next_url is None
        return
    with pytest.raises(error, match=match) as info:
        parse_aggs(body, symbol="AAPL", interval="1min", url="http://x/v2/aggs")
    assert info.value.symbol == "AAPL" and info.value.provider == "polygon" and info.value.url == "http://x/v2/aggs"


# -- errors over HTTP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "transient"),
    [
        (404, "error_ticker_not_found", {}, InvalidSymbol, False),
        (403, "error_not_authorized", {}, PremiumRequired, False),
        (401, "error_unknown_api_key", {}, HTTPError, False),
        (429, "error_too_many_requests", {"Retry-After": "12"}, RateLimited, True),
        (400, "error_unknown_api_key", {}, HTTPError, False),
        (502, None, {"Content-Type": "text/html"}, HTTPError, True),
        (404, None, {"Content-Type": "text/plain"}, HTTPError, False),
    ],
)
def test_error_statuses_are_typed(replay, status, body, headers, error, transient):
    payload = fixture(f"polygon/{body}.json") if body else b"<html>oops</html>"
    srv = replay([(status, {**JSON, **headers}, payload)])
    with make(srv.server.url, ManualClock(DAY_NOW)) as p, pytest.raises(error) as info:
        p.fetch_bars("AAPL", "1min", since=MINUTE_START)
    err = info.value
    assert type(err) is error and err.transient is transient and err.symbol == "AAPL" and err.url
    if status == 429:
        assert err.retry_after_seconds == 12


def test_an_error_text_echoing_the_key_is_masked(replay):
    body = json.dumps({"status": "ERROR", "request_id": "x", "error": f"bad key {KEY} for this request"}).encode()
    srv = replay([(400, JSON, body)])
    with make(srv.server.url, ManualClock(DAY_NOW)) as p, pytest.raises(HTTPError) as info:
        p.fetch_bars("AAPL", "1min", since=MINUTE_START)
    assert KEY not in str(info.value) and "bad key *** for" in str(info.value)
