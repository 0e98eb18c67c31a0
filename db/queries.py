"""Read queries shared by the pipeline, the service and the tools."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from db.engine import is_postgres, translate_db_errors
from db.tables import bars

__all__ = ["watermarks", "WATERMARKS_SQL", "SERIES_STATE_SQL"]


#: Newest ``ts`` per (provider, symbol, interval), one backward primary-key probe per series
#: (psycopg2; three parallel text arrays). Shared by the pipeline and the loader's fast path.
WATERMARKS_SQL = (
    "SELECT k.provider, k.symbol, k.interval, "
    "(SELECT max(b.ts) FROM bars b WHERE b.provider = k.provider AND b.symbol = k.symbol AND b.interval = k.interval) "
    "FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(provider, symbol, interval)"
)
#: What the loader needs to know of each series of a batch, in one round trip (psycopg2; six parallel
#: arrays: provider, symbol, interval, ``lo``, ``hi`` (timestamptz) and ``cap`` (int)). One row per
#: series: ``(ord, watermark_us, stored)``. ``ord`` is its 1-based position in the arrays; times are
#: microseconds since the Unix epoch (exact, cheap to parse); ``stored`` is null when ``lo`` is, else
#: its stored bars with ``lo <= ts <= hi`` (at most ``cap``, oldest first), one line each:
#: ``ts_us open high low close volume adj_close`` (``numeric`` text; a NULL is an empty field), joined
#: by newlines (null if none).
#: Every read of ``bars`` is a primary-key probe or range scan, so its cost does not depend on the
#: history stored or on statistics.
SERIES_STATE_SQL = """
SELECT k.ord,
       (SELECT (extract(epoch FROM max(b.ts)) * 1000000)::bigint FROM bars b
        WHERE b.provider = k.provider AND b.symbol = k.symbol AND b.interval = k.interval),
       (SELECT string_agg(r.line, E'\\n') FROM (
            SELECT concat_ws(' ', (extract(epoch FROM b.ts) * 1000000)::bigint, b.open, b.high, b.low, b.close,
                             coalesce(b.volume::text, ''), coalesce(b.adj_close::text, '')) AS line
            FROM bars b
            WHERE b.provider = k.provider AND b.symbol = k.symbol AND b.interval = k.interval AND b.ts BETWEEN k.lo AND k.hi
            ORDER BY b.ts
            LIMIT k.cap) r)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::int[])
     WITH ORDINALITY AS k(provider, symbol, interval, lo, hi, cap, ord)
"""
_SQLITE_MAX = (
    sa.select(sa.func.max(bars.c.ts))
    .where(bars.c.provider == sa.bindparam("p"), bars.c.interval == sa.bindparam("i"), bars.c.symbol == sa.bindparam("s"))
)  # fmt: skip


def watermarks(engine: sa.Engine, provider: str, interval: str, symbols: Sequence[str]) -> dict[str, datetime]:
    """Newest stored bar start (UTC) of each symbol that has bars.

    Each series is answered by a probe of the primary key, not by reading its history: for
    500 symbols of 1,000 bars on PostgreSQL, 33-42 ms against ~800 ms for ``GROUP BY symbol``
    over an ``IN`` list, which grows with every stored bar.
    """
    n = len(symbols)
    with translate_db_errors("reading watermarks"), engine.connect() as conn:
        if is_postgres(engine):
            rows = [
                (s, ts) for _, s, _, ts in conn.exec_driver_sql(WATERMARKS_SQL, ([provider] * n, list(symbols), [interval] * n))
            ]
        else:  # SQLite answers max() on an indexed prefix from the index; the statement is compiled once
            rows = [(s, conn.execute(_SQLITE_MAX, {"p": provider, "i": interval, "s": s}).scalar()) for s in symbols]
    out: dict[str, datetime] = {}
    for symbol, ts in rows:
        if ts is None:
            continue
        if isinstance(ts, str):  # SQLite returns the aggregate as text
            ts = datetime.fromisoformat(ts)
        out[symbol] = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return out
