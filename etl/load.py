"""Load bars idempotently: loading the same bars twice adds and changes nothing.

Each :meth:`BarLoader.load` call is one transaction: its bars land all or none.
The pipeline calls it once per symbol batch.

PostgreSQL fast path (raw psycopg2 connection; see shared/PERF_NOTES.md):

1. Look up each series' watermark (its newest ``ts``) through the primary key.
2. Bars newer than the watermark cannot conflict: ``COPY`` them straight into
   ``bars`` (inside a savepoint; if a concurrent writer got there first the unique
   violation rolls the savepoint back and those bars take step 3 instead).
3. The others (re-fetched or revised bars) are ``COPY``-ed into a temporary
   staging table and merged with ``INSERT … SELECT … ON CONFLICT … DO UPDATE``,
   skipping rows whose values did not change (``IS DISTINCT FROM``) so an identical
   re-load rewrites nothing.

Values travel as the provider's decimal text; duplicates within a batch are
removed first (the last copy wins), since ``ON CONFLICT`` cannot touch a row twice.
Other databases (SQLite) use the dialect's ``INSERT … ON CONFLICT`` through SQLAlchemy.
"""

from __future__ import annotations

import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

import psycopg2
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.engine import is_postgres, translate_db_errors
from db.tables import BAR_KEY, BAR_VALUES, bars
from errors import LoadError
from etl.transform import dedupe_bars
from models.bar import Bar

__all__ = ["BarLoader", "PostgresBarLoader", "SqlAlchemyBarLoader", "make_loader", "copy_text"]

log = logging.getLogger(__name__)
_COLS = BAR_KEY + BAR_VALUES
_COL_LIST = ", ".join(f'"{c}"' for c in _COLS)
_STAGE = "mp_stage_bars"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (provider text, symbol text, interval text, ts timestamptz, "
    "open numeric, high numeric, low numeric, close numeric, volume numeric) ON COMMIT DELETE ROWS"
)
# Built from module constants only (no user input reaches these strings).
_MERGE = (
    f"INSERT INTO bars AS b ({_COL_LIST}) SELECT {_COL_LIST} FROM {_STAGE} "  # noqa: S608
    f"ON CONFLICT ({', '.join(BAR_KEY)}) DO UPDATE SET "
    + ", ".join(f"{v} = EXCLUDED.{v}" for v in BAR_VALUES)
    + ", ingested_at = now() WHERE ("
    + ", ".join(f"b.{v}" for v in BAR_VALUES)
    + ") IS DISTINCT FROM ("
    + ", ".join(f"EXCLUDED.{v}" for v in BAR_VALUES)
    + ")"
)
_WATERMARKS = (
    "SELECT k.provider, k.symbol, k.interval, "
    "(SELECT max(b.ts) FROM bars b WHERE b.provider = k.provider AND b.symbol = k.symbol AND b.interval = k.interval) "
    "FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(provider, symbol, interval)"
)


def copy_text(rows: Sequence[Bar]) -> str:
    """PostgreSQL COPY text format for ``rows`` (columns in ``BAR_KEY + BAR_VALUES`` order).

    Fields are written as they are: symbols and provider names are validated to hold no
    tabs, newlines or backslashes, values are validated decimal text.
    """
    ts_text: dict[datetime, str] = {}
    out = []
    append = out.append
    for b in rows:
        t = ts_text.get(b.ts)
        if t is None:
            t = ts_text[b.ts] = b.ts.isoformat()
        append(f"{b.provider}\t{b.symbol}\t{b.interval}\t{t}\t{b.open}\t{b.high}\t{b.low}\t{b.close}\t{b.volume}\n")
    return "".join(out)


class BarLoader(ABC):
    """Writes bars. ``load`` returns how many rows were inserted or changed; raises :class:`~errors.LoadError`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @abstractmethod
    def load(self, rows: Sequence[Bar]) -> int:
        """Upsert ``rows`` in one transaction (all or none)."""


class PostgresBarLoader(BarLoader):
    """The COPY-based path described in the module docstring."""

    def load(self, rows: Sequence[Bar]) -> int:
        rows = dedupe_bars(rows)
        if not rows:
            return 0
        with translate_db_errors("loading bars"):
            conn = self.engine.raw_connection()
            try:
                written = self._load(conn, rows)
                conn.commit()
                return written
            except BaseException:
                try:
                    conn.rollback()
                except Exception:
                    conn.invalidate()  # the connection is dead: never hand it out again
                raise
            finally:
                conn.close()

    def _load(self, conn, rows: list[Bar]) -> int:
        cur = conn.cursor()
        series = sorted({(b.provider, b.symbol, b.interval) for b in rows})
        cur.execute(_WATERMARKS, ([s[0] for s in series], [s[1] for s in series], [s[2] for s in series]))
        marks = {(p, s, i): ts for p, s, i, ts in cur.fetchall()}
        fresh, seen = [], []
        for b in rows:
            mark = marks[(b.provider, b.symbol, b.interval)]
            (fresh if mark is None or b.ts > mark else seen).append(b)
        written = 0
        if fresh:
            cur.execute("SAVEPOINT mp_append")
            try:
                cur.copy_expert(f"COPY bars ({_COL_LIST}) FROM STDIN", io.StringIO(copy_text(fresh)))
                cur.execute("RELEASE SAVEPOINT mp_append")
                written += len(fresh)
            except psycopg2.errors.UniqueViolation:
                # a concurrent writer inserted some of these bars first: merge them instead
                log.debug("append of %d bars raced another writer; merging them", len(fresh))
                cur.execute("ROLLBACK TO SAVEPOINT mp_append")
                seen.extend(fresh)
        if seen:
            if not conn.info.get(_STAGE):
                cur.execute(_CREATE_STAGE)
                conn.info[_STAGE] = True
            cur.copy_expert(f"COPY {_STAGE} ({_COL_LIST}) FROM STDIN", io.StringIO(copy_text(seen)))
            cur.execute(_MERGE)
            written += cur.rowcount
        return written


class SqlAlchemyBarLoader(BarLoader):
    """Portable path (SQLite): ``INSERT … ON CONFLICT DO UPDATE … WHERE values differ``."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        stmt = sqlite_insert(bars)
        excluded = stmt.excluded
        self._stmt = stmt.on_conflict_do_update(
            index_elements=list(BAR_KEY),
            set_={**{v: excluded[v] for v in BAR_VALUES}, "ingested_at": sa.func.now()},
            where=sa.or_(*(bars.c[v].is_distinct_from(excluded[v]) for v in BAR_VALUES)),
        )

    def load(self, rows: Sequence[Bar]) -> int:
        rows = dedupe_bars(rows)
        if not rows:
            return 0
        params = [
            {
                "provider": b.provider,
                "symbol": b.symbol,
                "interval": b.interval,
                "ts": b.ts,
                "open": b.open,
                "high": b.high,
                "low": b.low,
                "close": b.close,
                "volume": b.volume,
            }
            for b in rows
        ]
        with translate_db_errors("loading bars"), self.engine.begin() as conn:
            before = conn.exec_driver_sql("SELECT total_changes()").scalar()
            conn.execute(self._stmt, params)
            return conn.exec_driver_sql("SELECT total_changes()").scalar() - before


def make_loader(engine: sa.Engine) -> BarLoader:
    """The fastest correct loader for ``engine``'s dialect."""
    if is_postgres(engine):
        return PostgresBarLoader(engine)
    if engine.dialect.name == "sqlite":
        return SqlAlchemyBarLoader(engine)
    raise LoadError(f"unsupported database dialect {engine.dialect.name!r} (use PostgreSQL or SQLite)")
