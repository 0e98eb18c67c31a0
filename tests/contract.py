"""The provider contract (etl/providers/base.py), as tests every provider's test class inherits.

A subclass provides two fixtures: ``provider`` (ready to fetch ``GOOD_SYMBOL`` at
``INTERVAL``) and ``unknown_symbol`` (a symbol the provider rejects).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from errors import InvalidSymbol
from etl.providers import get_provider_class
from etl.transform import validate_bars
from models.bar import interval_seconds


class ProviderContract:
    GOOD_SYMBOL = "IBM"
    INTERVAL = "5min"

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

    def test_no_secret_in_errors(self, provider, unknown_symbol):
        with pytest.raises(InvalidSymbol) as info:
            provider.fetch_bars(unknown_symbol, self.INTERVAL)
        for secret in provider.secrets():
            assert secret not in str(info.value) and secret not in (info.value.url or "")
