"""The provider contract on an independent provider (tests/fakeprovider.py): another wire format,
paging by ``next``, errors as HTTP statuses. If the contract only held for Alpha Vantage's shape,
this would show it."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

from contract import WireContract
from etl.retry import RetryPolicy
from fakeprovider import START, FakexProvider, register, serve

register()


class TestFakexContract(WireContract):
    GOOD_SYMBOL, INTERVAL = "ABC", "1min"
    KEY = "FAKEXKEY7Q2W9E4R"
    NOW = START + timedelta(minutes=120)
    PARTIAL_NOW = START + timedelta(minutes=119, seconds=30)
    UNKNOWN_SYMBOL = "NOSUCH"
    LOOPING_SYMBOL = "LOOPY"
    WINDOW = (START + timedelta(minutes=10), START + timedelta(minutes=75))

    def make(self, base_url, clock, include_partial_bars=False):
        cfg = FakexProvider.Config(base_url=base_url, api_key=self.KEY, retry=RetryPolicy(max_attempts=1),
                                   include_partial_bars=include_partial_bars)  # fmt: skip
        return FakexProvider(cfg, clock=clock)

    def symbol_of(self, path, query):
        return path.rsplit("/", 1)[-1]

    def route(self, path, query):
        return serve(path, query, key=self.KEY)

    def shuffled(self, body):
        obj = json.loads(body)
        rows = obj["candles"]
        random.Random(7).shuffle(rows)
        obj["candles"] = rows + rows[:3]
        return json.dumps(obj).encode()

    def test_latest_follows_next_pages(self, provider, server):
        bars = provider.fetch_bars(self.GOOD_SYMBOL, self.INTERVAL).bars
        assert len(bars) == 120 and len(server.requests) == 3  # 50 + 50 + 20

    def test_an_empty_window_is_no_data_not_an_error(self, provider):
        start = datetime(2020, 1, 1, tzinfo=UTC)
        result = provider.fetch_range(self.GOOD_SYMBOL, self.INTERVAL, start, start + timedelta(hours=1))
        assert result.bars == [] and result.no_data == [(start, start + timedelta(hours=1))]
