"""The demo provider: Alpha Vantage's wire format from a simulator on 127.0.0.1.

``DemoProvider`` starts an in-process :class:`~etl.loopback.LoopbackServer` whose
``/query`` endpoint answers TIME_SERIES_INTRADAY and TIME_SERIES_DAILY exactly as
Alpha Vantage does (JSON with ``Meta Data`` and ``Time Series (5min)``, or CSV with
``datatype=csv``; naive US/Eastern timestamps, newest first, start-labelled bars),
then talks to it through the real :class:`AlphaVantageProvider` path (HTTP, parse,
transform, load). No API key, no internet.

Simulated market: bars exist on weekdays from 04:00 to 20:00 New York time
(pre-market, regular and after-hours; holidays are not simulated), and around the
clock for crypto-style pairs (a symbol with a ``-``, e.g. ``BTC-USD``); only complete
bars (start + interval <= now) are served. Intraday history answers ``month=YYYY-MM`` with that
whole month (from 2000-01), so ``--backfill`` and ``--fill-gaps`` work offline; without it, the
newest 100 (``compact``) or 1,000 (``full``) bars. Values are a deterministic function of
(symbol, bar start): fetching again returns the same numbers. Any symbol matching
``[A-Z][A-Z0-9.-]{0,14}`` exists, except those starting with ``INVALID``, which get
Alpha Vantage's ``"Error Message"`` reply (to see partial failure).
"""

from __future__ import annotations

import json
import math
import random
import re
import zlib
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

from clock import Clock, SystemClock
from etl.loopback import LoopbackServer, Reply
from etl.providers.alphavantage import AV_INTERVALS, AlphaVantageConfig, AlphaVantageProvider
from etl.providers.registry import register
from etl.transform import zone
from models.bar import interval_seconds

__all__ = ["DemoMarket", "DemoProvider", "DEMO_API_KEY"]

DEMO_API_KEY = "demo"
_NY = zone("US/Eastern")
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.\-]{0,14}$")
_SESSION_START, _SESSION_END = time(4, 0), time(20, 0)
_SIZES = {"compact": 100, "full": 1000}


class DemoMarket:
    """Deterministic simulated bars, rendered in Alpha Vantage's wire format. Pure except for ``clock.now()``."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()

    @staticmethod
    def _values(symbol: str, start: datetime, seconds: int) -> tuple[str, str, str, str, str]:
        base = 20 + zlib.crc32(symbol.encode()) % 480
        t0 = start.timestamp()

        def mid(t: float) -> float:
            return base * (1 + 0.03 * math.sin(t / 86400 * 2 * math.pi / 5 + base) + 0.01 * math.sin(t / 3600))

        rng = random.Random(f"{symbol}|{int(t0)}|{seconds}")
        o, c = mid(t0), mid(t0 + seconds) * (1 + rng.uniform(-0.001, 0.001))
        h = max(o, c) * (1 + rng.uniform(0, 0.002))
        lo = min(o, c) * (1 - rng.uniform(0, 0.002))
        vol = int(500 + rng.random() * 50000 * math.sqrt(seconds / 60))
        return f"{o:.4f}", f"{h:.4f}", f"{lo:.4f}", f"{c:.4f}", str(vol)

    def intraday_starts(self, interval: str, count: int, *, around_the_clock: bool = False) -> list[datetime]:
        """Start times (New York, aware) of the newest ``count`` complete bars, newest first.

        Bars tile each weekday's 04:00-20:00 session from 04:00 (a wall-clock grid, so
        it holds on DST days: the switch happens at 02:00, outside the session), or, with
        ``around_the_clock``, every interval of every day on the UTC grid.
        """
        step = timedelta(seconds=interval_seconds(interval))
        if around_the_clock:
            now_utc = self.clock.now().astimezone(UTC)
            newest = datetime.fromtimestamp(now_utc.timestamp() // step.total_seconds() * step.total_seconds(), UTC) - step
            return [(newest - k * step).astimezone(_NY) for k in range(count)]
        now = self.clock.now().astimezone(_NY)
        day = now.date()
        out: list[datetime] = []
        while len(out) < count:
            if day.weekday() < 5:
                start = datetime.combine(day, _SESSION_START, tzinfo=_NY)
                end = min(datetime.combine(day, _SESSION_END, tzinfo=_NY), now)
                n = max(0, (end - start) // step)
                out.extend(start + k * step for k in range(n - 1, -1, -1))
            day -= timedelta(days=1)
        return out[:count]

    def month_starts(self, interval: str, month: str, *, around_the_clock: bool = False) -> list[datetime] | None:
        """Start times (New York, aware) of the complete bars in calendar month ``month`` (``YYYY-MM``, New
        York), newest first, on the grids of :meth:`intraday_starts`: Alpha Vantage's ``month=`` history.
        None for a malformed month or one before 2000-01 (Alpha Vantage's history starts there)."""
        try:
            y, m = (int(x) for x in month.split("-"))
            first = date(y, m, 1)
        except ValueError:
            return None
        if first < date(2000, 1, 1) or len(month) != 7:
            return None
        nxt = date(y + 1, 1, 1) if m == 12 else date(y, m + 1, 1)
        step = timedelta(seconds=interval_seconds(interval))
        now = self.clock.now()
        lo = datetime.combine(first, time(0), tzinfo=_NY)
        hi = min(datetime.combine(nxt, time(0), tzinfo=_NY), now)
        out: list[datetime] = []
        if around_the_clock:  # the UTC grid, from the first grid point at or after the month's start
            secs = step.total_seconds()
            t = datetime.fromtimestamp(-(-lo.timestamp() // secs) * secs, UTC)
            while t + step <= hi:
                out.append(t.astimezone(_NY))
                t += step
        else:
            day = first
            while day < nxt:
                if day.weekday() < 5:
                    start = datetime.combine(day, _SESSION_START, tzinfo=_NY)
                    end = min(datetime.combine(day, _SESSION_END, tzinfo=_NY), now)
                    out.extend(start + k * step for k in range(max(0, (end - start) // step)))
                day += timedelta(days=1)
        return out[::-1]

    def daily_dates(self, count: int) -> list[date]:
        """The newest ``count`` weekdays whose regular session (to 16:00 New York) has closed."""
        now = self.clock.now().astimezone(_NY)
        d = now.date() if now.time() >= time(16, 0) else now.date() - timedelta(days=1)
        out: list[date] = []
        while len(out) < count:
            if d.weekday() < 5:
                out.append(d)
            d -= timedelta(days=1)
        return out

    def reply(self, path: str, q: dict[str, str]) -> Reply:
        """Answer one ``/query`` request the way Alpha Vantage does (errors are HTTP 200 JSON)."""
        if path != "/query":
            return 404, {"Content-Type": "text/plain"}, b"not found"
        function, symbol = q.get("function", ""), q.get("symbol", "").upper()
        if not q.get("apikey"):
            return _json({"Error Message": "the parameter apikey is invalid or missing."})
        if function not in ("TIME_SERIES_INTRADAY", "TIME_SERIES_DAILY"):
            return _json({"Error Message": f"This API function ({function}) does not exist."})
        if not _SYMBOL.match(symbol) or symbol.startswith("INVALID"):
            return _invalid_call(function)
        size = _SIZES.get(q.get("outputsize", "compact"), 100)
        csv_out = q.get("datatype") == "csv"
        if function == "TIME_SERIES_DAILY":
            rows = [
                (d.isoformat(), self._values(symbol, datetime.combine(d, time(9, 30), tzinfo=_NY), 23400))
                for d in self.daily_dates(size)
            ]
            meta = {
                "1. Information": "Daily Prices (open, high, low, close) and Volumes",
                "2. Symbol": symbol,
                "3. Last Refreshed": rows[0][0],
                "4. Output Size": "Compact" if size == 100 else "Full size",
                "5. Time Zone": "US/Eastern",
            }
            key = "Time Series (Daily)"
        else:
            interval = q.get("interval", "")
            canon = next((k for k, v in AV_INTERVALS.items() if v == interval and v), None)
            if canon is None:
                return _invalid_call(function)
            secs = interval_seconds(canon)
            crypto = "-" in symbol
            # crypto pairs trade through the autumn fall-back hour, whose local wall times repeat:
            # like Alpha Vantage's crypto series, their JSON is labelled in UTC
            zone_out = UTC if crypto and not csv_out else _NY
            if q.get("month"):  # one calendar month of history, whole (outputsize does not cut it)
                starts = self.month_starts(canon, q["month"], around_the_clock=crypto)
                if starts is None:
                    return _invalid_call(function)
            else:
                starts = self.intraday_starts(canon, size, around_the_clock=crypto)
            rows = [(s.astimezone(zone_out).strftime("%Y-%m-%d %H:%M:%S"), self._values(symbol, s, secs)) for s in starts]
            meta = {
                "1. Information": f"Intraday ({interval}) open, high, low, close prices and volume",
                "2. Symbol": symbol,
                "3. Last Refreshed": rows[0][0] if rows else "",  # a month with no complete bar yet: an empty series
                "4. Interval": interval,
                "5. Output Size": "Compact" if size == 100 else "Full size",
                "6. Time Zone": "UTC" if zone_out is UTC else "US/Eastern",
            }
            key = f"Time Series ({interval})"
        if csv_out:
            lines = ["timestamp,open,high,low,close,volume"] + [",".join((ts, *v)) for ts, v in rows]
            return 200, {"Content-Type": "application/x-download; charset=utf-8"}, ("\r\n".join(lines) + "\r\n").encode()
        series = {ts: dict(zip(("1. open", "2. high", "3. low", "4. close", "5. volume"), v, strict=True)) for ts, v in rows}
        return _json({"Meta Data": meta, key: series})


def _invalid_call(function: str) -> Reply:
    # Alpha Vantage's wording for an unknown symbol or bad parameter
    doc = "https://www.alphavantage.co/documentation/"
    return _json({"Error Message": f"Invalid API call. Please retry or visit the documentation ({doc}) for {function}."})


def _json(obj: dict) -> Reply:
    return 200, {"Content-Type": "application/json"}, json.dumps(obj, indent=4).encode()


@register
class DemoProvider(AlphaVantageProvider):
    """Alpha Vantage's client against the in-process :class:`DemoMarket` server (see module docstring).

    Options as Alpha Vantage's, from ``DEMO_<FIELD>`` (``DEMO_DATATYPE=csv``, ``DEMO_RATE_LIMIT``); no key.
    """

    name = "demo"
    env_prefix = "DEMO"
    default_rate_limit = None
    key_required = False

    def __init__(self, config: AlphaVantageConfig | None = None, *, clock: Clock | None = None, **kw) -> None:
        self.market = DemoMarket(clock)
        self.server = LoopbackServer(self.market.reply)
        base = config or AlphaVantageConfig()
        cfg = replace(base, api_key=DEMO_API_KEY, base_url=f"{self.server.url}/query")
        super().__init__(cfg, clock=clock, **kw)

    def secrets(self) -> list[str]:
        return []

    def latest_reach(self, interval: str) -> timedelta:
        """Compact, then full: the demo's full reply is its newest 1,000 bars (Alpha Vantage's: 30 days)."""
        return _SIZES["full"] * timedelta(seconds=interval_seconds(interval))

    def close(self) -> None:
        super().close()
        self.server.close()
