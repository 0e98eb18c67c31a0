"""The chunk store of history backfills: one ``backfill_chunks`` row per (series, window), so a backfill resumes.

A chunk is one API-sized window ``[window_start, window_end)`` (UTC) of one series
(provider, symbol, interval), as the provider's ``range_requests`` cut it. Its ``status``:

- ``pending``: planned, not loaded yet (a stopped or crashed run leaves these for the next run);
- ``done``: its bars are loaded (``rows_fetched`` / ``rows_loaded``);
- ``no_data``: the provider said the window holds no data;
- ``failed``: its symbol failed (``error``, redacted); the next run tries it again.

``done`` and ``no_data`` windows are *covered*: a later plan subtracts them, so nothing loaded
is fetched again unless the caller asks for a refetch. Times are UTC-aware on the way in and
out (SQLite keeps them as naive UTC). Database errors are raised as :class:`~errors.LoadError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.engine import is_postgres, translate_db_errors
from db.tables import backfill_chunks

__all__ = ["ChunkStatus", "Chunk", "ChunkStore", "Span"]

#: A UTC window [start, end).
Span = tuple[datetime, datetime]

_KEY = ("provider", "symbol", "interval", "window_start", "window_end")


class ChunkStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    NO_DATA = "no_data"
    FAILED = "failed"


#: Statuses whose window is loaded (or known empty): a plan does not fetch them again.
COVERED = (ChunkStatus.DONE, ChunkStatus.NO_DATA)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One planned window of one series (a ``backfill_chunks`` row). ``start``/``end`` are UTC."""

    id: int
    provider: str
    symbol: str
    interval: str
    start: datetime
    end: datetime


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)  # SQLite keeps UTC naive


class ChunkStore:
    """Reads and writes ``backfill_chunks`` (see the module docstring). ``now()`` stamps ``updated_at``."""

    def __init__(self, engine: sa.Engine, now) -> None:
        self.engine = engine
        self._now = now

    def covered(self, provider: str, interval: str, symbols: Sequence[str], start: datetime,
                end: datetime) -> dict[str, list[Span]]:  # fmt: skip
        """Per symbol, the done/no_data windows that overlap UTC ``[start, end)``, oldest first."""
        c = backfill_chunks.c
        q = (
            sa.select(c.symbol, c.window_start, c.window_end)
            .where(c.provider == provider, c.interval == interval, c.symbol.in_(list(symbols)),
                   c.status.in_([s.value for s in COVERED]), c.window_start < end, c.window_end > start)
            .order_by(c.symbol, c.window_start)
        )  # fmt: skip
        out: dict[str, list[Span]] = {}
        with translate_db_errors("reading backfill_chunks"), self.engine.connect() as conn:
            for symbol, lo, hi in conn.execute(q):
                out.setdefault(symbol, []).append((_utc(lo), _utc(hi)))
        return out

    def replace_plan(self, provider: str, interval: str, scope: Iterable[tuple[str, datetime, datetime]],
                     windows: Sequence[tuple[str, datetime, datetime]]) -> list[Chunk]:  # fmt: skip
        """Store ``windows`` (symbol, UTC start, end) as pending chunks, in one transaction, and return them in order.

        Pending or failed chunks lying inside a ``scope`` range (symbol, start, end) are dropped
        first (an earlier run's plan of the same ground); a window already stored is set back to
        pending (a refetch, or a failed chunk tried again).
        """
        c = backfill_chunks.c
        now = self._now()
        rows = [{"provider": provider, "symbol": s, "interval": interval, "window_start": lo, "window_end": hi,
                 "status": ChunkStatus.PENDING.value, "rows_fetched": 0, "rows_loaded": 0, "error": None, "updated_at": now}
                for s, lo, hi in windows]  # fmt: skip
        insert = (pg_insert if is_postgres(self.engine) else sqlite_insert)(backfill_chunks)
        upsert = insert.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={"status": ChunkStatus.PENDING.value, "rows_fetched": 0, "rows_loaded": 0, "error": None, "updated_at": now},
        ).returning(c.id, sort_by_parameter_order=True)
        stale = backfill_chunks.delete().where(
            c.provider == provider, c.interval == interval, c.symbol == sa.bindparam("s"),
            sa.or_(c.status == ChunkStatus.PENDING.value, c.status == ChunkStatus.FAILED.value),  # no IN: executemany
            c.window_start >= sa.bindparam("lo"), c.window_end <= sa.bindparam("hi"),
        )  # fmt: skip
        with translate_db_errors("planning backfill_chunks"), self.engine.begin() as conn:
            scopes = [{"s": s, "lo": lo, "hi": hi} for s, lo, hi in scope]
            if scopes:
                conn.execute(stale, scopes)
            ids = [r[0] for r in conn.execute(upsert, rows)] if rows else []
        return [Chunk(i, provider, s, interval, lo, hi) for i, (s, lo, hi) in zip(ids, windows, strict=True)]

    def mark(self, results: Sequence[tuple[int, ChunkStatus, int, int, str | None]]) -> None:
        """Record (chunk id, status, rows fetched, rows loaded, error) for several chunks in one transaction."""
        if not results:
            return
        c = backfill_chunks.c
        stmt = (
            backfill_chunks.update()
            .where(c.id == sa.bindparam("cid"))
            .values(status=sa.bindparam("st"), rows_fetched=sa.bindparam("f"), rows_loaded=sa.bindparam("l"),
                    error=sa.bindparam("e"), updated_at=sa.bindparam("at"))
        )  # fmt: skip
        now = self._now()
        params = [{"cid": i, "st": s.value, "f": f, "l": n, "e": e, "at": now} for i, s, f, n, e in results]
        with translate_db_errors("updating backfill_chunks"), self.engine.begin() as conn:
            conn.execute(stmt, params)
