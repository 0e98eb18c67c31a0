"""Binance spot klines (``GET /api/v3/klines``): 24/7 crypto pairs, no API key.

Wire format per Binance's Spot REST API documentation
(https://github.com/binance/binance-spot-api-docs/blob/master/rest-api.md, "Kline/Candlestick
data" and "General API Information"), checked against the real recordings listed in
shared/data/real/PROVENANCE.md:

- Request: ``symbol`` (Binance's own, ``BNBUSDT``), ``interval`` (``1m 5m 15m 30m 1h 1d``),
  ``limit`` (default 500, at most 1000), optional ``startTime`` / ``endTime`` in Unix
  **milliseconds** UTC, both inclusive and matched against the kline open time. Without them
  the most recent ``limit`` klines come back (the newest one still forming); with
  ``startTime`` at most ``limit`` klines starting there.
- Reply: a JSON array of 12-element arrays, oldest first: ``[openTime (ms int), open, high, low,
  close, volume (base asset), closeTime (ms int, = openTime + interval - 1), quoteAssetVolume,
  numberOfTrades (int), takerBuyBaseVolume, takerBuyQuoteVolume, "0"]``; every price and volume a
  decimal string (``"0.72270000"``), kept verbatim. ``[]`` means no klines in the window.
  Without ``timeZone`` (never sent) intervals are bucketed in UTC: daily klines open at 00:00 UTC.
- Errors: ``{"code": <negative int>, "msg": "..."}``. HTTP 400 with code -1121 ("Invalid
  symbol.") or -1100 naming parameter 'symbol' (illegal characters) →
  :class:`~errors.InvalidSymbol`; HTTP 429 (over the request-weight limit) and 418 (IP banned
  for not backing off after 429s), both with ``Retry-After`` in seconds →
  :class:`~errors.RateLimited` (a 418 without the header: the ``banned until <ms>`` of its
  ``msg``); other 4xx terminal, 5xx transient (the generic mapping).

Bars: ``ts`` = the kline open time (UTC); ``volume`` = field 5, the base-asset volume. Records
that cannot become bars are rejected with a reason (see :func:`parse_klines`), never guessed at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from errors import ConfigError, HTTPError, InvalidSymbol, MarketpollError, PayloadError, RateLimited
from etl.http import Response, parse_retry_after
from etl.providers.base import Page, Provider, ProviderConfig, Request
from etl.providers.registry import register
from etl.providers.wire import epoch_ms, number_text, record_excerpt, utc_from_ms
from etl.transform import Rejection, excerpt
from models.bar import Bar, interval_seconds

__all__ = ["BinanceConfig", "BinanceProvider", "parse_klines", "BINANCE_INTERVALS", "MAX_LIMIT", "KLINES_PATH"]

#: Canonical interval -> Binance ``interval`` (3m, 2h, 4h, 1w, 1M ... have no canonical name).
BINANCE_INTERVALS = {"1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "1h", "1day": "1d"}
KLINES_PATH = "/api/v3/klines"
#: Most klines one request may ask for (``limit``).
MAX_LIMIT = 1000
_BANNED_UNTIL = re.compile(r"banned until (\d{10,16})")

#: Rejection reasons of the parser.
MALFORMED_RECORD = "malformed record: not an array of 12 fields"
BAD_TIMESTAMP = "bad timestamp: open time is not Unix milliseconds"
OFF_GRID = "open time off the interval grid (UTC)"
CLOSE_MISMATCH = "close time is not open time + interval - 1 ms"
MISSING_FIELD = "missing field"


@dataclass(frozen=True)
class BinanceConfig(ProviderConfig):
    """Binance's options (``BINANCE_<FIELD>``). ``base_url``: scheme and host (``https://api.binance.com``;
    a gateway, ``https://api.binance.us`` or a recording server may stand in). No key is needed."""

    limit: int = MAX_LIMIT  # klines per request, 1..1000

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise ConfigError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {self.limit!r}", name="limit",
                              value=self.limit)  # fmt: skip


def parse_klines(body: bytes, *, symbol: str, interval: str, provider: str = "binance", url: str | None = None) -> Page:
    """Parse a ``/api/v3/klines`` reply body into a :class:`Page` (bars oldest first, UTC bar starts).

    ``interval`` is the canonical one asked for. Every record that cannot become a bar goes to
    ``Page.rejected`` with its raw open time, a reason and its compact JSON (at most 200 chars):

    - ``"malformed record ..."``: not an array of at least 7 fields (open time ... close time);
    - ``"bad timestamp ..."``: the open time is not an integer number of milliseconds;
    - ``"open time off the interval grid (UTC)"``: not a multiple of the interval since the epoch
      (for daily klines: not 00:00 UTC, e.g. a gateway adding ``timeZone``): never moved onto a
      bar it does not cover;
    - ``"close time is not open time + interval - 1 ms"``: a kline of another interval;
    - ``"missing field"``: a price or the volume is absent, null or empty.

    Prices and volume are kept as the API's strings; a JSON number instead is rendered as its exact
    decimal text. ``[]`` → ``Page(no_data=True)``. An error object (``{"code", "msg"}``) raises its
    typed error; anything else that is not a JSON array raises :class:`~errors.PayloadError` with
    ``provider``, ``symbol`` and ``url``.
    """
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    try:
        obj = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{provider}: malformed JSON for {symbol}: {exc}", **ctx) from None
    if isinstance(obj, dict) and "code" in obj:
        raise error_from_body(obj, status=200, provider=provider, symbol=symbol, url=url)
    if not isinstance(obj, list):
        raise PayloadError(f"{provider}: expected a JSON array of klines for {symbol}, got {type(obj).__name__}", **ctx)
    page = Page(no_data=not obj)
    step_ms = interval_seconds(interval) * 1000
    for rec in obj:
        if not isinstance(rec, list) or len(rec) < 7:
            raw = rec[0] if isinstance(rec, list) and rec else rec
            page.rejected.append(Rejection(symbol, str(raw), MALFORMED_RECORD, record_excerpt(rec)))
            continue
        open_ms, close_ms = rec[0], rec[6]
        if isinstance(open_ms, bool) or not isinstance(open_ms, int):
            page.rejected.append(Rejection(symbol, str(open_ms), BAD_TIMESTAMP, record_excerpt(rec)))
            continue
        try:
            ts = utc_from_ms(open_ms)
        except OverflowError:
            page.rejected.append(Rejection(symbol, str(open_ms), BAD_TIMESTAMP, record_excerpt(rec)))
            continue
        if open_ms % step_ms:
            page.rejected.append(Rejection(symbol, str(open_ms), OFF_GRID, record_excerpt(rec)))
            continue
        if isinstance(close_ms, bool) or close_ms != open_ms + step_ms - 1:
            page.rejected.append(Rejection(symbol, str(open_ms), CLOSE_MISMATCH, record_excerpt(rec)))
            continue
        values = [number_text(v, strings=True) for v in rec[1:6]]  # strings verbatim, numbers without exponent
        if not all(values):
            page.rejected.append(Rejection(symbol, str(open_ms), MISSING_FIELD, record_excerpt(rec)))
            continue
        page.bars.append(Bar(provider, symbol, interval, ts, *values))  # type: ignore[arg-type]
    return page


def error_from_body(obj: object, *, status: int, provider: str, symbol: str, url: str | None,
                    retry_after_seconds: float | None = None) -> MarketpollError:  # fmt: skip
    """The typed error of a Binance error object ``{"code": -1121, "msg": "Invalid symbol."}`` (pure)."""
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    code = obj.get("code") if isinstance(obj, dict) else None
    msg = excerpt(str(obj.get("msg", ""))) if isinstance(obj, dict) else ""
    said = f"code {code}: {msg}" if code is not None else "no Binance error code"
    if code == -1121 or (code == -1100 and "'symbol'" in msg):
        return InvalidSymbol(f"{provider}: invalid symbol {symbol!r} (HTTP {status}, {said})", **ctx)
    if status in (418, 429) or code == -1003:
        return RateLimited(f"{provider}: throttled (HTTP {status}, {said}) for {url}", retry_after_seconds=retry_after_seconds,
                           **ctx)  # fmt: skip
    if status == 200:
        return PayloadError(f"{provider}: error object instead of klines for {symbol} ({said})", **ctx)
    transient = status >= 500 or status == 408
    return HTTPError(f"{provider}: HTTP {status} for {url} ({said})", status=status, transient=transient, **ctx)


@register
class BinanceProvider(Provider):
    """Binance spot klines over HTTP. Intervals: 1min, 5min, 15min, 30min, 60min, 1day (all UTC-bucketed).

    Polling: without a watermark, the most recent ``limit`` klines; with one, ``startTime`` = the
    watermark, followed page by page (``startTime`` = last open time + interval) while pages come
    back full. History windows: one request per ``limit`` intervals of ``[start, end)``
    (``endTime`` = end - 1 ms, since Binance's is inclusive); a chunk whose reply stops short of
    its end is followed to it the same way, and an empty reply is recorded as no data.
    """

    name = "binance"
    intervals = BINANCE_INTERVALS
    env_prefix = "BINANCE"
    Config = BinanceConfig
    default_base_url = "https://api.binance.com"
    # Binance allows 6,000 request weight per minute per IP (klines weigh 2: 3,000 requests). 600
    # requests a minute (1,200 weight) is a fifth of it: room for other Binance clients behind the
    # same IP, and still within the 1,200 weight/minute that Binance documented before raising it
    # (and that a gateway or older deployment behind BINANCE_BASE_URL may keep). 10/second smooths
    # bursts of many symbols. At 1,000 klines a request it is still 600,000 bars a minute.
    default_rate_limit = "10/second 600/minute"
    key_required = False
    key_help = "no key needed: /api/v3/klines is public market data"

    config: BinanceConfig

    def params(self, symbol: str, interval: str, *, start_ms: int | None = None, end_ms: int | None = None) -> dict[str, str]:
        """Query parameters of one klines request (no secret in them)."""
        p = {"symbol": symbol, "interval": self.check_interval(interval), "limit": str(self.config.limit)}
        if start_ms is not None:
            p["startTime"] = str(start_ms)
        if end_ms is not None:
            p["endTime"] = str(end_ms)
        return p

    @property
    def klines_url(self) -> str:
        return f"{self.base_url}{KLINES_PATH}"

    def latest_request(self, symbol: str, interval: str, since: datetime | None) -> Request:
        start_ms = None if since is None else max(0, epoch_ms(since))
        return Request(self.klines_url, self.params(symbol, interval, start_ms=start_ms), symbol=symbol, interval=interval)

    def latest_reach(self, interval: str) -> timedelta:
        """One page of ``limit`` klines: the latest request follows full pages from the watermark, but each
        page is a request of the symbol's retry budget, so a longer hole is fetched as windows first."""
        return self.config.limit * timedelta(seconds=interval_seconds(interval))

    def range_requests(self, symbol: str, interval: str, start: datetime, end: datetime) -> Iterator[Request]:
        step_ms = interval_seconds(interval) * 1000
        lo, hi = max(0, epoch_ms(start)), epoch_ms(end)
        chunk = step_ms * self.config.limit
        first = lo + (-lo % step_ms)  # the first open time on the grid at or after ``start``
        window_start = start
        while first < hi:
            last = min(first + chunk, hi)
            window = (window_start, utc_from_ms(last))
            yield Request(self.klines_url, self.params(symbol, interval, start_ms=first, end_ms=last - 1), symbol=symbol,
                          interval=interval, window=window)  # fmt: skip
            first, window_start = last, window[1]

    def error_for(self, reply: Response, request: Request) -> MarketpollError | None:
        if reply.status == 429 or not (reply.status == 418 or 400 <= reply.status < 500):
            return None  # 429 (with Retry-After) and 5xx: the generic mapping says it right
        try:
            obj = json.loads(reply.body)
        except (ValueError, UnicodeDecodeError):
            obj = None
        retry_after = None
        if reply.status == 418:
            retry_after = parse_retry_after(reply.headers.get("Retry-After"))
            m = _BANNED_UNTIL.search(str(obj.get("msg", ""))) if isinstance(obj, dict) else None
            if retry_after is None and m:
                until = utc_from_ms(int(m.group(1)))
                retry_after = max(0.0, (until - self.clock.now()).total_seconds())
        if not isinstance(obj, dict) and reply.status != 418:
            return None
        return error_from_body(obj, status=reply.status, provider=self.name, symbol=request.symbol, url=reply.url,
                               retry_after_seconds=retry_after)  # fmt: skip

    def parse(self, reply: Response, request: Request) -> Page:
        page = parse_klines(reply.body, symbol=request.symbol, interval=request.interval, provider=self.name, url=reply.url)
        page.next = self._next(page, request)
        return page

    def _next(self, page: Page, request: Request) -> Request | None:
        """The next page: ``startTime`` = newest open time + interval, while the window (or, without
        ``endTime``, a full page) says there is more. The loop stops when a page brings nothing newer."""
        if "startTime" not in request.params or not page.bars:
            return None
        step_ms = interval_seconds(request.interval) * 1000
        nxt = epoch_ms(max(b.ts for b in page.bars)) + step_ms
        end_ms = request.params.get("endTime")
        if end_ms is not None:
            if nxt > int(end_ms):
                return None
        elif len(page.bars) + len(page.rejected) < int(request.params.get("limit", MAX_LIMIT)):
            return None  # not a full page: nothing newer yet
        window = None
        if request.window is not None:
            window = (max(request.window[0], utc_from_ms(nxt)), request.window[1])
        return Request(request.url, {**request.params, "startTime": str(nxt)}, symbol=request.symbol, interval=request.interval,
                       headers=request.headers, window=window)  # fmt: skip
