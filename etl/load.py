"""Load bars idempotently: loading the same bars twice adds and changes nothing.

A *batch* is one symbol's bars from one fetch. :meth:`BarLoader.load_many` writes
several batches in one transaction (group commit: one fsync for many symbols) and
still lands each batch all or none: if the group fails, every batch is retried
alone, so only the one at fault fails. :meth:`BarLoader.load` is one batch.

PostgreSQL path (raw psycopg2 connection; measured in benchmarks/load_bench.py and
benchmarks/steady_bench.py). A running poller mostly re-fetches bars it already has (a
compact Alpha Vantage reply re-sends ~100 bars, one or two of them new), so the path is
built for that case, and nothing in it costs more as the history grows or depends on
``ANALYZE`` having run: ``bars`` is only ever read by primary-key probes and range scans.

- **Every series of the group remembered** (the steady state: see :class:`SeriesMemory`, bounded,
  filled only after a commit; its docstring says what it assumes). Bars committed before with
  the same values are dropped; the new and revised ones go in with one statement
  (:data:`_REMEMBERED`) that also checks, in its own transaction, that each series' watermark
  is the remembered one and that it changed exactly the rows expected. The ledger credits travel
  with it: one round trip. If the check fails, nothing of it stays and the group takes the
  general path.
- **General path.** One round trip (:data:`db.queries.SERIES_STATE_SQL`) reads each series'
  watermark (its newest ``ts``) and, for the series not remembered, its stored bars over the
  batch's ``ts`` range. A bar newer than its watermark is *appended*; one remembered, or equal
  as text to the stored row just read, is dropped; the rest are *written*. A bulk append is
  ``COPY``-ed straight into ``bars`` (in a savepoint: if a concurrent writer got there first, the
  unique violation rolls it back and those bars are written instead); a few appended bars travel
  with the written ones. Written bars go through ``INSERT … ON CONFLICT … DO UPDATE … WHERE`` the
  values differ (safe against concurrent writers; a row found equal is neither rewritten nor
  counted): up to :data:`_INLINE_MAX` inline (:data:`_UPSERT`), more ``COPY``-ed into a temporary
  staging table and diffed against ``bars`` with ``EXCEPT`` (:data:`_MERGE`). The ledger credits
  and ``COMMIT`` travel in one round trip (:class:`_Tx`).

Every path that writes rows also sends, in the same transaction and round trip as its last
statement (before ``COMMIT``), one ``NOTIFY marketpoll_bars`` per series changed
(:func:`_notify_statements`; payload: :func:`etl.events.bar_payload`), so listeners hear of a
load only once it committed. A load that writes nothing notifies nothing. The same round trip, first,
upserts the ``series_last_write`` row of each series changed (:func:`_series_statements`: its newest bar
start, the write time, the rows written), what the live catch-up reads instead of ``bars``
(:func:`api.queries.bars_since`); a load that writes nothing writes no such row either.

An ``adj_close`` of None means "not sent" (every fetch but an adjusted one), never "erase it": on every path
above and on SQLite, a bar without one whose OHLCV equal the stored row's leaves that row as it is (not
written, not counted, ``ingested_at`` kept), and one whose OHLCV changed is written with ``adj_close`` NULL
(the stored adjusted close belonged to the old bar). A bar with an ``adj_close`` is compared and written whole.

Values travel as the provider's decimal text; duplicate keys are removed first (the
last copy wins). Other databases (SQLite) use the dialect's ``INSERT … ON CONFLICT`` (and the same
``series_last_write`` upsert in their transaction); their events go through the in-process bus
(:mod:`etl.events` listeners) instead.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import weakref
import zlib
from abc import ABC, abstractmethod
from array import array
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import NamedTuple

import psycopg2
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.engine import is_postgres, translate_db_errors
from db.ledger import CREDIT_SQL, credit_statement
from db.queries import SERIES_STATE_SQL
from db.tables import BAR_KEY, BAR_VALUES, bars, series_last_write
from errors import ConfigError, LoadError
from etl.events import BARS_CHANNEL, payload_json
from etl.transform import dedupe_bars
from models.bar import Bar

__all__ = [
    "BarLoader", "PostgresBarLoader", "SqlAlchemyBarLoader", "SeriesMemory", "make_loader", "copy_text", "Credit",
    "MEMORY_MAX_SERIES", "MEMORY_BARS_PER_SERIES", "MEMORY_VERIFY_EVERY", "KEEP_CONNECTION_SECONDS",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Series a :class:`SeriesMemory` holds at most; the least recently loaded is forgotten first
#: (about 1.2 KB each for 100 bars: 10,000 series are ~12 MB).
MEMORY_MAX_SERIES = 10_000
#: Newest bars remembered per series (a compact Alpha Vantage reply holds 100).
MEMORY_BARS_PER_SERIES = 256
#: A series answered from memory is compared with the database again after at most this many
#: loads (between half this and this many, fixed per series, so the re-checks spread over cycles;
#: a re-check reads the series' stored bars in the load's first round trip).
MEMORY_VERIFY_EVERY = 20

#: A connection the loader used this many seconds ago or less serves its next load without the
#: pool's pre-ping (one round trip per checkout); an older one goes back to the pool.
KEEP_CONNECTION_SECONDS = 2.0

# SQL below is built from these module constants only: no user input reaches it.
#: The stored values of a Bar, in its field order (``bar[4:]``): ``adj_close`` (nullable) is the last.
_VALUES = (*BAR_VALUES, "adj_close")
_COLS = BAR_KEY + _VALUES
_COL_LIST = ", ".join(f'"{c}"' for c in _COLS)
_STAGE = "mp_stage_bars"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (provider text, symbol text, interval text, ts timestamptz, "
    "open numeric, high numeric, low numeric, close numeric, volume numeric, adj_close numeric) ON COMMIT DELETE ROWS"
)
#: Whether an incoming row changes the stored one. An incoming NULL ``adj_close`` means "not sent" (an unadjusted
#: fetch), not "no adjusted close": it counts as equal to the stored one, so re-polling unadjusted what was once
#: loaded ``--adjusted`` changes nothing. When OHLCV changed, :data:`_SET` writes it as NULL all the same: the
#: stored adjusted close belonged to the old bar.
_CHANGED = (
    f"({', '.join('b.' + v for v in _VALUES)}) IS DISTINCT FROM "
    f"({', '.join('EXCLUDED.' + v for v in BAR_VALUES)}, coalesce(EXCLUDED.adj_close, b.adj_close))"
)
_SET = ", ".join(f"{v} = EXCLUDED.{v}" for v in _VALUES) + ", ingested_at = now()"
#: The diff of the staged bars against ``bars``; one row per series written: (provider, symbol, interval, rows).
#: ``bars`` is read only by primary-key range scans, one per staged series (``OFFSET 0`` keeps the
#: LATERAL subquery from being pulled up into a join the planner could hash); ``EXCEPT`` compares
#: ``numeric`` by value (``1.50`` equals ``1.5``), like ``IS DISTINCT FROM``. Only new or changed
#: rows reach ``ON CONFLICT``, whose ``WHERE`` skips a row a concurrent writer already made equal. A stored row
#: with an adjusted close also stands in the diff without it: a staged row that sends none (NULL) and equal
#: OHLCV is unchanged (see :data:`_CHANGED`).
_MERGE = f"""
WITH r AS (
    SELECT provider, symbol, interval, min(ts) AS lo, max(ts) AS hi FROM {_STAGE} GROUP BY provider, symbol, interval
), d AS (
    SELECT {_COL_LIST} FROM {_STAGE}
    EXCEPT
    SELECT c.* FROM r CROSS JOIN LATERAL (
        SELECT {", ".join("b." + c for c in _COLS[:-1])}, unnest(CASE WHEN b.adj_close IS NULL THEN ARRAY[NULL::numeric]
                                                     ELSE ARRAY[b.adj_close, NULL] END)
        FROM bars b
        WHERE b.provider = r.provider AND b.symbol = r.symbol AND b.interval = r.interval AND b.ts BETWEEN r.lo AND r.hi
        OFFSET 0
    ) c
), w AS (
    INSERT INTO bars AS b ({_COL_LIST}) SELECT {_COL_LIST} FROM d
    ON CONFLICT ({", ".join(BAR_KEY)}) DO UPDATE SET {_SET} WHERE {_CHANGED}
    RETURNING b.provider, b.symbol, b.interval
)
SELECT provider, symbol, interval, count(*) FROM w GROUP BY provider, symbol, interval
"""  # noqa: S608
_UPSERT_ROWS = f"""
INSERT INTO bars AS b ({_COL_LIST})
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::numeric[], %s::numeric[], %s::numeric[],
                     %s::numeric[], %s::numeric[], %s::numeric[])
ON CONFLICT ({", ".join(BAR_KEY)}) DO UPDATE SET {_SET} WHERE {_CHANGED}
"""  # noqa: S608
#: The same for a few rows sent inline as arrays (one round trip instead of COPY + statement);
#: one row per row written: (provider, symbol, interval).
_UPSERT = _UPSERT_ROWS + "RETURNING b.provider, b.symbol, b.interval"
#: A group whose every series is remembered, in one statement: its new and revised bars go in (the
#: arrays of :data:`_UPSERT`), and the statement fails with ``division_by_zero`` (so nothing of it
#: stays) unless each series' watermark before it (four more arrays: provider, symbol, interval,
#: watermark in microseconds since the epoch) is the remembered one and it wrote exactly the
#: number of rows given last. The ledger credits, sent with it, count on that number.
_REMEMBERED = f"""
WITH w AS ({_UPSERT_ROWS}RETURNING 1
), m AS (
    SELECT bool_and(k.mark_us IS NOT DISTINCT FROM (
               SELECT (extract(epoch FROM max(b.ts)) * 1000000)::bigint FROM bars b
               WHERE b.provider = k.provider AND b.symbol = k.symbol AND b.interval = k.interval)) AS ok
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) AS k(provider, symbol, interval, mark_us)
)
SELECT 1 / (coalesce((SELECT ok FROM m), false) AND (SELECT count(*) FROM w) = %s)::int
"""  # noqa: S608
#: Bars to write in one group up to which :data:`_UPSERT` is used, above which :data:`_MERGE`.
_INLINE_MAX = 256
Series = tuple[str, str, str]  # (provider, symbol, interval)
_TS = itemgetter(3)  # a Bar's ts
_NO_ADJ = (None,)  # ``bar[3:9] + _NO_ADJ`` is ``bar[3:]`` re-fetched without its adjusted close
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Credit(NamedTuple):
    """What a batch's symbol brings to its cycle's ``etl_runs`` row when it commits (see :mod:`db.ledger`)."""

    run_id: int
    rows_fetched: int
    rows_rejected: int


def _credits_by_run(credits: Sequence[Credit | None], counts: Sequence[int]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for credit, loaded in zip(credits, counts, strict=True):
        if credit is None:
            continue
        t = out.setdefault(credit.run_id, {"symbols": 0, "fetched": 0, "loaded": 0, "rejected": 0})
        t["symbols"] += 1
        t["fetched"] += credit.rows_fetched
        t["loaded"] += loaded
        t["rejected"] += credit.rows_rejected
    return out


def copy_text(rows: Sequence[Bar]) -> str:
    """PostgreSQL COPY text format for ``rows`` (columns in ``BAR_KEY + BAR_VALUES + ("adj_close",)`` order).

    Fields are written as they are: symbols and provider names are validated to hold no
    tabs, newlines or backslashes (:data:`models.SYMBOL_RE`), values are validated decimal text;
    a volume or adjusted close of None is written as ``\\N`` (NULL).
    """
    ts_text: dict[datetime, str] = {}
    out = []
    append = out.append
    for b in rows:
        t = ts_text.get(b.ts)
        if t is None:
            t = ts_text[b.ts] = b.ts.isoformat()
        v = b.volume if b.volume is not None else "\\N"  # no volume (an index): NULL
        a = b.adj_close if b.adj_close is not None else "\\N"  # no adjusted close sent: NULL
        append(f"{b.provider}\t{b.symbol}\t{b.interval}\t{t}\t{b.open}\t{b.high}\t{b.low}\t{b.close}\t{v}\t{a}\n")
    return "".join(out)


class _Tx:
    """Statements on a psycopg2 connection in autocommit mode, in as few round trips as possible.

    Outside autocommit mode psycopg2 sends ``BEGIN`` and ``COMMIT`` in round trips of their own; here
    transaction control travels in front of the next statement, COPY included (``BEGIN; SELECT …``,
    ``SAVEPOINT …; COPY …``, ``UPDATE etl_runs …; COMMIT``), and several statements sent at once
    without ``BEGIN`` are one implicit transaction. On a busy host each round trip waits for two
    processes to be scheduled (measured: 5-10 ms on 2 shared cores during a cycle), and a
    steady-state load is mostly round trips. Statements queued with :meth:`then` take no parameters.
    """

    def __init__(self, cur) -> None:
        self.cur = cur
        self._queued: list[str] = []
        self.round_trips = 0  # counted as they are sent, so a failed one counts too

    def then(self, sql: str) -> None:
        """Send ``sql`` in front of the next statement."""
        self._queued.append(sql)

    def _send(self, sql: str) -> str:
        text = "; ".join([*self._queued, sql])
        self._queued.clear()
        self.round_trips += 1
        return text

    def execute(self, sql: str, params=None) -> None:
        self.cur.execute(self._send(sql), params)

    def copy(self, table: str, rows: Sequence[Bar]) -> None:
        """COPY ``rows`` into ``table``, handing psycopg2 the text in one piece (its default is 8 KB reads)."""
        text = copy_text(rows)
        self.cur.copy_expert(self._send(f"COPY {table} ({_COL_LIST}) FROM STDIN"), io.StringIO(text),
                             size=max(len(text), 8192))  # fmt: skip

    def commit(self, statements: Sequence[str] = ()) -> None:
        """Run ``statements`` (literal SQL, no parameters) and ``COMMIT``, in one round trip (none if nothing began)."""
        if not statements and self._queued == ["BEGIN"]:
            self._queued.clear()
            return
        self.cur.execute(self._send("; ".join([*statements, "COMMIT"])))


class _Kept:
    """The connection of a loader's last load, kept for its next one.

    A pool checkout pings the server first (``pool_pre_ping``): a round trip per load, about a third
    of a steady-state load's. A connection used within :data:`KEEP_CONNECTION_SECONDS` is trusted
    instead; if it died meanwhile (a server restart), the load's first round trip fails before any
    statement ran, and the load starts again on a pinged one (:meth:`PostgresBarLoader._transaction`;
    a connection lost *while* that first statement committed would be as ambiguous as any lost
    ``COMMIT`` reply). An older one goes back to the pool; so does the kept one when the loader is
    garbage-collected or the interpreter exits.
    """

    def __init__(self) -> None:
        self._conn = None
        self._used_at = 0.0
        self._lock = threading.Lock()

    def take(self):
        """The kept connection if fresh enough (and forget it), else None."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and time.monotonic() - self._used_at > KEEP_CONNECTION_SECONDS:
            conn.close()  # back to the pool, which pings it before handing it out again
            conn = None
        return conn

    def give(self, conn) -> None:
        """Keep ``conn`` (idle, as the pool hands it out) for the next load, or return it if one is kept."""
        with self._lock:
            if self._conn is None:
                self._conn, self._used_at = conn, time.monotonic()
                return
        conn.close()

    def release(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - at exit or collection: nothing left to tell
                pass


class _StaleConnection(Exception):
    """A kept connection failed on its load's first round trip: start again on a pinged one."""


class _Entry(NamedTuple):
    """What one series held right after the commit that filled it."""

    mark: datetime  # the series' newest stored ts then (its watermark)
    oldest: datetime  # ts of the oldest bar remembered: older ones are read from the database
    fingerprints: array  # sorted ``hash(bar[3:])`` of its newest bars, as committed
    unadjusted: array  # sorted ``hash(bar[3:9] + (None,))`` of those with an adjusted close: them re-fetched unadjusted
    uses: int  # loads answered from this entry since its series was last compared with the database (from its phase)


class SeriesMemory:
    """Per series, the newest bars a loader committed: a re-fetched bar found here unchanged is not sent.

    Bounded: at most ``max_series`` series (least recently loaded forgotten first) and the newest
    ``bars_per_series`` bars of each, kept as 64-bit fingerprints (``hash`` of ``ts`` and the
    values' text, ``adj_close`` included; 8 bytes a bar). A bar with an adjusted close has a second one, of
    the same bar without it (16 bytes a bar): an unadjusted re-fetch sends it so (``adj_close`` None, which
    changes nothing when OHLCV are equal; see :data:`_CHANGED`), and must be found unchanged here too. A bar
    whose ``adj_close`` is None thus matches a remembered bar of equal OHLCV whatever its adjusted close; one
    with an adjusted close matches only the same adjusted close. Filled only after a commit, with what that commit left in the
    database; a load that fails or rolls back forgets every series it touched. Thread-safe: when
    two loads of the same series overlap (two jobs of one process), each forgets the series at its end.

    A bar counts as unchanged only when its fingerprint matches *and* the series' watermark, checked
    in the load's own transaction, is the one this memory recorded: a mismatch (another writer
    appended newer bars, the newest ones were deleted) distrusts the series, whose bars are then
    compared with the database. Text that differs but is numerically equal (``1.5`` / ``1.50``)
    is merely sent and found equal there.

    What it assumes: that nothing but this loader changes or deletes a stored bar *older than the
    series' newest* between two of its loads (another process re-writing the same series with
    other values, a hand-made ``UPDATE``/``DELETE``). Such a change is not undone at once by a poll
    that re-sends the old values, as a database diff would; it is repaired when the series is next
    compared with the database, after at most ``verify_every`` loads of the series (the re-check
    reads its stored bars in the general path's first round trip), and after every restart.
    Acceptable because bars have one writer per (provider, series) in marketpoll's deployments, a
    stale copy lives at most ``verify_every`` polls, and the memory never makes a bar be skipped
    that this process did not itself see committed. A fingerprint collision (a revised bar hashing
    like a remembered one: about 2^-64 per comparison, with Python's per-process keyed string
    hash) would skip that revision until the next re-check.
    """

    def __init__(
        self, max_series: int = MEMORY_MAX_SERIES, bars_per_series: int = MEMORY_BARS_PER_SERIES,
        verify_every: int = MEMORY_VERIFY_EVERY,
    ) -> None:  # fmt: skip
        for name, value, low in (("max_series", max_series, 0), ("bars_per_series", bars_per_series, 1),
                                 ("verify_every", verify_every, 1)):  # fmt: skip
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}", name=name, value=value)
        self.max_series = max_series
        self.bars_per_series = bars_per_series
        self.verify_every = verify_every
        self._entries: OrderedDict[Series, _Entry] = OrderedDict()
        self._in_flight: Counter[Series] = Counter()
        self._overlapped: set[Series] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget everything (the next load of every series is compared with the database)."""
        with self._lock:
            self._entries.clear()

    def begin(self, series: Collection[Series]) -> dict[Series, _Entry]:
        """A load of ``series`` starts: their entries that may be trusted. Pair with :meth:`end`."""
        out = {}
        with self._lock:
            for s in series:
                if self._in_flight[s]:
                    self._overlapped.add(s)
                self._in_flight[s] += 1
                e = self._entries.get(s)
                if e is not None and e.uses < self.verify_every and s not in self._overlapped:
                    out[s] = e
        return out

    def end(self, series: Collection[Series], committed: dict[Series, _Entry] | None) -> None:
        """The load of ``series`` ended: ``committed`` (from :meth:`entry`) once it committed, None if it did not."""
        with self._lock:
            for s in series:
                e = committed.get(s) if committed is not None and s not in self._overlapped else None
                if e is None or self.max_series == 0:
                    self._entries.pop(s, None)
                else:
                    self._entries[s] = e
                    self._entries.move_to_end(s)
                left = self._in_flight[s] - 1
                if left:
                    self._in_flight[s] = left
                else:
                    del self._in_flight[s]
                    self._overlapped.discard(s)
            while len(self._entries) > self.max_series:
                self._entries.popitem(last=False)

    def entry(self, series: Series, rows: list[Bar], fingerprints: array | None, span: tuple[datetime, datetime],
              mark: datetime | None, used: _Entry | None) -> _Entry:  # fmt: skip
        """The entry for ``series`` once ``rows`` commit (its bars in this load; ``fingerprints``: theirs, sorted, if known).

        ``span`` is their (oldest, newest) ``ts``; ``mark`` the watermark read in the load's transaction;
        ``used`` the entry that answered some of ``rows``, or None if every row was compared in the database.
        """
        oldest, newest = span
        if len(rows) > self.bars_per_series:
            rows = sorted(rows, key=lambda b: b.ts)[-self.bars_per_series :]
            fingerprints, oldest = None, rows[0].ts
        if fingerprints is None:
            fingerprints = array("q", sorted([hash(b[3:]) for b in rows]))
        unadjusted = array("q", sorted([hash(b[3:9] + _NO_ADJ) for b in rows if b[9] is not None]))
        uses = used.uses + 1 if used is not None else self._phase(series)
        return _Entry(newest if mark is None or newest > mark else mark, oldest, fingerprints, unadjusted, uses)

    def _phase(self, series: Series) -> int:
        """Uses a freshly diffed entry starts at, fixed per series: spreads the series' re-checks over cycles."""
        return zlib.crc32("\x1f".join(series).encode()) % (self.verify_every // 2 + 1)


#: Each series changed, its row of ``series_last_write`` (see :func:`_series_statements`), in one statement: the
#: newest bar start never goes back (a backfill of older bars keeps it), the write time and rows are this write's.
_SERIES_UPSERT = """
INSERT INTO series_last_write AS l (provider, symbol, interval, newest_ts, written_at, rows_written)
SELECT provider, symbol, interval, newest_ts, now(), rows_written
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::int[])
     AS k(provider, symbol, interval, newest_ts, rows_written)
ON CONFLICT (provider, symbol, interval) DO UPDATE SET newest_ts = GREATEST(l.newest_ts, EXCLUDED.newest_ts),
    written_at = EXCLUDED.written_at, rows_written = EXCLUDED.rows_written
"""


def _series_statements(cur, span: dict, written: Counter[Series]) -> list[str]:
    """The ``series_last_write`` upsert of each series that ``written`` says changed (its newest bar in the load,
    the rows written), as literal SQL sent in the load's transaction, before ``COMMIT``. None when nothing was
    written. The series go in sorted order, so two loads of the same series lock their rows in the same order
    (the rows stay locked until ``COMMIT``: in another order, two overlapping loads could deadlock)."""
    changed = sorted(s for s, n in written.items() if n > 0)
    if not changed:
        return []
    params = ([s[0] for s in changed], [s[1] for s in changed], [s[2] for s in changed],
              [span[s][1] for s in changed], [written[s] for s in changed])  # fmt: skip
    return [cur.mogrify(_SERIES_UPSERT, params).decode()]


#: One NOTIFY per series changed, all in one statement (see :func:`_notify_statements`).
_NOTIFY = f"SELECT pg_notify('{BARS_CHANNEL}', p) FROM unnest(%s::text[]) AS p"  # noqa: S608 - a module constant


def _notify_statements(cur, by_series: dict[Series, list[Bar]], span: dict, written: Counter[Series]) -> list[str]:
    """``NOTIFY marketpoll_bars`` of each series that ``written`` says changed (:func:`etl.events.payload_json`
    of its newest bar in the load), as literal SQL sent in the load's transaction, before ``COMMIT``: listeners
    hear of it only once it committed, and never of a load rolled back. None when nothing was written."""
    payloads = []
    for s, batch in by_series.items():
        if written[s] > 0:
            newest = span[s][1]
            bar = next(b for b in reversed(batch) if b.ts == newest)
            payloads.append(payload_json(bar, written[s]))
    return [cur.mogrify(_NOTIFY, (payloads,)).decode()] if payloads else []


def _compare_with_stored(batch: list[Bar], text: str, us_text: dict[datetime, str], changed: list[Bar]) -> int:
    """Compare ``batch`` (bars of one series) with ``text``, its stored bars over their ``ts`` range as
    :data:`db.queries.SERIES_STATE_SQL` reads them; append those that would change their row to ``changed``
    and return how many would not. Exact text only: numerically equal text that differs is merely written
    and found equal by the database. An ``adj_close`` of None was not sent: any stored one is kept.

    ``us_text`` caches each ``ts`` as that text writes it (microseconds since the epoch). The usual case, every
    bar the same as its row (a re-load after a restart), costs one string comparison of the whole series.
    """
    batch = sorted(batch, key=_TS)  # as the rows are read
    lines = []
    for b in batch:
        t = us_text.get(b[3])
        if t is None:
            t = us_text[b[3]] = str((b[3] - _EPOCH) // _MICROSECOND)
        lines.append(f"{t} {b[4]} {b[5]} {b[6]} {b[7]} {'' if b[8] is None else b[8]} {'' if b[9] is None else b[9]}")
    if "\n".join(lines) == text:  # the same rows, in the same order, with the same text
        return len(batch)
    # row by row, "ts_us" -> "open high low close volume adj_close": numeric text holds no space, so a bar whose
    # values joined the same way give that text has those values, field by field
    old = dict(line.split(" ", 1) for line in text.split("\n"))
    same = 0
    for b, line in zip(batch, lines, strict=True):
        key, values = line.split(" ", 1)
        row = old.get(key)
        if row is not None and (row == values if b[9] is not None else row.startswith(values)):
            # an adj_close of None ends ``values`` with a space and an empty field: a row that starts with it has
            # the same five fields first, whatever its adjusted close
            same += 1
        else:
            changed.append(b)
    return same


def _by_series(rows: Sequence[Bar]) -> tuple[dict[Series, list[Bar]], dict[Series, tuple[datetime, datetime]]]:
    """``rows`` by series, and each series' (oldest, newest) ``ts``."""
    by_series: dict[Series, list[Bar]] = {}
    for b in rows:  # a Bar's first three fields are its series (provider, symbol, interval): slices, not attributes
        by_series.setdefault(b[:3], []).append(b)
    span = {}
    for s, batch in by_series.items():
        stamps = [b.ts for b in batch]
        span[s] = (min(stamps), max(stamps))
    return by_series, span


class BarLoader(ABC):
    """Writes bars; counts are rows inserted or changed. Errors are :class:`~errors.LoadError`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def load(self, rows: Sequence[Bar]) -> int:
        """Upsert one batch in one transaction (all or none); raises LoadError."""
        (result,) = self.load_many([rows])
        if isinstance(result, LoadError):
            raise result
        return result

    def load_many(
        self, batches: Sequence[Sequence[Bar]], *, credits: Sequence[Credit | None] | None = None
    ) -> list[int | LoadError]:
        """Upsert several batches, each all or none; one result per batch (a count or its error).

        Tries one transaction for the whole group; if it fails, loads each batch in its own.
        ``credits`` (one per batch, or None) are added to their cycles' ``etl_runs`` rows in the
        transaction that commits the batch, so the ledger never runs behind or ahead of ``bars``.
        """
        batches = [dedupe_bars(b) for b in batches]
        credits = list(credits) if credits is not None else [None] * len(batches)
        if len(batches) > 1:
            try:
                return self._load_group(batches, credits)
            except LoadError as exc:
                log.warning("group load of %d batches failed (%s); loading them one by one", len(batches), exc)
        out: list[int | LoadError] = []
        for batch, credit in zip(batches, credits, strict=True):
            try:
                out.append(self._load_group([batch], [credit])[0])
            except LoadError as exc:
                out.append(exc)
        return out

    @abstractmethod
    def _load_group(self, batches: list[list[Bar]], credits: list[Credit | None]) -> list[int]:
        """Write deduplicated ``batches`` (distinct series) and their ``credits`` in one transaction; per-batch counts."""


class PostgresBarLoader(BarLoader):
    """The path described in the module docstring.

    ``memory`` (default: a :class:`SeriesMemory` of its own) remembers what this loader committed.
    ``stats`` counts the bars of committed loads by the way they went: ``remembered`` (not sent:
    committed before by this loader with the same values), ``compared`` (not sent: equal to the
    stored row read in the load's first round trip), ``appended`` (COPY-ed straight in) and
    ``written`` (sent through ``ON CONFLICT``; the database counts those that changed).
    """

    def __init__(self, engine: sa.Engine, *, memory: SeriesMemory | None = None) -> None:
        super().__init__(engine)
        self.memory = memory if memory is not None else SeriesMemory()
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._kept = _Kept()
        weakref.finalize(self, self._kept.release)

    def _load_group(self, batches: list[list[Bar]], credits: list[Credit | None]) -> list[int]:
        series = {b[:3] for batch in batches for b in batch}
        trusted = self.memory.begin(series)
        committed: dict[Series, _Entry] | None = None
        try:
            with translate_db_errors("loading bars"):
                conn = self._kept.take()
                try:
                    counts, committed, paths = self._transaction(conn, batches, credits, trusted)
                except _StaleConnection:
                    counts, committed, paths = self._transaction(None, batches, credits, trusted)
        finally:
            self.memory.end(series, committed)  # fills it only after the commit; forgets on any failure
        with self._stats_lock:
            self.stats.update(paths)
        return counts

    def _transaction(self, conn, batches: list[list[Bar]], credits: list[Credit | None], trusted: dict[Series, _Entry]):
        """Load ``batches`` in one transaction on ``conn`` (a kept connection, or None: one from the pool).

        Returns (counts per batch, memory entries to keep, bars per path); raises :class:`_StaleConnection`
        when a kept connection fails in its first round trip.
        """
        kept = conn is not None
        conn = conn or self.engine.raw_connection()
        pg = conn.driver_connection
        tx = None
        try:
            pg.autocommit = True  # BEGIN and COMMIT travel with the statements (see _Tx)
            cur = pg.cursor()
            if not conn.info.get(_STAGE):
                cur.execute(_CREATE_STAGE)  # in a transaction of its own: a later rollback keeps it
                conn.info[_STAGE] = True
            tx = _Tx(cur)
            rows = [b for batch in batches for b in batch]
            by_series, span = _by_series(rows)

            def credited(written: Counter[Series]) -> tuple[list[int], list[str]]:
                counts = [sum(written[s] for s in {b[:3] for b in batch}) for batch in batches]
                # the series rows first: they are locked only by loads of the same series, the ledger's
                # row by every load of the cycle, so that one is held the shortest
                return counts, [*_series_statements(cur, span, written),
                                *(cur.mogrify(CREDIT_SQL, {"run_id": run_id, **t}).decode()
                                  for run_id, t in _credits_by_run(credits, counts).items()),
                                *_notify_statements(cur, by_series, span, written)]  # fmt: skip

            plan = self._plan_remembered(by_series, span, trusted) if rows else None
            if plan is not None:  # the steady state: one round trip, checked by the database
                written, entries, paths, params = plan
                counts, statements = credited(written)
                try:
                    tx.execute("; ".join([cur.mogrify(_REMEMBERED, params).decode(), *statements]))
                except psycopg2.errors.DivisionByZero:  # nothing of it stayed: compare with the database instead
                    log.debug("the memory of %d series disagrees with the database; comparing them", len(by_series))
                    plan, trusted = None, {}
            if plan is None:
                tx.then("BEGIN")
                written, entries, paths = self._write(tx, by_series, span, trusted) if rows else (Counter(), {}, {})
                counts, statements = credited(written)
                tx.commit(statements)
        except BaseException as exc:
            try:
                pg.cursor().execute("ROLLBACK")
                pg.autocommit = False
            except Exception:
                conn.invalidate()  # the connection is dead: never hand it out again
            conn.close()
            first = tx is None or tx.round_trips <= 1
            if kept and first and isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
                log.info("the kept database connection failed (%s); loading again on a new one", str(exc).strip())
                raise _StaleConnection from exc
            raise
        try:
            pg.autocommit = False  # as the pool hands it out
        except Exception:  # committed, but the connection broke just after: drop it
            conn.invalidate()
            conn.close()
        else:
            self._kept.give(conn)
        return counts, entries, paths

    def _plan_remembered(self, by_series: dict[Series, list[Bar]], span: dict, trusted: dict[Series, _Entry]):
        """When every series of the group is remembered back to its oldest bar: what :data:`_REMEMBERED` sends.

        Returns (rows it will write per series, memory entries, bars per path, parameters), or None. A bar
        newer than the remembered watermark, or not remembered, is sent; the others are not. The
        statement then proves the memory right (watermarks, rows written) or undoes itself.
        """
        if any(s not in trusted or span[s][0] < trusted[s].oldest for s in by_series):
            return None
        send: list[Bar] = []
        written: Counter[Series] = Counter()
        entries = {}
        remembered = 0
        for s, batch in by_series.items():
            entry = trusted[s]
            fingerprints = [hash(b[3:]) for b in batch]
            ordered = array("q", sorted(fingerprints))
            if len(batch) == len(entry.fingerprints) and entry.fingerprints == ordered:
                hits = len(batch)  # the identical re-load
            else:
                known, mark, hits = {*entry.fingerprints, *entry.unadjusted}, entry.mark, 0
                for b, f in zip(batch, fingerprints, strict=True):
                    if b.ts <= mark and f in known:
                        hits += 1
                    else:
                        send.append(b)
                        written[s] += 1
            remembered += hits
            entries[s] = self.memory.entry(s, batch, ordered, span[s], entry.mark, entry if hits else None)
        marks_us = [(trusted[s].mark - _EPOCH) // _MICROSECOND for s in by_series]
        columns = [list(c) for c in zip(*send, strict=True)] if send else [[] for _ in _COLS]
        params = [*columns, *([s[i] for s in by_series] for i in range(3)), marks_us, len(send)]
        return written, entries, {"remembered": remembered, "written": len(send)}, params

    def _write(self, tx: _Tx, by_series: dict[Series, list[Bar]], span: dict, trusted: dict[Series, _Entry]):
        """Write the bars of ``by_series`` in ``tx``; (rows written per series, memory entries to keep, bars per path)."""
        series = list(by_series)
        # the stored bars over the batch's range of each series not remembered, or reaching back past what is
        # (at most a few more than the batch holds: a sparse batch over a long history is written instead)
        reads = [s not in trusted or span[s][0] < trusted[s].oldest for s in series]
        cap = {s: 2 * len(by_series[s]) + 16 for s in series}
        tx.execute(SERIES_STATE_SQL, ([s[0] for s in series], [s[1] for s in series], [s[2] for s in series],
                                      [span[s][0] if r else None for s, r in zip(series, reads, strict=True)],
                                      [span[s][1] if r else None for s, r in zip(series, reads, strict=True)],
                                      list(cap.values())))  # fmt: skip
        marks: dict[Series, int | None] = {}
        stored: dict[Series, str] = {}  # "ts_us open high low close volume adj_close" lines: a NULL is an empty field
        for ord_, mark, text in tx.cur.fetchall():
            s = series[ord_ - 1]
            marks[s] = mark
            if text is not None:
                stored[s] = text
        us_text: dict[datetime, str] = {}  # the series of a group mostly share their timestamps
        fresh, changed, entries = [], [], {}
        appended: Counter[Series] = Counter()
        paths = Counter()
        for s, batch in by_series.items():
            mark_us = marks[s]
            mark = None if mark_us is None else _EPOCH + mark_us * _MICROSECOND
            if mark is None or span[s][0] > mark:  # all newer than what is stored: a pure append
                fresh += batch
                appended[s] = len(batch)
                entries[s] = self.memory.entry(s, batch, None, span[s], mark, None)
                continue
            entry = trusted.get(s)
            if entry is not None and entry.mark != mark:
                entry = None  # someone else appended or deleted its newest bars: write them all
            old = stored.get(s)
            if old is not None and old.count("\n") + 1 >= cap[s]:
                old = None  # the range holds more than was read: write them all
            fingerprints = [hash(b[3:]) for b in batch]
            ordered = array("q", sorted(fingerprints))
            remembered = entry.fingerprints if entry is not None else array("q")
            hits = same = 0
            if len(batch) == len(remembered) and remembered == ordered:
                hits = len(batch)  # the identical re-load: every bar remembered
            else:
                known = {*remembered, *entry.unadjusted} if entry is not None else set()
                compare = []
                for b, f in zip(batch, fingerprints, strict=True):
                    if b.ts > mark:
                        fresh.append(b)
                        appended[s] += 1
                    elif f in known:
                        hits += 1
                    else:
                        compare.append(b)
                if compare and old is not None:
                    same = _compare_with_stored(compare, old, us_text, changed)
                else:
                    changed += compare
            paths["remembered"] += hits
            paths["compared"] += same
            entries[s] = self.memory.entry(s, batch, ordered, span[s], mark, entry if hits else None)
        written: Counter[Series] = Counter()
        if fresh and len(fresh) + len(changed) > _INLINE_MAX:  # a bulk append: COPY it straight in
            try:
                tx.then("SAVEPOINT mp_append")
                tx.copy("bars", fresh)
                tx.then("RELEASE SAVEPOINT mp_append")
                written.update(appended)
                paths["appended"] += len(fresh)
                fresh = []
            except psycopg2.errors.UniqueViolation:
                log.debug("append of %d bars raced another writer; writing them through ON CONFLICT", len(fresh))
                tx.then("ROLLBACK TO SAVEPOINT mp_append")
        changed += fresh  # a few new bars travel with the revised ones: one round trip for all
        paths["written"] += len(changed)
        if len(changed) > _INLINE_MAX:
            tx.copy(_STAGE, changed)
            tx.execute(_MERGE)
            for p, s, i, n in tx.cur.fetchall():
                written[(p, s, i)] += n
        elif changed:
            tx.execute(_UPSERT, [list(column) for column in zip(*changed, strict=True)])
            written.update(tx.cur.fetchall())
        return written, entries, paths


class SqlAlchemyBarLoader(BarLoader):
    """Portable path (SQLite): ``INSERT … ON CONFLICT DO UPDATE … WHERE values differ``."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        stmt = sqlite_insert(bars)
        excluded = stmt.excluded
        self._stmt = stmt.on_conflict_do_update(
            index_elements=list(BAR_KEY),
            set_={**{v: excluded[v] for v in _VALUES}, "ingested_at": sa.func.now()},
            # an adj_close of None was not sent: it changes nothing alone (see _CHANGED), yet is written with new OHLCV
            where=sa.or_(
                *(bars.c[v].is_distinct_from(excluded[v]) for v in BAR_VALUES),
                bars.c.adj_close.is_distinct_from(sa.func.coalesce(excluded.adj_close, bars.c.adj_close)),
            ),
        )
        latest = sqlite_insert(series_last_write).values(written_at=sa.func.now())
        self._series = latest.on_conflict_do_update(  # as _SERIES_UPSERT: SQLite's max(a, b) is GREATEST
            index_elements=["provider", "symbol", "interval"],
            set_={
                "newest_ts": sa.func.max(series_last_write.c.newest_ts, latest.excluded.newest_ts),
                "written_at": latest.excluded.written_at,
                "rows_written": latest.excluded.rows_written,
            },
        )

    def _load_group(self, batches: list[list[Bar]], credits: list[Credit | None]) -> list[int]:
        out = []
        changed: list[dict] = []  # the series_last_write rows of the series written
        with translate_db_errors("loading bars"), self.engine.begin() as conn:
            for batch in batches:
                by_series, span = _by_series(batch)
                n = 0
                for s, rows in by_series.items():
                    before = conn.exec_driver_sql("SELECT total_changes()").scalar()
                    conn.execute(self._stmt, [_params(b) for b in rows])
                    written = conn.exec_driver_sql("SELECT total_changes()").scalar() - before
                    if written:
                        changed.append({"provider": s[0], "symbol": s[1], "interval": s[2], "newest_ts": span[s][1],
                                        "rows_written": written})  # fmt: skip
                    n += written
                out.append(n)
            if changed:  # sorted, as on PostgreSQL (SQLite locks the whole database anyway)
                conn.execute(self._series, sorted(changed, key=itemgetter("provider", "symbol", "interval")))
            for run_id, t in _credits_by_run(credits, out).items():
                conn.execute(credit_statement(run_id, **t))
        return out


def _params(b: Bar) -> dict:
    return {
        "provider": b.provider, "symbol": b.symbol, "interval": b.interval, "ts": b.ts,
        "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume, "adj_close": b.adj_close,
    }  # fmt: skip


def make_loader(engine: sa.Engine) -> BarLoader:
    """The fastest correct loader for ``engine``'s dialect."""
    if is_postgres(engine):
        return PostgresBarLoader(engine)
    if engine.dialect.name == "sqlite":
        return SqlAlchemyBarLoader(engine)
    raise LoadError(f"unsupported database dialect {engine.dialect.name!r} (use PostgreSQL or SQLite)")
