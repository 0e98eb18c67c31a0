"""The demo provider (Alpha Vantage's wire format from the in-process simulator), and the provider
contract on both of marketpoll's Alpha Vantage clients: the demo, and the plain
``AlphaVantageProvider`` with a real-looking API key over loopback HTTP to a replay of our fixtures
(so that the contract's secret checks have a secret to look for).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests

from clock import ManualClock
from contract import ProviderContract
from errors import InvalidSymbol
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider, parse_response
from etl.providers.demo import DemoMarket, DemoProvider
from etl.transform import zone
from support import alphavantage_route, fixture, real

NY = zone("US/Eastern")
MONDAY_1000_EDT = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)


class TestContract(ProviderContract):
    @pytest.fixture
    def provider(self):
        with DemoProvider(clock=ManualClock(MONDAY_1000_EDT)) as p:
            yield p

    @pytest.fixture
    def unknown_symbol(self):
        return "INVALIDX"


#: Shaped like an Alpha Vantage key (16 upper-case letters and digits); long enough for the redactor.
AV_KEY = "Q7XW2ZL9M4KD8RTA"


class TestAlphaVantageContract(ProviderContract):
    """The real client with a secret key; the server answers per symbol from tests/fixtures/alphavantage."""

    GOOD_SYMBOL, INTERVAL, DATATYPE = "IBM", "5min", "csv"

    @pytest.fixture
    def server(self, replay):
        return replay(alphavantage_route(AV_KEY))

    @pytest.fixture
    def provider(self, server):
        with AlphaVantageProvider(AlphaVantageConfig(api_key=AV_KEY, base_url=server.url, datatype=self.DATATYPE)) as p:
            yield p

    @pytest.fixture
    def unknown_symbol(self):
        return "NOSUCH"

    @pytest.fixture
    def api_secrets(self):
        return [AV_KEY]

    def test_the_key_goes_out_with_every_request(self, provider, server, unknown_symbol):
        # what makes the secret checks above meaningful: the key really was in the URLs that failed
        assert len(provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars) == 100
        with pytest.raises(InvalidSymbol):
            provider.fetch_bars(unknown_symbol, self.INTERVAL)
        assert [(q["symbol"], q["apikey"]) for _, q in server.requests] == [(self.GOOD_SYMBOL, AV_KEY), (unknown_symbol, AV_KEY)]


class TestAlphaVantageJsonContract(TestAlphaVantageContract):
    GOOD_SYMBOL, INTERVAL, DATATYPE = "MSFT", "1min", "json"


def test_json_and_csv_carry_the_same_bars():
    clock = ManualClock(MONDAY_1000_EDT)
    with DemoProvider(clock=clock) as js, DemoProvider(AlphaVantageConfig(datatype="csv"), clock=clock) as cs:
        assert js.fetch_bars("IBM", "15min").bars == cs.fetch_bars("IBM", "15min").bars


def test_values_are_deterministic_across_fetches_and_instances():
    with DemoProvider(clock=ManualClock(MONDAY_1000_EDT)) as a, DemoProvider(clock=ManualClock(MONDAY_1000_EDT)) as b:
        assert a.fetch_bars("MSFT", "5min").bars == b.fetch_bars("MSFT", "5min").bars


def test_only_complete_bars_inside_the_extended_session():
    with DemoProvider(clock=ManualClock(MONDAY_1000_EDT)) as p:
        bars = p.fetch_bars("IBM", "5min").bars
    assert bars[-1].ts == datetime(2024, 3, 11, 13, 55, tzinfo=UTC)  # 09:55 EDT, complete at 10:00
    local = [b.ts.astimezone(NY) for b in bars]
    assert all(t.weekday() < 5 and 4 <= t.hour < 20 for t in local)
    # across the DST weekend: Friday's bars are EST (UTC-5), Monday's EDT (UTC-4)
    assert {t.utcoffset().total_seconds() / 3600 for t in local} == {-5.0, -4.0}


def test_saturday_serves_fridays_after_hours():
    with DemoProvider(clock=ManualClock(datetime(2024, 3, 16, 15, tzinfo=UTC))) as p:
        bars = p.fetch_bars("IBM", "5min").bars
    assert bars[-1].ts.astimezone(NY).strftime("%a %H:%M") == "Fri 19:55"


@pytest.mark.parametrize(
    ("read", "name"),
    [
        pytest.param(fixture, "alphavantage/intraday_1min_MSFT.json", id="our-fixture"),
        pytest.param(real, "alphavantage_intraday_1min_MSFT_compact_2017-12-18.json", id="real-recording"),
    ],
)
def test_wire_format_matches_an_alpha_vantage_reply(read, name):
    status, headers, body = DemoMarket(ManualClock(MONDAY_1000_EDT)).reply(
        "/query", {"function": "TIME_SERIES_INTRADAY", "symbol": "MSFT", "interval": "1min", "apikey": "demo"}
    )
    ours, theirs = json.loads(body), json.loads(read(name))
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert list(ours) == list(theirs)
    assert list(ours["Meta Data"]) == list(theirs["Meta Data"])
    assert list(next(iter(ours["Time Series (1min)"].values()))) == list(next(iter(theirs["Time Series (1min)"].values())))
    assert len(ours["Time Series (1min)"]) == 100
    assert parse_response(body, symbol="MSFT", interval="1min").bars  # our own parser reads it


def test_daily_and_errors_over_real_http():
    with DemoProvider(clock=ManualClock(MONDAY_1000_EDT)) as p:
        daily = p.fetch_bars("IBM", "1day").bars
        assert daily[-1].ts == datetime(2024, 3, 8, 5, tzinfo=UTC)  # Friday; Monday's session is still open
        missing_key = requests.get(p.config.base_url, params={"function": "TIME_SERIES_DAILY", "symbol": "IBM"}, timeout=5)
        assert "apikey" in missing_key.json()["Error Message"]


def test_month_history_serves_the_whole_month_so_backfill_works_offline():
    """``month=YYYY-MM`` (what --backfill and --fill-gaps ask Alpha Vantage for): every complete bar of that
    New York month, on both grids; a month still in progress stops at the clock."""
    ny = zone("US/Eastern")
    with DemoProvider(clock=ManualClock(MONDAY_1000_EDT)) as p:
        feb = p.fetch_range("IBM", "5min", datetime(2024, 2, 1, 5, tzinfo=UTC), datetime(2024, 3, 1, 5, tzinfo=UTC)).bars
        assert len(feb) == 21 * 192  # 21 weekdays (no holidays simulated) of 04:00-20:00 New York
        assert feb[0].ts == datetime(2024, 2, 1, 4, tzinfo=ny) and feb[-1].ts == datetime(2024, 2, 29, 19, 55, tzinfo=ny)
        btc = p.fetch_range("BTC-USD", "60min", datetime(2024, 2, 1, 5, tzinfo=UTC), datetime(2024, 2, 3, 5, tzinfo=UTC)).bars
        assert [b.ts for b in btc] == [datetime(2024, 2, 1, 5, tzinfo=UTC) + k * (btc[1].ts - btc[0].ts) for k in range(48)]
        now = p.fetch_range("IBM", "60min", datetime(2024, 3, 11, 4, tzinfo=UTC), datetime(2024, 3, 12, 4, tzinfo=UTC)).bars
        assert now[-1].ts == datetime(2024, 3, 11, 9, tzinfo=ny)  # 09:00-10:00 ended at the clock's 10:00; no later one
    status, _, body = DemoMarket(ManualClock(MONDAY_1000_EDT)).reply(
        "/query", {"function": "TIME_SERIES_INTRADAY", "symbol": "IBM", "interval": "5min", "month": "1999-12", "apikey": "x"}
    )
    assert status == 200 and b"Invalid API call" in body
