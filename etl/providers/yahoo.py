"""Yahoo Finance chart API (v8): ``GET /v8/finance/chart/{symbol}``, no key.

Format per the public clients of the (undocumented) endpoint and the real recordings listed in
shared/data/real/PROVENANCE.md (node-yahoo-finance2's captures; yfinance's parser at
https://github.com/ranaroussi/yfinance, ``yfinance/scrapers/history.py``):

Request: ``interval`` (``1m 5m 15m 30m 60m 1d``), ``period1``/``period2`` (Unix seconds UTC;
Yahoo answers the bars stamped from period1 to period2, period2 included), ``includePrePost``
(intraday: pre-market and after-hours bars),
``events=div,splits``. The symbol is Yahoo's own (``AAPL``, ``BTC-USD``, ``^GSPC``, ``EURUSD=X``,
``WSU.DE``), URL-quoted as one path segment.

Reply (JSON)::

    {"chart": {"result": [{"meta": {"symbol": "AAPL", "exchangeTimezoneName": "America/New_York",
                                     "gmtoffset": -14400, ...},
                           "timestamp": [1727875800, ...],            # Unix seconds UTC, bar start
                           "events": {"dividends": {"1604673000": {"amount": 0.205, "date": 1604673000}},
                                      "splits": {"1598880600": {"date": 1598880600, "numerator": 4,
                                                                "denominator": 1, "splitRatio": "4:1"}}},
                           "indicators": {"quote": [{"open": [...], "high": [...], "low": [...],
                                                     "close": [...], "volume": [...]}],
                                          "adjclose": [{"adjclose": [...]}]}}],   # daily only: adj_close
               "error": null}}

Quirks handled here:

- Columnar: ``timestamp[i]`` and ``quote[0].<field>[i]`` make bar *i*; arrays of different
  lengths are a :class:`~errors.PayloadError`.
- Prices are float32 values printed as float64 (``226.86000061035156``): a number that is
  exactly a float32 is stored as the shortest text that round-trips through float32
  (``226.86``); any other number (``0.205``, ``127.58``) as the shortest float64 text. Never
  an exponent (numpy's float32 and shortest-repr formatting; numpy comes with
  pandas-market-calendars). Volumes are integers (``null`` volume with prices: ``volume=None``).
- Bars whose five values are all ``null`` (minutes without trades, AAPL 1m index 105) are
  skipped: neither bars nor rejections. A bar with only some prices ``null``, a non-numeric
  value or a non-integer timestamp is a rejection.
- Yahoo appends the latest quote as one more bar after the requested window (the 1m
  recording: a bar at 2024-10-03 20:00Z, volume 0, for a window ending 2024-10-03 00:00Z).
  Bars stamped after the request's ``period2`` are dropped (one stamped exactly at ``period2``
  is kept: the BTC-USD daily recording ends with a genuine bar there).
- Daily bars are stamped at the session open (13:30Z/14:30Z New York, 07:00Z XETRA, 00:00Z
  crypto), sometimes at the live quote's time (today's bar): they are normalised to 00:00 of
  the trading date in ``meta.exchangeTimezoneName`` (UTC for crypto). A daily stamp at exactly
  22:00 or 23:00 local time is Yahoo's DST slip of the next day's bar (yfinance's
  ``fix_Yahoo_dst_issue``) and counts for the next date.
- 60m bars start at the session open (US: 09:30, 10:30 ... 15:30 New York; the last is 30
  minutes long), so they are not on the hour grid; they are stored by that true start.
- ``events`` become :class:`~models.action.CorporateAction` records (ex-date = the exchange's
  local date of the event stamp; split ratio = numerator/denominator as decimal text,
  dividend amount as decimal text). OHLC are split-adjusted, not dividend-adjusted (Yahoo's
  own "Close price adjusted for splits"); ``adjclose`` (daily replies: adjusted for splits and
  dividends) is stored as ``Bar.adj_close`` when present (None where it is ``null`` or absent).

Errors: HTTP 404 with ``chart.error.code == "Not Found"`` ("No data found, symbol may be
delisted") is :class:`~errors.InvalidSymbol`; a 404 without that body (a wrong base URL) a
terminal :class:`~errors.HTTPError`; HTTP 400/422 with a ``chart.error`` (an interval Yahoo
lacks, a window longer or older than Yahoo allows) a terminal HTTPError carrying Yahoo's
description; HTTP 429 (body ``Too Many Requests``) :class:`~errors.RateLimited`; 5xx
transient. A 2xx reply whose ``chart.error`` is set is mapped the same way by its ``code``.
A result without timestamps is "no data for this window" (``Page.no_data``).

Window limits (per request / how far back Yahoo keeps bars), enforced before any request:
1m: 7 days per request (Yahoo announced 7 days until 2022 and 8 days since; 7 fits both),
last 30 days only; 5m-30m: 60 days, last 60 days; 60m: 730 days, last 730 days; 1d:
unlimited. A window reaching further back than Yahoo keeps is a :class:`~errors.ConfigError`
naming the limit (raised by :meth:`YahooProvider.range_requests`, no request is made).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache
from urllib.parse import quote

import numpy

from errors import ConfigError, HTTPError, InvalidSymbol, MarketpollError, PayloadError, RateLimited
from etl.http import Response
from etl.providers.base import Page, Provider, ProviderConfig, Request
from etl.providers.registry import register
from etl.providers.wire import utc_from_seconds, whole_number
from etl.transform import Rejection, date_to_utc, excerpt, zone
from models.action import CorporateAction
from models.bar import Bar, interval_seconds

__all__ = [
    "YahooConfig",
    "YahooProvider",
    "YAHOO_INTERVALS",
    "REQUEST_SPAN",
    "RETENTION",
    "LATEST_LOOKBACK",
    "decimal_text",
    "trading_date",
    "MISSING_FIELD",
    "NON_NUMERIC",
    "BAD_TIMESTAMP",
    "BAD_ACTION",
]

log = logging.getLogger(__name__)

#: Canonical interval -> Yahoo's ``interval`` parameter.
YAHOO_INTERVALS: dict[str, str] = {"1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "60m", "1day": "1d"}
#: Longest window one request may cover (None: no limit).
REQUEST_SPAN: dict[str, timedelta | None] = {
    "1min": timedelta(days=7),
    "5min": timedelta(days=60),
    "15min": timedelta(days=60),
    "30min": timedelta(days=60),
    "60min": timedelta(days=730),
    "1day": None,
}
#: How far back from now Yahoo keeps bars of an interval (None: the whole history).
RETENTION: dict[str, timedelta | None] = {
    "1min": timedelta(days=30),
    "5min": timedelta(days=60),
    "15min": timedelta(days=60),
    "30min": timedelta(days=60),
    "60min": timedelta(days=730),
    "1day": None,
}
#: How far back a polling request reaches when there is no watermark yet (5 days spans a weekend
#: and a holiday; longer bars reach further).
LATEST_LOOKBACK: dict[str, timedelta] = {
    "1min": timedelta(days=5),
    "5min": timedelta(days=5),
    "15min": timedelta(days=5),
    "30min": timedelta(days=5),
    "60min": timedelta(days=30),
    "1day": timedelta(days=365),
}
#: A polling request widened back to its watermark stays this far inside Yahoo's limits.
_MARGIN = timedelta(hours=1)
_QUOTE_FIELDS = ("open", "high", "low", "close", "volume")
#: Rejection reasons of the parser.
MISSING_FIELD = "missing field"
NON_NUMERIC = "non-numeric value"
BAD_TIMESTAMP = "bad timestamp"
BAD_ACTION = "bad corporate action"
_RATIO_CONTEXT = Context(prec=20)


@dataclass(frozen=True)
class YahooConfig(ProviderConfig):
    """Yahoo's options (``YAHOO_<FIELD>``). No key. ``extended_hours`` is Yahoo's ``includePrePost``
    for intraday bars (pre-market and after-hours; ``YAHOO_EXTENDED_HOURS``, ``--no-extended-hours``)."""

    extended_hours: bool = True


@lru_cache(maxsize=1 << 16)
def _float_text(x: float) -> str:
    with numpy.errstate(over="ignore"):
        single = numpy.float32(x)
    if float(single) == x:  # a float32 value printed as a float64: its shortest float32 text
        return numpy.format_float_positional(single, unique=True, trim="-")
    return numpy.format_float_positional(x, unique=True, trim="-")


def decimal_text(value: object) -> str | None:
    """A JSON number as exact decimal text, or None if ``value`` is not a finite number.

    Integers as they are; a float that is exactly a float32 value as the shortest text that
    round-trips through float32 (``226.86000061035156`` -> ``"226.86"``); any other float as the
    shortest text that round-trips through float64 (``0.205``). Never an exponent.
    """
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float and math.isfinite(value):  # type: ignore[arg-type]
        if value == 0:
            return "0"  # also -0.0 (equal to 0.0, so one cache entry must not decide for both)
        return _float_text(value)  # type: ignore[arg-type]
    return None


def trading_date(stamp: int, tz: tzinfo) -> date:
    """The trading date, in the exchange zone ``tz``, of a Yahoo daily stamp (Unix seconds).

    Yahoo stamps a daily bar at the session open (or at the live quote's time, for today's bar);
    a stamp at exactly 22:00 or 23:00 local time is its DST slip of the next day's midnight.
    """
    local = datetime.fromtimestamp(stamp, tz)
    if local.hour in (22, 23) and local.minute == 0 and local.second == 0:
        return local.date() + timedelta(days=1)
    return local.date()


def _exchange_zone(meta: dict) -> tzinfo | None:
    """The IANA zone of ``meta.exchangeTimezoneName``, or None (``gmtoffset`` is no substitute: it
    is the offset at the time of the reply, not of each bar)."""
    name = meta.get("exchangeTimezoneName")
    if not isinstance(name, str) or not name:
        return None
    try:
        return zone(name)
    except Exception:
        return None


def _error_text(err: object) -> tuple[str, str]:
    if isinstance(err, dict):
        return str(err.get("code") or ""), str(err.get("description") or "")[:300]
    return "", str(err)[:300]


def chart_error(err: object, status: int, ctx: dict) -> MarketpollError:
    """The typed error a ``chart.error`` object stands for (``status``: the HTTP status it came with).

    ``"Not Found"`` -> InvalidSymbol; ``"Too Many Requests"`` -> RateLimited; anything else an
    HTTPError, transient for a 5xx status, terminal otherwise (HTTP 200 is reported as 400: the
    request, not the transport, is at fault). Messages carry Yahoo's description.
    """
    provider, symbol, url = ctx["provider"], ctx["symbol"], ctx["url"]
    code, description = _error_text(err)
    said = f"{code}: {description}" if description else code or "unspecified error"
    if code.strip().lower() == "not found":
        return InvalidSymbol(f"{provider}: unknown symbol {symbol!r} ({said}) for {url}", **ctx)
    if code.strip().lower() == "too many requests":
        return RateLimited(f"{provider}: throttled ({said}) for {url}", **ctx)
    shown = status if status >= 300 else 400
    return HTTPError(f"{provider}: HTTP {status} ({said}) for {url}", status=shown, transient=shown >= 500, **ctx)


@register
class YahooProvider(Provider):
    """Yahoo Finance's chart API over HTTP (see the module docstring). Intervals 1min, 5min, 15min,
    30min, 60min, 1day; ``fetch_range`` splits a window into the requests Yahoo allows."""

    name = "yahoo"
    intervals = YAHOO_INTERVALS
    env_prefix = "YAHOO"
    Config = YahooConfig
    default_base_url = "https://query2.finance.yahoo.com"
    # Yahoo publishes no limit and has answered bursts with HTTP 429 since late 2024 (about a
    # thousand quick requests from one address; worse in 2025). One request every 2 seconds on
    # average, never more than one a second, is the pace users report as safe.
    default_rate_limit = "1/second 30/minute"
    key_required = False
    key_help = "Yahoo's chart API takes no key"
    bar_grid = "session"  # 60m bars start at the session open (09:30, 10:30 ... New York)

    config: YahooConfig

    # -- requests --------------------------------------------------------------------------------

    def url(self, symbol: str) -> str:
        """The chart URL of ``symbol`` (one URL-quoted path segment: ``^GSPC`` -> ``%5EGSPC``)."""
        return f"{self.base_url}/v8/finance/chart/{quote(symbol, safe='')}"

    def params(self, interval: str, period1: datetime, period2: datetime) -> dict[str, str]:
        """Query parameters for bars stamped from ``period1`` to ``period2`` (whole seconds, widened outwards)."""
        p = {
            "interval": self.check_interval(interval),
            "period1": str(math.floor(period1.timestamp())),
            "period2": str(math.ceil(period2.timestamp())),
            "events": "div,splits",
        }
        if interval != "1day":
            p["includePrePost"] = "true" if self.config.extended_hours else "false"
        return p

    def latest_request(self, symbol: str, interval: str, since: datetime | None) -> Request:
        """Bars from the watermark ``since`` (or :data:`LATEST_LOOKBACK` back) to now, within one
        request's limits: a watermark older than that is clamped (the gap needs ``fetch_range``)."""
        self.check_interval(interval)
        now = self.clock.now().astimezone(UTC)
        if since is None:
            start = now - LATEST_LOOKBACK[interval]
        else:
            start = since - timedelta(days=1) if interval == "1day" else since  # daily: a DST-slipped stamp
        longest = [d for d in (REQUEST_SPAN[interval], RETENTION[interval]) if d is not None]
        if longest:
            floor = now - min(longest) + _MARGIN
            if start < floor:
                log.info("%s %s: watermark %s is beyond one Yahoo request; polling from %s", symbol, interval,
                         since.isoformat() if since else "-", floor.isoformat())  # fmt: skip
                start = floor
        start = min(start, now - timedelta(seconds=interval_seconds(interval)))  # a watermark ahead of our clock
        return Request(self.url(symbol), self.params(interval, start, now), symbol=symbol, interval=interval)

    def latest_reach(self, interval: str) -> timedelta | None:
        """One request's span or Yahoo's retention, whichever is shorter, less the margin (None for daily)."""
        longest = [d for d in (REQUEST_SPAN[interval], RETENTION[interval]) if d is not None]
        return min(longest) - _MARGIN if longest else None

    def range_requests(self, symbol: str, interval: str, start: datetime, end: datetime) -> Iterator[Request]:
        """Requests covering UTC [start, end): chunks of :data:`REQUEST_SPAN`, each with its ``window``.

        Raises ConfigError (before any request) when ``start`` lies further back than Yahoo keeps
        the interval (:data:`RETENTION`). Chunks starting after now are not requested.
        """
        self.check_interval(interval)
        now = self.clock.now().astimezone(UTC)
        kept = RETENTION[interval]
        if kept is not None and start < now - kept:
            raise ConfigError(f"yahoo keeps {interval} bars for the last {kept.days} days only: the window starts "
                              f"{start.isoformat()}, before {(now - kept).isoformat()}; ask for a later start",
                              name="window", value=start.isoformat())  # fmt: skip
        if interval == "1day":  # stamps lie up to a day after the bar's start: ask wider, the loop trims
            params = self.params(interval, start - timedelta(days=1), end + timedelta(days=1))
            yield Request(self.url(symbol), params, symbol=symbol, interval=interval, window=(start, end))
            return
        span = REQUEST_SPAN[interval]
        lo = start
        while lo < end and lo <= now:
            hi = min(end, lo + span) if span is not None else end
            yield Request(self.url(symbol), self.params(interval, lo, hi), symbol=symbol, interval=interval, window=(lo, hi))
            lo = hi

    # -- replies ---------------------------------------------------------------------------------

    def error_for(self, reply: Response, request: Request) -> MarketpollError | None:
        """A non-2xx reply with a ``chart.error`` body: mapped by :func:`chart_error` (404 "Not Found"
        -> InvalidSymbol; 400/422 -> terminal HTTPError with Yahoo's description). 429, 5xx and bodies
        without ``chart.error`` keep the generic mapping."""
        if reply.status == 429 or reply.status >= 500:
            return None
        try:
            err = json.loads(reply.body)["chart"]["error"]
        except (ValueError, KeyError, TypeError):
            return None
        if not err:
            return None
        return chart_error(err, reply.status, {"provider": self.name, "symbol": request.symbol, "url": reply.url})

    def parse(self, reply: Response, request: Request) -> Page:
        """One chart reply -> bars (UTC starts), rejections and corporate actions (see the module docstring)."""
        symbol, interval = request.symbol, request.interval
        ctx = {"provider": self.name, "symbol": symbol, "url": reply.url}
        try:
            obj = json.loads(reply.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(f"{self.name}: malformed JSON for {symbol}: {exc}", **ctx) from None
        chart = obj.get("chart") if isinstance(obj, dict) else None
        if not isinstance(chart, dict):
            raise PayloadError(f"{self.name}: no 'chart' object in the reply for {symbol}", **ctx)
        if chart.get("error"):
            raise chart_error(chart["error"], reply.status, ctx)
        results = chart.get("result")
        if not isinstance(results, list) or not results or not isinstance(results[0], dict):
            raise PayloadError(f"{self.name}: 'chart.result' is not a list of results for {symbol}", **ctx)
        res = results[0]
        meta = res.get("meta")
        if not isinstance(meta, dict):
            raise PayloadError(f"{self.name}: no 'meta' in the chart result for {symbol}", **ctx)
        said = meta.get("symbol")
        if isinstance(said, str) and said.strip().upper() != symbol.strip().upper():
            raise PayloadError(f"{self.name}: asked for {symbol}, the reply is for {said!r}; nothing loaded", **ctx)
        tz = _exchange_zone(meta)
        page = Page()
        stamps, columns = self._columns(res, symbol, ctx)
        if tz is None and ((interval == "1day" and stamps) or res.get("events")):
            raise PayloadError(f"{self.name}: no usable exchange time zone in 'meta' for {symbol}", **ctx)
        self._bars(page, stamps, columns, request, tz)
        self._actions(page, res.get("events"), symbol, tz, ctx)
        page.no_data = not page.bars and not page.rejected
        return page

    def _columns(self, res: dict, symbol: str, ctx: dict) -> tuple[list, dict[str, list | None]]:
        stamps = res.get("timestamp")
        indicators = res.get("indicators")
        quotes = indicators.get("quote") if isinstance(indicators, dict) else None
        quote0 = quotes[0] if isinstance(quotes, list) and quotes and isinstance(quotes[0], dict) else None
        if stamps is None or stamps == []:
            if quote0 and any(quote0.get(f) for f in _QUOTE_FIELDS):
                raise PayloadError(f"{self.name}: quote values without timestamps for {symbol}", **ctx)
            return [], {}
        if not isinstance(stamps, list) or quote0 is None:
            raise PayloadError(f"{self.name}: 'timestamp' or 'indicators.quote[0]' malformed for {symbol}", **ctx)
        columns: dict[str, list | None] = {"adjclose": _adjclose(indicators, len(stamps))}
        for f in _QUOTE_FIELDS:
            col = quote0.get(f)
            if col is None and f == "volume":
                columns[f] = None  # no volume column at all: a market without volume
                continue
            if not isinstance(col, list) or len(col) != len(stamps):
                got = len(col) if isinstance(col, list) else type(col).__name__
                raise PayloadError(f"{self.name}: 'quote[0].{f}' has {got} values for {len(stamps)} timestamps ({symbol})",
                                   **ctx)  # fmt: skip
            columns[f] = col
        return stamps, columns

    def _bars(self, page: Page, stamps: list, columns: dict[str, list | None], request: Request, tz: tzinfo | None) -> None:
        if not stamps:
            return
        symbol, interval, name = request.symbol, request.interval, self.name
        daily = interval == "1day"
        period2 = _stamp_param(request.params.get("period2"))
        opens, highs, lows, closes = columns["open"], columns["high"], columns["low"], columns["close"]
        volumes = columns["volume"] or [None] * len(stamps)
        adjcloses = columns["adjclose"] or [None] * len(stamps)
        skipped = beyond = 0
        day_starts: dict[date, datetime] = {}
        for i, raw in enumerate(stamps):
            o, h, l, c, v = opens[i], highs[i], lows[i], closes[i], volumes[i]  # type: ignore[index]
            if o is None and h is None and l is None and c is None and v is None:
                skipped += 1  # a minute without trades: not a bar, not an error
                continue
            t = whole_number(raw)
            if t is None:
                page.rejected.append(Rejection(symbol, str(raw)[:40], BAD_TIMESTAMP, _record(raw, o, h, l, c, v)))
                continue
            if period2 is not None and t > period2:
                beyond += 1  # Yahoo's latest quote appended after the requested window
                continue
            if o is None or h is None or l is None or c is None:
                page.rejected.append(Rejection(symbol, str(raw), MISSING_FIELD, _record(raw, o, h, l, c, v)))
                continue
            values = (decimal_text(o), decimal_text(h), decimal_text(l), decimal_text(c))
            vol = None if v is None else decimal_text(v)
            if None in values or (v is not None and vol is None):
                page.rejected.append(Rejection(symbol, str(raw), NON_NUMERIC, _record(raw, o, h, l, c, v)))
                continue
            if daily:
                day = trading_date(t, tz)  # type: ignore[arg-type]
                ts = day_starts.get(day)
                if ts is None:
                    ts = day_starts[day] = date_to_utc(day, tz)  # type: ignore[arg-type]
            else:
                ts = utc_from_seconds(t)
            page.bars.append(Bar(name, symbol, interval, ts, *values, vol, decimal_text(adjcloses[i])))  # type: ignore[call-arg]
        if skipped or beyond:
            log.debug("%s %s: skipped %d all-null bar(s) and %d bar(s) after the window", symbol, interval, skipped, beyond)

    def _actions(self, page: Page, events: object, symbol: str, tz: tzinfo | None, ctx: dict) -> None:
        if not events:
            return
        if not isinstance(events, dict):
            raise PayloadError(f"{self.name}: 'events' is not an object for {symbol}", **ctx)
        for kind, key in (("dividend", "dividends"), ("split", "splits")):
            records = events.get(key) or {}
            if not isinstance(records, dict):
                raise PayloadError(f"{self.name}: 'events.{key}' is not an object for {symbol}", **ctx)
            for stamp_key, rec in records.items():
                action = self._action(kind, stamp_key, rec, symbol, tz)
                if action is None:
                    text = excerpt(json.dumps({stamp_key: rec}, separators=(",", ":"), default=str))
                    page.rejected.append(Rejection(symbol, str(stamp_key), BAD_ACTION, text))
                else:
                    page.actions.append(action)

    def _action(self, kind: str, stamp_key: str, rec: object, symbol: str, tz: tzinfo | None) -> CorporateAction | None:
        if not isinstance(rec, dict) or tz is None:
            return None
        t = whole_number(rec.get("date"))
        if t is None:
            t = int(stamp_key) if str(stamp_key).isdigit() else None
        if t is None:
            return None
        ex_date = trading_date(t, tz)
        if kind == "dividend":
            amount = decimal_text(rec.get("amount"))
            return CorporateAction(self.name, symbol, ex_date, kind, amount=amount) if amount else None
        ratio = _split_ratio(rec)
        return CorporateAction(self.name, symbol, ex_date, kind, ratio=ratio) if ratio else None


def _adjclose(indicators: dict, n: int) -> list | None:
    """``indicators.adjclose[0].adjclose`` when it is a list of ``n`` values (daily replies), else None."""
    col = indicators.get("adjclose")
    col = col[0] if isinstance(col, list) and col and isinstance(col[0], dict) else {}
    values = col.get("adjclose")
    return values if isinstance(values, list) and len(values) == n else None


def _split_ratio(rec: dict) -> str | None:
    """New shares per old share as decimal text: ``numerator``/``denominator`` (else ``splitRatio`` "a:b")."""
    num, den = decimal_text(rec.get("numerator")), decimal_text(rec.get("denominator"))
    if num is None or den is None:
        text = rec.get("splitRatio")
        if not isinstance(text, str) or text.count(":") != 1:
            return None
        num, den = (part.strip() for part in text.split(":"))
    try:
        n, d = Decimal(num), Decimal(den)
        if not (n.is_finite() and d.is_finite()) or n <= 0 or d <= 0:
            return None
        ratio = _RATIO_CONTEXT.divide(n, d).normalize(_RATIO_CONTEXT)
    except (InvalidOperation, ValueError):
        return None
    return format(ratio, "f")


def _stamp_param(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _record(raw: object, o: object, h: object, l: object, c: object, v: object) -> str:
    return excerpt(json.dumps({"timestamp": raw, "open": o, "high": h, "low": l, "close": c, "volume": v},
                              separators=(",", ":"), default=str))  # fmt: skip
