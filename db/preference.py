"""``series_preference``: which provider is a series' primary when a fallback serves it too.

The ``bars_preferred`` view reads it to give one row per (symbol, interval, ts), the primary's
first. A pipeline with a fallback records (primary, rank 0) and (fallback, rank 1) for its symbols.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.engine import is_postgres, translate_db_errors
from db.tables import series_preference

__all__ = ["record_preference"]


def record_preference(engine: sa.Engine, primary: str, fallback: str, symbols: Sequence[str], interval: str) -> None:
    """Rank ``primary`` 0 and ``fallback`` 1 for each symbol's ``interval`` series (idempotent). Raises LoadError."""
    if not symbols:
        return
    ranks = ((primary, 0), (fallback, 1))
    rows = [{"provider": p, "symbol": s, "interval": interval, "rank": r} for s in symbols for p, r in ranks]
    stmt = (pg_insert if is_postgres(engine) else sqlite_insert)(series_preference)
    stmt = stmt.on_conflict_do_update(index_elements=["provider", "symbol", "interval"], set_={"rank": stmt.excluded.rank})
    with translate_db_errors("writing series_preference"), engine.begin() as conn:
        conn.execute(stmt, rows)
