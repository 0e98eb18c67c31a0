"""Polygon.io (now also called Massive) aggregates: ``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``.

Wire format per Polygon's REST documentation and its official client (``polygon-io/client-python``,
``polygon/rest/base.py``: the key goes in an ``Authorization: Bearer`` header, ``next_url`` is
followed as given), checked against the real recordings listed in shared/data/real/PROVENANCE.md
(``polygon_aggs_*``):

- Request: ``{base}/v2/aggs/ticker/AAPL/range/1/minute/<from>/<to>?adjusted=true&sort=asc&limit=50000``.
  ``from``/``to`` are ``YYYY-MM-DD`` dates (daily bars: the trading dates, both inclusive) or Unix
  **milliseconds** (intraday: bar starts, both inclusive). ``limit`` (at most 50,000) counts the
  *base* aggregates read; a reply that stops short names the rest in ``next_url``.
- Auth: ``Authorization: Bearer <POLYGON_API_KEY>``, never an ``apiKey`` query parameter, so the key
  is in no URL (none we build, none we log, none a proxy records). ``next_url`` comes back without
  the key (the official client sends the same header again); if a gateway adds ``apiKey=`` it is
  stripped before the request, and only ``next_url``'s path and query are used, on the configured
  ``base_url``'s host: the key is never sent to a host a reply names.
- Reply: ``{"ticker", "queryCount", "resultsCount", "adjusted", "results": [{"t", "o", "h", "l", "c",
  "v", "vw", "n"}], "status": "OK" | "DELAYED", "request_id", "count", "next_url"?}``. Numbers are
  JSON numbers: ``t`` an integer (ms UTC at the bar **start**), prices floats, ``v`` a float that
  may be written in exponent form (``1.12117471e+08``) or be fractional (crypto). Indices
  (``I:NDX``) have no ``v``/``n``/``vw``, and their replies lack ``resultsCount`` and ``adjusted``.
- No data: HTTP 200 with ``resultsCount`` 0 and **no** ``results`` key (a weekend, a holiday, a
  window before the listing). An unknown ticker gets the very same reply, so the aggregates alone
  cannot tell one from the other: when a symbol's first poll (no stored bars yet) comes back empty,
  the provider asks the ticker reference (``/v3/reference/tickers/{ticker}``, one more request;
  ``POLYGON_VERIFY_TICKERS=false`` turns it off), whose HTTP 404 ``{"status": "NOT_FOUND",
  "message": "Ticker not found."}`` is an unknown ticker (:class:`~errors.InvalidSymbol`).
- Errors: ``{"status": "ERROR" | "NOT_FOUND" | "NOT_AUTHORIZED", "request_id", "error" | "message"}``.
  404 with such a body → :class:`~errors.InvalidSymbol`; 403 ``NOT_AUTHORIZED`` (data outside the
  plan) → :class:`~errors.PremiumRequired`; 401 (``Unknown API Key``) → a terminal
  :class:`~errors.HTTPError` naming ``POLYGON_API_KEY``; 429 → :class:`~errors.RateLimited` (the
  free plan allows 5 requests a minute: the default budget); other 4xx terminal, 5xx transient.

Bars: ``ts`` = the bar start, UTC. Intraday starts must lie on the interval's grid. Daily bars are
moved to 00:00 of the trading date in the market's zone, whatever Polygon stamps: stocks
(00:00 New York) and indices (05:00Z/06:00Z, i.e. 01:00 New York) to 00:00 New York of the same
date; crypto (``X:``) and forex (``C:``) must be stamped 00:00 UTC and stay there. Values are the
exact decimal text of the JSON numbers (``1.12117471e+08`` → ``112117471``, never an exponent).
Records that cannot become bars are rejected with a reason (see :func:`parse_aggs`), never guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from errors import ConfigError, HTTPError, InvalidSymbol, MarketpollError, PayloadError, PremiumRequired, RateLimited
from etl.http import Response
from etl.providers.base import FetchResult, Page, Provider, ProviderConfig, Request
from etl.providers.registry import register
from etl.providers.wire import epoch_ms, number_text, record_excerpt, utc_from_ms, whole_number
from etl.transform import Rejection, date_to_utc, excerpt, zone
from models.bar import Bar, interval_seconds

__all__ = [
    "PolygonConfig",
    "PolygonProvider",
    "parse_aggs",
    "error_from_body",
    "day_zone",
    "POLYGON_INTERVALS",
    "MAX_LIMIT",
    "AGGS_PATH",
    "TICKER_PATH",
]

#: Canonical interval -> Polygon's ``{multiplier}/{timespan}``.
POLYGON_INTERVALS = {"1min": "1/minute", "5min": "5/minute", "15min": "15/minute", "30min": "30/minute", "60min": "1/hour",
                     "1day": "1/day"}  # fmt: skip
#: Most base aggregates one request may read (``limit``).
MAX_LIMIT = 50_000
AGGS_PATH = "/v2/aggs/ticker/"
TICKER_PATH = "/v3/reference/tickers/"
NEW_YORK = "America/New_York"
#: A New York daily stamp must fall before this local hour, or its trading date is unclear.
_DAILY_STAMP_LATEST_HOUR = 12
#: Reply ``status`` values that carry data (``DELAYED``: the plan's 15-minute delay).
_OK = ("OK", "DELAYED")

#: Rejection reasons of the parser.
MALFORMED_RECORD = "malformed record: not a JSON object"
MISSING_FIELD = "missing field"
BAD_TIMESTAMP = "bad timestamp: t is not Unix milliseconds"
OFF_GRID = "bar start off the interval grid (UTC)"
DAILY_NOT_UTC_MIDNIGHT = "daily bar not stamped 00:00 UTC (a 24/7 market's day)"
DAILY_STAMP_UNCLEAR = "daily bar stamped after noon New York: its trading date is unclear"
BAD_VALUE = "bad value: not a finite JSON number"


@dataclass(frozen=True)
class PolygonConfig(ProviderConfig):
    """Polygon's options (``POLYGON_<FIELD>``); ``POLYGON_API_KEY`` is required.

    ``adjusted``: split-adjusted bars (Polygon's default); ``limit``: base aggregates per request,
    1..50,000; ``lookback_days``: how far back a symbol's first poll (no stored bars yet) reaches, in
    days; ``verify_tickers``: ask the ticker reference when such a first poll comes back empty, so an
    unknown ticker is an error instead of "no data" forever (one more request).
    """

    adjusted: bool = True
    limit: int = MAX_LIMIT
    lookback_days: int = 10
    verify_tickers: bool = True

    def __post_init__(self) -> None:
        for name, value, lo, hi in (("limit", self.limit, 1, MAX_LIMIT), ("lookback_days", self.lookback_days, 1, 36500)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be a whole number from {lo} to {hi:,}, got {value!r}", name=name, value=value)
        for name in ("adjusted", "verify_tickers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}", name=name)


class _AuthHeaders(dict):
    """The ``Authorization`` header: sent as it is, shown as ``***`` (a :class:`Request`'s repr prints its headers)."""

    def __repr__(self) -> str:
        return "{'Authorization': 'Bearer ***'}"


def day_zone(symbol: str):
    """The zone whose midnight starts ``symbol``'s daily bars: UTC for crypto (``X:``) and forex (``C:``),
    New York for the rest (stocks, ``I:`` indices, ``O:`` options)."""
    return UTC if symbol.upper().startswith(("X:", "C:")) else zone(NEW_YORK)


def _bar_start(t: object, interval: str, symbol: str) -> datetime | str:
    """The UTC bar start of a record's ``t`` (ms), or the rejection reason."""
    t = whole_number(t)
    if t is None:
        return BAD_TIMESTAMP
    try:
        ts = utc_from_ms(t)
    except OverflowError:
        return BAD_TIMESTAMP
    if interval != "1day":
        return ts if t % (interval_seconds(interval) * 1000) == 0 else OFF_GRID
    tz = day_zone(symbol)
    if tz is UTC:
        return ts if t % 86_400_000 == 0 else DAILY_NOT_UTC_MIDNIGHT
    local = ts.astimezone(tz)
    if local.hour >= _DAILY_STAMP_LATEST_HOUR:
        return DAILY_STAMP_UNCLEAR
    return date_to_utc(local.date(), tz)


def parse_aggs(body: bytes, *, symbol: str, interval: str, provider: str = "polygon", url: str | None = None,
               adjusted: bool | None = None) -> tuple[Page, str | None]:  # fmt: skip
    """One aggregates reply -> (a :class:`Page` of bars in reply order, the reply's ``next_url`` or None).

    ``interval`` is the canonical one asked for, ``adjusted`` what was asked (None: not checked).
    Every record that cannot become a bar goes to ``Page.rejected`` with its raw ``t``, a reason
    and its compact JSON (at most 200 characters):

    - :data:`MALFORMED_RECORD`: not a JSON object;
    - :data:`MISSING_FIELD`: ``t``, ``o``, ``h``, ``l`` or ``c`` absent or null, or ``v`` absent or
      null on anything but an index (``I:``), whose bars have no volume (``volume`` None);
    - :data:`BAD_VALUE`: a price or volume that is not a finite JSON number (a string included);
    - :data:`BAD_TIMESTAMP`: ``t`` not an integer of milliseconds;
    - :data:`OFF_GRID`: an intraday start not on the interval's grid (UTC epoch multiples);
    - :data:`DAILY_NOT_UTC_MIDNIGHT`: a crypto or forex day not stamped 00:00 UTC;
    - :data:`DAILY_STAMP_UNCLEAR`: a New York market's day stamped at or after 12:00 New York (an
      evening stamp could mean the next trading date; nothing is guessed).

    ``results`` absent or empty is ``no_data``. Raises the typed error of an error body (see
    :func:`error_from_body`), and :class:`~errors.PayloadError` (with ``provider``, ``symbol``,
    ``url``) for a body that is not UTF-8 JSON of the documented shape, one about another ticker
    (``ticker`` differs from ``symbol``, compared without case), one whose ``adjusted`` is not what
    was asked (adjusted and unadjusted prices never mix), and one whose ``resultsCount`` is not 0
    while it carries no ``results``.
    """
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    try:
        obj = json.loads(body.decode("utf-8-sig"), parse_float=Decimal)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"{provider}: malformed JSON for {symbol}: {exc}", **ctx) from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{provider}: expected a JSON object of aggregates for {symbol}, got {type(obj).__name__}", **ctx)
    if obj.get("status") not in (*_OK, None) or ("error" in obj and "results" not in obj):
        raise error_from_body(obj, status=200, provider=provider, symbol=symbol, url=url)
    ticker = obj.get("ticker")
    if ticker is not None and str(ticker).strip().upper() != symbol.strip().upper():
        raise PayloadError(f"{provider}: asked for {symbol}, the reply is for {excerpt(str(ticker))!r}; nothing loaded", **ctx)
    if adjusted is not None and "adjusted" in obj and obj["adjusted"] is not adjusted:
        raise PayloadError(f"{provider}: asked for adjusted={str(adjusted).lower()} bars of {symbol}, the reply says "
                           f"adjusted={json.dumps(obj['adjusted'], default=str)}; nothing loaded", **ctx)  # fmt: skip
    next_url = obj.get("next_url")
    if next_url is not None and not isinstance(next_url, str):
        raise PayloadError(f"{provider}: next_url is not a string for {symbol}", **ctx)
    results = obj.get("results")
    if results is None:
        count = obj.get("resultsCount", 0)
        if count not in (0, None):
            raise PayloadError(f"{provider}: the reply counts {excerpt(str(count))} results for {symbol} but carries none",
                               **ctx)  # fmt: skip
        return Page(no_data=True), next_url or None
    if not isinstance(results, list):
        raise PayloadError(f"{provider}: results is not a list for {symbol}", **ctx)
    page = Page(no_data=not results)
    index = symbol.upper().startswith("I:")
    for rec in results:
        if not isinstance(rec, dict):
            page.rejected.append(Rejection(symbol, "", MALFORMED_RECORD, record_excerpt(rec)))
            continue
        t = rec.get("t")
        key = str(t) if t is not None else ""
        raw = (rec.get("o"), rec.get("h"), rec.get("l"), rec.get("c"))
        v = rec.get("v")
        if t is None or None in raw or (v is None and not index):
            page.rejected.append(Rejection(symbol, key, MISSING_FIELD, record_excerpt(rec)))
            continue
        ts = _bar_start(t, interval, symbol)
        if isinstance(ts, str):
            page.rejected.append(Rejection(symbol, key, ts, record_excerpt(rec)))
            continue
        prices = [number_text(x) for x in raw]
        volume = number_text(v) if v is not None else None
        if None in prices or (v is not None and volume is None):
            page.rejected.append(Rejection(symbol, key, BAD_VALUE, record_excerpt(rec)))
            continue
        page.bars.append(Bar(provider, symbol, interval, ts, *prices, volume))  # type: ignore[arg-type]
    return page, next_url or None


def error_from_body(obj: object, *, status: int, provider: str, symbol: str, url: str | None,
                    retry_after_seconds: float | None = None, secret: str | None = None) -> MarketpollError:  # fmt: skip
    """The typed error of a Polygon error reply (HTTP ``status``; ``obj`` its parsed JSON body, or None). Pure.

    ``NOT_FOUND``/404 -> InvalidSymbol; ``NOT_AUTHORIZED``/403 -> PremiumRequired; 401 -> a terminal
    HTTPError naming ``POLYGON_API_KEY``; 429 -> RateLimited; a 200 error body -> PayloadError; other
    statuses -> HTTPError (transient for 5xx and 408). ``secret`` (the key) is masked in the API's text.
    """
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    said_status = obj.get("status") if isinstance(obj, dict) else None
    text = ""
    if isinstance(obj, dict):
        text = next((str(obj[k]) for k in ("error", "message") if obj.get(k)), "")
    text = " ".join(text.split())
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    text = excerpt(text)
    said = f"{said_status}: {text}" if said_status and text else str(said_status or text or "no Polygon error text")
    if status == 404 or said_status == "NOT_FOUND":
        return InvalidSymbol(f"{provider}: unknown ticker {symbol!r} (HTTP {status}, {said})", **ctx)
    if status == 403 or said_status == "NOT_AUTHORIZED":
        return PremiumRequired(f"{provider}: {symbol} is outside the key's plan (HTTP {status}, {said})", **ctx)
    if status == 401:
        return HTTPError(f"{provider}: the API key was refused (HTTP 401, {said}): check POLYGON_API_KEY", status=401,
                         transient=False, **ctx)  # fmt: skip
    if status == 429:
        return RateLimited(f"{provider}: throttled (HTTP 429, {said}) for {url}", retry_after_seconds=retry_after_seconds,
                           **ctx)  # fmt: skip
    if status == 200:
        return PayloadError(f"{provider}: error reply instead of aggregates for {symbol} ({said})", **ctx)
    transient = status >= 500 or status == 408
    return HTTPError(f"{provider}: HTTP {status} for {url} ({said})", status=status, transient=transient, **ctx)


@register
class PolygonProvider(Provider):
    """Polygon aggregates over HTTP (see the module docstring for the wire format).

    Intervals: 1min, 5min, 15min, 30min (``N/minute``), 60min (``1/hour``), 1day (``1/day``).
    Polling asks for ``[watermark, now]`` (the watermark bar is fetched again, harmlessly), or for the
    last ``lookback_days`` when the symbol has no stored bars; a gap of any length is filled by
    following ``next_url``. A history window is one request, followed through ``next_url``.
    """

    name = "polygon"
    intervals = POLYGON_INTERVALS
    env_prefix = "POLYGON"
    Config = PolygonConfig
    default_base_url = "https://api.polygon.io"
    default_rate_limit = "5/minute"  # the free (Basic) plan
    key_required = True
    key_help = "get a free key in the Polygon.io (Massive) dashboard, under Keys"

    config: PolygonConfig

    # -- requests -------------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """The ``Authorization: Bearer`` header of every request (its repr shows ``***``; never log its value)."""
        return _AuthHeaders(Authorization=f"Bearer {self.config.api_key or ''}")

    def params(self) -> dict[str, str]:
        """Query parameters of an aggregates request (no secret in them)."""
        return {"adjusted": "true" if self.config.adjusted else "false", "sort": "asc", "limit": str(self.config.limit)}

    def aggs_url(self, symbol: str, interval: str, start: datetime, last: datetime) -> str:
        """The aggregates URL for bars starting in UTC ``[start, last]`` (daily: the trading dates of both)."""
        span = self.check_interval(interval)
        if interval == "1day":
            tz = day_zone(symbol)
            lo, hi = start.astimezone(tz).date().isoformat(), last.astimezone(tz).date().isoformat()
        else:
            lo, hi = str(max(0, epoch_ms(start))), str(max(0, epoch_ms(last)))
        return f"{self.base_url}{AGGS_PATH}{quote(symbol, safe=':.')}/range/{span}/{lo}/{hi}"

    def latest_request(self, symbol: str, interval: str, since: datetime | None) -> Request:
        now = self.clock.now().astimezone(UTC)
        start = since if since is not None else now - timedelta(days=self.config.lookback_days)
        return Request(self.aggs_url(symbol, interval, min(start, now), now), self.params(), symbol=symbol,
                       interval=interval, headers=self.headers())  # fmt: skip

    def latest_reach(self, interval: str) -> timedelta:
        """One page: ``limit`` base aggregates, counted as minutes (the finest base; a lower bound). The latest
        request spans [watermark, now] and follows ``next_url``, but a longer hole is fetched as a window first."""
        return self.config.limit * timedelta(minutes=1)

    def range_requests(self, symbol: str, interval: str, start: datetime, end: datetime) -> Iterator[Request]:
        """One request for UTC ``[start, end)`` (``to`` = end - 1 ms, or the date of that instant), paged by ``next_url``."""
        self.check_interval(interval)
        if start >= end:
            return
        yield Request(self.aggs_url(symbol, interval, start, end - timedelta(milliseconds=1)), self.params(),
                      symbol=symbol, interval=interval, headers=self.headers(), window=(start, end))  # fmt: skip

    def followup(self, request: Request, result: FetchResult, since: datetime | None) -> Request | None:
        """A first poll (no watermark) that came back empty is followed by the ticker reference, whose
        404 tells an unknown ticker from a quiet one (see the module docstring). Its reply adds no bars."""
        if since is not None or not self.config.verify_tickers or result.bars or result.rejected:
            return None
        return Request(f"{self.base_url}{TICKER_PATH}{quote(request.symbol, safe=':.')}", {}, symbol=request.symbol,
                       interval=request.interval, headers=self.headers())  # fmt: skip

    # -- replies --------------------------------------------------------------------------------

    def error_for(self, reply: Response, request: Request) -> MarketpollError | None:
        """A Polygon JSON error body (``{"status", "error" | "message"}``) -> its typed error (see
        :func:`error_from_body`), as does a 401 or 403 without one. HTTP 429, and other statuses
        without such a body (an HTML gateway page on a 5xx), get the generic mapping."""
        if reply.status == 429:
            return None  # the generic mapping: RateLimited with Retry-After, counted as a throttle
        try:
            obj = json.loads(reply.body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            obj = None
        if not (isinstance(obj, dict) and "status" in obj) and reply.status not in (401, 403):
            return None
        return error_from_body(obj, status=reply.status, provider=self.name, symbol=request.symbol, url=reply.url,
                               secret=self.config.api_key)  # fmt: skip

    def parse(self, reply: Response, request: Request) -> Page:
        if TICKER_PATH in urlsplit(request.url).path:
            return self._parse_ticker(reply, request)
        page, next_url = parse_aggs(reply.body, symbol=request.symbol, interval=request.interval, provider=self.name,
                                    url=reply.url, adjusted=self.config.adjusted)  # fmt: skip
        if next_url and page.bars:
            page.next = self._next(next_url, page, request, reply.url)
        return page

    def _parse_ticker(self, reply: Response, request: Request) -> Page:
        """The ticker reference's 200: the ticker exists (no bars); an error body raises its error."""
        try:
            obj = json.loads(reply.body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            obj = None
        if not isinstance(obj, dict):
            raise PayloadError(f"{self.name}: malformed ticker reference reply for {request.symbol}", provider=self.name,
                               symbol=request.symbol, url=reply.url)  # fmt: skip
        if obj.get("status") not in (*_OK, None):
            raise error_from_body(obj, status=200, provider=self.name, symbol=request.symbol, url=reply.url,
                                  secret=self.config.api_key)  # fmt: skip
        return Page()

    def _next(self, next_url: str, page: Page, request: Request, url: str) -> Request:
        """The request for ``next_url``: its path and query on our ``base_url`` (never another host), without
        any ``apiKey`` (the key travels in the header), for the rest of the request's window."""
        ctx = {"provider": self.name, "symbol": request.symbol, "url": url}
        parts = urlsplit(next_url)
        at = parts.path.find(AGGS_PATH)
        path = parts.path[at:] if at >= 0 else ""
        expected = f"{AGGS_PATH}{request.symbol}/range/".upper()
        if not unquote(path).upper().startswith(expected):
            raise PayloadError(f"{self.name}: next_url is not an aggregates URL for {request.symbol} "
                               f"({excerpt(unquote(path) or 'no aggregates path')}); nothing loaded", **ctx)  # fmt: skip
        params = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "apikey"}
        window = None
        if request.window is not None:
            rest = max(b.ts for b in page.bars) + timedelta(seconds=interval_seconds(request.interval))
            if rest < request.window[1]:  # else an empty next page says nothing about the window
                window = (max(request.window[0], rest), request.window[1])
        return Request(f"{self.base_url}{path}", params, symbol=request.symbol, interval=request.interval,
                       headers=request.headers, window=window)  # fmt: skip
