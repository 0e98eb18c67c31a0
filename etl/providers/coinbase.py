"""Coinbase Exchange: public product candles (``GET /products/{product_id}/candles``).

Format per the provider's documentation at
https://docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles
(errors: https://docs.cdp.coinbase.com/exchange/rest-api/requests, rate limits:
https://docs.cdp.coinbase.com/exchange/rest-api/rate-limits), checked against the real
recordings listed in shared/data/real/PROVENANCE.md.

Request: ``GET {base}/products/{product_id}/candles?granularity=<seconds>&start=<ISO 8601 UTC>&end=<ISO 8601 UTC>``.
No key: the endpoint is public (throttled per IP, 10 requests/second, bursts up to 15).

- ``granularity`` is one of 60, 300, 900, 3600, 21600, 86400 seconds; anything else is
  rejected by the API (there is no 30-minute candle: ``30min`` is a ConfigError here).
- At most 300 candles per request; a wider start/end span is rejected with HTTP 400
  ("granularity too small for the requested time range ...").
- Reply: a JSON array of ``[time, low, high, open, close, volume]`` (note the order: low and
  high come *before* open), newest first. ``time`` is the bucket **start** in Unix seconds UTC;
  the market runs 24/7 and daily buckets start at 00:00 UTC. Prices and volume are JSON
  numbers; whole values are written without a decimal point (``8131`` next to ``8131.69``)
  and tiny ones may come in exponent form (``5e-7``). A bucket without trades has no candle
  (a gap, not an error); an empty array means no data for the window.
- Errors are non-2xx with ``{"message": "..."}``: an unknown product is HTTP 404
  ``{"message": "NotFound"}`` (:class:`~errors.InvalidSymbol`); a bad granularity or range
  is HTTP 400 with the reason (a terminal :class:`~errors.HTTPError` carrying that reason);
  throttling is HTTP 429 (:class:`~errors.RateLimited`, by the generic mapping); 5xx are
  transient.

Bars: ``ts`` = the bucket start, UTC; daily bars are normalised to 00:00 UTC of the bucket's
date. Values are the JSON numbers' digits as sent (:func:`etl.providers.wire.number_text`:
``8131`` stays ``8131``, ``6106.1`` stays ``6106.1``, ``5e-7`` becomes ``0.0000005``), never
with an exponent. OHLC are traded prices: nothing to split-adjust.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote

from errors import HTTPError, InvalidSymbol, MarketpollError, PayloadError
from etl.http import Response
from etl.providers.base import Page, Provider, ProviderConfig, Request
from etl.providers.registry import register
from etl.providers.wire import EPOCH, number_text, record_excerpt, utc_from_seconds, whole_number
from etl.transform import Rejection, excerpt
from models.bar import Bar, interval_seconds

__all__ = ["CoinbaseConfig", "CoinbaseProvider", "parse_candles", "GRANULARITIES", "MAX_CANDLES"]

#: Canonical interval -> Coinbase ``granularity`` (seconds). 30min is not offered (nor is 6h mapped).
GRANULARITIES: dict[str, str] = {"1min": "60", "5min": "300", "15min": "900", "60min": "3600", "1day": "86400"}
#: Most candles one request may span (the API rejects wider windows).
MAX_CANDLES = 300

#: Rejection reasons.
MALFORMED_RECORD = "malformed record: not a 6-element array"
BAD_TIMESTAMP = "bad timestamp"
OFF_GRID = "bad timestamp: not on the granularity grid"
BAD_VALUE = "bad value: not a finite JSON number"


@dataclass(frozen=True)
class CoinbaseConfig(ProviderConfig):
    """Coinbase's settings (``COINBASE_BASE_URL``, ``COINBASE_RATE_LIMIT``). No options of its own and no
    key: public candles need none (a ``COINBASE_API_KEY``, if set, is never sent)."""


def _bucket_start(raw: object, step: int, daily: bool) -> datetime | str:
    """The UTC bar start of a candle's ``time``, or the rejection reason."""
    raw = whole_number(raw)
    if raw is None:
        return BAD_TIMESTAMP
    try:
        ts = utc_from_seconds(raw)
    except OverflowError:
        return BAD_TIMESTAMP
    if daily:  # 00:00 UTC of the bucket's date, whatever the stamp
        return ts.replace(hour=0, minute=0, second=0)
    if raw % step:
        return OFF_GRID
    return ts


def parse_candles(body: bytes, *, symbol: str, interval: str, provider: str = "coinbase", url: str | None = None) -> Page:
    """One candles reply -> a :class:`Page` (bars in reply order; the loop sorts).

    Every ``[time, low, high, open, close, volume]`` record becomes a bar with ``ts`` = the UTC
    bucket start (daily: 00:00 UTC of its date) or a rejection with the raw ``time``, a reason
    and the record as compact JSON: not a 6-element array (:data:`MALFORMED_RECORD`), ``time``
    not an integer of Unix seconds (:data:`BAD_TIMESTAMP`), an intraday ``time`` off the
    granularity's grid (:data:`OFF_GRID`), a price or volume that is not a finite number
    (:data:`BAD_VALUE`). An empty array is ``no_data``.

    Raises :class:`~errors.PayloadError` (with ``provider``, ``symbol``, ``url``) for a body that is
    not UTF-8 JSON, a JSON object (an error message sent with a 2xx status) or any other non-array.
    """
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    try:
        obj = json.loads(body.decode("utf-8-sig"), parse_float=Decimal)  # the digits as sent
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"{provider}: malformed JSON for {symbol}: {exc}", **ctx) from None
    if isinstance(obj, dict) and "message" in obj:
        raise PayloadError(f"{provider}: error reply for {symbol}: {excerpt(str(obj['message']))}", **ctx)
    if not isinstance(obj, list):
        raise PayloadError(f"{provider}: expected a JSON array of candles for {symbol}, got {type(obj).__name__}", **ctx)
    page = Page(no_data=not obj)
    step, daily = interval_seconds(interval), interval == "1day"
    for rec in obj:
        if type(rec) is not list or len(rec) != 6:
            key = str(rec[0]) if isinstance(rec, list) and rec else ""
            page.rejected.append(Rejection(symbol, key, MALFORMED_RECORD, record_excerpt(rec)))
            continue
        t, low, high, open_, close, volume = rec
        ts = _bucket_start(t, step, daily)
        if isinstance(ts, str):
            page.rejected.append(Rejection(symbol, str(t), ts, record_excerpt(rec)))
            continue
        values = tuple(number_text(x, strings=True) for x in (open_, high, low, close, volume))
        if None in values:
            page.rejected.append(Rejection(symbol, str(t), BAD_VALUE, record_excerpt(rec)))
            continue
        page.bars.append(Bar(provider, symbol, interval, ts, *values))
    return page


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _floor(ts: datetime, step: int) -> datetime:
    seconds = int((ts - EPOCH).total_seconds() // step) * step
    return utc_from_seconds(seconds)


def _message(reply: Response) -> str | None:
    """The ``message`` of a Coinbase error body, or None when the body is not one."""
    try:
        obj = json.loads(reply.body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("message"), str):
        return excerpt(" ".join(obj["message"].split()))
    return None


@register
class CoinbaseProvider(Provider):
    """Coinbase Exchange candles over HTTP (see the module docstring for the wire format).

    Intervals: 1min, 5min, 15min, 60min, 1day (granularity 60/300/900/3600/86400 s); no 30min.
    Polling asks for the newest window of at most 300 buckets, starting at the watermark when
    it lies inside that window. History windows are chunked into requests of at most 300 buckets.
    """

    name = "coinbase"
    intervals = GRANULARITIES
    env_prefix = "COINBASE"
    Config = CoinbaseConfig
    default_base_url = "https://api.exchange.coinbase.com"
    default_rate_limit = "10/second"  # public endpoints: 10 requests/second per IP (bursts up to 15)
    key_required = False
    key_help = "public market data: no key needed"
    latest_bars = MAX_CANDLES  # an older watermark's hole is fetched as a history window first

    def _url(self, symbol: str) -> str:
        return f"{self.base_url}/products/{quote(symbol, safe='')}/candles"

    def latest_request(self, symbol: str, interval: str, since: datetime | None) -> Request:
        """The newest buckets up to now: from ``since``'s bucket when it is among the last 300 (the watermark bar
        is fetched again, harmlessly), else the last 300 buckets (the newest one still forming). A gap longer
        than 300 buckets is not filled by polling: fetch it as a history window."""
        step = interval_seconds(interval)
        now = self.clock.now().astimezone(UTC).replace(microsecond=0)
        newest = _floor(now, step)
        start = newest - timedelta(seconds=step * (MAX_CANDLES - 1))
        if since is not None:
            start = min(max(start, _floor(since, step)), newest)
        params = {"granularity": self.check_interval(interval), "start": _iso(start), "end": _iso(now)}
        return Request(self._url(symbol), params, symbol=symbol, interval=interval)

    def range_requests(self, symbol: str, interval: str, start: datetime, end: datetime) -> Iterator[Request]:
        """UTC ``[start, end)`` in windows of at most 300 buckets, on the granularity's grid. Each request's
        ``end`` is one second before its window's (exclusive) end, so its span is under 300 buckets however
        the API counts, and the bucket starting at the window's end is not asked for. ``Request.window`` is
        the exact [start, end) piece the request covers."""
        self.check_interval(interval)
        step = interval_seconds(interval)
        chunk = timedelta(seconds=step * MAX_CANDLES)
        edge = _floor(start, step)
        while edge < end:
            lo, hi = max(start, edge), min(end, edge + chunk)
            edge += chunk
            if lo >= hi:
                continue
            params = {"granularity": self.intervals[interval], "start": _iso(lo), "end": _iso(max(lo, hi - timedelta(seconds=1)))}
            yield Request(self._url(symbol), params, symbol=symbol, interval=interval, window=(lo, hi))

    def error_for(self, reply: Response, request: Request) -> MarketpollError | None:
        """HTTP 404 with a Coinbase message (``NotFound``): an unknown product -> InvalidSymbol. HTTP 400 with a
        message (bad granularity, too wide a range): a terminal HTTPError naming the API's reason. Anything
        else: the generic mapping (429 throttled, 5xx transient, other 4xx terminal)."""
        ctx = {"provider": self.name, "symbol": request.symbol, "url": reply.url}
        if reply.status not in (400, 404):
            return None
        message = _message(reply)
        if message is None:
            return None
        if reply.status == 404:
            return InvalidSymbol(f"{self.name}: unknown product {request.symbol!r} (HTTP 404: {message})", **ctx)
        return HTTPError(f"{self.name}: HTTP 400 for {reply.url}: {message}", status=400, transient=False, **ctx)

    def parse(self, reply: Response, request: Request) -> Page:
        return parse_candles(reply.body, symbol=request.symbol, interval=request.interval, provider=self.name, url=reply.url)
