"""The provider contract (etl/providers/base.py), as tests every provider's test class inherits.

A subclass provides the fixtures ``provider`` (ready to fetch ``GOOD_SYMBOL`` at
``INTERVAL``) and ``unknown_symbol`` (a symbol the provider rejects), and, when its provider
holds secrets (API keys), ``api_secrets``: the secrets it configured the provider with. The
secret checks are only as good as that list: give the provider a real-looking key, so that
a leak would show.
"""

from __future__ import annotations

import logging
import traceback
from datetime import timedelta

import pytest

from errors import InvalidSymbol
from etl.providers import get_provider_class
from etl.transform import validate_bars
from models.bar import interval_seconds


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
