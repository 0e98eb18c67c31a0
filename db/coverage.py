"""The completeness ledger (issue #9): bars expected from the exchange calendar vs bars loaded.

**Expected.** Bars are labelled by their start and cover ``[start, start + interval)``. For each
session date, the windows of the sessions asked for (:meth:`TradingDay.windows`: the library's
regular session, early closes and holidays, the user's overrides, marketpoll's pre-market and
after-hours extents; one window a day, midnight to midnight UTC, on the 24/7 exchange) are joined
where they touch, and each joined span holds one bar every interval from its start while the bar
starts before the span's end (``closed="left"``; a last bar may be partial, as a 60min bar from
15:30 to a 16:00 close). This is what ``pandas_market_calendars.date_range(schedule, interval,
closed="left", force_close=False)`` gives: the *session* grid. Most APIs bucket bars on the *clock*
instead, multiples of the interval since the Unix epoch (Polygon, Binance and Coinbase by design;
Alpha Vantage's 60min series runs 04:00, 05:00 ... 19:00 New York), so a 60min bar starts at 09:00
and holds the 09:30 open, not at 09:30; only Yahoo's 60m bars start at the session open. Each
provider declares its grid (``Provider.bar_grid``, :func:`provider_grid`); on the clock grid a span's
first bar starts at the grid point at or before the span's start. The two grids differ only where a
session does not open on the interval's grid (a 60min bar on XNYS, 30/60min on XNSE's 09:15).
A daily bar (``1day``) is one bar per session date,
starting at 00:00 of the date in the exchange's zone (UTC on 24/7), whatever the sessions.
The ledger expects only bars that have *ended* at the time of the check (the injected clock): a
session in progress counts its finished bars, a future date has no row.

**Loaded** counts the stored bars at expected starts only. **No data**: an expected bar that is
not loaded but lies inside a range the provider said holds no data (``no_data_ranges``,
:meth:`CoverageLedger.record_no_data`) is ``no_data``, not ``missing``, so it is not fetched
forever; a bar that arrives later in such a range counts as loaded. ``missing = expected - loaded
- no_data``; ``first_missing`` is the start of the first missing bar (UTC).

Each check upserts one ``coverage`` row per (provider, symbol, interval, session date, sessions),
``sessions`` being :func:`sessions_key` (``"regular"``, ``"pre regular post"``), so the ledger can be
queried in SQL::

    SELECT symbol, session_date, expected, loaded, no_data, missing, first_missing, checked_at
    FROM coverage WHERE provider = 'alphavantage' AND interval = '5min' AND missing > 0
    ORDER BY missing DESC, session_date DESC LIMIT 20;

**How it is counted, and why (PostgreSQL).** Counting bars is the cost: 500 symbols x 250
session dates of 1-minute bars are 48.5M rows, and reading them once through the primary key
took 24-38 s on this project's shared 2-core machine (benchmarks/coverage_bench.py), far over the
5 s this may take before a job fires. So:

1. A row with nothing missing at its last check, and the same number of bars expected now, is
   *settled*: marketpoll never deletes bars, so it is not counted again and keeps its
   ``checked_at`` (bars deleted by hand: ``--recount`` counts every day again). A warm ledger counts only the
   days still incomplete (today's, the holes), so its cost follows the incomplete days, not history.
2. Those are counted with one statement per :data:`PAIRS_PER_STATEMENT` (symbol, date) pairs,
   :data:`PARALLEL_STATEMENTS` at a time on their own connections: per pair, one range scan of the
   primary key ``(provider, symbol, interval, ts)`` over that day's span only (no per-day round
   trip, no other day's or session's bars read, and the session date comes from the span, so no
   time-zone arithmetic per row), keeping bars on the grid (``date_bin(interval, ts, span start) =
   ts``: a bar off the grid is not an expected one) and returning their count and the first's and
   last's offset. The first missing bar follows from these when the bars form one run (a complete
   day, a missing head or tail); otherwise a second statement walks the pair's bars in order and
   stops at the first gap. (A sum of offsets would locate a single hole without that walk, but
   summing costs a fifth more on every bar read, complete days included: measured, not worth it.)
3. Pairs that a no-data range touches (rare) have their bar starts read and are tallied exactly
   in Python, like every pair on SQLite (stored as naive UTC text, read one symbol at a time).

Counted rows are written back with one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO
UPDATE`` (their ``checked_at`` moves even when nothing else changed).
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from clock import Clock, utc
from db.engine import is_postgres, translate_db_errors
from db.tables import bars, coverage, no_data_ranges
from errors import ConfigError
from models.bar import INTERVALS
from scheduler.calendar import Calendars, MarketCalendar, Session

__all__ = ["expected_bar_starts", "session_dates", "sessions_key", "provider_grid", "CoverageRow", "CoverageLedger",
           "render_table"]  # fmt: skip

log = logging.getLogger(__name__)

DAILY = "1day"
#: (symbol, date) pairs per counting statement, and statements run at once (one connection each).
PAIRS_PER_STATEMENT = 20_000
PARALLEL_STATEMENTS = 2
_SESSION_ORDER = (Session.PRE, Session.REGULAR, Session.POST)


# -- expected bars: pure functions of the calendar ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    """Expected bars of one session date in one joined span: ``count`` starts (UTC) ``step`` apart from ``start``."""

    day: date
    start: datetime
    count: int
    step: timedelta

    @property
    def last(self) -> datetime:
        return self.start + (self.count - 1) * self.step

    def starts(self) -> list[datetime]:
        return [self.start + i * self.step for i in range(self.count)]


def _step(interval: str) -> timedelta:
    try:
        return timedelta(seconds=INTERVALS[interval])
    except KeyError:
        raise ConfigError(f"unknown interval {interval!r}: use {', '.join(INTERVALS)}", name="interval", value=interval) from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GRIDS = ("session", "clock")


def _check_grid(grid: str) -> None:
    if grid not in GRIDS:
        raise ConfigError(f"unknown bar grid {grid!r}: use session or clock", name="grid", value=grid)


def provider_grid(provider: str) -> str:
    """The bar grid of registered provider ``provider`` (``Provider.bar_grid``); ``"clock"`` for a name not registered."""
    from etl.providers import get_provider_class, provider_names  # the registry, filled on import

    return get_provider_class(provider).bar_grid if provider in provider_names() else "clock"


def _spans(calendar: MarketCalendar, day: date, interval: str, sessions: frozenset[Session], now: datetime | None,
           grid: str = "session") -> list[_Span]:  # fmt: skip
    """The day's expected bars as spans; with ``now``, only the bars ended by then."""
    step = _step(interval)
    td = calendar.trading_day(day)
    if td is None:
        return []
    if interval == DAILY:
        ended = now is None or td.close <= now
        return [_Span(day, datetime.combine(day, time(0), tzinfo=calendar.tz).astimezone(UTC), 1, step)] if ended else []
    joined: list[list[datetime]] = []
    for sess, lo, hi in td.windows():
        if sess not in sessions:
            continue
        if joined and joined[-1][1] == lo:
            joined[-1][1] = hi
        else:
            joined.append([lo, hi])
    out = []
    for lo, hi in joined:
        if grid == "clock":  # the first bar starts on the epoch grid at or before the span's start
            lo -= (lo - _EPOCH) % step
        n = math.ceil((hi - lo) / step)
        if now is not None and hi > now:  # bar i has ended when lo + (i + 1) * step <= now
            n = max(0, min(n, (now - lo) // step))
        if n > 0:
            out.append(_Span(day, lo, n, step))
    return out


def expected_bar_starts(calendar: MarketCalendar, day: date, interval: str, sessions: frozenset[Session], *,
                        grid: str = "session") -> list[datetime]:  # fmt: skip
    """Starts (UTC, sorted) of the bars ``calendar`` expects on local session date ``day``.

    ``interval`` is one of :data:`models.bar.INTERVALS` (:class:`~errors.ConfigError` otherwise);
    intraday bars come from the windows of ``sessions`` (see the module docstring) on ``grid``:
    ``"session"`` steps from each joined span's start (pandas_market_calendars' grid), ``"clock"``
    from the multiple of the interval since the Unix epoch at or before it (a 60min bar at 09:00 for
    a 09:30 open). A ``1day`` bar is 00:00 of ``day`` in the exchange's zone. ``[]`` on a closed day.
    """
    _check_grid(grid)
    return [s for span in _spans(calendar, day, interval, sessions, None, grid) for s in span.starts()]


def session_dates(calendar: MarketCalendar, start: date, end: date) -> list[date]:
    """The exchange's trading dates in ``[start, end]`` (local dates; every date on the 24/7 exchange)."""
    out, d = [], start
    while d <= end:
        if calendar.trading_day(d) is not None:
            out.append(d)
        d += timedelta(days=1)
    return out


def sessions_key(sessions: Iterable[Session]) -> str:
    """The ``coverage.sessions`` text: the sessions in time order, space-separated (``"pre regular post"``)."""
    chosen = {Session(s) for s in sessions}
    return " ".join(s.value for s in _SESSION_ORDER if s in chosen)


def _tally(expected: Sequence[datetime], loaded: set[datetime], no_data: Sequence[tuple[datetime, datetime]]):
    """``(loaded, no_data, missing starts)`` of ``expected`` (sorted UTC starts); no-data ranges are ``[start, end)``."""
    n_loaded, n_no_data, missing = 0, 0, []
    for ts in expected:
        if ts in loaded:
            n_loaded += 1
        elif any(lo <= ts < hi for lo, hi in no_data):
            n_no_data += 1
        else:
            missing.append(ts)
    return n_loaded, n_no_data, missing


# -- rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One series on one session date. Counts are bars; ``first_missing`` and ``checked_at`` are UTC."""

    provider: str
    symbol: str
    interval: str
    session_date: date
    expected: int
    loaded: int
    no_data: int
    missing: int
    first_missing: datetime | None
    checked_at: datetime

    @property
    def share_complete(self) -> float | None:
        """``(expected - missing) / expected`` (no-data bars count as accounted for); None when nothing is expected."""
        return (self.expected - self.missing) / self.expected if self.expected else None

    def as_dict(self) -> dict:
        """JSON-ready: ``session_date`` and ``first_missing`` (UTC) in ISO 8601."""
        return {
            "provider": self.provider,
            "symbol": self.symbol,
            "interval": self.interval,
            "session_date": self.session_date.isoformat(),
            "expected": self.expected,
            "loaded": self.loaded,
            "missing": self.missing,
            "no_data": self.no_data,
            "first_missing": self.first_missing.isoformat() if self.first_missing else None,
        }


@dataclass(slots=True)
class _Count:
    """What was found for one (symbol, date): bars loaded and no-data, and the missing ones (when asked for)."""

    loaded: int
    no_data: int
    missing: int
    first_missing: datetime | None
    missing_starts: list[datetime] | None = None


def _pg_array(values: Iterable, kind: str = "int") -> str:
    """A PostgreSQL array literal (``'{...}'``, cast in the SQL) of ``kind`` ``int``, ``time`` (dates or aware
    datetimes, None for NULL) or ``text`` (quoted and escaped).

    One parameter that the server parses in one go, and cheaper to build than the ``ARRAY[...]``
    of one literal per element that psycopg2 makes of a list (measured: 125,000 ledger rows).
    """
    if kind == "int":
        return "{" + ",".join(map(str, values)) + "}"
    if kind == "time":
        return "{" + ",".join("NULL" if v is None else v.isoformat() for v in values) + "}"
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)  # SQLite keeps UTC naive


def _missing_runs(days: dict[date, list[_Span]], count_of) -> list[tuple[datetime, datetime]]:
    """``(first start, last start)`` of each run of missing bars, consecutive among the expected ones.

    ``days``: the spans of each session date, in date order; ``count_of(day)``: its :class:`_Count`
    (None: settled, nothing missing), with ``missing_starts`` when the day is partly missing.
    """
    runs: list[list[datetime]] = []
    open_run = False
    for day, spans in days.items():
        c = count_of(day)
        if c is None or not c.missing:
            open_run = False
            continue
        if c.missing == sum(s.count for s in spans):  # the whole day is missing
            if open_run:
                runs[-1][1] = spans[-1].last
            else:
                runs.append([spans[0].start, spans[-1].last])
            open_run = True
            continue
        missing = set(c.missing_starts or ())
        for ts in (t for span in spans for t in span.starts()):
            if ts not in missing:
                open_run = False
            elif open_run:
                runs[-1][1] = ts
            else:
                runs.append([ts, ts])
                open_run = True
    return [(a, b) for a, b in runs]


# -- SQL (PostgreSQL; psycopg2 parameters; every name below is a module constant) -----------------

#: Per (symbol, span) pair, over the bars on the span's grid: how many, and the first's and the
#: last's offset from the span start (seconds). ``p.si``/``p.gi`` index the symbol and span arrays,
#: which keeps the parameters small.
_COUNT_SQL = """
SELECT p.ord, c.n, c.first_s, c.last_s
FROM unnest(%(si)s::int[], %(gi)s::int[]) WITH ORDINALITY AS p(si, gi, ord)
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           date_part('epoch', min(b.ts) - (%(lo)s::timestamptz[])[p.gi])::bigint AS first_s,
           date_part('epoch', max(b.ts) - (%(lo)s::timestamptz[])[p.gi])::bigint AS last_s
    FROM bars b
    WHERE b.provider = %(provider)s AND b.interval = %(interval)s AND b.symbol = (%(symbols)s::text[])[p.si]
      AND b.ts BETWEEN (%(lo)s::timestamptz[])[p.gi] AND (%(last)s::timestamptz[])[p.gi]
      AND date_bin(%(step)s::interval, b.ts, (%(lo)s::timestamptz[])[p.gi]) = b.ts
) c
"""
#: Per pair whose bars start at slot 0 but have gaps: the 1-based rank of the first bar past the
#: first gap (slot ``rank - 1`` is the first missing one). ``ORDER BY q.ts`` is the index's order, so
#: the walk stops there (``ORDER BY q.rn`` would make PostgreSQL sort every bar of the pair first).
_FIRST_GAP_SQL = """
SELECT p.ord, (
    SELECT q.rn FROM (
        SELECT b.ts, row_number() OVER (ORDER BY b.ts) AS rn
        FROM bars b
        WHERE b.provider = %(provider)s AND b.interval = %(interval)s AND b.symbol = (%(symbols)s::text[])[p.si]
          AND b.ts BETWEEN (%(lo)s::timestamptz[])[p.gi] AND (%(last)s::timestamptz[])[p.gi]
          AND date_bin(%(step)s::interval, b.ts, (%(lo)s::timestamptz[])[p.gi]) = b.ts
    ) q
    WHERE q.ts <> (%(lo)s::timestamptz[])[p.gi] + (q.rn - 1) * %(step)s::interval
    ORDER BY q.ts
    LIMIT 1)
FROM unnest(%(si)s::int[], %(gi)s::int[]) WITH ORDINALITY AS p(si, gi, ord)
"""
#: Every stored bar start of the given pairs (for the few that need an exact tally).
_STARTS_SQL = """
SELECT p.ord, b.ts
FROM unnest(%(si)s::int[], %(gi)s::int[]) WITH ORDINALITY AS p(si, gi, ord)
JOIN bars b ON b.provider = %(provider)s AND b.interval = %(interval)s AND b.symbol = (%(symbols)s::text[])[p.si]
           AND b.ts BETWEEN (%(lo)s::timestamptz[])[p.gi] AND (%(last)s::timestamptz[])[p.gi]
"""
_UPSERT_SQL = """
INSERT INTO coverage (provider, symbol, interval, session_date, sessions, expected, loaded, no_data, missing,
                      first_missing, checked_at)
SELECT %(provider)s, u.symbol, %(interval)s, u.d, %(sessions)s, u.e, u.l, u.nd, u.m, u.fm, %(checked_at)s
FROM unnest(%(symbol)s::text[], %(d)s::date[], %(e)s::int[], %(l)s::int[], %(nd)s::int[], %(m)s::int[],
            %(fm)s::timestamptz[]) AS u(symbol, d, e, l, nd, m, fm)
ON CONFLICT (provider, symbol, interval, session_date, sessions) DO UPDATE
SET expected = excluded.expected, loaded = excluded.loaded, no_data = excluded.no_data, missing = excluded.missing,
    first_missing = excluded.first_missing, checked_at = excluded.checked_at
"""


# -- the ledger ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one check covers: the symbols, and each session date's spans of expected (ended) bars."""

    provider: str
    symbols: tuple[str, ...]
    interval: str
    sessions: str
    start: date
    end: date
    days: dict[date, list[_Span]]

    def expected(self) -> dict[date, int]:
        """Expected (ended) bars per session date: the same for every series of the plan."""
        return {day: sum(s.count for s in spans) for day, spans in self.days.items()}


class CoverageLedger:
    """Computes and keeps the ``coverage`` ledger; records no-data ranges. Errors are :class:`~errors.LoadError`.

    ``calendars`` gives each exchange's sessions; ``clock`` says which bars have ended and stamps
    ``checked_at``; ``grid_of(provider)`` is the provider's bar grid (``"session"`` or ``"clock"``,
    see :func:`expected_bar_starts`; default :func:`provider_grid`, from the provider registry).
    """

    def __init__(self, engine: sa.Engine, calendars: Calendars, clock: Clock, *,
                 grid_of: Callable[[str], str] = provider_grid) -> None:  # fmt: skip
        self.engine = engine
        self.calendars = calendars
        self.clock = clock
        self.grid_of = grid_of

    # -- public --------------------------------------------------------------------------------

    def compute(self, provider: str, symbols: Sequence[str], interval: str, start: date, end: date, *,
                exchange: str, sessions: frozenset[Session], recount: bool = False) -> list[CoverageRow]:  # fmt: skip
        """Check each of ``symbols`` on each session date in ``[start, end]``; upsert and return the rows.

        Rows are ordered by symbol, then date; session dates with no ended bar yet (future) have none.
        ``recount``: count settled days again too (bars deleted by hand since their last check).
        Raises :class:`~errors.ConfigError` for an unknown exchange or interval or no session.
        """
        now = self.clock.now()
        plan = self._plan(provider, symbols, interval, start, end, exchange, sessions, now)
        stored = {} if recount else self._stored(plan)
        counts = self._measure(plan, stored, want_missing=False)
        rows, fresh = [], []
        expected = plan.expected()  # per session date, once for every series
        for symbol in plan.symbols:
            for day, n_expected in expected.items():
                c = counts.get((symbol, day))
                if c is None:  # settled: complete at its last check
                    rows.append(stored[(symbol, day)])
                    continue
                row = CoverageRow(provider, symbol, interval, day, n_expected, c.loaded, c.no_data, c.missing, c.first_missing,
                                  now)  # fmt: skip
                rows.append(row)
                fresh.append(row)
        self._write(plan, fresh, now)
        log.debug("coverage of %d %s %s series over %s..%s: %d rows, %d counted", len(plan.symbols), provider, interval,
                  start, end, len(rows), len(fresh))  # fmt: skip
        return rows

    def missing_ranges(self, provider: str, symbols: Sequence[str], interval: str, start: date, end: date, *,
                       exchange: str, sessions: frozenset[Session],
                       recount: bool = False) -> list[tuple[str, datetime, datetime]]:  # fmt: skip
        """Runs of missing expected bars: ``(symbol, start, end)``, UTC, ``end`` exclusive (last bar start + interval).

        A run is bars consecutive among the *expected* ones, so it spans closed hours (nights,
        weekends, holidays) when the bars on both sides are missing: one fetch covers it. Loaded and
        no-data bars end a run. Ordered by symbol, then start. Reads only; the ledger is not written.
        ``recount``: settled days are read again too (see :meth:`compute`).
        """
        plan = self._plan(provider, symbols, interval, start, end, exchange, sessions, self.clock.now())
        counts = self._measure(plan, {} if recount else self._stored(plan), want_missing=True)
        step = _step(interval)
        return [
            (symbol, first, last + step)
            for symbol in plan.symbols
            for first, last in _missing_runs(plan.days, lambda day: counts.get((symbol, day)))  # noqa: B023 - called at once
        ]

    def record_no_data(self, provider: str, symbol: str, interval: str, start: datetime, end: datetime) -> None:
        """The provider said it has no data in ``[start, end)`` (aware datetimes): those bars become ``no_data``.

        Recording the same range again only refreshes ``seen_at``. Raises ValueError for a naive
        datetime or an empty range.
        """
        start, end = utc(start), utc(end)
        if end <= start:
            raise ValueError(f"empty no-data range [{start.isoformat()}, {end.isoformat()})")
        values = {"provider": provider, "symbol": symbol, "interval": interval, "range_start": start, "range_end": end,
                  "seen_at": self.clock.now()}  # fmt: skip
        if is_postgres(self.engine):
            stmt = pg_insert(no_data_ranges).values(values)
        else:
            stmt = sqlite_insert(no_data_ranges).values(values)
        stmt = stmt.on_conflict_do_update(index_elements=list(no_data_ranges.primary_key.columns.keys()),
                                          set_={"seen_at": stmt.excluded.seen_at})  # fmt: skip
        with translate_db_errors("recording a no-data range"), self.engine.begin() as conn:
            conn.execute(stmt)

    def worst(self, limit: int = 10) -> list[CoverageRow]:
        """The ledger rows with the most missing bars (ties: the latest date first), only rows missing some."""
        c = coverage.c
        q = (
            sa.select(c.provider, c.symbol, c.interval, c.session_date, c.expected, c.loaded, c.no_data, c.missing,
                      c.first_missing, c.checked_at)
            .where(c.missing > 0)
            .order_by(c.missing.desc(), c.session_date.desc(), c.provider, c.symbol, c.interval)
            .limit(limit)
        )  # fmt: skip
        with translate_db_errors("reading the coverage ledger"), self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    # -- steps ---------------------------------------------------------------------------------

    def _plan(self, provider, symbols, interval, start, end, exchange, sessions, now) -> _Plan:
        _step(interval)
        chosen = frozenset(Session(s) for s in sessions) - {Session.CLOSED}
        if not chosen:
            raise ConfigError("no session asked for: use pre, regular or post", name="sessions", value=sorted(sessions))
        cal = self.calendars.get(exchange)
        grid = self.grid_of(provider)
        _check_grid(grid)
        days = {}
        for day in session_dates(cal, start, end):
            spans = _spans(cal, day, interval, chosen, now, grid)
            if spans:
                days[day] = spans
        return _Plan(provider, tuple(sorted(set(symbols))), interval, sessions_key(chosen), start, end, days)

    def _stored(self, plan: _Plan) -> dict[tuple[str, date], CoverageRow]:
        """The ledger's settled rows for the plan: nothing missing, and the same number of bars expected."""
        if not plan.symbols or not plan.days:
            return {}
        c = coverage.c
        q = sa.select(c.symbol, c.session_date, c.expected, c.loaded, c.no_data, c.checked_at).where(
            c.provider == plan.provider, c.interval == plan.interval, c.sessions == plan.sessions,
            c.symbol.in_(plan.symbols), c.session_date.between(plan.start, plan.end), c.missing == 0,
        )  # fmt: skip
        expected = plan.expected()
        checked: dict[datetime, datetime] = {}  # one check writes one checked_at: convert each once
        out = {}
        with translate_db_errors("reading the coverage ledger"), self.engine.connect() as conn:
            for symbol, day, n_expected, n_loaded, n_no_data, at in conn.execute(q):
                if expected.get(day) != n_expected:
                    continue
                at_utc = checked.get(at) or checked.setdefault(at, _utc(at))
                out[(symbol, day)] = CoverageRow(plan.provider, symbol, plan.interval, day, n_expected, n_loaded, n_no_data, 0,
                                                 None, at_utc)  # fmt: skip
        return out

    def _no_data(self, plan: _Plan) -> dict[str, list[tuple[datetime, datetime]]]:
        spans = [s for ss in plan.days.values() for s in ss]
        lo, hi = spans[0].start, spans[-1].last
        n = no_data_ranges.c
        q = sa.select(n.symbol, n.range_start, n.range_end).where(
            n.provider == plan.provider, n.interval == plan.interval, n.symbol.in_(plan.symbols),
            n.range_end > lo, n.range_start <= hi,
        )  # fmt: skip
        out: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        with translate_db_errors("reading no-data ranges"), self.engine.connect() as conn:
            for symbol, a, b in conn.execute(q):
                out[symbol].append((_utc(a), _utc(b)))
        return out

    def _measure(self, plan: _Plan, settled: dict, *, want_missing: bool) -> dict[tuple[str, date], _Count]:
        """A :class:`_Count` for every (symbol, date) of the plan that is not settled."""
        if not plan.symbols or not plan.days:
            return {}
        no_data = self._no_data(plan)
        todo = [(sym, day) for sym in plan.symbols for day in plan.days if (sym, day) not in settled]
        exact: list[tuple[str, date]] = []
        counts: dict[tuple[str, date], _Count] = {}
        if is_postgres(self.engine):
            grid = todo if not no_data else []  # pairs counted in SQL: no no-data range touches their day
            for sym, day in todo if no_data else ():  # (no no-data range at all: every pair, unchecked)
                spans = plan.days[day]
                touched = any(a <= spans[-1].last and b > spans[0].start for a, b in no_data.get(sym, ()))
                (exact if touched else grid).append((sym, day))
            counts.update(self._count_pg(plan, grid))
            if want_missing:  # which bars are missing: read the bars of the partly loaded days
                exact += [k for k in grid if counts[k].missing and counts[k].loaded]
        else:
            exact = todo
        loaded = self._starts(plan, exact)
        for sym, day in exact:
            spans = plan.days[day]
            expected = [s for span in spans for s in span.starts()]
            ranges = [(a, b) for a, b in no_data.get(sym, ()) if a <= spans[-1].last and b > spans[0].start]
            n_loaded, n_no_data, missing = _tally(expected, loaded.get((sym, day), set()), ranges)
            counts[(sym, day)] = _Count(n_loaded, n_no_data, len(missing), missing[0] if missing else None, missing)
        return counts

    def _pairs(self, plan: _Plan, pairs: list[tuple[str, date]]) -> tuple[list[tuple[str, date, _Span]], dict]:
        """One item per (symbol, span) of ``pairs``, and the array parameters of the SQL above for them."""
        spans, first_index = [], {}
        for day, day_spans in plan.days.items():
            first_index[day] = len(spans) + 1  # SQL arrays are 1-based
            spans += day_spans
        symbol_index = {s: i + 1 for i, s in enumerate(plan.symbols)}
        items, si, gi = [], [], []
        for sym, day in pairs:
            for j, span in enumerate(plan.days[day]):
                items.append((sym, day, span))
                si.append(symbol_index[sym])
                gi.append(first_index[day] + j)
        params = {
            "provider": plan.provider, "interval": plan.interval, "symbols": _pg_array(plan.symbols, "text"),
            "lo": _pg_array((s.start for s in spans), "time"), "last": _pg_array((s.last for s in spans), "time"),
            "step": f"{spans[0].step.total_seconds():.0f} seconds",
        }  # fmt: skip
        return items, {"params": params, "si": si, "gi": gi}

    def _run_chunks(self, sql: str, args: dict, n: int, what: str) -> list[tuple]:
        """``sql`` over the pair arrays in chunks, :data:`PARALLEL_STATEMENTS` at a time; rows with ``ord`` made global."""
        chunks = [(i, min(n, i + PAIRS_PER_STATEMENT)) for i in range(0, n, PAIRS_PER_STATEMENT)]

        def run(bounds: tuple[int, int]) -> list[tuple]:
            a, b = bounds
            with translate_db_errors(what), self.engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    sql, {**args["params"], "si": _pg_array(args["si"][a:b]), "gi": _pg_array(args["gi"][a:b])}
                ).fetchall()
            return [(r[0] - 1 + a, *r[1:]) for r in rows]

        if len(chunks) == 1:
            return run(chunks[0])
        with ThreadPoolExecutor(PARALLEL_STATEMENTS, thread_name_prefix="coverage") as pool:
            return [r for part in pool.map(run, chunks) for r in part]

    def _count_pg(self, plan: _Plan, pairs: list[tuple[str, date]]) -> dict[tuple[str, date], _Count]:
        if not pairs:
            return {}
        items, args = self._pairs(plan, pairs)
        per_item: list[tuple[int, int | None, int | None]] = [(0, None, None)] * len(items)
        for ord_, *found in self._run_chunks(_COUNT_SQL, args, len(items), "counting bars for coverage"):
            per_item[ord_] = tuple(found)
        first: list[datetime | None] = [None] * len(items)
        gaps = []
        step_s = int(_step(plan.interval).total_seconds())  # every span of a plan has the plan's step
        for i, ((_, _, span), (n, first_s, last_s)) in enumerate(zip(items, per_item, strict=True)):
            if n == span.count:
                continue  # complete: nothing missing
            last_slot = None if last_s is None else last_s // step_s
            if n == 0 or first_s > 0:  # the first bar is missing
                first[i] = span.start
            elif last_slot + 1 == n:  # one run from the first bar: the one after it is missing
                first[i] = span.start + n * span.step
            else:
                gaps.append(i)
        if gaps:
            sub = {"params": args["params"], "si": [args["si"][i] for i in gaps], "gi": [args["gi"][i] for i in gaps]}
            for ord_, rank in self._run_chunks(_FIRST_GAP_SQL, sub, len(gaps), "finding missing bars for coverage"):
                i = gaps[ord_]
                span = items[i][2]
                # no gap found: bars were written since the count; the bar after them is then the first missing
                first[i] = span.start + ((rank - 1) if rank is not None else per_item[i][0]) * span.step
        out: dict[tuple[str, date], _Count] = {}
        for (sym, day, span), (n, *_), first_missing in zip(items, per_item, first, strict=True):
            c = out.get((sym, day))
            if c is None:
                out[(sym, day)] = _Count(n, 0, span.count - n, first_missing)
            else:  # a second span of the day (pre and post without regular)
                c.loaded += n
                c.missing += span.count - n
                c.first_missing = c.first_missing or first_missing
        return out

    def _starts(self, plan: _Plan, pairs: list[tuple[str, date]]) -> dict[tuple[str, date], set[datetime]]:
        """Stored bar starts (UTC) of each pair's spans."""
        out: dict[tuple[str, date], set[datetime]] = defaultdict(set)
        if not pairs:
            return out
        if is_postgres(self.engine):
            items, args = self._pairs(plan, pairs)
            for ord_, ts in self._run_chunks(_STARTS_SQL, args, len(items), "reading bars for coverage"):
                sym, day, _ = items[ord_]
                out[(sym, day)].add(ts.astimezone(UTC))
            return out
        # one query per symbol and run of consecutive session dates: settled days between are not read
        position = {day: i for i, day in enumerate(plan.days)}
        runs: list[tuple[str, list[date]]] = []
        for sym, day in pairs:
            if runs and runs[-1][0] == sym and position[runs[-1][1][-1]] + 1 == position[day]:
                runs[-1][1].append(day)
            else:
                runs.append((sym, [day]))
        b = bars.c
        q = sa.select(b.ts).where(b.provider == plan.provider, b.interval == plan.interval, b.symbol == sa.bindparam("s"),
                                  b.ts.between(sa.bindparam("lo"), sa.bindparam("hi"))).order_by(b.ts)  # fmt: skip
        with translate_db_errors("reading bars for coverage"), self.engine.connect() as conn:
            for sym, days in runs:
                lo, hi = plan.days[days[0]][0].start, plan.days[days[-1]][-1].last
                stamps = [_utc(ts) for (ts,) in conn.execute(q, {"s": sym, "lo": lo, "hi": hi})]
                for day in days:
                    spans = plan.days[day]
                    i, j = bisect_left(stamps, spans[0].start), bisect_left(stamps, spans[-1].last + timedelta(microseconds=1))
                    out[(sym, day)] = set(stamps[i:j])
        return out

    def _write(self, plan: _Plan, rows: list[CoverageRow], checked_at: datetime) -> None:
        """Upsert ``rows`` (all of ``plan``'s series, checked at ``checked_at``) in one transaction."""
        if not rows:
            return
        with translate_db_errors("writing the coverage ledger"), self.engine.begin() as conn:
            if is_postgres(self.engine):
                conn.exec_driver_sql(_UPSERT_SQL, {
                    "provider": plan.provider, "interval": plan.interval, "sessions": plan.sessions, "checked_at": checked_at,
                    "symbol": _pg_array((r.symbol for r in rows), "text"), "d": _pg_array((r.session_date for r in rows), "time"),
                    "e": _pg_array(r.expected for r in rows), "l": _pg_array(r.loaded for r in rows),
                    "nd": _pg_array(r.no_data for r in rows), "m": _pg_array(r.missing for r in rows),
                    "fm": _pg_array((r.first_missing for r in rows), "time"),
                })  # fmt: skip
                return
            stmt = sqlite_insert(coverage)
            stmt = stmt.on_conflict_do_update(
                index_elements=["provider", "symbol", "interval", "session_date", "sessions"],
                set_={k: stmt.excluded[k] for k in ("expected", "loaded", "no_data", "missing", "first_missing", "checked_at")},
            )
            conn.execute(stmt, [{
                "provider": plan.provider, "symbol": r.symbol, "interval": plan.interval, "session_date": r.session_date,
                "sessions": plan.sessions, "expected": r.expected, "loaded": r.loaded, "no_data": r.no_data, "missing": r.missing,
                "first_missing": r.first_missing, "checked_at": checked_at,
            } for r in rows])  # fmt: skip


def _row(r) -> CoverageRow:
    return CoverageRow(r.provider, r.symbol, r.interval, r.session_date, r.expected, r.loaded, r.no_data, r.missing,
                       _utc(r.first_missing), _utc(r.checked_at))  # fmt: skip


# -- text ----------------------------------------------------------------------------------------


def render_table(rows: list[CoverageRow]) -> str:
    """A plain-text table (one line per row, columns aligned; times UTC) and a totals line."""
    head = ("provider", "symbol", "interval", "session_date", "expected", "loaded", "no_data", "missing", "complete",
            "first_missing (UTC)")  # fmt: skip
    body = [
        (r.provider, r.symbol, r.interval, r.session_date.isoformat(), str(r.expected), str(r.loaded), str(r.no_data),
         str(r.missing), "-" if r.share_complete is None else f"{100 * r.share_complete:.1f}%",
         r.first_missing.strftime("%Y-%m-%d %H:%M") if r.first_missing else "-")
        for r in rows
    ]  # fmt: skip
    numeric = {4, 5, 6, 7, 8}
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(head)]

    def fmt(cells) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    expected = sum(r.expected for r in rows)
    missing = sum(r.missing for r in rows)
    total = (f"{len(rows)} rows: {sum(r.loaded for r in rows):,} of {expected:,} expected bars loaded, "
             f"{sum(r.no_data for r in rows):,} no data, {missing:,} missing")  # fmt: skip
    if expected:
        total += f" ({100 * (expected - missing) / expected:.1f}% complete)"
    return "\n".join([fmt(head).rstrip(), fmt(["-" * w for w in widths]).rstrip(), *(fmt(line).rstrip() for line in body), total])
