"""Stooq: daily OHLCV bars as CSV from ``GET /q/d/l/``.

Wire format (https://stooq.com; the public write-ups of the endpoint, and the real recordings
``stooq_daily_aapl.us_en.csv`` and ``stooq_daily_spx_index_pl.csv`` listed in
shared/data/real/PROVENANCE.md):

- Request: ``/q/d/l/?s=<symbol>&i=d&d1=YYYYMMDD&d2=YYYYMMDD[&apikey=<key>]``. ``d1``/``d2`` are
  inclusive trading dates; the whole range comes back in one CSV (no paging). Symbols are
  Stooq's own and case-insensitive (``aapl.us``, ``pko``, ``^spx``).
- Reply (HTTP 200): a header, then one row per trading date, oldest first, dates only::

      Date,Open,High,Low,Close,Volume                               (stooq.com)
      Data,Otwarcie,Najwyzszy,Najnizszy,Zamkniecie,Wolumen          (stooq.pl)

  LF or CRLF line endings. A row without volume has only 5 fields, no trailing comma (``^spx``
  before 1950); an instrument without any volume may come with a 5-column header. Prices have
  variable precision (``0.0992653``, ``269.2``); split-adjusted volumes can be fractional
  (``1496329307.4141``). History can be very old (``^spx`` from 1789, monthly rows at first).
  OHLC and volume are split-adjusted (Stooq's default download); no adjusted-close column.
- Not CSV, all at HTTP 200:

  - an HTML page: Stooq's answer, since early 2026, to a request without a valid ``apikey``
    or that it takes for automated (an API-key notice, or a proof-of-work interstitial).
    → :class:`~errors.PayloadError` (terminal) saying it is HTML and naming ``STOOQ_API_KEY``;
  - ``No data`` (``Brak danych`` presumed on stooq.pl): nothing for that symbol and range.
    Stooq gives the same reply for an unknown symbol and for a known one with no rows in the
    range, so: for a request with a window (:meth:`StooqProvider.range_requests`) it is
    ``Page.no_data``; for the latest request (no window) it is :class:`~errors.InvalidSymbol`,
    because that request always reaches back to the watermark bar itself or ``lookback_days``
    (100) days, which holds rows for every symbol Stooq lists and still trades;
  - ``Exceeded the daily hits limit``: the key's daily quota (size unpublished) is used up
    → :class:`~errors.QuotaExhausted`, retry after the next midnight Europe/Warsaw (assumed reset);
  - anything else (another header, an error text, a PHP warning before the header)
    → :class:`~errors.PayloadError`.

  HTTP 429 (not seen from Stooq, but a gateway may send it) is the generic
  :class:`~errors.RateLimited` with ``Retry-After``.

Bar starts: Stooq sends dates only; a bar starts at 00:00 of its date in the exchange's zone
(:func:`exchange_zone`, from the symbol), as a UTC instant. Before a zone's adoption of
standard time the tz database uses local mean time, so ``^spx``'s 1789 bars start at
04:56:02 UTC (00:00 LMT New York): still 00:00 of the right date in that zone.

Values are the CSV's text, stripped of surrounding spaces, never converted to floats.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from errors import ConfigError, InvalidSymbol, PayloadError, QuotaExhausted
from etl.http import Response
from etl.providers.base import Page, Provider, ProviderConfig, Request
from etl.providers.registry import register
from etl.transform import Rejection, date_to_utc, excerpt, zone
from models.bar import Bar

__all__ = [
    "StooqConfig",
    "StooqProvider",
    "parse_response",
    "exchange_zone",
    "SUFFIX_ZONES",
    "INDEX_ZONES",
    "HOME_ZONE",
    "PATH",
]

#: The CSV download path under the base URL.
PATH = "/q/d/l/"
#: Stooq's home market (Warsaw Stock Exchange): symbols without a suffix (``pko``, ``wig20``) and ``.pl``.
HOME_ZONE = "Europe/Warsaw"
#: Symbol suffix (after the last dot, lower case) -> the exchange's IANA zone.
SUFFIX_ZONES: dict[str, str] = {
    "us": "America/New_York",  # NYSE, Nasdaq, AMEX
    "de": "Europe/Berlin",  # Xetra / Frankfurt
    "uk": "Europe/London",  # LSE
    "jp": "Asia/Tokyo",  # TSE
    "hk": "Asia/Hong_Kong",  # HKEX
    "hu": "Europe/Budapest",  # BSE
    "pl": HOME_ZONE,  # GPW (Stooq usually spells these without a suffix)
}
#: Stooq's index symbols (``^`` + name, lower case) -> the zone of the market they measure.
INDEX_ZONES: dict[str, str] = {
    "^spx": "America/New_York",  # S&P 500
    "^dji": "America/New_York",  # Dow Jones Industrial
    "^ndq": "America/New_York",  # Nasdaq Composite
    "^ndx": "America/New_York",  # Nasdaq 100
    "^dax": "Europe/Berlin",
    "^ukx": "Europe/London",  # FTSE 100
    "^cac": "Europe/Paris",
    "^aex": "Europe/Amsterdam",
    "^smi": "Europe/Zurich",
    "^ibex": "Europe/Madrid",
    "^bux": "Europe/Budapest",
    "^px": "Europe/Prague",
    "^nkx": "Asia/Tokyo",  # Nikkei 225
    "^hsi": "Asia/Hong_Kong",  # Hang Seng
    "^shc": "Asia/Shanghai",  # Shanghai Composite
    "^kospi": "Asia/Seoul",
    "^tsx": "America/Toronto",
}

_ENGLISH = ("date", "open", "high", "low", "close", "volume")
_POLISH = ("data", "otwarcie", "najwyzszy", "najnizszy", "zamkniecie", "wolumen")
_HEADERS = {h[:n] for h in (_ENGLISH, _POLISH) for n in (5, 6)}
_NO_DATA = frozenset({"no data", "brak danych"})
_QUOTA = "exceeded the daily hits limit"
_HTML = re.compile(rb"^\s*<|<\s*(!doctype|html|head|body|script|meta)\b", re.I)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BOM = b"\xef\xbb\xbf"
KEY_PAGE = "https://stooq.com/q/d/?s=spy.us&get_apikey"

#: Rejection reasons of the parser.
MISSING_FIELD = "missing field"
TOO_MANY_FIELDS = "too many fields"
BAD_DATE = "bad date"


def exchange_zone(symbol: str) -> str:
    """The IANA zone whose midnight starts ``symbol``'s daily bars (case-insensitive).

    ``^name`` → :data:`INDEX_ZONES`; ``name.suffix`` → :data:`SUFFIX_ZONES`; no suffix, ``.pl``,
    and any index or suffix not in those tables (``.f`` futures, ``.v`` crypto and currency
    composites, ``.b`` bonds ...) → :data:`HOME_ZONE` (Europe/Warsaw, Stooq's home market).
    """
    s = symbol.strip().lower()
    if s.startswith("^"):
        return INDEX_ZONES.get(s, HOME_ZONE)
    if "." in s:
        return SUFFIX_ZONES.get(s.rsplit(".", 1)[1], HOME_ZONE)
    return HOME_ZONE


@dataclass(frozen=True)
class StooqConfig(ProviderConfig):
    """Stooq's options (``STOOQ_<FIELD>``). ``base_url`` is the site root (``https://stooq.com``; a
    gateway or a recording server may stand in); ``api_key`` (``STOOQ_API_KEY``) is optional for the
    client but Stooq answers key-less downloads with an HTML page; ``lookback_days``: how far back
    (calendar days) a poll reaches when the symbol has no stored bar yet."""

    lookback_days: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.lookback_days, bool) or not isinstance(self.lookback_days, int) or self.lookback_days < 1:
            raise ConfigError(f"lookback_days must be a whole number >= 1, got {self.lookback_days!r}", name="lookback_days",
                              value=self.lookback_days)  # fmt: skip


def _seconds_to_warsaw_midnight(now: datetime) -> float:
    # the reset time of the daily quota is unpublished; assume midnight at Stooq's home
    local = now.astimezone(zone(HOME_ZONE))
    return (date_to_utc(local.date() + timedelta(days=1), zone(HOME_ZONE)) - now).total_seconds()


def parse_response(
    body: bytes,
    *,
    symbol: str,
    interval: str = "1day",
    provider: str = "stooq",
    url: str | None = None,
    windowed: bool = True,
    key_set: bool = False,
    key_var: str = "STOOQ_API_KEY",
    now: datetime | None = None,
) -> Page:
    """Parse one ``/q/d/l/`` body into a :class:`Page` of daily bars (any order; see the module docstring).

    ``windowed``: the request covered a window (``No data`` is then ``no_data``; without one it is
    :class:`~errors.InvalidSymbol`). ``key_set``: whether a key was sent (only changes the advice in
    the HTML error). ``now`` (UTC-aware) dates the quota's reset.

    Each bar: ``provider``, ``symbol`` as given, ``interval``, ``ts`` = 00:00 of the row's date in
    :func:`exchange_zone` as a UTC instant, the four prices and volume as the CSV's text (volume
    None for a 5-field row, or an empty 6th field). Rows that cannot become bars are rejected with
    the raw date text, a reason (``"missing field"``: fewer than 5 fields or an empty price;
    ``"too many fields"``: more fields than the header; ``"bad date"``: not ``YYYY-MM-DD``) and the
    CSV line. A header without rows is ``no_data``.

    Raises :class:`~errors.PayloadError` (an HTML page: says so and names ``key_var``; an empty
    body, not UTF-8, an unknown header, a broken CSV), :class:`~errors.InvalidSymbol` and
    :class:`~errors.QuotaExhausted`, each with ``provider``, ``symbol`` and ``url``.
    """
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    head = body[:2048]
    if _HTML.search(head):
        advice = (f"{key_var} is set: check that the key is valid and current (a new one: {KEY_PAGE})" if key_set
                  else f"set {key_var} (get a key at {KEY_PAGE})")  # fmt: skip
        raise PayloadError(f"{provider}: Stooq answered {symbol} with an HTML page, not CSV (it does so for requests "
                           f"without a valid API key or that it takes for automated); {advice}", **ctx)  # fmt: skip
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{provider}: reply for {symbol} is not UTF-8 text ({exc.reason}), not Stooq's CSV", **ctx) from None
    stripped = text.strip()
    if not stripped:
        raise PayloadError(f"{provider}: empty body for {symbol}", **ctx)
    low = " ".join(stripped[:64].lower().split())  # a short text reply, whitespace-normalised
    if len(stripped) < 64 and low in _NO_DATA:
        if windowed:
            return Page(no_data=True)
        raise InvalidSymbol(f"{provider}: Stooq has no data for {symbol!r}: unknown symbol, or no bars in the recent "
                            "range (Stooq's symbols look like aapl.us, pko, ^spx)", **ctx)  # fmt: skip
    if low.startswith(_QUOTA):
        retry = _seconds_to_warsaw_midnight(now) if now is not None else None
        raise QuotaExhausted(f"{provider}: Stooq's daily hits limit is exceeded for this API key", retry_after_seconds=retry,
                             **ctx)  # fmt: skip
    return _parse_csv(text, symbol=symbol, interval=interval, provider=provider, ctx=ctx)


def _parse_csv(text: str, *, symbol: str, interval: str, provider: str, ctx: dict) -> Page:
    page = Page()
    bars, rejected = page.bars, page.rejected
    tz = zone(exchange_zone(symbol))
    starts: dict[str, datetime] = {}
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # Stooq never quotes: a quote is broken
        first = next(reader, [])
        header = tuple(h.strip().lower() for h in first)
        if header not in _HEADERS:
            shown = excerpt(",".join(first))[:80]
            raise PayloadError(f"{provider}: not Stooq's CSV for {symbol}: first line {shown!r}", **ctx)
        width = len(header)
        for rec in reader:
            if not rec or rec == [""]:
                continue  # blank line
            raw = rec[0].strip()
            n = len(rec)
            if n > width:
                rejected.append(Rejection(symbol, raw, TOO_MANY_FIELDS, excerpt(",".join(rec))))
                continue
            values = [v.strip() for v in rec[1:]]
            if n < 5 or not all(values[:4]):
                rejected.append(Rejection(symbol, raw, MISSING_FIELD, excerpt(",".join(rec))))
                continue
            ts = starts.get(raw)
            if ts is None:
                if not _DATE.fullmatch(raw):
                    rejected.append(Rejection(symbol, raw, BAD_DATE, excerpt(",".join(rec))))
                    continue
                try:
                    ts = starts[raw] = date_to_utc(date.fromisoformat(raw), tz)
                except ValueError:  # 2024-02-30
                    rejected.append(Rejection(symbol, raw, BAD_DATE, excerpt(",".join(rec))))
                    continue
            volume = values[4] if n == 6 and values[4] else None
            bars.append(Bar(provider, symbol, interval, ts, values[0], values[1], values[2], values[3], volume))
    except csv.Error as exc:  # an unterminated quote, a field over csv's size limit
        raise PayloadError(f"{provider}: malformed CSV for {symbol}: {exc}", **ctx) from None
    page.no_data = not bars and not rejected
    return page


@register
class StooqProvider(Provider):
    """Stooq over HTTP: daily bars only (``1day`` → ``i=d``), for stocks, indices, currencies and more.

    One request per symbol and window (Stooq returns any range in one CSV); the latest request
    reaches from the watermark's date (or ``lookback_days`` back) to today, both in the symbol's
    exchange zone.
    """

    name = "stooq"
    intervals = {"1day": "d"}
    env_prefix = "STOOQ"
    Config = StooqConfig
    default_base_url = "https://stooq.com"
    # Stooq publishes no rate; it bans IPs that hammer it and caps each key's daily hits (size
    # unpublished, reported low). One request serves a symbol's whole window, so one a second is
    # ample for daily bars and polite; the daily cap is detected from the reply (QuotaExhausted).
    default_rate_limit = "1/second"
    key_required = False
    key_help = f"optional for marketpoll, but Stooq answers key-less downloads with an HTML page; get a key at {KEY_PAGE}"
    latest_bars = None  # the latest request spans the watermark's date to today

    config: StooqConfig

    def params(self, symbol: str, first: date, last: date) -> dict[str, str]:
        """Query parameters for ``symbol``'s daily rows dated ``first`` to ``last`` (inclusive; ``apikey``
        when configured: never log these)."""
        p = {"s": symbol, "i": self.intervals["1day"], "d1": f"{first:%Y%m%d}", "d2": f"{last:%Y%m%d}"}
        if self.config.api_key:
            p["apikey"] = self.config.api_key
        return p

    def latest_request(self, symbol: str, interval: str, since: datetime | None) -> Request:
        """Rows from ``since``'s date (the watermark bar included) or ``lookback_days`` back, to today,
        both in the symbol's exchange zone; no window (``No data`` is then an unknown symbol)."""
        self.check_interval(interval)
        tz = zone(exchange_zone(symbol))
        today = self.clock.now().astimezone(tz).date()
        first = since.astimezone(tz).date() if since is not None else today - timedelta(days=self.config.lookback_days)
        return Request(self.base_url + PATH, self.params(symbol, min(first, today), today), symbol=symbol, interval=interval)

    def range_requests(self, symbol: str, interval: str, start: datetime, end: datetime) -> Iterator[Request]:
        """One request for the trading dates whose 00:00 (exchange zone) lies in UTC ``[start, end)``;
        none when no date starts inside the window."""
        self.check_interval(interval)
        tz = zone(exchange_zone(symbol))
        first = start.astimezone(tz).date()
        if datetime.combine(first, time(0), tzinfo=tz) < start:
            first += timedelta(days=1)  # that date's bar starts before the window
        last = (end - timedelta(microseconds=1)).astimezone(tz).date()
        if first > last:
            return
        yield Request(self.base_url + PATH, self.params(symbol, first, last), symbol=symbol, interval=interval,
                      window=(start, end))  # fmt: skip

    def parse(self, reply: Response, request: Request) -> Page:
        return parse_response(reply.body, symbol=request.symbol, interval=request.interval, provider=self.name, url=reply.url,
                              windowed=request.window is not None, key_set=bool(self.config.api_key),
                              key_var=f"{self.env_prefix}_API_KEY", now=self.clock.now())  # fmt: skip
