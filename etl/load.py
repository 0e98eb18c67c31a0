"""Load bars idempotently: loading the same bars twice adds and changes nothing.

A *batch* is one symbol's bars from one fetch. :meth:`BarLoader.load_many` writes
several batches in one transaction (group commit: one fsync for many symbols) and
still lands each batch all or none: if the group fails, every batch is retried
alone, so only the one at fault fails. :meth:`BarLoader.load` is one batch.

PostgreSQL path (raw psycopg2 connection; measured in benchmarks/load_bench.py):

1. Look up each series' watermark (its newest ``ts``) through the primary key.
2. Bars newer than their watermark cannot conflict: ``COPY`` them straight into
   ``bars`` (in a savepoint: if a concurrent writer got there first, the unique
   violation rolls it back and those bars take step 3 instead).
3. The rest (re-fetched or revised bars) are ``COPY``-ed into a temporary staging
   table and diffed against ``bars`` with one join; only new or changed rows are then
   inserted (``ON CONFLICT … DO UPDATE``, safe against concurrent writers) or updated.
   An identical re-load writes nothing. The join is about 2x faster than sending every
   row through ``INSERT … ON CONFLICT``, whose per-row conflict check dominates.

Values travel as the provider's decimal text; duplicate keys are removed first (the
last copy wins). Other databases (SQLite) use the dialect's ``INSERT … ON CONFLICT``.
"""

from __future__ import annotations

import io
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import psycopg2
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.engine import is_postgres, translate_db_errors
from db.ledger import CREDIT_SQL, credit_statement
from db.queries import WATERMARKS_SQL
from db.tables import BAR_KEY, BAR_VALUES, bars
from errors import LoadError
from etl.transform import dedupe_bars
from models.bar import Bar

__all__ = ["BarLoader", "PostgresBarLoader", "SqlAlchemyBarLoader", "make_loader", "copy_text", "Credit"]

log = logging.getLogger(__name__)

# SQL below is built from these module constants only: no user input reaches it.
_COLS = BAR_KEY + BAR_VALUES
_COL_LIST = ", ".join(f'"{c}"' for c in _COLS)
_STAGE = "mp_stage_bars"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (provider text, symbol text, interval text, ts timestamptz, "
    "open numeric, high numeric, low numeric, close numeric, volume numeric) ON COMMIT DELETE ROWS"
)
_KEY_EQ = " AND ".join(f"b.{k} = s.{k}" for k in BAR_KEY)
_CHANGED = f"({', '.join('b.' + v for v in BAR_VALUES)}) IS DISTINCT FROM ({', '.join('s.' + v for v in BAR_VALUES)})"
_SET = ", ".join(f"{v} = s.{v}" for v in BAR_VALUES) + ", ingested_at = now()"
_MERGE = f"""
WITH d AS MATERIALIZED (
    SELECT s.*, b.ts IS NULL AS is_new FROM {_STAGE} s LEFT JOIN bars b ON {_KEY_EQ}
    WHERE b.ts IS NULL OR {_CHANGED}
), ins AS (
    INSERT INTO bars AS b ({_COL_LIST}) SELECT {_COL_LIST} FROM d WHERE is_new
    ON CONFLICT ({", ".join(BAR_KEY)}) DO UPDATE SET {_SET.replace("s.", "EXCLUDED.")}
    WHERE {_CHANGED.replace("s.", "EXCLUDED.")}
    RETURNING b.provider, b.symbol, b.interval
), upd AS (
    UPDATE bars b SET {_SET} FROM d s WHERE NOT s.is_new AND {_KEY_EQ}
    RETURNING b.provider, b.symbol, b.interval
)
SELECT provider, symbol, interval, count(*) FROM (SELECT * FROM ins UNION ALL SELECT * FROM upd) w
GROUP BY provider, symbol, interval
"""  # noqa: S608
Series = tuple[str, str, str]  # (provider, symbol, interval)


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
    """PostgreSQL COPY text format for ``rows`` (columns in ``BAR_KEY + BAR_VALUES`` order).

    Fields are written as they are: symbols and provider names are validated to hold no
    tabs, newlines or backslashes (:data:`models.SYMBOL_RE`), values are validated decimal text.
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
    """The COPY + diff path described in the module docstring."""

    def _load_group(self, batches: list[list[Bar]], credits: list[Credit | None]) -> list[int]:
        with translate_db_errors("loading bars"):
            conn = self.engine.raw_connection()
            try:
                written = self._write(conn, [b for batch in batches for b in batch]) if any(batches) else Counter()
                counts = [sum(written[s] for s in {b[:3] for b in batch}) for batch in batches]
                if any(c is not None for c in credits):
                    cur = conn.cursor()
                    for run_id, t in _credits_by_run(credits, counts).items():
                        cur.execute(CREDIT_SQL, {"run_id": run_id, **t})
                conn.commit()
            except BaseException:
                try:
                    conn.rollback()
                except Exception:
                    conn.invalidate()  # the connection is dead: never hand it out again
                raise
            finally:
                conn.close()
        return counts

    def _write(self, conn, rows: list[Bar]) -> Counter[Series]:
        cur = conn.cursor()
        # a Bar's first three fields are its series (provider, symbol, interval): slices, not attributes
        series = sorted({b[:3] for b in rows})
        cur.execute(WATERMARKS_SQL, ([s[0] for s in series], [s[1] for s in series], [s[2] for s in series]))
        marks = {(p, s, i): ts for p, s, i, ts in cur.fetchall()}
        fresh, seen = [], []
        for b in rows:
            mark = marks[b[:3]]
            (fresh if mark is None or b.ts > mark else seen).append(b)
        written: Counter[Series] = Counter()
        if fresh:
            cur.execute("SAVEPOINT mp_append")
            try:
                cur.copy_expert(f"COPY bars ({_COL_LIST}) FROM STDIN", io.StringIO(copy_text(fresh)))
                cur.execute("RELEASE SAVEPOINT mp_append")
                written.update(b[:3] for b in fresh)
            except psycopg2.errors.UniqueViolation:
                log.debug("append of %d bars raced another writer; merging them", len(fresh))
                cur.execute("ROLLBACK TO SAVEPOINT mp_append")
                seen.extend(fresh)
        if seen:
            if not conn.info.get(_STAGE):
                cur.execute(_CREATE_STAGE)
                conn.info[_STAGE] = True
            cur.copy_expert(f"COPY {_STAGE} ({_COL_LIST}) FROM STDIN", io.StringIO(copy_text(seen)))
            cur.execute(_MERGE)
            for p, s, i, n in cur.fetchall():
                written[(p, s, i)] += n
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

    def _load_group(self, batches: list[list[Bar]], credits: list[Credit | None]) -> list[int]:
        out = []
        with translate_db_errors("loading bars"), self.engine.begin() as conn:
            for batch in batches:
                if not batch:
                    out.append(0)
                    continue
                before = conn.exec_driver_sql("SELECT total_changes()").scalar()
                conn.execute(self._stmt, [_params(b) for b in batch])
                out.append(conn.exec_driver_sql("SELECT total_changes()").scalar() - before)
            for run_id, t in _credits_by_run(credits, out).items():
                conn.execute(credit_statement(run_id, **t))
        return out


def _params(b: Bar) -> dict:
    return {
        "provider": b.provider, "symbol": b.symbol, "interval": b.interval, "ts": b.ts,
        "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume,
    }  # fmt: skip


def make_loader(engine: sa.Engine) -> BarLoader:
    """The fastest correct loader for ``engine``'s dialect."""
    if is_postgres(engine):
        return PostgresBarLoader(engine)
    if engine.dialect.name == "sqlite":
        return SqlAlchemyBarLoader(engine)
    raise LoadError(f"unsupported database dialect {engine.dialect.name!r} (use PostgreSQL or SQLite)")
