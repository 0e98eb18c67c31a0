"""The provider contract (etl/providers/base.py), as tests every provider's test class inherits.

A subclass provides the fixtures ``provider`` (ready to fetch ``GOOD_SYMBOL`` at
``INTERVAL``) and ``unknown_symbol`` (a symbol the provider rejects), and, when its provider
holds secrets (API keys), ``api_secrets``: the secrets it configured the provider with. The
secret checks are only as good as that list: give the provider a real-looking key, so that
a leak would show.
"""

from __future__ import annotations

import logging
import re
import traceback
from datetime import datetime, timedelta

import pytest

from clock import ManualClock
from errors import ConfigError, HTTPError, InvalidSymbol, PayloadError, RateLimited
from etl.providers import get_provider_class
from etl.transform import validate_bars
from models.bar import INTERVALS, interval_seconds


def _leaks(secrets: list[str], texts: list[str]) -> list[tuple[str, str]]:
    return [(s, t) for s in secrets for t in texts if s in t]


class ProviderContract:
    GOOD_SYMBOL = "IBM"
    INTERVAL = "5min"

    @pytest.fixture
    def api_secrets(self) -> list[str]:
        """The secrets the subclass configured its ``provider`` with (none by default)."""
        return []

    def test_registered_under_its_name(self, provider):
        assert get_provider_class(provider.name) is type(provider)

    def test_bars_oldest_first_utc_and_unique(self, provider):
        result = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        assert result.bars, "a known symbol returns bars"
        stamps = [b.ts for b in result.bars]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert all(ts.utcoffset() == timedelta(0) for ts in stamps)

    def test_bars_carry_provider_symbol_interval(self, provider):
        result = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        assert {(b.provider, b.symbol, b.interval) for b in result.bars} == {(provider.name, self.GOOD_SYMBOL, self.INTERVAL)}

    def test_bar_starts_lie_on_the_interval_grid(self, provider):
        if self.INTERVAL == "1day":
            pytest.skip("daily bars start at 00:00 in the exchange's zone: each provider's own tests check it")
        step = interval_seconds(self.INTERVAL)
        result = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        assert all(int(b.ts.timestamp()) % step == 0 for b in result.bars)

    def test_bars_are_valid(self, provider):
        result = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        good, rejected = validate_bars(result.bars)
        assert rejected == [] and result.rejected == []
        assert len(good) == len(result.bars)

    def test_unknown_symbol_is_a_terminal_invalid_symbol(self, provider, unknown_symbol):
        with pytest.raises(InvalidSymbol) as info:
            provider.fetch_bars(unknown_symbol, self.INTERVAL)
        assert info.value.transient is False
        assert info.value.symbol == unknown_symbol and info.value.provider == provider.name

    def test_declares_exactly_its_secrets(self, provider, api_secrets):
        # the wiring registers these with the log redactor: a key missing here is logged in clear
        assert sorted(provider.secrets()) == sorted(api_secrets)

    def test_no_secret_in_errors(self, provider, unknown_symbol, api_secrets, caplog):
        caplog.set_level(logging.DEBUG, logger="etl")  # the providers' own log lines, all of them
        with pytest.raises(InvalidSymbol) as info:
            provider.fetch_bars(unknown_symbol, self.INTERVAL)
        err = info.value
        assert err.url, "errors carry the (redacted) URL of the request"
        texts = ["".join(traceback.format_exception(err)), repr(err), *map(repr, err.args), *map(repr, vars(err).values()),
                 caplog.text]  # fmt: skip
        assert _leaks(api_secrets, texts) == []

    def test_no_secret_in_results_or_logs(self, provider, api_secrets, caplog):
        caplog.set_level(logging.DEBUG, logger="etl")
        result = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        assert _leaks(api_secrets, [repr(result), caplog.text]) == []


#: Plain decimal text: what a provider must turn its numbers into (no exponent, no float32 tail).
DECIMAL = re.compile(r"^\d+(\.\d{1,10})?$")
#: Symbols the contract's server answers generically, whatever the provider's wire format.
SERVER_ERROR_SYMBOL, MALFORMED_SYMBOL = "FIVEXX", "MALFORMED"


class WireContract(ProviderContract):
    """The contract of a real provider's wire format, over loopback HTTP (issue #8's list).

    A subclass gives, besides ``GOOD_SYMBOL``/``INTERVAL``:

    - ``KEY``: a real-looking secret key (or None for key-less APIs);
    - ``NOW``: an instant after the good fixture's last bar has ended (every bar complete);
      ``PARTIAL_NOW``: an instant inside the last bar's interval (it is still forming);
    - ``UNKNOWN_SYMBOL`` and ``THROTTLED_SYMBOL``, answered by :meth:`route` with the API's own
      invalid-symbol and throttle replies; ``WINDOW``: a UTC (start, end) inside the good fixture;
    - ``make(base_url, clock, include_partial_bars)``: the provider, key and ``RetryPolicy(max_attempts=1)``;
    - ``symbol_of(path, query)``: the symbol a request is for;
    - ``route(path, query)``: the API's reply (good fixture, invalid symbol, throttle); and
      ``shuffled(body)``: the same reply with its records reordered and one repeated;
    - ``LOOPING_SYMBOL`` (paginating APIs): a symbol whose reply always names a next page that
      brings nothing newer; None when the API does not paginate.
    """

    KEY: str | None = None
    NOW: datetime
    PARTIAL_NOW: datetime
    UNKNOWN_SYMBOL = "NOSUCHSYM"
    THROTTLED_SYMBOL = "THROTTLED"
    LOOPING_SYMBOL: str | None = None
    WINDOW: tuple[datetime, datetime]
    MALFORMED_BODY = b'{"this is": not the documented format'

    def make(self, base_url: str, clock, include_partial_bars: bool = False):
        raise NotImplementedError

    def symbol_of(self, path: str, query: dict[str, str]) -> str:
        raise NotImplementedError

    def route(self, path: str, query: dict[str, str]):
        raise NotImplementedError

    def shuffled(self, body: bytes) -> bytes:
        raise NotImplementedError

    # -- fixtures the base contract uses ---------------------------------------------------------

    @pytest.fixture
    def mode(self):
        return {"shuffle": False}

    @pytest.fixture
    def server(self, replay, mode):
        def answer(path, query):
            symbol = self.symbol_of(path, query)
            if symbol == SERVER_ERROR_SYMBOL:
                return 503, {"Content-Type": "text/plain"}, b"upstream unavailable"
            if symbol == MALFORMED_SYMBOL:
                return 200, {"Content-Type": "application/json"}, self.MALFORMED_BODY
            status, headers, body = self.route(path, query)
            if mode["shuffle"] and status == 200:
                body = self.shuffled(body)
            return status, headers, body

        return replay(answer)

    @pytest.fixture
    def provider(self, server):
        with self.make(server.server.url, ManualClock(self.NOW)) as p:
            yield p

    @pytest.fixture
    def unknown_symbol(self):
        return self.UNKNOWN_SYMBOL

    @pytest.fixture
    def api_secrets(self):
        return [self.KEY] if self.KEY else []

    # -- issue #8's checks ------------------------------------------------------------------------

    def test_values_are_exact_decimal_text(self, provider):
        bars = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        values = [v for b in bars for v in b[4:9] if v is not None]
        assert values and [v for v in values if not (isinstance(v, str) and DECIMAL.match(v))] == []

    def test_order_and_duplicates_in_the_payload_do_not_matter(self, provider, mode):
        plain = validate_bars(provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars)[0]
        mode["shuffle"] = True
        shuffled = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        assert [b.ts for b in shuffled.bars] == sorted(b.ts for b in shuffled.bars)
        assert validate_bars(shuffled.bars)[0] == plain

    def test_error_taxonomy(self, provider):
        cases = [(self.UNKNOWN_SYMBOL, InvalidSymbol, False), (self.THROTTLED_SYMBOL, RateLimited, True),
                 (SERVER_ERROR_SYMBOL, HTTPError, True), (MALFORMED_SYMBOL, PayloadError, False)]  # fmt: skip
        for symbol, kind, transient in cases:
            with pytest.raises(kind) as info:
                provider.fetch_bars(symbol, self.INTERVAL)
            err = info.value
            assert err.transient is transient and err.provider == provider.name and err.symbol == symbol, (symbol, err)
            assert self.KEY is None or self.KEY not in str(err)

    def test_bars_still_forming_are_left_out_unless_asked_for(self, server):
        with self.make(server.server.url, ManualClock(self.NOW)) as p:
            complete = p.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        with self.make(server.server.url, ManualClock(self.PARTIAL_NOW)) as p:
            forming = p.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL)
        with self.make(server.server.url, ManualClock(self.PARTIAL_NOW), include_partial_bars=True) as p:
            included = p.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        assert forming.bars == complete[:-1] and forming.partial_dropped >= 1
        assert included[-1].ts == complete[-1].ts

    def test_fetch_range_returns_exactly_the_window(self, provider):
        start, end = self.WINDOW
        bars = provider.fetch_range(self.GOOD_SYMBOL, self.INTERVAL, start, end).bars
        assert bars and all(start <= b.ts < end for b in bars)
        everything = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        assert [b.ts for b in bars] == [b.ts for b in everything if start <= b.ts < end]

    def test_pagination_terminates(self, provider, server):
        if self.LOOPING_SYMBOL is None:
            pytest.skip(f"{provider.name} does not paginate")
        start, end = self.WINDOW
        provider.fetch_range(self.LOOPING_SYMBOL, self.INTERVAL, start, end)
        assert len(server.requests) < 50, "a next page that brings nothing newer ends the pagination"

    def test_an_interval_the_api_lacks_is_a_config_error(self, provider):
        missing = [i for i in INTERVALS if i not in provider.intervals]
        if not missing:
            pytest.skip(f"{provider.name} offers every interval")
        with pytest.raises(ConfigError):
            provider.fetch_bars(self.GOOD_SYMBOL, missing[0])
