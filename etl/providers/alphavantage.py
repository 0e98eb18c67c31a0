"""Alpha Vantage: TIME_SERIES_INTRADAY, TIME_SERIES_DAILY and TIME_SERIES_DAILY_ADJUSTED, JSON and CSV.

Wire format (https://www.alphavantage.co/documentation/, checked against the real
recordings listed in shared/data/real/PROVENANCE.md):

- JSON: ``{"Meta Data": {..., "6. Time Zone": "US/Eastern"}, "Time Series (5min)":
  {"2024-01-31 19:55:00": {"1. open": "...", ..., "5. volume": "..."}, ...}}``; every
  value a string; newest first; timestamps naive local times in the Meta Data zone
  (daily: ``"Time Series (Daily)"`` keyed by date, zone key ``"5. Time Zone"``).
- CSV (``datatype=csv``): header ``timestamp,open,high,low,close,volume``, newest
  first, no zone (US/Eastern, as in JSON); CRLF or LF line endings.
- Adjusted daily series (``TIME_SERIES_DAILY_ADJUSTED``, ``adjusted=true``, ``--adjusted``): JSON
  records ``"1. open"`` ... ``"4. close"``, ``"5. adjusted close"``, ``"6. volume"``,
  ``"7. dividend amount"``, ``"8. split coefficient"``; CSV header
  ``timestamp,open,high,low,close,adjusted_close,volume,dividend_amount,split_coefficient``.
  OHLC and volume are raw (as traded, as in ``TIME_SERIES_DAILY``); the adjusted close (splits
  and dividends) goes to ``Bar.adj_close``; a dividend amount other than 0 and a split
  coefficient other than 1 become :class:`~models.action.CorporateAction` records (ex-date = the
  row's date). Alpha Vantage lists it as a **premium** function: a free key gets HTTP 200
  ``{"Information": "Thank you for using Alpha Vantage! This is a premium endpoint ..."}``,
  raised as :class:`~errors.PremiumRequired` naming ``--adjusted``.
- Errors come back as HTTP 200 with a one-key JSON object, also for ``datatype=csv``:
  ``"Note"`` or ``"Information"`` is throttling (:class:`~errors.RateLimited`;
  :class:`~errors.QuotaExhausted` when it names a daily limit;
  :class:`~errors.PremiumRequired` when it says "premium endpoint"), ``"Error Message"``
  an invalid call or symbol (:class:`~errors.InvalidSymbol`). Bodies may start with a
  UTF-8 byte-order mark.

Integrity (see :func:`parse_response`): a reply about another symbol fails the request;
records that cannot become bars (a bad, nonexistent or ambiguous local time, a missing
field, a timestamp repeated with different values) are returned as rejections, never
guessed at.

Bar labels: whether an intraday timestamp names the start or the end of its bar
changed over the years, and the recordings show both (see ``docs/alphavantage.md``):
2019-2020 captures are end-labelled (sessions run 04:01-20:00 and 09:35-16:00; the
09:30:00 opening cross sits in the bar labelled 09:31), the 2026 capture is
start-labelled (the 16:00:00 closing auction sits in the bar labelled 16:00; the
last after-hours bar is 19:55). ``bar_label="start"`` (default) fits today's API;
``"end"`` shifts each timestamp back by one interval for older data.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from errors import ConfigError, InvalidSymbol, PayloadError, PremiumRequired, QuotaExhausted, RateLimited
from etl.http import Response
from etl.providers.base import FetchResult, Page, Provider, ProviderConfig, Request
from etl.providers.registry import register
from etl.transform import (
    AMBIGUOUS_LOCAL_TIME,
    NONEXISTENT_LOCAL_TIME,
    AmbiguousLocalTime,
    LocalToUtc,
    NonexistentLocalTime,
    Rejection,
    date_to_utc,
    excerpt,
    zone,
)
from models.action import CorporateAction
from models.bar import Bar, interval_seconds

__all__ = [
    "AlphaVantageConfig",
    "AlphaVantageProvider",
    "parse_response",
    "classify_error",
    "AV_INTERVALS",
    "MONTH_RE",
]

log = logging.getLogger(__name__)

#: Canonical interval -> Alpha Vantage ``interval`` parameter (None: the daily function).
AV_INTERVALS: dict[str, str | None] = {
    "1min": "1min",
    "5min": "5min",
    "15min": "15min",
    "30min": "30min",
    "60min": "60min",
    "1day": None,
}
MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_BOM = b"\xef\xbb\xbf"
_FIELDS = ("1. open", "2. high", "3. low", "4. close", "5. volume")
#: TIME_SERIES_DAILY_ADJUSTED's fields, in the order the parser uses: the five of a Bar, then
#: adjusted close, dividend amount, split coefficient.
_ADJ_FIELDS = ("1. open", "2. high", "3. low", "4. close", "6. volume", "5. adjusted close", "7. dividend amount",
               "8. split coefficient")  # fmt: skip
_CSV_HEADER = ["open", "high", "low", "close", "volume"]
_CSV_ADJ_HEADER = ["open", "high", "low", "close", "adjusted_close", "volume", "dividend_amount", "split_coefficient"]
_CSV_ADJ_ORDER = (1, 2, 3, 4, 6, 5, 7, 8)  # CSV columns in _ADJ_FIELDS order
ADJUSTED_FUNCTION = "TIME_SERIES_DAILY_ADJUSTED"
DEFAULT_ZONE = "US/Eastern"
#: How far back an intraday ``outputsize=full`` reply (no ``month``) reaches: Alpha Vantage documents
#: the trailing 30 days; a day less, for safety.
INTRADAY_FULL_REACH = timedelta(days=29)
#: Rejection reasons of the parser (besides the local-time ones of :mod:`etl.transform`).
MISSING_FIELD = "missing field"
BAD_TIMESTAMP = "bad timestamp"
REPEATED_KEY = "conflict: timestamp key repeated with different values"
REPEATED_FIELD = "conflict: field repeated with different values"
BAD_ACTION = "bad corporate action: dividend amount or split coefficient is not a number"


@dataclass(frozen=True)
class AlphaVantageConfig(ProviderConfig):
    """Alpha Vantage's options (``ALPHA_VANTAGE_<FIELD>``). ``base_url`` is the full query endpoint;
    ``api_key`` is a secret (``"demo"`` is Alpha Vantage's public placeholder)."""

    api_key: str | None = field(default="demo", repr=False)
    base_url: str = "https://www.alphavantage.co/query"
    outputsize: str = "compact"  # compact (latest 100 bars) | full
    datatype: str = "json"  # json | csv
    extended_hours: bool = True  # include pre-market and after-hours bars (intraday)
    month: str | None = None  # YYYY-MM: one historical month (intraday)
    bar_label: str = "start"  # do intraday timestamps label the bar start or end?
    adjusted: bool = False  # daily: TIME_SERIES_DAILY_ADJUSTED (premium): adj_close, dividends, splits

    def __post_init__(self) -> None:
        if self.outputsize not in ("compact", "full"):
            raise ConfigError(f"outputsize must be compact or full, got {self.outputsize!r}", name="outputsize")
        if self.datatype not in ("json", "csv"):
            raise ConfigError(f"datatype must be json or csv, got {self.datatype!r}", name="datatype")
        if self.bar_label not in ("start", "end"):
            raise ConfigError(f"bar_label must be start or end, got {self.bar_label!r}", name="bar_label")
        if self.month is not None and not MONTH_RE.match(self.month):
            raise ConfigError(f"month must be YYYY-MM, got {self.month!r}", name="month", value=self.month)


def _decode(body: bytes) -> str:
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8 ({exc.reason})") from None


def classify_error(obj: object, *, provider: str = "alphavantage", symbol: str | None = None, url: str | None = None):
    """The typed error an Alpha Vantage error body stands for, or None if ``obj`` is not one.

    Pure: the caller raises what it returns.
    """
    if not isinstance(obj, dict):
        return None
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    if "Error Message" in obj:
        return InvalidSymbol(f"{provider}: invalid call or symbol {symbol!r}: {obj['Error Message']}", **ctx)
    for key in ("Note", "Information"):
        if key in obj and not any(k.startswith("Time Series") for k in obj):
            text = str(obj[key])
            low = text.lower()
            if "premium endpoint" in low:
                return PremiumRequired(f"{provider}: premium required: {text}", **ctx)
            if key == "Information" and "per day" in low and "per minute" not in low and "per second" not in low:
                return QuotaExhausted(
                    f"{provider}: daily request quota exhausted: {text}", retry_after_seconds=_seconds_to_next_day(), **ctx
                )
            return RateLimited(f"{provider}: throttled: {text}", **ctx)
    return None


def _seconds_to_next_day() -> float:
    # The reset time of the daily quota is undocumented; assume midnight US/Eastern.
    now = datetime.now(UTC).astimezone(zone(DEFAULT_ZONE))
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    return (tomorrow - now).total_seconds()


def parse_response(
    body: bytes,
    *,
    symbol: str,
    interval: str,
    provider: str = "alphavantage",
    bar_label: str = "start",
    url: str | None = None,
    adjusted: bool = False,
) -> FetchResult:
    """Parse a TIME_SERIES_INTRADAY / TIME_SERIES_DAILY body (JSON or CSV, detected from the content),
    or with ``adjusted`` a TIME_SERIES_DAILY_ADJUSTED one (bars with ``adj_close``, and ``actions``).

    Returns the bars oldest first with UTC bar starts (not yet validated: see
    :func:`etl.transform.validate_bars`), and in ``rejected`` every record that could not become
    a bar, with its raw timestamp, a reason and an excerpt (compact JSON or the CSV line, at most
    200 characters):

    - ``"missing field"``: a value is absent or empty, or the record is not an object / 6 fields;
    - ``"bad timestamp"``: not a naive ISO date-time (date, for daily series);
    - ``"nonexistent local time (DST gap)"``: skipped by a spring-forward switch in the reply's
      zone (``2024-03-10 02:30:00`` New York); never moved onto the real 03:30;
    - ``"ambiguous local time (DST fall-back)"``: in the repeated autumn hour (``2024-11-03
      01:30:00`` New York). Rejected rather than resolved: a reply gives no reliable way to tell
      the first 01:30 from the second, and a wrong guess would overwrite the other bar;
    - ``"conflict: timestamp key repeated with different values"``: a JSON series key that
      occurs more than once with different records; every copy is rejected (identical copies
      make one bar). CSV rows repeating a timestamp become bars and meet the same rule in
      :func:`~etl.transform.validate_bars`;
    - ``"conflict: field repeated with different values"``: a JSON record naming a field twice;
    - ``"bad corporate action ..."`` (adjusted): a dividend amount or split coefficient that is not a
      number (the bar itself is kept).

    Raises the typed error for an error body, and :class:`~errors.PayloadError` (terminal, with
    ``provider``, ``symbol`` and ``url``) for anything that is not the documented format,
    including a JSON reply whose ``Meta Data`` names a symbol (``"2. Symbol"``) other than
    ``symbol`` (compared without case and surrounding spaces): then nothing is returned (CSV
    replies carry no symbol). That is a ``PayloadError`` rather than :class:`~errors.InvalidSymbol`
    because the symbol asked for may well be valid: the reply is what is broken (about another
    instrument: a mixed-up gateway or cache), and telling the user to drop a good symbol would be wrong.
    """
    text = _decode(body)
    stripped = text.lstrip()
    ctx = {"provider": provider, "symbol": symbol, "url": url}
    if stripped.startswith("{"):
        repeated: list[tuple[dict, list]] = []

        def pairs_hook(pairs: list) -> dict:
            obj = dict(pairs)
            if len(obj) != len(pairs):  # a key occurs twice: keep every copy for _parse_json to judge
                repeated.append((obj, pairs))
            return obj

        try:
            obj = json.loads(stripped, object_pairs_hook=pairs_hook)
        except ValueError as exc:
            raise PayloadError(f"{provider}: malformed JSON for {symbol}: {exc}", **ctx) from None
        err = classify_error(obj, provider=provider, symbol=symbol, url=url)
        if err is not None:
            raise err
        return _parse_json(obj, repeated, symbol=symbol, interval=interval, provider=provider, bar_label=bar_label, ctx=ctx,
                           adjusted=adjusted)  # fmt: skip
    if not stripped:
        raise PayloadError(f"{provider}: empty body for {symbol}", **ctx)
    return _parse_csv(text, symbol=symbol, interval=interval, provider=provider, bar_label=bar_label, ctx=ctx,
                      adjusted=adjusted)  # fmt: skip


def _shift(interval: str, bar_label: str) -> timedelta:
    return -timedelta(seconds=interval_seconds(interval)) if bar_label == "end" else timedelta(0)


def _parse_json(obj: dict, repeated: list[tuple[dict, list]], *, symbol, interval, provider, bar_label, ctx,
                adjusted=False) -> FetchResult:  # fmt: skip
    meta = obj.get("Meta Data")
    series_keys = [k for k in obj if k.startswith("Time Series")]
    if not isinstance(meta, dict) or len(series_keys) != 1 or not isinstance(obj[series_keys[0]], dict):
        raise PayloadError(f"{provider}: unexpected JSON keys {sorted(obj)[:5]} for {symbol}", **ctx)
    series = obj[series_keys[0]]
    conflicts: dict[str, list] = {}
    bad_records: set[int] = set()
    for d, pairs in repeated:
        differing = _differing(pairs)
        if not differing:
            continue  # every repeated key carries identical values: one copy is the same as all
        if d is series:
            conflicts = differing
        elif d is obj or d is meta:
            keys = sorted(differing)[:3]
            raise PayloadError(f"{provider}: JSON key(s) {keys} repeated with different values for {symbol}", **ctx)
        else:
            bad_records.add(id(d))
    reply_symbol = next((v for k, v in meta.items() if k.endswith(". Symbol")), None)
    if reply_symbol is not None and str(reply_symbol).strip().upper() != symbol.strip().upper():
        raise PayloadError(f"{provider}: asked for {symbol}, the reply is for {reply_symbol!r}; nothing loaded", **ctx)
    zone_name = next((v for k, v in meta.items() if k.endswith("Time Zone")), DEFAULT_ZONE)
    av_interval = next((v for k, v in meta.items() if k.endswith(". Interval")), None)
    expected = AV_INTERVALS[interval]
    if expected is not None and av_interval != expected:
        raise PayloadError(f"{provider}: asked for {expected} bars of {symbol}, got {av_interval!r}", **ctx)
    try:
        tz = zone(zone_name)
    except Exception:
        raise PayloadError(f"{provider}: unknown time zone {zone_name!r} for {symbol}", **ctx) from None
    names, pick = (_ADJ_FIELDS, _PICK_ADJ) if adjusted else (_FIELDS, _PICK)
    try:  # every record an object with every field: itemgetter is C-fast
        rows = [(key, pick(rec), rec) for key, rec in series.items()]
    except (KeyError, TypeError, IndexError):
        rows = [(key, tuple(rec.get(f) for f in names) if isinstance(rec, dict) else None, rec) for key, rec in series.items()]
    early: list[Rejection] = []
    if conflicts or bad_records:
        keep = []
        for row in rows:
            key, _, rec = row
            if key in conflicts:
                early.extend(Rejection(symbol, key, REPEATED_KEY, _json_excerpt(key, copy)) for copy in conflicts[key])
            elif id(rec) in bad_records:
                early.append(Rejection(symbol, key, REPEATED_FIELD, _json_excerpt(key, rec)))
            else:
                keep.append(row)
        rows = keep
    result = _build(rows, symbol=symbol, interval=interval, provider=provider, tz=tz, shift=_shift(interval, bar_label),
                    render=_json_excerpt, width=len(names))  # fmt: skip
    result.rejected[:0] = early
    return result


def _differing(pairs: list) -> dict[str, list]:
    """The keys of one JSON object's ``pairs`` that occur more than once with different values: key -> every value."""
    copies: dict[str, list] = {}
    for key, value in pairs:
        copies.setdefault(key, []).append(value)
    return {k: vs for k, vs in copies.items() if len(vs) > 1 and any(v != vs[0] for v in vs[1:])}


def _json_excerpt(key: str, rec: object) -> str:
    return excerpt(json.dumps({key: rec}, separators=(",", ":"), ensure_ascii=False))


def _csv_excerpt(_key: str, rec: list[str]) -> str:
    return excerpt(",".join(rec))


def _parse_csv(text: str, *, symbol, interval, provider, bar_label, ctx, adjusted=False) -> FetchResult:
    reader = csv.reader(io.StringIO(text))
    rows = []
    expected, order = (_CSV_ADJ_HEADER, _CSV_ADJ_ORDER) if adjusted else (_CSV_HEADER, range(1, 6))
    width = len(expected)
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:1] not in (["timestamp"], ["time"]) or header[1 : width + 1] != expected:
            raise PayloadError(f"{provider}: unexpected CSV header {header[: width + 1]} for {symbol}", **ctx)
        for rec in reader:
            if not rec:
                continue
            rows.append((rec[0], tuple(rec[i].strip() for i in order) if len(rec) > width else None, rec))
    except csv.Error as exc:  # e.g. a bare carriage return inside a line
        raise PayloadError(f"{provider}: malformed CSV for {symbol}: {exc}", **ctx) from None
    return _build(
        rows,
        symbol=symbol,
        interval=interval,
        provider=provider,
        tz=zone(DEFAULT_ZONE),
        shift=_shift(interval, bar_label),
        render=_csv_excerpt,
        width=width,
    )


def _build(rows, *, symbol, interval, provider, tz, shift, render, width=5) -> FetchResult:
    """Bars from ``(raw timestamp, values or None, raw record)`` rows; ``render(key, raw)`` makes excerpts.

    ``values``: the five of a Bar (``width`` 5), or those plus adjusted close, dividend amount and split
    coefficient (``width`` 8, the adjusted series: ``adj_close`` and corporate actions)."""
    result = FetchResult(symbol)
    bars, rejected = result.bars, result.rejected
    daily = interval == "1day"
    to_utc = LocalToUtc.shared(tz, shift)  # the same timestamps recur across symbols and cycles
    for key, values, raw in rows:
        if values is None or len(values) != width or not all(values):
            rejected.append(Rejection(symbol, str(key), MISSING_FIELD, render(key, raw)))
            continue
        try:
            ts = date_to_utc(date.fromisoformat(key[:10]), tz) if daily else to_utc(key)
        except NonexistentLocalTime:
            rejected.append(Rejection(symbol, key, NONEXISTENT_LOCAL_TIME, render(key, raw)))
            continue
        except AmbiguousLocalTime:
            rejected.append(Rejection(symbol, key, AMBIGUOUS_LOCAL_TIME, render(key, raw)))
            continue
        except (ValueError, TypeError):
            rejected.append(Rejection(symbol, str(key), BAD_TIMESTAMP, render(key, raw)))
            continue
        # values are validated later (validate_bars): non-strings are rejected there
        if width == 5:
            bars.append(_new_tuple(Bar, (provider, symbol, interval, ts, *values, None)))  # Bar(...) without its __new__
            continue
        bars.append(_new_tuple(Bar, (provider, symbol, interval, ts, *values[:6])))
        try:
            result.actions.extend(_actions(provider, symbol, date.fromisoformat(key[:10]), values[6], values[7]))
        except (InvalidOperation, TypeError, ValueError):
            rejected.append(Rejection(symbol, str(key), BAD_ACTION, render(key, raw)))
    bars.sort(key=_TS)
    result.actions.sort(key=_EX_DATE)  # oldest first, like the bars
    return result


def _actions(provider: str, symbol: str, ex_date: date, dividend: str, split: str) -> list[CorporateAction]:
    """The corporate actions of one adjusted row: a dividend amount other than 0, a split coefficient other
    than 1 (new shares per old share). Raises InvalidOperation/TypeError when either is not a number."""
    out = []
    amount, ratio = Decimal(dividend), Decimal(split)
    if not (amount.is_finite() and ratio.is_finite()) or amount < 0 or ratio <= 0:
        raise InvalidOperation(f"dividend {dividend!r}, split {split!r}")
    if amount != 0:
        out.append(CorporateAction(provider, symbol, ex_date, "dividend", amount=dividend))
    if ratio != 1:
        out.append(CorporateAction(provider, symbol, ex_date, "split", ratio=format(ratio.normalize(), "f")))
    return out


_TS = operator.attrgetter("ts")
_EX_DATE = operator.attrgetter("ex_date", "kind")
_PICK = operator.itemgetter(*_FIELDS)
_PICK_ADJ = operator.itemgetter(*_ADJ_FIELDS)
_new_tuple = tuple.__new__


@register
class AlphaVantageProvider(Provider):
    """Alpha Vantage over HTTP. Intervals: 1min, 5min, 15min, 30min, 60min (intraday), 1day (daily).

    History windows: intraday, one ``month=YYYY-MM`` request (``outputsize=full``) per calendar
    month the window touches; daily, one ``outputsize=full`` request (20+ years).

    ``adjusted`` (``--adjusted``, ``ALPHA_VANTAGE_ADJUSTED``; daily bars only, a premium function):
    ``TIME_SERIES_DAILY_ADJUSTED`` instead of ``TIME_SERIES_DAILY``, filling ``adj_close`` and
    reporting dividends and splits as corporate actions.
    """

    name = "alphavantage"
    intervals = {k: (v or "daily") for k, v in AV_INTERVALS.items()}
    env_prefix = "ALPHA_VANTAGE"
    Config = AlphaVantageConfig
    default_base_url = "https://www.alphavantage.co/query"
    default_rate_limit = "1/second 25/day"  # the free tier
    key_required = True
    key_help = "get a free key at https://www.alphavantage.co/support/#api-key"

    config: AlphaVantageConfig

    def params(self, symbol: str, interval: str, *, outputsize: str | None = None, month: str | None = None) -> dict[str, str]:
        """Query parameters for one request (``apikey`` included: never log these)."""
        self.check_interval(interval)
        cfg = self.config
        outputsize = outputsize or cfg.outputsize
        av_interval = AV_INTERVALS[interval]
        if av_interval is None:
            function = ADJUSTED_FUNCTION if cfg.adjusted else "TIME_SERIES_DAILY"
            p = {"function": function, "symbol": symbol, "outputsize": outputsize}
        else:
            p = {
                "function": "TIME_SERIES_INTRADAY",
                "symbol": symbol,
                "interval": av_interval,
                "outputsize": outputsize,
                "extended_hours": "true" if cfg.extended_hours else "false",
            }
            if month or cfg.month:
                p["month"] = month or cfg.month
        p["datatype"] = cfg.datatype
        p["apikey"] = cfg.api_key or ""
        return p

    def check_interval(self, interval: str) -> str:
        """As the base class; also a ConfigError for ``adjusted`` with intraday bars (the adjusted series is daily)."""
        spelling = super().check_interval(interval)
        if self.config.adjusted and AV_INTERVALS[interval] is not None:
            raise ConfigError(f"--adjusted (ALPHA_VANTAGE_ADJUSTED) is for daily bars ({ADJUSTED_FUNCTION}), not {interval}",
                              name="adjusted", value=interval)  # fmt: skip
        return spelling

    def latest_request(self, symbol: str, interval: str, since: datetime | None) -> Request:
        return Request(self.base_url, self.params(symbol, interval), symbol=symbol, interval=interval)

    def followup(self, request: Request, result: FetchResult, since: datetime | None) -> Request | None:
        """With a ``since`` watermark, a compact reply that no longer reaches back to it (its oldest bar
        starts more than one interval after the watermark: an interrupted cycle, a stopped service) is
        followed by one ``outputsize=full`` request, so the gap is backfilled instead of lost."""
        if since is None or request.params.get("outputsize") != "compact" or not result.bars:
            return None
        if min(b.ts for b in result.bars) <= since + timedelta(seconds=interval_seconds(request.interval)):
            return None
        log.info("%s: gap since %s; backfilling with outputsize=full", request.symbol, since.isoformat())
        return Request(self.base_url, self.params(request.symbol, request.interval, outputsize="full"),
                       symbol=request.symbol, interval=request.interval)  # fmt: skip

    def latest_reach(self, interval: str) -> timedelta | None:
        """Compact, then :meth:`followup`'s ``outputsize=full``: intraday, the trailing 30 days (less a
        day's margin); daily, 20+ years (None); a fixed ``month`` is not polling (None)."""
        if self.config.month is not None or AV_INTERVALS[interval] is None:
            return None
        return INTRADAY_FULL_REACH

    def range_requests(self, symbol: str, interval: str, start: datetime, end: datetime) -> Iterator[Request]:
        if AV_INTERVALS[interval] is None:
            yield Request(self.base_url, self.params(symbol, interval, outputsize="full"), symbol=symbol, interval=interval,
                          window=(start, end))  # fmt: skip
            return
        ny = zone(DEFAULT_ZONE)
        first, last = start.astimezone(ny), (end - timedelta(microseconds=1)).astimezone(ny)
        y, m = first.year, first.month
        while (y, m) <= (last.year, last.month):
            month_start = datetime(y, m, 1, tzinfo=ny).astimezone(UTC)
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
            month_end = datetime(y, m, 1, tzinfo=ny).astimezone(UTC)
            window = (max(start, month_start), min(end, month_end))
            month = f"{month_start.astimezone(ny):%Y-%m}"
            yield Request(self.base_url, self.params(symbol, interval, outputsize="full", month=month), symbol=symbol,
                          interval=interval, window=window)  # fmt: skip

    def parse(self, reply: Response, request: Request) -> Page:
        adjusted = request.params.get("function") == ADJUSTED_FUNCTION
        try:
            result = parse_response(reply.body, symbol=request.symbol, interval=request.interval, provider=self.name,
                                    bar_label=self.config.bar_label, url=reply.url, adjusted=adjusted)  # fmt: skip
        except PremiumRequired as exc:
            if not adjusted:
                raise
            raise PremiumRequired(f"{self.name}: {ADJUSTED_FUNCTION} (--adjusted, ALPHA_VANTAGE_ADJUSTED) is a premium "
                                  f"function and this key's plan lacks it; without --adjusted marketpoll polls "
                                  f"TIME_SERIES_DAILY (no adjusted close) ({exc})", provider=self.name,
                                  symbol=request.symbol, url=reply.url) from None  # fmt: skip
        return Page(result.bars, result.rejected, no_data=not result.bars and not result.rejected, actions=result.actions)
