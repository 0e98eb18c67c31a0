"""The bar (one OHLCV record) as it flows from transform to load."""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple

__all__ = ["Bar", "INTERVALS", "interval_seconds", "SYMBOL_RE", "normalize_symbol"]

#: Canonical bar intervals and their length in seconds. ``1day`` is a trading day.
INTERVALS: dict[str, int] = {
    "1min": 60,
    "5min": 300,
    "15min": 900,
    "30min": 1800,
    "60min": 3600,
    "1day": 86400,
}


def interval_seconds(interval: str) -> int:
    """Length of a canonical interval in seconds; raises ``KeyError`` for unknown names."""
    return INTERVALS[interval]


class Bar(NamedTuple):
    """One OHLCV bar (an immutable named tuple: cheap to build by the hundred thousand). The field
    order is part of the contract: ``bar[:4]`` is the primary key, ``bar[:3]`` the series and
    ``bar[4:]`` the stored values (``adj_close`` last, so providers without it leave it out).

    - ``ts``: the bar's *start*, a UTC-aware ``datetime``. Daily bars start at
      midnight of the trading date in the exchange's zone.
    - ``open``/``high``/``low``/``close``/``volume``: decimal text exactly as the
      provider sent it (``"86.4900"``), validated as finite numbers by
      :func:`etl.transform.validate_bars`; the database stores them as ``numeric``
      so no binary-float rounding happens on the way.
    - ``interval``: one of :data:`INTERVALS`; ``provider``: the registry name.
    - ``adj_close``: the close adjusted for splits and dividends, decimal text, when the provider
      sends one (Alpha Vantage's ``TIME_SERIES_DAILY_ADJUSTED``, Yahoo's daily ``adjclose``);
      None otherwise (stored as NULL). A revised value is an update like any other value.
    """

    provider: str
    symbol: str
    interval: str
    ts: datetime
    open: str
    high: str
    low: str
    close: str
    volume: str | None  # None: the market reports no volume (an index); stored as NULL
    adj_close: str | None = None  # None: the provider sends no adjusted close; stored as NULL


#: A ticker as marketpoll accepts it: letters, digits and ``. - : ^ = / _``, at most 32 characters
#: (``IBM``, ``BRK.B``, ``TSCO.LON``, ``^GSPC``, ``BTC-USD``, ``X:BTCUSD``). Never a tab, space or newline.
SYMBOL_RE = re.compile(r"[A-Z0-9^][A-Z0-9.\-:^=/_]{0,31}", re.ASCII)


def normalize_symbol(raw: str) -> str:
    """Upper-case and check a symbol; raises ``ValueError`` naming it when malformed. ASCII only, checked
    before upper-casing: Unicode case mapping would turn lookalikes into real tickers ('ſ' -> 'S', 'ı' -> 'I')."""
    sym = raw.strip()
    sym = sym.upper() if sym.isascii() else sym
    if not SYMBOL_RE.fullmatch(sym):
        raise ValueError(f"malformed symbol {raw!r}")
    return sym
